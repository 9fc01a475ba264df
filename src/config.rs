//! Typed configuration: a TOML file (every key documented in `config/default.toml`), overridden
//! by `CAREBRIDGE_…` environment variables (`CAREBRIDGE_STORE__URL` sets `store.url`).
//! Every problem is reported with the file, the key and the fix; secrets never print.

use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The CPR number's identifier system: links the sectors' Patients by default.
pub const CPR_SYSTEM: &str = "urn:oid:1.2.208.176.1.2";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub store: StoreSettings,
    #[serde(default)]
    pub fhir: FhirSettings,
    #[serde(default)]
    pub sectors: Vec<SectorSettings>,
    #[serde(default)]
    pub clients: Vec<ClientSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub listen: String,
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub max_bundle_entries: usize,
    pub request_timeout_secs: u64,
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 16 * 1024 * 1024,
            max_json_depth: 64,
            max_bundle_entries: 10_000,
            request_timeout_secs: 60,
            rate_limit_per_second: 1000,
            rate_limit_burst: 2000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    pub url: String,
    pub max_connections: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            url: "sqlite://carebridge.db".into(),
            max_connections: 8,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FhirSettings {
    pub profiles_dir: PathBuf,
}

impl Default for FhirSettings {
    fn default() -> Self {
        FhirSettings {
            profiles_dir: PathBuf::from("fhir-profiles"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SectorKind {
    GeneralPractice,
    Hospital,
    Municipality,
}

impl SectorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SectorKind::GeneralPractice => "general-practice",
            SectorKind::Hospital => "hospital",
            SectorKind::Municipality => "municipality",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SectorMode {
    Push,
    Pull,
    Both,
}

impl SectorMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SectorMode::Push => "push",
            SectorMode::Pull => "pull",
            SectorMode::Both => "both",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectorSettings {
    pub id: String,
    pub name: String,
    pub kind: SectorKind,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default = "default_mode")]
    pub mode: SectorMode,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default = "default_patient_system")]
    pub patient_identifier_system: String,
    #[serde(default)]
    pub auth: OutboundAuth,
}

fn default_mode() -> SectorMode {
    SectorMode::Push
}

fn default_patient_system() -> String {
    CPR_SYSTEM.into()
}

/// How the gateway authenticates to a sector's FHIR endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OutboundAuth {
    #[default]
    None,
    Bearer {
        #[serde(default)]
        token_env: Option<String>,
        #[serde(default)]
        token_file: Option<PathBuf>,
    },
    ClientCredentials {
        token_url: String,
        client_id: String,
        #[serde(default)]
        client_secret_env: Option<String>,
        #[serde(default)]
        client_secret_file: Option<PathBuf>,
        #[serde(default)]
        scope: Option<String>,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    pub id: String,
    pub role: String,
    /// SHA-256 (hex) of the client's bearer token. Optional only for the demo, which mints one.
    #[serde(default)]
    pub token_sha256: Option<String>,
}

/// A secret value read from the environment or a file; it never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A configuration problem: where it is and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}; {fix}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub problem: String,
    pub fix: String,
}

impl Settings {
    /// Loads a configuration file plus `CAREBRIDGE_…` environment overrides and checks it.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let file = path.display().to_string();
        if !path.is_file() {
            return Err(ConfigError {
                file,
                key: "-".into(),
                problem: "the configuration file does not exist".into(),
                fix:
                    "pass an existing file with --config (config/default.toml documents every key)"
                        .into(),
            });
        }
        let built = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("CAREBRIDGE")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .map_err(|e| from_config_error(&file, e))?;
        let settings: Settings = built
            .try_deserialize()
            .map_err(|e| from_config_error(&file, e))?;
        settings.check(&file)?;
        Ok(settings)
    }

    /// Semantic checks that serde cannot express.
    pub fn check(&self, file: &str) -> Result<(), ConfigError> {
        let fail = |key: String, problem: String, fix: &str| ConfigError {
            file: file.to_owned(),
            key,
            problem,
            fix: fix.to_owned(),
        };
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return Err(fail(
                "server.listen".into(),
                format!("'{}' is not an address with a port", self.server.listen),
                "write it as IP:PORT, for example \"127.0.0.1:8080\"",
            ));
        }
        if self.server.max_json_depth < 8 || self.server.max_json_depth > 120 {
            return Err(fail(
                "server.max_json_depth".into(),
                format!("{} is outside 8..=120", self.server.max_json_depth),
                "choose a depth between 8 and 120 (FHIR resources rarely nest deeper than 20)",
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(fail(
                "server.max_body_bytes".into(),
                format!(
                    "{} bytes cannot hold a FHIR resource",
                    self.server.max_body_bytes
                ),
                "allow at least 1024 bytes (Synthea bundles need about 2 MB)",
            ));
        }
        if !(self.store.url.starts_with("sqlite:")
            || self.store.url.starts_with("postgres://")
            || self.store.url.starts_with("postgresql://"))
        {
            return Err(fail(
                "store.url".into(),
                "the store URL names neither SQLite nor PostgreSQL".into(),
                "use sqlite://PATH (the embedded default) or postgres://USER@HOST:PORT/DB",
            ));
        }
        let mut seen = HashSet::new();
        for (i, s) in self.sectors.iter().enumerate() {
            let key = |k: &str| format!("sectors[{i}].{k}");
            if !is_sector_id(&s.id) {
                return Err(fail(
                    key("id"),
                    format!("'{}' is not a valid sector id", s.id),
                    "use lowercase letters, digits and '-' starting with a letter (the id appears in URLs: /fhir/{id}/...)",
                ));
            }
            if RESERVED_SEGMENTS.contains(&s.id.as_str()) {
                return Err(fail(
                    key("id"),
                    format!("'{}' is reserved by the API", s.id),
                    "choose another sector id",
                ));
            }
            if !seen.insert(s.id.as_str()) {
                return Err(fail(
                    key("id"),
                    format!("sector '{}' is configured twice", s.id),
                    "give each sector a unique id",
                ));
            }
            if let Some(url) = &s.base_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(fail(
                    key("base_url"),
                    "not an http(s) URL".into(),
                    "write the sector's FHIR base, for example https://fhir.example.org/r4",
                ));
            }
            if s.patient_identifier_system.trim().is_empty() {
                return Err(fail(
                    key("patient_identifier_system"),
                    "empty".into(),
                    "leave it out for CPR (urn:oid:1.2.208.176.1.2) or name the system",
                ));
            }
            match &s.auth {
                OutboundAuth::Bearer {
                    token_env: None,
                    token_file: None,
                } => {
                    return Err(fail(
                        key("auth"),
                        "a bearer token needs a source".into(),
                        "set token_env or token_file",
                    ));
                }
                OutboundAuth::ClientCredentials {
                    client_secret_env: None,
                    client_secret_file: None,
                    ..
                } => {
                    return Err(fail(
                        key("auth"),
                        "a client secret needs a source".into(),
                        "set client_secret_env or client_secret_file",
                    ));
                }
                _ => {}
            }
        }
        let mut client_ids = HashSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            let key = |k: &str| format!("clients[{i}].{k}");
            if c.id.trim().is_empty() || !client_ids.insert(c.id.as_str()) {
                return Err(fail(
                    key("id"),
                    format!("client id '{}' is empty or repeated", c.id),
                    "give each client a unique id",
                ));
            }
            match c.role.split_once(':') {
                Some(("sector", sector)) if self.sectors.iter().any(|s| s.id == sector) => {}
                Some(("sector", sector)) => {
                    return Err(fail(
                        key("role"),
                        format!("sector '{sector}' is not configured"),
                        "name a configured sector: sector:<id>",
                    ));
                }
                None if ["careteam", "auditor", "admin"].contains(&c.role.as_str()) => {}
                _ => {
                    return Err(fail(
                        key("role"),
                        format!("'{}' is not a role", c.role),
                        "use sector:<sector-id>, careteam, auditor or admin",
                    ));
                }
            }
            if let Some(h) = &c.token_sha256
                && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(fail(
                    key("token_sha256"),
                    "not a SHA-256 hex digest".into(),
                    "paste the hash line printed by `carebridge token new --client ID`",
                ));
            }
        }
        Ok(())
    }

    /// Profile sets named by sectors must exist under `fhir.profiles_dir`.
    pub fn check_profiles(
        &self,
        file: &str,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<(), ConfigError> {
        for (i, s) in self.sectors.iter().enumerate() {
            if let Some(p) = &s.profile
                && !known(p)
            {
                return Err(ConfigError {
                    file: file.to_owned(),
                    key: format!("sectors[{i}].profile"),
                    problem: format!("no rule set '{p}' under {}/rules/", self.fhir.profiles_dir.display()),
                    fix: "name a folder of fhir-profiles/rules/ or leave the key out for structural validation only".into(),
                });
            }
        }
        Ok(())
    }

    pub fn sector(&self, id: &str) -> Option<&SectorSettings> {
        self.sectors.iter().find(|s| s.id == id)
    }
}

/// Path segments under `/fhir` that cannot be sector ids.
const RESERVED_SEGMENTS: [&str; 3] = ["metadata", "_history", "_search"];

fn is_sector_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && id.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn from_config_error(file: &str, e: config::ConfigError) -> ConfigError {
    let text = e.to_string();
    // The config crate names the key as "for key `x`" or "... `x`"; keep its words.
    let key = text
        .split("for key `")
        .nth(1)
        .and_then(|r| r.split('`').next())
        .map(str::to_owned)
        .unwrap_or_else(|| "-".into());
    let fix = if text.contains("unknown field") {
        "remove or correct the key (config/default.toml lists every valid key)"
    } else if text.contains("missing field") {
        "add the missing key (config/default.toml documents it)"
    } else if text.contains("unknown variant") {
        "use one of the values listed"
    } else {
        "correct the value as described (config/default.toml documents every key)"
    };
    ConfigError {
        file: file.to_owned(),
        key,
        problem: text,
        fix: fix.into(),
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
    fn names_file_key_and_fix() {
        let err =
            load("[[sectors]]\nid = \"GP\"\nname = \"x\"\nkind = \"hospital\"\n").unwrap_err();
        assert_eq!(err.key, "sectors[0].id");
        assert!(err.to_string().contains("lowercase"), "{err}");

        let err = load("[server]\nlisten = \"nowhere\"\n").unwrap_err();
        assert_eq!(err.key, "server.listen");

        let err = load("[[sectors]]\nid = \"gp\"\nname = \"x\"\nkind = \"clinic\"\n").unwrap_err();
        assert!(err.problem.contains("clinic"), "{err}");

        let err = load("[server]\nlisen = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.problem.contains("lisen"), "{err}");

        let err = load("[[clients]]\nid = \"a\"\nrole = \"sector:nowhere\"\n").unwrap_err();
        assert_eq!(err.key, "clients[0].role");
    }

    #[test]
    fn defaults_apply() {
        let s = load("").unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:8080");
        assert!(s.store.url.starts_with("sqlite:"));
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(
            format!("{:?}", Secret::new("hunter2".into())),
            "Secret(***)"
        );
    }
}
