//! The Synthea patients of `../shared/data/synthea/` and the rule that splits one patient's
//! record across general practice, hospital and municipality.
//!
//! **The rule** ([`homes`], [`split`]):
//!
//! - an `Encounter` goes by its class: `AMB` (ambulatory, wellness) to `gp`, `EMER` and `IMP`
//!   (emergency, inpatient) to `hospital`;
//! - a `CarePlan` whose category is home-care, rehabilitation or self-care style
//!   ([`MUNICIPAL_PLANS`]) goes to `municipality`; any other CarePlan goes with its encounter;
//! - a `Goal` goes with the CarePlan that lists it (else to `gp`);
//! - every other resource that names an encounter goes with the first encounter it names;
//!   what names none goes to `gp`;
//! - `Patient`, `Practitioner` and `Organization` have no home: the caller puts the Patient in
//!   every sector, and Practitioners and Organizations are copied into every sector that
//!   references them (same ids).
//!
//! References become `Type/id`. A reference to a record the split put in another sector cannot
//! be kept (a sector names only its own resources): it becomes a display-only Reference
//! "`<Type>` recorded by `<sector>`" (with `: <code text>` when asked), and where the link
//! carries clinical meaning the target's code is kept: `CarePlan.addresses` → `reasonCode` of
//! every activity of the plan; `MedicationRequest.reasonReference` and
//! `Procedure.reasonReference` → `reasonCode`.
//!
//! Used by `tests/it/synthea_alerts.rs` (the whole record of each of the 50 patients) and the P3
//! bench (the largest patient, and the detection records of many under one synthetic
//! patient). Self-contained (no `super::` items): the tests include it as `common::synthea`,
//! the benches with `#[path = "../tests/common/synthea.rs"] mod synthea;`.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const SECTORS: [&str; 3] = ["gp", "hospital", "municipality"];

/// SNOMED CT CarePlan categories that a Danish municipality runs (home care, rehabilitation,
/// self-care support).
pub const MUNICIPAL_PLANS: [&str; 6] = [
    "326051000000105", // Self care
    "386257007",       // Demential management
    "47387005",        // Head injury rehabilitation
    "225358003",       // Wound care
    "91251008",        // Physical therapy procedure
    "872781000000100", // Musculoskeletal care
];

/// The Synthea Bundles (`<shared>/synthea/*.json`), in name order.
pub fn files(shared: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(shared.join("synthea"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

pub fn rtype(r: &Value) -> &str {
    r["resourceType"].as_str().unwrap_or_default()
}

pub fn rid(r: &Value) -> &str {
    r["id"].as_str().unwrap_or_default()
}

/// Calls `f` with every Reference object in `v` (an object with a string `reference`) and the
/// key path that leads to it.
pub fn walk_refs(v: &mut Value, path: &mut Vec<String>, f: &mut dyn FnMut(&[String], &mut Value)) {
    match v {
        Value::Object(map) => {
            if map.get("reference").is_some_and(Value::is_string) {
                f(path, v);
                return;
            }
            for (k, child) in map.iter_mut() {
                path.push(k.clone());
                walk_refs(child, path, f);
                path.pop();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| walk_refs(c, path, f)),
        _ => {}
    }
}

pub fn encounter_sector(enc: &Value) -> &'static str {
    match enc["class"]["code"].as_str() {
        Some("EMER" | "IMP") => "hospital",
        _ => "gp",
    }
}

fn full_url(entry: &Value) -> &str {
    entry["fullUrl"]
        .as_str()
        .expect("a Synthea entry has a fullUrl")
}

/// The sector of each resource of a Synthea Bundle, by fullUrl. Patient, Practitioner and
/// Organization have none (they are copied where needed).
pub fn homes(entries: &[Value]) -> HashMap<String, &'static str> {
    let by_url: HashMap<&str, &Value> = entries
        .iter()
        .map(|e| (full_url(e), &e["resource"]))
        .collect();
    let mut home: HashMap<String, &'static str> = HashMap::new();
    // The first encounter a resource names, wherever it is.
    let first_encounter = |r: &Value| -> Option<&'static str> {
        let mut found = None;
        walk_refs(&mut r.clone(), &mut Vec::new(), &mut |_, reference| {
            let u = reference["reference"].as_str().unwrap_or_default();
            if let Some(t) = by_url
                .get(u)
                .filter(|t| found.is_none() && rtype(t) == "Encounter")
            {
                found = Some(encounter_sector(t));
            }
        });
        found
    };
    for e in entries {
        let r = &e["resource"];
        let sector = match rtype(r) {
            "Patient" | "Practitioner" | "Organization" | "Goal" => continue,
            "Encounter" => encounter_sector(r),
            "CarePlan"
                if r["category"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c["coding"].as_array().into_iter().flatten())
                    .any(|c| MUNICIPAL_PLANS.contains(&c["code"].as_str().unwrap_or(""))) =>
            {
                "municipality"
            }
            _ => first_encounter(r).unwrap_or("gp"),
        };
        home.insert(full_url(e).to_owned(), sector);
    }
    // Goals go with the plan that lists them.
    for e in entries
        .iter()
        .filter(|e| rtype(&e["resource"]) == "CarePlan")
    {
        let plan_sector = home[full_url(e)];
        for g in e["resource"]["goal"].as_array().into_iter().flatten() {
            if let Some(u) = g["reference"].as_str() {
                home.entry(u.to_owned()).or_insert(plan_sector);
            }
        }
    }
    for e in entries.iter().filter(|e| rtype(&e["resource"]) == "Goal") {
        home.entry(full_url(e).to_owned()).or_insert("gp");
    }
    home
}

/// Adds `concept` to the array `list` (made an array first) unless it is there.
pub fn push_concept(list: &mut Value, concept: &Value) {
    if !list.is_array() {
        *list = json!([]);
    }
    let a = list.as_array_mut().expect("an array");
    if !a.contains(concept) {
        a.push(concept.clone());
    }
}

/// How a Bundle is split.
#[derive(Clone, Copy, Default)]
pub struct SplitOptions<'a> {
    /// Put before every record's id and every reference to a record of the same sector (the
    /// same Synthea record can then be stored several times).
    pub id_prefix: &'a str,
    /// Point every Patient reference at `Patient/<patient>` (None: the Synthea Patient's id).
    pub patient: Option<&'a str>,
    /// Keep only records of these types, and copy no Practitioner or Organization.
    pub only: Option<&'a [&'a str]>,
    /// A display-only reference names the target's code text too
    /// (`<Type> recorded by <sector>: <code text>`).
    pub display_code: bool,
}

/// One Bundle, split.
pub struct Split {
    /// The records with their sectors, in Bundle order (not the Patient, Practitioners or
    /// Organizations).
    pub records: Vec<(&'static str, Value)>,
    /// (sector, fullUrl) of each Practitioner and Organization a sector references, in the
    /// order first referenced (none with `only`).
    pub shared: Vec<(&'static str, String)>,
    /// Every resource of the Bundle by fullUrl, as it was.
    pub by_url: HashMap<String, Value>,
    /// The sector of each record, by fullUrl ([`homes`]).
    pub home: HashMap<String, &'static str>,
    /// The references made display-only, counted by `Type.path -> target type`.
    pub rewrites: BTreeMap<String, usize>,
}

impl Split {
    /// The resource of a `shared` entry.
    pub fn shared_resource(&self, url: &str) -> Value {
        self.by_url[url].clone()
    }
}

/// Splits a Synthea Bundle by the rule of this module.
pub fn split(bundle: &Value, opts: &SplitOptions<'_>) -> Split {
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    let by_url: HashMap<String, Value> = entries
        .iter()
        .map(|e| (full_url(e).to_owned(), e["resource"].clone()))
        .collect();
    let home = homes(&entries);
    let prefix = opts.id_prefix;
    let mut records = Vec::new();
    let mut shared: Vec<(&'static str, String)> = Vec::new();
    let mut rewrites = BTreeMap::new();
    for e in &entries {
        let Some(&sector) = home.get(full_url(e)) else {
            continue;
        };
        let mut r = e["resource"].clone();
        let t = rtype(&r).to_owned();
        if opts.only.is_some_and(|o| !o.contains(&t.as_str())) {
            continue;
        }
        // Same-sector and shared targets as Type/id; the rest display-only.
        let mut reason_codes: Vec<(Vec<String>, Value)> = Vec::new();
        walk_refs(&mut r, &mut Vec::new(), &mut |path, reference| {
            let u = reference["reference"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let Some(target) = by_url.get(&u) else {
                return;
            };
            let tt = rtype(target);
            match tt {
                "Patient" => {
                    let id = opts.patient.unwrap_or(rid(target));
                    reference["reference"] = json!(format!("Patient/{id}"));
                }
                "Practitioner" | "Organization" => {
                    if opts.only.is_none() && !shared.iter().any(|(s, x)| *s == sector && *x == u) {
                        shared.push((sector, u.clone()));
                    }
                    reference["reference"] = json!(format!("{tt}/{}", rid(target)));
                }
                _ if home.get(&u) == Some(&sector) => {
                    reference["reference"] = json!(format!("{tt}/{prefix}{}", rid(target)));
                }
                _ => {
                    let other = home.get(&u).copied().unwrap_or("?");
                    *rewrites
                        .entry(format!("{t}.{} -> {tt}", path.join(".")))
                        .or_default() += 1;
                    let code_text = match target.get("code") {
                        Some(code) if opts.display_code => {
                            format!(": {}", carebridge::detect::concept_label(Some(code)))
                        }
                        _ => String::new(),
                    };
                    *reference =
                        json!({ "display": format!("{tt} recorded by {other}{code_text}") });
                    if let Some(code) = target.get("code") {
                        reason_codes.push((path.to_vec(), code.clone()));
                    }
                }
            }
        });
        for (path, code) in reason_codes {
            match (t.as_str(), path.first().map(String::as_str)) {
                ("CarePlan", Some("addresses")) => {
                    for act in r["activity"].as_array_mut().into_iter().flatten() {
                        let detail = &mut act["detail"];
                        if detail.is_object() {
                            push_concept(&mut detail["reasonCode"], &code);
                        }
                    }
                }
                ("MedicationRequest" | "Procedure", Some("reasonReference")) => {
                    push_concept(&mut r["reasonCode"], &code);
                }
                _ => {}
            }
        }
        if !prefix.is_empty() {
            r["id"] = json!(format!("{prefix}{}", rid(&r)));
        }
        records.push((sector, r));
    }
    Split {
        records,
        shared,
        by_url,
        home,
        rewrites,
    }
}
