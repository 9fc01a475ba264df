//! no-care-coordinator: active plans in two or more sectors and nobody coordinating.

use serde_json::Value;
use std::collections::BTreeSet;

use super::{
    ALERT_CODE_SYSTEM, Context, Finding, Severity, Snapshot, active_plan, active_team, coding_keys,
    matches_code_list, sorted,
};

/// A patient with active CarePlans from two or more sectors, and no participant of any active
/// CareTeam whose role is a configured coordinator role (or whose role text says
/// "coordinator"/"koordinator").
pub fn no_coordinator(s: &Snapshot, cx: &Context<'_>) -> Vec<Finding> {
    let plans: Vec<_> = s.items.iter().filter(|i| active_plan(i)).collect();
    let sectors: BTreeSet<&str> = plans.iter().map(|p| p.sector.as_str()).collect();
    if sectors.len() < 2 {
        return Vec::new();
    }
    let coordinated = s.items.iter().filter(|i| active_team(i)).any(|team| {
        team.body
            .get("participant")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
            .flat_map(|p| {
                p.get("role")
                    .and_then(|r| r.as_array())
                    .into_iter()
                    .flatten()
            })
            .any(|role| coordinator_role(role, &cx.rules.coordinator_roles))
    });
    if coordinated {
        return Vec::new();
    }
    vec![Finding {
        code: (
            ALERT_CODE_SYSTEM,
            "no-care-coordinator",
            "No care coordinator",
        ),
        severity: Severity::Moderate,
        fingerprint: "no-care-coordinator".into(),
        implicated: sorted(plans.iter().map(|p| p.gid.clone()).collect()),
        detail: format!(
            "Active care plans in {} sectors ({}) and no care team member in a coordinator role: agree who coordinates.",
            sectors.len(),
            sectors.into_iter().collect::<Vec<_>>().join(", ")
        ),
    }]
}

/// Whether a CareTeam participant's role (a CodeableConcept) is a coordinator's: one of the
/// configured `coordinator_roles` codes, or a text that says "coordinator"/"koordinator". The
/// console marks the coordinator by the same test.
pub fn coordinator_role(role: &Value, coordinator_roles: &[String]) -> bool {
    coding_keys(Some(role))
        .iter()
        .any(|(sys, code)| matches_code_list(coordinator_roles, sys, code))
        || role.get("text").and_then(Value::as_str).is_some_and(|t| {
            let t = t.to_lowercase();
            t.contains("coordinator") || t.contains("koordinator")
        })
}
