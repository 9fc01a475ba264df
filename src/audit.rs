//! Audit records: built for every accept, reject and read, and rendered as FHIR AuditEvent
//! resources in the IHE Basic Audit Log Patterns (BALP) shape. No patient data goes into
//! `detail`: it names types, counts and outcomes only.

use serde_json::{Value, json};

use crate::store::AuditRow;
use crate::store::sql::instant;

/// Who did what, for the audit row of a request.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub client_id: Option<String>,
    pub role: Option<String>,
    pub request_id: Option<String>,
}

/// AuditEvent.outcome codes.
pub mod outcome {
    pub const SUCCESS: &str = "0";
    pub const MINOR_FAILURE: &str = "4";
    pub const SERIOUS_FAILURE: &str = "8";
}

pub fn now_us() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000) as i64
}

/// A new audit row stamped now.
pub fn row(
    actor: &Actor,
    sector: Option<&str>,
    action: &str,
    interaction: &str,
    outcome: &str,
) -> AuditRow {
    let us = now_us();
    AuditRow {
        seq: 0,
        recorded_us: us,
        recorded: instant(us),
        request_id: actor.request_id.clone(),
        client_id: actor.client_id.clone(),
        role: actor.role.clone(),
        sector: sector.map(str::to_owned),
        action: action.to_owned(),
        interaction: interaction.to_owned(),
        outcome: outcome.to_owned(),
        patient_id: None,
        entities: Vec::new(),
        detail: None,
    }
}

const BALP_ENTITY_TYPE: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
const AUDIT_ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const CLIENT_SYSTEM: &str = "http://carebridge.example.org/fhir/NamingSystem/client";

/// Renders an audit row as an AuditEvent resource.
pub fn audit_event(a: &AuditRow) -> Value {
    let mut entity = Vec::new();
    if let Some(p) = &a.patient_id {
        entity.push(json!({
            "what": { "reference": format!("Patient/{p}") },
            "type": { "system": AUDIT_ENTITY_TYPE, "code": "1", "display": "Person" },
            "role": { "system": OBJECT_ROLE, "code": "1", "display": "Patient" }
        }));
    }
    for e in &a.entities {
        entity.push(json!({
            "what": { "reference": e },
            "type": { "system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object" },
            "role": { "system": OBJECT_ROLE, "code": "4", "display": "Domain Resource" }
        }));
    }
    if let Some(r) = &a.request_id {
        entity.push(json!({
            "what": { "identifier": { "value": r } },
            "type": { "system": BALP_ENTITY_TYPE, "code": "XrequestId", "display": "X-Request-Id" }
        }));
    }
    let mut client = json!({
        "type": { "coding": [{
            "system": "http://dicom.nema.org/resources/ontology/DCM",
            "code": "110153", "display": "Source Role ID"
        }]},
        "requestor": true
    });
    match &a.client_id {
        Some(c) => {
            client["who"] =
                json!({ "identifier": { "system": CLIENT_SYSTEM, "value": c }, "display": c });
        }
        None => client["who"] = json!({ "display": "unauthenticated caller" }),
    }
    let mut roles = Vec::new();
    if let Some(r) = &a.role {
        roles.push(json!({ "text": r }));
    }
    if let Some(s) = &a.sector {
        roles.push(json!({ "text": format!("sector {s}") }));
    }
    if !roles.is_empty() {
        client["role"] = Value::Array(roles);
    }
    let gateway = json!({
        "type": { "coding": [{
            "system": "http://dicom.nema.org/resources/ontology/DCM",
            "code": "110152", "display": "Destination Role ID"
        }]},
        "who": { "display": "carebridge" },
        "requestor": false
    });
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": a.seq.to_string(),
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest", "display": "RESTful Operation"
        },
        "subtype": [{ "system": "http://hl7.org/fhir/restful-interaction", "code": a.interaction }],
        "action": a.action,
        "recorded": a.recorded,
        "outcome": a.outcome,
        "agent": [client, gateway],
        "source": {
            "observer": { "display": "carebridge" },
            "type": [{
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4", "display": "Application Server"
            }]
        }
    });
    if let Some(d) = &a.detail {
        event["outcomeDesc"] = json!(d);
    }
    if !entity.is_empty() {
        event["entity"] = Value::Array(entity);
    }
    event
}
