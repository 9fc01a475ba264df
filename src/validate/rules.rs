//! The rules pass: one walk over a resource that checks both the tightened R4 JSON Schema
//! (compiled into `validate::shape`: JSON types, unknown elements, the primitives' patterns, the
//! schema's enums and required members, arrays never empty) and what the schema cannot say,
//! driven by the R4 StructureDefinitions (`validate::definitions`) — minimum cardinality
//! (required elements, choice elements included), one value per choice element (`onset[x]`),
//! required bindings against their value-set expansions, primitive formats
//! (`validate::primitive`), narrative safety (`validate::narrative`), empty objects (ele-1),
//! the invariants of `validate::invariants`, and the rules on contained resources (dom-2…5).
//! Every problem is reported, each at its FHIRPath-like location. Nested resources are left to
//! their own walk (`validate::Validator::structural`). The walk reads the borrowed tree of
//! `fhir::json` (no owned copy of the document is needed).

use super::bundle_rules;
use super::definitions::{Definitions, Element, Kind, TypeDef};
use super::invariants::{self, Broken, Invariant};
use super::primitive::{self, Primitive};
use super::shape::{Leaf, Prop, Shapes};
use super::{narrative, schema::FhirSchema};
use crate::fhir::json::{Node, Object};
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

/// How deep a walk goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Only what the tightened R4 JSON Schema says (the reference of the differential test).
    Schema,
    /// The schema and every rule of the R4 definitions: what the gateway checks.
    Full,
}

/// What the walk may take as already checked of the tree's strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strings {
    /// The tree is from the strict parser (`fhir::json`), which refuses every string holding a
    /// control character FHIR forbids: the walk does not look for them again.
    Parsed,
    /// The tree may have been built some other way (an owned `Value` made in code): every
    /// string-based primitive is looked at.
    Unchecked,
}

struct Walk<'a, 'n> {
    defs: &'a Definitions,
    shapes: &'a Shapes,
    deep: bool,
    parsed: bool,
    /// The ids a local reference (`#id`) may name: the contained resources of the resource
    /// (of its container, for a contained resource).
    contained: Vec<&'n str>,
    issues: &'a mut Vec<Issue>,
}

/// Walks a resource of type `resource_type` (not its nested resources), adding an issue for
/// each rule it breaks. `container` is the resource whose `contained` holds it, if any (its
/// local references resolve against the container's contained ids).
pub fn check(
    schema: &FhirSchema,
    resource_type: &str,
    value: &Node<'_>,
    container: Option<&Node<'_>>,
    depth: Depth,
    strings: Strings,
    issues: &mut Vec<Issue>,
) {
    let shapes = schema.shapes();
    let (Some(o), Some(map)) = (shapes.resource(resource_type), value.as_object()) else {
        return;
    };
    let mut walk = Walk {
        defs: schema.definitions(),
        shapes,
        deep: depth == Depth::Full,
        parsed: strings == Strings::Parsed,
        contained: contained_ids(container.unwrap_or(value)),
        issues,
    };
    let root = Path::Root(resource_type);
    walk.object(o, map, &root);
    if walk.deep && container.is_none() {
        walk.contained_rules(map, &root);
    }
}

fn contained_ids<'n>(resource: &'n Node<'_>) -> Vec<&'n str> {
    match resource.get("contained") {
        Some(Node::Array(items)) => items
            .iter()
            .filter_map(|r| r.get("id").and_then(Node::as_str))
            .collect(),
        _ => Vec::new(),
    }
}

impl<'n> Walk<'_, 'n> {
    fn issue(&mut self, code: &'static str, message: impl Into<String>, at: String) {
        self.issues.push(Issue::error(code, message).at(at));
    }

    fn object(&mut self, o: u32, map: &'n Object<'n>, path: &Path<'_>) {
        let shapes = self.shapes;
        let Some(shape) = shapes.object(o) else {
            return;
        };
        let td = shape
            .td
            .and_then(|t| self.defs.get(t))
            .filter(|_| self.deep);
        if map.is_empty() {
            if self.deep {
                self.issue(
                    "invariant",
                    "ele-1: an element must have a value or children (an empty object is not \
                     allowed)",
                    path.render(),
                );
            }
            for key in &shape.required {
                let message = format!("missing required element '{key}'");
                self.issue("required", message, format!("{}.{key}", path.render()));
            }
            return;
        }
        let mut choices: Vec<(u16, &str)> = Vec::new();
        let mut seen = 0u64;
        for (key, child) in map.iter() {
            let child_path = Path::Key(path, key);
            let Some(prop) = shape.props.get(key) else {
                if shape.closed {
                    let message = format!("unknown element '{key}'");
                    self.issue("structure", message, child_path.render());
                }
                continue;
            };
            let element = match (td, prop.element) {
                (Some(td), Some(ei)) => td.elements.get(usize::from(ei)),
                _ => None,
            };
            if let (Some(element), Some(ei)) = (element, prop.element) {
                if let Some(bit) = element.required_bit {
                    seen |= bit;
                }
                if element.choice && !prop.ext {
                    if let Some((_, first)) = choices.iter().find(|(e, _)| *e == ei) {
                        let message = format!(
                            "{}[x] may have only one form, found {first}, {key}",
                            element.name
                        );
                        self.issue("structure", message, child_path.render());
                    }
                    choices.push((ei, key));
                }
            }
            self.prop(prop, element, child, &child_path);
        }
        let reported = match td {
            Some(td) => self.required(td, map, seen, path),
            None => 0,
        };
        // The schema's required members; those missing that the definitions' cardinality has
        // just reported (with its wording) are not reported twice.
        for key in &shape.required {
            let said = self.issues.iter().rev().take(reported).any(|i| {
                i.expression
                    .as_deref()
                    .and_then(|e| e.rsplit('.').next())
                    .is_some_and(|last| last == &**key)
            });
            if !said && !map.contains_key(key) {
                let message = format!("missing required element '{key}'");
                self.issue("required", message, format!("{}.{key}", path.render()));
            }
        }
        if let Some(td) = td {
            self.invariants(td, map, path);
        }
    }

    /// A property's value: an array of items or one item, as the schema says.
    fn prop(
        &mut self,
        prop: &Prop,
        element: Option<&Element>,
        value: &'n Node<'n>,
        path: &Path<'_>,
    ) {
        if !prop.array {
            return self.leaf(prop, element, value, path);
        }
        let Node::Array(items) = value else {
            self.issue(
                "structure",
                "wrong JSON type: expected array",
                path.render(),
            );
            return;
        };
        if items.is_empty() {
            self.issue(
                "required",
                "an array must not be empty (omit the element instead)",
                path.render(),
            );
        }
        for (i, item) in items.iter().enumerate() {
            let here = Path::Index(path, i);
            if !item.is_null() {
                self.leaf(prop, element, item, &here);
            } else if !prop.null_items {
                let message = format!("wrong JSON type: expected {}", self.leaf_type(prop.leaf));
                self.issue("structure", message, here.render());
            }
        }
    }

    fn leaf_type(&self, leaf: Leaf) -> &'static str {
        match leaf {
            Leaf::Prim(p) => self
                .shapes
                .prims
                .get(p as usize)
                .map_or("value", |p| p.json.name()),
            Leaf::Object(_) | Leaf::Resource => "object",
            Leaf::Enum(_) | Leaf::Const(_) => "string",
        }
    }

    /// One value against its schema form, then (deep) the rules of its element.
    fn leaf(
        &mut self,
        prop: &Prop,
        element: Option<&Element>,
        value: &'n Node<'n>,
        path: &Path<'_>,
    ) {
        let shapes = self.shapes;
        match prop.leaf {
            Leaf::Prim(p) => {
                if let Some((code, message)) =
                    shapes.prims.get(p as usize).and_then(|p| p.check(value))
                {
                    self.issue(code, message, path.render());
                }
                self.primitive_rules(prop.kind, element, value, path);
            }
            Leaf::Enum(e) => {
                let codes = shapes
                    .enums
                    .get(e as usize)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                if !value
                    .as_str()
                    .is_some_and(|s| codes.iter().any(|c| **c == *s))
                {
                    let list: Vec<&str> = codes.iter().map(|c| &**c).collect();
                    let message = format!("not one of the allowed codes ({})", list.join(", "));
                    self.issue("code-invalid", message, path.render());
                }
                self.primitive_rules(prop.kind, element, value, path);
            }
            Leaf::Const(c) => {
                let expected = shapes.consts.get(c as usize).map_or("", |c| &**c);
                if value.as_str() != Some(expected) {
                    self.issue("value", format!("must be \"{expected}\""), path.render());
                }
            }
            Leaf::Object(o) => {
                let Node::Object(map) = value else {
                    self.issue(
                        "structure",
                        "wrong JSON type: expected object",
                        path.render(),
                    );
                    return;
                };
                self.object(o, map, path);
                if let (Some(vs), Some(Kind::Complex(ti))) =
                    (element.and_then(|e| e.binding), prop.kind)
                {
                    self.coded_binding(vs, ti, map, path);
                }
            }
            Leaf::Resource => self.resource(value, path),
        }
    }

    /// A nested resource as the schema's `ResourceList` (here: an object with a string
    /// `resourceType`); its content is validated against its own type by the caller.
    fn resource(&mut self, value: &Node<'_>, path: &Path<'_>) {
        let Node::Object(map) = value else {
            self.issue(
                "structure",
                "wrong JSON type: expected object",
                path.render(),
            );
            return;
        };
        let at = Path::Key(path, "resourceType");
        match map.get("resourceType") {
            Some(Node::String(_)) => {}
            Some(_) => self.issue("structure", "wrong JSON type: expected string", at.render()),
            None => self.issue(
                "required",
                "missing required element 'resourceType'",
                at.render(),
            ),
        }
    }

    /// A primitive's rules beyond the schema: its format, a narrative, a required binding.
    fn primitive_rules(
        &mut self,
        kind: Option<Kind>,
        element: Option<&Element>,
        value: &Node<'_>,
        path: &Path<'_>,
    ) {
        let Some(element) = element else { return };
        match (kind, value) {
            (Some(Kind::Primitive(Primitive::Xhtml)), Node::String(div)) => {
                if let Some(problem) = narrative::check(div) {
                    self.issue("value", problem, path.render());
                }
            }
            (Some(Kind::Primitive(p)), v) => {
                let problem = if self.parsed {
                    primitive::check_parsed(p, v)
                } else {
                    primitive::check(p, v)
                };
                if let Some(problem) = problem {
                    self.issue("value", problem, path.render());
                } else if let (Some(vs), Node::String(code)) = (element.binding, v) {
                    self.code_binding(vs, code, path);
                }
            }
            _ => {}
        }
    }

    /// Minimum cardinality: `seen` has the bit of each required element met in the object.
    /// Returns how many issues it added.
    fn required(&mut self, td: &TypeDef, map: &Object<'_>, seen: u64, path: &Path<'_>) -> usize {
        let before = self.issues.len();
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
                    .any(|((n, _), x)| map.contains_key(n) || map.contains_key(x)),
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
        self.issues.len() - before
    }

    fn invariants(&mut self, td: &TypeDef, map: &Object<'_>, path: &Path<'_>) {
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
    fn coded_binding(&mut self, vs: u32, ti: u32, map: &Object<'_>, path: &Path<'_>) {
        let defs = self.defs;
        let Some(set) = defs.value_set(vs) else {
            return;
        };
        let codings: Vec<(Option<usize>, &Object<'_>)> = if ti == defs.coding {
            vec![(None, map)]
        } else if ti == defs.codeable_concept {
            let items = map.get("coding").and_then(Node::as_array);
            let objects = items.into_iter().flatten().enumerate();
            objects
                .filter_map(|(i, c)| Some((Some(i), c.as_object()?)))
                .collect()
        } else {
            return;
        };
        let mut from_set = false;
        for (i, coding) in codings {
            let system = coding.get("system").and_then(Node::as_str);
            let Some(codes) = system.and_then(|s| set.systems.get(s)) else {
                continue;
            };
            match coding.get("code").and_then(Node::as_str) {
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
    fn contained_rules(&mut self, map: &Object<'_>, path: &Path<'_>) {
        let Some(Node::Array(items)) = map.get("contained") else {
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
            if let Some(id) = r.get("id").and_then(Node::as_str)
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
fn references_local(value: &Node<'_>, id: &str) -> bool {
    match value {
        Node::String(s) => s
            .strip_prefix('#')
            .is_some_and(|rest| rest == id || rest.is_empty()),
        Node::Array(items) => items.iter().any(|v| references_local(v, id)),
        Node::Object(map) => map.values().any(|v| references_local(v, id)),
        _ => false,
    }
}
