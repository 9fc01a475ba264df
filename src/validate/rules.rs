//! The rules pass: one walk over a resource driven by the R4 StructureDefinitions
//! (`validate::definitions`), checking what the JSON Schema cannot say — minimum cardinality
//! (required elements, choice elements included), one value per choice element (`onset[x]`),
//! required bindings against their value-set expansions, primitive formats
//! (`validate::primitive`), narrative safety (`validate::narrative`), empty objects (ele-1),
//! the invariants of `validate::invariants`, and the rules on contained resources (dom-2…5).
//! Every problem is reported, each at its FHIRPath-like location. Nested resources are left to
//! their own walk (`validate::Validator::structural`).

use serde_json::{Map, Value};

use super::bundle_rules;
use super::definitions::{Definitions, Element, Kind, TypeDef};
use super::invariants::{self, Broken, Invariant};
use super::primitive::{self, Primitive};
use super::{narrative, schema::FhirSchema};
use crate::fhir::outcome::Issue;

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

struct Walk<'a> {
    defs: &'a Definitions,
    /// The ids a local reference (`#id`) may name: the contained resources of the resource
    /// (of its container, for a contained resource).
    contained: Vec<&'a str>,
    issues: &'a mut Vec<Issue>,
}

/// Walks a resource of type `resource_type`, adding an issue for each rule it breaks.
pub fn check(
    schema: &FhirSchema,
    resource_type: &str,
    value: &Value,
    path: &str,
    issues: &mut Vec<Issue>,
) {
    check_resource(schema, resource_type, value, None, path, issues);
}

/// As `check`, for a resource that may sit in a container's `contained` (whose ids its local
/// references resolve against).
pub fn check_resource(
    schema: &FhirSchema,
    resource_type: &str,
    value: &Value,
    container: Option<&Value>,
    path: &str,
    issues: &mut Vec<Issue>,
) {
    let defs = schema.definitions();
    let (Some(ti), Some(map)) = (defs.index(resource_type), value.as_object()) else {
        return;
    };
    let mut walk = Walk {
        defs,
        contained: contained_ids(container.unwrap_or(value)),
        issues,
    };
    let root = Path::Root(path);
    walk.object(ti, map, &root);
    if container.is_none() {
        walk.contained_rules(map, &root);
    }
}

fn contained_ids(resource: &Value) -> Vec<&str> {
    match resource.get("contained") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|r| r.get("id").and_then(Value::as_str))
            .collect(),
        _ => Vec::new(),
    }
}

impl Walk<'_> {
    fn issue(&mut self, code: &'static str, message: impl Into<String>, at: String) {
        self.issues.push(Issue::error(code, message).at(at));
    }

    fn object(&mut self, ti: u32, map: &Map<String, Value>, path: &Path<'_>) {
        let defs = self.defs;
        let Some(td) = defs.get(ti) else { return };
        if map.is_empty() {
            self.issue(
                "invariant",
                "ele-1: an element must have a value or children (an empty object is not allowed)",
                path.render(),
            );
            return;
        }
        let mut choices: Vec<(&Element, &str)> = Vec::new();
        let mut seen = 0u64;
        for (key, child) in map {
            let (name, extension) = match key.strip_prefix('_') {
                Some(n) => (n, true),
                None => (key.as_str(), false),
            };
            let Some((element, kind)) = td.prop(name) else {
                continue; // unknown elements are reported by the schema
            };
            if let Some(bit) = element.required_bit {
                seen |= bit;
            }
            let child_path = Path::Key(path, key);
            if extension {
                self.each(child, &child_path, |w, v, p| {
                    if let Value::Object(m) = v {
                        w.object(defs.element, m, p);
                    }
                });
                continue;
            }
            if element.choice {
                if let Some((_, first)) = choices.iter().find(|(e, _)| std::ptr::eq(*e, element)) {
                    let message = format!(
                        "{}[x] may have only one form, found {first}, {key}",
                        element.name
                    );
                    self.issue("structure", message, child_path.render());
                }
                choices.push((element, key));
            }
            self.each(child, &child_path, |w, v, p| w.value(element, kind, v, p));
        }
        self.required(td, map, seen, path);
        self.invariants(td, map, path);
    }

    /// Calls `f` on the value, or on each item of an array (nulls padding a primitive array
    /// are skipped).
    fn each(
        &mut self,
        value: &Value,
        path: &Path<'_>,
        mut f: impl FnMut(&mut Self, &Value, &Path<'_>),
    ) {
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if !item.is_null() {
                        f(self, item, &Path::Index(path, i));
                    }
                }
            }
            v => f(self, v, path),
        }
    }

    /// Minimum cardinality: `seen` has the bit of each required element met in the object.
    fn required(&mut self, td: &TypeDef, map: &Map<String, Value>, seen: u64, path: &Path<'_>) {
        for &ei in &td.required {
            let Some(element) = td.elements.get(usize::from(ei)) else {
                continue;
            };
            let present = match element.required_bit {
                Some(bit) => seen & bit != 0,
                None => element
                    .forms
                    .iter()
                    .zip(&element.ext_forms)
                    .any(|((n, _), x)| map.contains_key(&**n) || map.contains_key(&**x)),
            };
            if !present {
                let (name, what) = if element.choice {
                    (format!("{}[x]", element.name), "a value for")
                } else {
                    (element.name.to_string(), "the element")
                };
                let message = format!(
                    "missing required element '{name}' ({what} {} is required: minimum \
                     cardinality {})",
                    td.name, element.min
                );
                self.issue("required", message, format!("{}.{name}", path.render()));
            }
        }
    }

    fn invariants(&mut self, td: &TypeDef, map: &Map<String, Value>, path: &Path<'_>) {
        if td.invariants.is_empty() {
            return;
        }
        let mut broken: Vec<Broken> = Vec::new();
        for inv in td.invariants {
            match inv {
                Invariant::Bundle => bundle_rules::check(map, &mut broken),
                _ => invariants::check(*inv, map, &self.contained, &mut broken),
            }
        }
        for b in broken {
            let at = match b.at {
                Some(rel) => format!("{}.{rel}", path.render()),
                None => path.render(),
            };
            self.issue("invariant", format!("{}: {}", b.key, b.message), at);
        }
    }

    fn value(&mut self, element: &Element, kind: Kind, value: &Value, path: &Path<'_>) {
        match (kind, value) {
            (Kind::Primitive(Primitive::Xhtml), Value::String(div)) => {
                if let Some(problem) = narrative::check(div) {
                    self.issue("value", problem, path.render());
                }
            }
            (Kind::Primitive(p), v) => {
                if let Some(problem) = primitive::check(p, v) {
                    self.issue("value", problem, path.render());
                } else if let (Some(vs), Value::String(code)) = (element.binding, v) {
                    self.code_binding(vs, code, path);
                }
            }
            (Kind::Complex(ti), Value::Object(map)) => {
                self.object(ti, map, path);
                if let Some(vs) = element.binding {
                    self.coded_binding(vs, ti, map, path);
                }
            }
            _ => {} // a resource is walked on its own; a wrong JSON type is the schema's
        }
    }

    fn code_binding(&mut self, vs: u32, code: &str, path: &Path<'_>) {
        let Some(set) = self.defs.value_set(vs) else {
            return;
        };
        if !set.codes.contains(code) {
            let message = format!("the code is not in the required value set {}", set.url);
            self.issue("code-invalid", message, path.render());
        }
    }

    /// A Coding, or a CodeableConcept, bound to a required value set: a coding of one of the
    /// set's systems must have one of its codes, and at least one coding must be from the set.
    fn coded_binding(&mut self, vs: u32, ti: u32, map: &Map<String, Value>, path: &Path<'_>) {
        let defs = self.defs;
        let Some(set) = defs.value_set(vs) else {
            return;
        };
        let codings: Vec<(Option<usize>, &Map<String, Value>)> = if ti == defs.coding {
            vec![(None, map)]
        } else if ti == defs.codeable_concept {
            let items = map.get("coding").and_then(Value::as_array);
            let objects = items.into_iter().flatten().enumerate();
            objects
                .filter_map(|(i, c)| Some((Some(i), c.as_object()?)))
                .collect()
        } else {
            return;
        };
        let mut from_set = false;
        for (i, coding) in codings {
            let system = coding.get("system").and_then(Value::as_str);
            let Some(codes) = system.and_then(|s| set.systems.get(s)) else {
                continue;
            };
            match coding.get("code").and_then(Value::as_str) {
                Some(code) if codes.contains(code) => from_set = true,
                _ => {
                    let at = match i {
                        Some(i) => format!("{}.coding[{i}].code", path.render()),
                        None => format!("{}.code", path.render()),
                    };
                    let message = format!("the code is not in the required value set {}", set.url);
                    self.issue("code-invalid", message, at);
                    from_set = true; // reported at the coding itself
                }
            }
        }
        if !from_set {
            let message = format!("no coding is from the required value set {}", set.url);
            self.issue("code-invalid", message, path.render());
        }
    }

    /// dom-2 … dom-5: contained resources hold no contained resources, no versionId,
    /// lastUpdated or security labels, and each is referenced from the resource.
    fn contained_rules(&mut self, map: &Map<String, Value>, path: &Path<'_>) {
        let Some(Value::Array(items)) = map.get("contained") else {
            return;
        };
        let contained_path = Path::Key(path, "contained");
        for (i, r) in items.iter().enumerate() {
            let here = Path::Index(&contained_path, i);
            if r.get("contained").is_some() {
                self.issue(
                    "invariant",
                    "dom-2: a contained resource must not contain resources",
                    here.render(),
                );
            }
            let meta = r.get("meta");
            if meta.is_some_and(|m| m.get("versionId").is_some() || m.get("lastUpdated").is_some())
            {
                self.issue(
                    "invariant",
                    "dom-4: a contained resource must not have a versionId or lastUpdated",
                    here.render(),
                );
            }
            if meta.is_some_and(|m| m.get("security").is_some()) {
                self.issue(
                    "invariant",
                    "dom-5: a contained resource must not have security labels",
                    here.render(),
                );
            }
            if let Some(id) = r.get("id").and_then(Value::as_str)
                && !map.values().any(|v| references_local(v, id))
            {
                self.issue(
                    "invariant",
                    "dom-3: a contained resource must be referenced from the resource (#id)",
                    here.render(),
                );
            }
        }
    }
}

/// True when some string in the resource is `#id` (or `#`, a reference to the container).
fn references_local(value: &Value, id: &str) -> bool {
    match value {
        Value::String(s) => s
            .strip_prefix('#')
            .is_some_and(|rest| rest == id || rest.is_empty()),
        Value::Array(items) => items.iter().any(|v| references_local(v, id)),
        Value::Object(map) => map.values().any(|v| references_local(v, id)),
        _ => false,
    }
}
