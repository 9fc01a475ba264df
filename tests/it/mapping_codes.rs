//! The project's ConceptMaps and mapping sets (`fhir-profiles/conceptmaps`, `fhir-profiles/mapping`)
//! against the R4 schema, the demo fixtures and the official R4 examples.

use crate::common::{official_examples, read_json, repo};
use carebridge::terminology::{CodeReport, Mapping};
use carebridge::validate::{FhirSchema, Profiles, Validator};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const ICPC: &str = "urn:oid:1.2.208.176.2.31";
const SKS: &str = "urn:oid:1.2.208.176.2.4.12";
const FSIII: &str = "urn:oid:1.2.208.176.2.21";
const SCT: &str = "http://snomed.info/sct";

/// The sector folders of the fixtures and the profile set each sector uses.
const SECTORS: [(&str, &str); 3] = [
    ("gp", "dk-gp"),
    ("hospital", "dk-hospital"),
    ("municipality", "dk-municipality"),
];

fn profiles_dir() -> PathBuf {
    repo().join("fhir-profiles")
}

fn mapping() -> Mapping {
    Mapping::load(&profiles_dir()).unwrap_or_else(|e| panic!("the project's mappings load: {e}"))
}

fn validator() -> Validator {
    Validator::new(
        FhirSchema::load().expect("R4 schema"),
        Profiles::load(&profiles_dir()).expect("profile rules"),
    )
}

fn json_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn concept_maps() -> Vec<(PathBuf, Value)> {
    json_files("fhir-profiles/conceptmaps")
        .into_iter()
        .map(|p| {
            let v = read_json(&p);
            (p, v)
        })
        .collect()
}

/// Every (system, code) of a Coding-shaped object anywhere in `v`.
fn codings(v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            if let (Some(Value::String(s)), Some(Value::String(c))) =
                (m.get("system"), m.get("code"))
            {
                out.push((s.clone(), c.clone()));
            }
            m.values().for_each(|x| codings(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| codings(x, out)),
        _ => {}
    }
}

fn fixture_resources(sector: &str) -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for path in json_files(&format!("fixtures/demo/{sector}")) {
        let bundle = read_json(&path);
        for e in bundle["entry"].as_array().expect("entries") {
            out.push((path.clone(), e["resource"].clone()));
        }
    }
    out
}

/// Removes from `changed` what translate_codes appended: the tail of every `coding` array beyond
/// the original's length. Returns how many codings it removed.
fn strip_added(original: &Value, changed: &mut Value) -> usize {
    let mut removed = 0;
    match (original, changed) {
        (Value::Object(o), Value::Object(c)) => {
            for (k, cv) in c.iter_mut() {
                let Some(ov) = o.get(k) else { continue };
                if k == "coding"
                    && let (Value::Array(oa), Value::Array(ca)) = (ov, &mut *cv)
                    && ca.len() > oa.len()
                {
                    removed += ca.len() - oa.len();
                    ca.truncate(oa.len());
                }
                removed += strip_added(ov, cv);
            }
        }
        (Value::Array(o), Value::Array(c)) => {
            for (ov, cv) in o.iter().zip(c.iter_mut()) {
                removed += strip_added(ov, cv);
            }
        }
        _ => {}
    }
    removed
}

/// Puts back the original's meta.profile (and `_profile`), or removes what apply_profile added.
fn undo_profile(original: &Value, changed: &mut Value) {
    let (Some(o), Some(c)) = (original.as_object(), changed.as_object_mut()) else {
        return;
    };
    match o.get("meta") {
        None => {
            c.shift_remove("meta");
        }
        Some(Value::Object(om)) => {
            let Some(Value::Object(cm)) = c.get_mut("meta") else {
                return;
            };
            for key in ["profile", "_profile"] {
                match om.get(key) {
                    None => {
                        cm.shift_remove(key);
                    }
                    Some(v) if cm.contains_key(key) => {
                        cm.insert(key.to_owned(), v.clone());
                    }
                    Some(v) => {
                        let at = om.keys().position(|k| k == key).unwrap_or(cm.len());
                        cm.shift_insert(at.min(cm.len()), key.to_owned(), v.clone());
                    }
                }
            }
        }
        Some(_) => {}
    }
}

/// Whether `v` carries an extension, a modifierExtension or a `_field` primitive extension.
fn has_extensions(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, x)| {
            k == "extension" || k == "modifierExtension" || k.starts_with('_') || has_extensions(x)
        }),
        Value::Array(a) => a.iter().any(has_extensions),
        _ => false,
    }
}

/// `resource` with an extension (holding the resource's first coding of a Danish system, and a
/// decimal whose lexeme must survive), a modifierExtension and a `_field` primitive extension.
fn with_extensions_added(resource: &Value) -> Value {
    let mut r = resource.clone();
    let mut found = Vec::new();
    codings(&r, &mut found);
    let first = found
        .into_iter()
        .find(|(s, _)| s == ICPC || s == SKS || s == FSIII);
    let obj = r.as_object_mut().expect("resource object");
    let mut ext = vec![serde_json::json!({
        "url": "http://example.org/fhir/StructureDefinition/weight",
        "valueDecimal": serde_json::from_str::<Value>("1.50").expect("decimal")
    })];
    if let Some((system, code)) = first {
        ext.push(serde_json::json!({
            "url": "http://example.org/fhir/StructureDefinition/source-code",
            "valueCodeableConcept": {"coding": [{"system": system, "code": code}], "text": "x"}
        }));
    }
    obj.insert("extension".to_owned(), Value::Array(ext));
    obj.insert(
        "modifierExtension".to_owned(),
        serde_json::json!([{"url": "http://example.org/fhir/StructureDefinition/m", "valueBoolean": false}]),
    );
    let primitive = obj
        .iter()
        .find(|(k, v)| v.is_string() && *k != "resourceType" && *k != "id")
        .map(|(k, _)| k.clone());
    if let Some(key) = primitive {
        obj.insert(
            format!("_{key}"),
            serde_json::json!({"extension": [{"url": "http://example.org/fhir/StructureDefinition/p", "valueString": "y"}]}),
        );
    }
    r
}

/// Applies a set to a copy of `original`, checks that undoing exactly the added codings and the
/// profile change gives back the original byte for byte, and returns the report.
fn round_trip(m: &Mapping, set: &str, original: &Value, what: &str) -> (Value, CodeReport) {
    let mut changed = original.clone();
    m.apply_profile(Some(set), &mut changed);
    let report = m.translate_codes(Some(set), &mut changed);
    let mapped = changed.clone();
    let removed = strip_added(original, &mut changed);
    assert_eq!(
        removed, report.translated,
        "{what} ({set}): every added coding is appended to a coding array"
    );
    undo_profile(original, &mut changed);
    assert_eq!(
        serde_json::to_string(&changed).expect("json"),
        serde_json::to_string(original).expect("json"),
        "{what} ({set}): nothing but the added codings and meta.profile may change"
    );
    (mapped, report)
}

#[test]
fn the_project_mappings_load_one_set_per_sector_profile() {
    let m = mapping();
    assert_eq!(m.sets(), ["dk-gp", "dk-hospital", "dk-municipality"]);
    for set in m.sets() {
        assert!(
            profiles_dir().join("rules").join(&set).is_dir(),
            "mapping set {set} has a rule set of the same name"
        );
    }
}

#[test]
fn every_concept_map_is_structurally_valid_r4() {
    let validator = validator();
    let maps = concept_maps();
    assert!(maps.len() >= 4, "found {} ConceptMaps", maps.len());
    let mut urls = BTreeSet::new();
    for (path, cm) in &maps {
        let file = path.display();
        let issues = validator.structural(cm);
        assert!(issues.is_empty(), "{file}: {issues:?}");
        assert_eq!(cm["resourceType"], "ConceptMap", "{file}");
        assert_eq!(cm["status"], "active", "{file}");
        let url = cm["url"].as_str().expect("url");
        assert!(
            url.starts_with("http://carebridge.example.org/fhir/ConceptMap/"),
            "{file}: {url}"
        );
        assert!(urls.insert(url.to_owned()), "{file}: url used twice");
        let name = cm["name"].as_str().expect("name");
        assert!(
            name.starts_with(|c: char| c.is_ascii_uppercase())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{file}: name {name} is not a computable name (R4 cmd-0)"
        );
        for key in ["title", "version", "description"] {
            assert!(
                cm[key].as_str().is_some_and(|s| !s.is_empty()),
                "{file}: {key}"
            );
        }
        let groups = cm["group"].as_array().expect("group");
        assert!(!groups.is_empty(), "{file}");
        for g in groups {
            assert!(g["source"].is_string() && g["target"].is_string(), "{file}");
            for e in g["element"].as_array().expect("element") {
                assert!(
                    e["code"].is_string() && e["display"].is_string(),
                    "{file}: {e}"
                );
                for t in e["target"].as_array().expect("target") {
                    let eq = t["equivalence"].as_str().expect("equivalence");
                    if matches!(eq, "narrower" | "inexact") {
                        assert!(t["comment"].is_string(), "{file}: {e} (R4 cmd-1)");
                    }
                    if eq == "unmatched" {
                        assert!(t.get("code").is_none(), "{file}: {e}");
                    } else {
                        assert!(
                            t["code"].is_string() && t["display"].is_string(),
                            "{file}: {e}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn every_icpc2_sksd_and_fsiii_code_in_the_fixtures_has_a_concept_map_entry() {
    let mut mapped: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, cm) in concept_maps() {
        for g in cm["group"].as_array().expect("group") {
            let source = g["source"].as_str().expect("source").to_owned();
            for e in g["element"].as_array().expect("element") {
                mapped
                    .entry(source.clone())
                    .or_default()
                    .insert(e["code"].as_str().expect("code").to_owned());
            }
        }
    }
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    for (sector, _) in SECTORS {
        for (_, r) in fixture_resources(sector) {
            let mut found = Vec::new();
            codings(&r, &mut found);
            used.extend(
                found
                    .into_iter()
                    .filter(|(s, _)| s == ICPC || s == SKS || s == FSIII),
            );
        }
    }
    assert!(
        used.len() >= 60,
        "expected the fixtures' codes, found {}",
        used.len()
    );
    let missing: Vec<_> = used
        .iter()
        .filter(|(s, c)| !mapped.get(s).is_some_and(|codes| codes.contains(c)))
        .collect();
    assert!(
        missing.is_empty(),
        "codes with no ConceptMap entry: {missing:?}"
    );
}

#[test]
fn official_examples_pass_through_every_set_losslessly() {
    const TYPES: [&str; 7] = [
        "Condition",
        "CarePlan",
        "CareTeam",
        "Communication",
        "MedicationRequest",
        "MedicationStatement",
        "Goal",
    ];
    let m = mapping();
    let mut checked = 0;
    let mut with_extensions = 0;
    let mut translated: Vec<String> = Vec::new();
    for path in official_examples() {
        let original = read_json(&path);
        let Some(rtype) = original["resourceType"].as_str() else {
            continue;
        };
        if !TYPES.contains(&rtype) {
            continue;
        }
        checked += 1;
        if has_extensions(&original) {
            with_extensions += 1;
        }
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        for set in m.sets() {
            let (mapped, report) = round_trip(&m, &set, &original, &name);
            if rtype == "Condition" {
                assert_eq!(
                    mapped["meta"]["profile"][0],
                    "http://hl7.dk/fhir/core/StructureDefinition/dk-core-condition",
                    "{name} ({set})"
                );
            }
            if report.translated > 0 {
                translated.push(format!("{name} ({set}): {}", report.translated));
            }
        }
    }
    assert!(
        checked >= 60,
        "expected the official examples, found {checked}"
    );
    // careplan-example-integrated and careplan-example-pregnancy are the official examples of
    // these types with extensions; the fixture test adds more (extensions of every kind).
    assert!(
        with_extensions >= 2,
        "expected examples with extensions, found {with_extensions}"
    );
    // medicationrequest0321 (type 2 diabetes) and medicationrequestexample2 (essential
    // hypertension) carry SNOMED CT reason codes that the SNOMED CT map translates.
    assert!(
        translated
            .iter()
            .any(|t| t.starts_with("medicationrequest0321.json (dk-gp)")),
        "{translated:?}"
    );
    assert!(
        translated
            .iter()
            .any(|t| t.starts_with("medicationrequestexample2.json (dk-hospital)")),
        "{translated:?}"
    );
}

#[test]
fn fixture_resources_get_the_other_sectors_codes_losslessly_and_stay_valid() {
    let m = mapping();
    let validator = validator();
    let mut total = CodeReport::default();
    let mut seen: BTreeSet<(String, String, String)> = BTreeSet::new();
    for (sector, own_set) in SECTORS {
        for (path, resource) in fixture_resources(sector) {
            for (_, set) in SECTORS.iter().filter(|(_, s)| *s != own_set) {
                let what = format!("{} {}", path.display(), resource["id"]);
                let (mapped, report) = round_trip(&m, set, &resource, &what);
                let augmented = with_extensions_added(&resource);
                let (mapped_ext, report_ext) =
                    round_trip(&m, set, &augmented, &format!("{what} with extensions"));
                assert!(
                    report_ext.translated >= report.translated,
                    "{what} ({set}): codes in extensions are translated too"
                );
                let issues = validator.structural(&mapped_ext);
                assert!(
                    issues.is_empty(),
                    "{what} with extensions ({set}): {issues:?}"
                );
                total.translated += report.translated;
                total.not_accepted += report.not_accepted;
                let issues = validator.structural(&mapped);
                assert!(issues.is_empty(), "{what} ({set}): {issues:?}");
                let mut found = Vec::new();
                codings(&mapped, &mut found);
                for (s, c) in found {
                    seen.insert(((*set).to_owned(), s, c));
                }
            }
        }
    }
    let has = |set: &str, system: &str, code: &str| {
        seen.contains(&(set.to_owned(), system.to_owned(), code.to_owned()))
    };
    // GP type 2 diabetes reaches the hospital as SKS-D and SNOMED CT.
    assert!(has("dk-hospital", SKS, "DE11") && has("dk-hospital", SCT, "44054006"));
    // The hospital's stage II pressure ulcer reaches the municipality as FSIII and SNOMED CT.
    assert!(has("dk-municipality", FSIII, "I4.4") && has("dk-municipality", SCT, "1163220007"));
    // The municipality's wound care intervention reaches the hospital in SNOMED CT.
    assert!(has("dk-hospital", SCT, "225358003"));
    // The hospital's DE112 reaches the GP as the wider ICPC-2 T90.
    assert!(has("dk-gp", ICPC, "T90"));
    // A wider ICPC-2 to SNOMED translation is refused by the hospital's strict policy.
    assert!(!has("dk-hospital", SCT, "414545008"));
    assert!(has("dk-municipality", SCT, "414545008"));
    assert!(total.translated >= 50, "{total:?}");
    assert!(total.not_accepted > 0, "{total:?}");
}
