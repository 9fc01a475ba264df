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
    if let Some(q) = &a.query {
        use base64::Engine;
        entity.push(json!({
            "type": { "system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object" },
            "role": { "system": OBJECT_ROLE, "code": "24", "display": "Query" },
            "query": base64::engine::general_purpose::STANDARD.encode(q.as_bytes())
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
    if let Some(p) = &a.purpose {
        client["purposeOfUse"] = json!([{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p
        }]}]);
    }
    let gateway = json!({
        "type": { "coding": [{
            "system": "http://dicom.nema.org/resources/ontology/DCM",
            "code": "110152", "display": "Destination Role ID"
        }]},
        "who": { "display": "carebridge" },
        "requestor": false
    });
    let mut agents = vec![client, gateway];
    if let Some(t) = &a.target_sector {
        // A transfer: the receiving sector system is the destination agent.
        agents.push(json!({
            "type": { "coding": [{
                "system": "http://dicom.nema.org/resources/ontology/DCM",
                "code": "110152", "display": "Destination Role ID"
            }]},
            "who": { "identifier": { "system": SECTOR_SYSTEM, "value": t }, "display": format!("sector {t}") },
            "requestor": false
        }));
    }
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
        "agent": agents,
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
