//! `[access]`: which treatment relationships grant a care-team member access to a patient, the
//! exchange window, break-the-glass, and the security labels that mark a record private; and
//! the person a `[[clients]]` entry stands for.

use serde::Deserialize;

use super::{ConfigError, Settings, problem};

/// The relationship kinds `[access] relationships` may name.
pub const RELATIONSHIPS: [&str; 3] = ["care-team", "exchange", "launch"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessSettings {
    /// Which treatment relationships grant access: `care-team` (a participant of the patient's
    /// active CareTeam), `exchange` (the person's sector sent or received a record about the
    /// patient within `exchange_window_days`), `launch` (the token's launch context).
    pub relationships: Vec<String>,
    /// How far back an exchange with the person's sector counts as a relationship.
    pub exchange_window_days: u32,
    /// How long a break-the-glass grant lasts.
    pub break_glass_minutes: u32,
    /// The reasons a break-the-glass request may give (its `reason` code).
    pub break_glass_reasons: Vec<ReasonSettings>,
    /// Whether break-the-glass also overrides a patient's block (a denying Consent).
    pub break_glass_overrides_blocks: bool,
    /// Security labels (`system|code` in `meta.security`) with which a sector marks a record
    /// private (FMK "privatmarkering"): only that sector sees it.
    pub private_labels: Vec<String>,
}

/// One break-the-glass reason.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReasonSettings {
    pub code: String,
    pub display: String,
}

impl Default for AccessSettings {
    fn default() -> Self {
        AccessSettings {
            relationships: RELATIONSHIPS.iter().map(|s| (*s).to_owned()).collect(),
            exchange_window_days: 90,
            break_glass_minutes: 120,
            break_glass_reasons: vec![
                ReasonSettings {
                    code: "patient-consent".into(),
                    display: "The patient consents to the look-up now".into(),
                },
                ReasonSettings {
                    code: "emergency".into(),
                    display: "Urgent treatment; the patient cannot consent".into(),
                },
            ],
            break_glass_overrides_blocks: false,
            private_labels: vec![
                "http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R".into(),
            ],
        }
    }
}

/// An identifier or a coding written `system|value`: both parts non-empty, one bar.
pub fn split_system_value(s: &str) -> Option<(&str, &str)> {
    let (system, value) = s.split_once('|')?;
    (!system.is_empty() && !value.is_empty() && !value.contains('|')).then_some((system, value))
}

impl AccessSettings {
    /// Whether `[access] relationships` names this kind.
    pub fn grants(&self, kind: &str) -> bool {
        self.relationships.iter().any(|r| r == kind)
    }

    /// The reason with this code, if configured.
    pub fn reason(&self, code: &str) -> Option<&ReasonSettings> {
        self.break_glass_reasons.iter().find(|r| r.code == code)
    }
}

impl Settings {
    /// `[access]`: known relationship kinds, a window and a grant time, reasons, labels.
    pub(super) fn check_access(&self, file: &str) -> Result<(), ConfigError> {
        let a = &self.access;
        for (i, r) in a.relationships.iter().enumerate() {
            if !RELATIONSHIPS.contains(&r.as_str()) {
                return Err(problem(
                    file,
                    format!("access.relationships[{i}]"),
                    format!("'{r}' is not a relationship kind"),
                    "use care-team, exchange or launch",
                ));
            }
        }
        if a.exchange_window_days == 0 || a.exchange_window_days > 3650 {
            return Err(problem(
                file,
                "access.exchange_window_days",
                format!("{} days is outside 1..=3650", a.exchange_window_days),
                "use a window such as 90",
            ));
        }
        if a.break_glass_minutes == 0 || a.break_glass_minutes > 24 * 60 {
            return Err(problem(
                file,
                "access.break_glass_minutes",
                format!("{} minutes is outside 1..=1440", a.break_glass_minutes),
                "grant break-the-glass for at most a day, e.g. 120",
            ));
        }
        if a.break_glass_reasons.is_empty() {
            return Err(problem(
                file,
                "access.break_glass_reasons",
                "no reason is configured, so nobody could break the glass",
                "add [[access.break_glass_reasons]] tables with code and display",
            ));
        }
        for (i, r) in a.break_glass_reasons.iter().enumerate() {
            if r.code.is_empty() || r.code.contains(char::is_whitespace) || r.display.is_empty() {
                return Err(problem(
                    file,
                    format!("access.break_glass_reasons[{i}]"),
                    format!(
                        "reason '{}' needs a code without spaces and a display",
                        r.code
                    ),
                    "write code = \"emergency\", display = \"…\"",
                ));
            }
        }
        for (i, l) in a.private_labels.iter().enumerate() {
            if split_system_value(l).is_none() {
                return Err(problem(
                    file,
                    format!("access.private_labels[{i}]"),
                    format!("'{l}' is not system|code"),
                    "write the label as system|code, e.g. http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R",
                ));
            }
        }
        Ok(())
    }

    /// The person fields of `[[clients]]`: identifiers `system|value`, a configured sector,
    /// and only on care-team clients.
    pub(super) fn check_client_person(
        &self,
        file: &str,
        i: usize,
        c: &super::ClientSettings,
    ) -> Result<(), ConfigError> {
        let bound = c.practitioner.is_some()
            || c.organization.is_some()
            || c.sector.is_some()
            || c.asserts_relationship;
        if bound && c.role != "careteam" {
            return Err(problem(
                file,
                format!("clients[{i}].role"),
                "practitioner, organization, sector and asserts_relationship describe care-team access; this client is not a careteam client",
                "use them only on a careteam client, or remove those keys",
            ));
        }
        for (k, v) in [
            ("practitioner", &c.practitioner),
            ("organization", &c.organization),
        ] {
            if let Some(v) = v
                && split_system_value(v).is_none()
            {
                return Err(problem(
                    file,
                    format!("clients[{i}].{k}"),
                    format!("'{v}' is not an identifier system|value"),
                    "write it as system|value, e.g. https://autregweb.sst.dk|G2KW9",
                ));
            }
        }
        if let Some(s) = &c.sector
            && self.sector(s).is_none()
        {
            return Err(problem(
                file,
                format!("clients[{i}].sector"),
                format!("sector '{s}' is not configured"),
                "name the configured sector the person's organisation is",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;

    fn load(extra: &str) -> Result<Settings, crate::config::ConfigError> {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("c.toml");
        let text = format!(
            "[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\n{extra}"
        );
        std::fs::write(&path, text).expect("written");
        Settings::load(&path)
    }

    #[test]
    fn access_problems_name_the_key_and_the_fix() {
        assert!(load("").is_ok());
        let cases = [
            (
                "[access]\nrelationships = [\"friendship\"]\n",
                "access.relationships[0]",
            ),
            (
                "[access]\nexchange_window_days = 0\n",
                "access.exchange_window_days",
            ),
            (
                "[access]\nbreak_glass_minutes = 10000\n",
                "access.break_glass_minutes",
            ),
            (
                "[access]\nbreak_glass_reasons = []\n",
                "access.break_glass_reasons",
            ),
            (
                "[access]\nprivate_labels = [\"R\"]\n",
                "access.private_labels[0]",
            ),
            (
                "[[clients]]\nid = \"a\"\nrole = \"sector:gp\"\npractitioner = \"x|1\"\n",
                "clients[0].role",
            ),
            (
                "[[clients]]\nid = \"a\"\nrole = \"careteam\"\npractitioner = \"nobar\"\n",
                "clients[0].practitioner",
            ),
            (
                "[[clients]]\nid = \"a\"\nrole = \"careteam\"\nsector = \"mars\"\n",
                "clients[0].sector",
            ),
        ];
        for (text, key) in cases {
            let err = load(text).expect_err(text);
            assert_eq!(err.key, key, "{text}: {err:?}");
            assert!(!err.fix.is_empty());
        }
    }
}
