//! The project's medication knowledge (`fhir-profiles/medications`) against the R4 schema, the
//! Synthea bundles, the demo fixtures and the official R4 examples.

use crate::common::{official_examples, read_json, repo, shared_data};
use carebridge::terminology::medication::{
    ATC_SYSTEM, Ingredient, MedKnowledge, ROUTE_FAMILY_SYSTEM, RouteFamily, concept_of,
    is_atc_level5,
};
use carebridge::validate::{FhirSchema, Profiles, Validator};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const RX: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
const SCT: &str = "http://snomed.info/sct";
const CVX: &str = "http://hl7.org/fhir/sid/cvx";

/// The resource types whose medication the duplicate-medication detectors read.
const MEDICATION_TYPES: [&str; 5] = [
    "MedicationRequest",
    "MedicationStatement",
    "MedicationDispense",
    "MedicationAdministration",
    "Medication",
];

fn profiles_dir() -> PathBuf {
    repo().join("fhir-profiles")
}

fn knowledge() -> MedKnowledge {
    MedKnowledge::load(&profiles_dir())
        .unwrap_or_else(|e| panic!("the project's medication knowledge loads: {e}"))
}

fn json_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn knowledge_files() -> Vec<(PathBuf, Value)> {
    json_files(&profiles_dir().join("medications"))
        .into_iter()
        .map(|p| {
            let v = read_json(&p);
            (p, v)
        })
        .collect()
}

/// The ConceptMap groups of the project's knowledge, as (file, group).
fn groups() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (path, doc) in knowledge_files() {
        if doc["resourceType"] == "ConceptMap" {
            for g in doc["group"].as_array().expect("group") {
                out.push((path.display().to_string(), g.clone()));
            }
        }
    }
    out
}

/// The resources of every Synthea bundle, with the file they come from.
fn synthea_resources() -> Vec<(String, Value)> {
    let files = json_files(&shared_data().join("synthea"));
    assert!(files.len() >= 50, "found {} Synthea bundles", files.len());
    let mut out = Vec::new();
    for path in files {
        let bundle = read_json(&path);
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        for e in bundle["entry"].as_array().expect("entries") {
            out.push((name.clone(), e["resource"].clone()));
        }
    }
    out
}

fn fixture_resources() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for sector in ["gp", "hospital", "municipality"] {
        for path in json_files(&repo().join("fixtures/demo").join(sector)) {
            let bundle = read_json(&path);
            let name = format!(
                "{sector}/{}",
                path.file_name().expect("name").to_string_lossy()
            );
            for e in bundle["entry"].as_array().expect("entries") {
                out.push((name.clone(), e["resource"].clone()));
            }
        }
    }
    out
}

/// Every medication CodeableConcept in a resource: the medication of an order, statement,
/// dispense or administration (directly or through a contained Medication), a Medication's code,
/// and the products of CarePlan activities.
fn medication_concepts(r: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let rtype = r["resourceType"].as_str().unwrap_or_default();
    if MEDICATION_TYPES.contains(&rtype)
        && let Some(cc) = concept_of(r)
    {
        out.push(cc);
    }
    for c in r["contained"].as_array().into_iter().flatten() {
        if c["resourceType"] == "Medication" && c["code"].is_object() {
            out.push(&c["code"]);
        }
    }
    for a in r["activity"].as_array().into_iter().flatten() {
        if a["detail"]["productCodeableConcept"].is_object() {
            out.push(&a["detail"]["productCodeableConcept"]);
        }
    }
    out
}

fn codings(cc: &Value) -> Vec<(String, String)> {
    cc["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c["system"].as_str()?.to_owned(),
                c["code"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

fn atcs(list: &[Ingredient]) -> Vec<&str> {
    list.iter().map(|i| i.atc.as_str()).collect()
}

fn concept(system: &str, code: &str) -> Value {
    json!({"coding": [{"system": system, "code": code}]})
}

fn request(cc: &Value, route: Option<&str>) -> Value {
    let mut r = json!({"resourceType": "MedicationRequest", "medicationCodeableConcept": cc});
    if let Some(code) = route {
        r["dosageInstruction"] = json!([{"route": {"coding": [{"system": SCT, "code": code}]}}]);
    }
    r
}

/// The codes that the project's maps list with only `unmatched` targets into ATC: drug codes
/// known to have no active ingredient (devices, for instance). The list is the data itself.
fn documented_without_ingredient(system: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, g) in groups() {
        if g["source"] != system || g["target"] != ATC_SYSTEM {
            continue;
        }
        for e in g["element"].as_array().expect("element") {
            let targets = e["target"].as_array().expect("target");
            if targets.iter().all(|t| t["equivalence"] == "unmatched") {
                out.insert(e["code"].as_str().expect("code").to_owned());
            }
        }
    }
    out
}

#[test]
fn every_knowledge_file_is_structurally_valid_r4_and_follows_the_conventions() {
    let validator = Validator::new(
        FhirSchema::load().expect("R4 schema"),
        Profiles::load(&profiles_dir()).expect("profile rules"),
    );
    let files = knowledge_files();
    assert!(files.len() >= 4, "found {} files", files.len());
    let mut urls = BTreeSet::new();
    let mut code_systems = 0;
    let mut atc_names: BTreeMap<String, String> = BTreeMap::new();
    let mut atc_targets: Vec<(String, String)> = Vec::new();
    for (path, doc) in &files {
        let file = path.display();
        let issues = validator.structural(doc);
        assert!(issues.is_empty(), "{file}: {issues:?}");
        assert_eq!(doc["status"], "active", "{file}");
        let url = doc["url"].as_str().expect("url");
        assert!(urls.insert(url.to_owned()), "{file}: url used twice");
        let name = doc["name"].as_str().expect("name");
        assert!(
            name.starts_with(|c: char| c.is_ascii_uppercase())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{file}: name {name} is not a computable name"
        );
        for key in ["title", "description"] {
            assert!(
                doc[key].as_str().is_some_and(|s| !s.is_empty()),
                "{file}: {key}"
            );
        }
        if doc["resourceType"] == "CodeSystem" && url == ATC_SYSTEM {
            code_systems += 1;
            assert_eq!(doc["content"], "fragment", "{file}");
            let concepts = doc["concept"].as_array().expect("concept");
            assert_eq!(doc["count"], concepts.len(), "{file}");
            for c in concepts {
                atc_names.insert(
                    c["code"].as_str().expect("code").to_owned(),
                    c["display"].as_str().expect("display").to_owned(),
                );
            }
            continue;
        }
        if doc["resourceType"] == "CodeSystem" {
            code_systems += 1;
            assert_eq!(url, ROUTE_FAMILY_SYSTEM, "{file}");
            let codes: Vec<&str> = doc["concept"]
                .as_array()
                .expect("concept")
                .iter()
                .map(|c| c["code"].as_str().expect("code"))
                .collect();
            let families: Vec<&str> = RouteFamily::KNOWN.iter().filter_map(|f| f.code()).collect();
            assert_eq!(
                codes, families,
                "{file}: the CodeSystem defines every family"
            );
            assert_eq!(doc["count"], codes.len(), "{file}");
            continue;
        }
        assert_eq!(doc["resourceType"], "ConceptMap", "{file}");
        assert!(doc["version"].is_string(), "{file}");
        assert!(
            url.starts_with("http://carebridge.example.org/fhir/ConceptMap/"),
            "{file}: {url}"
        );
        for g in doc["group"].as_array().expect("group") {
            let target = g["target"].as_str().expect("target");
            assert!(
                target == ATC_SYSTEM || target == ROUTE_FAMILY_SYSTEM,
                "{file}: {target}"
            );
            for e in g["element"].as_array().expect("element") {
                assert!(
                    e["code"].is_string() && e["display"].is_string(),
                    "{file}: {e}"
                );
                let targets = e["target"].as_array().expect("target");
                assert!(!targets.is_empty(), "{file}: {e}");
                for t in targets {
                    match t["equivalence"].as_str().expect("equivalence") {
                        "unmatched" => {
                            assert!(t.get("code").is_none(), "{file}: {e}");
                            assert!(
                                t["comment"].is_string(),
                                "{file}: an unmatched target says why in its comment: {e}"
                            );
                        }
                        eq => {
                            if matches!(eq, "narrower" | "inexact") {
                                assert!(t["comment"].is_string(), "{file}: {e} (R4 cmd-1)");
                            }
                            let code = t["code"].as_str().expect("code");
                            assert!(t["display"].is_string(), "{file}: {e}");
                            if target == ATC_SYSTEM {
                                assert!(is_atc_level5(code), "{file}: {code}");
                                atc_targets.push((
                                    code.to_owned(),
                                    t["display"].as_str().expect("display").to_owned(),
                                ));
                            } else {
                                assert!(RouteFamily::from_code(code).is_some(), "{file}: {code}");
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(
        code_systems, 2,
        "the route-family and ATC CodeSystems are in the folder"
    );
    // The ATC fragment names every ingredient the maps give, with the maps' displays.
    for (code, display) in &atc_targets {
        assert_eq!(atc_names.get(code), Some(display), "{code}");
    }
    // The validator does look at these types: a broken copy of each is refused.
    for (path, doc) in &files {
        let mut broken = doc.clone();
        if doc["resourceType"] == "CodeSystem" {
            broken["content"] = json!("everything");
        } else {
            broken["group"][0]["element"][0]["target"][0]["equivalence"] = json!("same");
        }
        assert!(
            !validator.structural(&broken).is_empty(),
            "{}: a broken copy passes",
            path.display()
        );
    }
    // The exchange's ConceptMaps are a separate set: no url is shared.
    for path in json_files(&profiles_dir().join("conceptmaps")) {
        let url = read_json(&path)["url"].as_str().expect("url").to_owned();
        assert!(!urls.contains(&url), "{}: {url}", path.display());
    }
}

#[test]
fn every_synthea_drug_code_resolves_to_an_ingredient_and_a_route_family() {
    let k = knowledge();
    let without = documented_without_ingredient(RX);
    let mut used: BTreeMap<String, usize> = BTreeMap::new();
    let mut vaccines = 0;
    for (file, r) in synthea_resources() {
        let rtype = r["resourceType"].as_str().unwrap_or_default();
        if rtype == "Immunization" {
            // Vaccines are Immunizations (CVX), which the medication detectors do not read.
            let systems: Vec<_> = codings(&r["vaccineCode"])
                .into_iter()
                .map(|(s, _)| s)
                .collect();
            assert!(systems.iter().all(|s| s == CVX), "{file}: {systems:?}");
            vaccines += 1;
            continue;
        }
        if !MEDICATION_TYPES.contains(&rtype) {
            continue;
        }
        let cc = concept_of(&r).unwrap_or_else(|| panic!("{file}: a {rtype} without medication"));
        for (system, code) in codings(cc) {
            assert_eq!(
                system, RX,
                "{file}: every Synthea medication is RxNorm coded"
            );
            *used.entry(code).or_default() += 1;
        }
        let ingredients = k.ingredients(cc);
        let codes = codings(cc);
        assert!(
            !ingredients.is_empty() || codes.iter().any(|(_, c)| without.contains(c)),
            "{file}: {codes:?} has no ingredient and is not listed as having none"
        );
        assert_ne!(
            k.route_family(&r, cc),
            RouteFamily::Unknown,
            "{file}: {codes:?} has no recorded route family"
        );
    }
    assert!(vaccines > 0, "the bundles hold Immunizations");
    // The inventory: 70 distinct RxNorm codes in 358 MedicationRequests (no MedicationStatement
    // or Medication).
    assert_eq!(used.len(), 70, "{used:?}");
    assert_eq!(used.values().sum::<usize>(), 358);
    assert!(
        without.is_empty(),
        "every Synthea drug has an ingredient: {without:?}"
    );
}

#[test]
fn every_drug_code_in_the_fixtures_resolves() {
    let k = knowledge();
    let mut seen = BTreeSet::new();
    for (file, r) in fixture_resources() {
        for cc in medication_concepts(&r) {
            let codes = codings(cc);
            assert!(!codes.is_empty(), "{file}: a medication without a coding");
            for (system, code) in &codes {
                // The fixtures code medications in ATC (no Danish product numbers), at level 5.
                assert_eq!(system, ATC_SYSTEM, "{file}: {code}");
                assert!(is_atc_level5(code), "{file}: {code}");
                seen.insert(code.clone());
            }
            let ingredients = k.ingredients(cc);
            assert!(!ingredients.is_empty(), "{file}: {codes:?}");
            for i in &ingredients {
                assert!(is_atc_level5(&i.atc), "{file}: {i:?}");
                assert_eq!(
                    k.atc_name(&i.atc),
                    Some(i.name.as_str()),
                    "{file}: every ingredient of the fixtures is named"
                );
            }
        }
    }
    assert!(
        seen.len() >= 30,
        "expected the fixtures' drugs, found {seen:?}"
    );
}

#[test]
fn combination_products_yield_every_ingredient() {
    let k = knowledge();
    let ingredients = |system: &str, code: &str| k.ingredients(&concept(system, code));
    // Fluticasone/salmeterol inhaler in RxNorm and in ATC: the same two ingredients.
    let rx = ingredients(RX, "896209");
    assert_eq!(atcs(&rx), ["R03AC12", "R03BA05"]);
    assert_eq!(ingredients(ATC_SYSTEM, "R03AK06"), rx);
    assert_eq!(rx[0].name, "salmeterol");
    // Three ingredients.
    assert_eq!(
        atcs(&ingredients(RX, "1043400")),
        ["N02BE01", "R05DA09", "R06AA09"]
    );
    // Paracetamol/oxycodone; donepezil/memantine.
    assert_eq!(atcs(&ingredients(RX, "1049221")), ["N02AA05", "N02BE01"]);
    assert_eq!(atcs(&ingredients(RX, "1599803")), ["N06DA02", "N06DX01"]);
    // Amoxicillin/clavulanate: clavulanic acid has no ATC level-5 code of its own, so both
    // codings give amoxicillin only.
    assert_eq!(atcs(&ingredients(RX, "562251")), ["J01CA04"]);
    assert_eq!(atcs(&ingredients(ATC_SYSTEM, "J01CR02")), ["J01CA04"]);
    // A concept coded in both systems gives each ingredient once.
    let both = json!({"coding": [
        {"system": RX, "code": "896209"},
        {"system": ATC_SYSTEM, "code": "R03AK06"},
        {"system": ATC_SYSTEM, "code": "R03BA05", "display": "Fluticason"}
    ]});
    assert_eq!(k.ingredients(&both), rx);
}

#[test]
fn topical_and_systemic_forms_of_one_ingredient_have_different_route_families() {
    let k = knowledge();
    let family = |cc: &Value, route: Option<&str>| k.route_family(&request(cc, route), cc);
    // From the product's recorded form: a cream, a tablet, an inhaler, a patch.
    let cream = concept(RX, "106258");
    assert_eq!(family(&cream, None), RouteFamily::Topical);
    assert_eq!(atcs(&k.ingredients(&cream)), ["D07AA02"]);
    assert_eq!(family(&concept(RX, "313782"), None), RouteFamily::Systemic);
    assert_eq!(family(&concept(RX, "745679"), None), RouteFamily::Inhaled);
    assert_eq!(family(&concept(RX, "198031"), None), RouteFamily::Systemic);
    assert_eq!(family(&concept(RX, "807283"), None), RouteFamily::Vaginal);

    // One ingredient (ibuprofen, M01AE01) given orally and on the skin, told by the route.
    let ibuprofen = concept(ATC_SYSTEM, "M01AE01");
    assert_eq!(family(&ibuprofen, Some("26643006")), RouteFamily::Systemic);
    assert_eq!(family(&ibuprofen, Some("6064005")), RouteFamily::Topical);
    assert_eq!(family(&ibuprofen, None), RouteFamily::Unknown);
    // Nicotine as a patch (RxNorm) and as a nasal spray (ATC + route): one ingredient, two
    // families.
    let patch = concept(RX, "198031");
    let spray = concept(ATC_SYSTEM, "N07BA01");
    assert_eq!(k.ingredients(&patch), k.ingredients(&spray));
    assert_eq!(family(&spray, Some("46713006")), RouteFamily::Nasal);
    // A route coding beats the product's form.
    assert_eq!(family(&cream, Some("26643006")), RouteFamily::Systemic);

    // ATC classes that name the route: the fixtures' inhalers are inhaled without a coded route.
    for code in ["R03AC02", "R03AK06", "R03BB04"] {
        assert_eq!(
            family(&concept(ATC_SYSTEM, code), None),
            RouteFamily::Inhaled,
            "{code}"
        );
    }
    assert_eq!(
        family(&concept(ATC_SYSTEM, "S01ED01"), None),
        RouteFamily::Ophthalmic
    );
    assert_eq!(
        family(&concept(ATC_SYSTEM, "C03CA01"), None),
        RouteFamily::Unknown
    );
}

#[test]
fn every_snomed_route_in_the_official_examples_has_a_family() {
    let k = knowledge();
    let any = concept(ATC_SYSTEM, "C03CA01");
    let mut checked = 0;
    for path in official_examples() {
        let r = read_json(&path);
        let rtype = r["resourceType"].as_str().unwrap_or_default();
        if !MEDICATION_TYPES.contains(&rtype) {
            continue;
        }
        let dosages: Vec<&Value> = ["dosageInstruction", "dosage"]
            .iter()
            .flat_map(|key| match &r[*key] {
                Value::Array(items) => items.iter().collect(),
                Value::Object(_) => vec![&r[*key]],
                _ => Vec::new(),
            })
            .collect();
        for d in dosages {
            for (system, code) in codings(&d["route"]) {
                if system != SCT {
                    continue;
                }
                let one = json!({"resourceType": rtype, "dosage": [{"route": {"coding": [{"system": SCT, "code": code}]}}]});
                assert_ne!(
                    k.route_family(&one, &any),
                    RouteFamily::Unknown,
                    "{}: SNOMED CT route {code}",
                    path.display()
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 60,
        "expected the examples' routes, found {checked}"
    );
    // The routes named in the brief.
    for (code, family) in [
        ("26643006", RouteFamily::Systemic),
        ("6064005", RouteFamily::Topical),
        ("18679011000001101", RouteFamily::Inhaled),
        ("54485002", RouteFamily::Ophthalmic),
        ("47625008", RouteFamily::Systemic),
        ("127492001", RouteFamily::Systemic),
        ("46713006", RouteFamily::Nasal),
        ("10547007", RouteFamily::Otic),
        ("37161004", RouteFamily::Rectal),
        ("16857009", RouteFamily::Vaginal),
    ] {
        assert_eq!(
            k.route_family(&request(&any, Some(code)), &any),
            family,
            "{code}"
        );
    }
}

/// Facts the duplicate-medication detectors' scenario tests can build on.
#[test]
fn drugs_that_share_an_ingredient_or_a_class() {
    let k = knowledge();
    let ingredients = |system: &str, code: &str| k.ingredients(&concept(system, code));
    let shares = |a: (&str, &str), b: (&str, &str)| -> Vec<String> {
        let left = ingredients(a.0, a.1);
        ingredients(b.0, b.1)
            .into_iter()
            .filter(|i| left.iter().any(|j| j.atc == i.atc))
            .map(|i| i.atc)
            .collect()
    };
    // Furosemide: hospital injection (RxNorm), GP tablet (RxNorm), the fixtures' ATC code; all
    // systemic.
    assert_eq!(shares((RX, "1719286"), (RX, "315971")), ["C03CA01"]);
    assert_eq!(
        shares((RX, "1719286"), (ATC_SYSTEM, "C03CA01")),
        ["C03CA01"]
    );
    // Paracetamol alone and in combinations.
    for combo in ["1043400", "1049221", "1310197", "856980", "857005"] {
        assert_eq!(shares((RX, "313782"), (RX, combo)), ["N02BE01"], "{combo}");
    }
    assert_eq!(shares((RX, "313782"), (ATC_SYSTEM, "N02BE01")), ["N02BE01"]);
    // Donepezil in Namzaric and alone; memantine in Namzaric and alone.
    assert_eq!(shares((RX, "1599803"), (RX, "997223")), ["N06DA02"]);
    assert_eq!(shares((RX, "1599803"), (RX, "996740")), ["N06DX01"]);
    // Fluticasone inhalers; naproxen; simvastatin; norethisterone pills.
    assert_eq!(shares((RX, "896209"), (RX, "895994")), ["R03BA05"]);
    assert_eq!(shares((RX, "198014"), (RX, "849574")), ["M01AE02"]);
    assert_eq!(shares((RX, "312961"), (RX, "316672")), ["C10AA01"]);
    assert_eq!(shares((RX, "748962"), (RX, "749882")), ["G03AC01"]);
    // Same class, different ingredient (DUPTHPCLS).
    let class = |system: &str, code: &str| -> BTreeSet<String> {
        ingredients(system, code)
            .iter()
            .map(MedKnowledge::class_of)
            .collect()
    };
    for (a, b, class_code) in [
        ((RX, "312961"), (ATC_SYSTEM, "C10AA05"), "C10AA"),
        ((RX, "310436"), (RX, "997223"), "N06DA"),
        ((RX, "310965"), (RX, "198014"), "M01AE"),
        ((RX, "243670"), (RX, "309362"), "B01AC"),
        ((RX, "833036"), (ATC_SYSTEM, "C09AA05"), "C09AA"),
        ((RX, "745679"), (RX, "896209"), "R03AC"),
    ] {
        assert!(
            class(a.0, a.1).contains(class_code) && class(b.0, b.1).contains(class_code),
            "{a:?} {b:?} {class_code}"
        );
        assert!(shares(a, b).is_empty(), "{a:?} {b:?}");
    }
}
