//! Audit rows rendered as FHIR AuditEvent resources in the IHE Basic Audit Log Patterns
//! (BALP) shape, with the row's place in the hash chain as an extension.

use serde_json::{Value, json};

use super::row::{AuditRow, RowKind};

const BALP_ENTITY_TYPE: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
const AUDIT_ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const SECTOR_SYSTEM: &str = "http://carebridge.example.org/fhir/CodeSystem/sector";
const CLIENT_SYSTEM: &str = "http://carebridge.example.org/fhir/NamingSystem/client";
const AUDIT_EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";

/// The project CodeSystem of the `AuditEvent.subtype` codes that are not FHIR RESTful
/// interactions (canonical URL; its codes and meanings are [`SUBTYPES`]). The binding of
/// `AuditEvent.subtype` is extensible, so codes outside its value set are allowed where none
/// of it fits.
pub const SUBTYPE_SYSTEM: &str =
    "http://carebridge.example.org/fhir/CodeSystem/audit-event-subtype";

/// The codes of [`SUBTYPE_SYSTEM`]: (code, display, definition).
pub const SUBTYPES: [(&str, &str, &str); 15] = [
    (
        "authenticate",
        "Authenticate a request",
        "A request to /fhir or /audit without a valid bearer token, refused with 401.",
    ),
    (
        "verify",
        "Verify the audit chain",
        "GET /audit/verify: the hash chain walked and the result reported.",
    ),
    (
        "export",
        "Export the audit log",
        "GET /audit/export: the AuditEvents of a period sent as NDJSON.",
    ),
    (
        "prune",
        "Prune the audit log",
        "carebridge audit prune: rows exported to a file, deleted, and a checkpoint appended.",
    ),
    (
        "deliver",
        "Deliver to a sector",
        "One attempt to send a stored version to a target sector's FHIR endpoint.",
    ),
    (
        "retry-delivery",
        "Retry a dead-lettered delivery",
        "A dead-lettered outbox entry put back in its queue by an operator.",
    ),
    (
        "alert",
        "Change an alert",
        "A DetectedIssue raised, updated or closed by detection, or acknowledged by a caller.",
    ),
    (
        "stream",
        "Open the alert stream",
        "GET /alerts/stream: a caller subscribed to alert changes.",
    ),
    (
        "break-glass",
        "Break the glass",
        "POST /fhir/Patient/{id}/$break-glass: emergency access to one patient without a \
         treatment relationship, granted for a limited time with a coded reason.",
    ),
    (
        "review-break-glass",
        "Review a break-the-glass access",
        "POST /audit/break-glass/{id}/review: an auditor recorded their review of a grant.",
    ),
    (
        "merge",
        "Merge two gateway patients",
        "A sector's Patient linked a replacement number it issues to a real CPR (or an \
         operator released a held write), and one gateway patient was merged into another.",
    ),
    (
        "unmerge",
        "Undo a merge of gateway patients",
        "carebridge patients unmerge: a merged gateway patient got its identifiers and records back.",
    ),
    (
        "hold-write",
        "Hold a write for review",
        "A write that would have joined two gateway patients was refused with 422 and kept for review.",
    ),
    (
        "review-held-write",
        "Review a held write",
        "carebridge patients held release|reject: an operator applied or rejected a held write.",
    ),
    (
        "backfill",
        "Disclose a patient's records to a sector joining the care",
        "A sector joined a patient's care: the current versions the care routes carry from the \
         other sectors were queued for it.",
    ),
];

/// The codes of the R4 CodeSystem `restful-interaction`.
const REST_INTERACTIONS: [&str; 17] = [
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history",
    "history-instance",
    "history-type",
    "history-system",
    "create",
    "search",
    "search-type",
    "search-system",
    "capabilities",
    "transaction",
    "batch",
    "operation",
];

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({ "system": system, "code": code, "display": display })
}

/// `AuditEvent.type` and `subtype` of an interaction, after IHE BALP (Basic Audit Log
/// Patterns, ITI) and the DICOM audit vocabulary BALP draws on. `subtype[0].code` is always the
/// row's interaction (searches and the tests rely on it):
///
/// - a FHIR RESTful interaction (`create`, `update`, `read`, `search-type`, `transaction`,
///   `batch`) is BALP's RESTful pattern: type `rest`, subtype from `restful-interaction`;
/// - `authenticate` (a 401) is the IHE "User Authentication" event, DICOM 110114, with the
///   DICOM subtype 110122 "Login" beside the project code (outcome 4: a failed login);
/// - `verify`, `export` and `prune` use the audit log itself: DICOM 110101 "Audit Log Used";
/// - `deliver` sends patient data to another system. BALP's RESTful patterns describe the
///   server's view of an interaction it answered, and a delivery is not one of those here (the
///   gateway acts as a client of the target, by POST, PUT or a transaction, and the row does not
///   say which); IHE records PHI leaving a system for another as DICOM 110106 "Export" at the
///   sender (the receiver records its own Import, 110107), so that is the type, with the
///   gateway as source and the target sector as destination agent;
/// - `alert` (a DetectedIssue raised, updated, closed or acknowledged) and `stream` (the alert
///   stream opened) create, change or read alerts about patients: DICOM 110110 "Patient
///   Record";
/// - `retry-delivery` (and any other application activity) is DICOM 110100 "Application
///   Activity".
fn event_type(interaction: &str) -> (Value, Vec<Value>) {
    if REST_INTERACTIONS.contains(&interaction) {
        return (
            coding(AUDIT_EVENT_TYPE, "rest", "RESTful Operation"),
            vec![json!({ "system": RESTFUL_INTERACTION, "code": interaction })],
        );
    }
    let own = match SUBTYPES.iter().find(|(code, _, _)| *code == interaction) {
        Some((code, display, _)) => coding(SUBTYPE_SYSTEM, code, display),
        None => json!({ "system": SUBTYPE_SYSTEM, "code": interaction }),
    };
    match interaction {
        "authenticate" => (
            coding(DCM, "110114", "User Authentication"),
            vec![own, coding(DCM, "110122", "Login")],
        ),
        "verify" | "export" | "prune" => (coding(DCM, "110101", "Audit Log Used"), vec![own]),
        "deliver" => (coding(DCM, "110106", "Export"), vec![own]),
        "alert" | "stream" | "merge" | "unmerge" | "hold-write" | "review-held-write" => {
            (coding(DCM, "110110", "Patient Record"), vec![own])
        }
        // Records leave for a sector that joins the care: a disclosure, as a delivery is.
        "backfill" => (coding(DCM, "110106", "Export"), vec![own]),
        // An emergency override of the access rules: IHE records it as a Security Alert.
        "break-glass" => (coding(DCM, "110113", "Security Alert"), vec![own]),
        "review-break-glass" => (coding(DCM, "110101", "Audit Log Used"), vec![own]),
        _ => (coding(DCM, "110100", "Application Activity"), vec![own]),
    }
}

/// Renders an audit row as an AuditEvent resource. The rendering is not hashed (the chain
/// covers the row's columns, see [`super::row_hash`]), so it can change without breaking the
/// chain.
pub fn audit_event(a: &AuditRow) -> Value {
    let delivery = a.interaction == super::Interaction::Deliver.code();
    let (event_type, subtype) = event_type(&a.interaction);
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": a.seq.to_string(),
        "type": event_type,
        "subtype": subtype,
        "action": a.action,
        "recorded": a.recorded,
        "outcome": a.outcome,
        "agent": [requestor(a), destination(a, delivery)],
        "source": {
            "observer": { "display": "carebridge" },
            "type": [coding(
                "http://terminology.hl7.org/CodeSystem/security-source-type",
                "4",
                "Application Server",
            )]
        }
    });
    if let Some(d) = &a.detail {
        event["outcomeDesc"] = json!(d);
    }
    let entity = entities(a, delivery);
    if !entity.is_empty() {
        event["entity"] = Value::Array(entity);
    }
    event["extension"] = json!([chain_extension(a)]);
    event
}

/// The patient, the resources, the query, the queue acted on and the request id.
fn entities(a: &AuditRow, delivery: bool) -> Vec<Value> {
    let mut entity = Vec::new();
    if let Some(p) = &a.patient_id {
        entity.push(json!({
            "what": { "reference": format!("Patient/{p}") },
            "type": coding(AUDIT_ENTITY_TYPE, "1", "Person"),
            "role": coding(OBJECT_ROLE, "1", "Patient")
        }));
    }
    for e in &a.entities {
        entity.push(json!({
            "what": { "reference": e },
            "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "4", "Domain Resource")
        }));
    }
    if let Some(q) = &a.query {
        use base64::Engine;
        entity.push(json!({
            "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "24", "Query"),
            "query": base64::engine::general_purpose::STANDARD.encode(q.as_bytes())
        }));
    }
    if let Some(t) = &a.target_sector
        && !delivery
    {
        // The queue an operator acted on (a retried delivery): its sector is where the data
        // will go, not a participant of this event.
        entity.push(json!({
            "what": { "identifier": { "system": SECTOR_SYSTEM, "value": t }, "display": format!("sector {t}") },
            "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "16", "Data Destination")
        }));
    }
    if let Some(r) = &a.request_id {
        entity.push(json!({
            "what": { "identifier": { "value": r } },
            "type": coding(BALP_ENTITY_TYPE, "XrequestId", "X-Request-Id")
        }));
    }
    entity
}

/// The requesting agent: the client (or an unauthenticated caller), its role and sector, the
/// person acting through it (`altId`), the purpose of use, and the access basis as a policy
/// URI (`urn:carebridge:basis:<kind>:<proof>`).
fn requestor(a: &AuditRow) -> Value {
    let mut client = json!({
        "type": { "coding": [coding(DCM, "110153", "Source Role ID")] },
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
    if let Some(p) = &a.purpose {
        client["purposeOfUse"] = json!([{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p
        }]}]);
    }
    if let Some(person) = &a.person {
        client["altId"] = json!(person);
    }
    if let Some(b) = &a.basis {
        client["policy"] = json!([basis_uri(b)]);
    }
    client
}

/// The basis column as a URI (no whitespace): `urn:carebridge:basis:care-team:CareTeam/<gid>`.
pub fn basis_uri(basis: &str) -> String {
    let joined: Vec<&str> = basis.split_whitespace().collect();
    format!("urn:carebridge:basis:{}", joined.join(":"))
}

/// The other agent: the receiving sector of a delivery, else the gateway itself.
fn destination(a: &AuditRow, delivery: bool) -> Value {
    match (&a.target_sector, delivery) {
        // An export: the gateway (the requestor) is the source, the receiving sector system
        // the destination.
        (Some(t), true) => json!({
            "type": { "coding": [coding(DCM, "110152", "Destination Role ID")] },
            "who": { "identifier": { "system": SECTOR_SYSTEM, "value": t }, "display": format!("sector {t}") },
            "requestor": false
        }),
        // A request the gateway answered (or, for the command line, carried out).
        _ => json!({
            "type": { "coding": [coding(DCM, "110152", "Destination Role ID")] },
            "who": { "display": "carebridge" },
            "requestor": false
        }),
    }
}

/// The row's place in the hash chain, so that an exported segment can be checked offline.
fn chain_extension(a: &AuditRow) -> Value {
    let mut chain = vec![
        json!({ "url": "seq", "valueString": a.seq.to_string() }),
        json!({ "url": "kind", "valueCode": a.kind }),
        json!({ "url": "prevHash", "valueString": a.prev_hash }),
        json!({ "url": "hash", "valueString": a.hash }),
    ];
    if a.kind == RowKind::Checkpoint.code()
        && let Some(d) = &a.detail
    {
        chain.push(json!({ "url": "checkpoint", "valueString": d }));
    }
    json!({ "url": CHAIN_EXTENSION, "extension": chain })
}

/// The extension that carries an AuditEvent's place in the hash chain.
pub const CHAIN_EXTENSION: &str =
    "http://carebridge.example.org/fhir/StructureDefinition/audit-chain";
