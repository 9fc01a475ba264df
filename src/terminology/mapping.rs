//! Target profiles and code translation (ConceptMaps), driven by `fhir-profiles/`.
//!
//! Two kinds of files, both read once at start-up ([`Mapping::load`]):
//!
//! - `fhir-profiles/conceptmaps/*.json`: FHIR R4 ConceptMap resources, read by the one
//!   ConceptMap reader (`conceptmap.rs`). Each `group[].element[].target[]` is one
//!   translation from (`group.source`, `element.code`) to (`group.target`, `target.code`) with an
//!   `equivalence`. Only `status: active` maps are used.
//! - `fhir-profiles/mapping/<set>.json`: one mapping set per target profile set (the `profile`
//!   key of the receiving sector): which profiles the target's copy of a resource claims, which
//!   code systems the target understands, and which equivalences it accepts (`SetFile`).
//!
//! At delivery, [`Mapping::apply_profile`] replaces `meta.profile` with the target's claims and
//! [`Mapping::translate_codes`] appends translated codings beside the sender's own ones. Nothing
//! the sender wrote is removed or changed (apart from the profile claims), so unknown elements,
//! extensions and `_field` primitive extensions pass through.
//!
//! Lookups are hash maps built at load time: (system, code) to the list of translations,
//! sorted by how close each is (equal first), and set name to policy.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use super::conceptmap::{Flavour, MapGroup, Reader};
use super::conditions::{self, ConditionTerms};
use super::de::{Uri, checked_string, entries, some, typed};
use super::equivalence::{Accepted, Equivalence};
pub use super::files::MappingError;
use super::files::{MAX_DEPTH, error, is_uri, json_files, read_object, resource_type};

/// The equivalences a mapping set accepts when it does not say.
pub const DEFAULT_EQUIVALENCE: [&str; 4] = ["equal", "equivalent", "wider", "subsumes"];

/// How `conceptmaps/` words the fixes of the ConceptMap reader.
static CONCEPT_MAPS: Flavour = Flavour {
    what: "ConceptMap",
    source_fix: "name the source code system by its canonical URI (e.g. urn:oid:1.2.208.176.2.31)",
    target_fix: "name the target code system by its canonical URI (e.g. http://snomed.info/sct)",
    unmapped: "carebridge translates only the codes listed",
    conditional: |key| {
        format!(
            "carebridge would apply the translation unconditionally; remove {key} or the target"
        )
    },
    no_code_fix: "give the target code, or use equivalence unmatched for a code with no target",
    source_code: |_, code| code.to_owned(),
};

/// One translation target of a source (system, code).
#[derive(Debug)]
struct Translation {
    system: String,
    code: String,
    display: Option<String>,
    equivalence: Equivalence,
}

/// Source system, then source code, to its translations (best first).
type Translations = HashMap<String, HashMap<String, Vec<Translation>>>;

/// What one target profile set asks for.
#[derive(Debug)]
struct TargetSet {
    /// Resource type to the canonical URLs its `meta.profile` claims.
    profiles: HashMap<String, Vec<String>>,
    code_systems: HashSet<String>,
    equivalence: HashSet<Equivalence>,
    /// Add no translation into a system the CodeableConcept already has a coding of (profiles
    /// such as DK-core Condition allow one coding per system).
    one_per_system: bool,
}

#[derive(Debug, Default)]
struct Inner {
    translations: Translations,
    sets: HashMap<String, TargetSet>,
    conditions: ConditionTerms,
}

/// The loaded ConceptMaps and mapping sets. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    inner: Arc<Inner>,
}

/// What [`Mapping::translate_codes`] did to one resource.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CodeReport {
    /// Codings added.
    pub translated: usize,
    /// Translations into one of the target's systems that its equivalence policy refused.
    pub not_accepted: usize,
}

impl Mapping {
    /// No ConceptMaps and no sets: every call is a no-op.
    pub fn empty() -> Mapping {
        Mapping::default()
    }

    /// Reads `<dir>/conceptmaps/*.json` and `<dir>/mapping/*.json` (a missing folder means none).
    pub fn load(profiles_dir: &Path) -> Result<Mapping, MappingError> {
        let (translations, maps) = load_concept_maps(&profiles_dir.join("conceptmaps"))?;
        let sets = load_sets(&profiles_dir.join("mapping"))?;
        let conditions = ConditionTerms::load(profiles_dir)?;
        let count: usize = translations
            .values()
            .flat_map(|m| m.values())
            .map(Vec::len)
            .sum();
        tracing::info!(
            concept_maps = maps,
            translations = count,
            sets = sets.len(),
            "code mappings loaded"
        );
        Ok(Mapping {
            inner: Arc::new(Inner {
                translations,
                sets,
                conditions,
            }),
        })
    }
    /// The codes a ConceptMap says mean the same as (system, code): targets with equivalence
    /// `equal` or `equivalent` (one step; not chained). Used to recognise one condition across
    /// code systems.
    pub fn equivalents(&self, system: &str, code: &str) -> Vec<(String, String)> {
        self.inner
            .translations
            .get(system)
            .and_then(|codes| codes.get(code))
            .map(|ts| {
                ts.iter()
                    .filter(|t| {
                        matches!(t.equivalence, Equivalence::Equal | Equivalence::Equivalent)
                    })
                    .map(|t| (t.system.clone(), t.code.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The keys that recognise one condition coded as (system, code), each in its canonical
    /// form ([`conditions::canonical`]: ICD-10 as SKS-D): the code itself, its `equal` and
    /// `equivalent` translations, and its `wider`/`narrower` translations where the broader
    /// concept names one disease (`fhir-profiles/conditions/single-disease-concepts.json`).
    /// One step; not chained.
    pub fn condition_keys(&self, system: &str, code: &str) -> Vec<conditions::Key> {
        let mut out = vec![conditions::canonical(system, code)];
        let (ks, kc) = &out[0];
        let (ks, kc) = (ks.clone(), kc.clone());
        let ts = self
            .inner
            .translations
            .get(system)
            .and_then(|codes| codes.get(code))
            .into_iter()
            .chain(
                // An ICD-10 code is also translated as its SKS-D form.
                (ks != system)
                    .then(|| self.inner.translations.get(&ks)?.get(&kc))
                    .flatten(),
            )
            .flatten();
        let single = |s: &str, c: &str| self.inner.conditions.single_disease(s, c);
        for t in ts {
            let safe = match t.equivalence {
                Equivalence::Equal | Equivalence::Equivalent => true,
                // The target is broader than the source.
                Equivalence::Wider | Equivalence::Subsumes => single(&t.system, &t.code),
                // The source is broader than the target.
                Equivalence::Narrower | Equivalence::Specializes => single(&ks, &kc),
                _ => false,
            };
            if safe {
                out.push(conditions::canonical(&t.system, &t.code));
            }
        }
        out
    }

    /// The default chronic list (`fhir-profiles/conditions/chronic-conditions.json`), as
    /// `system|code` entries.
    pub fn chronic_default(&self) -> &conditions::CodeList {
        self.inner.conditions.chronic()
    }

    pub fn has_set(&self, set: &str) -> bool {
        self.inner.sets.contains_key(set)
    }

    /// The mapping sets, sorted by name.
    pub fn sets(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.sets.keys().cloned().collect();
        names.sort();
        names
    }

    /// Sets meta.profile of `resource` to the target set's profiles for its type (replacing the
    /// source's profile claims, and their `_profile` extensions; nothing else in meta changes);
    /// no-op when the set names none.
    pub fn apply_profile(&self, set: Option<&str>, resource: &mut Value) {
        let Some(target) = set.and_then(|s| self.inner.sets.get(s)) else {
            return;
        };
        let Some(obj) = resource.as_object_mut() else {
            return;
        };
        let Some(profiles) = obj
            .get("resourceType")
            .and_then(Value::as_str)
            .and_then(|t| target.profiles.get(t))
        else {
            return;
        };
        let claims = Value::Array(profiles.iter().cloned().map(Value::String).collect());
        match obj.get_mut("meta") {
            Some(Value::Object(meta)) => {
                meta.shift_remove("_profile");
                if let Some(profile) = meta.get_mut("profile") {
                    *profile = claims;
                } else {
                    // Where FHIR's JSON puts it: before security and tag.
                    let at = meta
                        .keys()
                        .position(|k| k == "security" || k == "tag")
                        .unwrap_or(meta.len());
                    meta.shift_insert(at, "profile".to_owned(), claims);
                }
            }
            // A non-object meta is not FHIR; leave the document as it is.
            Some(_) => {}
            None => {
                let mut meta = Map::new();
                meta.insert("profile".to_owned(), claims);
                let at = ["id", "resourceType"]
                    .iter()
                    .find_map(|k| obj.keys().position(|x| x == k))
                    .map_or(0, |i| i + 1);
                obj.shift_insert(at, "meta".to_owned(), Value::Object(meta));
            }
        }
    }

    /// Walks every `coding` array in the resource (at any depth, including contained resources
    /// and extensions) and, for each coding whose (system, code) a ConceptMap translates into one
    /// of the set's codeSystems with an accepted equivalence, appends a Coding {system, code,
    /// display} beside it in the same array unless an equal (system, code) is already there. The
    /// original coding is never removed or changed. Translations are not chained.
    pub fn translate_codes(&self, set: Option<&str>, resource: &mut Value) -> CodeReport {
        let mut report = CodeReport::default();
        let Some(target) = set.and_then(|s| self.inner.sets.get(s)) else {
            return report;
        };
        if target.code_systems.is_empty() || self.inner.translations.is_empty() {
            return report;
        }
        self.walk(target, resource, &mut report, 0);
        report
    }

    fn walk(&self, target: &TargetSet, value: &mut Value, report: &mut CodeReport, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    if key == "coding"
                        && let Value::Array(items) = child
                    {
                        self.translate_array(target, items, report);
                    }
                    self.walk(target, child, report, depth + 1);
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.walk(target, item, report, depth + 1);
                }
            }
            _ => {}
        }
    }

    fn translate_array(&self, target: &TargetSet, items: &mut Vec<Value>, report: &mut CodeReport) {
        let mut added: Vec<Value> = Vec::new();
        for item in items.iter() {
            let Some(coding) = item.as_object() else {
                continue;
            };
            let (Some(system), Some(code)) = (
                coding.get("system").and_then(Value::as_str),
                coding.get("code").and_then(Value::as_str),
            ) else {
                continue;
            };
            let Some(list) = self
                .inner
                .translations
                .get(system)
                .and_then(|codes| codes.get(code))
            else {
                continue;
            };
            for t in list {
                if !t.equivalence.is_translation() || !target.code_systems.contains(&t.system) {
                    continue;
                }
                if !target.equivalence.contains(&t.equivalence) {
                    report.not_accepted += 1;
                    continue;
                }
                let present = |s: &str, c: Option<&str>| {
                    items.iter().chain(added.iter()).any(|v| {
                        v.get("system").and_then(Value::as_str) == Some(s)
                            && (c.is_none() || v.get("code").and_then(Value::as_str) == c)
                    })
                };
                if present(&t.system, Some(&t.code))
                    || (target.one_per_system && present(&t.system, None))
                {
                    continue;
                }
                let mut coding = Map::new();
                coding.insert("system".to_owned(), Value::String(t.system.clone()));
                coding.insert("code".to_owned(), Value::String(t.code.clone()));
                if let Some(d) = &t.display {
                    coding.insert("display".to_owned(), Value::String(d.clone()));
                }
                added.push(Value::Object(coding));
                report.translated += 1;
            }
        }
        items.extend(added);
    }
}

/// Reads the ConceptMaps of `conceptmaps/`: their translations, and how many maps are used.
fn load_concept_maps(dir: &Path) -> Result<(Translations, usize), MappingError> {
    let mut reader = Reader::new(&CONCEPT_MAPS);
    let mut translations = Translations::new();
    let mut maps = 0usize;
    for file in json_files(dir)? {
        let doc = read_object(
            &file,
            "the document must be a JSON object: a FHIR ConceptMap resource",
        )?;
        if resource_type(&doc) != Some("ConceptMap") {
            return Err(error(
                &file,
                "ConceptMap.resourceType: this folder holds only ConceptMap resources; set \
                 \"resourceType\": \"ConceptMap\" or move the file out of conceptmaps/",
            ));
        }
        if let Some(groups) = reader.read(&file, &doc)? {
            add_translations(&mut translations, groups);
            maps += 1;
        }
    }
    for list in translations.values_mut().flat_map(|m| m.values_mut()) {
        list.sort_by_key(|t| t.equivalence.rank());
    }
    Ok((translations, maps))
}

/// Adds the translations of one active map, in file order; a repeat of an earlier translation
/// is added once.
fn add_translations(out: &mut Translations, groups: Vec<MapGroup>) {
    for group in groups {
        for element in group.elements {
            for target in element.targets.into_iter().filter(|t| !t.repeat) {
                out.entry(group.source.clone())
                    .or_default()
                    .entry(element.code.clone())
                    .or_default()
                    .push(Translation {
                        system: group.target.clone(),
                        code: target.code,
                        display: target.display,
                        equivalence: target.equivalence,
                    });
            }
        }
    }
}

/// Reads the mapping sets of `mapping/`: the file name (without `.json`) is the set's name.
fn load_sets(dir: &Path) -> Result<HashMap<String, TargetSet>, MappingError> {
    let mut sets = HashMap::new();
    for file in json_files(dir)? {
        let doc = read_object(
            &file,
            "a mapping set is a JSON object with profiles, codeSystems and equivalence; see \
             fhir-profiles/README.md",
        )?;
        let name = file
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.is_empty() {
            return Err(error(
                &file,
                "the file name is the set name; name the file <set>.json",
            ));
        }
        sets.insert(name, load_set(&file, &doc)?);
    }
    Ok(sets)
}

/// A mapping-set file (`fhir-profiles/README.md`, "mapping/"). No other keys are allowed: a
/// misspelt key would silently change a sector's policy.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFile {
    /// Free text for people.
    #[serde(default, rename = "description")]
    _description: String,
    /// Resource type to the profile canonical URLs its copy claims, in file order.
    #[serde(default, deserialize_with = "entries")]
    profiles: Vec<(String, Vec<ProfileUrl>)>,
    #[serde(default, rename = "codeSystems")]
    code_systems: Vec<Uri>,
    /// `None`: [`DEFAULT_EQUIVALENCE`].
    #[serde(default, deserialize_with = "some")]
    equivalence: Option<Vec<Accepted>>,
    #[serde(default, rename = "oneCodingPerSystem")]
    one_coding_per_system: bool,
}

/// The canonical URL of a StructureDefinition, optionally with `|version`.
struct ProfileUrl(String);

impl<'de> Deserialize<'de> for ProfileUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_string(
            deserializer,
            "the canonical URL of a StructureDefinition",
            is_profile_canonical,
        )
        .map(ProfileUrl)
    }
}

fn load_set(file: &Path, doc: &Value) -> Result<TargetSet, MappingError> {
    let set: SetFile = typed(file, "", doc, &set_fix)?;
    let equivalence = match set.equivalence {
        None => DEFAULT_EQUIVALENCE
            .into_iter()
            .filter_map(Equivalence::parse)
            .collect(),
        Some(list) => list.into_iter().map(|a| a.0).collect(),
    };
    Ok(TargetSet {
        profiles: set_profiles(file, set.profiles)?,
        code_systems: set_code_systems(file, set.code_systems)?,
        equivalence,
        one_per_system: set.one_coding_per_system,
    })
}

/// Checks what serde cannot: keys are resource type names, and no list is empty.
fn set_profiles(
    file: &Path,
    entries: Vec<(String, Vec<ProfileUrl>)>,
) -> Result<HashMap<String, Vec<String>>, MappingError> {
    let mut profiles = HashMap::with_capacity(entries.len());
    for (rtype, urls) in entries {
        if !is_resource_type_name(&rtype) {
            return Err(error(
                file,
                format!(
                    "profiles.{rtype}: not a resource type name; key each list by the R4 \
                     resource type (e.g. Condition)"
                ),
            ));
        }
        if urls.is_empty() {
            return Err(error(
                file,
                format!(
                    "profiles.{rtype} must be a non-empty array of profile canonical URLs; list \
                     at least one, or leave the type out"
                ),
            ));
        }
        profiles.insert(rtype, urls.into_iter().map(|u| u.0).collect());
    }
    Ok(profiles)
}

/// Checks that no system is listed twice.
fn set_code_systems(file: &Path, list: Vec<Uri>) -> Result<HashSet<String>, MappingError> {
    let mut systems = HashSet::with_capacity(list.len());
    for (i, system) in list.into_iter().enumerate() {
        if !systems.insert(system.0) {
            return Err(error(
                file,
                format!("codeSystems[{i}] repeats a system; list each system once"),
            ));
        }
    }
    Ok(systems)
}

/// The fixes of mapping-set paths (see [`super::de::Fixes`]).
fn set_fix(pattern: &str) -> Option<&'static str> {
    Some(match pattern {
        "*" => {
            "a mapping set holds only description, profiles, codeSystems, equivalence, \
             oneCodingPerSystem"
        }
        "description" => "write the description as text",
        "profiles" => "map each resource type to a list of profile canonical URLs",
        p if p.starts_with("profiles.") && p.ends_with("[]") => {
            "use one such as http://hl7.dk/fhir/core/StructureDefinition/dk-core-condition"
        }
        p if p.starts_with("profiles.") => {
            "list at least one profile canonical URL, or leave the type out"
        }
        "codeSystems" => "list the code system URIs the target understands",
        "codeSystems[]" => {
            "use the code system's canonical URI (e.g. urn:oid:1.2.208.176.2.4.12 or \
             http://snomed.info/sct)"
        }
        "equivalence" => "list the ConceptMap equivalences the target accepts",
        "equivalence[]" => {
            "list only relatedto, equivalent, equal, wider, subsumes, narrower, specializes or \
             inexact"
        }
        _ => return None,
    })
}

fn is_resource_type_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphanumeric())
}

/// A canonical URL of a StructureDefinition, optionally with `|version`.
fn is_profile_canonical(s: &str) -> bool {
    let url = s.split_once('|').map_or(s, |(u, _)| u);
    (url.starts_with("http://") || url.starts_with("https://"))
        && is_uri(url)
        && url
            .rsplit_once("/StructureDefinition/")
            .is_some_and(|(_, id)| !id.is_empty() && !id.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ICPC: &str = "urn:oid:1.2.208.176.2.31";
    const SKS: &str = "urn:oid:1.2.208.176.2.4.12";
    const SCT: &str = "http://snomed.info/sct";

    fn concept_map(url: &str, groups: Value) -> Value {
        json!({
            "resourceType": "ConceptMap",
            "url": url,
            "status": "active",
            "group": groups
        })
    }

    fn test_maps() -> Value {
        concept_map(
            "http://carebridge.example.org/fhir/ConceptMap/test",
            json!([
                {"source": ICPC, "target": SKS, "element": [
                    {"code": "T90", "target": [{"code": "DE11", "display": "Type 2 diabetes mellitus", "equivalence": "equivalent"}]},
                    {"code": "P70", "target": [{"code": "DF03", "display": "Unspecified dementia", "equivalence": "narrower", "comment": "P70 is every dementia"}]},
                    {"code": "U99", "target": [{"equivalence": "unmatched"}]}
                ]},
                {"source": ICPC, "target": SCT, "element": [
                    {"code": "T90", "target": [{"code": "44054006", "display": "Type 2 diabetes mellitus", "equivalence": "equivalent"}]},
                    {"code": "K76", "target": [{"code": "414545008", "display": "Ischemic heart disease", "equivalence": "wider"}]}
                ]},
                {"source": SKS, "target": SCT, "element": [
                    {"code": "DE11", "target": [{"code": "44054006", "equivalence": "equivalent"}]}
                ]}
            ]),
        )
    }

    fn write(dir: &Path, rel: &str, doc: &Value) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, serde_json::to_vec_pretty(doc).expect("json")).expect("write");
    }

    /// A profiles folder with the test ConceptMap and the given sets.
    fn mapping_with(sets: &[(&str, Value)]) -> Mapping {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "conceptmaps/test.json", &test_maps());
        for (name, set) in sets {
            write(dir.path(), &format!("mapping/{name}.json"), set);
        }
        Mapping::load(dir.path()).expect("mapping loads")
    }

    fn hospital() -> Mapping {
        mapping_with(&[(
            "hosp",
            json!({
                "profiles": {"Condition": ["http://hl7.dk/fhir/core/StructureDefinition/dk-core-condition"]},
                "codeSystems": [SKS, SCT]
            }),
        )])
    }

    fn coding(system: &str, code: &str) -> Value {
        json!({"system": system, "code": code})
    }

    fn codes(cc: &Value) -> Vec<(String, String)> {
        cc["coding"]
            .as_array()
            .expect("coding")
            .iter()
            .map(|c| {
                (
                    c["system"].as_str().unwrap_or("").to_owned(),
                    c["code"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    fn pair(s: &str, c: &str) -> (String, String) {
        (s.to_owned(), c.to_owned())
    }

    #[test]
    fn mapping_is_shareable() {
        // Compiles only if the type is Clone + Send + Sync + Debug.
        struct Shareable<T: Clone + Send + Sync + std::fmt::Debug>(T);
        let _ = Shareable(Mapping::empty());
    }

    #[test]
    fn translation_is_added_beside_the_original() {
        let m = hospital();
        let original = json!({"system": ICPC, "code": "T90", "display": "Diabetes non-insulin dependent", "userSelected": true});
        let mut r = json!({"resourceType": "Condition", "code": {"coding": [original.clone()], "text": "Type 2-diabetes"}});
        let report = m.translate_codes(Some("hosp"), &mut r);
        assert_eq!(
            report,
            CodeReport {
                translated: 2,
                not_accepted: 0
            }
        );
        let list = r["code"]["coding"].as_array().expect("coding");
        assert_eq!(list[0], original, "the original is untouched and first");
        assert_eq!(
            list[1],
            json!({"system": SKS, "code": "DE11", "display": "Type 2 diabetes mellitus"})
        );
        assert_eq!(list[2]["code"], "44054006");
        assert_eq!(r["code"]["text"], "Type 2-diabetes");
    }

    #[test]
    fn narrower_is_refused_under_the_default_policy_and_counted() {
        let m = hospital();
        let mut r = json!({"resourceType": "Condition", "code": {"coding": [coding(ICPC, "P70")]}});
        let report = m.translate_codes(Some("hosp"), &mut r);
        assert_eq!(
            report,
            CodeReport {
                translated: 0,
                not_accepted: 1
            }
        );
        assert_eq!(codes(&r["code"]), vec![pair(ICPC, "P70")]);

        // A set that accepts narrower gets it.
        let m = mapping_with(&[(
            "loose",
            json!({"codeSystems": [SKS], "equivalence": ["equivalent", "narrower"]}),
        )]);
        let report = m.translate_codes(Some("loose"), &mut r);
        assert_eq!(
            report,
            CodeReport {
                translated: 1,
                not_accepted: 0
            }
        );
        assert_eq!(
            codes(&r["code"]),
            vec![pair(ICPC, "P70"), pair(SKS, "DF03")]
        );
    }

    #[test]
    fn wider_refused_by_a_strict_set_and_unmatched_never_counted() {
        let m = mapping_with(&[(
            "strict",
            json!({"codeSystems": [SKS, SCT], "equivalence": ["equal", "equivalent"]}),
        )]);
        let mut r = json!({"code": {"coding": [coding(ICPC, "K76"), coding(ICPC, "U99")]}});
        let report = m.translate_codes(Some("strict"), &mut r);
        assert_eq!(
            report,
            CodeReport {
                translated: 0,
                not_accepted: 1
            }
        );
        assert_eq!(r["code"]["coding"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn no_duplicate_when_the_target_coding_is_already_there() {
        let m = hospital();
        let mut r = json!({"code": {"coding": [
            coding(ICPC, "T90"),
            {"system": SKS, "code": "DE11", "display": "Type 2-diabetes"},
            coding(SCT, "44054006")
        ]}});
        let before = r.clone();
        let report = m.translate_codes(Some("hosp"), &mut r);
        assert_eq!(report, CodeReport::default());
        assert_eq!(r, before);
        // Two source codings with the same translation add it once.
        let mut r = json!({"code": {"coding": [coding(ICPC, "T90"), coding(SKS, "DE11")]}});
        let report = m.translate_codes(Some("hosp"), &mut r);
        assert_eq!(report.translated, 1);
        assert_eq!(
            codes(&r["code"]),
            vec![pair(ICPC, "T90"), pair(SKS, "DE11"), pair(SCT, "44054006")]
        );
    }

    #[test]
    fn translations_are_not_chained() {
        // ICPC T90 -> SKS DE11 -> SCT 44054006 exists as a chain; a set that knows only SCT
        // must get 44054006 from the direct ICPC map, and nothing through DE11.
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "conceptmaps/chain.json",
            &concept_map(
                "http://carebridge.example.org/fhir/ConceptMap/chain",
                json!([
                    {"source": ICPC, "target": SKS, "element": [{"code": "K76", "target": [{"code": "DI25", "equivalence": "equivalent"}]}]},
                    {"source": SKS, "target": SCT, "element": [{"code": "DI25", "target": [{"code": "414545008", "equivalence": "equivalent"}]}]}
                ]),
            ),
        );
        write(
            dir.path(),
            "mapping/both.json",
            &json!({"codeSystems": [SKS, SCT]}),
        );
        let m = Mapping::load(dir.path()).expect("loads");
        let mut r = json!({"code": {"coding": [coding(ICPC, "K76")]}});
        let report = m.translate_codes(Some("both"), &mut r);
        assert_eq!(report.translated, 1);
        assert_eq!(
            codes(&r["code"]),
            vec![pair(ICPC, "K76"), pair(SKS, "DI25")]
        );
    }

    #[test]
    fn codes_in_nested_places_are_translated() {
        let m = hospital();
        let mut r = json!({
            "resourceType": "CarePlan",
            "extension": [{"url": "http://example.org/ext", "valueCodeableConcept": {"coding": [coding(ICPC, "T90")]}}],
            "modifierExtension": [{"url": "http://example.org/mod", "extension": [
                {"url": "inner", "valueCodeableConcept": {"coding": [coding(ICPC, "T90")]}}
            ]}],
            "_status": {"extension": [{"url": "http://example.org/why", "valueCodeableConcept": {"coding": [coding(ICPC, "T90")]}}]},
            "contained": [{"resourceType": "Condition", "id": "c1", "code": {"coding": [coding(ICPC, "T90")]}}],
            "activity": [
                {"detail": {"code": {"text": "free text only"}}},
                {"detail": {"code": {"coding": [coding(ICPC, "T90")]}, "reasonCode": [{"coding": [coding(ICPC, "T90")]}]}}
            ]
        });
        let report = m.translate_codes(Some("hosp"), &mut r);
        assert_eq!(report.translated, 12, "six places, two translations each");
        for cc in [
            &r["extension"][0]["valueCodeableConcept"],
            &r["modifierExtension"][0]["extension"][0]["valueCodeableConcept"],
            &r["_status"]["extension"][0]["valueCodeableConcept"],
            &r["contained"][0]["code"],
            &r["activity"][1]["detail"]["code"],
            &r["activity"][1]["detail"]["reasonCode"][0],
        ] {
            assert_eq!(
                codes(cc),
                vec![pair(ICPC, "T90"), pair(SKS, "DE11"), pair(SCT, "44054006")],
                "{cc}"
            );
        }
        assert_eq!(
            r["activity"][0]["detail"]["code"],
            json!({"text": "free text only"})
        );
    }

    #[test]
    fn one_coding_per_system_keeps_the_senders_coding_of_that_system() {
        let set = |one: bool| json!({"codeSystems": [SKS, SCT], "oneCodingPerSystem": one});
        let m = mapping_with(&[("one", set(true)), ("many", set(false))]);
        let doc = json!({"code": {"coding": [coding(ICPC, "T90"), coding(SCT, "73211009")]}});
        let mut r = doc.clone();
        assert_eq!(m.translate_codes(Some("one"), &mut r).translated, 1);
        assert_eq!(
            codes(&r["code"]),
            vec![pair(ICPC, "T90"), pair(SCT, "73211009"), pair(SKS, "DE11")]
        );
        let mut r = doc;
        assert_eq!(m.translate_codes(Some("many"), &mut r).translated, 2);
    }

    #[test]
    fn odd_input_is_skipped_without_panic() {
        let m = hospital();
        let mut r = json!({
            "code": {"coding": [
                "T90", 7, null, [coding(ICPC, "T90")],
                {"code": "T90"},
                {"system": ICPC},
                {"system": ICPC, "code": 90},
                {"system": 5, "code": "T90"},
                {"system": ICPC, "code": "ZZZ"}
            ]},
            "category": {"coding": {"system": ICPC, "code": "T90"}},
            "other": {"coding": "T90"}
        });
        let before = r.clone();
        let report = m.translate_codes(Some("hosp"), &mut r);
        assert_eq!(report, CodeReport::default());
        assert_eq!(r, before);
        for mut v in [json!(null), json!("x"), json!([1, 2]), json!(3.5)] {
            let was = v.clone();
            m.translate_codes(Some("hosp"), &mut v);
            m.apply_profile(Some("hosp"), &mut v);
            assert_eq!(v, was);
        }
        let mut bad_meta = json!({"resourceType": "Condition", "meta": "x"});
        m.apply_profile(Some("hosp"), &mut bad_meta);
        assert_eq!(bad_meta["meta"], "x");
    }

    #[test]
    fn no_set_or_unknown_set_changes_nothing() {
        let m = hospital();
        let doc = json!({"resourceType": "Condition", "code": {"coding": [coding(ICPC, "T90")]}});
        for set in [None, Some("nope")] {
            let mut r = doc.clone();
            assert_eq!(m.translate_codes(set, &mut r), CodeReport::default());
            m.apply_profile(set, &mut r);
            assert_eq!(r, doc);
        }
        let mut r = doc.clone();
        assert_eq!(
            Mapping::empty().translate_codes(Some("hosp"), &mut r),
            CodeReport::default()
        );
        assert!(!Mapping::empty().has_set("hosp"));
    }

    #[test]
    fn apply_profile_replaces_only_the_profile_claims() {
        let m = hospital();
        let dk = "http://hl7.dk/fhir/core/StructureDefinition/dk-core-condition";
        let mut r = json!({
            "resourceType": "Condition", "id": "a",
            "meta": {"versionId": "3", "profile": ["http://example.org/gp-condition"],
                     "_profile": [{"extension": [{"url": "http://example.org/x", "valueString": "y"}]}],
                     "tag": [{"system": "http://example.org/t", "code": "t"}]},
            "code": {"text": "x"}
        });
        m.apply_profile(Some("hosp"), &mut r);
        assert_eq!(
            serde_json::to_string(&r).expect("json"),
            serde_json::to_string(&json!({
                "resourceType": "Condition", "id": "a",
                "meta": {"versionId": "3", "profile": [dk],
                         "tag": [{"system": "http://example.org/t", "code": "t"}]},
                "code": {"text": "x"}
            }))
            .expect("json")
        );

        // meta without profile: profile goes before tag.
        let mut r = json!({"resourceType": "Condition", "meta": {"source": "s", "tag": []}});
        m.apply_profile(Some("hosp"), &mut r);
        let keys: Vec<&String> = r["meta"].as_object().expect("meta").keys().collect();
        assert_eq!(keys, ["source", "profile", "tag"]);

        // no meta: meta goes after id.
        let mut r = json!({"resourceType": "Condition", "id": "b", "code": {}});
        m.apply_profile(Some("hosp"), &mut r);
        let keys: Vec<&String> = r.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["resourceType", "id", "meta", "code"]);
        assert_eq!(r["meta"], json!({"profile": [dk]}));

        // a type the set names no profile for keeps its claims.
        let doc =
            json!({"resourceType": "CarePlan", "meta": {"profile": ["http://example.org/p"]}});
        let mut r = doc.clone();
        m.apply_profile(Some("hosp"), &mut r);
        assert_eq!(r, doc);
    }

    fn load_err(files: &[(&str, &str)]) -> MappingError {
        let dir = tempfile::tempdir().expect("tempdir");
        for (rel, text) in files {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        Mapping::load(dir.path()).expect_err("load must fail")
    }

    fn map_text(target: Value) -> String {
        concept_map(
            "http://carebridge.example.org/fhir/ConceptMap/x",
            json!([{"source": ICPC, "target": SKS, "element": [{"code": "T90", "target": [target]}]}]),
        )
        .to_string()
    }

    /// Loads `files` (path under the profiles folder, text), which must fail; the error must
    /// name `file` and its message contain every needle (the path, the reason, the fix).
    fn expect_error(files: &[(&str, &str)], file: &str, needles: &[&str]) {
        let e = load_err(files);
        assert!(e.file.ends_with(file), "{file} not named by {e}");
        for needle in needles {
            assert!(e.message.contains(needle), "{needle:?} not in {e}");
        }
    }

    fn one_group(group: Value) -> String {
        concept_map(
            "http://carebridge.example.org/fhir/ConceptMap/g",
            json!([group]),
        )
        .to_string()
    }

    /// One kind of bad file per test.
    mod bad_files_give_errors_naming_the_file_the_path_and_the_fix {
        use super::*;

        #[test]
        fn not_json_or_duplicate_keys() {
            let fix = "fix the syntax of this file";
            let broken = [("conceptmaps/broken.json", "{\"resourceType\": ")];
            expect_error(&broken, "broken.json", &["not valid JSON", "line 1", fix]);
            let dup = r#"{"resourceType": "ConceptMap", "resourceType": "ConceptMap"}"#;
            let dup = [("conceptmaps/dup.json", dup)];
            expect_error(&dup, "dup.json", &["not valid JSON", "resourceType", fix]);
            let set = [("mapping/s.json", "{\"codeSystems\": [}")];
            expect_error(&set, "s.json", &["not valid JSON", fix]);
        }

        #[test]
        fn concept_map_header() {
            let vs = r#"{"resourceType": "ValueSet", "status": "active"}"#;
            let needles = [
                "ConceptMap.resourceType",
                "move the file out of conceptmaps/",
            ];
            expect_error(&[("conceptmaps/vs.json", vs)], "vs.json", &needles);
            let not_object = [("conceptmaps/a.json", "[1]")];
            expect_error(
                &not_object,
                "a.json",
                &["JSON object", "ConceptMap resource"],
            );
            let url = "http://carebridge.example.org/fhir/ConceptMap/<id>";
            for (doc, needles) in [
                (
                    r#"{"resourceType": "ConceptMap", "status": "active"}"#,
                    ["ConceptMap.url is missing", url],
                ),
                (
                    r#"{"resourceType": "ConceptMap", "url": 5, "status": "active"}"#,
                    ["ConceptMap.url must be", url],
                ),
                (
                    r#"{"resourceType": "ConceptMap", "url": "not a url", "status": "active"}"#,
                    ["ConceptMap.url must be an absolute URI", url],
                ),
                (
                    r#"{"resourceType": "ConceptMap", "url": "urn:x"}"#,
                    ["ConceptMap.status is missing", "\"active\""],
                ),
                (
                    r#"{"resourceType": "ConceptMap", "url": "urn:x", "status": "final"}"#,
                    [
                        "ConceptMap.status must be one of draft, active",
                        "\"active\"",
                    ],
                ),
            ] {
                expect_error(&[("conceptmaps/h.json", doc)], "h.json", &needles);
            }
        }

        #[test]
        fn concept_map_groups_and_elements() {
            let bad = |group: Value, needles: &[&str]| {
                expect_error(
                    &[("conceptmaps/g.json", &one_group(group))],
                    "g.json",
                    needles,
                );
            };
            bad(
                json!({"target": SKS}),
                &["ConceptMap.group[0].source is missing", "urn:oid:"],
            );
            bad(
                json!({"source": ICPC}),
                &["ConceptMap.group[0].target is missing", "canonical URI"],
            );
            bad(
                json!({"source": "ICPC-2", "target": SKS}),
                &["group[0].source must be an absolute URI", "canonical URI"],
            );
            bad(
                json!([ICPC, SKS]),
                &["ConceptMap.group[0] must be an object"],
            );
            bad(
                json!({"source": ICPC, "target": SKS, "unmapped": {"mode": "provided"}}),
                &[
                    "group[0].unmapped is not supported",
                    "list the codes as elements",
                ],
            );
            bad(
                json!({"source": ICPC, "target": SKS, "element": {}}),
                &["group[0].element must be an array", "array of objects"],
            );
            bad(
                json!({"source": ICPC, "target": SKS, "element": [{}]}),
                &[
                    "group[0].element[0].code is missing",
                    "give the source code",
                ],
            );
            bad(
                json!({"source": ICPC, "target": SKS, "element": [{"code": " "}]}),
                &[
                    "element[0].code must be a non-empty string",
                    "give the source code",
                ],
            );
            let not_array = concept_map("http://e.org/ConceptMap/g", json!({})).to_string();
            let needles = ["ConceptMap.group must be an array", "array of objects"];
            expect_error(
                &[("conceptmaps/g.json", not_array.as_str())],
                "g.json",
                &needles,
            );
        }

        /// A map whose one target is `target`: the error names
        /// `ConceptMap.group[0].element[0].target[0].<at>` and holds the needles.
        fn bad_target(target: Value, at: &str, needles: &[&str]) {
            let path = format!("ConceptMap.group[0].element[0].target[0].{at}");
            let mut all = vec![path.as_str()];
            all.extend_from_slice(needles);
            expect_error(&[("conceptmaps/t.json", &map_text(target))], "t.json", &all);
        }

        #[test]
        fn concept_map_target_equivalence_and_comment() {
            let same = json!({"code": "DE11", "equivalence": "same"});
            let reason = "must be an R4 ConceptMapEquivalence";
            bad_target(same, "equivalence", &[reason, "relatedto, equivalent"]);
            let missing = json!({"code": "DE11"});
            bad_target(
                missing,
                "equivalence is missing",
                &["how the target relates"],
            );
            let narrower = json!({"code": "DE11", "equivalence": "narrower"});
            bad_target(
                narrower,
                "comment is required",
                &["cmd-1", "say what the target"],
            );
            let comment = json!({"code": "DE11", "equivalence": "inexact", "comment": 3});
            let reason = "must be a non-empty string";
            bad_target(comment, "comment", &[reason, "write the comment as text"]);
        }

        #[test]
        fn concept_map_target_code_and_refused_elements() {
            let unmatched = json!({"code": "DE11", "equivalence": "unmatched"});
            let reason = "is given with equivalence unmatched";
            bad_target(unmatched, "code", &[reason, "remove the code"]);
            let no_code = json!({"equivalence": "equivalent"});
            bad_target(no_code, "code is missing", &["use equivalence unmatched"]);
            let number = json!({"code": 11, "equivalence": "equivalent"});
            let reason = "must be a non-empty string";
            bad_target(number, "code", &[reason, "give the target code"]);
            let display = json!({"code": "DE11", "equivalence": "equivalent", "display": null});
            bad_target(display, "display", &[reason, "leave it out"]);
            for key in ["dependsOn", "product"] {
                let mut target = json!({"code": "DE11", "equivalence": "equivalent"});
                target[key] = json!([]);
                let fix = format!("remove {key} or the target");
                bad_target(target, key, &["is not supported", &fix]);
            }
        }

        #[test]
        fn two_maps_that_disagree_or_share_a_url() {
            let map = |url: &str, eq: &str| {
                concept_map(
                    url,
                    json!([{"source": ICPC, "target": SKS, "element": [
                        {"code": "T90", "target": [{"code": "DE11", "equivalence": eq}]}
                    ]}]),
                )
                .to_string()
            };
            let (a, b) = ("http://e.org/ConceptMap/a", "http://e.org/ConceptMap/b");
            let (first, other) = (map(a, "equivalent"), map(b, "wider"));
            let files = [
                ("conceptmaps/a.json", first.as_str()),
                ("conceptmaps/b.json", other.as_str()),
            ];
            let needles = [
                "ConceptMap.group[0].element[0].target[0]: ",
                "a.json",
                "make the two maps agree",
            ];
            expect_error(&files, "b.json", &needles);
            let same_url = map(a, "equivalent");
            let files = [
                ("conceptmaps/a.json", first.as_str()),
                ("conceptmaps/b.json", same_url.as_str()),
            ];
            let needles = [
                "ConceptMap.url is also the url of",
                "a.json",
                "give each map its own url",
            ];
            expect_error(&files, "b.json", &needles);
        }

        #[test]
        fn mapping_sets() {
            for (doc, needles) in [
                (
                    r#"{"profiles": {"Condition": ["http://hl7.dk/fhir/core/dk-core-condition"]}}"#,
                    &[
                        "profiles.Condition[0] must be the canonical URL of a StructureDefinition",
                        "use one such as",
                    ][..],
                ),
                (
                    r#"{"profiles": {"Condition": ["not a url"]}}"#,
                    &[
                        "profiles.Condition[0]",
                        "StructureDefinition/dk-core-condition",
                    ],
                ),
                (
                    r#"{"profiles": {"Condition": []}}"#,
                    &[
                        "profiles.Condition must be a non-empty array",
                        "leave the type out",
                    ],
                ),
                (
                    r#"{"profiles": {"condition": ["http://e.org/StructureDefinition/c"]}}"#,
                    &[
                        "profiles.condition: not a resource type name",
                        "R4 resource type",
                    ],
                ),
                (
                    r#"{"profiles": []}"#,
                    &["profiles must be an object", "map each resource type"],
                ),
                (
                    r#"{"codeSystems": ["ICPC-2"]}"#,
                    &["codeSystems[0] must be an absolute URI", "canonical URI"],
                ),
                (
                    r#"{"codeSystems": ["urn:oid:1.2", "urn:oid:1.2"]}"#,
                    &["codeSystems[1] repeats a system", "list each system once"],
                ),
                (
                    r#"{"equivalence": ["equal", "unmatched"]}"#,
                    &[
                        "equivalence[1] must be an equivalence that states a translation",
                        "list only relatedto",
                    ],
                ),
                (
                    r#"{"equivalence": ["same"]}"#,
                    &[
                        "equivalence[0] must be an R4 ConceptMapEquivalence",
                        "list only relatedto",
                    ],
                ),
                (
                    r#"{"equivalences": ["equal"]}"#,
                    &[
                        "equivalences: unknown key",
                        "a mapping set holds only description, profiles",
                    ],
                ),
                (
                    r#"{"oneCodingPerSystem": "yes"}"#,
                    &["oneCodingPerSystem must be true or false"],
                ),
                (
                    r#"{"description": null}"#,
                    &["description must be a string"],
                ),
                (r#"["dk-gp"]"#, &["JSON object", "README"]),
            ] {
                expect_error(&[("mapping/s.json", doc)], "s.json", needles);
            }
        }
    }

    #[test]
    fn the_projects_profiles_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fhir-profiles");
        let m = Mapping::load(&dir).expect("fhir-profiles/ loads");
        assert_eq!(m.sets(), ["dk-gp", "dk-hospital", "dk-municipality"]);
        assert_eq!(
            m.equivalents(ICPC, "T90"),
            vec![pair(SKS, "DE11"), pair(SCT, "44054006")]
        );
    }

    #[test]
    fn missing_folders_mean_no_maps_and_inactive_maps_are_not_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Mapping::load(dir.path()).expect("empty folder loads");
        assert!(m.sets().is_empty());

        let mut draft = test_maps();
        draft["status"] = json!("draft");
        write(dir.path(), "conceptmaps/draft.json", &draft);
        write(dir.path(), "conceptmaps/README.md.txt", &json!("ignored"));
        write(dir.path(), "mapping/b.json", &json!({"codeSystems": [SKS]}));
        write(dir.path(), "mapping/a.json", &json!({}));
        let m = Mapping::load(dir.path()).expect("loads");
        assert_eq!(m.sets(), ["a", "b"]);
        assert!(m.has_set("b") && !m.has_set("c"));
        let mut r = json!({"code": {"coding": [coding(ICPC, "T90")]}});
        assert_eq!(m.translate_codes(Some("b"), &mut r), CodeReport::default());
    }
}
