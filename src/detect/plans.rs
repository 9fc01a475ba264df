//! conflicting-plans: two sectors' active care plans disagree about an activity, a medication
//! or a goal.

use serde_json::Value;
use std::collections::BTreeSet;

use super::{
    ALERT_CODE_SYSTEM, Context, Finding, Item, Severity, Snapshot, active_plan, coding_keys, sorted,
};

type Keys = BTreeSet<String>;

/// The keys an activity is recognised by: its `detail.code` codings widened by the
/// equal/equivalent ConceptMap translations, and the active ingredients (`atc:<code>`) of its
/// `detail.productCodeableConcept`.
fn activity_keys(detail: &Value, cx: &Context<'_>) -> Keys {
    let mut keys = BTreeSet::new();
    for (sys, code) in coding_keys(detail.get("code")) {
        for (s2, c2) in cx.mapping.equivalents(&sys, &code) {
            keys.insert(format!("{s2}|{c2}"));
        }
        keys.insert(format!("{sys}|{code}"));
    }
    if let Some(p) = detail.get("productCodeableConcept") {
        for ing in cx.knowledge.ingredients(p) {
            keys.insert(format!("atc:{}", ing.atc));
        }
    }
    keys
}

/// Stopped, cancelled or `doNotPerform`.
fn stops(detail: &Value) -> bool {
    detail.get("doNotPerform").and_then(Value::as_bool) == Some(true)
        || matches!(
            detail.get("status").and_then(Value::as_str),
            Some("stopped" | "cancelled")
        )
}

/// Not started, scheduled, in progress or on hold, and not `doNotPerform`.
fn keeps(detail: &Value) -> bool {
    detail.get("doNotPerform").and_then(Value::as_bool) != Some(true)
        && matches!(
            detail.get("status").and_then(Value::as_str),
            None | Some("not-started" | "scheduled" | "in-progress" | "on-hold")
        )
}

fn details(plan: &Item) -> impl Iterator<Item = &Value> {
    plan.body
        .get("activity")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("detail"))
}

/// A goal target as an interval [low, high] in one unit.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    measure: Keys,
    low: Option<f64>,
    high: Option<f64>,
    unit: Option<String>,
}

fn number(q: &Value) -> Option<f64> {
    let v = q.get("value")?;
    v.as_f64().or_else(|| v.to_string().parse().ok())
}

fn unit(q: &Value) -> Option<String> {
    q.get("code")
        .or_else(|| q.get("unit"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn targets(goal: &Item, cx: &Context<'_>) -> Vec<Target> {
    goal.body
        .get("target")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let mut measure = BTreeSet::new();
            for (sys, code) in coding_keys(t.get("measure")) {
                for (s2, c2) in cx.mapping.equivalents(&sys, &code) {
                    measure.insert(format!("{s2}|{c2}"));
                }
                measure.insert(format!("{sys}|{code}"));
            }
            if measure.is_empty() {
                return None;
            }
            if let Some(r) = t.get("detailRange") {
                let low = r.get("low");
                let high = r.get("high");
                return Some(Target {
                    measure,
                    low: low.and_then(number),
                    high: high.and_then(number),
                    unit: low.and_then(unit).or_else(|| high.and_then(unit)),
                });
            }
            let q = t.get("detailQuantity")?;
            let v = number(q)?;
            let (low, high) = match q.get("comparator").and_then(Value::as_str) {
                Some("<" | "<=") => (None, Some(v)),
                Some(">" | ">=") => (Some(v), None),
                _ => (Some(v), Some(v)),
            };
            Some(Target {
                measure,
                low,
                high,
                unit: unit(q),
            })
        })
        .collect()
}

/// Two targets on the same measure, in the same unit, whose intervals do not overlap.
fn disjoint(a: &Target, b: &Target) -> bool {
    if a.measure.is_disjoint(&b.measure) || a.unit != b.unit {
        return false;
    }
    let below = |x: &Target, y: &Target| matches!((x.high, y.low), (Some(h), Some(l)) if h < l);
    below(a, b) || below(b, a)
}

/// conflicting-plans: two active CarePlans of different sectors where
/// - one stops, cancels or forbids (`doNotPerform`) an activity or medication that the other
///   keeps going (recognised by code after mapping, or by active ingredient); or
/// - their goals (`CarePlan.goal`) set targets on the same measure that cannot both be met
///   (non-overlapping ranges in the same unit).
///
/// One finding per pair of plans and activity (or measure). For each pair of plans (in snapshot
/// order), what the first stops that the second keeps, then the reverse, then their goals.
pub fn conflicting_plans(s: &Snapshot, cx: &Context<'_>) -> Vec<Finding> {
    // What each plan stops, keeps and aims at, worked out once per plan (not once per pair).
    let plans: Vec<PlanFacts<'_>> = s
        .items
        .iter()
        .filter(|i| active_plan(i))
        .map(|p| PlanFacts::of(p, s, cx))
        .collect();
    let mut out = Vec::new();
    for (n, a) in plans.iter().enumerate() {
        for b in plans[n + 1..]
            .iter()
            .filter(|b| b.plan.sector != a.plan.sector)
        {
            out.extend(activity_conflicts(a, b));
            out.extend(activity_conflicts(b, a));
            out.extend(goal_conflicts(a, b));
        }
    }
    out
}

const CONFLICTING_PLANS: (&str, &str, &str) = (
    ALERT_CODE_SYSTEM,
    "conflicting-plans",
    "Conflicting care plans",
);

/// What plan `x` stops, cancels or forbids while plan `y` keeps it going: one finding per
/// stopped activity and kept activity sharing a key (the first shared key names it).
fn activity_conflicts(x: &PlanFacts<'_>, y: &PlanFacts<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    for (stopped, stopped_keys) in &x.stopped {
        for kept in &y.kept {
            if let Some(key) = stopped_keys.intersection(kept).next() {
                out.push(activity_finding(x, y, stopped, key));
            }
        }
    }
    out
}

fn activity_finding(x: &PlanFacts<'_>, y: &PlanFacts<'_>, stopped: &Value, key: &str) -> Finding {
    let pair = sorted(vec![x.plan.gid.clone(), y.plan.gid.clone()]);
    let label = stopped
        .get("code")
        .or_else(|| stopped.get("productCodeableConcept"));
    Finding {
        code: CONFLICTING_PLANS,
        severity: Severity::High,
        fingerprint: format!("conflicting-plans|{key}|{}", pair.join("+")),
        implicated: pair,
        detail: format!(
            "The {} care plan stops or forbids {} while the {} care plan keeps it going.",
            x.plan.sector,
            super::concept_label(label),
            y.plan.sector
        ),
    }
}

/// Goals of plans `a` and `b` whose targets cannot both be met: one finding per pair of goals
/// and pair of disjoint targets.
fn goal_conflicts(a: &PlanFacts<'_>, b: &PlanFacts<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    for ga in &a.goals {
        for gb in &b.goals {
            out.extend(target_conflicts(a, b, ga, gb));
        }
    }
    out
}

fn target_conflicts(
    a: &PlanFacts<'_>,
    b: &PlanFacts<'_>,
    ga: &PlanGoal<'_>,
    gb: &PlanGoal<'_>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for ta in &ga.targets {
        for tb in gb.targets.iter().filter(|tb| disjoint(ta, tb)) {
            out.push(goal_finding(a, b, (ga, ta), (gb, tb)));
        }
    }
    out
}

fn goal_finding(
    a: &PlanFacts<'_>,
    b: &PlanFacts<'_>,
    (ga, ta): (&PlanGoal<'_>, &Target),
    (gb, tb): (&PlanGoal<'_>, &Target),
) -> Finding {
    let key = ta
        .measure
        .intersection(&tb.measure)
        .next()
        .cloned()
        .unwrap_or_default();
    let (goal_a, goal_b) = (&ga.goal.gid, &gb.goal.gid);
    Finding {
        code: CONFLICTING_PLANS,
        severity: Severity::Moderate,
        fingerprint: format!(
            "conflicting-plans|goal|{key}|{}",
            sorted(vec![goal_a.clone(), goal_b.clone()]).join("+")
        ),
        implicated: sorted(vec![
            a.plan.gid.clone(),
            b.plan.gid.clone(),
            goal_a.clone(),
            goal_b.clone(),
        ]),
        detail: format!(
            "The {} and {} care plans set goals on {} that cannot both be met ({} vs {}).",
            a.plan.sector,
            b.plan.sector,
            key,
            range_label(ta),
            range_label(tb)
        ),
    }
}

/// A goal of a plan (`CarePlan.goal`, resolved in the snapshot) with its targets.
struct PlanGoal<'a> {
    goal: &'a Item,
    targets: Vec<Target>,
}

/// One active plan as the pairwise comparison needs it.
struct PlanFacts<'a> {
    plan: &'a Item,
    /// Activities it stops, cancels or forbids, with their keys.
    stopped: Vec<(&'a Value, Keys)>,
    /// The keys of each activity it keeps going.
    kept: Vec<Keys>,
    /// Its goals, in the order the plan lists them.
    goals: Vec<PlanGoal<'a>>,
}

impl<'a> PlanFacts<'a> {
    fn of(plan: &'a Item, s: &'a Snapshot, cx: &Context<'_>) -> Self {
        let goals = plan
            .body
            .get("goal")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("reference")?.as_str())
            .filter_map(|r| s.target(&plan.sector, r))
            .filter_map(|gid| s.by_gid(&gid))
            .map(|goal| PlanGoal {
                goal,
                targets: targets(goal, cx),
            })
            .collect();
        PlanFacts {
            plan,
            stopped: details(plan)
                .filter(|d| stops(d))
                .map(|d| (d, activity_keys(d, cx)))
                .collect(),
            kept: details(plan)
                .filter(|d| keeps(d))
                .map(|d| activity_keys(d, cx))
                .collect(),
            goals,
        }
    }
}

fn range_label(t: &Target) -> String {
    let u = t.unit.as_deref().unwrap_or("");
    match (t.low, t.high) {
        (Some(l), Some(h)) if l == h => format!("{l} {u}"),
        (Some(l), Some(h)) => format!("{l}–{h} {u}"),
        (Some(l), None) => format!("≥ {l} {u}"),
        (None, Some(h)) => format!("≤ {h} {u}"),
        (None, None) => "any".into(),
    }
    .trim()
    .to_owned()
}
