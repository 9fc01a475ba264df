//! The one ConceptMap reader, for `conceptmaps/` ([`super::mapping`]) and `medications/`
//! ([`super::medication`]).
//!
//! A ConceptMap is read in two typed steps: its [`Header`] (`url`, `status`) always, so that every
//! file's url counts for uniqueness, and its [`Body`] (`group[].element[].target[]`) only when the
//! map is active. Then the rules serde cannot state are checked ([`Reader::target`]): no
//! `group.unmapped`, `target.dependsOn` or `target.product` (carebridge would apply the target
//! unconditionally), a `comment` for `narrower` and `inexact` (R4 invariant cmd-1), a target `code`
//! exactly when the equivalence is not `unmatched`, and no two files (or targets) that give one
//! source code the same target code with different equivalences. What comes out ([`MapGroup`]) is
//! what both consumers use: the checked targets that carry a code, in file order.

use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::de::{Text, Uri, checked_string, objects, present, some, typed};
use super::equivalence::{Equivalence, equivalence_codes};
use super::files::{MappingError, error};

/// What differs between the folders that hold ConceptMaps: the words of some fixes, and how a
/// source code is compared.
pub(super) struct Flavour {
    /// What a map of this folder is, for the log line of a map that is not active.
    pub(super) what: &'static str,
    /// The fix for a missing or bad `group.source`.
    pub(super) source_fix: &'static str,
    /// The fix for a missing or bad `group.target`.
    pub(super) target_fix: &'static str,
    /// Why `group.unmapped` is refused.
    pub(super) unmapped: &'static str,
    /// Why `target.dependsOn` / `target.product` (the key) is refused, and the fix.
    pub(super) conditional: fn(&str) -> String,
    /// The fix for a target without a code.
    pub(super) no_code_fix: &'static str,
    /// A source code as compared and stored (system, code as written).
    pub(super) source_code: fn(&str, &str) -> String,
}

/// The `url` and `status` of any ConceptMap, active or not.
#[derive(Deserialize)]
struct Header {
    url: Uri,
    status: Status,
}

/// An R4 `PublicationStatus` code; only `active` maps are used.
struct Status(String);

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const CODES: [&str; 4] = ["draft", "active", "retired", "unknown"];
        checked_string(
            deserializer,
            "one of draft, active, retired, unknown",
            |s| CODES.contains(&s),
        )
        .map(Status)
    }
}

/// The groups of an active ConceptMap (other elements are ignored).
#[derive(Deserialize)]
struct Body {
    #[serde(default, deserialize_with = "objects")]
    group: Vec<Group>,
}

#[derive(Deserialize)]
struct Group {
    source: Uri,
    target: Uri,
    #[serde(default, deserialize_with = "present")]
    unmapped: bool,
    #[serde(default, deserialize_with = "objects")]
    element: Vec<Element>,
}

#[derive(Deserialize)]
struct Element {
    code: Text,
    #[serde(default, deserialize_with = "objects")]
    target: Vec<Target>,
}

#[derive(Deserialize)]
struct Target {
    equivalence: Equivalence,
    #[serde(default, deserialize_with = "some")]
    code: Option<Text>,
    #[serde(default, deserialize_with = "some")]
    display: Option<Text>,
    #[serde(default, deserialize_with = "some")]
    comment: Option<Text>,
    #[serde(default, rename = "dependsOn", deserialize_with = "present")]
    depends_on: bool,
    #[serde(default, deserialize_with = "present")]
    product: bool,
}

/// One group of an active map, checked.
pub(super) struct MapGroup {
    /// `ConceptMap.group[i]`, for messages.
    pub(super) path: String,
    pub(super) source: String,
    pub(super) target: String,
    pub(super) elements: Vec<MapElement>,
}

/// One element, checked: every element is kept, also one whose targets all are `unmatched`.
pub(super) struct MapElement {
    pub(super) path: String,
    /// The source code, as [`Flavour::source_code`] gives it.
    pub(super) code: String,
    pub(super) targets: Vec<MapTarget>,
}

/// One target that carries a code. `unmatched` targets (no code) and `disjoint` ones (the source
/// is not the target) are checked and then left out.
pub(super) struct MapTarget {
    pub(super) path: String,
    pub(super) code: String,
    pub(super) display: Option<String>,
    pub(super) equivalence: Equivalence,
    /// An earlier target, of this file or an earlier one, gave the same source code the same
    /// target code with the same equivalence.
    pub(super) repeat: bool,
}

/// Reads the ConceptMaps of one folder, remembering what earlier files said.
pub(super) struct Reader {
    flavour: &'static Flavour,
    /// Canonical url to the file that has it.
    urls: HashMap<String, PathBuf>,
    /// (source system, source code, target system, target code) to equivalence and file.
    pairs: HashMap<(String, String, String, String), (Equivalence, PathBuf)>,
}

impl Reader {
    pub(super) fn new(flavour: &'static Flavour) -> Reader {
        Reader {
            flavour,
            urls: HashMap::new(),
            pairs: HashMap::new(),
        }
    }

    /// Reads one ConceptMap (`doc` is an object whose `resourceType` the caller checked). `None`
    /// when the map is not active (it is not used, but its url is taken).
    pub(super) fn read(
        &mut self,
        file: &Path,
        doc: &Value,
    ) -> Result<Option<Vec<MapGroup>>, MappingError> {
        let flavour = self.flavour;
        let fixes = move |pattern: &str| fix(flavour, pattern);
        let header: Header = typed(file, "ConceptMap", doc, &fixes)?;
        if let Some(other) = self.urls.get(&header.url.0) {
            return Err(error(
                file,
                format!(
                    "ConceptMap.url is also the url of {}; give each map its own url",
                    other.display()
                ),
            ));
        }
        self.urls.insert(header.url.0, file.to_path_buf());
        if header.status.0 != "active" {
            tracing::info!(file = %file.display(), status = header.status.0,
                "{} not used: status is not active", flavour.what);
            return Ok(None);
        }
        let body: Body = typed(file, "ConceptMap", doc, &fixes)?;
        let mut groups = Vec::with_capacity(body.group.len());
        for (gi, group) in body.group.into_iter().enumerate() {
            groups.push(self.group(file, format!("ConceptMap.group[{gi}]"), group)?);
        }
        Ok(Some(groups))
    }

    fn group(&mut self, file: &Path, path: String, group: Group) -> Result<MapGroup, MappingError> {
        if group.unmapped {
            return Err(error(
                file,
                format!(
                    "{path}.unmapped is not supported: {}; remove unmapped and list the codes as \
                     elements",
                    self.flavour.unmapped
                ),
            ));
        }
        let mut out = MapGroup {
            path,
            source: group.source.0,
            target: group.target.0,
            elements: Vec::with_capacity(group.element.len()),
        };
        for (ei, element) in group.element.into_iter().enumerate() {
            let path = format!("{}.element[{ei}]", out.path);
            let code = (self.flavour.source_code)(&out.source, &element.code.0);
            let mut targets = Vec::new();
            for (ti, target) in element.target.into_iter().enumerate() {
                let at = Pair {
                    path: format!("{path}.target[{ti}]"),
                    source: &out.source,
                    code: &code,
                    target: &out.target,
                };
                if let Some(t) = self.target(file, at, target)? {
                    targets.push(t);
                }
            }
            out.elements.push(MapElement {
                path,
                code,
                targets,
            });
        }
        Ok(out)
    }

    /// Checks one target; `None` for one that carries no translation (`unmatched`, `disjoint`).
    fn target(
        &mut self,
        file: &Path,
        at: Pair<'_>,
        t: Target,
    ) -> Result<Option<MapTarget>, MappingError> {
        let tpath = &at.path;
        for (key, given) in [("dependsOn", t.depends_on), ("product", t.product)] {
            if given {
                let why = (self.flavour.conditional)(key);
                return Err(error(
                    file,
                    format!("{tpath}.{key} is not supported: {why}"),
                ));
            }
        }
        if t.equivalence.needs_comment() && t.comment.is_none() {
            return Err(error(
                file,
                format!(
                    "{tpath}.comment is required for a {} map (R4 invariant cmd-1); say what the \
                     target adds or leaves out",
                    t.equivalence.code()
                ),
            ));
        }
        let code = match (t.equivalence, t.code) {
            (Equivalence::Unmatched, None) => return Ok(None),
            (Equivalence::Unmatched, Some(_)) => {
                return Err(error(
                    file,
                    format!(
                        "{tpath}.code is given with equivalence unmatched; remove the code, or \
                         state the equivalence of this target"
                    ),
                ));
            }
            (_, None) => {
                let fix = self.flavour.no_code_fix;
                return Err(error(file, format!("{tpath}.code is missing; {fix}")));
            }
            (_, Some(code)) => code.0,
        };
        let repeat = self.remember(file, &at, &code, t.equivalence)?;
        if t.equivalence == Equivalence::Disjoint {
            return Ok(None);
        }
        Ok(Some(MapTarget {
            path: at.path,
            code,
            display: t.display.map(|d| d.0),
            equivalence: t.equivalence,
            repeat,
        }))
    }

    /// Records a (source, code) → (target, target code) pair; whether it repeats an earlier one.
    /// Another equivalence for the same pair is an error.
    fn remember(
        &mut self,
        file: &Path,
        at: &Pair<'_>,
        code: &str,
        equivalence: Equivalence,
    ) -> Result<bool, MappingError> {
        let key = (
            at.source.to_owned(),
            at.code.to_owned(),
            at.target.to_owned(),
            code.to_owned(),
        );
        match self.pairs.get(&key) {
            Some((earlier, _)) if *earlier == equivalence => Ok(true),
            Some((_, other)) => Err(error(
                file,
                format!(
                    "{}: {} maps the same source code to the same target code with another \
                     equivalence; make the two maps agree",
                    at.path,
                    other.display()
                ),
            )),
            None => {
                self.pairs.insert(key, (equivalence, file.to_path_buf()));
                Ok(false)
            }
        }
    }
}

/// The fixes of ConceptMap paths (see [`super::de::Fixes`]).
fn fix(flavour: &Flavour, pattern: &str) -> Option<&'static str> {
    Some(match pattern {
        "url" => {
            "give the map a canonical URL (http://carebridge.example.org/fhir/ConceptMap/<id>)"
        }
        "status" => "set \"status\": \"active\" for a map in use",
        "group" => "list the groups as an array of objects",
        "group[]" | "group[].element[]" | "group[].element[].target[]" => {
            "write it as a JSON object"
        }
        "group[].source" => flavour.source_fix,
        "group[].target" => flavour.target_fix,
        "group[].element" => "list the elements as an array of objects",
        "group[].element[].code" => "give the source code this element maps",
        "group[].element[].target" => "list the targets as an array of objects",
        "group[].element[].target[].equivalence" => concat!(
            "state how the target relates to the source: ",
            equivalence_codes!()
        ),
        "group[].element[].target[].code" => {
            "give the target code, or use equivalence unmatched without a code"
        }
        "group[].element[].target[].display" => "give the target's display text or leave it out",
        "group[].element[].target[].comment" => "write the comment as text",
        _ => return None,
    })
}

/// Where a target is and which pair it states.
struct Pair<'a> {
    path: String,
    source: &'a str,
    code: &'a str,
    target: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    static PLAIN: Flavour = Flavour {
        what: "ConceptMap",
        source_fix: "name the source code system",
        target_fix: "name the target code system",
        unmapped: "carebridge reads only the codes listed",
        conditional: |key| format!("remove {key}"),
        no_code_fix: "give the target code",
        source_code: |_, code| code.to_owned(),
    };

    fn map(status: &str, groups: Value) -> Value {
        json!({"resourceType": "ConceptMap", "url": "http://e.org/m", "status": status,
               "group": groups})
    }

    fn read(doc: &Value) -> Result<Option<Vec<MapGroup>>, MappingError> {
        Reader::new(&PLAIN).read(Path::new("m.json"), doc)
    }

    #[test]
    fn an_inactive_map_is_not_read_beyond_its_header() {
        for status in ["draft", "retired", "unknown"] {
            let doc = map(status, json!(5));
            assert!(read(&doc).expect("header is fine").is_none(), "{status}");
        }
        let e = read(&map("active", json!(5)))
            .err()
            .expect("active body is read");
        assert_eq!(
            e.message,
            "ConceptMap.group must be an array; list the groups as an array of objects"
        );
    }

    #[test]
    fn every_element_is_kept_and_only_targets_with_a_translation() {
        let doc = map(
            "active",
            json!([{"source": "urn:oid:1.2", "target": "http://e.org/t", "element": [
                {"code": "a", "target": [
                    {"equivalence": "unmatched"},
                    {"code": "x", "equivalence": "disjoint"},
                    {"code": "y", "display": "Y", "equivalence": "wider"},
                    {"code": "y", "equivalence": "wider"}
                ]},
                {"code": "b"}
            ]}]),
        );
        let groups = read(&doc).expect("reads").expect("active");
        let elements = &groups[0].elements;
        assert_eq!(elements.len(), 2);
        assert_eq!(elements[1].code, "b");
        let targets: Vec<(&str, bool)> = elements[0]
            .targets
            .iter()
            .map(|t| (t.code.as_str(), t.repeat))
            .collect();
        assert_eq!(targets, [("y", false), ("y", true)]);
        assert_eq!(
            elements[0].targets[0].path,
            "ConceptMap.group[0].element[0].target[2]"
        );
        assert_eq!(elements[0].targets[0].display.as_deref(), Some("Y"));
    }

    #[test]
    fn presence_counts_for_refused_elements_even_when_null() {
        let target = json!({"code": "y", "equivalence": "wider", "product": null});
        let doc = map(
            "active",
            json!([{"source": "urn:oid:1.2", "target": "urn:oid:1.3", "element": [
                {"code": "a", "target": [target]}
            ]}]),
        );
        let e = read(&doc).err().expect("refused");
        assert!(
            e.message
                .starts_with("ConceptMap.group[0].element[0].target[0].product is not supported"),
            "{e}"
        );
    }
}
