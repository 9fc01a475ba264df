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
        kind: "event".into(),
        ..AuditRow::default()
    }
}

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
pub const SUBTYPES: [(&str, &str, &str); 8] = [
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
        "alert" | "stream" => (coding(DCM, "110110", "Patient Record"), vec![own]),
        _ => (coding(DCM, "110100", "Application Activity"), vec![own]),
    }
}

/// Renders an audit row as an AuditEvent resource. The rendering is not hashed (the chain
/// covers the row's columns, see [`chain::row_hash`]), so it can change without breaking the
/// chain.
pub fn audit_event(a: &AuditRow) -> Value {
    let delivery = a.interaction == "deliver";
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
    let mut agents = vec![client];
    match (&a.target_sector, delivery) {
        (Some(t), true) => {
            // An export: the gateway (the client above) is the source, the receiving sector
            // system the destination.
            agents.push(json!({
                "type": { "coding": [coding(DCM, "110152", "Destination Role ID")] },
                "who": { "identifier": { "system": SECTOR_SYSTEM, "value": t }, "display": format!("sector {t}") },
                "requestor": false
            }));
        }
        _ => {
            // A request the gateway answered (or, for the command line, carried out).
            agents.push(json!({
                "type": { "coding": [coding(DCM, "110152", "Destination Role ID")] },
                "who": { "display": "carebridge" },
                "requestor": false
            }));
        }
    }
    let (event_type, subtype) = event_type(&a.interaction);
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": a.seq.to_string(),
        "type": event_type,
        "subtype": subtype,
        "action": a.action,
        "recorded": a.recorded,
        "outcome": a.outcome,
        "agent": agents,
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
    if !entity.is_empty() {
        event["entity"] = Value::Array(entity);
    }
    // The row's place in the hash chain, so that an exported segment can be checked offline.
    let mut chain = vec![
        json!({ "url": "seq", "valueString": a.seq.to_string() }),
        json!({ "url": "kind", "valueCode": a.kind }),
        json!({ "url": "prevHash", "valueString": a.prev_hash }),
        json!({ "url": "hash", "valueString": a.hash }),
    ];
    if a.kind == "checkpoint"
        && let Some(d) = &a.detail
    {
        chain.push(json!({ "url": "checkpoint", "valueString": d }));
    }
    event["extension"] = json!([{ "url": CHAIN_EXTENSION, "extension": chain }]);
    event
}

/// The extension that carries an AuditEvent's place in the hash chain.
pub const CHAIN_EXTENSION: &str =
    "http://carebridge.example.org/fhir/StructureDefinition/audit-chain";

/// The hash chain over the audit log: how a row's hash is computed and how the chain is
/// verified.
///
/// A row's hash is SHA-256 over a canonical JSON array of every column but `hash` itself
/// (the chain format version first, `prev_hash` last). The first row continues from
/// [`GENESIS`]; after a prune, the first remaining row continues from the hash that the latest
/// checkpoint row records. The head (`audit_head`) holds the last seq and hash, so rows removed
/// from the end are noticed too.
pub mod chain {
    use serde::Serialize;
    use serde_json::json;

    use crate::store::{AuditRow, StoreTx};

    /// What the first row of a never-pruned chain continues from.
    pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
    const FORMAT: &str = "carebridge-audit-1";

    /// SHA-256 (hex) over the row's canonical content, `prev_hash` included.
    pub fn row_hash(a: &AuditRow) -> String {
        hash_with_seq(a, a.seq)
    }

    fn hash_with_seq(a: &AuditRow, seq: i64) -> String {
        let canonical = json!([
            FORMAT,
            seq,
            a.kind,
            a.recorded_us,
            a.recorded,
            a.request_id,
            a.client_id,
            a.role,
            a.sector,
            a.target_sector,
            a.action,
            a.interaction,
            a.outcome,
            a.patient_id,
            a.entities,
            a.query,
            a.purpose,
            a.detail,
            a.prev_hash,
        ]);
        crate::store::content_hash(canonical.to_string().as_bytes())
    }

    /// The detail of a checkpoint row: the segment it replaces.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
    pub struct Checkpoint {
        pub pruned_through: i64,
        pub continues_from: String,
    }

    /// The first broken link of the chain.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct Broken {
        pub seq: i64,
        pub problem: String,
    }

    /// The result of walking the chain.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct Report {
        pub ok: bool,
        pub rows: i64,
        pub first_seq: Option<i64>,
        pub last_seq: Option<i64>,
        pub head_seq: Option<i64>,
        pub head_hash: Option<String>,
        pub broken: Option<Broken>,
    }

    /// Walks the whole chain in `seq` order, page by page, and reports the first broken link:
    /// a row whose content does not match its hash (edited), a row that does not continue the
    /// previous row's hash (reordered, replaced), a gap in `seq` (deleted), a renumbered row
    /// (inserted before it), a chain that ends before or after the head (truncated, appended
    /// outside the gateway), or a start that no checkpoint accounts for.
    pub async fn verify(tx: &mut dyn StoreTx, page: i64) -> crate::store::Result<Report> {
        let head = tx.audit_head().await?;
        let mut found: Vec<Broken> = Vec::new();
        let mut rows = 0i64;
        let mut first: Option<(i64, String)> = None;
        let mut last: Option<(i64, String)> = None;
        let mut checkpoint: Option<Checkpoint> = None;
        let mut after = i64::MIN;
        'walk: loop {
            let batch = tx.audit_chain_page(after, page.max(1)).await?;
            if batch.is_empty() {
                break;
            }
            for r in batch {
                after = r.seq;
                rows += 1;
                if r.kind == "checkpoint" {
                    match serde_json::from_str::<Checkpoint>(r.detail.as_deref().unwrap_or("")) {
                        Ok(c) => {
                            if checkpoint
                                .as_ref()
                                .is_none_or(|old| c.pruned_through > old.pruned_through)
                            {
                                checkpoint = Some(c);
                            }
                        }
                        Err(_) => {
                            found.push(Broken {
                                seq: r.seq,
                                problem: format!(
                                    "row {} is a checkpoint without a readable segment record",
                                    r.seq
                                ),
                            });
                            break 'walk;
                        }
                    }
                }
                if row_hash(&r) != r.hash {
                    let problem = if r.seq > 1 && hash_with_seq(&r, r.seq - 1) == r.hash {
                        found.push(Broken {
                            seq: r.seq - 1,
                            problem: format!(
                                "row {} was renumbered from {}: a row was inserted at {}",
                                r.seq,
                                r.seq - 1,
                                r.seq - 1
                            ),
                        });
                        break 'walk;
                    } else {
                        format!(
                            "row {} was altered: its content does not match its hash",
                            r.seq
                        )
                    };
                    found.push(Broken {
                        seq: r.seq,
                        problem,
                    });
                    break 'walk;
                }
                match &last {
                    None => first = Some((r.seq, r.prev_hash.clone())),
                    Some((prev_seq, prev_hash)) => {
                        if r.seq != prev_seq + 1 {
                            found.push(Broken {
                                seq: prev_seq + 1,
                                problem: format!(
                                    "row {} is missing: the chain jumps from {} to {}",
                                    prev_seq + 1,
                                    prev_seq,
                                    r.seq
                                ),
                            });
                            break 'walk;
                        }
                        if &r.prev_hash != prev_hash {
                            found.push(Broken {
                                seq: r.seq,
                                problem: format!(
                                    "row {} does not continue the chain: its prev_hash is not row {}'s hash (one of the two was rewritten)",
                                    r.seq, prev_seq
                                ),
                            });
                            break 'walk;
                        }
                    }
                }
                last = Some((r.seq, r.hash.clone()));
            }
        }
        // Where the chain starts: at 1 from the genesis, or right after a checkpointed prune.
        if let Some((seq, prev_hash)) = &first {
            let (expect_seq, expect_prev) = match &checkpoint {
                Some(c) => (c.pruned_through + 1, c.continues_from.as_str()),
                None => (1, GENESIS),
            };
            if *seq != expect_seq {
                found.push(Broken {
                    seq: expect_seq.min(*seq),
                    problem: if *seq > expect_seq {
                        format!(
                            "rows {expect_seq} to {} are missing and no checkpoint records their export",
                            seq - 1
                        )
                    } else {
                        format!("row {seq} precedes the start recorded by the latest checkpoint")
                    },
                });
            } else if prev_hash != expect_prev {
                found.push(Broken {
                    seq: *seq,
                    problem: format!(
                        "row {seq} does not continue from {}",
                        if checkpoint.is_some() {
                            "the hash its checkpoint records"
                        } else {
                            "the genesis"
                        }
                    ),
                });
            }
        }
        // Where it ends: at the head.
        match (&last, &head) {
            (Some((seq, hash)), Some((head_seq, head_hash))) if found.is_empty() => {
                if head_seq > seq {
                    found.push(Broken {
                        seq: seq + 1,
                        problem: format!(
                            "rows {} to {head_seq} are missing: the chain ends at {seq} but the head records {head_seq}",
                            seq + 1
                        ),
                    });
                } else if head_seq < seq {
                    found.push(Broken {
                        seq: head_seq + 1,
                        problem: format!(
                            "row {} was appended outside the gateway: the head records {head_seq}",
                            head_seq + 1
                        ),
                    });
                } else if head_hash != hash {
                    found.push(Broken {
                        seq: *seq,
                        problem: format!("row {seq} is not the row the head records"),
                    });
                }
            }
            (None, Some((head_seq, _))) => found.push(Broken {
                seq: checkpoint.as_ref().map_or(1, |c| c.pruned_through + 1),
                problem: format!("the log is empty but the head records {head_seq} rows"),
            }),
            (Some((seq, _)), None) if found.is_empty() => found.push(Broken {
                seq: *seq,
                problem: "the log has rows but no head: it was written outside the gateway".into(),
            }),
            _ => {}
        }
        let broken = found.into_iter().min_by_key(|b| b.seq);
        Ok(Report {
            ok: broken.is_none(),
            rows,
            first_seq: first.map(|f| f.0),
            last_seq: last.as_ref().map(|l| l.0),
            head_seq: head.as_ref().map(|h| h.0),
            head_hash: head.map(|h| h.1),
            broken,
        })
    }
}

/// Exporting and pruning segments of the log.
pub mod segment {
    use std::io::Write;

    use super::chain::Checkpoint;
    use crate::store::{AuditRow, Store};

    const PAGE: i64 = 2_000;

    /// Writes the rows recorded in `[from_us, to_us]` with `seq <= max_seq` as NDJSON
    /// AuditEvents (one per line, the chain extension included), in chain order, calling
    /// `progress(done, total)` after each page. Reads in one snapshot; writers are not blocked.
    pub async fn export(
        store: &dyn Store,
        from_us: i64,
        to_us: i64,
        max_seq: i64,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(i64, i64),
    ) -> anyhow::Result<i64> {
        let mut tx = store.begin_read().await?;
        let total = tx.audit_range_count(from_us, to_us).await?;
        let mut done = 0;
        let mut after = i64::MIN;
        'pages: loop {
            let rows = tx.audit_range_page(after, from_us, to_us, PAGE).await?;
            let Some(last) = rows.last() else { break };
            after = last.seq;
            for r in &rows {
                if r.seq > max_seq {
                    break 'pages;
                }
                serde_json::to_writer(&mut *out, &super::audit_event(r))?;
                out.write_all(b"\n")?;
                done += 1;
            }
            progress(done, total);
        }
        progress(done, done);
        out.flush()?;
        Ok(done)
    }

    /// What a prune did.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Pruned {
        pub through_seq: i64,
        pub exported: i64,
        pub deleted: i64,
    }

    /// Exports every row recorded before `before_us` to `out_path` (synced to disk), then
    /// deletes them and appends a checkpoint row that records the hash the remaining chain
    /// continues from. Returns `None` when nothing is old enough.
    pub async fn prune(
        store: &dyn Store,
        before_us: i64,
        out_path: &std::path::Path,
        actor: &super::Actor,
        progress: &mut dyn FnMut(i64, i64),
    ) -> anyhow::Result<Option<Pruned>> {
        let (upto, upto_hash) = {
            let mut tx = store.begin_read().await?;
            let Some(upto) = tx.audit_last_seq_before(before_us).await? else {
                return Ok(None);
            };
            let row: Vec<AuditRow> = tx.audit_chain_page(upto - 1, 1).await?;
            match row.into_iter().next() {
                Some(r) if r.seq == upto => (upto, r.hash),
                _ => {
                    anyhow::bail!("audit row {upto} cannot be read; run `carebridge audit verify`")
                }
            }
        };
        let file = std::fs::File::create(out_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", out_path.display()))?;
        let mut w = std::io::BufWriter::new(file);
        let exported = export(store, i64::MIN, i64::MAX, upto, &mut w, progress).await?;
        let file = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
        // The segment is on disk before a single row is deleted.
        file.sync_all()?;
        let mut checkpoint = super::row(actor, None, "D", "prune", super::outcome::SUCCESS);
        checkpoint.kind = "checkpoint".into();
        checkpoint.detail = Some(serde_json::to_string(&Checkpoint {
            pruned_through: upto,
            continues_from: upto_hash,
        })?);
        let mut tx = store.begin().await?;
        let deleted = tx.audit_prune(upto, checkpoint).await?;
        tx.commit().await?;
        Ok(Some(Pruned {
            through_seq: upto,
            exported,
            deleted,
        }))
    }
}
