//! Telling the care team: each raised, updated or closed alert becomes a Communication
//! (category `alert`, the detail as payload, `about` the DetectedIssue) that the gateway itself
//! authors — it is stored under the pseudo-sector [`GATEWAY_SECTOR`](crate::config::GATEWAY_SECTOR) — and that goes through
//! the outbox to the sector endpoint of every participant of the patient's active CareTeams
//! (and each CareTeam's own sector); with no CareTeam, to the patient's general practice.
//! Runs in the transaction that changes the alert.
//!
//! Its `about` also names the alert's implicated records by their gateway ids; delivery points
//! each at the record as the receiving sector knows it — its own record, or the copy the gateway
//! delivered to it — else names it by the source-resource identifier (`exchange::map`).

use serde_json::{Value, json};
use std::collections::BTreeSet;

use super::alerts::AlertEvent;
use crate::config::{GATEWAY_SECTOR, SectorKind, Settings};
use crate::exchange::resolve::reference_target;
use crate::ids::content_hash;
use crate::store::{OutboxNew, Prepared, Result, StoreTx};

/// The identifier system of alert Communications: `<alert id>/<version>`.
pub const ALERT_MESSAGE_SYSTEM: &str =
    "http://carebridge.example.org/fhir/NamingSystem/alert-message";

/// The sectors that should hear about a patient's alerts.
pub async fn care_team_sectors(
    tx: &mut dyn StoreTx,
    settings: &Settings,
    patient_id: &str,
) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut teams = 0;
    for team in tx.by_patient(patient_id, Some("CareTeam"), 0, 1000).await? {
        let body: Value = team.json()?;
        if !matches!(
            body.get("status").and_then(Value::as_str),
            None | Some("active")
        ) {
            continue;
        }
        teams += 1;
        out.insert(team.sector.clone());
        let members: Vec<Value> = body
            .get("participant")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("member").cloned())
            .collect();
        for m in members {
            out.extend(
                reference_target(tx, settings, &team.sector, &m)
                    .await?
                    .owners,
            );
        }
    }
    if teams == 0 {
        for s in tx.care_sectors(patient_id).await? {
            if settings
                .sector(&s)
                .is_some_and(|x| x.kind == SectorKind::GeneralPractice)
            {
                out.insert(s);
            }
        }
    }
    out.retain(|s| settings.sector(s).is_some_and(|x| x.base_url.is_some()));
    Ok(out)
}

/// The alert and its implicated records (`Type/<gateway id>`, with the DetectedIssue's display).
fn about(event: &AlertEvent, title: &str) -> Vec<Value> {
    let mut out =
        vec![json!({ "reference": format!("DetectedIssue/{}", event.id), "display": title })];
    for r in event
        .resource
        .get("implicated")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(reference) = r.get("reference").and_then(Value::as_str) {
            let display = r
                .get("display")
                .and_then(Value::as_str)
                .unwrap_or(reference);
            out.push(json!({ "reference": reference, "display": display }));
        }
    }
    out
}

/// Stores the Communication for an alert change and queues it for the care team's sectors.
/// Returns the sectors it was queued for.
pub async fn notify(
    tx: &mut dyn StoreTx,
    settings: &Settings,
    event: &AlertEvent,
    now: &str,
) -> Result<BTreeSet<String>> {
    if !matches!(event.kind, "raised" | "updated" | "closed") {
        return Ok(BTreeSet::new());
    }
    let targets = care_team_sectors(tx, settings, &event.patient).await?;
    if targets.is_empty() {
        return Ok(targets);
    }
    let rid = format!("alert-{}-{}", event.id, event.version);
    let detail = event
        .resource
        .get("detail")
        .and_then(Value::as_str)
        .unwrap_or("");
    let title = event
        .resource
        .pointer("/code/text")
        .and_then(Value::as_str)
        .unwrap_or(&event.code);
    let what = match event.kind {
        "raised" => "New alert",
        "updated" => "Alert updated",
        _ => "Alert closed",
    };
    let priority = match event.resource.get("severity").and_then(Value::as_str) {
        Some("high") if event.kind != "closed" => "urgent",
        _ => "routine",
    };
    let body = json!({
        "resourceType": "Communication",
        "id": rid,
        "identifier": [{ "system": ALERT_MESSAGE_SYSTEM, "value": format!("{}/{}", event.id, event.version) }],
        "status": "completed",
        "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/communication-category", "code": "alert", "display": "Alert" }] }],
        "priority": priority,
        "subject": { "reference": format!("Patient/{}", event.patient) },
        "about": about(event, title),
        "sent": now,
        "payload": [{ "contentString": format!("{what}: {title}. {detail}") }],
    });
    let text = body.to_string();
    let prepared = Prepared {
        sector: GATEWAY_SECTOR.into(),
        rtype: "Communication".into(),
        rid: rid.clone(),
        hash: content_hash(text.as_bytes()),
        body: text,
        patient_ref: None,
        link_identifiers: Vec::new(),
        identifiers: vec![(
            ALERT_MESSAGE_SYSTEM.into(),
            format!("{}/{}", event.id, event.version),
        )],
        patient_id: Some(event.patient.clone()),
        expected_version: None,
        authority_systems: Vec::new(),
        allow_merge: false,
    };
    let stored = tx.put(&prepared).await?;
    for target in &targets {
        tx.outbox_add(&OutboxNew {
            target: target.clone(),
            source: GATEWAY_SECTOR.into(),
            gid: stored.gid.clone(),
            version: stored.version,
            rtype: "Communication".into(),
            patient_id: Some(event.patient.clone()),
            route: "alert".into(),
        })
        .await?;
    }
    Ok(targets)
}
