//! Condition findings: one condition active in one sector and ended in another, and chronic
//! conditions that no active care plan addresses.

use serde_json::Value;
use std::collections::BTreeSet;

use super::{
    ALERT_CODE_SYSTEM, Context, Finding, Item, Severity, Snapshot, active_condition, active_plan,
    coding_keys, concept_label, condition_keys, ended_condition, item_label, matches_code_list,
    sorted,
};

type Keys = BTreeSet<(String, String)>;

/// Groups conditions that are the same condition (their widened code sets overlap).
fn clusters(items: Vec<(&Item, Keys)>) -> Vec<(Vec<&Item>, Keys)> {
    let mut out: Vec<(Vec<&Item>, Keys)> = Vec::new();
    for (item, keys) in items {
        let hits: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, (_, k))| !k.is_disjoint(&keys))
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

/// condition-status-conflict: the same condition (after code mapping) is active in one sector
/// and resolved, inactive, in remission or refuted in another.
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
            let conflict = active
                .iter()
                .any(|a| ended.iter().any(|e| e.sector != a.sector));
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

fn chronic(i: &Item, keys: &Keys, cx: &Context<'_>) -> bool {
    let _ = i;
    keys.iter()
        .any(|(s, c)| matches_code_list(&cx.rules.chronic, s, c))
}

/// unaddressed-condition: an active chronic condition (configured codes, matched after code
/// mapping) that no active CarePlan of any sector addresses — through `addresses`, an
/// activity's `reasonReference` (to it or to the same condition in another sector), or an
/// activity's `reasonCode` with one of its codes.
pub fn unaddressed(s: &Snapshot, cx: &Context<'_>) -> Vec<Finding> {
    let conditions: Vec<(&Item, Keys)> = s
        .of_type("Condition")
        .filter(|i| active_condition(i))
        .map(|i| (i, condition_keys(i, cx.mapping)))
        .filter(|(i, k)| chronic(i, k, cx))
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
                for (sys, code) in coding_keys(Some(concept)) {
                    a.codes.extend(cx.mapping.equivalents(&sys, &code));
                    a.codes.insert((sys, code));
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
        items.iter().any(|i| self.gids.contains(&i.gid)) || !keys.is_disjoint(&self.codes)
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
