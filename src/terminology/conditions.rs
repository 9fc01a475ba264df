//! Condition identity across code hierarchies and systems, for the condition alerts.
//!
//! - **Hierarchy by prefix.** SKS-D (`urn:oid:1.2.208.176.2.4.12`) and ICD-10
//!   (`http://hl7.org/fhir/sid/icd-10`) are hierarchical by code prefix: `DE11` (type 2 diabetes)
//!   is the parent of `DE119` (without complications). Two codes of one of these systems are the
//!   same condition when one is a prefix of the other and the shorter names at least an ICD-10
//!   category (a letter and two digits: `E11`, `DE11`); a chapter or block is never a condition.
//! - **ICD-10 ↔ SKS-D mechanically.** SKS-D diagnosis codes are `D` followed by the ICD-10 code
//!   without its dot (`E11.9` ↔ `DE119`), so an ICD-10 code is compared as its SKS-D form.
//! - **Across systems through the ConceptMaps** (`fhir-profiles/conceptmaps/`): `equal` and
//!   `equivalent` translations always; `wider` and `narrower` ones only when the broader of the two
//!   concepts is listed in the ValueSet of single-disease concepts
//!   (`fhir-profiles/conditions/single-disease-concepts.json`): a narrower code translated to a
//!   concept that names one disease (ICPC-2 T90 "diabetes non-insulin dependent") is that disease;
//!   translated to a rubric that groups several (ICPC-2 U99 "urinary disease, other", S97 "chronic
//!   ulcer skin") it is not.
//! - **The chronic list** (`fhir-profiles/conditions/chronic-conditions.json`, a ValueSet): the
//!   default list of chronic conditions of the unaddressed-condition and needs-assessment rules.
//!   A listed SKS-D or ICD-10 code covers its whole hierarchy; ICPC-2 rubrics and SNOMED CT
//!   concepts match exactly (the project ships no SNOMED CT hierarchy: the list names the
//!   concepts it means, children included).
//!
//! The file format is documented in `fhir-profiles/README.md`, section "conditions/".

use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use super::files::{MappingError, error, json_files, read_object, resource_type};

pub const SKSD_SYSTEM: &str = "urn:oid:1.2.208.176.2.4.12";
pub const ICD10_SYSTEM: &str = "http://hl7.org/fhir/sid/icd-10";

/// The ValueSet of the default chronic conditions.
pub const CHRONIC_VALUESET: &str = "http://carebridge.example.org/fhir/ValueSet/chronic-conditions";
/// The ValueSet of concepts that name one disease (wider/narrower translations to them are safe).
pub const SINGLE_DISEASE_VALUESET: &str =
    "http://carebridge.example.org/fhir/ValueSet/single-disease-concepts";

/// A (system, code) pair.
pub type Key = (String, String);

/// A list of conditions (`system|code` entries, an entry covering its hierarchy, or
/// `system|prefix*`), prepared for lookups: a code is checked with one hash lookup per prefix
/// length of its hierarchy, not against every entry.
#[derive(Debug, Clone, Default)]
pub struct CodeList {
    /// System to codes, canonical ([`canonical`]).
    codes: HashMap<String, HashSet<String>>,
    /// `system|prefix*` entries, canonical.
    prefixes: Vec<Key>,
    entries: usize,
}

impl CodeList {
    /// From `system|code` / `system|prefix*` entries (entries without `|` are ignored: the
    /// configuration refuses them).
    pub fn new(entries: &[String]) -> CodeList {
        let mut out = CodeList::default();
        for e in entries {
            let Some((s, c)) = e.split_once('|') else {
                continue;
            };
            out.entries += 1;
            match c.strip_suffix('*') {
                Some(prefix) => {
                    let (ks, kc) = canonical(s, prefix);
                    // An ICD-10 prefix in its SKS-D form; any other as written.
                    let kc = if s == ICD10_SYSTEM {
                        kc
                    } else {
                        prefix.to_owned()
                    };
                    out.prefixes.push((ks, kc));
                }
                None => {
                    let (ks, kc) = canonical(s, c);
                    out.codes.entry(ks).or_default().insert(kc);
                }
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// How many entries it was made of.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether a canonical (system, code) is on the list: listed itself, below a listed SKS-D
    /// code of at least a category, or under a listed prefix.
    pub fn matches(&self, system: &str, code: &str) -> bool {
        if let Some(codes) = self.codes.get(system) {
            if codes.contains(code) {
                return true;
            }
            if by_prefix(system)
                && (MIN_CATEGORY_LEN..code.len())
                    .any(|n| code.get(..n).is_some_and(|p| codes.contains(p)))
            {
                return true;
            }
        }
        self.prefixes
            .iter()
            .any(|(s, p)| s == system && code.starts_with(p.as_str()))
    }
}

/// What `fhir-profiles/conditions/` says.
#[derive(Debug, Default)]
pub struct ConditionTerms {
    /// The default chronic list, as `system|code` entries (ICD-10 entries in their SKS-D form).
    chronic_entries: Vec<String>,
    chronic: CodeList,
    /// Concepts naming one disease (ICD-10 in its SKS-D form).
    single_disease: HashSet<Key>,
}

/// An ICD-10 code as SKS-D (`E11.9` → `DE119`); other systems as they are.
pub fn canonical(system: &str, code: &str) -> Key {
    if system == ICD10_SYSTEM {
        let c: String = code
            .trim()
            .chars()
            .filter(|c| *c != '.')
            .collect::<String>()
            .to_ascii_uppercase();
        return (SKSD_SYSTEM.to_owned(), format!("D{c}"));
    }
    (system.to_owned(), code.trim().to_owned())
}

/// Whether the system's codes form a hierarchy by prefix (after [`canonical`]).
fn by_prefix(system: &str) -> bool {
    system == SKSD_SYSTEM
}

/// SKS-D codes name at least an ICD-10 category from four characters on (`DE11`).
const MIN_CATEGORY_LEN: usize = 4;

/// Two canonical keys are one condition: equal, or in a prefix hierarchy with the shorter at
/// least a category.
pub fn related(a: &Key, b: &Key) -> bool {
    if a.0 != b.0 {
        return false;
    }
    if a.1 == b.1 {
        return true;
    }
    if !by_prefix(&a.0) {
        return false;
    }
    let (short, long) = if a.1.len() < b.1.len() {
        (&a.1, &b.1)
    } else {
        (&b.1, &a.1)
    };
    short.len() >= MIN_CATEGORY_LEN && long.starts_with(short.as_str())
}

/// Whether two key sets share a condition ([`related`]).
pub fn same_condition(a: &BTreeSet<Key>, b: &BTreeSet<Key>) -> bool {
    a.iter().any(|x| b.iter().any(|y| related(x, y)))
}

/// `system|code` matches a list entry `system|code` (its hierarchy too, for SKS-D and ICD-10) or
/// `system|prefix*`.
pub fn matches_entry(entry: &str, system: &str, code: &str) -> bool {
    let Some((s, c)) = entry.split_once('|') else {
        return false;
    };
    if let Some(prefix) = c.strip_suffix('*') {
        let (es, ep) = canonical(s, prefix);
        let (ks, kc) = canonical(system, code);
        // An ICD-10 prefix is written without the `D` of its SKS-D form.
        let ep = if s == ICD10_SYSTEM {
            ep
        } else {
            prefix.to_owned()
        };
        return es == ks && kc.starts_with(ep.as_str());
    }
    related(&canonical(s, c), &canonical(system, code))
}

impl ConditionTerms {
    /// Reads `<profiles_dir>/conditions/*.json` (none when the folder is missing).
    pub fn load(profiles_dir: &Path) -> Result<ConditionTerms, MappingError> {
        let mut out = ConditionTerms::default();
        for file in json_files(&profiles_dir.join("conditions"))? {
            out.file(&file)?;
        }
        out.chronic_entries.sort();
        out.chronic_entries.dedup();
        out.chronic = CodeList::new(&out.chronic_entries);
        Ok(out)
    }

    fn file(&mut self, file: &Path) -> Result<(), MappingError> {
        let doc = read_object(file, "the document must be a FHIR ValueSet (a JSON object)")?;
        if resource_type(&doc) != Some("ValueSet") {
            return Err(error(
                file,
                "ValueSet.resourceType: conditions/ holds only ValueSets; set \"resourceType\": \
                 \"ValueSet\" or move the file out of conditions/",
            ));
        }
        let url = doc.get("url").and_then(Value::as_str).unwrap_or("");
        let keys = include_keys(file, &doc)?;
        match url {
            CHRONIC_VALUESET => self
                .chronic_entries
                .extend(keys.into_iter().map(|(s, c)| format!("{s}|{c}"))),
            SINGLE_DISEASE_VALUESET => self.single_disease.extend(keys),
            other => {
                return Err(error(
                    file,
                    format!(
                        "ValueSet.url: '{other}' is not one carebridge reads; use \
                         {CHRONIC_VALUESET} (the chronic list) or {SINGLE_DISEASE_VALUESET} \
                         (concepts that name one disease)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The default chronic list.
    pub fn chronic(&self) -> &CodeList {
        &self.chronic
    }

    /// Whether a concept names one disease (a wider/narrower translation to it is safe).
    pub fn single_disease(&self, system: &str, code: &str) -> bool {
        self.single_disease.contains(&canonical(system, code))
    }
}

/// The (system, code) pairs of `compose.include[].concept[]`, canonical.
fn include_keys(file: &Path, doc: &Value) -> Result<Vec<Key>, MappingError> {
    let includes = doc
        .pointer("/compose/include")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            error(
                file,
                "ValueSet.compose.include: missing; list the codes as compose.include[] with \
                 system and concept[].code",
            )
        })?;
    let mut out = Vec::new();
    for (i, inc) in includes.iter().enumerate() {
        let system = inc.get("system").and_then(Value::as_str).ok_or_else(|| {
            error(
                file,
                format!("ValueSet.compose.include[{i}].system: missing; name the code system"),
            )
        })?;
        let concepts = inc.get("concept").and_then(Value::as_array).ok_or_else(|| {
            error(
                file,
                format!(
                    "ValueSet.compose.include[{i}].concept: missing; list the codes (filters are \
                     not read)"
                ),
            )
        })?;
        for (j, c) in concepts.iter().enumerate() {
            let code = c.get("code").and_then(Value::as_str).ok_or_else(|| {
                error(
                    file,
                    format!(
                        "ValueSet.compose.include[{i}].concept[{j}].code: missing; give the code"
                    ),
                )
            })?;
            out.push(canonical(system, code));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str, c: &str) -> Key {
        canonical(s, c)
    }

    #[test]
    fn icd10_is_compared_as_sksd_and_both_by_prefix() {
        assert_eq!(k(ICD10_SYSTEM, "E11.9"), k(SKSD_SYSTEM, "DE119"));
        assert!(related(&k(SKSD_SYSTEM, "DE11"), &k(SKSD_SYSTEM, "DE119")));
        assert!(related(&k(ICD10_SYSTEM, "E11"), &k(SKSD_SYSTEM, "DE112")));
        assert!(!related(&k(SKSD_SYSTEM, "DE10"), &k(SKSD_SYSTEM, "DE119")));
        // A chapter is not a condition.
        assert!(!related(&k(SKSD_SYSTEM, "DE1"), &k(SKSD_SYSTEM, "DE119")));
        // ICPC-2 and SNOMED CT match exactly.
        let icpc = "urn:oid:1.2.208.176.2.31";
        assert!(!related(&k(icpc, "T9"), &k(icpc, "T90")));
    }

    #[test]
    fn list_entries_cover_their_hierarchy() {
        assert!(matches_entry(
            "urn:oid:1.2.208.176.2.4.12|DE03",
            ICD10_SYSTEM,
            "E03.9"
        ));
        assert!(matches_entry(
            "http://hl7.org/fhir/sid/icd-10|I50",
            SKSD_SYSTEM,
            "DI500"
        ));
        assert!(matches_entry(
            "urn:oid:1.2.208.176.2.4.12|DE11*",
            SKSD_SYSTEM,
            "DE112"
        ));
        assert!(matches_entry(
            "http://hl7.org/fhir/sid/icd-10|J4*",
            ICD10_SYSTEM,
            "J44.9"
        ));
        assert!(!matches_entry("s|T90", "s", "T9"));
        assert!(!matches_entry("s|T90", "t", "T90"));
    }

    #[test]
    fn a_code_list_agrees_with_its_entries() {
        let entries: Vec<String> = [
            "urn:oid:1.2.208.176.2.4.12|DE03",
            "http://hl7.org/fhir/sid/icd-10|I50",
            "urn:oid:1.2.208.176.2.4.12|DE11*",
            "http://hl7.org/fhir/sid/icd-10|J4*",
            "s|T90",
        ]
        .map(String::from)
        .to_vec();
        let list = CodeList::new(&entries);
        for (system, code) in [
            (ICD10_SYSTEM, "E03.9"),
            (SKSD_SYSTEM, "DI500"),
            (SKSD_SYSTEM, "DE112"),
            (ICD10_SYSTEM, "J44.9"),
            ("s", "T90"),
            ("s", "T9"),
            (SKSD_SYSTEM, "DE1"),
            (SKSD_SYSTEM, "DE10"),
        ] {
            let (ks, kc) = canonical(system, code);
            let by_entries = entries.iter().any(|e| matches_entry(e, system, code));
            assert_eq!(list.matches(&ks, &kc), by_entries, "{system}|{code}");
        }
    }

    #[test]
    fn the_shipped_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fhir-profiles");
        let t = ConditionTerms::load(&dir).unwrap();
        assert!(t.chronic().len() > 60);
        assert!(t.single_disease("urn:oid:1.2.208.176.2.31", "T90"));
        assert!(!t.single_disease("urn:oid:1.2.208.176.2.31", "U99"));
    }
}
