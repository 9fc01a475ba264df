//! The official FHIR R4 JSON Schema, tightened, compiled one validator per resource type.
//!
//! The schema arrives at build time from a pinned, checksummed registry package (see
//! `build.rs`). At load time it is tightened where the official file under-checks (object
//! definitions get `type: object`, arrays `minItems: 1`, FHIR integers `type: integer`,
//! `Extension.url` becomes required, primitive arrays may hold `null` beside a `_field`
//! extension), and `ResourceList` (a `oneOf` over all 146 resource types) is replaced by a plain
//! object check: nested resources (`contained`, `Bundle.entry.resource`,
//! `Bundle.entry.response.outcome`, `Parameters.parameter.resource`) are validated by the walker
//! in `validate/mod.rs` against their own type, so each error keeps a precise path and an invalid
//! document costs microseconds instead of evaluating every branch of the `oneOf`.

use jsonschema::{Draft, PatternOptions, Validator};
use serde_json::{Map, Value, json};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use super::definitions::{Definitions, DefinitionsError};
use super::shape::Shapes;
use crate::fhir::outcome::{Issue, PathRef, fhirpath};

/// The schema bytes, obtained and checksummed by `build.rs`.
const SCHEMA_BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fhir.schema.json"));
/// The URI under which the tightened schema is registered for `$ref` resolution.
const BASE: &str = "urn:carebridge:fhir-r4";

/// The tightened R4 schema: resource types, per-type validators (built on first use), and the
/// R4 StructureDefinitions as tables for the rules pass.
pub struct FhirSchema {
    registry: &'static jsonschema::Registry<'static>,
    resource_types: BTreeSet<String>,
    validators: HashMap<String, OnceLock<Result<Arc<Validator>, String>>>,
    definitions: Definitions,
    shapes: Shapes,
}

/// Why the embedded R4 schema could not be loaded (a build that embedded a broken file).
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the embedded FHIR schema is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("the embedded FHIR schema has no {0}")]
    Missing(&'static str),
    #[error("the embedded FHIR schema cannot be registered: {0}")]
    Registry(String),
    #[error(transparent)]
    Definitions(#[from] DefinitionsError),
    #[error("the embedded FHIR schema uses a form the rules pass cannot check: {0}")]
    Shape(String),
}

impl FhirSchema {
    /// Loads and tightens the embedded schema. Compiling a type's validator is deferred to its
    /// first use (each takes tens of milliseconds; all 146 would delay start-up by seconds).
    pub fn load() -> Result<Self, SchemaError> {
        let mut schema: Value = serde_json::from_slice(SCHEMA_BYTES)?;
        let resource_types: BTreeSet<String> = schema["discriminator"]["mapping"]
            .as_object()
            .ok_or(SchemaError::Missing("discriminator mapping"))?
            .keys()
            .cloned()
            .collect();
        let defs = schema["definitions"]
            .as_object_mut()
            .ok_or(SchemaError::Missing("definitions"))?;
        tighten(defs);
        let definitions = Definitions::load()?;
        let shapes = Shapes::compile(defs, &definitions).map_err(SchemaError::Shape)?;
        let doc = json!({
            "$schema": "http://json-schema.org/draft-06/schema#",
            "definitions": Value::Object(std::mem::take(defs)),
        });
        // The registry (and the document it borrows) live for the whole process: every
        // validator resolves its `$ref`s through it. Leaking once at start-up is deliberate.
        let doc: &'static Value = Box::leak(Box::new(doc));
        let registry = jsonschema::Registry::new()
            .draft(Draft::Draft6)
            .add(BASE, doc)
            .and_then(|b| b.prepare())
            .map_err(|e| SchemaError::Registry(e.to_string()))?;
        let registry: &'static jsonschema::Registry<'static> = Box::leak(Box::new(registry));
        let validators = resource_types
            .iter()
            .map(|t| (t.clone(), OnceLock::new()))
            .collect();
        Ok(FhirSchema {
            registry,
            resource_types,
            validators,
            definitions,
            shapes,
        })
    }

    pub fn is_resource_type(&self, name: &str) -> bool {
        self.resource_types.contains(name)
    }

    pub fn resource_types(&self) -> impl Iterator<Item = &str> {
        self.resource_types.iter().map(String::as_str)
    }

    /// True when `property` of `definition` is a repeating element (`Patient.identifier`).
    pub fn repeats(&self, definition: &str, property: &str) -> bool {
        let d = &self.definitions;
        d.index(definition)
            .and_then(|i| d.get(i))
            .and_then(|t| t.prop(property))
            .is_some_and(|(element, _)| element.many)
    }

    /// The R4 StructureDefinitions as rule tables (cardinality, types, required bindings).
    pub fn definitions(&self) -> &Definitions {
        &self.definitions
    }

    /// The schema compiled into the shapes the rules pass checks (`validate::shape`).
    pub fn shapes(&self) -> &Shapes {
        &self.shapes
    }

    fn validator(&self, resource_type: &str) -> Option<Result<Arc<Validator>, String>> {
        let cell = self.validators.get(resource_type)?;
        Some(
            cell.get_or_init(|| {
                let root = json!({ "$ref": format!("{BASE}#/definitions/{resource_type}") });
                jsonschema::options()
                    .with_draft(Draft::Draft6)
                    .with_registry(self.registry)
                    .with_pattern_options(PatternOptions::regex())
                    .should_validate_formats(false)
                    .build(&root)
                    .map(Arc::new)
                    .map_err(|e| format!("cannot compile the schema of {resource_type}: {e}"))
            })
            .clone(),
        )
    }

    /// Validates one resource (not its nested resources) against its type's definition and
    /// returns every issue, each with a FHIRPath-like location rooted at the resource type.
    pub fn check(&self, resource_type: &str, resource: &Value) -> Vec<Issue> {
        let validator = match self.validator(resource_type) {
            Some(Ok(v)) => v,
            Some(Err(e)) => return vec![Issue::error("exception", e).at(resource_type)],
            None => {
                return vec![
                    Issue::error(
                        "not-supported",
                        format!("'{resource_type}' is not an R4 resource type"),
                    )
                    .at(resource_type),
                ];
            }
        };
        if validator.is_valid(resource) {
            return Vec::new();
        }
        let mut issues = Vec::new();
        for err in validator.iter_errors(resource) {
            issues.extend(issues_from_error(resource_type, &err, None));
        }
        issues
    }
}

/// Supplies a rule's own wording for a failed keyword.
pub type Describe<'a> = dyn Fn(&jsonschema::ValidationError<'_>) -> Option<String> + 'a;

/// Converts a `jsonschema` error into OperationOutcome issues. The diagnostics are built from the
/// keyword and the location only: the crate's own message quotes the instance, which may be
/// patient data. `describe` may supply a rule's own wording (profile rules do).
pub fn issues_from_error(
    root: &str,
    err: &jsonschema::ValidationError<'_>,
    describe: Option<&Describe<'_>>,
) -> Vec<Issue> {
    use jsonschema::error::ValidationErrorKind as K;
    let path = error_path(root, err);
    let custom = describe.and_then(|d| d(err));
    match err.kind() {
        K::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|p| {
                Issue::error("structure", format!("unknown element '{p}'"))
                    .at(format!("{path}.{p}"))
            })
            .collect(),
        K::Required { property } => {
            let name = property.as_str().unwrap_or("?");
            vec![
                Issue::error(
                    "required",
                    custom.unwrap_or_else(|| format!("missing required element '{name}'")),
                )
                .at(format!("{path}.{name}")),
            ]
        }
        kind => {
            let (code, diagnostics) = keyword_diagnostics(kind, keyword_definition(err));
            vec![Issue::error(code, custom.unwrap_or(diagnostics)).at(path)]
        }
    }
}

/// The FHIRPath-like location of the failing instance, rooted at the resource type.
fn error_path(root: &str, err: &jsonschema::ValidationError<'_>) -> String {
    let segs: Vec<String> = err
        .instance_path()
        .as_str()
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    fhirpath(
        root,
        segs.iter().map(|s| match s.parse::<usize>() {
            Ok(i) => PathRef::Index(i),
            Err(_) => PathRef::Key(s),
        }),
    )
}

/// The issue code and diagnostics of a failed keyword that reports at the instance itself
/// (everything but `additionalProperties` and `required`, which name a property below it).
/// `type_name` is the FHIR definition whose keyword failed, if known.
fn keyword_diagnostics(
    kind: &jsonschema::error::ValidationErrorKind,
    type_name: Option<String>,
) -> (&'static str, String) {
    use jsonschema::error::ValidationErrorKind as K;
    match kind {
        K::Type { kind } => (
            "structure",
            format!("wrong JSON type: expected {}", type_kind(kind)),
        ),
        K::Pattern { .. } => (
            "value",
            match type_name {
                Some(t) => format!("not a valid FHIR {t}"),
                None => "value does not match the required pattern".into(),
            },
        ),
        K::Enum { options } => (
            "code-invalid",
            format!("not one of the allowed codes ({})", list(options)),
        ),
        K::Constant { expected_value } => ("value", format!("must be {expected_value}")),
        K::MinItems { .. } => (
            "required",
            "an array must not be empty (omit the element instead)".into(),
        ),
        K::MaxItems { limit } => ("structure", format!("at most {limit} items are allowed")),
        K::MinLength { limit } => ("value", format!("must be at least {limit} characters long")),
        K::MaxLength { limit } => ("value", format!("must be at most {limit} characters long")),
        K::Minimum { limit } => ("value", format!("must be at least {limit}")),
        K::Maximum { limit } => ("value", format!("must be at most {limit}")),
        K::Contains => ("invariant", "no item satisfies the rule".into()),
        K::AnyOf { .. } | K::OneOfNotValid { .. } => {
            ("structure", "matches none of the allowed forms".into())
        }
        K::OneOfMultipleValid { .. } => (
            "structure",
            "matches more than one of the allowed forms".into(),
        ),
        K::Not { .. } => ("invariant", "has a form that is not allowed here".into()),
        K::FalseSchema => ("structure", "is not allowed here".into()),
        other => ("invalid", format!("fails the '{}' rule", keyword_of(other))),
    }
}

fn keyword_of(kind: &jsonschema::error::ValidationErrorKind) -> String {
    format!("{kind:?}")
        .split([' ', '{', '('])
        .next()
        .unwrap_or("schema")
        .to_owned()
}

/// The FHIR definition whose keyword failed (`date` for `…/definitions/date/pattern`).
fn keyword_definition(err: &jsonschema::ValidationError<'_>) -> Option<String> {
    let loc = err.absolute_keyword_location()?.to_string();
    let rest = loc.split("/definitions/").last()?;
    let name = rest.split('/').next()?;
    (!name.is_empty() && !loc.ends_with('#')).then(|| name.to_owned())
}

fn type_kind(kind: &jsonschema::error::TypeKind) -> String {
    match kind {
        jsonschema::error::TypeKind::Single(t) => t.to_string(),
        jsonschema::error::TypeKind::Multiple(ts) => ts
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(" or "),
    }
}

fn list(options: &Value) -> String {
    match options.as_array() {
        Some(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect::<Vec<_>>()
            .join(", "),
        None => options.to_string(),
    }
}

/// The definitions whose values are FHIR integers (JSON Schema `integer`, not `number`).
const INTEGER_TYPES: [(&str, Option<i64>); 3] = [
    ("integer", None),
    ("positiveInt", Some(1)),
    ("unsignedInt", Some(0)),
];

/// Applies the tightenings described in the module documentation.
fn tighten(defs: &mut Map<String, Value>) {
    let primitive: BTreeSet<String> = defs
        .iter()
        .filter(|(_, d)| d.get("properties").is_none())
        .map(|(k, _)| k.clone())
        .collect();
    for (name, min) in INTEGER_TYPES {
        if let Some(d) = defs.get_mut(name) {
            d["type"] = json!("integer");
            if let Some(m) = min {
                d["minimum"] = json!(m);
            }
        }
    }
    if let Some(d) = defs.get_mut("xhtml") {
        d["type"] = json!("string");
    }
    defs.insert(
        "ResourceList".into(),
        json!({
            "type": "object",
            "required": ["resourceType"],
            "properties": { "resourceType": { "type": "string" } }
        }),
    );
    for (name, def) in defs.iter_mut() {
        let Some(props) = def.get_mut("properties").and_then(Value::as_object_mut) else {
            continue;
        };
        for (prop, p) in props.iter_mut() {
            let Some(obj) = p.as_object_mut() else {
                continue;
            };
            // The official file inlines the primitive of choice elements (`onsetDateTime` is a
            // bare pattern with `type: number` for integers): point them at the definition so
            // the integer and date checks and the choice detection see their real type.
            if !obj.contains_key("$ref")
                && obj.contains_key("pattern")
                && let Some(target) = primitive_by_suffix(prop, &primitive)
            {
                *p = json!({ "$ref": format!("#/definitions/{target}") });
                continue;
            }
            if obj.get("type").and_then(Value::as_str) != Some("array") {
                continue;
            }
            obj.insert("minItems".into(), json!(1));
            let item_ref = obj
                .get("items")
                .and_then(|i| i.get("$ref"))
                .and_then(Value::as_str)
                .map(|r| r.trim_start_matches("#/definitions/").to_owned());
            let Some(target) = item_ref else { continue };
            // `given: ["a", null]` with `_given: [null, {...}]`: FHIR JSON pads the arrays of a
            // primitive and its extensions with nulls so their positions line up.
            if prop.starts_with('_') || primitive.contains(&target) {
                let r = format!("#/definitions/{target}");
                obj.insert(
                    "items".into(),
                    json!({ "anyOf": [{ "type": "null" }, { "$ref": r }] }),
                );
            }
        }
        if name != "ResourceList" {
            def["type"] = json!("object");
        }
        if name == "Extension" {
            def["required"] = json!(["url"]);
        }
    }
}

/// The primitive type named by a choice element's suffix (`onsetDateTime` → `dateTime`).
fn primitive_by_suffix<'a>(prop: &str, primitives: &'a BTreeSet<String>) -> Option<&'a str> {
    primitives
        .iter()
        .filter(|p| {
            let mut c = p.chars();
            let upper: String = c
                .next()
                .map(|f| f.to_uppercase().chain(c).collect())
                .unwrap_or_default();
            prop.len() > upper.len() && prop.ends_with(&upper)
        })
        .max_by_key(|p| p.len())
        .map(String::as_str)
}
