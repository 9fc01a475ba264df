//! The wire layer: strict JSON, OperationOutcome, references and the few typed views the
//! gateway needs. Resources are held as JSON trees — `serde_json::Value`, or the borrowed
//! [`json::Node`] a Bundle's entries are read as — so that everything the gateway does not touch
//! (unknown elements, extensions, `_field` primitive extensions, decimal lexemes) passes through
//! unchanged; the helpers below read either ([`Tree`]).

pub mod json;
pub mod outcome;
pub mod time;
pub mod tree;

use serde_json::Value;
pub use tree::Tree;

/// FHIR media types accepted on requests and used on responses.
pub const FHIR_JSON: &str = "application/fhir+json";

/// The CodeSystem that tags each served resource with the sector it came from.
pub const SECTOR_TAG_SYSTEM: &str = "http://carebridge.example.org/fhir/CodeSystem/sector";

/// The identifier system of the business identifier the gateway gives every copy it delivers:
/// `<sector>/<Type>/<id>` of the source resource (the exchange writes it; detection reads it).
pub const SOURCE_ID_SYSTEM: &str =
    "http://carebridge.example.org/fhir/NamingSystem/source-resource";

/// The first character FHIR forbids in any string, if `s` holds one: U+0000 and every other
/// character below U+0020 except tab, LF and CR (R4 `string`: `[ \r\n\t\S]+`). Below U+0020
/// every character is one byte in UTF-8 and no byte of a longer character is, so a byte scan
/// finds exactly these.
pub fn forbidden_character(s: &[u8]) -> Option<u8> {
    s.iter()
        .copied()
        .find(|b| *b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r'))
}

/// How [`forbidden_character`]'s find is named in a diagnostic (never the text around it).
pub fn describe_forbidden(b: u8) -> String {
    format!("U+{b:04X}: FHIR allows no control characters below U+0020 other than tab, CR and LF")
}

/// `resource.resourceType`, if it is a string.
pub fn resource_type<T: Tree>(resource: &T) -> Option<&str> {
    resource.member("resourceType")?.text()
}

/// `resource.id`, if it is a string.
pub fn resource_id<T: Tree>(resource: &T) -> Option<&str> {
    resource.member("id")?.text()
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
                    ("resource" | "contained" | "outcome", c) if holds_resources(c) => {}
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

/// [`for_each_reference_mut`] for reading: every `reference` string of a resource, nested
/// resources left out.
pub fn for_each_reference<T: Tree>(value: &T, f: &mut dyn FnMut(&str)) {
    if let Some(items) = value.items() {
        for item in items {
            for_each_reference(item, f);
        }
        return;
    }
    value.any_member(&mut |key, child| {
        match (key, child.text()) {
            ("reference", Some(s)) => f(s),
            ("resource" | "contained" | "outcome", _) if holds_resources(child) => {}
            _ => for_each_reference(child, f),
        }
        false
    });
}

/// Whether any `reference` string member of any object in `value`, nested resources
/// included, satisfies `f`: a cheap test before a walk by type, since every `Reference`
/// element's reference is such a member (and most resources' references are relative).
pub fn any_reference_member<T: Tree>(value: &T, f: &mut dyn FnMut(&str) -> bool) -> bool {
    if let Some(items) = value.items() {
        return items.iter().any(|item| any_reference_member(item, f));
    }
    value.any_member(&mut |key, child| match (key, child.text()) {
        ("reference", Some(s)) => f(s),
        _ => any_reference_member(child, f),
    })
}

/// Whether a member's value is a nested resource, or an array of them (its first item one).
pub(crate) fn holds_resources<T: Tree>(v: &T) -> bool {
    let first = v.items().map_or(Some(v), <[T]>::first);
    first.is_some_and(|x| x.member("resourceType").is_some())
}

/// The `identifier` elements (system, value) of a resource that carry both.
pub fn identifiers<T: Tree>(resource: &T) -> Vec<(&str, &str)> {
    let list = match resource.member("identifier") {
        Some(one) if one.is_object() => std::slice::from_ref(one),
        Some(many) => many.items().unwrap_or_default(),
        None => &[],
    };
    list.iter()
        .filter_map(|i| Some((i.member("system")?.text()?, i.member("value")?.text()?)))
        .collect()
}

/// Where a clinical resource names its patient, in the order tried.
const PATIENT_ELEMENTS: [&str; 4] = ["subject", "patient", "beneficiary", "individual"];

/// The reference a resource uses for its patient (`subject`, `patient`, …), if it is to a Patient.
/// The parameter named `name` of a Parameters resource (its first, when repeated).
pub fn parameter<'a>(parameters: &'a Value, name: &str) -> Option<&'a Value> {
    parameters
        .get("parameter")
        .and_then(Value::as_array)?
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
}

pub fn patient_reference<T: Tree>(resource: &T) -> Option<(&'static str, &str)> {
    patient_reference_through(resource, &|r| r)
}

/// [`patient_reference`] with each reference read through `edit` first (the reference as the
/// gateway will store it).
pub fn patient_reference_through<'r, T: Tree>(
    resource: &'r T,
    edit: &dyn Fn(&'r str) -> &'r str,
) -> Option<(&'static str, &'r str)> {
    for el in PATIENT_ELEMENTS {
        if let Some(r) = resource
            .member(el)
            .and_then(|s| s.member("reference"))
            .and_then(T::text)
            .map(edit)
            && (r.starts_with("Patient/")
                || r.contains("/Patient/")
                || r.starts_with("Patient?")
                || r.contains("/Patient?"))
        {
            return Some((el, r));
        }
    }
    None
}

/// `Type/id` or `Type/id/_history/v` (a relative literal reference).
pub fn parse_relative(reference: &str) -> Option<(&str, &str)> {
    let mut parts = reference.split('/');
    let rtype = parts.next()?;
    let id = parts.next()?;
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) | (Some("_history"), Some(_), None) => {}
        _ => return None,
    }
    (rtype.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && rtype.chars().all(|c| c.is_ascii_alphanumeric())
        && is_valid_id(id))
    .then_some((rtype, id))
}

/// `Type?identifier=system|value` (a conditional reference by identifier).
pub fn parse_conditional(reference: &str) -> Option<(&str, &str, &str)> {
    let (rtype, query) = reference.split_once('?')?;
    let (system, value) = query.strip_prefix("identifier=")?.split_once('|')?;
    (!rtype.is_empty() && !value.is_empty() && !value.contains('&'))
        .then_some((rtype, system, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn any_reference_member_looks_everywhere_nested_resources_included() {
        let v = json!({
            "resourceType": "Observation",
            "subject": {"reference": "Patient/1"},
            "contained": [{"resourceType": "Patient", "link": [{"other": {"reference": "http://x/Patient/2"}}]}],
            "_status": {"extension": [{"valueReference": {"reference": "urn:uuid:3"}}]}
        });
        let absolute = |r: &str| r.contains("://");
        assert!(any_reference_member(&v, &mut { absolute }));
        assert!(any_reference_member(&v, &mut |r: &str| r == "urn:uuid:3"));
        assert!(!any_reference_member(&v, &mut |r: &str| r == "Patient/2"));
        let mut top = v.clone();
        top["contained"] = json!([]);
        assert!(!any_reference_member(&top, &mut { absolute }));
    }

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
