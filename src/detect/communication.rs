//! unanswered-communication: a message that asks for a reply and has none in time.

use super::{
    ALERT_CODE_SYSTEM, Context, Finding, Severity, Snapshot, coding_keys, item_label,
    matches_code_list,
};

/// A Communication whose `category` is a configured reply-requested code, not
/// `entered-in-error`/`not-done`, `sent` longer ago than the configured reply time, and no
/// Communication of any sector whose `inResponseTo` points at it (directly, or at the copy the
/// gateway delivered to the replying sector).
pub fn unanswered(s: &Snapshot, cx: &Context<'_>) -> Vec<Finding> {
    let limit_us = i64::try_from(cx.rules.reply_within_hours)
        .unwrap_or(i64::MAX / 3_600_000_000)
        .saturating_mul(3_600_000_000);
    let answered: std::collections::BTreeSet<String> = s
        .of_type("Communication")
        .flat_map(|reply| {
            reply
                .body
                .get("inResponseTo")
                .and_then(|a| a.as_array())
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("reference")?.as_str())
                .filter_map(|r| s.target(&reply.sector, r))
                .collect::<Vec<_>>()
        })
        .collect();
    s.of_type("Communication")
        .filter(|c| {
            !matches!(
                c.body.get("status").and_then(|v| v.as_str()),
                Some("entered-in-error" | "not-done")
            )
        })
        .filter(|c| {
            c.body
                .get("category")
                .and_then(|a| a.as_array())
                .into_iter()
                .flatten()
                .any(|cat| {
                    coding_keys(Some(cat))
                        .iter()
                        .any(|(sys, code)| matches_code_list(&cx.rules.reply_requested, sys, code))
                })
        })
        .filter_map(|c| {
            let sent = c.body.get("sent").and_then(|v| v.as_str())?;
            let (sent_us, _) = crate::fhir::time::period(sent)?;
            (s.now_us.saturating_sub(sent_us) > limit_us && !answered.contains(&c.gid)).then(|| {
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
