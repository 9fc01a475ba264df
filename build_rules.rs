//! Compiles the official R4 StructureDefinitions (resources and data types) and value sets into
//! the compact rule tables the validator embeds (`fhir-r4-rules.json`):
//!
//! - `types`: for every resource and complex data type (and every backbone element, keyed by its
//!   path, e.g. `CarePlan.activity`), its elements in snapshot order: JSON name (`value` for
//!   `value[x]`), minimum cardinality, whether it repeats, its types (a backbone element or a
//!   `contentReference` as `@Path`), whether it is a choice, and the index of its required
//!   binding's expansion, if any;
//! - `valuesets`: those expansions, as code system → codes;
//! - `unexpanded`: the required bindings whose value set cannot be expanded from the package
//!   (external code systems such as BCP-13 MIME types, intensional filters): not checked;
//! - `constraints`: the keys of the error-level invariants (FHIRPath constraints) of each type
//!   and element path, so the tests can check the invariants the validator evaluates in code
//!   against the definitions.

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};

const FHIR_TYPE_EXT: &str = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type";

type Expansion = BTreeMap<String, BTreeSet<String>>;

pub fn generate(resources: &[u8], types: &[u8], valuesets: &[u8]) -> Vec<u8> {
    let resources: Value = serde_json::from_slice(resources).expect("profiles-resources.json");
    let types: Value = serde_json::from_slice(types).expect("profiles-types.json");
    let valuesets: Value = serde_json::from_slice(valuesets).expect("valuesets.json");
    let terms = Terminology::new(&valuesets);
    let mut out = Tables::default();
    for bundle in [&types, &resources] {
        for sd in entries(bundle) {
            let specialization = sd["derivation"].as_str() != Some("constraint");
            let kind = sd["kind"].as_str().unwrap_or("");
            if sd["resourceType"] == "StructureDefinition"
                && specialization
                && (kind == "resource" || kind == "complex-type")
            {
                out.add(sd, &terms);
            }
        }
    }
    serde_json::to_vec(&json!({
        "types": out.types,
        "valuesets": out.valuesets.iter().map(|(url, e)| json!({"url": url, "codes": e})).collect::<Vec<_>>(),
        "unexpanded": out.unexpanded,
        "constraints": out.constraints,
    }))
    .expect("serialisable tables")
}

fn entries(bundle: &Value) -> impl Iterator<Item = &Value> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
}

#[derive(Default)]
struct Tables {
    types: BTreeMap<String, Vec<Value>>,
    valuesets: Vec<(String, Expansion)>,
    vs_index: HashMap<String, usize>,
    unexpanded: BTreeSet<String>,
    constraints: BTreeMap<String, BTreeSet<String>>,
}

impl Tables {
    fn add(&mut self, sd: &Value, terms: &Terminology<'_>) {
        let elements = sd["snapshot"]["element"].as_array().expect("a snapshot");
        let paths: BTreeSet<&str> = elements.iter().filter_map(|e| e["path"].as_str()).collect();
        for e in elements {
            let (Some(path), Some(id)) = (e["path"].as_str(), e["id"].as_str()) else {
                continue;
            };
            if id.contains(':') {
                continue;
            }
            self.record_constraints(path, e);
            let Some((parent, name)) = path.rsplit_once('.') else {
                self.types.entry(path.to_owned()).or_default();
                continue;
            };
            let (name, choice) = match name.strip_suffix("[x]") {
                Some(n) => (n, true),
                None => (name, false),
            };
            let below = format!("{path}.");
            let has_children = paths
                .range::<str, _>((
                    std::ops::Bound::Included(below.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .next()
                .is_some_and(|p| p.starts_with(&below));
            let types = element_types(e, path, has_children);
            let vs = self.binding(e, terms);
            let many = e["max"].as_str() != Some("1") && e["max"].as_str() != Some("0");
            let mut rule = json!({
                "n": name,
                "min": e["min"].as_u64().unwrap_or(0),
                "many": many,
                "t": types,
                "choice": choice,
            });
            if let Some(vs) = vs {
                rule["vs"] = json!(vs);
            }
            self.types.entry(parent.to_owned()).or_default().push(rule);
        }
    }

    fn record_constraints(&mut self, path: &str, e: &Value) {
        for c in e["constraint"].as_array().into_iter().flatten() {
            if c["severity"] != "error" {
                continue;
            }
            let Some(key) = c["key"].as_str() else {
                continue;
            };
            self.constraints
                .entry(path.to_owned())
                .or_default()
                .insert(key.to_owned());
        }
    }

    /// The index of the expansion of a required binding, if it can be expanded.
    fn binding(&mut self, e: &Value, terms: &Terminology<'_>) -> Option<usize> {
        let b = &e["binding"];
        if b["strength"] != "required" {
            return None;
        }
        let url = b["valueSet"].as_str()?;
        let url = url.split('|').next().unwrap_or(url).to_owned();
        if let Some(i) = self.vs_index.get(&url) {
            return Some(*i);
        }
        match terms.expand(&url, 0) {
            Some(expansion) if !expansion.is_empty() => {
                self.valuesets.push((url.clone(), expansion));
                self.vs_index.insert(url, self.valuesets.len() - 1);
                Some(self.valuesets.len() - 1)
            }
            _ => {
                self.unexpanded.insert(url);
                None
            }
        }
    }
}

/// An element's type codes: FHIR type names, or `@Path` for a backbone element or a
/// `contentReference`.
fn element_types(e: &Value, path: &str, has_children: bool) -> Vec<String> {
    if let Some(r) = e["contentReference"].as_str() {
        return vec![format!("@{}", r.trim_start_matches('#'))];
    }
    if has_children {
        return vec![format!("@{path}")];
    }
    e["type"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let code = t["code"].as_str()?;
            let Some(system) = code.strip_prefix("http://hl7.org/fhirpath/System.") else {
                return Some(code.to_owned());
            };
            let declared = t["extension"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|x| {
                    (x["url"] == FHIR_TYPE_EXT)
                        .then(|| x["valueUrl"].as_str())
                        .flatten()
                });
            Some(match declared {
                Some(d) => d.to_owned(),
                None => system_type(system).to_owned(),
            })
        })
        .collect()
}

fn system_type(system: &str) -> &'static str {
    match system {
        "Boolean" => "boolean",
        "Integer" => "integer",
        "Decimal" => "decimal",
        "Date" => "date",
        "DateTime" => "dateTime",
        "Time" => "time",
        _ => "string",
    }
}

/// The code systems and value sets of `valuesets.json`.
struct Terminology<'a> {
    systems: HashMap<&'a str, &'a Value>,
    valuesets: HashMap<&'a str, &'a Value>,
}

impl<'a> Terminology<'a> {
    fn new(bundle: &'a Value) -> Self {
        let mut systems = HashMap::new();
        let mut valuesets = HashMap::new();
        for r in entries(bundle) {
            let Some(url) = r["url"].as_str() else {
                continue;
            };
            match r["resourceType"].as_str() {
                Some("CodeSystem") => {
                    systems.insert(url, r);
                }
                Some("ValueSet") => {
                    valuesets.insert(url, r);
                }
                _ => {}
            }
        }
        Terminology { systems, valuesets }
    }

    /// Every code of a value set, by system; `None` when some part cannot be expanded here.
    fn expand(&self, url: &str, depth: usize) -> Option<Expansion> {
        if depth > 8 {
            return None;
        }
        let vs = self.valuesets.get(url)?;
        let compose = vs.get("compose")?;
        let mut out = Expansion::new();
        for inc in compose["include"].as_array()? {
            for (system, codes) in self.include(inc, depth)? {
                out.entry(system).or_default().extend(codes);
            }
        }
        for exc in compose["exclude"].as_array().into_iter().flatten() {
            for (system, codes) in self.include(exc, depth)? {
                if let Some(have) = out.get_mut(&system) {
                    have.retain(|c| !codes.contains(c));
                }
            }
        }
        Some(out)
    }

    fn include(&self, inc: &Value, depth: usize) -> Option<Expansion> {
        if inc.get("filter").is_some() {
            return None;
        }
        let mut from_sets: Option<Expansion> = None;
        for vs in inc["valueSet"].as_array().into_iter().flatten() {
            let url = vs.as_str()?;
            let e = self.expand(url.split('|').next().unwrap_or(url), depth + 1)?;
            from_sets = Some(match from_sets {
                // Several value sets in one include are intersected.
                Some(prev) => intersect(prev, e),
                None => e,
            });
        }
        let Some(system) = inc["system"].as_str() else {
            return from_sets;
        };
        let codes: BTreeSet<String> = match inc["concept"].as_array() {
            Some(concepts) => concepts
                .iter()
                .filter_map(|c| c["code"].as_str().map(str::to_owned))
                .collect(),
            None => {
                let cs = self.systems.get(system)?;
                if cs["content"] != "complete" {
                    return None;
                }
                let mut all = BTreeSet::new();
                flatten(&cs["concept"], &mut all);
                all
            }
        };
        let mut out = Expansion::new();
        out.insert(system.to_owned(), codes);
        Some(match from_sets {
            Some(sets) => intersect(sets, out),
            None => out,
        })
    }
}

fn intersect(a: Expansion, b: Expansion) -> Expansion {
    let mut out = Expansion::new();
    for (system, codes) in a {
        if let Some(other) = b.get(&system) {
            out.insert(system, codes.intersection(other).cloned().collect());
        }
    }
    out
}

fn flatten(concepts: &Value, out: &mut BTreeSet<String>) {
    for c in concepts.as_array().into_iter().flatten() {
        if let Some(code) = c["code"].as_str() {
            out.insert(code.to_owned());
        }
        flatten(&c["concept"], out);
    }
}
