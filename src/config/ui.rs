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
    }
}
