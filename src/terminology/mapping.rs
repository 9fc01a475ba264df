//! Target profiles and code translation (ConceptMaps), driven by `fhir-profiles/`.
//!
//! Two kinds of files, both read once at start-up ([`Mapping::load`]):
//!
//! - `fhir-profiles/conceptmaps/*.json`: FHIR R4 ConceptMap resources. Each
//!   `group[].element[].target[]` is one translation from (`group.source`, `element.code`) to
//!   (`group.target`, `target.code`) with an `equivalence`. Only `status: active` maps are used.
//! - `fhir-profiles/mapping/<set>.json`: one mapping set per target profile set (the `profile`
//!   key of the receiving sector): which profiles the target's copy of a resource claims, which
//!   code systems the target understands, and which equivalences it accepts.
//!
//! At delivery, [`Mapping::apply_profile`] replaces `meta.profile` with the target's claims and
//! [`Mapping::translate_codes`] appends translated codings beside the sender's own ones. Nothing
//! the sender wrote is removed or changed (apart from the profile claims), so unknown elements,
//! extensions and `_field` primitive extensions pass through.
//!
//! Lookups are hash maps built at load time: (system, code) to the list of translations,
//! sorted by how close each is (equal first), and set name to policy.

use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::fhir::json::parse_strict;

/// Nesting limit for mapping files and for walking resources (the API's parser already bounds
/// incoming documents well below this).
pub(crate) const MAX_DEPTH: usize = 100;

/// The equivalences a mapping set accepts when it does not say.
pub const DEFAULT_EQUIVALENCE: [&str; 4] = ["equal", "equivalent", "wider", "subsumes"];

/// The keys a mapping-set file may hold.
const SET_KEYS: [&str; 5] = [
    "description",
    "profiles",
    "codeSystems",
    "equivalence",
    "oneCodingPerSystem",
];

/// R4 `ConceptMapEquivalence`, read from target to source (`wider`: the target is broader).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Equivalence {
    RelatedTo,
    Equivalent,
    Equal,
    Wider,
    Subsumes,
    Narrower,
    Specializes,
    Inexact,
    Unmatched,
    Disjoint,
}

const EQUIVALENCE_CODES: &str = "relatedto, equivalent, equal, wider, subsumes, narrower, specializes, inexact, unmatched, disjoint";

impl Equivalence {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "relatedto" => Self::RelatedTo,
            "equivalent" => Self::Equivalent,
            "equal" => Self::Equal,
            "wider" => Self::Wider,
            "subsumes" => Self::Subsumes,
            "narrower" => Self::Narrower,
            "specializes" => Self::Specializes,
            "inexact" => Self::Inexact,
            "unmatched" => Self::Unmatched,
            "disjoint" => Self::Disjoint,
            _ => return None,
        })
    }

    /// Order of preference when one source code has several targets in one system.
    fn rank(self) -> u8 {
        match self {
            Self::Equal => 0,
            Self::Equivalent => 1,
            Self::Wider => 2,
            Self::Subsumes => 3,
            Self::Narrower => 4,
            Self::Specializes => 5,
            Self::Inexact => 6,
            Self::RelatedTo => 7,
            Self::Unmatched => 8,
            Self::Disjoint => 9,
        }
    }

    /// `unmatched` and `disjoint` state that there is no translation.
    fn is_translation(self) -> bool {
        !matches!(self, Self::Unmatched | Self::Disjoint)
    }
}

/// One translation target of a source (system, code).
#[derive(Debug)]
struct Translation {
    system: String,
    code: String,
    display: Option<String>,
    equivalence: Equivalence,
}

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
    /// Source system, then source code, to its translations (best first).
    translations: HashMap<String, HashMap<String, Vec<Translation>>>,
    sets: HashMap<String, TargetSet>,
}

/// The loaded ConceptMaps and mapping sets. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    inner: Arc<Inner>,
}

/// A mapping file that cannot be used. `message` names the element path and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct MappingError {
    pub file: String,
    pub message: String,
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
        let mut inner = Inner::default();
        let mut seen = Seen::default();
        let mut maps = 0usize;
        for file in json_files(&profiles_dir.join("conceptmaps"))? {
            let doc = read_doc(&file)?;
            if load_concept_map(&file, &doc, &mut inner.translations, &mut seen)? {
                maps += 1;
            }
        }
        for list in inner.translations.values_mut().flat_map(|m| m.values_mut()) {
            list.sort_by_key(|t| t.equivalence.rank());
        }
        for file in json_files(&profiles_dir.join("mapping"))? {
            let doc = read_doc(&file)?;
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
            let set = load_set(&file, &doc)?;
            inner.sets.insert(name, set);
        }
        let translations: usize = inner
            .translations
            .values()
            .flat_map(|m| m.values())
            .map(Vec::len)
            .sum();
        tracing::info!(
            concept_maps = maps,
            translations,
            sets = inner.sets.len(),
            "code mappings loaded"
        );
        Ok(Mapping {
            inner: Arc::new(inner),
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

pub(crate) fn error(file: &Path, message: impl Into<String>) -> MappingError {
    MappingError {
        file: file.display().to_string(),
        message: message.into(),
    }
}

/// The `*.json` files of a folder, sorted; none when the folder does not exist.
pub(crate) fn json_files(dir: &Path) -> Result<Vec<PathBuf>, MappingError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(error(
                dir,
                format!("cannot read the folder ({e}); make it a readable folder or remove it"),
            ));
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| error(dir, format!("cannot list the folder ({e})")))?
            .path();
        if path.is_file() && path.extension().is_some_and(|x| x == "json") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

pub(crate) fn read_doc(file: &Path) -> Result<Value, MappingError> {
    let bytes = std::fs::read(file).map_err(|e| error(file, format!("cannot read ({e})")))?;
    parse_strict(&bytes, MAX_DEPTH).map_err(|e| {
        error(
            file,
            format!("not valid JSON: {e}; fix the syntax of this file"),
        )
    })
}

/// Translations already loaded, to tell a repeat from a contradiction.
#[derive(Default)]
struct Seen {
    urls: HashMap<String, PathBuf>,
    /// (source system, source code, target system, target code) to equivalence and file.
    pairs: HashMap<(String, String, String, String), (Equivalence, PathBuf)>,
}

pub(crate) fn is_uri(s: &str) -> bool {
    let ok_chars = !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    let http = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
    let oid = s.strip_prefix("urn:oid:").is_some_and(|oid| {
        !oid.is_empty()
            && oid
                .split('.')
                .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()))
    });
    let other_urn = s.starts_with("urn:") && !s.starts_with("urn:oid:") && s.len() > 4;
    ok_chars && (http || oid || other_urn)
}

pub(crate) fn str_at<'a>(
    file: &Path,
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
    fix: &str,
) -> Result<Option<&'a str>, MappingError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s)),
        Some(_) => Err(error(
            file,
            format!("{path}.{key} must be a non-empty string; {fix}"),
        )),
    }
}

pub(crate) fn required_str<'a>(
    file: &Path,
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
    fix: &str,
) -> Result<&'a str, MappingError> {
    str_at(file, obj, key, path, fix)?
        .ok_or_else(|| error(file, format!("{path}.{key} is missing; {fix}")))
}

/// Adds the translations of one ConceptMap. Returns whether the map is used (it is active).
fn load_concept_map(
    file: &Path,
    doc: &Value,
    out: &mut HashMap<String, HashMap<String, Vec<Translation>>>,
    seen: &mut Seen,
) -> Result<bool, MappingError> {
    let Some(root) = doc.as_object() else {
        return Err(error(
            file,
            "the document must be a JSON object: a FHIR ConceptMap resource",
        ));
    };
    if root.get("resourceType").and_then(Value::as_str) != Some("ConceptMap") {
        return Err(error(
            file,
            "ConceptMap.resourceType: this folder holds only ConceptMap resources; set \
             \"resourceType\": \"ConceptMap\" or move the file out of conceptmaps/",
        ));
    }
    let url = required_str(
        file,
        root,
        "url",
        "ConceptMap",
        "give the map a canonical URL (http://carebridge.example.org/fhir/ConceptMap/<id>)",
    )?;
    if !is_uri(url) {
        return Err(error(
            file,
            "ConceptMap.url is not an absolute URI; use a canonical URL such as \
             http://carebridge.example.org/fhir/ConceptMap/<id>",
        ));
    }
    if let Some(other) = seen.urls.get(url) {
        return Err(error(
            file,
            format!(
                "ConceptMap.url is also the url of {}; give each map its own url",
                other.display()
            ),
        ));
    }
    seen.urls.insert(url.to_owned(), file.to_path_buf());
    let status = required_str(
        file,
        root,
        "status",
        "ConceptMap",
        "set \"status\": \"active\" for a map in use",
    )?;
    match status {
        "active" => {}
        "draft" | "retired" | "unknown" => {
            tracing::info!(file = %file.display(), status, "ConceptMap not used: status is not active");
            return Ok(false);
        }
        _ => {
            return Err(error(
                file,
                "ConceptMap.status must be one of draft, active, retired, unknown",
            ));
        }
    }
    let groups = match root.get("group") {
        None => return Ok(true),
        Some(Value::Array(g)) => g,
        Some(_) => {
            return Err(error(file, "ConceptMap.group must be an array of groups"));
        }
    };
    for (gi, group) in groups.iter().enumerate() {
        let gpath = format!("ConceptMap.group[{gi}]");
        let Some(group) = group.as_object() else {
            return Err(error(file, format!("{gpath} must be an object")));
        };
        let source = required_str(
            file,
            group,
            "source",
            &gpath,
            "name the source code system (e.g. urn:oid:1.2.208.176.2.31)",
        )?;
        let target = required_str(
            file,
            group,
            "target",
            &gpath,
            "name the target code system (e.g. http://snomed.info/sct)",
        )?;
        for (key, value) in [("source", source), ("target", target)] {
            if !is_uri(value) {
                return Err(error(
                    file,
                    format!(
                        "{gpath}.{key} is not an absolute URI; use the code system's canonical \
                         URI (http(s)://... or urn:oid:...)"
                    ),
                ));
            }
        }
        if group.contains_key("unmapped") {
            return Err(error(
                file,
                format!(
                    "{gpath}.unmapped is not supported: carebridge translates only the codes \
                     listed; remove unmapped and list the codes as elements"
                ),
            ));
        }
        let elements = match group.get("element") {
            None => continue,
            Some(Value::Array(e)) => e,
            Some(_) => {
                return Err(error(file, format!("{gpath}.element must be an array")));
            }
        };
        for (ei, element) in elements.iter().enumerate() {
            let epath = format!("{gpath}.element[{ei}]");
            let Some(element) = element.as_object() else {
                return Err(error(file, format!("{epath} must be an object")));
            };
            let code = required_str(
                file,
                element,
                "code",
                &epath,
                "give the source code this element maps",
            )?;
            let targets = match element.get("target") {
                None => continue,
                Some(Value::Array(t)) => t,
                Some(_) => {
                    return Err(error(file, format!("{epath}.target must be an array")));
                }
            };
            for (ti, t) in targets.iter().enumerate() {
                let tpath = format!("{epath}.target[{ti}]");
                let Some(t) = t.as_object() else {
                    return Err(error(file, format!("{tpath} must be an object")));
                };
                let eq_text = required_str(
                    file,
                    t,
                    "equivalence",
                    &tpath,
                    &format!("state how the target relates to the source: {EQUIVALENCE_CODES}"),
                )?;
                let Some(equivalence) = Equivalence::parse(eq_text) else {
                    return Err(error(
                        file,
                        format!(
                            "{tpath}.equivalence is not an R4 ConceptMapEquivalence; use one of \
                             {EQUIVALENCE_CODES}"
                        ),
                    ));
                };
                for key in ["dependsOn", "product"] {
                    if t.contains_key(key) {
                        return Err(error(
                            file,
                            format!(
                                "{tpath}.{key} is not supported: carebridge would apply the \
                                 translation unconditionally; remove {key} or the target"
                            ),
                        ));
                    }
                }
                let comment = str_at(file, t, "comment", &tpath, "write the comment as text")?;
                if matches!(equivalence, Equivalence::Narrower | Equivalence::Inexact)
                    && comment.is_none()
                {
                    return Err(error(
                        file,
                        format!(
                            "{tpath}.comment is required for a {eq_text} map (R4 invariant \
                             cmd-1); say what the target adds or leaves out"
                        ),
                    ));
                }
                let tcode = str_at(
                    file,
                    t,
                    "code",
                    &tpath,
                    "give the target code, or use equivalence unmatched without a code",
                )?;
                let display = str_at(
                    file,
                    t,
                    "display",
                    &tpath,
                    "give the target's display text or leave it out",
                )?;
                let tcode = match (equivalence, tcode) {
                    (Equivalence::Unmatched, None) => continue,
                    (Equivalence::Unmatched, Some(_)) => {
                        return Err(error(
                            file,
                            format!(
                                "{tpath}.code is given with equivalence unmatched; remove the \
                                 code, or state the equivalence of this target"
                            ),
                        ));
                    }
                    (_, None) => {
                        return Err(error(
                            file,
                            format!(
                                "{tpath}.code is missing; give the target code, or use \
                                 equivalence unmatched for a code with no target"
                            ),
                        ));
                    }
                    (_, Some(c)) => c,
                };
                let key = (
                    source.to_owned(),
                    code.to_owned(),
                    target.to_owned(),
                    tcode.to_owned(),
                );
                if let Some((earlier, other)) = seen.pairs.get(&key) {
                    if *earlier == equivalence {
                        continue;
                    }
                    return Err(error(
                        file,
                        format!(
                            "{tpath}: {} maps the same source code to the same target code with \
                             another equivalence; make the two maps agree",
                            other.display()
                        ),
                    ));
                }
                seen.pairs.insert(key, (equivalence, file.to_path_buf()));
                if !equivalence.is_translation() {
                    continue;
                }
                out.entry(source.to_owned())
                    .or_default()
                    .entry(code.to_owned())
                    .or_default()
                    .push(Translation {
                        system: target.to_owned(),
                        code: tcode.to_owned(),
                        display: display.map(str::to_owned),
                        equivalence,
                    });
            }
        }
    }
    Ok(true)
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

fn load_set(file: &Path, doc: &Value) -> Result<TargetSet, MappingError> {
    let Some(root) = doc.as_object() else {
        return Err(error(
            file,
            "a mapping set is a JSON object with profiles, codeSystems and equivalence; see \
             fhir-profiles/README.md",
        ));
    };
    if let Some(key) = root.keys().find(|k| !SET_KEYS.contains(&k.as_str())) {
        return Err(error(
            file,
            format!(
                "{key}: unknown key; a mapping set holds only {}",
                SET_KEYS.join(", ")
            ),
        ));
    }
    if let Some(d) = root.get("description")
        && !d.is_string()
    {
        return Err(error(file, "description must be a string"));
    }
    let mut profiles = HashMap::new();
    match root.get("profiles") {
        None => {}
        Some(Value::Object(types)) => {
            for (rtype, urls) in types {
                if !is_resource_type_name(rtype) {
                    return Err(error(
                        file,
                        format!(
                            "profiles.{rtype}: not a resource type name; key each list by the \
                             R4 resource type (e.g. Condition)"
                        ),
                    ));
                }
                let list = match urls {
                    Value::Array(list) if !list.is_empty() => list,
                    _ => {
                        return Err(error(
                            file,
                            format!(
                                "profiles.{rtype} must be a non-empty array of profile canonical \
                                 URLs; list at least one, or leave the type out"
                            ),
                        ));
                    }
                };
                let mut claims = Vec::with_capacity(list.len());
                for (i, url) in list.iter().enumerate() {
                    match url.as_str() {
                        Some(u) if is_profile_canonical(u) => claims.push(u.to_owned()),
                        _ => {
                            return Err(error(
                                file,
                                format!(
                                    "profiles.{rtype}[{i}] is not the canonical URL of a \
                                     StructureDefinition; use one such as \
                                     http://hl7.dk/fhir/core/StructureDefinition/dk-core-condition"
                                ),
                            ));
                        }
                    }
                }
                profiles.insert(rtype.clone(), claims);
            }
        }
        Some(_) => {
            return Err(error(
                file,
                "profiles must be an object: resource type to a list of profile canonical URLs",
            ));
        }
    }
    let mut code_systems = HashSet::new();
    match root.get("codeSystems") {
        None => {}
        Some(Value::Array(list)) => {
            for (i, s) in list.iter().enumerate() {
                let Some(system) = s.as_str().filter(|s| is_uri(s)) else {
                    return Err(error(
                        file,
                        format!(
                            "codeSystems[{i}] is not a code system URI; use its canonical URI \
                             (e.g. urn:oid:1.2.208.176.2.4.12 or http://snomed.info/sct)"
                        ),
                    ));
                };
                if !code_systems.insert(system.to_owned()) {
                    return Err(error(
                        file,
                        format!("codeSystems[{i}] repeats a system; list each system once"),
                    ));
                }
            }
        }
        Some(_) => {
            return Err(error(
                file,
                "codeSystems must be an array of code system URIs",
            ));
        }
    }
    let mut equivalence = HashSet::new();
    match root.get("equivalence") {
        None => {
            equivalence.extend(
                DEFAULT_EQUIVALENCE
                    .into_iter()
                    .filter_map(Equivalence::parse),
            );
        }
        Some(Value::Array(list)) => {
            for (i, e) in list.iter().enumerate() {
                let Some(eq) = e.as_str().and_then(Equivalence::parse) else {
                    return Err(error(
                        file,
                        format!(
                            "equivalence[{i}] is not an R4 ConceptMapEquivalence; use one of \
                             {EQUIVALENCE_CODES}"
                        ),
                    ));
                };
                if !eq.is_translation() {
                    return Err(error(
                        file,
                        format!(
                            "equivalence[{i}]: unmatched and disjoint say there is no \
                             translation; remove them from the list"
                        ),
                    ));
                }
                equivalence.insert(eq);
            }
        }
        Some(_) => {
            return Err(error(
                file,
                "equivalence must be an array of ConceptMap equivalence codes",
            ));
        }
    }
    let one_per_system = match root.get("oneCodingPerSystem") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(error(file, "oneCodingPerSystem must be true or false"));
        }
    };
    Ok(TargetSet {
        profiles,
        code_systems,
        equivalence,
        one_per_system,
    })
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
        fn check<T: Clone + Send + Sync + std::fmt::Debug>() {}
        check::<Mapping>();
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

    #[test]
    fn bad_files_give_errors_naming_the_file_the_path_and_the_fix() {
        let e = load_err(&[("conceptmaps/broken.json", "{\"resourceType\": ")]);
        assert!(e.file.ends_with("broken.json"), "{e}");
        assert!(e.message.contains("not valid JSON"), "{e}");

        let e = load_err(&[(
            "conceptmaps/dup.json",
            r#"{"resourceType": "ConceptMap", "resourceType": "ConceptMap"}"#,
        )]);
        assert!(
            e.file.ends_with("dup.json") && e.message.contains("not valid JSON"),
            "{e}"
        );

        let e = load_err(&[(
            "conceptmaps/vs.json",
            r#"{"resourceType": "ValueSet", "status": "active"}"#,
        )]);
        assert!(e.file.ends_with("vs.json"), "{e}");
        assert!(e.message.contains("ConceptMap.resourceType"), "{e}");

        let e = load_err(&[(
            "conceptmaps/eq.json",
            &map_text(json!({"code": "DE11", "equivalence": "same"})),
        )]);
        assert!(e.file.ends_with("eq.json"), "{e}");
        assert!(
            e.message
                .contains("ConceptMap.group[0].element[0].target[0].equivalence")
                && e.message.contains("relatedto"),
            "{e}"
        );

        let e = load_err(&[(
            "conceptmaps/n.json",
            &map_text(json!({"code": "DE11", "equivalence": "narrower"})),
        )]);
        assert!(
            e.message.contains("target[0].comment") && e.message.contains("cmd-1"),
            "{e}"
        );

        let e = load_err(&[(
            "conceptmaps/u.json",
            &map_text(json!({"code": "DE11", "equivalence": "unmatched"})),
        )]);
        assert!(
            e.message.contains("target[0].code") && e.message.contains("unmatched"),
            "{e}"
        );

        let e = load_err(&[(
            "conceptmaps/m.json",
            &map_text(json!({"equivalence": "equivalent"})),
        )]);
        assert!(e.message.contains("target[0].code is missing"), "{e}");

        let e = load_err(&[(
            "conceptmaps/g.json",
            &concept_map(
                "http://carebridge.example.org/fhir/ConceptMap/g",
                json!([{"target": SKS}]),
            )
            .to_string(),
        )]);
        assert!(
            e.message.contains("ConceptMap.group[0].source is missing"),
            "{e}"
        );

        let e = load_err(&[
            (
                "conceptmaps/a.json",
                &map_text(json!({"code": "DE11", "equivalence": "equivalent"})),
            ),
            (
                "conceptmaps/b.json",
                &concept_map("http://carebridge.example.org/fhir/ConceptMap/x", json!([]))
                    .to_string(),
            ),
        ]);
        assert!(
            e.file.ends_with("b.json") && e.message.contains("a.json"),
            "{e}"
        );

        let e = load_err(&[(
            "mapping/dk-gp.json",
            r#"{"profiles": {"Condition": ["http://hl7.dk/fhir/core/dk-core-condition"]}}"#,
        )]);
        assert!(e.file.ends_with("dk-gp.json"), "{e}");
        assert!(
            e.message.contains("profiles.Condition[0]")
                && e.message.contains("StructureDefinition"),
            "{e}"
        );

        let e = load_err(&[(
            "mapping/s.json",
            r#"{"profiles": {"Condition": ["not a url"]}}"#,
        )]);
        assert!(e.message.contains("profiles.Condition[0]"), "{e}");

        let e = load_err(&[("mapping/s.json", r#"{"codeSystems": ["ICPC-2"]}"#)]);
        assert!(e.message.contains("codeSystems[0]"), "{e}");

        let e = load_err(&[(
            "mapping/s.json",
            r#"{"equivalence": ["equal", "unmatched"]}"#,
        )]);
        assert!(e.message.contains("equivalence[1]"), "{e}");

        let e = load_err(&[("mapping/s.json", r#"{"equivalences": ["equal"]}"#)]);
        assert!(e.message.contains("equivalences: unknown key"), "{e}");

        let e = load_err(&[("mapping/s.json", r#"["dk-gp"]"#)]);
        assert!(
            e.file.ends_with("s.json") && e.message.contains("README"),
            "{e}"
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
