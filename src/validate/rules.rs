//! Checks no JSON Schema can express, walked with the schema's own type information:
//! calendar-valid dates, one value per choice element (`onset[x]`), and the required bindings
//! of the coded statuses the gateway acts on.

use serde_json::Value;

use super::schema::FhirSchema;
use crate::fhir::outcome::Issue;

const CONDITION_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
const CONDITION_CLINICAL_CODES: [&str; 6] = [
    "active",
    "recurrence",
    "relapse",
    "inactive",
    "remission",
    "resolved",
];
const CONDITION_VERIFICATION: &str = "http://terminology.hl7.org/CodeSystem/condition-ver-status";
const CONDITION_VERIFICATION_CODES: [&str; 6] = [
    "unconfirmed",
    "provisional",
    "differential",
    "confirmed",
    "refuted",
    "entered-in-error",
];

/// Where the walk is, built into a string only when an issue is recorded (most resources have
/// none, and formatting every element's path was most of the walk's cost).
#[derive(Clone, Copy)]
enum Path<'a> {
    Root(&'a str),
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn render(&self) -> String {
        match self {
            Path::Root(r) => (*r).to_owned(),
            Path::Key(parent, key) => format!("{}.{key}", parent.render()),
            Path::Index(parent, i) => format!("{}[{i}]", parent.render()),
        }
    }
}

/// Walks `value` as an instance of `definition`, adding an issue for each rule it breaks.
/// Nested resources (`ResourceList` positions) are skipped: they are checked on their own.
pub fn check(
    schema: &FhirSchema,
    definition: &str,
    value: &Value,
    path: &str,
    issues: &mut Vec<Issue>,
) {
    walk(schema, definition, value, &Path::Root(path), issues);
}

fn walk(
    schema: &FhirSchema,
    definition: &str,
    value: &Value,
    path: &Path<'_>,
    issues: &mut Vec<Issue>,
) {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(schema, definition, item, &Path::Index(path, i), issues);
            }
        }
        Value::Object(map) => {
            if let Some(groups) = schema.choice_groups(definition) {
                for (prefix, members) in groups {
                    let present: Vec<&str> = members
                        .iter()
                        .filter(|m| map.contains_key(*m))
                        .map(String::as_str)
                        .collect();
                    if present.len() > 1 {
                        issues.push(
                            Issue::error(
                                "structure",
                                format!(
                                    "{prefix}[x] may have only one form, found {}",
                                    present.join(", ")
                                ),
                            )
                            .at(Path::Key(path, present[1]).render()),
                        );
                    }
                }
            }
            if definition == "Condition" {
                check_coded(
                    map.get("clinicalStatus"),
                    CONDITION_CLINICAL,
                    &CONDITION_CLINICAL_CODES,
                    &Path::Key(path, "clinicalStatus"),
                    issues,
                );
                check_coded(
                    map.get("verificationStatus"),
                    CONDITION_VERIFICATION,
                    &CONDITION_VERIFICATION_CODES,
                    &Path::Key(path, "verificationStatus"),
                    issues,
                );
            }
            for (key, child) in map {
                if key.starts_with('_') {
                    continue;
                }
                let Some(info) = schema.prop(definition, key) else {
                    continue;
                };
                let child_path = Path::Key(path, key);
                match info.target.as_str() {
                    "date" | "dateTime" | "instant" => {
                        check_dates(child, &info.target, &child_path, issues)
                    }
                    "ResourceList" => {}
                    t if child.is_object() || child.is_array() => {
                        walk(schema, t, child, &child_path, issues)
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

fn check_coded(
    cc: Option<&Value>,
    system: &str,
    codes: &[&str],
    path: &Path<'_>,
    issues: &mut Vec<Issue>,
) {
    let Some(codings) = cc.and_then(|c| c.get("coding")).and_then(Value::as_array) else {
        return;
    };
    for (i, coding) in codings.iter().enumerate() {
        if coding.get("system").and_then(Value::as_str) != Some(system) {
            continue;
        }
        match coding.get("code").and_then(Value::as_str) {
            Some(code) if codes.contains(&code) => {}
            _ => issues.push(
                Issue::error(
                    "code-invalid",
                    format!(
                        "the code is not in the required value set ({})",
                        codes.join(", ")
                    ),
                )
                .at(format!("{}.coding[{i}].code", path.render())),
            ),
        }
    }
}

fn check_dates(value: &Value, kind: &str, path: &Path<'_>, issues: &mut Vec<Issue>) {
    match value {
        Value::String(s) if !calendar_valid(s) => {
            issues.push(
                Issue::error("value", format!("not a valid calendar {kind}")).at(path.render()),
            );
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_dates(item, kind, &Path::Index(path, i), issues);
            }
        }
        _ => {}
    }
}

/// True when the date part names a real day and the time part a real time of day. The format
/// itself has already been checked by the schema pattern; this adds what a regex cannot.
pub fn calendar_valid(s: &str) -> bool {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let year: i64 = match parts.next().and_then(|y| y.parse().ok()) {
        Some(y) => y,
        None => return true, // not a date at all: the pattern check reports it
    };
    if let (Some(m), Some(d)) = (parts.next(), parts.next()) {
        let (Ok(month), Ok(day)) = (m.parse::<u32>(), d.parse::<u32>()) else {
            return true;
        };
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let max = match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        if day == 0 || day > max {
            return false;
        }
    }
    if let Some(t) = time {
        let hms: Vec<&str> = t.get(..8).unwrap_or(t).split(':').collect();
        if let [h, m, sec] = hms.as_slice() {
            let ok = h.parse::<u32>().is_ok_and(|h| h < 24)
                && m.parse::<u32>().is_ok_and(|m| m < 60)
                && sec.parse::<u32>().is_ok_and(|s| s < 60);
            if !ok {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::calendar_valid;

    #[test]
    fn calendar_dates() {
        for ok in [
            "2024",
            "2024-02",
            "2024-02-29",
            "2023-12-31T23:59:59Z",
            "2000-02-29",
        ] {
            assert!(calendar_valid(ok), "{ok}");
        }
        for bad in [
            "2023-02-29",
            "2024-04-31",
            "1900-02-29",
            "2024-01-01T24:00:00Z",
            "2024-01-01T10:61:00Z",
        ] {
            assert!(!calendar_valid(bad), "{bad}");
        }
    }
}
