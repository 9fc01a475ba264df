//! Who may do what: the one place every access decision is made.
//!
//! The HTTP API, the command line and the workers never check a role themselves: the gateway
//! core calls [`authorize`] at the start of every operation that reads or changes patient
//! data, the audit log or the outbox, and records the [`Basis`] it returns. A role check
//! anywhere else is a defect (`tests/it/architecture.rs` looks for them).
//!
//! A care-team caller is a person, and reads a patient's data only on a treatment relationship
//! (Sundhedsloven § 42 a): [`authorize_patient`] decides it from the [`Evidence`] the gateway
//! gathered from the stored records — membership of an active CareTeam, a recent exchange with
//! the person's organisation, a launch context, or an explicit break-the-glass grant — after
//! the patient's blocks. The decision itself is pure; gathering the evidence is the gateway's.

use crate::audit::Actor;
use crate::config::{AccessSettings, split_system_value};

/// What a client may do. `Sector` writes only under its own sector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Role {
    Sector(String),
    CareTeam,
    Auditor,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s.split_once(':') {
            Some(("sector", id)) if !id.is_empty() => Some(Role::Sector(id.to_owned())),
            None => match s {
                "careteam" => Some(Role::CareTeam),
                "auditor" => Some(Role::Auditor),
                "admin" => Some(Role::Admin),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn label(&self) -> String {
        match self {
            Role::Sector(id) => format!("sector:{id}"),
            Role::CareTeam => "careteam".into(),
            Role::Auditor => "auditor".into(),
            Role::Admin => "admin".into(),
        }
    }
}

/// An identifier `system|value` (a practitioner's authorisation id, an organisation's SOR code).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Ident {
    pub system: String,
    pub value: String,
}

impl Ident {
    /// `system|value`, both non-empty.
    pub fn parse(s: &str) -> Option<Ident> {
        split_system_value(s).map(|(system, value)| Ident {
            system: system.to_owned(),
            value: value.to_owned(),
        })
    }

    pub fn label(&self) -> String {
        format!("{}|{}", self.system, self.value)
    }
}

/// The person behind a care-team caller: who they are and where they work.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Person {
    /// Their practitioner identifier (e.g. the Danish authorisation id).
    pub practitioner: Option<Ident>,
    /// Their organisation's identifier (e.g. a SOR code).
    pub organization: Option<Ident>,
    /// The configured sector their organisation is (its exchanges count as theirs).
    pub sector: Option<String>,
}

impl Person {
    /// Who the audit log names: the practitioner, else the organisation.
    pub fn label(&self) -> Option<String> {
        self.practitioner
            .as_ref()
            .or(self.organization.as_ref())
            .map(Ident::label)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Client {
    pub id: String,
    pub role: Role,
    /// The person, for care-team callers bound to one (by configuration or token claims).
    pub person: Option<Person>,
    /// A care-team system that enforces the treatment relationship itself and asserts it.
    pub asserts_relationship: bool,
    /// The patient context the sector system handed over (a SMART launch's `patient` claim):
    /// a gateway patient id or an identifier `system|value`.
    pub launch_patient: Option<String>,
}

impl Client {
    /// A client that is not a person and has no launch context.
    pub fn system(id: impl Into<String>, role: Role) -> Client {
        Client {
            id: id.into(),
            role,
            person: None,
            asserts_relationship: false,
            launch_patient: None,
        }
    }

    /// Whose break-the-glass grants this caller holds: the practitioner, else the client.
    pub fn grantee(&self) -> String {
        self.person
            .as_ref()
            .and_then(Person::label)
            .unwrap_or_else(|| format!("client:{}", self.id))
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub client: Client,
    pub request_id: Option<String>,
}

impl Caller {
    /// The operator at the machine's command line (`carebridge patients …`): an administrator
    /// named `cli` in the audit rows.
    pub fn operator() -> Caller {
        Caller {
            client: Client::system("cli", Role::Admin),
            request_id: None,
        }
    }

    /// Who the audit rows of this caller's request name.
    pub fn actor(&self) -> Actor {
        Actor {
            client_id: Some(self.client.id.clone()),
            role: Some(self.client.role.label()),
            request_id: self.request_id.clone(),
            person: self.client.person.as_ref().and_then(Person::label),
        }
    }
}

/// What a caller asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// Create, update, transaction or batch under a sector's FHIR base.
    WriteSector(&'a str),
    /// Patient data at all: a read by id or a search by patient (each record found is then
    /// decided by [`Request::Record`]).
    PatientData,
    /// One stored record of a sector.
    Record { sector: &'a str },
    /// A gateway patient (identity across sectors) read by id.
    GatewayPatient,
    /// Gateway patients searched by identifier.
    GatewayPatientSearch,
    /// Alerts (search, read, acknowledge, the stream) and a patient's total plan.
    Alerts,
    /// The audit log: search, verify, export.
    AuditLog,
    /// The outbox: list deliveries, retry a dead letter.
    Deliveries,
    /// Patient identity: held writes (list, release, reject) and undoing a merge.
    PatientIdentity,
    /// The CapabilityStatement.
    Capabilities,
    /// Break the glass: emergency access to one patient (care-team persons).
    BreakGlass,
    /// Review break-the-glass grants and report who accessed a patient (auditors).
    AccessReview,
    /// Sign in to the console: persons of a care team, auditors and administrators (a sector's
    /// system has no console).
    Console,
    /// IT staff's board of sector endpoints, their probes and the gateway's version and
    /// configuration file (administrators).
    Operations,
}

/// Why access was granted, for the audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Basis {
    /// The caller is the sector's own system.
    OwnSector(String),
    /// The caller holds the care-team role.
    CareTeam,
    /// The caller holds the auditor role.
    Auditor,
    /// The caller holds the administrator role.
    Admin,
    /// Any authenticated caller may (the CapabilityStatement).
    Authenticated,
    /// A participant of the patient's active CareTeam (the CareTeam that shows it).
    CareTeamMember(String),
    /// The person's organisation sent or received a record about the patient recently
    /// (`<sector> <Type>/<gid>`).
    Exchange(String),
    /// The session's launch context names the patient.
    Launch,
    /// An explicit, time-limited break-the-glass grant (its id).
    BreakGlass(String),
    /// A care-team system that enforces the relationship itself asserted it.
    Asserted,
}

impl Basis {
    /// The audit log's `basis` column.
    pub fn code(&self) -> String {
        match self {
            Basis::OwnSector(s) => format!("own-sector {s}"),
            Basis::CareTeam => "care-team-role".into(),
            Basis::Auditor => "auditor".into(),
            Basis::Admin => "admin".into(),
            Basis::Authenticated => "authenticated".into(),
            Basis::CareTeamMember(r) => format!("care-team {r}"),
            Basis::Exchange(r) => format!("exchange {r}"),
            Basis::Launch => "launch".into(),
            Basis::BreakGlass(id) => format!("break-glass {id}"),
            Basis::Asserted => "asserted".into(),
        }
    }

    /// Whether data read on this basis is read under break-the-glass (purposeOfUse ETREAT).
    pub fn is_break_glass(&self) -> bool {
        matches!(self, Basis::BreakGlass(_))
    }
}

/// Which treatment relationships grant access (configuration `[access]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub care_team: bool,
    pub exchange: bool,
    pub launch: bool,
}

impl From<&AccessSettings> for Policy {
    fn from(a: &AccessSettings) -> Policy {
        Policy {
            care_team: a.grants("care-team"),
            exchange: a.grants("exchange"),
            launch: a.grants("launch"),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            care_team: true,
            exchange: true,
            launch: true,
        }
    }
}

/// A break-the-glass grant in force for the caller and the patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantInForce {
    pub id: String,
    /// Configuration allowed it to override the patient's blocks when it was granted.
    pub overrides_block: bool,
}

/// What the stored records say about one person and one patient, gathered by the gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// An active CareTeam of the patient naming the person or their organisation.
    pub care_team: Option<String>,
    /// A record the person's organisation sent or received about the patient in the window.
    pub exchange: Option<String>,
    /// The launch context names the patient.
    pub launch: bool,
    /// Blocks (Consents that deny) applying to this person: their references.
    pub blocks: Vec<String>,
    /// An unexpired break-the-glass grant.
    pub grant: Option<GrantInForce>,
}

/// What a refused care-team caller is told when a block applies (never what it hides).
pub const BLOCKED: &str =
    "a block applies: the patient has restricted access to their data for you";
/// What a care-team caller without a treatment relationship is told.
pub const NO_RELATIONSHIP: &str = "no treatment relationship with this patient (Sundhedsloven § 42 a): \
     a CareTeam, a recent exchange with your organisation or a launch context is needed; \
     in an emergency, request break-the-glass ($break-glass)";

/// Access refused, with the reason the caller is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

const NO_PATIENT_DATA: &str =
    "auditors read the audit log only; administrators read no patient data";

/// Decides whether `caller` may do `request`.
pub fn authorize(caller: &Caller, request: Request<'_>) -> Result<Basis, Denied> {
    let role = &caller.client.role;
    let deny = |why: &str| Err(Denied(why.to_owned()));
    match (request, role) {
        (Request::Capabilities, _) => Ok(Basis::Authenticated),
        (Request::WriteSector(sector), Role::Sector(own)) if own == sector => {
            Ok(Basis::OwnSector(own.clone()))
        }
        (Request::WriteSector(sector), Role::Sector(_)) => Err(Denied(format!(
            "this client may not write under sector '{sector}'"
        ))),
        (Request::WriteSector(_), _) => deny("only a sector's own client writes under it"),
        (Request::PatientData, Role::CareTeam) => Ok(Basis::CareTeam),
        (Request::PatientData, Role::Sector(own)) => Ok(Basis::OwnSector(own.clone())),
        (Request::PatientData | Request::Record { .. }, Role::Auditor | Role::Admin) => {
            deny(NO_PATIENT_DATA)
        }
        (Request::Record { .. }, Role::CareTeam) => Ok(Basis::CareTeam),
        (Request::Record { sector }, Role::Sector(own)) if own == sector => {
            Ok(Basis::OwnSector(own.clone()))
        }
        (Request::Record { .. }, Role::Sector(_)) => {
            deny("this client may not read this sector's resources")
        }
        (Request::GatewayPatient | Request::GatewayPatientSearch, Role::CareTeam) => {
            Ok(Basis::CareTeam)
        }
        (Request::GatewayPatient, _) => deny("only care-team members read gateway patients"),
        (Request::GatewayPatientSearch, _) => {
            deny("only care-team members search gateway patients")
        }
        (Request::Alerts, Role::CareTeam) => Ok(Basis::CareTeam),
        (Request::Alerts, _) => deny("alerts and total plans are for care-team members"),
        (Request::AuditLog, Role::Auditor) => Ok(Basis::Auditor),
        (Request::AuditLog, _) => deny("only auditors read the audit log"),
        (Request::BreakGlass, Role::CareTeam) => Ok(Basis::CareTeam),
        (Request::BreakGlass, _) => deny("only care-team members break the glass"),
        (Request::AccessReview, Role::Auditor) => Ok(Basis::Auditor),
        (Request::AccessReview, _) => {
            deny("only auditors review break-the-glass and access reports")
        }
        (Request::Deliveries, Role::Admin) => Ok(Basis::Admin),
        (Request::Deliveries, _) => deny("only administrators manage deliveries"),
        (Request::Console, Role::CareTeam) if caller.client.person.is_some() => Ok(Basis::CareTeam),
        (Request::Console, Role::Auditor) => Ok(Basis::Auditor),
        (Request::Console, Role::Admin) => Ok(Basis::Admin),
        (Request::Console, _) => {
            deny("the console is for care-team persons, auditors and administrators")
        }
        (Request::Operations, Role::Admin) => Ok(Basis::Admin),
        (Request::Operations, _) => deny("only administrators see the sector endpoints"),
        (Request::PatientIdentity, Role::Admin) => Ok(Basis::Admin),
        (Request::PatientIdentity, _) => {
            deny("only administrators review held writes and undo merges")
        }
    }
}

/// Whether [`authorize_patient`] decides `caller` from evidence in the records (care-team
/// members); systems and the roles that read no patient data are decided by role alone.
pub fn needs_evidence(caller: &Caller) -> bool {
    caller.client.role == Role::CareTeam
}

/// Decides whether `caller` may read one patient's data, from what the records say.
/// Systems keep their roles: a sector client reads what its sector sent (each record is then
/// decided by [`Request::Record`]); auditors and administrators read no patient data.
pub fn authorize_patient(
    caller: &Caller,
    policy: Policy,
    evidence: &Evidence,
) -> Result<Basis, Denied> {
    match &caller.client.role {
        Role::Sector(own) => return Ok(Basis::OwnSector(own.clone())),
        Role::Auditor | Role::Admin => return Err(Denied(NO_PATIENT_DATA.to_owned())),
        Role::CareTeam => {}
    }
    let glass = evidence.grant.as_ref();
    if !evidence.blocks.is_empty() {
        return match glass {
            Some(g) if g.overrides_block => Ok(Basis::BreakGlass(g.id.clone())),
            _ => Err(Denied(BLOCKED.to_owned())),
        };
    }
    if caller.client.asserts_relationship {
        return Ok(Basis::Asserted);
    }
    if policy.care_team
        && let Some(proof) = &evidence.care_team
    {
        return Ok(Basis::CareTeamMember(proof.clone()));
    }
    if policy.exchange
        && let Some(proof) = &evidence.exchange
    {
        return Ok(Basis::Exchange(proof.clone()));
    }
    if policy.launch && evidence.launch {
        return Ok(Basis::Launch);
    }
    match glass {
        Some(g) => Ok(Basis::BreakGlass(g.id.clone())),
        None => Err(Denied(NO_RELATIONSHIP.to_owned())),
    }
}

/// Whether a record its sector marked private (FMK "privatmarkering") may be shown on `basis`:
/// to its own sector (its system, or a person of it), and under a break-the-glass grant that
/// overrides blocks — to nobody else.
pub fn private_record_visible(
    caller: &Caller,
    record_sector: &str,
    basis: &Basis,
    evidence: &Evidence,
) -> bool {
    match &caller.client.role {
        Role::Sector(own) => own == record_sector,
        Role::CareTeam => {
            let own = caller
                .client
                .person
                .as_ref()
                .and_then(|p| p.sector.as_deref())
                == Some(record_sector);
            own || (basis.is_break_glass()
                && evidence.grant.as_ref().is_some_and(|g| g.overrides_block))
        }
        Role::Auditor | Role::Admin => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role) -> Caller {
        Caller {
            client: Client::system("c", role),
            request_id: None,
        }
    }

    #[test]
    fn the_matrix() {
        let gp = caller(Role::Sector("gp".into()));
        let team = caller(Role::CareTeam);
        let auditor = caller(Role::Auditor);
        let admin = caller(Role::Admin);
        assert_eq!(
            authorize(&gp, Request::WriteSector("gp")),
            Ok(Basis::OwnSector("gp".into()))
        );
        assert!(authorize(&gp, Request::WriteSector("hospital")).is_err());
        assert!(authorize(&team, Request::WriteSector("gp")).is_err());
        assert!(authorize(&gp, Request::Record { sector: "gp" }).is_ok());
        assert!(authorize(&gp, Request::Record { sector: "hospital" }).is_err());
        assert!(authorize(&team, Request::Record { sector: "hospital" }).is_ok());
        for r in [&auditor, &admin] {
            assert!(authorize(r, Request::PatientData).is_err());
            assert!(authorize(r, Request::Alerts).is_err());
            assert!(authorize(r, Request::GatewayPatient).is_err());
        }
        assert_eq!(authorize(&auditor, Request::AuditLog), Ok(Basis::Auditor));
        assert!(authorize(&admin, Request::AuditLog).is_err());
        assert_eq!(authorize(&admin, Request::Deliveries), Ok(Basis::Admin));
        assert!(authorize(&team, Request::Deliveries).is_err());
        assert_eq!(
            authorize(&admin, Request::PatientIdentity),
            Ok(Basis::Admin)
        );
        assert!(authorize(&gp, Request::PatientIdentity).is_err());
        assert!(authorize(&auditor, Request::PatientIdentity).is_err());
        assert!(authorize(&gp, Request::Alerts).is_err());
        assert_eq!(authorize(&team, Request::Alerts), Ok(Basis::CareTeam));
    }

    #[test]
    fn the_console_is_for_persons_auditors_and_administrators() {
        let mut person = caller(Role::CareTeam);
        person.client.person = Some(Person {
            practitioner: Ident::parse("https://autregweb.sst.dk|N8SD2"),
            ..Person::default()
        });
        for ok in [&person, &caller(Role::Auditor), &caller(Role::Admin)] {
            assert!(authorize(ok, Request::Console).is_ok(), "{ok:?}");
        }
        for refused in [&caller(Role::CareTeam), &caller(Role::Sector("gp".into()))] {
            assert!(authorize(refused, Request::Console).is_err(), "{refused:?}");
        }
        assert_eq!(
            authorize(&caller(Role::Admin), Request::Operations),
            Ok(Basis::Admin)
        );
        for refused in [Role::Auditor, Role::CareTeam, Role::Sector("gp".into())] {
            assert!(authorize(&caller(refused), Request::Operations).is_err());
        }
    }

    #[test]
    fn treatment_relationship_decides_for_persons() {
        let team = caller(Role::CareTeam);
        let policy = Policy::default();
        let none = Evidence::default();
        assert_eq!(
            authorize_patient(&team, policy, &none),
            Err(Denied(NO_RELATIONSHIP.into()))
        );
        let member = Evidence {
            care_team: Some("CareTeam/t".into()),
            exchange: Some("gp Condition/c".into()),
            ..Evidence::default()
        };
        assert_eq!(
            authorize_patient(&team, policy, &member),
            Ok(Basis::CareTeamMember("CareTeam/t".into()))
        );
        let only_exchange = Policy {
            care_team: false,
            ..policy
        };
        assert_eq!(
            authorize_patient(&team, only_exchange, &member),
            Ok(Basis::Exchange("gp Condition/c".into()))
        );
        let launched = Evidence {
            launch: true,
            ..Evidence::default()
        };
        assert_eq!(
            authorize_patient(&team, policy, &launched),
            Ok(Basis::Launch)
        );
        let no_launch = Policy {
            launch: false,
            ..policy
        };
        assert!(authorize_patient(&team, no_launch, &launched).is_err());
    }

    #[test]
    fn blocks_win_and_only_an_overriding_grant_passes_them() {
        let team = caller(Role::CareTeam);
        let policy = Policy::default();
        let none = Evidence::default();
        let member = Evidence {
            care_team: Some("CareTeam/t".into()),
            ..Evidence::default()
        };
        let blocked = Evidence {
            blocks: vec!["Consent/x".into()],
            grant: Some(GrantInForce {
                id: "g".into(),
                overrides_block: false,
            }),
            ..member.clone()
        };
        assert_eq!(
            authorize_patient(&team, policy, &blocked),
            Err(Denied(BLOCKED.into()))
        );
        let overriding = Evidence {
            grant: Some(GrantInForce {
                id: "g".into(),
                overrides_block: true,
            }),
            ..blocked
        };
        assert_eq!(
            authorize_patient(&team, policy, &overriding),
            Ok(Basis::BreakGlass("g".into()))
        );
        let glass = Evidence {
            grant: Some(GrantInForce {
                id: "g".into(),
                overrides_block: false,
            }),
            ..Evidence::default()
        };
        assert_eq!(
            authorize_patient(&team, policy, &glass),
            Ok(Basis::BreakGlass("g".into()))
        );
        // Systems keep their roles.
        let gp = caller(Role::Sector("gp".into()));
        assert_eq!(
            authorize_patient(&gp, policy, &none),
            Ok(Basis::OwnSector("gp".into()))
        );
        assert!(authorize_patient(&caller(Role::Auditor), policy, &member).is_err());
    }

    #[test]
    fn private_marking_shows_only_to_its_own_sector() {
        let mut nurse = caller(Role::CareTeam);
        nurse.client.person = Some(Person {
            sector: Some("hospital".into()),
            ..Person::default()
        });
        let basis = Basis::CareTeamMember("CareTeam/t".into());
        let ev = Evidence::default();
        assert!(private_record_visible(&nurse, "hospital", &basis, &ev));
        assert!(!private_record_visible(&nurse, "gp", &basis, &ev));
        let grant = Evidence {
            grant: Some(GrantInForce {
                id: "g".into(),
                overrides_block: true,
            }),
            ..Evidence::default()
        };
        assert!(private_record_visible(
            &nurse,
            "gp",
            &Basis::BreakGlass("g".into()),
            &grant
        ));
        assert!(!private_record_visible(
            &caller(Role::Sector("hospital".into())),
            "gp",
            &basis,
            &ev
        ));
    }
}
