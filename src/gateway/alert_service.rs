//! The care team's alert service: DetectedIssue search and read, `$acknowledge`, the live
//! stream of alert changes, and a patient's total healthcare plan. Care-team members only
//! ([`Request::Alerts`]); every read is audited.

use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::alerts::{AlertEvent, add_assessments, snapshot};
use super::history::{
    alert_read_row, author_and_note, history_row, record, served, snooze_request,
};
use super::relation::{Access, mark, mark_all, merge_bases};
use super::views::{gateway_view, patient_view};
use super::write::alert_audit_row;
use super::{Gateway, GatewayError};
use crate::access::{Caller, Request};
use crate::audit::{self, Action, Interaction, Outcome};
use crate::fhir::outcome::Issue;
use crate::fhir::time::{instant, now_us};
use crate::store::{AlertQuery, InboxRow, StoreTx};

/// A subscription to alert changes ([`Gateway::alert_stream`], [`Gateway::next_alert`]).
pub struct AlertStream {
    rx: broadcast::Receiver<AlertEvent>,
    caller: Caller,
}

impl Gateway {
    /// Alerts matching the search parameters `params` (patient, status, code; a merged
    /// patient's alerts are found under the survivor): how many match, and `count` of them
    /// from `offset`.
    pub async fn alert_search(
        &self,
        caller: &Caller,
        params: &[(String, String)],
        offset: i64,
        count: i64,
    ) -> Result<(usize, Vec<Value>), GatewayError> {
        self.gate(caller, Request::Alerts, Interaction::SearchType)
            .await?;
        let mut q = alert_query(params, 0, super::search::MAX_CANDIDATES)?;
        let mut tx = self.store.begin_audited().await?;
        if let Some(p) = &q.patient_id
            && let Some(gp) = tx.patient(p).await?
        {
            q.patient_id = Some(gp.id);
        }
        let mut bases = Vec::new();
        if let Some(p) = q.patient_id.clone() {
            let (t, access) = self.admit(tx, caller, &p, Interaction::SearchType).await?;
            tx = t;
            bases.push(access.basis);
        }
        let mut all = tx.alert_search(&q).await?;
        if q.patient_id.is_none() {
            // Without a patient: only the alerts of patients the caller may read.
            let patients: Vec<String> = all.iter().map(|a| a.alert.patient_id.clone()).collect();
            let decided = self.decide_each(&mut *tx, caller, patients).await?;
            all.retain(|a| matches!(decided.get(&a.alert.patient_id), Some(Some(_))));
            let found = decided.into_values().flatten().map(|a| a.basis).collect();
            merge_bases(&mut bases, found);
        }
        let total = all.len();
        let rows: Vec<InboxRow> = all
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(count).unwrap_or(0))
            .collect();
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Execute,
            Interaction::SearchType,
            Outcome::Success,
        );
        row.patient_id = q.patient_id.clone();
        row.entities = rows
            .iter()
            .map(|a| format!("DetectedIssue/{}", a.alert.id))
            .collect();
        row.query = Some(format!(
            "DetectedIssue?{}",
            params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        ));
        row.purpose = Some("TREAT".into());
        mark_all(&mut row, &bases);
        row.detail = Some(format!("{} alerts returned of {total}", rows.len()));
        tx.audit(&row).await?;
        tx.commit().await?;
        let bodies = rows.iter().map(alert_body).collect::<Result<Vec<_>, _>>()?;
        Ok((total, bodies))
    }

    /// One alert (its DetectedIssue), or `None`.
    pub async fn alert(&self, caller: &Caller, id: &str) -> Result<Option<Value>, GatewayError> {
        self.gate(caller, Request::Alerts, Interaction::Read)
            .await?;
        let mut tx = self.store.begin_audited().await?;
        let Some(a) = tx.alert_get(id).await? else {
            return Ok(None);
        };
        let (mut tx, access) = self
            .admit(tx, caller, &a.patient_id, Interaction::Read)
            .await?;
        let row = alert_read_row(caller, &a, &access.basis);
        let snooze = tx.alert_snooze_get(id).await?.unwrap_or_default();
        tx.audit(&row).await?;
        tx.commit().await?;
        served(&a, &snooze, now_us()).map(Some)
    }

    /// Acknowledges an alert with a Parameters resource naming the `author` (valueString, or
    /// valueReference with a display or reference) and an optional `note` (valueString); the
    /// new DetectedIssue, or `None` when there is no such alert.
    pub async fn acknowledge(
        &self,
        caller: &Caller,
        id: &str,
        parameters: &Value,
    ) -> Result<Option<Value>, GatewayError> {
        self.gate(caller, Request::Alerts, Interaction::Alert)
            .await?;
        let (author, note) = acknowledgement(parameters)?;
        let mut tx = self.store.begin().await?;
        let Some(patient) = tx.alert_get(id).await?.map(|a| a.patient_id) else {
            return Ok(None);
        };
        let (mut tx, access) = self.admit(tx, caller, &patient, Interaction::Alert).await?;
        let now = now_us();
        let Some(event) =
            super::alerts::acknowledge(&mut *tx, id, &author, note.as_deref(), now).await?
        else {
            return Ok(None);
        };
        record(
            &mut *tx,
            &event,
            &author,
            note.as_deref().unwrap_or(""),
            now,
        )
        .await?;
        let mut row = alert_audit_row(&event, Some(caller));
        mark(&mut row, &access.basis);
        tx.audit(&row).await?;
        tx.commit().await?;
        let resource = event.resource.clone();
        self.publish(vec![event]);
        Ok(Some(resource))
    }

    /// Alert changes from now on, for a care-team member; opening the stream is audited.
    /// Read it with [`Gateway::next_alert`]: each subscriber receives only the events of
    /// patients it may read.
    pub async fn alert_stream(&self, caller: &Caller) -> Result<AlertStream, GatewayError> {
        self.gate(caller, Request::Alerts, Interaction::Stream)
            .await?;
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Read,
            Interaction::Stream,
            Outcome::Success,
        );
        row.entities = vec!["DetectedIssue".into()];
        row.purpose = Some("TREAT".into());
        row.detail = Some("alert stream opened".into());
        self.write_audit(row).await;
        Ok(AlertStream {
            rx: self.alert_events.subscribe(),
            caller: caller.clone(),
        })
    }

    /// The next alert change the stream's caller may see: events of patients without a
    /// relationship (or whose relationship cannot be read now) are skipped.
    pub async fn next_alert(&self, stream: &mut AlertStream) -> Result<AlertEvent, RecvError> {
        loop {
            let event = stream.rx.recv().await?;
            let decided = async {
                let mut tx = self.store.begin_read().await?;
                self.patient_access(&mut *tx, &stream.caller, &event.patient)
                    .await
            }
            .await;
            match decided {
                Ok(Ok(_)) => return Ok(event),
                Ok(Err(_)) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "alert stream: access undecidable, event withheld");
                }
            }
        }
    }

    /// The total healthcare plan of a gateway patient: one collection Bundle with every
    /// sector's current CarePlans, Goals, Conditions, CareTeams and medications (each tagged
    /// with its sector, as the cross-sector view shows them) and the patient's open alerts;
    /// `None` when there is no such patient.
    pub async fn total_plan(
        &self,
        caller: &Caller,
        patient: &str,
    ) -> Result<Option<Value>, GatewayError> {
        self.gate(caller, Request::Alerts, Interaction::Operation)
            .await?;
        let mut tx = self.store.begin_audited().await?;
        let Some(p) = tx.patient(patient).await? else {
            return Ok(None);
        };
        let (mut tx, access) = self
            .admit(tx, caller, &p.id, Interaction::Operation)
            .await?;
        let base = self.fhir_base();
        let mut shown = patient_view(&p);
        if let Some(t) = self.last_assessment(&mut *tx, &p.id).await? {
            // The date of the last systematic needs assessment (docs/alerts.md).
            shown["extension"] =
                json!([{ "url": LAST_ASSESSMENT_URL, "valueDateTime": instant(t) }]);
        }
        let mut entries = vec![json!({
            "fullUrl": format!("{base}/Patient/{}", p.id),
            "resource": shown,
        })];
        let mut gids = self
            .current_records(&mut *tx, caller, &access, &p.id, &mut entries)
            .await?;
        let open = tx
            .alert_search(&AlertQuery {
                patient_id: Some(p.id.clone()),
                count: 1000,
                ..AlertQuery::default()
            })
            .await?;
        for a in open.iter().filter(|a| a.alert.open) {
            let id = &a.alert.id;
            entries.push(
                json!({ "fullUrl": format!("{base}/DetectedIssue/{id}"), "resource": alert_body(a)? }),
            );
            gids.push(format!("DetectedIssue/{id}"));
        }
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Read,
            Interaction::Operation,
            Outcome::Success,
        );
        row.patient_id = Some(p.id.clone());
        row.entities = gids;
        row.purpose = Some("TREAT".into());
        mark(&mut row, &access.basis);
        row.detail = Some(format!("$total-plan: {} entries", entries.len()));
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(Some(json!({
            "resourceType": "Bundle",
            "type": "collection",
            "timestamp": instant(now_us()),
            "entry": entries,
        })))
    }
}

/// The extension of `$total-plan`'s Patient that gives the last needs assessment's date.
pub const LAST_ASSESSMENT_URL: &str =
    "http://carebridge.example.org/fhir/StructureDefinition/last-needs-assessment";

impl Gateway {
    /// When the patient's last systematic needs assessment was (see `detect::needs`).
    async fn last_assessment(
        &self,
        tx: &mut dyn StoreTx,
        patient_id: &str,
    ) -> Result<Option<i64>, GatewayError> {
        let Some(d) = self.detection.as_ref() else {
            return Ok(None);
        };
        let mut snap = snapshot(tx, patient_id, now_us()).await?;
        add_assessments(tx, d, &mut snap, true).await?;
        Ok(crate::detect::needs::last_assessment(&snap, &d.context()).map(|(t, _)| t))
    }

    /// Snoozes an open alert (see the module); the DetectedIssue as served, or `None` when
    /// there is no such alert. A closed alert cannot be snoozed (422).
    pub async fn snooze(
        &self,
        caller: &Caller,
        id: &str,
        parameters: &Value,
    ) -> Result<Option<Value>, GatewayError> {
        self.gate(caller, Request::Alerts, Interaction::Alert)
            .await?;
        let now = now_us();
        let snooze = snooze_request(parameters, now)?;
        let mut tx = self.store.begin().await?;
        let Some(patient) = tx.alert_get(id).await?.map(|a| a.patient_id) else {
            return Ok(None);
        };
        let (mut tx, access) = self.admit(tx, caller, &patient, Interaction::Alert).await?;
        tx.lock_patient_alerts(&patient).await?;
        let Some(a) = tx.alert_get(id).await? else {
            return Ok(None);
        };
        if !a.open {
            return Err(GatewayError::Unprocessable(vec![
                Issue::error("business-rule", "a closed alert cannot be snoozed")
                    .at("DetectedIssue.status"),
            ]));
        }
        tx.alert_snooze(id, &snooze).await?;
        let resource = served(&a, &snooze, now)?;
        let event = AlertEvent {
            kind: "snoozed",
            id: a.id.clone(),
            patient: a.patient_id.clone(),
            code: a.code.clone(),
            status: a.status.clone(),
            version: a.version,
            resource: resource.clone(),
        };
        let until = instant(snooze.until_us);
        // A snooze's history row says until when in place of the alert's detail.
        let mut h = history_row(&event, &snooze.by, &snooze.note, now);
        h.detail.clone_from(&until);
        tx.alert_history_append(&h).await?;
        let mut row = alert_audit_row(&event, Some(caller));
        row.detail = Some(format!("alert {} snoozed until {until}", a.code));
        mark(&mut row, &access.basis);
        tx.audit(&row).await?;
        tx.commit().await?;
        self.publish(vec![event]);
        Ok(Some(resource))
    }
}

impl Gateway {
    /// The patient's current records (see [`crate::detect::current`]) appended to `entries`;
    /// returns their references.
    async fn current_records(
        &self,
        tx: &mut dyn StoreTx,
        caller: &Caller,
        access: &Access,
        patient_id: &str,
        entries: &mut Vec<Value>,
    ) -> Result<Vec<String>, GatewayError> {
        let snap = snapshot(tx, patient_id, now_us()).await?;
        let mut gids = Vec::new();
        let mut records = Vec::new();
        for item in snap.items.iter().filter(|i| crate::detect::current(i)) {
            if let Some(stored) = tx.get(&item.gid).await?
                && self.record_shown(caller, &stored, access)
            {
                records.push(stored);
            }
        }
        let refs = self.reference_map(tx, &records).await?;
        let base = self.fhir_base();
        for stored in &records {
            entries.push(json!({
                "fullUrl": format!("{base}/{}/{}", stored.rtype, stored.gid),
                "resource": gateway_view(self, stored, &refs)?,
            }));
            gids.push(format!("{}/{}", stored.rtype, stored.gid));
        }
        Ok(gids)
    }
}

/// The alert search of DetectedIssue search parameters.
fn alert_query(
    params: &[(String, String)],
    offset: i64,
    count: i64,
) -> Result<AlertQuery, GatewayError> {
    let mut q = AlertQuery {
        offset,
        count,
        ..AlertQuery::default()
    };
    for (k, v) in params {
        match k.as_str() {
            "patient" => {
                let id = v.strip_prefix("Patient/").unwrap_or(v);
                q.patient_id = Some(id.to_owned());
            }
            "status" => q.status = Some(v.clone()),
            "code" => q.code = Some(v.rsplit('|').next().unwrap_or(v).to_owned()),
            "_count" | "_offset" | "_total" | "_format" => {}
            other => {
                return Err(GatewayError::invalid(
                    Issue::error(
                        "not-supported",
                        format!("DetectedIssue search takes patient, status, code, _count and _offset, not '{other}'"),
                    )
                    .at(other),
                ));
            }
        }
    }
    Ok(q)
}

/// The author and note of an `$acknowledge` Parameters resource.
fn acknowledgement(body: &Value) -> Result<(String, Option<String>), GatewayError> {
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(GatewayError::invalid(
            Issue::error(
                "invalid",
                "$acknowledge takes a Parameters resource with author and note",
            )
            .at("Parameters"),
        ));
    }
    author_and_note(body, "$acknowledge")
}

/// An alert's DetectedIssue as served (with its snooze while it lasts).
fn alert_body(a: &InboxRow) -> Result<Value, GatewayError> {
    served(&a.alert, &a.snooze, now_us())
}
