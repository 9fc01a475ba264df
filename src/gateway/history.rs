//! An alert's durable history and its snooze. Every lifecycle change (raised, updated,
//! acknowledged, snoozed, closed, reopened) appends one `alert_history` row in the transaction
//! that makes the change ([`record`]), so the alert detail shows what happened rather than what
//! can be guessed from the current DetectedIssue. `$snooze` hides an open alert from the default
//! inbox until a date, with its author and comment; any change of the alert ends the snooze
//! (the store clears it on every write of the alert), and the date passing ends it by itself.
//! A snooze's history row holds, in place of the alert's detail text, the instant it lasts
//! until.

use serde_json::{Value, json};

use super::alerts::AlertEvent;
use super::relation::mark;
use super::{Gateway, GatewayError};
use crate::access::{Basis, Caller, Request};
use crate::audit::{self, Action, AuditRow, Interaction, Outcome};
use crate::fhir::outcome::Issue;
use crate::fhir::time::{instant, now_us, period};
use crate::store::{AlertRow, HistoryRow, Snooze, StoreError, StoreTx};

/// The extension a served DetectedIssue carries while it is snoozed: `until` (dateTime),
/// `author` and `note` (strings).
pub const SNOOZE_EXTENSION: &str =
    "http://carebridge.example.org/fhir/StructureDefinition/alert-snooze";

/// Appends the history row of an alert change, by `author` (empty: the gateway's detection)
/// with its `note`. A `raised` event of an alert that existed before is a reopening.
pub(crate) async fn record(
    tx: &mut dyn StoreTx,
    e: &AlertEvent,
    author: &str,
    note: &str,
    at_us: i64,
) -> Result<(), StoreError> {
    tx.alert_history_append(&history_row(e, author, note, at_us))
        .await
}

/// The history row of an alert change (see [`record`]); `detail` is the alert's detail text
/// after the change.
pub(crate) fn history_row(e: &AlertEvent, author: &str, note: &str, at_us: i64) -> HistoryRow {
    let kind = match e.kind {
        "raised" if e.version > 1 => "reopened",
        k => k,
    };
    let implicated: Vec<&str> = e
        .resource
        .get("implicated")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("reference")?.as_str())
        .collect();
    HistoryRow {
        alert_id: e.id.clone(),
        seq: 0,
        kind: kind.to_owned(),
        version: e.version,
        at_us,
        author: author.to_owned(),
        note: note.to_owned(),
        detail: e
            .resource
            .get("detail")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        implicated: json!(implicated).to_string(),
    }
}

/// An alert's DetectedIssue as served: the stored body, with the snooze extension while the
/// snooze lasts.
pub(crate) fn served(a: &AlertRow, snooze: &Snooze, now: i64) -> Result<Value, GatewayError> {
    let mut body = a.json()?;
    if snooze.until_us > now {
        let mut parts = vec![
            json!({ "url": "until", "valueDateTime": instant(snooze.until_us) }),
            json!({ "url": "author", "valueString": snooze.by }),
        ];
        if !snooze.note.is_empty() {
            parts.push(json!({ "url": "note", "valueString": snooze.note }));
        }
        body["extension"] = json!([{ "url": SNOOZE_EXTENSION, "extension": parts }]);
    }
    Ok(body)
}

/// What a `$snooze` Parameters resource asks: until when (a `date`, from its first moment in
/// UTC, or a `dateTime`), by whom, and why.
pub(crate) fn snooze_request(body: &Value, now: i64) -> Result<Snooze, GatewayError> {
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(GatewayError::invalid(
            Issue::error(
                "invalid",
                "$snooze takes a Parameters resource with until, author and note",
            )
            .at("Parameters"),
        ));
    }
    let (author, note) = author_and_note(body, "$snooze")?;
    let until = crate::fhir::parameter(body, "until").and_then(|p| {
        p.get("valueDate")
            .or_else(|| p.get("valueDateTime"))
            .and_then(Value::as_str)
    });
    let Some(until) = until else {
        return Err(GatewayError::invalid(
            Issue::error(
                "required",
                "say until when: a parameter 'until' (valueDate or valueDateTime)",
            )
            .at("Parameters.parameter"),
        ));
    };
    match period(until) {
        Some((start, _)) if start > now => Ok(Snooze {
            until_us: start,
            by: author,
            note: note.unwrap_or_default(),
        }),
        Some(_) => Err(GatewayError::invalid(
            Issue::error("value", format!("'until' ({until}) is not in the future"))
                .at("Parameters.parameter.where(name='until')"),
        )),
        None => Err(GatewayError::invalid(
            Issue::error("value", "'until' is not a FHIR date or dateTime")
                .at("Parameters.parameter.where(name='until')"),
        )),
    }
}

/// The `author` (valueString, or valueReference with a display or reference; required) and
/// `note` (valueString) of an alert operation's Parameters.
pub(crate) fn author_and_note(
    body: &Value,
    operation: &str,
) -> Result<(String, Option<String>), GatewayError> {
    let param = |name: &str| crate::fhir::parameter(body, name);
    let author = param("author").and_then(|p| {
        p.get("valueString")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| {
                let r = p.get("valueReference")?;
                r.get("display")
                    .or_else(|| r.get("reference"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
    });
    let Some(author) = author.filter(|a| !a.trim().is_empty()) else {
        return Err(GatewayError::invalid(
            Issue::error(
                "required",
                format!(
                    "name who {}: a parameter 'author' (valueString or valueReference)",
                    if operation == "$snooze" {
                        "snoozes"
                    } else {
                        "acknowledges"
                    }
                ),
            )
            .at("Parameters.parameter"),
        ));
    };
    let note = param("note")
        .and_then(|p| p.get("valueString"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((author, note))
}

impl Gateway {
    /// One alert (its DetectedIssue as served) and its history, or `None`; audited as a read.
    pub async fn alert_with_history(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Option<(Value, Vec<HistoryRow>)>, GatewayError> {
        self.gate(caller, Request::Alerts, Interaction::Read)
            .await?;
        let mut tx = self.store.begin_audited().await?;
        let Some(a) = tx.alert_get(id).await? else {
            return Ok(None);
        };
        let (mut tx, access) = self
            .admit(tx, caller, &a.patient_id, Interaction::Read)
            .await?;
        let snooze = tx.alert_snooze_get(id).await?.unwrap_or_default();
        let history = tx.alert_history(id).await?;
        let mut row = alert_read_row(caller, &a, &access.basis);
        row.detail = Some(format!(
            "alert with its history ({} changes)",
            history.len()
        ));
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(Some((served(&a, &snooze, now_us())?, history)))
    }
}

/// The audit row of a care-team read of one alert: its patient, the DetectedIssue, purpose
/// TREAT and the basis of the access.
pub(super) fn alert_read_row(caller: &Caller, a: &AlertRow, basis: &Basis) -> AuditRow {
    let mut row = audit::row(
        &caller.actor(),
        None,
        Action::Read,
        Interaction::Read,
        Outcome::Success,
    );
    row.patient_id = Some(a.patient_id.clone());
    row.entities = vec![format!("DetectedIssue/{}", a.id)];
    row.purpose = Some("TREAT".into());
    mark(&mut row, basis);
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(until: &str) -> Value {
        json!({ "resourceType": "Parameters", "parameter": [
            { "name": "until", "valueDate": until },
            { "name": "author", "valueString": "Nurse Lassen" },
            { "name": "note", "valueString": "after the visit" } ] })
    }

    #[test]
    fn a_snooze_request_names_a_future_date() {
        let now = period("2026-12-05").unwrap().0;
        let s = snooze_request(&params("2026-12-10"), now).unwrap();
        assert_eq!(s.until_us, period("2026-12-10").unwrap().0);
        assert_eq!(
            (s.by.as_str(), s.note.as_str()),
            ("Nurse Lassen", "after the visit")
        );
        for bad in ["2026-12-01", "2026-12-05", "tomorrow"] {
            let e = snooze_request(&params(bad), now).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
        }
        let no_until = json!({ "resourceType": "Parameters", "parameter": [
            { "name": "author", "valueString": "N" } ] });
        assert_eq!(snooze_request(&no_until, now).unwrap_err().status(), 400);
        assert_eq!(snooze_request(&json!({}), now).unwrap_err().status(), 400);
    }
}
