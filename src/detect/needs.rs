//! needs-assessment-overdue: the PORT model's systematic needs assessment. A patient with
//! active chronic conditions recorded by two or more sectors should have had a systematic
//! assessment of needs (an FSIII functional assessment, a configured questionnaire, a configured
//! Procedure or Observation) within the configured period.

use serde_json::Value;
use std::collections::BTreeSet;

use super::{
    ALERT_CODE_SYSTEM, Context, Finding, Item, Severity, Snapshot, active_condition, chronic_keys,
    coding_keys, condition_keys, end_us, sorted, start_us,
};

/// The resource types that can record an assessment.
pub const ASSESSMENT_TYPES: [&str; 3] = ["Procedure", "Observation", "QuestionnaireResponse"];

/// The configured period in microseconds (a month is a twelfth of 365 days).
fn period_us(cx: &Context<'_>) -> i64 {
    i64::from(cx.rules.needs_assessment.within_months) * 365 * 86_400_000_000 / 12
}

/// The active chronic conditions, and the sectors recording them.
fn chronic_conditions<'a>(s: &'a Snapshot, cx: &Context<'_>) -> (Vec<&'a Item>, BTreeSet<&'a str>) {
    let items: Vec<&Item> = s
        .of_type("Condition")
        .filter(|i| active_condition(i) && chronic_keys(&condition_keys(i, cx.mapping), cx))
        .collect();
    let sectors = items.iter().map(|i| i.sector.as_str()).collect();
    (items, sectors)
}

/// Whether the rule applies: it is on, and chronic conditions are active in two or more
/// sectors. (The assessments need to be read only then.)
pub fn qualifies(s: &Snapshot, cx: &Context<'_>) -> bool {
    cx.rules.needs_assessment.within_months > 0 && chronic_conditions(s, cx).1.len() >= 2
}

/// When a record is an assessment, its date: a completed Procedure with a configured code
/// (`performedDateTime`, else `performedPeriod.end`/`.start`), a final, amended or corrected
/// Observation with one (`effectiveDateTime`, else `effectivePeriod.end`/`.start`, else
/// `issued`), a completed or amended QuestionnaireResponse of a configured Questionnaire
/// (`authored`; the canonical's `|version` ignored).
pub fn assessed_at(i: &Item, cx: &Context<'_>) -> Option<i64> {
    let n = &cx.rules.needs_assessment;
    let b = &i.body;
    let status = b.get("status").and_then(Value::as_str);
    let coded = || {
        coding_keys(b.get("code"))
            .iter()
            .any(|(s, c)| super::matches_code_list(&n.codes, s, c))
    };
    let at = |dt: &str, period: &str| {
        start_us(b.get(dt))
            .or_else(|| end_us(b.pointer(&format!("/{period}/end"))))
            .or_else(|| start_us(b.pointer(&format!("/{period}/start"))))
    };
    match i.rtype.as_str() {
        "Procedure" if status == Some("completed") && coded() => {
            at("performedDateTime", "performedPeriod")
        }
        "Observation" if matches!(status, Some("final" | "amended" | "corrected")) && coded() => {
            at("effectiveDateTime", "effectivePeriod").or_else(|| start_us(b.get("issued")))
        }
        "QuestionnaireResponse" if matches!(status, Some("completed" | "amended")) => {
            let q = b.get("questionnaire").and_then(Value::as_str)?;
            let q = q.split('|').next().unwrap_or(q);
            n.questionnaires
                .iter()
                .any(|x| x == q)
                .then(|| start_us(b.get("authored")))
                .flatten()
        }
        _ => None,
    }
}

/// The latest assessment of the patient (not in the future), with its record.
pub fn last_assessment<'a>(s: &'a Snapshot, cx: &Context<'_>) -> Option<(i64, &'a Item)> {
    s.items
        .iter()
        .filter_map(|i| Some((assessed_at(i, cx)?, i)))
        .filter(|(t, _)| *t <= s.now_us)
        .max_by_key(|(t, _)| *t)
}

/// needs-assessment-overdue (moderate): the patient [`qualifies`] and the last assessment is
/// older than the configured period, or there is none. One finding per patient.
pub fn overdue(s: &Snapshot, cx: &Context<'_>) -> Vec<Finding> {
    if cx.rules.needs_assessment.within_months == 0 {
        return Vec::new();
    }
    let (conditions, sectors) = chronic_conditions(s, cx);
    if sectors.len() < 2 {
        return Vec::new();
    }
    let last = last_assessment(s, cx);
    if last.is_some_and(|(t, _)| s.now_us - t <= period_us(cx)) {
        return Vec::new();
    }
    let when = match last {
        Some((t, i)) => format!(
            "the last one ({} {}) was on {}",
            i.sector,
            i.rtype,
            &crate::fhir::time::instant(t)[..10]
        ),
        None => "none is recorded".to_owned(),
    };
    vec![Finding {
        code: (
            ALERT_CODE_SYSTEM,
            "needs-assessment-overdue",
            "Needs assessment overdue",
        ),
        severity: Severity::Moderate,
        fingerprint: "needs-assessment-overdue".into(),
        implicated: sorted(conditions.iter().map(|i| i.gid.clone()).collect()),
        detail: format!(
            "{} chronic conditions are active across {}, and no systematic needs assessment is \
             recorded within {} months: {when}. Plan a joint assessment of needs.",
            conditions.len(),
            sectors.into_iter().collect::<Vec<_>>().join(", "),
            cx.rules.needs_assessment.within_months
        ),
    }]
}

/// When the last assessment runs out (the patient qualifying), if in the future.
pub fn next_due(s: &Snapshot, cx: &Context<'_>) -> Option<i64> {
    if !qualifies(s, cx) {
        return None;
    }
    last_assessment(s, cx).map(|(t, _)| t + period_us(cx) + 1)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{item, rules, snapshot};
    use super::super::{Context, detect};
    use crate::terminology::{Mapping, MedKnowledge};
    use serde_json::json;

    fn condition(sector: &str, id: &str, system: &str, code: &str) -> crate::detect::Item {
        item(
            sector,
            "Condition",
            id,
            json!({"clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                   "code": {"coding": [{"system": system, "code": code}]}}),
        )
    }

    #[test]
    fn overdue_without_a_recent_assessment_when_two_sectors_record_chronic_conditions() {
        let (k, m, r) = (MedKnowledge::empty(), Mapping::empty(), rules());
        let cx = Context {
            knowledge: &k,
            mapping: &m,
            rules: &r,
        };
        let gp = condition("gp", "a", "urn:oid:1.2.208.176.2.31", "T90");
        let h = condition("hospital", "b", "urn:oid:1.2.208.176.2.4.12", "DE119");
        let codes = |s: &crate::detect::Snapshot| -> Vec<String> {
            detect(s, &cx)
                .into_iter()
                .filter(|f| f.code.1 == "needs-assessment-overdue")
                .map(|f| f.detail)
                .collect()
        };
        assert!(codes(&snapshot(vec![gp.clone()])).is_empty());
        let found = codes(&snapshot(vec![gp.clone(), h.clone()]));
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("none is recorded"), "{found:?}");
        let assessment = |date: &str| {
            item(
                "municipality",
                "Observation",
                "fs",
                json!({"status": "final", "effectiveDateTime": date,
                       "code": {"coding": [{"system": "urn:oid:1.2.208.176.2.21", "code": "J3.8"}]}}),
            )
        };
        // now is 2027-01-15: a 2026-06 assessment is recent, a 2025 one is not.
        let recent = snapshot(vec![gp.clone(), h.clone(), assessment("2026-06-01")]);
        assert!(codes(&recent).is_empty());
        let old = codes(&snapshot(vec![gp, h, assessment("2025-06-01")]));
        assert!(old[0].contains("2025-06-01"), "{old:?}");
        assert!(super::next_due(&recent, &cx).is_some());
    }
}
