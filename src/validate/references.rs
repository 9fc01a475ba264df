//! Every `Reference` element of a resource, found by type: the R4 definitions say which
//! elements are References (choice forms such as `valueReference` of an extension, backbone
//! elements, nested data types, primitive extensions `_field`, contained resources), so no
//! list of paths is kept and nothing that looks like a Reference by its keys is mistaken for one.

use serde_json::Value;

use super::definitions::{Definitions, Kind};

/// `(location, Reference object)` for every Reference element of `resource`, in document
/// order; locations are FHIRPath-like (`Condition.evidence[0].detail[1]`).
pub fn references<'a>(defs: &Definitions, resource: &'a Value) -> Vec<(String, &'a Value)> {
    let mut out = Vec::new();
    let Some(rtype) = resource.get("resourceType").and_then(Value::as_str) else {
        return out;
    };
    if let (Some(ti), Some(reference)) = (defs.index(rtype), defs.index("Reference")) {
        let walk = Walk {
            defs,
            reference,
            root: rtype,
        };
        walk.object(ti, resource, &mut Vec::new(), &mut out);
    }
    out
}

/// One step of the location being walked: a key, and the index when it holds an array. The
/// location is rendered only for a Reference found (most elements are not).
type Step<'a> = (&'a str, Option<usize>);

struct Walk<'d> {
    defs: &'d Definitions,
    reference: u32,
    root: &'d str,
}

impl Walk<'_> {
    fn render(&self, steps: &[Step<'_>]) -> String {
        let mut path = self.root.to_owned();
        for (key, index) in steps {
            path.push('.');
            path.push_str(key);
            if let Some(i) = index {
                path.push('[');
                path.push_str(&i.to_string());
                path.push(']');
            }
        }
        path
    }

    fn object<'a>(
        &self,
        ti: u32,
        value: &'a Value,
        steps: &mut Vec<Step<'a>>,
        out: &mut Vec<(String, &'a Value)>,
    ) {
        let (Some(t), Value::Object(map)) = (self.defs.get(ti), value) else {
            return;
        };
        for (key, child) in map {
            let kind = match key.strip_prefix('_') {
                // A primitive's id and extensions: an Element.
                Some(name) if t.prop(name).is_some() => Kind::Complex(self.defs.element),
                Some(_) => continue,
                None => match t.prop(key) {
                    Some((_, kind)) => kind,
                    None => continue,
                },
            };
            if matches!(kind, Kind::Primitive(_)) {
                continue;
            }
            match child {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        steps.push((key, Some(i)));
                        self.value(kind, item, steps, out);
                        steps.pop();
                    }
                }
                one => {
                    steps.push((key, None));
                    self.value(kind, one, steps, out);
                    steps.pop();
                }
            }
        }
    }

    fn value<'a>(
        &self,
        kind: Kind,
        v: &'a Value,
        steps: &mut Vec<Step<'a>>,
        out: &mut Vec<(String, &'a Value)>,
    ) {
        match kind {
            Kind::Complex(ci) => {
                if ci == self.reference && v.is_object() {
                    out.push((self.render(steps), v));
                }
                // Reference.identifier.assigner is a Reference too.
                self.object(ci, v, steps, out);
            }
            Kind::Resource => {
                if let Some(ti) = v
                    .get("resourceType")
                    .and_then(Value::as_str)
                    .and_then(|t| self.defs.index(t))
                {
                    self.object(ti, v, steps, out);
                }
            }
            Kind::Primitive(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_found_by_type_wherever_they_are() {
        let defs = Definitions::load().unwrap();
        let condition = json!({
            "resourceType": "Condition",
            "subject": {"reference": "Patient/1"},
            "evidence": [{"detail": [{"reference": "Observation/1"}, {"reference": "Patient/2"}]}],
            "extension": [{"url": "u", "valueReference": {"reference": "Patient/3"}},
                          {"url": "v", "valueString": "not a reference"}],
            "_recordedDate": {"extension": [{"url": "w", "valueReference": {"reference": "Patient/4"}}]},
            "note": [{"authorReference": {"reference": "Practitioner/1"}, "text": "x"}],
            "code": {"text": "looks like", "reference": "Patient/5"},
            "contained": [{"resourceType": "Observation", "subject": {"reference": "Patient/6"}}],
            "unknownElement": {"reference": "Patient/7"}
        });
        let found: Vec<(String, &str)> = references(&defs, &condition)
            .into_iter()
            .map(|(p, r)| (p, r["reference"].as_str().unwrap()))
            .collect();
        let want = [
            ("Condition.subject", "Patient/1"),
            ("Condition.evidence[0].detail[0]", "Observation/1"),
            ("Condition.evidence[0].detail[1]", "Patient/2"),
            ("Condition.extension[0].valueReference", "Patient/3"),
            (
                "Condition._recordedDate.extension[0].valueReference",
                "Patient/4",
            ),
            ("Condition.note[0].authorReference", "Practitioner/1"),
            ("Condition.contained[0].subject", "Patient/6"),
        ];
        let mut found_sorted = found.clone();
        found_sorted.sort();
        let mut want: Vec<(String, &str)> =
            want.iter().map(|(p, r)| ((*p).to_owned(), *r)).collect();
        want.sort();
        assert_eq!(found_sorted, want);
    }
}
