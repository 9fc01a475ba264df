//! Medication knowledge for the duplicate-medication detectors: which active ingredients a drug
//! code contains (as ATC level-5 codes) and which route family a medication order or statement
//! belongs to.
//!
//! The knowledge is read once from `fhir-profiles/medications/*.json` ([`MedKnowledge::load`]):
//! FHIR R4 ConceptMaps whose groups map a drug code system (RxNorm, a national product code, ATC
//! itself) to ATC (`http://www.whocc.no/atc`: the product's active ingredients, one target each)
//! or to the project's route-family code system ([`ROUTE_FAMILY_SYSTEM`]: the product's route
//! family, or the family of a route code), plus two CodeSystems: the one that defines the
//! families, and a fragment of ATC that names its codes.
//! The format is documented in `fhir-profiles/README.md`, section "medications/".
//! The ConceptMaps are read by the ConceptMap reader that `mapping` uses too (`conceptmap.rs`:
//! the same rules and messages); the CodeSystems are read here (`CodeSystem`).
//!
//! After loading, everything is a lookup in hash maps; nothing here does IO.
//!
//! - **Ingredients.** Every coding of a CodeableConcept is tried: an ATC code with an entry in an
//!   ATC → ATC group (a combination code such as R03AK06) gives that entry's ingredients; any
//!   other ATC level-5 code is its own ingredient; a level-4 (or shorter) ATC code is a class and
//!   gives none; a code of another system gives the ATC targets of its entries. Targets are not
//!   chained. The result is de-duplicated by ATC code and sorted. An ingredient's name is the
//!   knowledge's name for its code (the ATC CodeSystem fragment, else the first map target that
//!   displays it), else the code itself: never the sender's display, so equal codes are equal
//!   [`Ingredient`]s whichever sector sent them.
//! - **Route family.** The first route coding of the dosage that the knowledge knows, else the
//!   family recorded for the product (its non-ATC codings, then a contained Medication's
//!   `form`), else the family that the ATC classes of its ATC codes and ingredients name (an ATC
//!   code is looked up at its own length and then at each shorter level: the longest listed class
//!   wins), else [`RouteFamily::Unknown`], which callers treat as systemic.

use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::conceptmap::{Flavour, MapElement, MapGroup, Reader};
use super::de::{Text, objects, present, typed};
use super::files::{MappingError, error, json_files, read_object, resource_type};

/// The ATC classification (WHO).
pub const ATC_SYSTEM: &str = "http://www.whocc.no/atc";

/// The project's route families (`fhir-profiles/medications/route-family.json`).
pub const ROUTE_FAMILY_SYSTEM: &str = "http://carebridge.example.org/fhir/CodeSystem/route-family";

/// The lengths of ATC codes at levels 5, 4, 3, 2 and 1 (e.g. C03CA01, C03CA, C03C, C03, C).
const ATC_LEVEL_LENGTHS: [usize; 5] = [7, 5, 4, 3, 1];

/// One active ingredient: its ATC level-5 code and a name for people. The name is a function of
/// the code (the knowledge's name for it, else the code), so two ingredients are equal exactly
/// when their codes are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ingredient {
    /// ATC level 5, e.g. C03CA01.
    pub atc: String,
    pub name: String,
}

/// Where a medication goes in, coarsely: the same ingredient in two families (a cream and a
/// tablet) is not a duplicate. `Unknown` means neither the route nor the product says; callers
/// treat it as `Systemic` ([`RouteFamily::or_systemic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteFamily {
    Systemic,
    Topical,
    Inhaled,
    Ophthalmic,
    Otic,
    Nasal,
    Rectal,
    Vaginal,
    Unknown,
}

impl RouteFamily {
    /// The families that have a code in [`ROUTE_FAMILY_SYSTEM`] (all but `Unknown`).
    pub const KNOWN: [RouteFamily; 8] = [
        RouteFamily::Systemic,
        RouteFamily::Topical,
        RouteFamily::Inhaled,
        RouteFamily::Ophthalmic,
        RouteFamily::Otic,
        RouteFamily::Nasal,
        RouteFamily::Rectal,
        RouteFamily::Vaginal,
    ];

    /// The family's code in [`ROUTE_FAMILY_SYSTEM`]; `None` for `Unknown`.
    pub fn code(self) -> Option<&'static str> {
        Some(match self {
            RouteFamily::Systemic => "systemic",
            RouteFamily::Topical => "topical",
            RouteFamily::Inhaled => "inhaled",
            RouteFamily::Ophthalmic => "ophthalmic",
            RouteFamily::Otic => "otic",
            RouteFamily::Nasal => "nasal",
            RouteFamily::Rectal => "rectal",
            RouteFamily::Vaginal => "vaginal",
            RouteFamily::Unknown => return None,
        })
    }

    pub fn from_code(code: &str) -> Option<RouteFamily> {
        RouteFamily::KNOWN
            .into_iter()
            .find(|f| f.code() == Some(code))
    }

    /// `Unknown` counts as `Systemic` when two orders are compared; every other family is itself.
    pub fn or_systemic(self) -> RouteFamily {
        match self {
            RouteFamily::Unknown => RouteFamily::Systemic,
            known => known,
        }
    }
}

/// Whether `code` has the shape of an ATC level-5 code: letter, two digits, two letters, two
/// digits (C03CA01).
pub fn is_atc_level5(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 7
        && b[0].is_ascii_uppercase()
        && b[1..3].iter().all(u8::is_ascii_digit)
        && b[3..5].iter().all(u8::is_ascii_uppercase)
        && b[5..7].iter().all(u8::is_ascii_digit)
}

/// Whether `code` has the shape of an ATC code of any level (C, C03, C03C, C03CA, C03CA01).
fn is_atc_any_level(code: &str) -> bool {
    let b = code.as_bytes();
    let shape_ok = |i: usize, c: &u8| match i {
        0 | 3 | 4 => c.is_ascii_uppercase(),
        _ => c.is_ascii_digit(),
    };
    ATC_LEVEL_LENGTHS.contains(&b.len()) && b.iter().enumerate().all(|(i, c)| shape_ok(i, c))
}

/// ATC codes are upper case; senders sometimes write them otherwise or with spaces around.
fn normalise_atc(code: &str) -> String {
    code.trim().to_ascii_uppercase()
}

#[derive(Debug, Default)]
struct Inner {
    /// Source system, then source code, to the ATC level-5 codes of its ingredients. An entry with
    /// no codes is an explicit "no ingredient" (every target `unmatched`).
    ingredients: HashMap<String, HashMap<String, Vec<String>>>,
    /// ATC code to its name: from the ATC CodeSystem fragment, else the first target display
    /// loaded for it.
    names: HashMap<String, String>,
    /// Source system, then source code, to a route family (ATC codes: classes of any level).
    families: HashMap<String, HashMap<String, RouteFamily>>,
}

/// The loaded medication knowledge. Cheap to clone (shared), `Send + Sync`.
#[derive(Debug, Clone, Default)]
pub struct MedKnowledge {
    inner: Arc<Inner>,
}

impl MedKnowledge {
    /// No maps: ATC level-5 codes still resolve to themselves; every route family is `Unknown`.
    pub fn empty() -> MedKnowledge {
        MedKnowledge::default()
    }

    /// Reads `<profiles_dir>/medications/*.json` (a missing folder means empty knowledge). An
    /// error names the file, the element path and the fix.
    pub fn load(profiles_dir: &Path) -> Result<MedKnowledge, MappingError> {
        let mut loader = Loader {
            inner: Inner::default(),
            reader: Reader::new(&MEDICATION_MAPS),
            family_files: HashMap::new(),
            maps: 0,
        };
        for file in json_files(&profiles_dir.join("medications"))? {
            loader.file(&file)?;
        }
        let Loader { inner, maps, .. } = loader;
        tracing::info!(
            concept_maps = maps,
            ingredient_entries = inner.ingredients.values().map(HashMap::len).sum::<usize>(),
            atc_names = inner.names.len(),
            route_family_entries = inner.families.values().map(HashMap::len).sum::<usize>(),
            "medication knowledge loaded"
        );
        Ok(MedKnowledge {
            inner: Arc::new(inner),
        })
    }

    /// Active ingredients of a medication CodeableConcept (every coding tried: ATC level 5
    /// directly, others through the maps; de-duplicated by ATC code, sorted by it).
    pub fn ingredients(&self, concept: &Value) -> Vec<Ingredient> {
        let mut found: BTreeMap<String, String> = BTreeMap::new();
        for coding in codings(concept) {
            let Some((system, code)) = system_and_code(coding) else {
                continue;
            };
            if system == ATC_SYSTEM {
                let code = normalise_atc(code);
                if let Some(list) = self.mapped(ATC_SYSTEM, &code) {
                    for atc in list {
                        self.add(&mut found, atc);
                    }
                } else if is_atc_level5(&code) {
                    self.add(&mut found, &code);
                }
            } else if let Some(list) = self.mapped(system, code) {
                for atc in list {
                    self.add(&mut found, atc);
                }
            }
        }
        found
            .into_iter()
            .map(|(atc, name)| Ingredient { atc, name })
            .collect()
    }

    /// The route family of a MedicationRequest/MedicationStatement (or a MedicationDispense or
    /// MedicationAdministration): from the codings of `dosageInstruction[].route` /
    /// `dosage[].route` (SNOMED CT route codes such as 26643006 oral, 6064005 topical,
    /// 18679011000001101 inhalation, 54485002 ophthalmic, 47625008 intravenous) when the
    /// knowledge knows one, else from the product's recorded family (the codings of `concept`
    /// other than ATC, then the `form` of a contained Medication that `medicationReference`
    /// points at), else from the ATC classes of `concept`'s ATC codes and ingredients when they
    /// name one family, else `Unknown`. Unknown is treated as systemic by callers
    /// ([`RouteFamily::or_systemic`]).
    pub fn route_family(&self, resource: &Value, concept: &Value) -> RouteFamily {
        for dosage in dosages(resource) {
            let Some(route) = dosage.get("route") else {
                continue;
            };
            if let Some(family) = codings(route).find_map(|c| self.exact_family(c)) {
                return family;
            }
        }
        let non_atc = codings(concept)
            .filter(|c| c.get("system").and_then(Value::as_str) != Some(ATC_SYSTEM));
        let form = contained_medication(resource)
            .and_then(|m| m.get("form"))
            .into_iter()
            .flat_map(codings);
        if let Some(family) = non_atc.chain(form).find_map(|c| self.exact_family(c)) {
            return family;
        }
        let mut atc_codes: Vec<String> = codings(concept)
            .filter_map(system_and_code)
            .filter(|(s, _)| *s == ATC_SYSTEM)
            .map(|(_, c)| normalise_atc(c))
            .filter(|c| is_atc_any_level(c))
            .collect();
        atc_codes.extend(self.ingredients(concept).into_iter().map(|i| i.atc));
        let mut family = None;
        for code in &atc_codes {
            match (family, self.atc_class_family(code)) {
                (_, None) => {}
                (None, Some(f)) => family = Some(f),
                (Some(a), Some(b)) if a == b => {}
                // The classes disagree: the ATC codes do not settle the route.
                (Some(_), Some(_)) => return RouteFamily::Unknown,
            }
        }
        family.unwrap_or(RouteFamily::Unknown)
    }

    /// ATC level 4 (first 5 characters) of an ingredient — the therapeutic/chemical class used
    /// for DUPTHPCLS.
    pub fn class_of(ingredient: &Ingredient) -> String {
        ingredient.atc.chars().take(5).collect()
    }

    /// The knowledge's name for an ATC code (of any level it names), e.g. "furosemide".
    pub fn atc_name(&self, code: &str) -> Option<&str> {
        self.inner.names.get(code).map(String::as_str)
    }

    fn mapped(&self, system: &str, code: &str) -> Option<&Vec<String>> {
        self.inner.ingredients.get(system)?.get(code)
    }

    fn add(&self, found: &mut BTreeMap<String, String>, atc: &str) {
        if !found.contains_key(atc) {
            let name = self.atc_name(atc).unwrap_or(atc);
            found.insert(atc.to_owned(), name.to_owned());
        }
    }

    /// The family recorded for exactly this (system, code).
    fn exact_family(&self, coding: &Value) -> Option<RouteFamily> {
        let (system, code) = system_and_code(coding)?;
        let codes = self.inner.families.get(system)?;
        if system == ATC_SYSTEM {
            codes.get(&normalise_atc(code)).copied()
        } else {
            codes.get(code).copied()
        }
    }

    /// The family of the longest ATC class of `code` (itself included) that the knowledge lists.
    fn atc_class_family(&self, code: &str) -> Option<RouteFamily> {
        let codes = self.inner.families.get(ATC_SYSTEM)?;
        ATC_LEVEL_LENGTHS
            .iter()
            .filter(|&&n| n <= code.len())
            .find_map(|&n| code.get(..n).and_then(|prefix| codes.get(prefix)))
            .copied()
    }
}

/// The medication CodeableConcept of a MedicationRequest/MedicationStatement (or Dispense,
/// Administration): `medicationCodeableConcept`, or the `code` of the contained Medication that
/// `medicationReference` points at (`#id`). For a Medication resource, its `code`. `None` when
/// the medication is a reference to a resource outside this one (the caller resolves it).
pub fn concept_of(resource: &Value) -> Option<&Value> {
    if resource.get("resourceType").and_then(Value::as_str) == Some("Medication") {
        return resource.get("code").filter(|c| c.is_object());
    }
    if let Some(cc) = resource
        .get("medicationCodeableConcept")
        .filter(|c| c.is_object())
    {
        return Some(cc);
    }
    contained_medication(resource)?
        .get("code")
        .filter(|c| c.is_object())
}

/// The contained Medication that `medicationReference.reference` (`#id`) points at.
fn contained_medication(resource: &Value) -> Option<&Value> {
    let reference = resource
        .get("medicationReference")?
        .get("reference")?
        .as_str()?;
    let id = reference.strip_prefix('#')?;
    resource.get("contained")?.as_array()?.iter().find(|c| {
        c.get("resourceType").and_then(Value::as_str) == Some("Medication")
            && c.get("id").and_then(Value::as_str) == Some(id)
    })
}

/// The Dosage elements of a resource: `dosageInstruction[]` (MedicationRequest,
/// MedicationDispense), `dosage[]` (MedicationStatement) or `dosage` (MedicationAdministration).
fn dosages(resource: &Value) -> impl Iterator<Item = &Value> {
    ["dosageInstruction", "dosage"]
        .into_iter()
        .filter_map(|key| resource.get(key))
        .flat_map(|v| match v {
            Value::Array(items) => items.iter().collect::<Vec<_>>(),
            Value::Object(_) => vec![v],
            _ => Vec::new(),
        })
}

/// The codings of a CodeableConcept (nothing when it is not one).
fn codings(concept: &Value) -> impl Iterator<Item = &Value> {
    concept
        .get("coding")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn system_and_code(coding: &Value) -> Option<(&str, &str)> {
    Some((
        coding.get("system")?.as_str()?,
        coding.get("code")?.as_str()?,
    ))
}

// ---- loading ----------------------------------------------------------------------------------

/// How `medications/` words the fixes of the ConceptMap reader; ATC source codes are compared
/// normalised.
static MEDICATION_MAPS: Flavour = Flavour {
    what: "medication ConceptMap",
    source_fix: "name the source code system by its canonical URI (e.g. \
                 http://www.nlm.nih.gov/research/umls/rxnorm)",
    target_fix: "name the target code system (http://www.whocc.no/atc or \
                 http://carebridge.example.org/fhir/CodeSystem/route-family)",
    unmapped: "carebridge knows only the codes listed",
    conditional: |key| {
        format!(
            "carebridge would apply the target unconditionally; remove {key}, and list each \
             ingredient as a target of its own"
        )
    },
    no_code_fix: "give the target code, or use equivalence unmatched for a product without this \
                  kind of target",
    source_code: |system, code| {
        if system == ATC_SYSTEM {
            normalise_atc(code)
        } else {
            code.to_owned()
        }
    },
};

/// What a group maps into.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GroupKind {
    /// Drug code (or ATC combination) to its ingredients.
    Ingredients,
    /// Drug, route or ATC class code to a route family.
    RouteFamily,
}

/// The knowledge being loaded, and what earlier files said.
struct Loader {
    inner: Inner,
    reader: Reader,
    /// (source system, source code) to the file that gave its route family.
    family_files: HashMap<(String, String), PathBuf>,
    /// Active ConceptMaps read.
    maps: usize,
}

impl Loader {
    /// Adds one file of `medications/`: a ConceptMap, or one of the two CodeSystems.
    fn file(&mut self, file: &Path) -> Result<(), MappingError> {
        let doc = read_object(
            file,
            "the document must be a JSON object: a FHIR ConceptMap resource (or the route-family \
             CodeSystem)",
        )?;
        match resource_type(&doc) {
            Some("ConceptMap") => self.concept_map(file, &doc),
            Some("CodeSystem") => self.code_system(file, &doc),
            _ => Err(error(
                file,
                "resourceType: medications/ holds ConceptMap resources and the route-family and \
                 ATC CodeSystems only; set \"resourceType\": \"ConceptMap\" or move the file out \
                 of medications/",
            )),
        }
    }

    fn concept_map(&mut self, file: &Path, doc: &Value) -> Result<(), MappingError> {
        let Some(groups) = self.reader.read(file, doc)? else {
            return Ok(());
        };
        self.maps += 1;
        for group in groups {
            let kind = group_kind(file, &group)?;
            for element in group.elements {
                if group.source == ATC_SYSTEM {
                    check_atc_source(file, &element, kind)?;
                }
                match kind {
                    GroupKind::Ingredients => self.ingredients(file, &group.source, element)?,
                    GroupKind::RouteFamily => self.family(file, &group.source, element)?,
                }
            }
        }
        Ok(())
    }

    /// Records the ingredients of one element (none: the code has no ingredient) and the names
    /// its targets display.
    fn ingredients(
        &mut self,
        file: &Path,
        source: &str,
        element: MapElement,
    ) -> Result<(), MappingError> {
        let list = self
            .inner
            .ingredients
            .entry(source.to_owned())
            .or_default()
            .entry(element.code)
            .or_default();
        for target in element.targets {
            let atc = target.code;
            if !is_atc_level5(&atc) {
                return Err(error(
                    file,
                    format!(
                        "{}.code is not an ATC level-5 code (7 characters such as C03CA01); an \
                         ingredient is a level-5 code, a level-4 code is a class",
                        target.path
                    ),
                ));
            }
            if let Some(name) = target.display {
                self.inner.names.entry(atc.clone()).or_insert(name);
            }
            if !list.contains(&atc) {
                list.push(atc);
            }
        }
        Ok(())
    }

    /// Records the route family of one element: one family per code, in every file.
    fn family(
        &mut self,
        file: &Path,
        source: &str,
        element: MapElement,
    ) -> Result<(), MappingError> {
        let Some(family) = element_family(file, &element)? else {
            return Ok(());
        };
        let codes = self.inner.families.entry(source.to_owned()).or_default();
        let key = (source.to_owned(), element.code.clone());
        match codes.get(&element.code) {
            Some(earlier) if *earlier != family => {
                let other = self.family_files.get(&key).map_or(file, PathBuf::as_path);
                Err(error(
                    file,
                    format!(
                        "{}: {} gives this code another route family; make the two agree",
                        element.path,
                        other.display()
                    ),
                ))
            }
            Some(_) => Ok(()),
            None => {
                codes.insert(element.code, family);
                self.family_files.insert(key, file.to_path_buf());
                Ok(())
            }
        }
    }

    /// A CodeSystem in medications/ is either the route-family one (which may define no other
    /// codes than carebridge's families) or ATC (names of ATC codes; a fragment is enough).
    fn code_system(&mut self, file: &Path, doc: &Value) -> Result<(), MappingError> {
        let url: CodeSystemUrl = typed(file, "CodeSystem", doc, &code_system_fix)?;
        match url.url.0.as_str() {
            ROUTE_FAMILY_SYSTEM => {
                let cs: CodeSystem<FamilyConcept> =
                    typed(file, "CodeSystem", doc, &code_system_fix)?;
                cs.concept
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, c)| c.check(file, i))
            }
            ATC_SYSTEM => {
                let cs: CodeSystem<AtcConcept> = typed(file, "CodeSystem", doc, &code_system_fix)?;
                for (i, concept) in cs.concept.into_iter().enumerate() {
                    concept.check(file, i)?;
                    // The CodeSystem's names win over the displays of map targets.
                    self.inner.names.insert(concept.code.0, concept.display.0);
                }
                Ok(())
            }
            _ => Err(error(
                file,
                format!(
                    "CodeSystem.url: the CodeSystems in medications/ are {ROUTE_FAMILY_SYSTEM} \
                     and {ATC_SYSTEM} (names of ATC codes); move other code systems out of the \
                     folder"
                ),
            )),
        }
    }
}

/// What a group maps into, from its target system.
fn group_kind(file: &Path, group: &MapGroup) -> Result<GroupKind, MappingError> {
    match group.target.as_str() {
        ATC_SYSTEM => Ok(GroupKind::Ingredients),
        ROUTE_FAMILY_SYSTEM => Ok(GroupKind::RouteFamily),
        _ => Err(error(
            file,
            format!(
                "{}.target: medications/ maps drug codes to their ingredients ({ATC_SYSTEM}) or \
                 to route families ({ROUTE_FAMILY_SYSTEM}); put translations between other code \
                 systems in conceptmaps/",
                group.path
            ),
        )),
    }
}

/// Checks an ATC source code (already normalised): a combination (level 5) in an ingredient
/// group, a class of any level in a route-family group.
fn check_atc_source(
    file: &Path,
    element: &MapElement,
    kind: GroupKind,
) -> Result<(), MappingError> {
    let (code, epath) = (&element.code, &element.path);
    match kind {
        GroupKind::Ingredients if !is_atc_level5(code) => Err(error(
            file,
            format!(
                "{epath}.code is not an ATC level-5 code; an ATC → ATC group maps the level-5 \
                 code of a combination (e.g. R03AK06) to its ingredients"
            ),
        )),
        GroupKind::RouteFamily if !is_atc_any_level(code) => Err(error(
            file,
            format!(
                "{epath}.code is not an ATC code; give an ATC class of any level (S01, R03A, \
                 D07AC) or a level-5 code"
            ),
        )),
        _ => Ok(()),
    }
}

/// The one route family the targets of an element give; `None` when they give none.
fn element_family(file: &Path, element: &MapElement) -> Result<Option<RouteFamily>, MappingError> {
    let mut family = None;
    for target in &element.targets {
        let Some(f) = RouteFamily::from_code(&target.code) else {
            return Err(error(
                file,
                format!(
                    "{}.code is not a route family; use one of {}",
                    target.path,
                    family_codes()
                ),
            ));
        };
        if family.is_some_and(|g| g != f) {
            return Err(error(
                file,
                format!(
                    "{}: the element already has another route family; give one family per code",
                    target.path
                ),
            ));
        }
        family = Some(f);
    }
    Ok(family)
}

fn family_codes() -> String {
    RouteFamily::KNOWN
        .iter()
        .filter_map(|f| f.code())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `url` of a CodeSystem, which says which of the two it is.
#[derive(Deserialize)]
struct CodeSystemUrl {
    url: Text,
}

/// The concepts of a CodeSystem (other elements are ignored).
#[derive(Deserialize)]
#[serde(bound = "C: Deserialize<'de>")]
struct CodeSystem<C> {
    #[serde(default, deserialize_with = "objects")]
    concept: Vec<C>,
}

/// A concept of the route-family CodeSystem.
#[derive(Deserialize)]
struct FamilyConcept {
    code: Text,
    #[serde(default, rename = "concept", deserialize_with = "present")]
    nested: bool,
}

/// A concept of the ATC CodeSystem: a code of any level and its name.
#[derive(Deserialize)]
struct AtcConcept {
    code: Text,
    display: Text,
    #[serde(default, rename = "concept", deserialize_with = "present")]
    nested: bool,
}

impl FamilyConcept {
    fn check(&self, file: &Path, i: usize) -> Result<(), MappingError> {
        check_flat(file, i, self.nested)?;
        if RouteFamily::from_code(&self.code.0).is_none() {
            return Err(error(
                file,
                format!(
                    "CodeSystem.concept[{i}].code is not a family carebridge knows; the families \
                     are {}",
                    family_codes()
                ),
            ));
        }
        Ok(())
    }
}

impl AtcConcept {
    fn check(&self, file: &Path, i: usize) -> Result<(), MappingError> {
        check_flat(file, i, self.nested)?;
        if !is_atc_any_level(&self.code.0) {
            return Err(error(
                file,
                format!(
                    "CodeSystem.concept[{i}].code is not an ATC code (C, C03, C03C, C03CA or \
                     C03CA01)"
                ),
            ));
        }
        Ok(())
    }
}

fn check_flat(file: &Path, i: usize, nested: bool) -> Result<(), MappingError> {
    if nested {
        return Err(error(
            file,
            format!("CodeSystem.concept[{i}].concept: list the codes flat; remove the nesting"),
        ));
    }
    Ok(())
}

/// The fixes of CodeSystem paths (see [`super::de::Fixes`]).
fn code_system_fix(pattern: &str) -> Option<&'static str> {
    Some(match pattern {
        "url" => {
            "medications/ holds the CodeSystems \
             http://carebridge.example.org/fhir/CodeSystem/route-family and \
             http://www.whocc.no/atc (names of ATC codes) only"
        }
        "concept" => "list the concepts as an array of objects",
        "concept[]" => "write it as a JSON object",
        "concept[].code" => "give the concept's code",
        "concept[].display" => "give the code's name (WHO's name, e.g. furosemide)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RX: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
    const SCT: &str = "http://snomed.info/sct";

    fn cm(url: &str, groups: Value) -> Value {
        json!({"resourceType": "ConceptMap", "url": url, "status": "active", "group": groups})
    }

    fn ing(code: &str, display: &str, eq: &str) -> Value {
        json!({"code": code, "display": display, "equivalence": eq})
    }

    fn fam(code: &str) -> Value {
        json!([{"code": code, "equivalence": "wider"}])
    }

    fn write(dir: &Path, rel: &str, doc: &Value) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, serde_json::to_vec_pretty(doc).expect("json")).expect("write");
    }

    /// A small knowledge: two RxNorm products of one ingredient in two forms, a combination, an
    /// explicit no-ingredient code, an ATC combination, ATC classes and SNOMED routes.
    fn test_maps() -> Value {
        cm(
            "http://carebridge.example.org/fhir/ConceptMap/test-meds",
            json!([
                {"source": RX, "target": ATC_SYSTEM, "element": [
                    {"code": "100", "display": "Drug A 10 MG Oral Tablet", "target": [ing("A01AA01", "alpha", "wider")]},
                    {"code": "101", "display": "Drug A 1 MG/ML Topical Cream", "target": [ing("A01AA01", "alpha (skin)", "wider")]},
                    {"code": "200", "display": "Drug A / Drug B Oral Tablet", "target": [
                        ing("A01AA01", "alpha", "relatedto"), ing("B02BB02", "beta", "relatedto"),
                        {"equivalence": "unmatched", "comment": "gamma has no plain ATC code"}
                    ]},
                    {"code": "300", "display": "Some device", "target": [{"equivalence": "unmatched", "comment": "no active ingredient"}]}
                ]},
                {"source": RX, "target": ROUTE_FAMILY_SYSTEM, "element": [
                    {"code": "100", "target": fam("systemic")},
                    {"code": "101", "target": fam("topical")}
                ]},
                {"source": ATC_SYSTEM, "target": ATC_SYSTEM, "element": [
                    {"code": "R03AK06", "display": "salmeterol and fluticasone", "target": [
                        ing("R03AC12", "salmeterol", "relatedto"), ing("R03BA05", "fluticasone", "relatedto")
                    ]},
                    {"code": "V99ZZ99", "target": [{"equivalence": "unmatched", "comment": "nothing"}]}
                ]},
                {"source": ATC_SYSTEM, "target": ROUTE_FAMILY_SYSTEM, "element": [
                    {"code": "R03", "target": fam("systemic")},
                    {"code": "R03A", "target": fam("inhaled")},
                    {"code": "R03B", "target": fam("inhaled")},
                    {"code": "D07", "target": fam("topical")},
                    {"code": "S01", "target": fam("ophthalmic")}
                ]},
                {"source": SCT, "target": ROUTE_FAMILY_SYSTEM, "element": [
                    {"code": "26643006", "target": fam("systemic")},
                    {"code": "6064005", "target": fam("topical")},
                    {"code": "54485002", "target": fam("ophthalmic")}
                ]}
            ]),
        )
    }

    fn knowledge() -> MedKnowledge {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "medications/test.json", &test_maps());
        MedKnowledge::load(dir.path()).expect("knowledge loads")
    }

    fn cc(codings: &[(&str, &str)]) -> Value {
        json!({"coding": codings.iter().map(|(s, c)| json!({"system": s, "code": c})).collect::<Vec<_>>()})
    }

    fn atcs(list: &[Ingredient]) -> Vec<&str> {
        list.iter().map(|i| i.atc.as_str()).collect()
    }

    fn request(concept: &Value, route: Option<(&str, &str)>) -> Value {
        let mut r =
            json!({"resourceType": "MedicationRequest", "medicationCodeableConcept": concept});
        if let Some((s, c)) = route {
            r["dosageInstruction"] =
                json!([{"text": "x"}, {"route": {"coding": [{"system": s, "code": c}]}}]);
        }
        r
    }

    #[test]
    fn knowledge_is_shareable() {
        // Compiles only if the type is Clone + Send + Sync + Debug.
        struct Shareable<T: Clone + Send + Sync + std::fmt::Debug>(T);
        let _ = Shareable(MedKnowledge::empty());
    }

    #[test]
    fn atc_shapes() {
        assert!(is_atc_level5("C03CA01"));
        for bad in [
            "C03CA", "c03ca01", "C03CA1", "C03CA011", "CX3CA01", "C03C101", "",
        ] {
            assert!(!is_atc_level5(bad), "{bad}");
        }
        for ok in ["C", "C03", "C03C", "C03CA", "C03CA01"] {
            assert!(is_atc_any_level(ok), "{ok}");
        }
        for bad in ["C0", "C03CA0", "3", "C03c", "C03CA01X"] {
            assert!(!is_atc_any_level(bad), "{bad}");
        }
    }

    #[test]
    fn empty_knowledge_resolves_atc_level5_only() {
        let k = MedKnowledge::empty();
        let concept = json!({"coding": [
            {"system": ATC_SYSTEM, "code": "C03CA01", "display": "furosemide"},
            {"system": ATC_SYSTEM, "code": "C03CA", "display": "sulfonamides, plain"},
            {"system": RX, "code": "100"}
        ]});
        // Without knowledge the name is the code, never the sender's display.
        assert_eq!(
            k.ingredients(&concept),
            vec![Ingredient {
                atc: "C03CA01".into(),
                name: "C03CA01".into()
            }]
        );
        // Lower case and spaces around an ATC code are normalised.
        let concept = json!({"coding": [{"system": ATC_SYSTEM, "code": " n02be01 "}]});
        assert_eq!(
            k.ingredients(&concept),
            vec![Ingredient {
                atc: "N02BE01".into(),
                name: "N02BE01".into()
            }]
        );
        assert_eq!(
            k.route_family(&request(&concept, Some((SCT, "26643006"))), &concept),
            RouteFamily::Unknown
        );
    }

    #[test]
    fn combination_gives_every_ingredient_and_duplicates_collapse() {
        let k = knowledge();
        let combo = cc(&[(RX, "200")]);
        assert_eq!(atcs(&k.ingredients(&combo)), ["A01AA01", "B02BB02"]);
        // The same ingredient from an RxNorm and an ATC coding is one ingredient, named by the
        // knowledge (the first display loaded), not by the sender.
        let both = json!({"coding": [
            {"system": RX, "code": "100"},
            {"system": ATC_SYSTEM, "code": "A01AA01", "display": "Alpha 10 mg tablet"},
            {"system": RX, "code": "101"}
        ]});
        assert_eq!(
            k.ingredients(&both),
            vec![Ingredient {
                atc: "A01AA01".into(),
                name: "alpha".into()
            }]
        );
        assert_eq!(k.atc_name("B02BB02"), Some("beta"));
        assert_eq!(k.atc_name("Z99ZZ99"), None);
        // An explicit "no ingredient" and an unknown code both give none.
        assert!(k.ingredients(&cc(&[(RX, "300")])).is_empty());
        assert!(k.ingredients(&cc(&[(RX, "999")])).is_empty());
    }

    #[test]
    fn atc_combination_codes_resolve_to_their_ingredients() {
        let k = knowledge();
        let seretide = cc(&[(ATC_SYSTEM, "R03AK06")]);
        let ingredients = k.ingredients(&seretide);
        assert_eq!(atcs(&ingredients), ["R03AC12", "R03BA05"]);
        assert_eq!(ingredients[1].name, "fluticasone");
        assert!(k.ingredients(&cc(&[(ATC_SYSTEM, "V99ZZ99")])).is_empty());
        // Without an entry a level-5 combination code is its own ingredient.
        assert_eq!(
            atcs(&MedKnowledge::empty().ingredients(&seretide)),
            ["R03AK06"]
        );
    }

    #[test]
    fn the_atc_code_system_names_ingredients_before_the_maps_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "medications/a-maps.json", &test_maps());
        write(
            dir.path(),
            "medications/b-atc.json",
            &json!({"resourceType": "CodeSystem", "url": ATC_SYSTEM, "status": "active",
            "content": "fragment", "concept": [
                {"code": "A01AA01", "display": "alpha (WHO)"},
                {"code": "C10AA", "display": "HMG CoA reductase inhibitors"},
                {"code": "C10AA05", "display": "atorvastatin"}
            ]}),
        );
        let k = MedKnowledge::load(dir.path()).expect("loads");
        let got = k.ingredients(&json!({"coding": [
            {"system": RX, "code": "100"},
            {"system": ATC_SYSTEM, "code": "C10AA05", "display": "Atorvastatin 40 mg tablet"}
        ]}));
        assert_eq!(
            got,
            vec![
                Ingredient {
                    atc: "A01AA01".into(),
                    name: "alpha (WHO)".into()
                },
                Ingredient {
                    atc: "C10AA05".into(),
                    name: "atorvastatin".into()
                }
            ]
        );
        assert_eq!(k.atc_name("C10AA"), Some("HMG CoA reductase inhibitors"));
    }

    #[test]
    fn class_is_atc_level4() {
        let i = Ingredient {
            atc: "C03CA01".into(),
            name: "furosemide".into(),
        };
        assert_eq!(MedKnowledge::class_of(&i), "C03CA");
    }

    #[test]
    fn route_codings_come_first_then_the_product_then_atc_classes() {
        let k = knowledge();
        let tablet = cc(&[(RX, "100")]);
        let cream = cc(&[(RX, "101")]);
        // The product's recorded family.
        assert_eq!(
            k.route_family(&request(&tablet, None), &tablet),
            RouteFamily::Systemic
        );
        assert_eq!(
            k.route_family(&request(&cream, None), &cream),
            RouteFamily::Topical
        );
        // A known route coding wins over the product; an unknown one is skipped.
        assert_eq!(
            k.route_family(&request(&tablet, Some((SCT, "54485002"))), &tablet),
            RouteFamily::Ophthalmic
        );
        assert_eq!(
            k.route_family(&request(&cream, Some((SCT, "999999"))), &cream),
            RouteFamily::Topical
        );
        // MedicationStatement.dosage and MedicationAdministration.dosage (an object).
        let statement = json!({"resourceType": "MedicationStatement", "medicationCodeableConcept": tablet,
            "dosage": [{"route": {"coding": [{"system": SCT, "code": "6064005"}]}}]});
        assert_eq!(k.route_family(&statement, &tablet), RouteFamily::Topical);
        let admin = json!({"resourceType": "MedicationAdministration",
            "dosage": {"route": {"coding": [{"system": SCT, "code": "6064005"}]}}});
        assert_eq!(k.route_family(&admin, &tablet), RouteFamily::Topical);
        // ATC classes: the longest listed class wins (R03A over R03), level 5 included.
        let atc = |code: &str| cc(&[(ATC_SYSTEM, code)]);
        let family = |c: &Value| k.route_family(&request(c, None), c);
        assert_eq!(family(&atc("R03AC02")), RouteFamily::Inhaled);
        assert_eq!(family(&atc("R03DA04")), RouteFamily::Systemic);
        assert_eq!(family(&atc("D07AA02")), RouteFamily::Topical);
        assert_eq!(family(&atc("R03AK06")), RouteFamily::Inhaled);
        assert_eq!(family(&atc("C03CA01")), RouteFamily::Unknown);
        // Classes that disagree settle nothing.
        assert_eq!(
            family(&cc(&[(ATC_SYSTEM, "D07AA02"), (ATC_SYSTEM, "S01BA04")])),
            RouteFamily::Unknown
        );
        // Unknown counts as systemic.
        assert_eq!(RouteFamily::Unknown.or_systemic(), RouteFamily::Systemic);
        assert_eq!(RouteFamily::Topical.or_systemic(), RouteFamily::Topical);
    }

    #[test]
    fn contained_medication_gives_the_concept_and_its_form() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "medications/test.json", &test_maps());
        write(
            dir.path(),
            "medications/forms.json",
            &cm(
                "http://carebridge.example.org/fhir/ConceptMap/forms",
                json!([{"source": SCT, "target": ROUTE_FAMILY_SYSTEM, "element": [
                    {"code": "385101003", "target": fam("topical")}
                ]}]),
            ),
        );
        let k = MedKnowledge::load(dir.path()).expect("loads");
        let r = json!({
            "resourceType": "MedicationRequest",
            "contained": [
                {"resourceType": "Patient", "id": "m1"},
                {"resourceType": "Medication", "id": "m1",
                 "code": {"coding": [{"system": ATC_SYSTEM, "code": "A01AA01"}]},
                 "form": {"coding": [{"system": SCT, "code": "385101003"}]}}
            ],
            "medicationReference": {"reference": "#m1"}
        });
        let concept = concept_of(&r).expect("contained medication");
        assert_eq!(atcs(&k.ingredients(concept)), ["A01AA01"]);
        assert_eq!(k.route_family(&r, concept), RouteFamily::Topical);

        let direct = json!({"medicationCodeableConcept": {"text": "x"}});
        assert_eq!(concept_of(&direct), Some(&json!({"text": "x"})));
        let medication = json!({"resourceType": "Medication", "code": {"text": "y"}});
        assert_eq!(concept_of(&medication), Some(&json!({"text": "y"})));
        for r in [
            json!({"medicationReference": {"reference": "Medication/m1"}}),
            json!({"medicationReference": {"reference": "#nope"}, "contained": []}),
            json!({"medicationReference": {"reference": "#m1"}, "contained": [{"resourceType": "Medication", "id": "m1"}]}),
            json!({"medicationCodeableConcept": "x"}),
            json!({}),
        ] {
            assert_eq!(concept_of(&r), None, "{r}");
        }
    }

    #[test]
    fn odd_input_is_skipped_without_panic() {
        let k = knowledge();
        for concept in [
            json!(null),
            json!("R03AC02"),
            json!({"coding": "x"}),
            json!({"coding": [1, null, {"system": 5, "code": "100"}, {"system": RX}, {"code": "100"}, {"system": ATC_SYSTEM, "code": 7}]}),
            json!({"coding": [{"system": ATC_SYSTEM, "code": "R03AC02ZZZ"}, {"system": ATC_SYSTEM, "code": "é"}]}),
        ] {
            assert!(k.ingredients(&concept).is_empty(), "{concept}");
            for resource in [
                json!(null),
                json!({"dosageInstruction": "x", "dosage": 3}),
                json!({"dosageInstruction": [{"route": "oral"}, {"route": {"coding": [{"system": SCT}]}}]}),
            ] {
                assert_eq!(k.route_family(&resource, &concept), RouteFamily::Unknown);
            }
        }
    }

    #[test]
    fn route_family_codes_round_trip() {
        for f in RouteFamily::KNOWN {
            assert_eq!(RouteFamily::from_code(f.code().expect("code")), Some(f));
        }
        assert_eq!(RouteFamily::Unknown.code(), None);
        assert_eq!(RouteFamily::from_code("unknown"), None);
    }

    fn load_err(files: &[(&str, Value)]) -> MappingError {
        let dir = tempfile::tempdir().expect("tempdir");
        for (rel, doc) in files {
            write(dir.path(), rel, doc);
        }
        MedKnowledge::load(dir.path()).expect_err("load must fail")
    }

    fn one_group(source: &str, target: &str, element: Value) -> Value {
        cm(
            "http://carebridge.example.org/fhir/ConceptMap/x",
            json!([{"source": source, "target": target, "element": [element]}]),
        )
    }

    /// Loads `files`, which must fail; the error must name `file` and its message contain every
    /// needle (the path, the reason, the fix).
    fn expect_error(files: &[(&str, Value)], file: &str, needles: &[&str]) {
        let e = load_err(files);
        assert!(e.file.ends_with(file), "{file} not named by {e}");
        for needle in needles {
            assert!(e.message.contains(needle), "{needle:?} not in {e}");
        }
    }

    /// One bad `medications/bad.json`.
    fn expect_bad(doc: Value, needles: &[&str]) {
        expect_error(&[("medications/bad.json", doc)], "bad.json", needles);
    }

    /// One kind of bad file per test.
    mod bad_files_give_errors_naming_the_file_the_path_and_the_fix {
        use super::*;

        #[test]
        fn not_json_or_not_a_resource_of_the_folder() {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("medications/broken.json");
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, "{\"resourceType\": ").expect("write");
            let e = MedKnowledge::load(dir.path()).expect_err("broken JSON");
            assert!(e.file.ends_with("broken.json"), "{e}");
            for needle in ["not valid JSON", "line 1", "fix the syntax"] {
                assert!(e.message.contains(needle), "{needle:?} not in {e}");
            }
            let vs = json!({"resourceType": "ValueSet", "status": "active"});
            expect_bad(
                vs,
                &[
                    "resourceType",
                    "ConceptMap",
                    "move the file out of medications/",
                ],
            );
            expect_bad(json!(["x"]), &["JSON object", "ConceptMap resource"]);
        }

        #[test]
        fn code_systems() {
            let cs = |url: &str, concept: Value| json!({"resourceType": "CodeSystem", "url": url, "concept": concept});
            let other = cs("http://example.org/cs", json!([]));
            expect_bad(
                other,
                &["CodeSystem.url", "route-family", "move other code systems"],
            );
            let no_url = json!({"resourceType": "CodeSystem", "concept": []});
            expect_bad(no_url, &["CodeSystem.url is missing", "route-family"]);
            let not_atc = cs(ATC_SYSTEM, json!([{"code": "C03CA01X", "display": "x"}]));
            expect_bad(
                not_atc,
                &["CodeSystem.concept[0].code", "ATC code", "C03CA01)"],
            );
            let unnamed = cs(ATC_SYSTEM, json!([{"code": "C03CA01"}]));
            expect_bad(
                unnamed,
                &["CodeSystem.concept[0].display is missing", "WHO's name"],
            );
            let nested = cs(
                ATC_SYSTEM,
                json!([{"code": "C03CA", "display": "x", "concept": []}]),
            );
            expect_bad(
                nested,
                &["CodeSystem.concept[0].concept", "list the codes flat"],
            );
            let not_array = cs(ATC_SYSTEM, json!({}));
            expect_bad(
                not_array,
                &["CodeSystem.concept must be an array", "array of objects"],
            );
            let unknown = cs(ROUTE_FAMILY_SYSTEM, json!([{"code": "intravenous"}]));
            expect_bad(unknown, &["CodeSystem.concept[0].code", "systemic"]);
        }

        #[test]
        fn concept_map_header_groups_and_elements() {
            let url = "http://carebridge.example.org/fhir/ConceptMap/<id>";
            expect_bad(
                cm("not a url", json!([])),
                &["ConceptMap.url", "absolute URI", url],
            );
            let status =
                json!({"resourceType": "ConceptMap", "url": "http://e.org/x", "status": "final"});
            expect_bad(status, &["ConceptMap.status", "\"active\""]);
            let unmapped =
                json!([{"source": RX, "target": ATC_SYSTEM, "unmapped": {"mode": "provided"}}]);
            expect_bad(
                cm("http://e.org/x", unmapped),
                &["group[0].unmapped", "list the codes as elements"],
            );
            let sct = one_group(
                RX,
                SCT,
                json!({"code": "1", "target": [ing("1", "x", "wider")]}),
            );
            expect_bad(sct, &["group[0].target", "conceptmaps/"]);
            let no_source = cm("http://e.org/x", json!([{"target": ATC_SYSTEM}]));
            expect_bad(
                no_source,
                &["ConceptMap.group[0].source is missing", "rxnorm"],
            );
            let no_code = one_group(RX, ATC_SYSTEM, json!({"target": []}));
            expect_bad(
                no_code,
                &["element[0].code is missing", "give the source code"],
            );
            let level4 = json!({"code": "R03AK", "target": [ing("R03AC12", "x", "relatedto")]});
            expect_bad(
                one_group(ATC_SYSTEM, ATC_SYSTEM, level4),
                &["element[0].code", "combination"],
            );
            let not_atc = json!({"code": "R3", "target": fam("inhaled")});
            expect_bad(
                one_group(ATC_SYSTEM, ROUTE_FAMILY_SYSTEM, not_atc),
                &["element[0].code", "ATC class"],
            );
        }

        #[test]
        fn concept_map_targets() {
            let bad = |target: Value, needles: &[&str]| {
                expect_bad(
                    one_group(RX, ATC_SYSTEM, json!({"code": "1", "target": [target]})),
                    needles,
                );
            };
            bad(
                ing("C03CA", "x", "wider"),
                &["target[0].code", "level-5", "class"],
            );
            bad(
                ing("C03CA01", "x", "narrower"),
                &["target[0].comment", "cmd-1", "say what"],
            );
            bad(
                json!({"code": "C03CA01", "equivalence": "unmatched"}),
                &["target[0].code", "unmatched", "remove the code"],
            );
            bad(
                json!({"equivalence": "wider"}),
                &["target[0].code is missing", "without this kind of target"],
            );
            bad(
                json!({"code": "C03CA01", "equivalence": "same"}),
                &["target[0].equivalence", "relatedto"],
            );
            bad(
                json!({"code": "C03CA01", "equivalence": "wider", "dependsOn": []}),
                &["target[0].dependsOn", "list each ingredient"],
            );
            let families = |targets: Value| {
                one_group(
                    RX,
                    ROUTE_FAMILY_SYSTEM,
                    json!({"code": "1", "target": targets}),
                )
            };
            expect_bad(
                families(fam("intravenous")),
                &["target[0].code", "route family", "topical"],
            );
            let two = json!([{"code": "systemic", "equivalence": "wider"}, {"code": "topical", "equivalence": "wider"}]);
            expect_bad(families(two), &["target[1]", "one family per code"]);
        }

        #[test]
        fn two_files_that_disagree_or_share_a_url() {
            let family = |url: &str, f: &str| {
                cm(
                    url,
                    json!([{"source": RX, "target": ROUTE_FAMILY_SYSTEM, "element": [{"code": "1", "target": fam(f)}]}]),
                )
            };
            let pair = |url: &str, eq: &str| {
                cm(
                    url,
                    json!([{"source": RX, "target": ATC_SYSTEM, "element": [{"code": "1", "target": [ing("C03CA01", "x", eq)]}]}]),
                )
            };
            let (a, b) = ("http://e.org/ConceptMap/a", "http://e.org/ConceptMap/b");
            for (first, second, needles) in [
                (
                    family(a, "systemic"),
                    family(b, "topical"),
                    ["ConceptMap.group[0].element[0]: ", "another route family"],
                ),
                (
                    pair(a, "wider"),
                    pair(b, "relatedto"),
                    [
                        "ConceptMap.group[0].element[0].target[0]: ",
                        "make the two maps agree",
                    ],
                ),
                (
                    pair(a, "wider"),
                    pair(a, "wider"),
                    ["ConceptMap.url is also the url of", "its own url"],
                ),
            ] {
                let files = [
                    ("medications/a.json", first),
                    ("medications/b.json", second),
                ];
                expect_error(&files, "b.json", &[needles[0], needles[1], "a.json"]);
            }
        }
    }

    #[test]
    fn the_projects_knowledge_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fhir-profiles");
        let k = MedKnowledge::load(&dir).expect("fhir-profiles/medications loads");
        let got = k.ingredients(&cc(&[(RX, "1049221")]));
        assert_eq!(atcs(&got), ["N02AA05", "N02BE01"]);
        assert_eq!(got[1].name, "paracetamol");
    }

    #[test]
    fn the_target_fix_names_both_systems() {
        for system in [ATC_SYSTEM, ROUTE_FAMILY_SYSTEM] {
            assert!(MEDICATION_MAPS.target_fix.contains(system), "{system}");
            assert!(code_system_fix("url").is_some_and(|f| f.contains(system)));
        }
    }

    #[test]
    fn missing_folder_is_empty_and_inactive_maps_are_not_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let k = MedKnowledge::load(dir.path()).expect("no folder loads");
        assert!(k.ingredients(&cc(&[(RX, "100")])).is_empty());
        assert_eq!(
            atcs(&k.ingredients(&cc(&[(ATC_SYSTEM, "C03CA01")]))),
            ["C03CA01"]
        );

        let mut draft = test_maps();
        draft["status"] = json!("draft");
        write(dir.path(), "medications/draft.json", &draft);
        write(dir.path(), "medications/notes.txt", &json!("ignored"));
        let k = MedKnowledge::load(dir.path()).expect("loads");
        assert!(k.ingredients(&cc(&[(RX, "100")])).is_empty());

        // Repeating an entry with the same equivalence and family in a second file is fine, and
        // ingredients of one code from two files are joined.
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "medications/a.json", &test_maps());
        let mut again = test_maps();
        again["url"] = json!("http://carebridge.example.org/fhir/ConceptMap/again");
        again["group"][0]["element"][0]["target"]
            .as_array_mut()
            .expect("targets")
            .push(ing("C10AA01", "simvastatin", "relatedto"));
        write(dir.path(), "medications/b.json", &again);
        let k = MedKnowledge::load(dir.path()).expect("loads");
        assert_eq!(
            atcs(&k.ingredients(&cc(&[(RX, "100")]))),
            ["A01AA01", "C10AA01"]
        );
    }
}
