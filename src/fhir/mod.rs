//! The wire layer: strict JSON, OperationOutcome, references and the few typed views the
//! gateway needs. Resources are held as `serde_json::Value` so that everything the gateway does
//! not touch (unknown elements, extensions, `_field` primitive extensions, decimal lexemes)
//! passes through unchanged.

pub mod json;
pub mod outcome;

use serde_json::Value;

/// FHIR media types accepted on requests and used on responses.
pub const FHIR_JSON: &str = "application/fhir+json";

/// The CodeSystem that tags each served resource with the sector it came from.
pub const SECTOR_TAG_SYSTEM: &str = "http://carebridge.example.org/fhir/CodeSystem/sector";

/// `resource.resourceType`, if it is a string.
pub fn resource_type(resource: &Value) -> Option<&str> {
    resource.get("resourceType")?.as_str()
}

/// `resource.id`, if it is a string.
pub fn resource_id(resource: &Value) -> Option<&str> {
    resource.get("id")?.as_str()
}

/// True for a valid FHIR id (`[A-Za-z0-9\-\.]{1,64}`).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Calls `f` with every `reference` string of `Reference` elements anywhere in `value`,
/// nested resources excluded (they are visited on their own), allowing it to rewrite them.
pub fn for_each_reference_mut(value: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match (key.as_str(), child) {
                    ("reference", Value::String(s)) => f(s),
                    ("resource" | "contained" | "outcome", c)
                        if c.get("resourceType").is_some() || is_resource_array(c) => {}
                    (_, c) => for_each_reference_mut(c, f),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                for_each_reference_mut(item, f);
            }
        }
        _ => {}
    }
}

fn is_resource_array(v: &Value) -> bool {
    v.as_array()
        .is_some_and(|a| a.first().is_some_and(|x| x.get("resourceType").is_some()))
}

/// The `identifier` elements (system, value) of a resource that carry both.
pub fn identifiers(resource: &Value) -> Vec<(&str, &str)> {
    let list = match resource.get("identifier") {
        Some(Value::Array(items)) => items.iter().collect::<Vec<_>>(),
        Some(one @ Value::Object(_)) => vec![one],
        _ => Vec::new(),
    };
    list.into_iter()
        .filter_map(|i| Some((i.get("system")?.as_str()?, i.get("value")?.as_str()?)))
        .collect()
}

/// Where a clinical resource names its patient, in the order tried.
const PATIENT_ELEMENTS: [&str; 4] = ["subject", "patient", "beneficiary", "individual"];

/// The reference a resource uses for its patient (`subject`, `patient`, …), if it is to a Patient.
pub fn patient_reference(resource: &Value) -> Option<(&'static str, &str)> {
    for el in PATIENT_ELEMENTS {
        if let Some(r) = resource
            .get(el)
            .and_then(|s| s.get("reference"))
            .and_then(Value::as_str)
            && (r.starts_with("Patient/") || r.contains("/Patient/") || r.starts_with("Patient?"))
        {
            return Some((el, r));
        }
    }
    None
}

/// The period a FHIR date or dateTime denotes: [first µs, last µs].
pub fn period(value: &str) -> Option<(i64, i64)> {
    use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};
    let us = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000) as i64;
    if value.contains('T') {
        let t =
            OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).ok()?;
        return Some((us(t), us(t)));
    }
    let parts: Vec<&str> = value.split('-').collect();
    let year: i32 = parts.first()?.parse().ok()?;
    let (start, end) = match parts.len() {
        1 => (
            Date::from_calendar_date(year, Month::January, 1).ok()?,
            Date::from_calendar_date(year + 1, Month::January, 1).ok()?,
        ),
        2 => {
            let m = Month::try_from(parts[1].parse::<u8>().ok()?).ok()?;
            let s = Date::from_calendar_date(year, m, 1).ok()?;
            let e = if m == Month::December {
                Date::from_calendar_date(year + 1, Month::January, 1).ok()?
            } else {
                Date::from_calendar_date(year, m.next(), 1).ok()?
            };
            (s, e)
        }
        3 => {
            let m = Month::try_from(parts[1].parse::<u8>().ok()?).ok()?;
            let s = Date::from_calendar_date(year, m, parts[2].parse().ok()?).ok()?;
            (s, s.next_day()?)
        }
        _ => return None,
    };
    let at = |d: Date| PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_utc();
    Some((us(at(start)), us(at(end)) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_visited_but_not_inside_nested_resources() {
        let mut v = json!({
            "resourceType": "Bundle",
            "entry": [{"resource": {"resourceType": "Condition", "subject": {"reference": "a"}}}],
            "x": {"reference": "b"},
            "contained": [{"resourceType": "Patient", "link": [{"other": {"reference": "c"}}]}],
            "list": [{"item": {"reference": "d"}}]
        });
        let mut seen = Vec::new();
        for_each_reference_mut(&mut v, &mut |s| seen.push(s.clone()));
        seen.sort();
        assert_eq!(seen, ["b", "d"]);
    }

    #[test]
    fn ids() {
        assert!(is_valid_id("abc-1.2"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id(&"x".repeat(65)));
    }
}
