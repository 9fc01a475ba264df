//! The alert lifecycle, as FHIR DetectedIssue. Detection runs for the patient whose data
//! changed, inside the transaction that stores the change (so an alert never lags what it is
//! about, and a rolled-back request raises nothing); it never rescans other patients.
//!
//! One finding is one alert: its fingerprint (code and what it is about) is unique per patient.
//! DetectedIssue.status means:
//! - `preliminary`: raised, not yet acknowledged, evidence unchanged since;
//! - `final`: acknowledged by a care-team member (a `mitigation` records who, when and the
//!   note);
//! - `amended`: the evidence changed after it was raised or acknowledged (still open);
//! - `cancelled`: closed automatically because the cause disappeared (or the patient is
//!   recorded as deceased: a `mitigation` states it). If the cause returns the same alert
//!   reopens as `preliminary` with a new version.
//!
//! Time-driven evaluation: every evaluation also writes the patient's schedule (the next time
//! a time-based finding may change with no record changing, per rule: [`crate::detect::next_due`])
//! in the same transaction; `Gateway::run_schedule` (`gateway::schedule`) re-evaluates the patients
//! whose time has come.

use serde_json::{Value, json};

use crate::config::AlertSettings;
use crate::detect::{Context, Finding, Item, NeedsAssessment, Rules, Snapshot};
use crate::fhir::SOURCE_ID_SYSTEM;
use crate::fhir::time::instant;
use crate::ids::content_hash;
use crate::store::{AlertRow, Result, StoreTx};
use crate::terminology::MedKnowledge;
use crate::terminology::mapping::Mapping;

/// The identifier system of an alert's fingerprint.
pub const FINGERPRINT_SYSTEM: &str =
    "http://carebridge.example.org/fhir/NamingSystem/alert-fingerprint";

/// The resource types detection reads (besides the Encounters that active orders name, and the
/// assessment records when the needs-assessment rule applies).
pub const DETECT_TYPES: [&str; 9] = [
    "Condition",
    "CarePlan",
    "CareTeam",
    "Communication",
    "MedicationRequest",
    "MedicationStatement",
    "Goal",
    "ServiceRequest",
    "Patient",
];

/// Who closes an alert of a deceased patient.
const GATEWAY_AUTHOR: &str = "carebridge";

/// Everything detection needs, loaded once.
pub struct Detection {
    pub knowledge: MedKnowledge,
    pub mapping: Mapping,
    pub rules: Rules,
}

/// The detectors' rules as configured in `[alerts]`.
impl From<&AlertSettings> for Rules {
    fn from(a: &AlertSettings) -> Rules {
        Rules {
            polypharmacy_threshold: a.polypharmacy_threshold,
            reply_within_hours: a.reply_within_hours,
            chronic: crate::terminology::conditions::CodeList::new(&a.chronic),
            coordinator_roles: a.coordinator_roles.clone(),
            reply_requested: a.reply_requested.clone(),
            addressed_by_orders: a.addressed_by_orders,
            needs_assessment: NeedsAssessment {
                codes: a.needs_assessment_codes.clone(),
                questionnaires: a.needs_assessment_questionnaires.clone(),
                within_months: a.needs_assessment_months,
            },
        }
    }
}

/// A change to an alert, for the stream and the audit log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AlertEvent {
    /// raised, updated, closed or acknowledged.
    pub kind: &'static str,
    pub id: String,
    pub patient: String,
    pub code: String,
    pub status: String,
    pub version: i64,
    /// The DetectedIssue.
    pub resource: Value,
}

/// Reads a patient's snapshot inside `tx`.
pub async fn snapshot(tx: &mut dyn StoreTx, patient_id: &str, now_us: i64) -> Result<Snapshot> {
    // One read for every type, in the order of DETECT_TYPES (then sector and id).
    let mut rows = tx.by_patient_types(patient_id, &DETECT_TYPES).await?;
    rows.sort_by_key(|s| DETECT_TYPES.iter().position(|t| *t == s.rtype));
    let items = to_items(rows)?;
    // A reference to one of the sector's own records is not a delivered copy: no lookup.
    let own: std::collections::HashSet<(String, String)> = items
        .iter()
        .map(|i| (i.sector.clone(), format!("{}/{}", i.rtype, i.rid)))
        .collect();
    let mut snap = Snapshot {
        patient_id: patient_id.to_owned(),
        now_us,
        items,
        copies: Default::default(),
    };
    // References that may point at copies the gateway delivered to the referring sector.
    let mut refs = Vec::new();
    for i in &snap.items {
        for key in [
            "inResponseTo",
            "addresses",
            "goal",
            "basedOn",
            "derivedFrom",
            "reasonReference",
        ] {
            for r in i
                .body
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("reference")?.as_str())
            {
                if own.contains(&(i.sector.clone(), r.to_owned())) {
                    continue;
                }
                if let Some((t, id)) = crate::fhir::parse_relative(r) {
                    refs.push((i.sector.clone(), t.to_owned(), id.to_owned()));
                }
            }
        }
    }
    for (sector, t, id) in refs {
        if let Some(d) = tx.delivered_by_target_id(&sector, &t, &id).await? {
            snap.copies.insert((sector, format!("{t}/{id}")), d.gid);
        }
    }
    add_order_encounters(tx, &mut snap).await?;
    Ok(snap)
}

fn to_items(rows: Vec<crate::store::Stored>) -> Result<Vec<Item>> {
    rows.into_iter()
        .map(|s| {
            Ok(Item {
                body: s.json()?,
                gid: s.gid,
                sector: s.sector,
                rtype: s.rtype,
                rid: s.rid,
                version: s.version,
            })
        })
        .collect()
}

/// The Encounters that active MedicationRequests were ordered in (for stale orders): one read.
async fn add_order_encounters(tx: &mut dyn StoreTx, snap: &mut Snapshot) -> Result<()> {
    let mut gids: Vec<String> = snap
        .of_type("MedicationRequest")
        .filter(|i| crate::detect::active_medication(i))
        .filter_map(|i| {
            let r = i.body.pointer("/encounter/reference")?.as_str()?;
            snap.target(&i.sector, r)
        })
        .collect();
    gids.sort();
    gids.dedup();
    if !gids.is_empty() {
        let found = tx.get_many(&gids).await?;
        snap.items.extend(to_items(found)?);
    }
    Ok(())
}

/// Adds the patient's assessment records (Procedure, Observation, QuestionnaireResponse) to a
/// snapshot: always when `always`, else only when the needs-assessment rule applies (two
/// sectors with chronic conditions), so that most evaluations read nothing more.
pub async fn add_assessments(
    tx: &mut dyn StoreTx,
    d: &Detection,
    snap: &mut Snapshot,
    always: bool,
) -> Result<()> {
    if !always && !crate::detect::needs::qualifies(snap, &d.context()) {
        return Ok(());
    }
    let rows = tx
        .by_patient_types(&snap.patient_id, &crate::detect::needs::ASSESSMENT_TYPES)
        .await?;
    snap.items.extend(to_items(rows)?);
    Ok(())
}

impl Detection {
    /// The detectors' context.
    pub fn context(&self) -> Context<'_> {
        Context {
            knowledge: &self.knowledge,
            mapping: &self.mapping,
            rules: &self.rules,
        }
    }
}

fn evidence(f: &Finding, s: &Snapshot) -> String {
    let versions: Vec<String> = f
        .implicated
        .iter()
        .map(|g| format!("{g}@{}", s.by_gid(g).map_or(0, |i| i.version)))
        .collect();
    content_hash(format!("{}\n{}", versions.join(","), f.detail).as_bytes())
}

/// An implicated record: the gateway's reference, and the record as its sector knows it — the
/// source-resource identifier `<sector>/<Type>/<id>` (which every copy the gateway delivers
/// carries too) assigned by the sector.
fn implicated_ref(i: &Item) -> Value {
    json!({
        "reference": format!("{}/{}", i.rtype, i.gid),
        "type": i.rtype,
        "identifier": {
            "system": SOURCE_ID_SYSTEM,
            "value": format!("{}/{}/{}", i.sector, i.rtype, i.rid),
            "assigner": { "display": i.sector },
        },
        "display": format!("{} {} {}", i.sector, i.rtype, i.rid),
    })
}

/// The DetectedIssue of an alert.
pub fn render(row: &AlertRow, f: &Finding, s: &Snapshot, mitigation: Option<&Value>) -> Value {
    let implicated: Vec<Value> = f
        .implicated
        .iter()
        .map(|g| match s.by_gid(g) {
            Some(i) => implicated_ref(i),
            None => json!({ "reference": format!("Resource/{g}") }),
        })
        .collect();
    let mut di = json!({
        "resourceType": "DetectedIssue",
        "id": row.id,
        "meta": { "versionId": row.version.to_string(), "lastUpdated": instant(row.updated_us) },
        "identifier": [{ "system": FINGERPRINT_SYSTEM, "value": row.fingerprint }],
        "status": row.status,
        "code": { "coding": [{ "system": f.code.0, "code": f.code.1, "display": f.code.2 }], "text": f.code.2 },
        "severity": f.severity.code(),
        "patient": { "reference": format!("Patient/{}", row.patient_id) },
        "identifiedDateTime": instant(row.created_us),
        "implicated": implicated,
        "detail": f.detail,
    });
    if let Some(m) = mitigation.filter(|m| m.as_array().is_some_and(|a| !a.is_empty())) {
        di["mitigation"] = m.clone();
    }
    di
}

/// Re-evaluates one patient and brings the alerts in line; returns what changed. Writes the
/// patient's schedule of time-based re-evaluation.
pub async fn evaluate(
    tx: &mut dyn StoreTx,
    d: &Detection,
    patient_id: &str,
    now_us: i64,
) -> Result<Vec<AlertEvent>> {
    // Before the snapshot, so that it sees what a transaction that held the lock committed.
    // Callers evaluating several patients do so in id order (no deadlock).
    tx.lock_patient_alerts(patient_id).await?;
    let mut snap = snapshot(tx, patient_id, now_us).await?;
    add_assessments(tx, d, &mut snap, false).await?;
    let cx = d.context();
    let findings = crate::detect::detect(&snap, &cx);
    tx.schedule_set(patient_id, &crate::detect::next_due(&snap, &cx))
        .await?;
    let existing = tx.alerts_of_patient(patient_id).await?;
    let mut events = Vec::new();
    for f in &findings {
        let ev = evidence(f, &snap);
        let prior = existing.iter().find(|a| a.fingerprint == f.fingerprint);
        let Some((mut row, kind)) = raise_or_amend(patient_id, f, prior, ev, now_us) else {
            continue;
        };
        let old: Value = match prior {
            Some(a) => a.json()?,
            None => Value::Null,
        };
        // A reopened alert starts without the acknowledgements of its earlier life.
        let mitigation = if kind == "raised" {
            None
        } else {
            old.get("mitigation")
        };
        let body = render(&row, f, &snap, mitigation);
        row.body = body.to_string();
        tx.alert_put(&row).await?;
        events.push(event(kind, &row, body));
    }
    let reason = crate::detect::patient::deceased(&snap)
        .map(|sector| format!("Closed: the patient is recorded as deceased ({sector})."));
    for a in existing.iter().filter(|a| a.open) {
        if findings.iter().any(|f| f.fingerprint == a.fingerprint) {
            continue;
        }
        let (row, body) = closed(a, now_us, reason.as_deref())?;
        tx.alert_put(&row).await?;
        events.push(event("closed", &row, body));
    }
    Ok(events)
}

/// The alert row a finding leads to, given the alert it matched before (if any): raised (new,
/// or reopened after it was closed) or updated (amended: the evidence changed); `None` when
/// nothing changed.
fn raise_or_amend(
    patient_id: &str,
    f: &Finding,
    prior: Option<&AlertRow>,
    evidence: String,
    now_us: i64,
) -> Option<(AlertRow, &'static str)> {
    Some(match prior {
        None => (
            AlertRow {
                id: uuid::Uuid::new_v4().to_string(),
                patient_id: patient_id.to_owned(),
                fingerprint: f.fingerprint.clone(),
                code: f.code.1.to_owned(),
                status: "preliminary".into(),
                open: true,
                evidence,
                version: 1,
                created_us: now_us,
                updated_us: now_us,
                body: String::new(),
            },
            "raised",
        ),
        Some(a) if !a.open => (
            AlertRow {
                status: "preliminary".into(),
                open: true,
                evidence,
                version: a.version + 1,
                updated_us: now_us,
                ..a.clone()
            },
            "raised",
        ),
        Some(a) if a.evidence != evidence => (
            AlertRow {
                status: "amended".into(),
                evidence,
                version: a.version + 1,
                updated_us: now_us,
                ..a.clone()
            },
            "updated",
        ),
        Some(_) => return None,
    })
}

/// An open alert whose cause disappeared, closed (`cancelled`) with a new version; a `reason`
/// (the patient died) is recorded as a mitigation.
fn closed(a: &AlertRow, now_us: i64, reason: Option<&str>) -> Result<(AlertRow, Value)> {
    let mut body: Value = a.json()?;
    let version = a.version + 1;
    body["status"] = json!("cancelled");
    if let Some(text) = reason {
        let entry = json!({
            "action": { "text": text },
            "date": instant(now_us),
            "author": { "display": GATEWAY_AUTHOR },
        });
        match body.get_mut("mitigation").and_then(Value::as_array_mut) {
            Some(list) => list.push(entry),
            None => body["mitigation"] = json!([entry]),
        }
    }
    body["meta"] = json!({ "versionId": version.to_string(), "lastUpdated": instant(now_us) });
    let row = AlertRow {
        status: "cancelled".into(),
        open: false,
        version,
        updated_us: now_us,
        body: body.to_string(),
        ..a.clone()
    };
    Ok((row, body))
}

fn event(kind: &'static str, row: &AlertRow, resource: Value) -> AlertEvent {
    AlertEvent {
        kind,
        id: row.id.clone(),
        patient: row.patient_id.clone(),
        code: row.code.clone(),
        status: row.status.clone(),
        version: row.version,
        resource,
    }
}

/// Records an acknowledgement as a mitigation; `None` when there is no such alert.
pub async fn acknowledge(
    tx: &mut dyn StoreTx,
    id: &str,
    author: &str,
    note: Option<&str>,
    now_us: i64,
) -> Result<Option<AlertEvent>> {
    let Some(a) = tx.alert_get(id).await? else {
        return Ok(None);
    };
    // The alert as it is once no detection is changing it.
    tx.lock_patient_alerts(&a.patient_id).await?;
    let Some(a) = tx.alert_get(id).await? else {
        return Ok(None);
    };
    let mut body: Value = a.json()?;
    let text = match note {
        Some(n) if !n.trim().is_empty() => format!("Acknowledged: {}", n.trim()),
        _ => "Acknowledged".to_owned(),
    };
    let entry = json!({
        "action": { "text": text },
        "date": instant(now_us),
        "author": { "display": author },
    });
    match body.get_mut("mitigation").and_then(Value::as_array_mut) {
        Some(list) => list.push(entry),
        None => body["mitigation"] = json!([entry]),
    }
    let status = if a.open { "final" } else { a.status.as_str() }.to_owned();
    let row = AlertRow {
        status: status.clone(),
        version: a.version + 1,
        updated_us: now_us,
        ..a.clone()
    };
    body["status"] = json!(status);
    body["meta"] = json!({ "versionId": row.version.to_string(), "lastUpdated": instant(now_us) });
    let row = AlertRow {
        body: body.to_string(),
        ..row
    };
    tx.alert_put(&row).await?;
    Ok(Some(event("acknowledged", &row, body)))
}
