//! Condition findings: one condition active in one sector and ended in another, and chronic
//! conditions that no active care plan addresses.

use std::collections::BTreeSet;

use super::{
    ALERT_CODE_SYSTEM, Context, Finding, Item, Snapshot, active_condition, active_plan,
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
                severity: "moderate",
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
    // What the active plans address: gateway ids and codes.
    let mut addressed_gids = BTreeSet::new();
    let mut addressed_codes: Keys = BTreeSet::new();
    for plan in s.items.iter().filter(|i| active_plan(i)) {
        let mut refs: Vec<&str> = Vec::new();
        if let Some(a) = plan.body.get("addresses").and_then(|a| a.as_array()) {
            refs.extend(a.iter().filter_map(|r| r.get("reference")?.as_str()));
        }
        for act in plan
            .body
            .get("activity")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
        {
            let detail = act.get("detail");
            if let Some(rr) = detail
                .and_then(|d| d.get("reasonReference"))
                .and_then(|a| a.as_array())
            {
                refs.extend(rr.iter().filter_map(|r| r.get("reference")?.as_str()));
            }
            for rc in detail
                .and_then(|d| d.get("reasonCode"))
                .and_then(|a| a.as_array())
                .into_iter()
                .flatten()
            {
                for (sys, code) in coding_keys(Some(rc)) {
                    for e in cx.mapping.equivalents(&sys, &code) {
                        addressed_codes.insert(e);
                    }
                    addressed_codes.insert((sys, code));
                }
            }
        }
        for r in refs {
            if let Some(gid) = s.target(&plan.sector, r) {
                addressed_gids.insert(gid);
            }
        }
    }
    // A condition addressed in one sector is addressed for the same condition everywhere.
    for gid in addressed_gids.clone() {
        if let Some(c) = s.by_gid(&gid) {
            addressed_codes.extend(condition_keys(c, cx.mapping));
        }
    }
    clusters(conditions)
        .into_iter()
        .filter(|(items, keys)| {
            !items.iter().any(|i| addressed_gids.contains(&i.gid))
                && keys.is_disjoint(&addressed_codes)
        })
        .map(|(items, keys)| Finding {
            code: (
                ALERT_CODE_SYSTEM,
                "unaddressed-condition",
                "Unaddressed condition",
            ),
            severity: "moderate",
            fingerprint: format!("unaddressed-condition|{}", key_label(&keys)),
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
        })
        .collect()
}
