//! Condition findings: one condition active in one sector and ended in another (not a past
//! episode), and chronic conditions that no active care plan (or order) addresses.

use serde_json::Value;
use std::collections::BTreeSet;

use super::{
    ALERT_CODE_SYSTEM, Context, Finding, Item, Severity, Snapshot, active_condition,
    active_medication, active_plan, chronic_keys, concept_condition_keys, concept_label,
    condition_keys, end_us, ended_condition, item_label, sorted, start_us,
};
use crate::terminology::conditions::same_condition;

type Keys = BTreeSet<(String, String)>;

/// Groups conditions that are the same condition (their widened code sets overlap).
fn clusters(items: Vec<(&Item, Keys)>) -> Vec<(Vec<&Item>, Keys)> {
    let mut out: Vec<(Vec<&Item>, Keys)> = Vec::new();
    for (item, keys) in items {
        let hits: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, (_, k))| same_condition(k, &keys))
            .map(|(n, _)| n)
            .collect();
        let mut merged = (vec![item], keys);
        for n in hits.into_iter().rev() {
            let (items, keys) = out.remove(n);
            merged.0.extend(items);
            merged.1.extend(keys);
        }
        out.push(merged);
    }
    out
}

fn key_label(keys: &Keys) -> String {
    keys.iter()
        .next()
        .map(|(s, c)| format!("{s}|{c}"))
        .unwrap_or_default()
}

/// When a Condition began: `onsetDateTime`, else `onsetPeriod.start`.
fn onset_us(i: &Item) -> Option<i64> {
    start_us(i.body.get("onsetDateTime")).or_else(|| start_us(i.body.pointer("/onsetPeriod/start")))
}

/// When a Condition ended: `abatementDateTime`, else `abatementPeriod.end`.
fn abatement_us(i: &Item) -> Option<i64> {
    end_us(i.body.get("abatementDateTime"))
        .or_else(|| end_us(i.body.pointer("/abatementPeriod/end")))
}

/// An ended condition that abated before the active one's onset is a past episode: a new
/// episode, not a disagreement about the current one.
fn past_episode(ended: &Item, active: &Item) -> bool {
    matches!((abatement_us(ended), onset_us(active)), (Some(e), Some(o)) if e < o)
}

/// condition-status-conflict: the same condition (after code mapping and along the code
/// hierarchy) is active in one sector and resolved, inactive, in remission or refuted in
/// another — unless the ended record abated before the active one's onset (a past episode).
pub fn status_conflict(s: &Snapshot, cx: &Context<'_>) -> Vec<Finding> {
    let relevant: Vec<(&Item, Keys)> = s
        .of_type("Condition")
        .filter(|i| active_condition(i) || ended_condition(i))
        .map(|i| (i, condition_keys(i, cx.mapping)))
        .collect();
    clusters(relevant)
        .into_iter()
        .filter_map(|(items, keys)| {
            let active: Vec<&&Item> = items.iter().filter(|i| active_condition(i)).collect();
            let ended: Vec<&&Item> = items.iter().filter(|i| ended_condition(i)).collect();
            let conflict = active.iter().any(|a| {
                ended
                    .iter()
                    .any(|e| e.sector != a.sector && !past_episode(e, a))
            });
            conflict.then(|| Finding {
                code: (
                    ALERT_CODE_SYSTEM,
                    "condition-status-conflict",
                    "Condition status conflict",
                ),
                severity: Severity::Moderate,
                fingerprint: format!("condition-status-conflict|{}", key_label(&keys)),
                implicated: sorted(items.iter().map(|i| i.gid.clone()).collect()),
                detail: format!(
                    "{} is active in {} but ended in {}. Agree on the condition's status.",
                    concept_label(items[0].body.get("code")),
                    active
                        .iter()
                        .map(|i| item_label(i))
                        .collect::<Vec<_>>()
                        .join(", "),
                    ended
                        .iter()
                        .map(|i| item_label(i))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        })
        .collect()
}

/// unaddressed-condition: an active chronic condition (the chronic list, matched along the code
/// hierarchy after code mapping) that no active CarePlan of any sector addresses — through
/// `addresses`, an activity's `reasonReference` (to it or to the same condition in another
/// sector), or an activity's `reasonCode` with one of its codes — and, when
/// `addressed_by_orders` is on, no active MedicationRequest or ServiceRequest names as its
/// `reasonReference` or `reasonCode`.
pub fn unaddressed(s: &Snapshot, cx: &Context<'_>) -> Vec<Finding> {
    let conditions: Vec<(&Item, Keys)> = s
        .of_type("Condition")
        .filter(|i| active_condition(i))
        .map(|i| (i, condition_keys(i, cx.mapping)))
        .filter(|(_, k)| chronic_keys(k, cx))
        .collect();
    if conditions.is_empty() {
        return Vec::new();
    }
    let addressed = Addressed::by_active_plans(s, cx);
    clusters(conditions)
        .into_iter()
        .filter(|(items, keys)| !addressed.covers(items, keys))
        .map(|(items, keys)| unaddressed_finding(&items, &keys))
        .collect()
}

/// What the active plans address: conditions (gateway ids) and condition codes.
#[derive(Default)]
struct Addressed {
    gids: BTreeSet<String>,
    codes: Keys,
}

impl Addressed {
    fn by_active_plans(s: &Snapshot, cx: &Context<'_>) -> Addressed {
        let mut a = Addressed::default();
        for plan in s.items.iter().filter(|i| active_plan(i)) {
            for r in plan_reason_references(plan) {
                a.gids.extend(s.target(&plan.sector, r));
            }
            for concept in activity_details(plan).flat_map(|d| array(d.get("reasonCode"))) {
                a.codes
                    .extend(concept_condition_keys(Some(concept), cx.mapping));
            }
        }
        if cx.rules.addressed_by_orders {
            for order in s.items.iter().filter(|i| active_order(i)) {
                for r in array(order.body.get("reasonReference"))
                    .filter_map(|r| r.get("reference")?.as_str())
                {
                    a.gids.extend(s.target(&order.sector, r));
                }
                for concept in array(order.body.get("reasonCode")) {
                    a.codes
                        .extend(concept_condition_keys(Some(concept), cx.mapping));
                }
            }
        }
        // A condition addressed in one sector is addressed for the same condition everywhere.
        for gid in &a.gids {
            if let Some(c) = s.by_gid(gid) {
                a.codes.extend(condition_keys(c, cx.mapping));
            }
        }
        a
    }

    /// True when one of the cluster's conditions is addressed, or one of its codes.
    fn covers(&self, items: &[&Item], keys: &Keys) -> bool {
        items.iter().any(|i| self.gids.contains(&i.gid)) || same_condition(keys, &self.codes)
    }
}

/// An order that treats something now: an active medication order or statement, or a
/// ServiceRequest that is `active` or `on-hold`.
fn active_order(i: &Item) -> bool {
    match i.rtype.as_str() {
        "ServiceRequest" => matches!(
            i.body.get("status").and_then(Value::as_str),
            Some("active" | "on-hold")
        ),
        _ => active_medication(i),
    }
}

/// The elements of a JSON array (none when absent or not an array).
fn array(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_array).into_iter().flatten()
}

/// `CarePlan.activity.detail` of each activity that has one.
fn activity_details(plan: &Item) -> impl Iterator<Item = &Value> {
    array(plan.body.get("activity")).filter_map(|a| a.get("detail"))
}

/// The references a plan addresses: `addresses`, then each activity's `reasonReference`.
fn plan_reason_references(plan: &Item) -> Vec<&str> {
    let mut refs: Vec<&str> = array(plan.body.get("addresses"))
        .filter_map(|r| r.get("reference")?.as_str())
        .collect();
    for detail in activity_details(plan) {
        refs.extend(
            array(detail.get("reasonReference")).filter_map(|r| r.get("reference")?.as_str()),
        );
    }
    refs
}

fn unaddressed_finding(items: &[&Item], keys: &Keys) -> Finding {
    Finding {
        code: (
            ALERT_CODE_SYSTEM,
            "unaddressed-condition",
            "Unaddressed condition",
        ),
        severity: Severity::Moderate,
        fingerprint: format!("unaddressed-condition|{}", key_label(keys)),
        implicated: sorted(items.iter().map(|i| i.gid.clone()).collect()),
        detail: format!(
            "{} (recorded by {}) is a chronic condition that no active care plan addresses.",
            concept_label(items[0].body.get("code")),
            items
                .iter()
                .map(|i| item_label(i))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
