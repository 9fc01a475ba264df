//! The patient as the sectors record them: no new alerts for a patient recorded as deceased.

use serde_json::Value;

use super::Snapshot;

/// The sector that records the patient as deceased, if any: a sector Patient with
/// `deceasedBoolean: true` or a `deceasedDateTime` (at or before now; a future date is an
/// error of the record, not a death). The first such sector in the snapshot's order.
pub fn deceased(s: &Snapshot) -> Option<&str> {
    s.of_type("Patient")
        .find(|p| {
            p.body.get("deceasedBoolean").and_then(Value::as_bool) == Some(true)
                || super::start_us(p.body.get("deceasedDateTime")).is_some_and(|t| t <= s.now_us)
        })
        .map(|p| p.sector.as_str())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{item, snapshot};
    use super::*;
    use serde_json::json;

    #[test]
    fn deceased_in_any_sector() {
        let alive = item("gp", "Patient", "p", json!({"deceasedBoolean": false}));
        let dead = item(
            "hospital",
            "Patient",
            "p",
            json!({"deceasedDateTime": "2024-05-01T10:00:00Z"}),
        );
        let future = item(
            "municipality",
            "Patient",
            "p",
            json!({"deceasedDateTime": "2099-05-01"}),
        );
        assert_eq!(deceased(&snapshot(vec![alive.clone(), future])), None);
        assert_eq!(deceased(&snapshot(vec![alive, dead])), Some("hospital"));
    }
}
