//! `[ui]`: the care team's web console — session idle timeout, the lifetime of the demo's
//! one-time sign-in links, the cookie's `Secure` attribute, and the coded reasons a care-team
//! member may give when acknowledging an alert.

use serde::Deserialize;

use super::{ConfigError, Settings, problem};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiSettings {
    /// Serve the console under `/ui/`.
    pub enabled: bool,
    /// Minutes without a request after which a session ends (1..=720).
    pub session_idle_minutes: u32,
    /// Minutes a one-time sign-in link stays valid (1..=60).
    pub sign_in_link_minutes: u32,
    /// Send the session cookie with `Secure` (browsers keep it over http only on loopback).
    pub secure_cookie: bool,
    /// The reasons an acknowledgement may give.
    pub acknowledge_reasons: Vec<AckReason>,
    /// Sign-in with OpenID Connect (authorization code flow with PKCE); none: demo links only.
    pub oidc: Option<OidcSettings>,
}

/// `[ui.oidc]`: the issuer people sign in with. The access token it issues for `resource` is
/// verified like any bearer JWT (`[auth]`: the same issuer, audience, key set, scopes and
/// person claims), so a console session is the caller the API would see with that token.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    /// The issuer (its `/.well-known/openid-configuration` names the endpoints).
    pub issuer: String,
    /// The console's client id at the issuer (a public client: PKCE, no secret).
    pub client_id: String,
    /// Where the issuer sends the browser back: `<public origin>/ui/oidc/callback`.
    pub redirect_url: String,
    /// The scopes asked for.
    #[serde(default = "default_oidc_scope")]
    pub scope: String,
    /// The resource indicator (RFC 8707) whose access token the gateway accepts, if the issuer
    /// needs one.
    #[serde(default)]
    pub resource: Option<String>,
}

fn default_oidc_scope() -> String {
    "openid careteam".into()
}

/// One coded acknowledgement reason, with its text in both languages of the console.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AckReason {
    pub code: String,
    pub da: String,
    pub en: String,
}

impl Default for UiSettings {
    fn default() -> Self {
        let reason = |code: &str, da: &str, en: &str| AckReason {
            code: code.into(),
            da: da.into(),
            en: en.into(),
        };
        UiSettings {
            enabled: true,
            session_idle_minutes: 30,
            sign_in_link_minutes: 10,
            secure_cookie: true,
            acknowledge_reasons: vec![
                reason(
                    "handled",
                    "Håndteret: behandlingen er afstemt",
                    "Handled: treatment reconciled",
                ),
                reason(
                    "intended",
                    "Tilsigtet: ordinationen er bevidst",
                    "Intended: the prescription is deliberate",
                ),
                reason(
                    "forwarded",
                    "Videregivet til patientens koordinator",
                    "Forwarded to the patient's coordinator",
                ),
            ],
            oidc: None,
        }
    }
}

impl UiSettings {
    /// The reason with this code, if configured.
    pub fn reason(&self, code: &str) -> Option<&AckReason> {
        self.acknowledge_reasons.iter().find(|r| r.code == code)
    }
}

impl Settings {
    /// `[ui]`: timeouts within their ranges, at least one well-formed reason, no code twice.
    pub(super) fn check_ui(&self, file: &str) -> Result<(), ConfigError> {
        let u = &self.ui;
        if u.session_idle_minutes == 0 || u.session_idle_minutes > 720 {
            return Err(problem(
                file,
                "ui.session_idle_minutes",
                format!("{} minutes is outside 1..=720", u.session_idle_minutes),
                "end idle sessions after a working period at most, e.g. 30",
            ));
        }
        if u.sign_in_link_minutes == 0 || u.sign_in_link_minutes > 60 {
            return Err(problem(
                file,
                "ui.sign_in_link_minutes",
                format!("{} minutes is outside 1..=60", u.sign_in_link_minutes),
                "keep sign-in links short-lived, e.g. 10",
            ));
        }
        if u.acknowledge_reasons.is_empty() {
            return Err(problem(
                file,
                "ui.acknowledge_reasons",
                "no reason is configured, so no alert could be acknowledged in the console",
                "add [[ui.acknowledge_reasons]] tables with code, da and en",
            ));
        }
        for (i, r) in u.acknowledge_reasons.iter().enumerate() {
            let bad_code = r.code.is_empty()
                || !r
                    .code
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if bad_code || r.da.trim().is_empty() || r.en.trim().is_empty() {
                return Err(problem(
                    file,
                    format!("ui.acknowledge_reasons[{i}]"),
                    format!(
                        "reason '{}' needs a code of letters, digits, '-' or '_' and texts da and en",
                        r.code
                    ),
                    "write code = \"handled\", da = \"…\", en = \"…\"",
                ));
            }
            if u.acknowledge_reasons[..i].iter().any(|o| o.code == r.code) {
                return Err(problem(
                    file,
                    format!("ui.acknowledge_reasons[{i}].code"),
                    format!("'{}' is listed twice", r.code),
                    "give each reason its own code",
                ));
            }
        }
        self.check_oidc(file)
    }

    /// `[ui.oidc]`: URLs, and the issuer that `[auth]` verifies tokens of.
    fn check_oidc(&self, file: &str) -> Result<(), ConfigError> {
        let Some(o) = &self.ui.oidc else {
            return Ok(());
        };
        let http = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        if !http(&o.issuer) {
            return Err(problem(
                file,
                "ui.oidc.issuer",
                format!("'{}' is not an http(s) URL", o.issuer),
                "write the issuer URL as its tokens' `iss` claim has it",
            ));
        }
        if !http(&o.redirect_url) || !o.redirect_url.ends_with("/ui/oidc/callback") {
            return Err(problem(
                file,
                "ui.oidc.redirect_url",
                format!("'{}' is not the console's callback", o.redirect_url),
                "write <the gateway's public origin>/ui/oidc/callback, as registered at the issuer",
            ));
        }
        if o.client_id.trim().is_empty() {
            return Err(problem(
                file,
                "ui.oidc.client_id",
                "the client id is empty",
                "write the console's client id at the issuer",
            ));
        }
        if self.auth.issuer.as_deref() != Some(o.issuer.as_str()) {
            return Err(problem(
                file,
                "ui.oidc.issuer",
                "the console's issuer is not the [auth] issuer whose tokens the gateway verifies",
                "set [auth] issuer, audience and jwks_url for the same issuer",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(text: &str) -> Result<Settings, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        Settings::load(f.path())
    }

    #[test]
    fn ui_settings_are_checked_with_key_and_fix() {
        let reason = |code: &str| {
            format!("[[ui.acknowledge_reasons]]\ncode = \"{code}\"\nda = \"x\"\nen = \"y\"\n")
        };
        let cases = [
            (
                "[ui]\nsession_idle_minutes = 0\n".to_owned(),
                "ui.session_idle_minutes",
            ),
            (
                "[ui]\nsign_in_link_minutes = 61\n".to_owned(),
                "ui.sign_in_link_minutes",
            ),
            (
                "[ui]\nacknowledge_reasons = []\n".to_owned(),
                "ui.acknowledge_reasons",
            ),
            (reason("two words"), "ui.acknowledge_reasons[0]"),
            (
                format!("{}{}", reason("a"), reason("a")),
                "ui.acknowledge_reasons[1].code",
            ),
        ];
        for (text, key) in cases {
            let e = load(&text).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(!e.fix.is_empty());
        }
        let ok = load(&reason("checked")).unwrap();
        assert_eq!(ok.ui.reason("checked").map(|r| r.en.as_str()), Some("y"));
        assert!(load("[ui]\nno_such_key = 1\n").is_err());
        let oidc = "[ui.oidc]\nissuer = \"http://idp\"\nclient_id = \"c\"\nredirect_url = \"http://gw/ui/oidc/callback\"\n";
        assert_eq!(
            load(oidc).unwrap_err().key,
            "ui.oidc.issuer",
            "no [auth] issuer"
        );
        let auth = "[auth]\nissuer = \"http://idp\"\naudience = \"carebridge\"\njwks_url = \"http://idp/jwks\"\n[[auth.scopes]]\nscope = \"careteam\"\nrole = \"careteam\"\n";
        let ok = load(&format!("{auth}{oidc}")).unwrap();
        assert_eq!(ok.ui.oidc.unwrap().scope, "openid careteam");
        let bad = oidc.replace("/ui/oidc/callback", "/elsewhere");
        assert_eq!(
            load(&format!("{auth}{bad}")).unwrap_err().key,
            "ui.oidc.redirect_url"
        );
    }
}
