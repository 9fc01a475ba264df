//! Validation: structural (the tightened R4 schema plus the rules pass) and then the sector's
//! profile rules. Pure: a value in, every issue out, each with its FHIRPath-like location.

mod bundle_rules;
pub mod definitions;
pub mod invariants;
pub mod narrative;
pub mod primitive;
pub mod profiles;
pub mod references;
pub mod rules;
pub mod schema;

use serde_json::Value;

use crate::fhir::outcome::Issue;
pub use profiles::Profiles;
pub use schema::FhirSchema;

/// The resource types the gateway acts on; their validators are compiled at start-up.
pub const CORE_TYPES: [&str; 15] = [
    "Bundle",
    "Patient",
    "CarePlan",
    "Condition",
    "CareTeam",
    "Communication",
    "MedicationRequest",
    "MedicationStatement",
    "Medication",
    "Goal",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "DetectedIssue",
    "OperationOutcome",
];

/// Structural and profile validation, shared by every request.
pub struct Validator {
    pub schema: FhirSchema,
    pub profiles: Profiles,
}

impl Validator {
    pub fn new(schema: FhirSchema, profiles: Profiles) -> Self {
        Validator { schema, profiles }
    }

    /// Every `Reference` element of a resource with its location, found by type
    /// ([`references::references`]).
    pub fn references<'a>(&self, resource: &'a Value) -> Vec<(String, &'a Value)> {
        references::references(self.schema.definitions(), resource)
    }

    /// Structural validation of a whole document (any resource, nested resources included).
    /// Locations are rooted at the resource type (`Bundle.entry[1].resource.gender`).
    pub fn structural(&self, resource: &Value) -> Vec<Issue> {
        let mut issues = Vec::new();
        self.structural_at(resource, None, None, &mut issues);
        issues
    }

    /// `container` is the resource whose `contained` holds this one, if it is contained.
    fn structural_at(
        &self,
        resource: &Value,
        container: Option<&Value>,
        prefix: Option<&str>,
        issues: &mut Vec<Issue>,
    ) {
        let place = |i: Issue| match prefix {
            Some(p) => i.nested_under(p),
            None => i,
        };
        let Some(obj) = resource.as_object() else {
            issues.push(place(
                Issue::error("structure", "a resource must be a JSON object")
                    .at(prefix.unwrap_or("$this")),
            ));
            return;
        };
        let rtype = match obj.get("resourceType") {
            Some(Value::String(t)) if self.schema.is_resource_type(t) => t.as_str(),
            Some(Value::String(_)) => {
                issues.push(place(
                    Issue::error(
                        "not-supported",
                        "resourceType does not name an R4 resource type",
                    )
                    .at("Resource.resourceType"),
                ));
                return;
            }
            Some(_) => {
                issues.push(place(
                    Issue::error("structure", "resourceType must be a string")
                        .at("Resource.resourceType"),
                ));
                return;
            }
            None => {
                issues.push(place(
                    Issue::error("required", "missing resourceType").at("Resource.resourceType"),
                ));
                return;
            }
        };
        issues.extend(self.schema.check(rtype, resource).into_iter().map(place));
        let mut own = Vec::new();
        rules::check_resource(&self.schema, rtype, resource, container, rtype, &mut own);
        issues.extend(own.into_iter().map(place));
        let base = prefix
            .map(str::to_owned)
            .unwrap_or_else(|| rtype.to_owned());
        for (path, nested) in nested_resources(rtype, obj) {
            let container = path.starts_with("contained[").then_some(resource);
            self.structural_at(nested, container, Some(&format!("{base}.{path}")), issues);
        }
    }

    /// Profile rules of `set` (and `common`) for one resource (not its nested resources).
    pub fn profile(&self, set: Option<&str>, resource: &Value) -> Vec<Issue> {
        match resource.get("resourceType").and_then(Value::as_str) {
            Some(t) => self.profiles.check(set, t, resource),
            None => Vec::new(),
        }
    }
}

/// The nested resources of a resource with their relative locations: `contained`, and for
/// Bundles and Parameters the positions that hold whole resources.
fn nested_resources<'a>(
    rtype: &str,
    obj: &'a serde_json::Map<String, Value>,
) -> Vec<(String, &'a Value)> {
    let mut out = Vec::new();
    if let Some(Value::Array(items)) = obj.get("contained") {
        for (i, r) in items.iter().enumerate() {
            out.push((format!("contained[{i}]"), r));
        }
    }
    match rtype {
        "Bundle" => {
            if let Some(Value::Array(entries)) = obj.get("entry") {
                for (i, e) in entries.iter().enumerate() {
                    if let Some(r) = e.get("resource") {
                        out.push((format!("entry[{i}].resource"), r));
                    }
                    if let Some(r) = e.get("response").and_then(|r| r.get("outcome")) {
                        out.push((format!("entry[{i}].response.outcome"), r));
                    }
                }
            }
        }
        "Parameters" => {
            if let Some(Value::Array(params)) = obj.get("parameter") {
                parameters(params, "parameter", &mut out);
            }
        }
        _ => {}
    }
    out
}

fn parameters<'a>(params: &'a [Value], path: &str, out: &mut Vec<(String, &'a Value)>) {
    for (i, p) in params.iter().enumerate() {
        if let Some(r) = p.get("resource") {
            out.push((format!("{path}[{i}].resource"), r));
        }
        if let Some(Value::Array(parts)) = p.get("part") {
            parameters(parts, &format!("{path}[{i}].part"), out);
        }
    }
}
