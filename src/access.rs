//! Who may do what: the one place every access decision is made.
//!
//! The HTTP API, the command line and the workers never check a role themselves: the gateway
//! core calls [`authorize`] at the start of every operation that reads or changes patient
//! data, the audit log or the outbox, and records the [`Basis`] it returns. A role check
//! anywhere else is a defect (`tests/it/layering.rs` looks for them).

use crate::audit::Actor;

/// What a client may do. `Sector` writes only under its own sector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub id: String,
    pub role: Role,
}

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub client: Client,
    pub request_id: Option<String>,
}

impl Caller {
    /// Who the audit rows of this caller's request name.
    pub fn actor(&self) -> Actor {
        Actor {
            client_id: Some(self.client.id.clone()),
            role: Some(self.client.role.label()),
            request_id: self.request_id.clone(),
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
    /// The CapabilityStatement.
    Capabilities,
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
}

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
        (Request::Deliveries, Role::Admin) => Ok(Basis::Admin),
        (Request::Deliveries, _) => deny("only administrators manage deliveries"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role) -> Caller {
        Caller {
            client: Client {
                id: "c".into(),
                role,
            },
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
        assert!(authorize(&gp, Request::Alerts).is_err());
        assert_eq!(authorize(&team, Request::Alerts), Ok(Basis::CareTeam));
    }
}
