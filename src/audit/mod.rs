//! Audit records: built for every accept, reject and read (typed: [`Action`], [`Outcome`],
//! [`Interaction`]), chained by hash ([`row`], [`chain`]) and rendered as FHIR AuditEvent
//! resources in the IHE Basic Audit Log Patterns (BALP) shape ([`event`]). No patient data goes
//! into `detail`: it names types, counts and outcomes only.
//!
//! Pure: reading and writing the log is the store's, walking and exporting it the gateway's
//! (`gateway::ledger`).

pub mod chain;
pub mod event;
pub mod merkle;
pub mod note;
pub mod row;
pub mod verify;

pub use event::{CHAIN_EXTENSION, SUBTYPE_SYSTEM, SUBTYPES, audit_event};
pub use row::{
    Action, AuditRow, Checkpoint, GENESIS, Interaction, Outcome, RowKind, hash_with_seq, row_hash,
};

use crate::fhir::time::{instant, now_us};

/// Who did what, for the audit row of a request.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub client_id: Option<String>,
    pub role: Option<String>,
    pub request_id: Option<String>,
    /// The person acting through the client (`system|value` of their practitioner id).
    pub person: Option<String>,
}

impl Actor {
    /// The gateway itself: deliveries, detection, pulled records.
    pub fn gateway() -> Actor {
        Actor {
            client_id: Some("carebridge".into()),
            role: Some("gateway".into()),
            request_id: None,
            person: None,
        }
    }
}

/// A new event row stamped now; the caller fills in the patient, entities and detail.
pub fn row(
    actor: &Actor,
    sector: Option<&str>,
    action: Action,
    interaction: Interaction,
    outcome: Outcome,
) -> AuditRow {
    let us = now_us();
    AuditRow {
        seq: 0,
        recorded_us: us,
        recorded: instant(us),
        request_id: actor.request_id.clone(),
        client_id: actor.client_id.clone(),
        role: actor.role.clone(),
        person: actor.person.clone(),
        sector: sector.map(str::to_owned),
        action: action.code().to_owned(),
        interaction: interaction.code().to_owned(),
        outcome: outcome.code().to_owned(),
        kind: RowKind::Event.code().into(),
        ..AuditRow::default()
    }
}
