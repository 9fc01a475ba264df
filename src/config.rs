//! Typed configuration: a TOML file (every key documented in `config/default.toml`), overridden
//! by `CAREBRIDGE_…` environment variables (`CAREBRIDGE_STORE__URL` sets `store.url`).
//! Every problem is reported with the file, the key and the fix; secrets never print.

mod access;
pub use access::{AccessSettings, RELATIONSHIPS, ReasonSettings, split_system_value};
mod ui;
pub use ui::{AckReason, OidcSettings, UiSettings};

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
    pub alerts: AlertSettings,
    #[serde(default)]
    pub access: AccessSettings,
    #[serde(default)]
    pub sectors: Vec<SectorSettings>,
    #[serde(default)]
    pub clients: Vec<ClientSettings>,
    #[serde(default)]
    pub exchange: ExchangeSettings,
    #[serde(default)]
    pub auth: AuthSettings,
    #[serde(default)]
    pub audit: AuditSettings,
    #[serde(default)]
    pub ui: UiSettings,
}

/// Fragmentation detection: thresholds and vocabularies (see docs/alerts.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    /// Detect and keep alerts when resources change.
    pub enabled: bool,
    /// Different active ingredients across sectors at or above which polypharmacy is raised.
    pub polypharmacy_threshold: usize,
    /// Hours a Communication that asks for a reply may wait for one.
    pub reply_within_hours: u64,
    /// Chronic conditions: `system|code` (an SKS-D or ICD-10 code covers its hierarchy), or
    /// `system|prefix*`; empty means the default list of `fhir-profiles/conditions/`.
    pub chronic: Vec<String>,
    /// CareTeam participant roles that coordinate care (`system|code`).
    pub coordinator_roles: Vec<String>,
    /// Communication categories that ask for a reply (`system|code`).
    pub reply_requested: Vec<String>,
    /// An active medication or service request naming a condition as reason addresses it.
    pub addressed_by_orders: bool,
    /// Procedure/Observation codes that record a systematic needs assessment (`system|code`,
    /// `system|prefix*`).
    pub needs_assessment_codes: Vec<String>,
    /// Questionnaires (canonical URLs) whose completed responses are needs assessments.
    pub needs_assessment_questionnaires: Vec<String>,
    /// Months a needs assessment counts; 0 turns needs-assessment-overdue off.
    pub needs_assessment_months: u32,
    /// How often each replica looks for due time-based evaluations (ms).
    pub schedule_interval_ms: u64,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            enabled: true,
            polypharmacy_threshold: 10,
            reply_within_hours: 72,
            // Empty: the default list of fhir-profiles/conditions/chronic-conditions.json.
            chronic: Vec::new(),
            coordinator_roles: vec!["http://snomed.info/sct|768730001".into()],
            reply_requested: vec![
                "http://carebridge.example.org/fhir/CodeSystem/communication-category|reply-requested"
                    .into(),
            ],
            addressed_by_orders: true,
            needs_assessment_codes: vec![
                "urn:oid:1.2.208.176.2.21|J*".into(),
                "http://carebridge.example.org/fhir/CodeSystem/assessment|needs-assessment".into(),
            ],
            needs_assessment_questionnaires: vec![
                "http://carebridge.example.org/fhir/Questionnaire/needs-assessment".into(),
            ],
            needs_assessment_months: 12,
            schedule_interval_ms: 15_000,
        }
    }
}

/// Routing, delivery and polling between the sectors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExchangeSettings {
    /// Delivery workers and pollers run in `serve` (the outbox is written either way).
    pub enabled: bool,
    /// Which resource types go from which sectors to which; empty means the default routes.
    pub routes: Vec<RouteSettings>,
    /// Attempts before an entry is dead-lettered; 0 (the default): no limit by count, retries
    /// are bounded by `max_age_secs` alone.
    pub max_attempts: u32,
    /// Age (seconds since the entry was written) after which an entry that still fails with a
    /// retryable failure is dead-lettered.
    pub max_age_secs: u64,
    /// How long a claimed outbox entry stays leased to one process; renewed while its batch
    /// runs, so an entry of a process that died is taken over this long after its last renewal.
    pub lease_secs: u64,
    /// This process's name in leases (with its process id); the host name when unset. A process
    /// that starts takes back at once what a dead process of the same name held.
    pub instance: Option<String>,
    /// First retry delay; each retry doubles it (with jitter) up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Timeout of one HTTP request to a sector.
    pub request_timeout_ms: u64,
    /// Entries one worker claims at a time.
    pub batch: u32,
    /// How often idle delivery workers look for entries written by other replicas.
    pub idle_poll_ms: u64,
    /// How often pull-mode sectors are polled.
    pub poll_interval_ms: u64,
    /// Entries per page when polling (`_count`).
    pub poll_page_size: u32,
    /// Consecutive failed attempts after which a sector endpoint is reported failing (once,
    /// until it recovers).
    pub failing_after_failures: u32,
    /// Age (seconds) of the oldest entry waiting for a sector, after a failed attempt, at
    /// which the endpoint is reported failing even before `failing_after_failures`.
    pub failing_after_age_secs: u64,
    /// A sector that joins the care of more new patients than this within an hour raises an
    /// operational alert (a warning and `carebridge_care_join_alerts_total`); 0 turns it off.
    pub max_new_patients_per_hour: u32,
}

impl Default for ExchangeSettings {
    fn default() -> Self {
        ExchangeSettings {
            enabled: true,
            routes: Vec::new(),
            max_attempts: 0,
            max_age_secs: 7 * 86_400,
            lease_secs: 10,
            instance: None,
            retry_initial_ms: 1_000,
            retry_max_ms: 300_000,
            request_timeout_ms: 30_000,
            batch: 16,
            idle_poll_ms: 1_000,
            poll_interval_ms: 30_000,
            poll_page_size: 100,
            failing_after_failures: 3,
            failing_after_age_secs: 900,
            max_new_patients_per_hour: 100,
        }
    }
}

/// One route: resource types from some sectors to some sectors.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// Resource types this route moves.
    pub types: Vec<String>,
    /// Source sector ids; empty means every sector.
    #[serde(default)]
    pub from: Vec<String>,
    /// `care` (every other sector taking part in the patient's care), `recipients` (the
    /// sectors of a Communication's recipients) or a list of sector ids.
    pub to: RouteTarget,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RouteTarget {
    Rule(RouteRule),
    Sectors(Vec<String>),
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RouteRule {
    Care,
    Recipients,
}

impl ExchangeSettings {
    /// The configured routes, or the default ones: CarePlan, Condition, CareTeam and the
    /// medication resources of a patient go to every other sector taking part in the patient's
    /// care; a Communication goes to the sectors of its recipients.
    pub fn effective_routes(&self) -> Vec<RouteSettings> {
        if !self.routes.is_empty() {
            return self.routes.clone();
        }
        vec![
            RouteSettings {
                types: DEFAULT_CARE_TYPES.iter().map(|t| (*t).to_owned()).collect(),
                from: Vec::new(),
                to: RouteTarget::Rule(RouteRule::Care),
            },
            RouteSettings {
                types: vec!["Communication".into()],
                from: Vec::new(),
                to: RouteTarget::Rule(RouteRule::Recipients),
            },
        ]
    }
}

/// The types of the default care route.
pub const DEFAULT_CARE_TYPES: [&str; 5] = [
    "CarePlan",
    "Condition",
    "CareTeam",
    "MedicationRequest",
    "MedicationStatement",
];

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
    /// Requests per second each client address may send, checked before authentication (a
    /// token bucket per address); 0 turns it off.
    pub address_rate_limit_per_second: u32,
    /// Requests an address may send at once before its per-second rate applies.
    pub address_rate_limit_burst: u32,
    /// The URL clients reach the gateway at (scheme, host, port and any path prefix, without
    /// `/fhir`): every link and `Location` is built from it, never from the Host header.
    pub public_base_url: Option<String>,
    /// Origins that browsers may call the API from (CORS); none by default.
    pub cors_origins: Vec<String>,
    /// Not configuration: the FHIR base of the address the server listens on, once bound
    /// (`Gateway::listening_on`), so that references to the gateway's own sector bases are
    /// recognised wherever the settings are read.
    #[serde(skip)]
    pub listening_fhir_base: std::sync::OnceLock<String>,
}

impl ServerSettings {
    /// The FHIR base URL of the API as configured (`public_base_url` + `/fhir`), if set.
    pub fn public_fhir_base(&self) -> Option<String> {
        self.public_base_url
            .as_deref()
            .map(|u| format!("{}/fhir", u.trim_end_matches('/')))
    }

    /// The gateway's own FHIR base: the public one, else the address it listens on.
    pub fn own_fhir_base(&self) -> String {
        self.public_fhir_base()
            .or_else(|| self.listening_fhir_base.get().cloned())
            .unwrap_or_else(|| format!("http://{}/fhir", self.listen))
    }
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
            address_rate_limit_per_second: 2000,
            address_rate_limit_burst: 4000,
            public_base_url: None,
            cors_origins: Vec::new(),
            listening_fhir_base: std::sync::OnceLock::new(),
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
    /// A create without an id whose first business identifier the sector already used updates
    /// that resource (for senders that re-send creates after a lost answer and cannot send
    /// `If-None-Exist`). Off by default: such a create makes a new resource.
    #[serde(default)]
    pub resend_by_identifier: bool,
    /// Identifier systems whose numbers this sector issues itself: its replacement CPR numbers
    /// (erstatningspersonnummer). A Patient links by them as by `patient_identifier_system`, and
    /// a Patient naming one of them beside a real CPR may join the two gateway patients (the
    /// sector learnt who its replacement number stood for); no other write joins two gateway
    /// patients without review.
    #[serde(default)]
    pub replacement_identifier_systems: Vec<String>,
    /// This sector joins a patient's care (and receives what the `care` routes carry, with a
    /// backfill) as soon as it sends the patient's Patient. Off by default: it joins with its
    /// first clinical record of the patient, or when a Communication is addressed to it.
    #[serde(default)]
    pub join_care_on_patient: bool,
    /// Other spellings of `base_url` that references may use (another host name or scheme of
    /// the same server): a reference under one of them is recognised as this sector's.
    #[serde(default)]
    pub base_url_aliases: Vec<String>,
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    pub id: String,
    pub role: String,
    /// SHA-256 (hex) of the client's bearer token. Optional only for the demo, which mints one.
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// For a careteam client used by one person: their practitioner identifier `system|value`.
    #[serde(default)]
    pub practitioner: Option<String>,
    /// The person's organisation identifier `system|value` (e.g. a SOR code).
    #[serde(default)]
    pub organization: Option<String>,
    /// The configured sector the person's organisation is.
    #[serde(default)]
    pub sector: Option<String>,
    /// A careteam system that enforces the treatment relationship itself (its users can only
    /// open patients in their care) and asserts it for every look-up: its reads are granted
    /// without a relationship here, audited with the basis `asserted`; blocks still apply.
    #[serde(default)]
    pub asserts_relationship: bool,
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
                    .try_parsing(true)
                    .source(Some(overrides_from_env())),
            )
            .build()
            .map_err(|e| from_config_error(&file, e))?;
        let settings: Settings = built
            .try_deserialize()
            .map_err(|e| from_config_error(&file, e))?;
        settings.check(&file)?;
        Ok(settings)
    }

    /// Semantic checks that serde cannot express, section by section; the first problem found
    /// is reported.
    pub fn check(&self, file: &str) -> Result<(), ConfigError> {
        self.check_server(file)?;
        self.check_store(file)?;
        self.check_sectors(file)?;
        self.check_exchange(file)?;
        self.check_auth(file)?;
        self.check_alerts(file)?;
        self.check_access(file)?;
        self.check_ui(file)?;
        self.check_clients(file)?;
        check_audit(file, &self.audit)
    }

    /// `[server]`: an address with a port, a JSON depth and a body limit that FHIR fits in.
    fn check_server(&self, file: &str) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.listen.parse::<SocketAddr>().is_err() {
            return Err(problem(
                file,
                "server.listen",
                format!("'{}' is not an address with a port", s.listen),
                "write it as IP:PORT, for example \"127.0.0.1:8080\"",
            ));
        }
        if s.max_json_depth < 8 || s.max_json_depth > 120 {
            return Err(problem(
                file,
                "server.max_json_depth",
                format!("{} is outside 8..=120", s.max_json_depth),
                "choose a depth between 8 and 120 (FHIR resources rarely nest deeper than 20)",
            ));
        }
        if let Some(url) = &s.public_base_url {
            let ok = (url.starts_with("https://") || url.starts_with("http://"))
                && !url.contains(['?', '#'])
                && !url.trim_end_matches('/').ends_with("/fhir");
            if !ok {
                return Err(problem(
                    file,
                    "server.public_base_url",
                    format!("'{url}' is not a base URL"),
                    "write the http(s) URL clients reach the gateway at, without /fhir, query or fragment, for example \"https://carebridge.example.dk\"",
                ));
            }
        }
        for origin in &s.cors_origins {
            let ok = (origin.starts_with("https://") || origin.starts_with("http://"))
                && origin.splitn(4, '/').nth(3).is_none()
                && origin.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(problem(
                    file,
                    "server.cors_origins",
                    format!("'{origin}' is not an origin"),
                    "list origins as scheme://host[:port] without a path, for example \"https://app.example.dk\"",
                ));
            }
        }
        if s.max_body_bytes < 1024 {
            return Err(problem(
                file,
                "server.max_body_bytes",
                format!("{} bytes cannot hold a FHIR resource", s.max_body_bytes),
                "allow at least 1024 bytes (Synthea bundles need about 2 MB)",
            ));
        }
        Ok(())
    }

    /// `[store]`: SQLite or PostgreSQL.
    fn check_store(&self, file: &str) -> Result<(), ConfigError> {
        let url = &self.store.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(problem(
                file,
                "store.url",
                "the store URL names neither SQLite nor PostgreSQL",
                "use sqlite://PATH (the embedded default) or postgres://USER@HOST:PORT/DB",
            ));
        }
        Ok(())
    }

    /// `[[sectors]]`: each sector's id, endpoint and outbound credentials.
    fn check_sectors(&self, file: &str) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, s) in self.sectors.iter().enumerate() {
            check_sector_id(file, i, &s.id, &mut seen)?;
            check_sector_endpoint(file, i, s)?;
            check_outbound_auth(file, i, &s.auth)?;
        }
        Ok(())
    }

    /// `[exchange]`: its limits, its routes, and a base URL for every polled sector.
    fn check_exchange(&self, file: &str) -> Result<(), ConfigError> {
        check_exchange_limits(file, &self.exchange)?;
        for (i, r) in self.exchange.routes.iter().enumerate() {
            self.check_route(file, i, r)?;
        }
        self.check_polled_sectors(file)
    }

    /// One route: resource type names, and configured sectors to route from and to.
    fn check_route(&self, file: &str, i: usize, r: &RouteSettings) -> Result<(), ConfigError> {
        let key = |k: &str| format!("exchange.routes[{i}].{k}");
        if r.types.is_empty() {
            return Err(problem(
                file,
                key("types"),
                "no resource types",
                "name the resource types this route moves, e.g. [\"Condition\"]",
            ));
        }
        if let Some(t) = r
            .types
            .iter()
            .find(|t| !t.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        {
            return Err(problem(
                file,
                key("types"),
                format!("'{t}' is not a resource type name"),
                "use FHIR resource type names such as CarePlan or Condition",
            ));
        }
        if let Some(from) = r.from.iter().find(|from| self.sector(from).is_none()) {
            return Err(problem(
                file,
                key("from"),
                format!("sector '{from}' is not configured"),
                "name configured sector ids, or leave `from` out for every sector",
            ));
        }
        if let RouteTarget::Sectors(to) = &r.to {
            if to.is_empty() {
                return Err(problem(
                    file,
                    key("to"),
                    "no target sectors",
                    "use \"care\", \"recipients\" or a list of sector ids",
                ));
            }
            if let Some(t) = to.iter().find(|t| self.sector(t).is_none()) {
                return Err(problem(
                    file,
                    key("to"),
                    format!("sector '{t}' is not configured"),
                    "use \"care\", \"recipients\" or configured sector ids",
                ));
            }
        }
        Ok(())
    }

    /// A sector the gateway polls needs a base URL.
    fn check_polled_sectors(&self, file: &str) -> Result<(), ConfigError> {
        for (i, s) in self.sectors.iter().enumerate() {
            if matches!(s.mode, SectorMode::Pull | SectorMode::Both) && s.base_url.is_none() {
                return Err(problem(
                    file,
                    format!("sectors[{i}].base_url"),
                    format!(
                        "sector '{}' is polled (mode = \"{}\") but has no base URL",
                        s.id,
                        s.mode.as_str()
                    ),
                    "set base_url to the sector's FHIR base, or use mode = \"push\"",
                ));
            }
        }
        Ok(())
    }

    /// `[alerts]`: every vocabulary entry is `system|code`.
    fn check_alerts(&self, file: &str) -> Result<(), ConfigError> {
        for (key, list) in [
            ("alerts.chronic", &self.alerts.chronic),
            ("alerts.coordinator_roles", &self.alerts.coordinator_roles),
            ("alerts.reply_requested", &self.alerts.reply_requested),
            (
                "alerts.needs_assessment_codes",
                &self.alerts.needs_assessment_codes,
            ),
        ] {
            if let Some(bad) = list.iter().find(|e| {
                e.split_once('|')
                    .is_none_or(|(s, c)| s.is_empty() || c.is_empty())
            }) {
                return Err(problem(
                    file,
                    key,
                    format!("'{bad}' is not system|code"),
                    "write each entry as system|code (a trailing * matches a code prefix)",
                ));
            }
        }
        if self.alerts.schedule_interval_ms == 0 {
            return Err(problem(
                file,
                "alerts.schedule_interval_ms",
                "0 would look for due evaluations without pause".to_owned(),
                "set it to the milliseconds between looks (default 15000)",
            ));
        }
        Ok(())
    }

    /// `[[clients]]`: unique ids, roles of configured sectors, token hashes that are hashes.
    fn check_clients(&self, file: &str) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            let key = |k: &str| format!("clients[{i}].{k}");
            if c.id.trim().is_empty() || !ids.insert(c.id.as_str()) {
                return Err(problem(
                    file,
                    key("id"),
                    format!("client id '{}' is empty or repeated", c.id),
                    "give each client a unique id",
                ));
            }
            self.check_client_role(file, i, &c.role)?;
            self.check_client_person(file, i, c)?;
            if let Some(h) = &c.token_sha256
                && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(problem(
                    file,
                    key("token_sha256"),
                    "not a SHA-256 hex digest",
                    "paste the hash line printed by `carebridge token new --client ID`",
                ));
            }
        }
        Ok(())
    }

    /// A client's role: `sector:<configured sector>`, `careteam`, `auditor` or `admin`.
    fn check_client_role(&self, file: &str, i: usize, role: &str) -> Result<(), ConfigError> {
        let key = format!("clients[{i}].role");
        match role.split_once(':') {
            Some(("sector", sector)) if self.sector(sector).is_some() => Ok(()),
            Some(("sector", sector)) => Err(problem(
                file,
                key,
                format!("sector '{sector}' is not configured"),
                "name a configured sector: sector:<id>",
            )),
            None if ["careteam", "auditor", "admin"].contains(&role) => Ok(()),
            _ => Err(problem(
                file,
                key,
                format!("'{role}' is not a role"),
                "use sector:<sector-id>, careteam, auditor or admin",
            )),
        }
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

/// The `CAREBRIDGE_<SECTION>__<KEY>` variables of the environment. Only the sections that hold
/// plain keys take part, so that other `CAREBRIDGE_…` variables (a test's database URL, say)
/// are not mistaken for configuration.
fn overrides_from_env() -> config::Map<String, String> {
    const SECTIONS: [&str; 6] = [
        "SERVER__",
        "STORE__",
        "FHIR__",
        "EXCHANGE__",
        "ALERTS__",
        "AUTH__",
    ];
    std::env::vars()
        .filter(|(k, _)| {
            k.strip_prefix("CAREBRIDGE_")
                .is_some_and(|rest| SECTIONS.iter().any(|s| rest.starts_with(s)))
        })
        .collect()
}

/// The sector id under which the gateway keeps what it authors itself (alert messages): a
/// pseudo-sector no configured sector may take.
pub const GATEWAY_SECTOR: &str = "carebridge";

/// Path segments under `/fhir` that cannot be sector ids.
const RESERVED_SEGMENTS: [&str; 4] = ["metadata", "_history", "_search", GATEWAY_SECTOR];

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
/// A problem at `key` of `file`, and how to fix it.
fn problem(file: &str, key: impl Into<String>, what: impl Into<String>, fix: &str) -> ConfigError {
    ConfigError {
        file: file.to_owned(),
        key: key.into(),
        problem: what.into(),
        fix: fix.to_owned(),
    }
}

/// A sector id: well-formed, not a reserved path segment, not taken by an earlier sector.
fn check_sector_id<'a>(
    file: &str,
    i: usize,
    id: &'a str,
    seen: &mut HashSet<&'a str>,
) -> Result<(), ConfigError> {
    let key = format!("sectors[{i}].id");
    if !is_sector_id(id) {
        return Err(problem(
            file,
            key,
            format!("'{id}' is not a valid sector id"),
            "use lowercase letters, digits and '-' starting with a letter (the id appears in URLs: /fhir/{id}/...)",
        ));
    }
    if RESERVED_SEGMENTS.contains(&id) {
        return Err(problem(
            file,
            key,
            format!("'{id}' is reserved by the API"),
            "choose another sector id",
        ));
    }
    if !seen.insert(id) {
        return Err(problem(
            file,
            key,
            format!("sector '{id}' is configured twice"),
            "give each sector a unique id",
        ));
    }
    Ok(())
}

/// A sector's FHIR base (http or https, when set) and its patient identifier system.
fn check_sector_endpoint(file: &str, i: usize, s: &SectorSettings) -> Result<(), ConfigError> {
    if let Some(url) = &s.base_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(problem(
            file,
            format!("sectors[{i}].base_url"),
            "not an http(s) URL",
            "write the sector's FHIR base, for example https://fhir.example.org/r4",
        ));
    }
    if s.patient_identifier_system.trim().is_empty() {
        return Err(problem(
            file,
            format!("sectors[{i}].patient_identifier_system"),
            "empty",
            "leave it out for CPR (urn:oid:1.2.208.176.1.2) or name the system",
        ));
    }
    Ok(())
}

/// A sector's outbound credentials name where their secret comes from.
fn check_outbound_auth(file: &str, i: usize, auth: &OutboundAuth) -> Result<(), ConfigError> {
    let key = format!("sectors[{i}].auth");
    match auth {
        OutboundAuth::Bearer {
            token_env: None,
            token_file: None,
        } => Err(problem(
            file,
            key,
            "a bearer token needs a source",
            "set token_env or token_file",
        )),
        OutboundAuth::ClientCredentials {
            client_secret_env: None,
            client_secret_file: None,
            ..
        } => Err(problem(
            file,
            key,
            "a client secret needs a source",
            "set client_secret_env or client_secret_file",
        )),
        _ => Ok(()),
    }
}

/// `[exchange]`'s numbers: each within its range, and the longest retry delay at least the
/// first.
fn check_exchange_limits(file: &str, x: &ExchangeSettings) -> Result<(), ConfigError> {
    let bounds: [(&str, u64, u64, u64); 11] = [
        ("max_attempts", u64::from(x.max_attempts), 0, 1_000_000),
        ("max_age_secs", x.max_age_secs, 1, 366 * 86_400),
        ("lease_secs", x.lease_secs, 2, 3_600),
        (
            "failing_after_failures",
            u64::from(x.failing_after_failures),
            1,
            1_000,
        ),
        (
            "failing_after_age_secs",
            x.failing_after_age_secs,
            1,
            604_800,
        ),
        ("batch", u64::from(x.batch), 1, 1_000),
        ("request_timeout_ms", x.request_timeout_ms, 100, 600_000),
        ("retry_initial_ms", x.retry_initial_ms, 10, 3_600_000),
        ("idle_poll_ms", x.idle_poll_ms, 10, 3_600_000),
        ("poll_interval_ms", x.poll_interval_ms, 100, 86_400_000),
        ("poll_page_size", u64::from(x.poll_page_size), 1, 1_000),
    ];
    check_bounds(file, "exchange", &bounds)?;
    if let Some(name) = &x.instance
        && (name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(problem(
            file,
            "exchange.instance",
            format!("'{name}' is not a name of 1 to 64 letters, digits, '.', '-' or '_'"),
            "name this process like a host name, or leave the key out for the host name",
        ));
    }
    if x.retry_max_ms < x.retry_initial_ms {
        return Err(problem(
            file,
            "exchange.retry_max_ms",
            "smaller than exchange.retry_initial_ms",
            "make the longest retry delay at least the first one",
        ));
    }
    Ok(())
}

/// `(key, value, lowest, highest)` of a section: the first value out of its range is a problem.
fn check_bounds(
    file: &str,
    section: &str,
    bounds: &[(&str, u64, u64, u64)],
) -> Result<(), ConfigError> {
    for &(key, value, lo, hi) in bounds {
        if value < lo || value > hi {
            return Err(problem(
                file,
                format!("{section}.{key}"),
                format!("{value} is outside {lo}..={hi}"),
                "choose a value in that range (config/default.toml gives the default)",
            ));
        }
    }
    Ok(())
}

/// Bearer JWTs from an OAuth2 authorization server (SMART Backend Services), accepted besides
/// the static tokens of `[[clients]]`. Without an issuer only static tokens work.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// The issuer whose tokens are accepted: the exact `iss` claim.
    pub issuer: Option<String>,
    /// The value the `aud` claim must hold (or contain).
    pub audience: Option<String>,
    /// The issuer's JSON Web Key Set (`http://` or `https://`).
    pub jwks_url: Option<String>,
    /// The authorisation server's token endpoint, announced in the CapabilityStatement and at
    /// `/.well-known/smart-configuration` (SMART App Launch discovery).
    pub token_endpoint: Option<String>,
    /// Its authorisation endpoint, announced beside the token endpoint when set.
    pub authorization_endpoint: Option<String>,
    /// Keys older than this are refetched; and a token whose `kid` is not cached causes at most
    /// one fetch per this many seconds.
    pub jwks_refresh_secs: u64,
    /// Timeout of one JWKS fetch.
    pub jwks_timeout_ms: u64,
    /// Clock skew allowed when checking `exp` and `nbf`.
    pub leeway_secs: u64,
    /// The claim that names the client (audited, rate-limited); `sub` when a token lacks it.
    pub client_id_claim: String,
    /// The claim that names the sector of a token whose scope maps to the role `sector`.
    pub sector_claim: Option<String>,
    /// Which scope of the `scope` claim grants which role.
    pub scopes: Vec<ScopeRoleSettings>,
    /// The claim holding a care-team person's practitioner identifier value, and its system.
    pub practitioner_claim: Option<String>,
    pub practitioner_system: String,
    /// The claim holding the person's organisation identifier value, and its system.
    pub organization_claim: Option<String>,
    pub organization_system: String,
    /// The claim naming the sector the person works in (a configured sector id).
    pub person_sector_claim: Option<String>,
    /// The claim of a SMART launch's patient context (a gateway patient id or `system|value`).
    pub patient_claim: String,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            issuer: None,
            audience: None,
            jwks_url: None,
            token_endpoint: None,
            authorization_endpoint: None,
            jwks_refresh_secs: 300,
            jwks_timeout_ms: 5_000,
            leeway_secs: 30,
            client_id_claim: "client_id".into(),
            sector_claim: None,
            scopes: Vec::new(),
            practitioner_claim: None,
            practitioner_system: "https://autregweb.sst.dk".into(),
            organization_claim: None,
            organization_system: "urn:oid:1.2.208.176.1.1".into(),
            person_sector_claim: None,
            patient_claim: "patient".into(),
        }
    }
}

/// One scope and the role it grants: `sector:<id>`, `sector` (the sector named by the token's
/// `auth.sector_claim`), `careteam`, `auditor` or `admin`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScopeRoleSettings {
    pub scope: String,
    pub role: String,
}

impl Settings {
    /// `[auth]`: complete when an issuer is set, empty otherwise; every scope maps to a role.
    fn check_auth(&self, file: &str) -> Result<(), ConfigError> {
        let a = &self.auth;
        let Some(issuer) = &a.issuer else {
            return check_auth_unused(file, a);
        };
        check_issuer(file, issuer, a)?;
        check_auth_claims(file, a)?;
        if a.scopes.is_empty() {
            return Err(auth_problem(
                file,
                "scopes",
                "no scope is mapped to a role, so no token could be used",
                "add [[auth.scopes]] tables with scope and role (config/default.toml shows them)",
            ));
        }
        let mut seen = HashSet::new();
        for (i, m) in a.scopes.iter().enumerate() {
            if m.scope.is_empty() || m.scope.contains(char::is_whitespace) {
                return Err(auth_problem(
                    file,
                    &format!("scopes[{i}].scope"),
                    format!("'{}' is not one scope", m.scope),
                    "write a single scope without spaces, e.g. \"system/AuditEvent.read\"",
                ));
            }
            if !seen.insert(m.scope.as_str()) {
                return Err(auth_problem(
                    file,
                    &format!("scopes[{i}].scope"),
                    format!("scope '{}' is mapped twice", m.scope),
                    "map each scope to one role",
                ));
            }
            self.check_scope_role(file, i, &m.role)?;
        }
        Ok(())
    }

    /// The role a scope grants: `sector:<configured sector>`, `sector` (with a sector claim),
    /// `careteam`, `auditor` or `admin`.
    fn check_scope_role(&self, file: &str, i: usize, role: &str) -> Result<(), ConfigError> {
        let key = format!("scopes[{i}].role");
        match role.split_once(':') {
            Some(("sector", sector)) if self.sector(sector).is_some() => Ok(()),
            Some(("sector", sector)) => Err(auth_problem(
                file,
                &key,
                format!("sector '{sector}' is not configured"),
                "name a configured sector: sector:<id>, or \"sector\" to take it from auth.sector_claim",
            )),
            None if role == "sector" => match self.auth.sector_claim {
                Some(_) => Ok(()),
                None => Err(auth_problem(
                    file,
                    &key,
                    "role \"sector\" takes the sector from a claim, but auth.sector_claim is not set",
                    "set auth.sector_claim to the claim that carries the sector id, or write sector:<id>",
                )),
            },
            None if ["careteam", "auditor", "admin"].contains(&role) => Ok(()),
            _ => Err(auth_problem(
                file,
                &key,
                format!("'{role}' is not a role"),
                "use sector:<sector-id>, sector, careteam, auditor or admin",
            )),
        }
    }
}

/// A problem at `auth.<key>`.
fn auth_problem(file: &str, key: &str, what: impl Into<String>, fix: &str) -> ConfigError {
    problem(file, format!("auth.{key}"), what, fix)
}

/// Without an issuer, no other key of `[auth]` may be set (it would have no effect).
fn check_auth_unused(file: &str, a: &AuthSettings) -> Result<(), ConfigError> {
    let set = [
        ("audience", a.audience.is_some()),
        ("jwks_url", a.jwks_url.is_some()),
        ("sector_claim", a.sector_claim.is_some()),
        ("scopes", !a.scopes.is_empty()),
    ];
    if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
        return Err(auth_problem(
            file,
            "issuer",
            format!("auth.{key} is set but no issuer is"),
            "set auth.issuer to the authorization server's `iss`, or remove the [auth] section (static tokens only)",
        ));
    }
    Ok(())
}

/// The issuer, the audience its tokens must name, and where its keys are.
fn check_issuer(file: &str, issuer: &str, a: &AuthSettings) -> Result<(), ConfigError> {
    if issuer.trim().is_empty() {
        return Err(auth_problem(
            file,
            "issuer",
            "empty",
            "write the exact `iss` of the tokens, e.g. \"https://idp.example.org\"",
        ));
    }
    if a.audience.as_deref().is_none_or(|s| s.trim().is_empty()) {
        return Err(auth_problem(
            file,
            "audience",
            "missing or empty while an issuer is set",
            "set the `aud` value the issuer writes into tokens for carebridge, e.g. \"carebridge\"",
        ));
    }
    match a.jwks_url.as_deref() {
        Some(u) if u.starts_with("https://") || u.starts_with("http://") => Ok(()),
        Some(_) => Err(auth_problem(
            file,
            "jwks_url",
            "not an http(s) URL",
            "write the issuer's JWKS address, e.g. https://idp.example.org/.well-known/jwks.json",
        )),
        None => Err(auth_problem(
            file,
            "jwks_url",
            "missing while an issuer is set",
            "set the issuer's JWKS address (`jwks_uri` of its .well-known metadata)",
        )),
    }
}

/// The key set's refresh and timeout, the clock leeway, and the claims read from a token.
fn check_auth_claims(file: &str, a: &AuthSettings) -> Result<(), ConfigError> {
    let bounds: [(&str, u64, u64, u64); 3] = [
        ("jwks_refresh_secs", a.jwks_refresh_secs, 1, 86_400),
        ("jwks_timeout_ms", a.jwks_timeout_ms, 100, 60_000),
        ("leeway_secs", a.leeway_secs, 0, 300),
    ];
    check_bounds(file, "auth", &bounds)?;
    if a.client_id_claim.trim().is_empty() {
        return Err(auth_problem(
            file,
            "client_id_claim",
            "empty",
            "name the claim that identifies the client (client_id by default)",
        ));
    }
    if a.sector_claim
        .as_deref()
        .is_some_and(|c| c.trim().is_empty())
    {
        return Err(auth_problem(
            file,
            "sector_claim",
            "empty",
            "name the claim that carries the sector id, or leave the key out",
        ));
    }
    Ok(())
}

/// `[audit]`: signed checkpoints of the audit log and the witnesses they are pushed to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// A file holding the log's signing key (`carebridge audit keygen` writes one); never the
    /// database.
    pub signing_key_file: Option<PathBuf>,
    /// Or the name of an environment variable holding it.
    pub signing_key_env: Option<String>,
    /// A checkpoint is signed once this many rows were appended since the last one…
    pub checkpoint_every_rows: u64,
    /// …or this many seconds after the last one, if anything was appended.
    pub checkpoint_every_secs: u64,
    /// Witness base URLs: each checkpoint is POSTed to `<url>/add-checkpoint`.
    pub witnesses: Vec<String>,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            signing_key_file: None,
            signing_key_env: None,
            checkpoint_every_rows: 1_000,
            checkpoint_every_secs: 60,
            witnesses: Vec::new(),
        }
    }
}

impl AuditSettings {
    /// True when a signing key is configured (checkpoints are signed).
    pub fn signs(&self) -> bool {
        self.signing_key_file.is_some() || self.signing_key_env.is_some()
    }
}

/// `[audit]`: one source of the key, intervals of at least 1, witnesses only with a key and
/// each an http(s) URL, no two alike.
fn check_audit(file: &str, a: &AuditSettings) -> Result<(), ConfigError> {
    if a.signing_key_file.is_some() && a.signing_key_env.is_some() {
        return Err(problem(
            file,
            "audit.signing_key_env",
            "the signing key has two sources",
            "set either audit.signing_key_file or audit.signing_key_env",
        ));
    }
    for (key, v) in [
        ("audit.checkpoint_every_rows", a.checkpoint_every_rows),
        ("audit.checkpoint_every_secs", a.checkpoint_every_secs),
    ] {
        if v == 0 {
            return Err(problem(
                file,
                key,
                "must be at least 1",
                "set a positive number",
            ));
        }
    }
    if !a.witnesses.is_empty() && !a.signs() {
        return Err(problem(
            file,
            "audit.witnesses",
            "witnesses are configured but no checkpoint is signed",
            "set audit.signing_key_file or audit.signing_key_env (carebridge audit keygen makes a key), or remove the witnesses",
        ));
    }
    let mut seen = HashSet::new();
    for (i, w) in a.witnesses.iter().enumerate() {
        let key = format!("audit.witnesses[{i}]");
        if !(w.starts_with("http://") || w.starts_with("https://")) || w.len() < 10 {
            return Err(problem(
                file,
                key,
                format!("'{w}' is not an http(s) URL"),
                "give the witness's base URL, e.g. https://witness.example.org",
            ));
        }
        if !seen.insert(w.trim_end_matches('/')) {
            return Err(problem(
                file,
                key,
                format!("'{w}' is listed twice"),
                "list each witness once",
            ));
        }
    }
    Ok(())
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
    fn exchange_and_alert_settings_are_checked() {
        let sectors = "[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\n";
        let cases = [
            (
                "[[exchange.routes]]\ntypes = [\"Condition\"]\nto = [\"nowhere\"]\n",
                "exchange.routes[0].to",
            ),
            (
                "[[exchange.routes]]\ntypes = []\nto = \"care\"\n",
                "exchange.routes[0].types",
            ),
            ("[exchange]\nbatch = 0\n", "exchange.batch"),
            (
                "[exchange]\nretry_initial_ms = 5000\nretry_max_ms = 1000\n",
                "exchange.retry_max_ms",
            ),
            ("[alerts]\nchronic = [\"T90\"]\n", "alerts.chronic"),
        ];
        for (extra, key) in cases {
            let e = load(&format!("{extra}\n{sectors}")).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
        let e = load("[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\nmode = \"pull\"\n").unwrap_err();
        assert_eq!(e.key, "sectors[0].base_url", "{e}");
        let e = load("[[sectors]]\nid = \"carebridge\"\nname = \"X\"\nkind = \"hospital\"\n")
            .unwrap_err();
        assert_eq!(e.key, "sectors[0].id", "{e}");
        let ok = load(&format!(
            "[alerts]\nchronic = [\"urn:oid:1.2.208.176.2.31|T9*\"]\n{sectors}"
        ))
        .unwrap();
        assert_eq!(ok.exchange.effective_routes().len(), 2);
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

    /// A configuration and the problem it is reported with (`key: problem; fix`), or "" for a
    /// valid one. When a file has several problems, the first in check order is reported.
    const CHECKED: &[(&str, &str)] = &[
        (
            "[server]\nlisten = \"nowhere\"\n",
            "server.listen: 'nowhere' is not an address with a port; write it as IP:PORT, for example \"127.0.0.1:8080\"",
        ),
        (
            "[server]\nmax_json_depth = 7\n",
            "server.max_json_depth: 7 is outside 8..=120; choose a depth between 8 and 120 (FHIR resources rarely nest deeper than 20)",
        ),
        (
            "[server]\nmax_json_depth = 121\n",
            "server.max_json_depth: 121 is outside 8..=120; choose a depth between 8 and 120 (FHIR resources rarely nest deeper than 20)",
        ),
        (
            "[server]\nmax_body_bytes = 10\n",
            "server.max_body_bytes: 10 bytes cannot hold a FHIR resource; allow at least 1024 bytes (Synthea bundles need about 2 MB)",
        ),
        (
            "[store]\nurl = \"mysql://x\"\n",
            "store.url: the store URL names neither SQLite nor PostgreSQL; use sqlite://PATH (the embedded default) or postgres://USER@HOST:PORT/DB",
        ),
        (
            "[[sectors]]\nid = \"GP\"\nname = \"x\"\nkind = \"hospital\"\n",
            "sectors[0].id: 'GP' is not a valid sector id; use lowercase letters, digits and '-' starting with a letter (the id appears in URLs: /fhir/{id}/...)",
        ),
        (
            "[[sectors]]\nid = \"metadata\"\nname = \"x\"\nkind = \"hospital\"\n",
            "sectors[0].id: 'metadata' is reserved by the API; choose another sector id",
        ),
        (
            "[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\n[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\n",
            "sectors[1].id: sector 'gp' is configured twice; give each sector a unique id",
        ),
        (
            "[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\nbase_url = \"ftp://x\"\n",
            "sectors[0].base_url: not an http(s) URL; write the sector's FHIR base, for example https://fhir.example.org/r4",
        ),
        (
            "[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\npatient_identifier_system = \" \"\n",
            "sectors[0].patient_identifier_system: empty; leave it out for CPR (urn:oid:1.2.208.176.1.2) or name the system",
        ),
        (
            "[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\nauth = { type = \"bearer\" }\n",
            "sectors[0].auth: a bearer token needs a source; set token_env or token_file",
        ),
        (
            "[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\nauth = { type = \"client-credentials\", token_url = \"x\", client_id = \"y\" }\n",
            "sectors[0].auth: a client secret needs a source; set client_secret_env or client_secret_file",
        ),
        (
            "[exchange]\nlease_secs = 1\n",
            "exchange.lease_secs: 1 is outside 2..=3600; choose a value in that range (config/default.toml gives the default)",
        ),
        (
            "[exchange]\nbatch = 1001\n",
            "exchange.batch: 1001 is outside 1..=1000; choose a value in that range (config/default.toml gives the default)",
        ),
        (
            "[exchange]\nrequest_timeout_ms = 50\n",
            "exchange.request_timeout_ms: 50 is outside 100..=600000; choose a value in that range (config/default.toml gives the default)",
        ),
        (
            "[exchange]\nretry_initial_ms = 5\n",
            "exchange.retry_initial_ms: 5 is outside 10..=3600000; choose a value in that range (config/default.toml gives the default)",
        ),
        (
            "[exchange]\nidle_poll_ms = 5\n",
            "exchange.idle_poll_ms: 5 is outside 10..=3600000; choose a value in that range (config/default.toml gives the default)",
        ),
        (
            "[exchange]\npoll_interval_ms = 50\n",
            "exchange.poll_interval_ms: 50 is outside 100..=86400000; choose a value in that range (config/default.toml gives the default)",
        ),
        (
            "[exchange]\npoll_page_size = 0\n",
            "exchange.poll_page_size: 0 is outside 1..=1000; choose a value in that range (config/default.toml gives the default)",
        ),
        (
            "[exchange]\nretry_initial_ms = 5000\nretry_max_ms = 1000\n",
            "exchange.retry_max_ms: smaller than exchange.retry_initial_ms; make the longest retry delay at least the first one",
        ),
        (
            "[[exchange.routes]]\ntypes = []\nto = \"care\"\n[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\n",
            "exchange.routes[0].types: no resource types; name the resource types this route moves, e.g. [\"Condition\"]",
        ),
        (
            "[[exchange.routes]]\ntypes = [\"condition\"]\nto = \"care\"\n[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\n",
            "exchange.routes[0].types: 'condition' is not a resource type name; use FHIR resource type names such as CarePlan or Condition",
        ),
        (
            "[[exchange.routes]]\ntypes = [\"Condition\"]\nfrom = [\"nowhere\"]\nto = \"care\"\n[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\n",
            "exchange.routes[0].from: sector 'nowhere' is not configured; name configured sector ids, or leave `from` out for every sector",
        ),
        (
            "[[exchange.routes]]\ntypes = [\"Condition\"]\nto = []\n[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\n",
            "exchange.routes[0].to: no target sectors; use \"care\", \"recipients\" or a list of sector ids",
        ),
        (
            "[[exchange.routes]]\ntypes = [\"Condition\"]\nto = [\"nowhere\"]\n[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\n",
            "exchange.routes[0].to: sector 'nowhere' is not configured; use \"care\", \"recipients\" or configured sector ids",
        ),
        (
            "[[exchange.routes]]\ntypes = [\"Condition\"]\nto = \"care\"\n[[exchange.routes]]\ntypes = [\"Goal\"]\nto = [\"gp\", \"x\"]\n[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\n",
            "exchange.routes[1].to: sector 'x' is not configured; use \"care\", \"recipients\" or configured sector ids",
        ),
        (
            "[[sectors]]\nid = \"hospital\"\nname = \"H\"\nkind = \"hospital\"\n[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\nmode = \"pull\"\n",
            "sectors[1].base_url: sector 'gp' is polled (mode = \"pull\") but has no base URL; set base_url to the sector's FHIR base, or use mode = \"push\"",
        ),
        (
            "[[sectors]]\nid = \"hospital\"\nname = \"H\"\nkind = \"hospital\"\n[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\nmode = \"both\"\n",
            "sectors[1].base_url: sector 'gp' is polled (mode = \"both\") but has no base URL; set base_url to the sector's FHIR base, or use mode = \"push\"",
        ),
        (
            "[audit]\nsigning_key_file = \"k\"\nsigning_key_env = \"K\"\n",
            "audit.signing_key_env: the signing key has two sources; set either audit.signing_key_file or audit.signing_key_env",
        ),
        (
            "[audit]\ncheckpoint_every_rows = 0\n",
            "audit.checkpoint_every_rows: must be at least 1; set a positive number",
        ),
        (
            "[audit]\ncheckpoint_every_secs = 0\n",
            "audit.checkpoint_every_secs: must be at least 1; set a positive number",
        ),
        (
            "[audit]\nwitnesses = [\"https://w.example\"]\n",
            "audit.witnesses: witnesses are configured but no checkpoint is signed; set audit.signing_key_file or audit.signing_key_env (carebridge audit keygen makes a key), or remove the witnesses",
        ),
        (
            "[audit]\nsigning_key_env = \"K\"\nwitnesses = [\"w.example\"]\n",
            "audit.witnesses[0]: 'w.example' is not an http(s) URL; give the witness's base URL, e.g. https://witness.example.org",
        ),
        (
            "[audit]\nsigning_key_env = \"K\"\nwitnesses = [\"https://w.example\", \"https://w.example/\"]\n",
            "audit.witnesses[1]: 'https://w.example/' is listed twice; list each witness once",
        ),
        (
            "[auth]\naudience = \"x\"\n",
            "auth.issuer: auth.audience is set but no issuer is; set auth.issuer to the authorization server's `iss`, or remove the [auth] section (static tokens only)",
        ),
        (
            "[auth]\njwks_url = \"https://x\"\n",
            "auth.issuer: auth.jwks_url is set but no issuer is; set auth.issuer to the authorization server's `iss`, or remove the [auth] section (static tokens only)",
        ),
        (
            "[auth]\nsector_claim = \"x\"\n",
            "auth.issuer: auth.sector_claim is set but no issuer is; set auth.issuer to the authorization server's `iss`, or remove the [auth] section (static tokens only)",
        ),
        (
            "[[auth.scopes]]\nscope = \"system/*.read\"\nrole = \"careteam\"\n",
            "auth.issuer: auth.scopes is set but no issuer is; set auth.issuer to the authorization server's `iss`, or remove the [auth] section (static tokens only)",
        ),
        (
            "[auth]\nissuer = \" \"\n",
            "auth.issuer: empty; write the exact `iss` of the tokens, e.g. \"https://idp.example.org\"",
        ),
        (
            "[auth]\nissuer = \"https://idp\"\n",
            "auth.audience: missing or empty while an issuer is set; set the `aud` value the issuer writes into tokens for carebridge, e.g. \"carebridge\"",
        ),
        (
            "[auth]\nissuer = \"https://idp\"\naudience = \" \"\n",
            "auth.audience: missing or empty while an issuer is set; set the `aud` value the issuer writes into tokens for carebridge, e.g. \"carebridge\"",
        ),
        (
            "[auth]\nissuer = \"https://idp\"\naudience = \"cb\"\njwks_url = \"ftp://x\"\n",
            "auth.jwks_url: not an http(s) URL; write the issuer's JWKS address, e.g. https://idp.example.org/.well-known/jwks.json",
        ),
        (
            "[auth]\nissuer = \"https://idp\"\naudience = \"cb\"\n",
            "auth.jwks_url: missing while an issuer is set; set the issuer's JWKS address (`jwks_uri` of its .well-known metadata)",
        ),
        (
            "[auth]\nissuer = \"https://idp\"\naudience = \"carebridge\"\njwks_url = \"https://idp/jwks\"\njwks_refresh_secs = 0\n[[auth.scopes]]\nscope = \"system/*.read\"\nrole = \"careteam\"\n",
            "auth.jwks_refresh_secs: 0 is outside 1..=86400; choose a value in that range (config/default.toml gives the default)",
        ),
        (
            "[auth]\nissuer = \"https://idp\"\naudience = \"carebridge\"\njwks_url = \"https://idp/jwks\"\njwks_timeout_ms = 50\n[[auth.scopes]]\nscope = \"system/*.read\"\nrole = \"careteam\"\n",
            "auth.jwks_timeout_ms: 50 is outside 100..=60000; choose a value in that range (config/default.toml gives the default)",
        ),
        (
            "[auth]\nissuer = \"https://idp\"\naudience = \"carebridge\"\njwks_url = \"https://idp/jwks\"\nleeway_secs = 301\n[[auth.scopes]]\nscope = \"system/*.read\"\nrole = \"careteam\"\n",
            "auth.leeway_secs: 301 is outside 0..=300; choose a value in that range (config/default.toml gives the default)",
        ),
        (
            "[auth]\nissuer = \"https://idp\"\naudience = \"carebridge\"\njwks_url = \"https://idp/jwks\"\nclient_id_claim = \" \"\n[[auth.scopes]]\nscope = \"system/*.read\"\nrole = \"careteam\"\n",
            "auth.client_id_claim: empty; name the claim that identifies the client (client_id by default)",
        ),
        (
            "[auth]\nissuer = \"https://idp\"\naudience = \"carebridge\"\njwks_url = \"https://idp/jwks\"\nsector_claim = \" \"\n[[auth.scopes]]\nscope = \"system/*.read\"\nrole = \"careteam\"\n",
            "auth.sector_claim: empty; name the claim that carries the sector id, or leave the key out",
        ),
        (
            "[auth]\nissuer = \"https://idp\"\naudience = \"carebridge\"\njwks_url = \"https://idp/jwks\"\n",
            "auth.scopes: no scope is mapped to a role, so no token could be used; add [[auth.scopes]] tables with scope and role (config/default.toml shows them)",
        ),
        (
            "[auth]\nissuer = \"https://idp\"\naudience = \"carebridge\"\njwks_url = \"https://idp/jwks\"\n[[auth.scopes]]\nscope = \"a b\"\nrole = \"careteam\"\n",
            "auth.scopes[0].scope: 'a b' is not one scope; write a single scope without spaces, e.g. \"system/AuditEvent.read\"",
        ),
        (
            "[auth]\nissuer = \"https://idp\"\naudience = \"carebridge\"\njwks_url = \"https://idp/jwks\"\n[[auth.scopes]]\nscope = \"\"\nrole = \"careteam\"\n",
            "auth.scopes[0].scope: '' is not one scope; write a single scope without spaces, e.g. \"system/AuditEvent.read\"",
        ),
        (
            "[auth]\nissuer = \"https://idp\"\naudience = \"carebridge\"\njwks_url = \"https://idp/jwks\"\n[[auth.scopes]]\nscope = \"system/*.read\"\nrole = \"careteam\"\n[[auth.scopes]]\nscope = \"system/*.read\"\nrole = \"careteam\"\n",
            "auth.scopes[1].scope: scope 'system/*.read' is mapped twice; map each scope to one role",
        ),
        (
            "[auth]\nissuer = \"https://idp\"\naudience = \"carebridge\"\njwks_url = \"https://idp/jwks\"\n[[auth.scopes]]\nscope = \"s\"\nrole = \"sector:nowhere\"\n[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\n",
            "auth.scopes[0].role: sector 'nowhere' is not configured; name a configured sector: sector:<id>, or \"sector\" to take it from auth.sector_claim",
        ),
        (
            "[auth]\nissuer = \"https://idp\"\naudience = \"carebridge\"\njwks_url = \"https://idp/jwks\"\n[[auth.scopes]]\nscope = \"s\"\nrole = \"sector\"\n[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\n",
            "auth.scopes[0].role: role \"sector\" takes the sector from a claim, but auth.sector_claim is not set; set auth.sector_claim to the claim that carries the sector id, or write sector:<id>",
        ),
        (
            "[auth]\nissuer = \"https://idp\"\naudience = \"carebridge\"\njwks_url = \"https://idp/jwks\"\n[[auth.scopes]]\nscope = \"s\"\nrole = \"root\"\n",
            "auth.scopes[0].role: 'root' is not a role; use sector:<sector-id>, sector, careteam, auditor or admin",
        ),
        (
            "[auth]\nissuer = \"https://idp\"\naudience = \"carebridge\"\njwks_url = \"https://idp/jwks\"\nsector_claim = \"sec\"\n[[auth.scopes]]\nscope = \"s\"\nrole = \"sector\"\n[[auth.scopes]]\nscope = \"t\"\nrole = \"sector:gp\"\n[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\n",
            "",
        ),
        (
            "[alerts]\nchronic = [\"T90\"]\n",
            "alerts.chronic: 'T90' is not system|code; write each entry as system|code (a trailing * matches a code prefix)",
        ),
        (
            "[alerts]\ncoordinator_roles = [\"|x\"]\n",
            "alerts.coordinator_roles: '|x' is not system|code; write each entry as system|code (a trailing * matches a code prefix)",
        ),
        (
            "[alerts]\nreply_requested = [\"x|\"]\n",
            "alerts.reply_requested: 'x|' is not system|code; write each entry as system|code (a trailing * matches a code prefix)",
        ),
        (
            "[[clients]]\nid = \" \"\nrole = \"admin\"\n",
            "clients[0].id: client id ' ' is empty or repeated; give each client a unique id",
        ),
        (
            "[[clients]]\nid = \"a\"\nrole = \"admin\"\n[[clients]]\nid = \"a\"\nrole = \"auditor\"\n",
            "clients[1].id: client id 'a' is empty or repeated; give each client a unique id",
        ),
        (
            "[[clients]]\nid = \"a\"\nrole = \"sector:nowhere\"\n",
            "clients[0].role: sector 'nowhere' is not configured; name a configured sector: sector:<id>",
        ),
        (
            "[[clients]]\nid = \"a\"\nrole = \"root\"\n",
            "clients[0].role: 'root' is not a role; use sector:<sector-id>, careteam, auditor or admin",
        ),
        (
            "[[clients]]\nid = \"a\"\nrole = \"sector\"\n",
            "clients[0].role: 'sector' is not a role; use sector:<sector-id>, careteam, auditor or admin",
        ),
        (
            "[[clients]]\nid = \"a\"\nrole = \"careteam\"\ntoken_sha256 = \"abc\"\n",
            "clients[0].token_sha256: not a SHA-256 hex digest; paste the hash line printed by `carebridge token new --client ID`",
        ),
        (
            "[[clients]]\nid = \"a\"\nrole = \"sector:gp\"\ntoken_sha256 = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"\n[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\n",
            "",
        ),
        (
            "[server]\nlisten = \"x\"\n[store]\nurl = \"mysql://x\"\n",
            "server.listen: 'x' is not an address with a port; write it as IP:PORT, for example \"127.0.0.1:8080\"",
        ),
        (
            "[store]\nurl = \"mysql://x\"\n[[sectors]]\nid = \"GP\"\nname = \"x\"\nkind = \"hospital\"\n",
            "store.url: the store URL names neither SQLite nor PostgreSQL; use sqlite://PATH (the embedded default) or postgres://USER@HOST:PORT/DB",
        ),
        (
            "[exchange]\nbatch = 0\n[[sectors]]\nid = \"GP\"\nname = \"x\"\nkind = \"hospital\"\n",
            "sectors[0].id: 'GP' is not a valid sector id; use lowercase letters, digits and '-' starting with a letter (the id appears in URLs: /fhir/{id}/...)",
        ),
        (
            "[exchange]\nbatch = 0\n[auth]\naudience = \"x\"\n",
            "exchange.batch: 0 is outside 1..=1000; choose a value in that range (config/default.toml gives the default)",
        ),
        (
            "[auth]\naudience = \"x\"\n[alerts]\nchronic = [\"T90\"]\n",
            "auth.issuer: auth.audience is set but no issuer is; set auth.issuer to the authorization server's `iss`, or remove the [auth] section (static tokens only)",
        ),
        (
            "[alerts]\nchronic = [\"T90\"]\n[[clients]]\nid = \"a\"\nrole = \"root\"\n",
            "alerts.chronic: 'T90' is not system|code; write each entry as system|code (a trailing * matches a code prefix)",
        ),
        (
            "[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\nbase_url = \"ftp://x\"\nmode = \"pull\"\n",
            "sectors[0].base_url: not an http(s) URL; write the sector's FHIR base, for example https://fhir.example.org/r4",
        ),
        (
            "[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\nbase_url = \"ftp://x\"\nauth = { type = \"bearer\" }\n",
            "sectors[0].base_url: not an http(s) URL; write the sector's FHIR base, for example https://fhir.example.org/r4",
        ),
    ];

    #[test]
    fn every_check_names_its_key_problem_and_fix() {
        for (text, expected) in CHECKED {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            f.write_all(text.as_bytes()).unwrap();
            let file = f.path().display().to_string();
            match Settings::load(f.path()) {
                Ok(_) => assert_eq!(*expected, "", "accepted: {text}"),
                Err(e) => assert_eq!(e.to_string(), format!("{file}: {expected}"), "{text}"),
            }
        }
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
