//! unanswered-communication: a message that asks for a reply and has none in time.

use serde_json::Value;
use std::collections::BTreeSet;

use super::{
    ALERT_CODE_SYSTEM, Context, Finding, Item, Severity, Snapshot, coding_keys, item_label,
    matches_code_list,
};
use crate::fhir::{SOURCE_ID_SYSTEM, identifiers, parse_relative};

/// A Communication that asks for a reply: a configured reply-requested `category`, not
/// `entered-in-error`/`not-done`, with a `sent` time.
fn question<'a>(c: &'a Item, cx: &Context<'_>) -> Option<(&'a str, i64)> {
    if matches!(
        c.body.get("status").and_then(Value::as_str),
        Some("entered-in-error" | "not-done")
    ) {
        return None;
    }
    let asks = c
        .body
        .get("category")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|cat| {
            coding_keys(Some(cat))
                .iter()
                .any(|(sys, code)| matches_code_list(&cx.rules.reply_requested, sys, code))
        });
    if !asks {
        return None;
    }
    let sent = c.body.get("sent").and_then(Value::as_str)?;
    Some((sent, crate::fhir::time::period(sent)?.0))
}

/// The Communications some reply's `inResponseTo` points at (gateway ids): by reference (the
/// replying sector's own record, the copy the gateway delivered to it, or the gateway id), or
/// by identifier (one of the question's business identifiers, or the source-resource identifier
/// `<sector>/Communication/<id>` that every delivered copy carries).
fn answered(s: &Snapshot) -> BTreeSet<String> {
    let comms: Vec<&Item> = s.of_type("Communication").collect();
    let mut out = BTreeSet::new();
    for reply in &comms {
        let targets = reply
            .body
            .get("inResponseTo")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for t in targets {
            if let Some(r) = t.get("reference").and_then(Value::as_str) {
                out.extend(s.target(&reply.sector, r));
                if let Some((_, id)) = parse_relative(r) {
                    out.extend(comms.iter().filter(|q| q.gid == id).map(|q| q.gid.clone()));
                }
            }
            let ident = t.get("identifier");
            let sys = ident.and_then(|i| i.get("system")?.as_str());
            let val = ident.and_then(|i| i.get("value")?.as_str());
            if let (Some(sys), Some(val)) = (sys, val) {
                out.extend(
                    comms
                        .iter()
                        .filter(|q| q.gid != reply.gid && known_as(q, sys, val))
                        .map(|q| q.gid.clone()),
                );
            }
        }
    }
    out
}

/// Whether `q` carries the identifier (system, value), or is the source of copies that do.
fn known_as(q: &Item, system: &str, value: &str) -> bool {
    (system == SOURCE_ID_SYSTEM && value == format!("{}/{}/{}", q.sector, q.rtype, q.rid))
        || identifiers(&q.body)
            .iter()
            .any(|(s, v)| *s == system && *v == value)
}

fn limit_us(cx: &Context<'_>) -> i64 {
    i64::try_from(cx.rules.reply_within_hours)
        .unwrap_or(i64::MAX / 3_600_000_000)
        .saturating_mul(3_600_000_000)
}

/// A Communication that asks for a reply ([`question`]), was `sent` longer ago than the
/// configured reply time, and that no Communication of any sector answers ([`answered`]).
pub fn unanswered(s: &Snapshot, cx: &Context<'_>) -> Vec<Finding> {
    let limit = limit_us(cx);
    let answered = answered(s);
    s.of_type("Communication")
        .filter_map(|c| {
            let (sent, sent_us) = question(c, cx)?;
            (s.now_us.saturating_sub(sent_us) > limit && !answered.contains(&c.gid)).then(|| {
                Finding {
                    code: (
                        ALERT_CODE_SYSTEM,
                        "unanswered-communication",
                        "Unanswered communication",
                    ),
                    severity: Severity::Low,
                    fingerprint: format!("unanswered-communication|{}", c.gid),
                    implicated: vec![c.gid.clone()],
                    detail: format!(
                        "A message from {} sent {sent} asks for a reply and has none after {} hours.",
                        item_label(c),
                        cx.rules.reply_within_hours
                    ),
                }
            })
        })
        .collect()
}

/// The earliest time an unanswered question that is not yet overdue becomes overdue.
pub fn next_due(s: &Snapshot, cx: &Context<'_>) -> Option<i64> {
    let limit = limit_us(cx);
    let answered = answered(s);
    s.of_type("Communication")
        .filter(|c| !answered.contains(&c.gid))
        .filter_map(|c| question(c, cx))
        .map(|(_, sent_us)| sent_us.saturating_add(limit).saturating_add(1))
        .filter(|due| *due > s.now_us)
        .min()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{item, rules, snapshot};
    use super::*;
    use crate::terminology::{Mapping, MedKnowledge};
    use serde_json::json;

    fn ask(sector: &str, id: &str) -> Item {
        item(
            sector,
            "Communication",
            id,
            json!({"status": "completed", "sent": "2026-01-01T10:00:00Z",
                   "identifier": [{"system": "urn:x", "value": "q-1"}],
                   "category": [{"coding": [{"system": "http://carebridge.example.org/fhir/CodeSystem/communication-category", "code": "reply-requested"}]}]}),
        )
    }

    fn reply(sector: &str, to: Value) -> Item {
        item(
            sector,
            "Communication",
            "r",
            json!({"status": "completed", "inResponseTo": [to]}),
        )
    }

    #[test]
    fn replies_by_identifier_or_source_identifier_answer() {
        let (k, m, r) = (MedKnowledge::empty(), Mapping::empty(), rules());
        let cx = Context {
            knowledge: &k,
            mapping: &m,
            rules: &r,
        };
        let q = ask("gp", "q");
        assert_eq!(unanswered(&snapshot(vec![q.clone()]), &cx).len(), 1);
        for to in [
            json!({"identifier": {"system": "urn:x", "value": "q-1"}}),
            json!({"identifier": {"system": SOURCE_ID_SYSTEM, "value": "gp/Communication/q"}}),
            json!({"reference": format!("Communication/{}", q.gid)}),
        ] {
            let s = snapshot(vec![q.clone(), reply("municipality", to.clone())]);
            assert!(unanswered(&s, &cx).is_empty(), "{to}");
        }
        let other = json!({"identifier": {"system": "urn:x", "value": "q-2"}});
        let s = snapshot(vec![q, reply("municipality", other)]);
        assert_eq!(unanswered(&s, &cx).len(), 1);
    }
}
