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
pub mod shape;

use serde_json::Value;

use crate::fhir::json::{Arena, JsonError, Node, Object, parse_borrowed};
use crate::fhir::outcome::Issue;
pub use profiles::Profiles;
pub use schema::FhirSchema;

/// A document with at least this many nested resources is validated on the pool's threads
/// (below it, starting threads costs more than it saves).
const PARALLEL_FROM: usize = 64;

/// Structural and profile validation, shared by every request.
pub struct Validator {
    pub schema: FhirSchema,
    pub profiles: Profiles,
    /// Threads a large document's nested resources are validated on (1: the caller's only).
    threads: usize,
}

impl Validator {
    /// A validator that uses up to two threads for a large Bundle (the machine's cores, at
    /// most two: the rest serve other requests).
    pub fn new(schema: FhirSchema, profiles: Profiles) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Validator {
            schema,
            profiles,
            threads: cores.clamp(1, 2),
        }
    }

    /// Sets how many threads validate the nested resources of one large document (at least 1).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Every `Reference` element of a resource with its location, found by type
    /// ([`references::references`]).
    pub fn references<'a>(&self, resource: &'a Value) -> Vec<(String, &'a Value)> {
        references::references(self.schema.definitions(), resource)
    }

    /// Structural validation of a whole document (any resource, nested resources included).
    /// Locations are rooted at the resource type (`Bundle.entry[1].resource.gender`).
    pub fn structural(&self, resource: &Value) -> Vec<Issue> {
        let arena = Arena::new();
        self.structural_node(&Node::from_value(resource, &arena))
    }

    /// Parses `bytes` strictly (`fhir::json`, into a tree borrowed from the bytes) and validates
    /// the document: what a request body goes through, without an owned copy of it.
    pub fn structural_bytes(
        &self,
        bytes: &[u8],
        max_depth: usize,
    ) -> Result<Vec<Issue>, JsonError> {
        let arena = Arena::new();
        let node = parse_borrowed(bytes, &arena, max_depth)?;
        Ok(self.structural_at(
            &node,
            None,
            None,
            rules::Depth::Full,
            rules::Strings::Parsed,
        ))
    }

    /// [`Validator::structural_node`] of a tree [`parse_borrowed`] built: its strings were
    /// checked for forbidden characters by the parser and are not searched again.
    pub fn structural_parsed(&self, parsed: &Node<'_>) -> Vec<Issue> {
        let strings = rules::Strings::Parsed;
        self.structural_at(parsed, None, None, rules::Depth::Full, strings)
    }

    /// Structural validation of a parsed document.
    pub fn structural_node(&self, resource: &Node<'_>) -> Vec<Issue> {
        let strings = rules::Strings::Unchecked;
        self.structural_at(resource, None, None, rules::Depth::Full, strings)
    }

    /// Only what the tightened R4 JSON Schema says, through the same walk: the side of the
    /// differential test against the compiled schema (`FhirSchema::check`).
    pub fn schema_level(&self, resource: &Value) -> Vec<Issue> {
        let arena = Arena::new();
        self.structural_at(
            &Node::from_value(resource, &arena),
            None,
            None,
            rules::Depth::Schema,
            rules::Strings::Unchecked,
        )
    }

    /// `container` is the resource whose `contained` holds this one, if it is contained.
    fn structural_at(
        &self,
        resource: &Node<'_>,
        container: Option<&Node<'_>>,
        prefix: Option<&str>,
        depth: rules::Depth,
        strings: rules::Strings,
    ) -> Vec<Issue> {
        let place = |i: Issue| match prefix {
            Some(p) => i.nested_under(p),
            None => i,
        };
        let (rtype, obj) = match self.resource_type(resource) {
            Ok(found) => found,
            Err(Root::NotObject) => {
                let at = prefix.unwrap_or("$this");
                return vec![Issue::error("structure", "a resource must be a JSON object").at(at)];
            }
            Err(Root::Issue(issue)) => return vec![place(issue)],
        };
        let mut own = Vec::new();
        rules::check(
            &self.schema,
            rtype,
            resource,
            container,
            depth,
            strings,
            &mut own,
        );
        let mut issues: Vec<Issue> = own.into_iter().map(place).collect();
        let base = prefix
            .map(str::to_owned)
            .unwrap_or_else(|| rtype.to_owned());
        let nested = nested_resources(rtype, obj);
        let one = |(path, nested): &(String, &Node<'_>)| {
            let container = path.starts_with("contained[").then_some(resource);
            let at = format!("{base}.{path}");
            self.structural_at(nested, container, Some(&at), depth, strings)
        };
        if self.threads < 2 || nested.len() < PARALLEL_FROM {
            issues.extend(nested.iter().flat_map(one));
            return issues;
        }
        // A large Bundle: its entries in contiguous chunks, one per thread, issues kept in
        // document order.
        let chunk = nested.len().div_ceil(self.threads);
        let parts: Vec<Vec<Issue>> = std::thread::scope(|scope| {
            let handles: Vec<_> = nested
                .chunks(chunk)
                .map(|part| scope.spawn(move || part.iter().flat_map(one).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        issues.extend(parts.into_iter().flatten());
        issues
    }

    /// The resource's type and members, or the issue that it has no (known) type.
    fn resource_type<'n>(&self, resource: &'n Node<'n>) -> Result<(&'n str, &'n Object<'n>), Root> {
        let Some(obj) = resource.as_object() else {
            return Err(Root::NotObject);
        };
        match obj.get("resourceType") {
            Some(Node::String(t)) if self.schema.is_resource_type(t) => Ok((t, obj)),
            Some(Node::String(_)) => Err(Root::Issue(
                Issue::error(
                    "not-supported",
                    "resourceType does not name an R4 resource type",
                )
                .at("Resource.resourceType"),
            )),
            Some(_) => Err(Root::Issue(
                Issue::error("structure", "resourceType must be a string")
                    .at("Resource.resourceType"),
            )),
            None => Err(Root::Issue(
                Issue::error("required", "missing resourceType").at("Resource.resourceType"),
            )),
        }
    }

    /// Whether [`Validator::profile`] has a rule for resources of `rtype` under `set`.
    pub fn profile_applies(&self, set: Option<&str>, rtype: &str) -> bool {
        self.profiles.applies(set, rtype)
    }

    /// Profile rules of `set` (and `common`) for one resource (not its nested resources).
    pub fn profile(&self, set: Option<&str>, resource: &Value) -> Vec<Issue> {
        match resource.get("resourceType").and_then(Value::as_str) {
            Some(t) => self.profiles.check(set, t, resource),
            None => Vec::new(),
        }
    }
}

/// Why a document is not a resource of a known type.
enum Root {
    NotObject,
    Issue(Issue),
}

/// The nested resources of a resource with their relative locations: `contained`, and for
/// Bundles and Parameters the positions that hold whole resources.
fn nested_resources<'n>(rtype: &str, obj: &'n Object<'n>) -> Vec<(String, &'n Node<'n>)> {
    let mut out = Vec::new();
    if let Some(Node::Array(items)) = obj.get("contained") {
        for (i, r) in items.iter().enumerate() {
            out.push((format!("contained[{i}]"), r));
        }
    }
    match rtype {
        "Bundle" => {
            if let Some(Node::Array(entries)) = obj.get("entry") {
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
            if let Some(Node::Array(params)) = obj.get("parameter") {
                parameters(params, "parameter", &mut out);
            }
        }
        _ => {}
    }
    out
}

fn parameters<'n>(params: &'n [Node<'n>], path: &str, out: &mut Vec<(String, &'n Node<'n>)>) {
    for (i, p) in params.iter().enumerate() {
        if let Some(r) = p.get("resource") {
            out.push((format!("{path}[{i}].resource"), r));
        }
        if let Some(Node::Array(parts)) = p.get("part") {
            parameters(parts, &format!("{path}[{i}].part"), out);
        }
    }
}
