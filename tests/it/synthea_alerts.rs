//! Fragmentation alerts on real-shaped data: the 50 Synthea patients of
//! `../shared/data/synthea/`, each split across general practice, hospital and municipality,
//! brought to a state the care team has dealt with (the resolution step), pushed through the
//! API, and the alerts read back as DetectedIssue; then findings are planted and withdrawn.
//!
//! **The split** (deterministic; [`split`], by the rule of `tests/common/synthea.rs`, which the P3
//! bench shares):
//!
//! - `Patient` goes to all three sectors, with the same synthetic CPR identifier
//!   (`urn:oid:1.2.208.176.1.2`, ten digits: `0101` + `50` + `7000 + index`, index = position of
//!   the file in name order), so the gateway links the three into one patient;
//! - an `Encounter` goes by its class: `AMB` (ambulatory, wellness) to `gp`, `EMER` and `IMP`
//!   (emergency, inpatient) to `hospital`;
//! - a `CarePlan` whose category is home-care, rehabilitation or self-care style
//!   (`synthea::MUNICIPAL_PLANS`: self care, dementia management, head injury rehabilitation, wound
//!   care, physical therapy, musculoskeletal care) goes to `municipality`; any other CarePlan
//!   (disease management such as diabetes or heart failure self management, COPD, hyperlipidemia,
//!   cancer, inpatient, fracture care ...) goes with its encounter;
//! - a `Goal` goes with the CarePlan that lists it (every Synthea Goal is listed by exactly one);
//! - every other resource that names an encounter (Condition, MedicationRequest, Observation,
//!   Procedure, DiagnosticReport, Immunization, ImagingStudy, Claim, ExplanationOfBenefit) goes
//!   with that encounter (`encounter`, or `item[].encounter` for Claim and EOB);
//! - what names none (AllergyIntolerance) goes to `gp`;
//! - `Practitioner` and `Organization` are copied into every sector bundle that references them
//!   (same ids, so one prescriber is the same `Practitioner/<id>` in every sector).
//!
//! **References** are written as `Type/id` (the gateway would do the same with the fullUrls).
//! A reference to a resource that the split put in another sector cannot be kept (a sector
//! names only its own resources; the gateway delivers nothing here, so there are no copies to
//! point at). It becomes a display-only Reference, "`<Type>` recorded by `<sector>`: `<code
//! text>`", and where the link carries clinical meaning the target's code is kept:
//! - `CarePlan.addresses` → the Condition's `code` is added as `reasonCode` of every activity
//!   of the plan (docs/alerts.md: a plan addresses a condition by `addresses`, by an activity's
//!   `reasonReference`, or by an activity's `reasonCode`: the same condition for the detector);
//! - `MedicationRequest.reasonReference` and `Procedure.reasonReference` → `reasonCode`;
//! - everything else (encounter references of municipal plans, Claim/EOB links) is display only.
//!
//! Sectors are configured **without** a `profile` and without a `base_url`: Synthea is US data
//! (SNOMED CT, RxNorm, no CPR), which the dk-* profiles reject on purpose, and nothing is delivered.
//!
//! **The raw split** is never pushed. The pure detector (`carebridge::detect::detect`) finds on
//! it what the Synthea data itself says under the alert rules (91 findings in 48 patients:
//! `DUPTHPGEN` 9, `unaddressed-condition` 49, `no-care-coordinator` 33): Synthea carries no
//! CareTeam (so every patient with active plans in two sectors lacks a coordinator), leaves
//! chronic hypertension, coronary heart disease, atrial fibrillation, osteoporosis and diabetes
//! without a CarePlan that addresses them, and leaves an older furosemide or simvastatin order
//! active beside a newer one. Synthea has no Communication, so `unanswered-communication` never
//! arises from the data.
//!
//! **Resolution** (deterministic, data-driven; [`resolve`]): before anything is pushed, the
//! split records of each patient are changed the way the care team would answer those findings,
//! derived from the pure detector's findings on the raw split (nothing is chosen per patient by
//! hand):
//!
//! - every patient gets a general-practice `CareTeam` in `gp` (the Danish model: the patient's
//!   GP practice coordinates): status `active`, the patient as subject, one participant whose
//!   role is the first configured `alerts.coordinator_roles` coding (SNOMED CT 768730001, by
//!   code only: no role text, so the detector's code match is what is tested) and whose member
//!   is the Practitioner of the patient's latest ambulatory (`AMB`) encounter that names one
//!   (else any Practitioner in `gp`), managed by that encounter's `serviceProvider`
//!   Organization. This answers `no-care-coordinator`;
//! - for `unaddressed-condition`, one "chronic care in general practice" CarePlan per patient
//!   in `gp` (status `active`, intent `plan`, category SNOMED CT 736271009 "Outpatient care
//!   plan", the CareTeam as `careTeam`): every implicated Condition recorded by `gp` is listed
//!   under `addresses`; one recorded by another sector is given as a `reasonCode` of the plan's
//!   one activity (`detail.status` `in-progress`, a description and no code, so the activity can
//!   never take part in a `conflicting-plans` comparison);
//! - for `DUPTHPGEN` (and `DUPTHPCLS`, were there any): of the implicated active
//!   MedicationRequests and MedicationStatements, the most recently authored or asserted one
//!   stays; every other becomes `completed` (it was superseded);
//! - the rules are applied in rounds (detect, resolve) until the pure detector finds nothing;
//!   a kind without a rule (`polypharmacy`, `conflicting-plans`, `condition-status-conflict`,
//!   `unanswered-communication`: none in the data) would be left and fail the test.
//!
//! On the 50 patients this adds 50 CareTeams (every coordinator the Practitioner of the latest
//! ambulatory encounter) and 35 chronic-care CarePlans addressing the 49 Conditions of the
//! `unaddressed-condition` findings (all recorded by `gp`, so all by `addresses`; no
//! `reasonCode` was needed), and completes 9 MedicationRequests, one per `DUPTHPGEN` (8 gp
//! furosemide orders older than the hospital's, 1 gp simvastatin order older than another gp
//! one). One round suffices (39 patients; the other 11 needed nothing beyond the CareTeam). The
//! test prints these counts and, per raw finding, what answered it.
//!
//! **What is asserted**
//!
//! 1. *Raw split, in-process*: the split adds nothing the data does not say: the pure detector
//!    on the **unsplit** record of each patient (all in one sector) finds the same
//!    `DUPTHPCLS`, `polypharmacy` and `unaddressed-condition` findings as on the raw split
//!    (rules that do not look at sectors), every unsplit `DUPTHPGEN` is in the split, and a
//!    split-only `DUPTHPGEN` always spans sectors (the same prescriber's orders, now in two
//!    sectors). Cross-sector kinds (`condition-status-conflict`, `conflicting-plans`,
//!    `no-care-coordinator`) cannot exist unsplit; they are printed.
//! 2. *Resolved clean split*: the pure detector finds nothing on the resolved records; they are
//!    pushed (one transaction per patient per sector, 150 in all, from two clients: odd and
//!    even patients) and there is **no open alert at all** through the API, for every patient
//!    (so no alert of an injected kind appears on the clean split).
//! 3. *Injected*: per patient, records whose trigger the test controls exactly ([`inject`]) are
//!    pushed to the same patients (one transaction per sector, then the CareTeam update on its
//!    own): a hospital order duplicating a gp drug still active after resolution
//!    (`DUPTHPGEN`), a second ingredient of one ATC class (`DUPTHPCLS`), a gp Condition
//!    resolved in the hospital (`condition-status-conflict`), a plan of another sector stopping
//!    an activity an active plan keeps (`conflicting-plans`), a chronic condition that no plan
//!    addresses and the patient has in no form (`unaddressed-condition`; the chronic-care plan
//!    does not address it), and the gp CareTeam made `inactive` (an update of the same
//!    CareTeam) where the patient then has active plans in two or more sectors
//!    (`no-care-coordinator`). Every planted finding is raised exactly once (by code and
//!    implicated records, and by fingerprint where it is known beforehand), as a
//!    `preliminary` alert, no two planted findings are the same alert, and every other open
//!    alert is a consequence the injection controls (`polypharmacy` when the new ingredients
//!    reach the threshold), exactly as many per kind as computed beforehand. Since the clean
//!    baseline is zero, `injected − clean` is the planted findings plus those consequences.
//! 4. *Withdrawn*: the injected records are entered in error (plans revoked) and the CareTeam
//!    is active again; there is again no open alert.
//!
//! In every state the open alerts through the API equal, by fingerprint, what the pure
//! detector finds in-process on the same records (detection is a function of a patient's
//! current records). The later states are reached by adding to the same patients rather than
//! pushing the split again into a fresh app, which would double the run time (the split takes
//! 20–35 s to push in the debug build; the whole test about a minute on 2 cores).
//!
//! The counts per alert code (unsplit, raw split, resolved clean split, injected, withdrawn),
//! the resolution, every raw finding and every injection are printed with `eprintln!`
//! (`cargo test --test it synthea_alerts:: -- --nocapture`).

use crate::common::synthea::{self, SECTORS, SplitOptions, push_concept, rid, rtype, walk_refs};
use crate::common::{Backend, TestApp, read_json, repo, shared_data};
use carebridge::config::AlertSettings;
use carebridge::detect::{self, Context, Item, Rules, Snapshot};
use carebridge::ids::gateway_id;
use carebridge::terminology::Mapping;
use carebridge::terminology::medication::{MedKnowledge, RouteFamily, concept_of};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

const CPR_SYSTEM: &str = "urn:oid:1.2.208.176.1.2";
const ICPC2: &str = "urn:oid:1.2.208.176.2.31";
const ATC: &str = "http://www.whocc.no/atc";
const SCT: &str = "http://snomed.info/sct";

/// The alert codes, in print order.
const KINDS: [&str; 10] = [
    "DUPTHPGEN",
    "DUPTHPCLS",
    "polypharmacy",
    "conflicting-plans",
    "condition-status-conflict",
    "unaddressed-condition",
    "no-care-coordinator",
    "unanswered-communication",
    "stale-order",
    "needs-assessment-overdue",
];

/// Three sectors without profile (Synthea is US data) and without base URL (nothing is
/// delivered), plus `lab` for the harness's lab client.
fn config(store_url: &str) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_second = 0\nmax_bundle_entries = 5000\n\n\
         [store]\nurl = \"{store_url}\"\nmax_connections = 4\n\n\
         [fhir]\nprofiles_dir = \"{}\"\n\n[exchange]\nenabled = false\n",
        repo().join("fhir-profiles").display()
    );
    for (id, kind) in [
        ("gp", "general-practice"),
        ("hospital", "hospital"),
        ("municipality", "municipality"),
        ("lab", "hospital"),
    ] {
        text.push_str(&format!(
            "\n[[sectors]]\nid = \"{id}\"\nname = \"{id}\"\nkind = \"{kind}\"\n"
        ));
    }
    text
}

// ---- the split ----------------------------------------------------------------------------

/// One Synthea patient, split.
#[derive(Clone)]
struct SplitPatient {
    index: usize,
    file: String,
    cpr: String,
    /// The Synthea Patient id (the same sector-local id in every sector).
    patient_id: String,
    /// Per sector: the resources as pushed (Patient first, then Practitioners and
    /// Organizations, then the rest in Bundle order).
    sectors: BTreeMap<&'static str, Vec<Value>>,
    /// Unsplit: every resource with references as `Type/id` (for the pure detector).
    unsplit: Vec<Value>,
}

impl SplitPatient {
    /// The records detection reads, as Items of their sector.
    fn items(&self) -> Vec<Item> {
        let mut out = Vec::new();
        for (sector, list) in &self.sectors {
            for r in list {
                if let Some(i) = item(sector, r) {
                    out.push(i);
                }
            }
        }
        out
    }

    fn resources(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        self.sectors
            .iter()
            .flat_map(|(s, list)| list.iter().map(move |r| (*s, r)))
    }

    fn entries(&self) -> usize {
        self.sectors.values().map(Vec::len).sum()
    }
}

fn item(sector: &str, r: &Value) -> Option<Item> {
    let t = rtype(r);
    // What the gateway's snapshot holds: the detection types, the Encounters orders name and
    // the assessment records (here all of them: detection looks only at those it needs).
    let read = carebridge::gateway::alerts::DETECT_TYPES.contains(&t)
        || t == "Encounter"
        || detect::needs::ASSESSMENT_TYPES.contains(&t);
    read.then(|| Item {
        gid: gateway_id(sector, t, rid(r)),
        sector: sector.to_owned(),
        rtype: t.to_owned(),
        rid: rid(r).to_owned(),
        version: 1,
        body: r.clone(),
    })
}

fn gid(sector: &str, r: &Value) -> String {
    gateway_id(sector, rtype(r), rid(r))
}

fn label(r: &Value) -> String {
    detect::concept_label(r.get("code"))
}

/// Counts of the references the split rewrote, by `Type.path -> target type`.
type Rewrites = BTreeMap<String, usize>;

/// The CPR of patient `index`: 1 January 1950, sequence 7000 + index.
fn cpr_of(index: usize) -> String {
    format!("010150{:04}", 7000 + index)
}

/// One patient's split (the rule of `common::synthea`): the Patient, with the synthetic CPR
/// added, in every sector, then the Practitioners and Organizations each sector references (in
/// fullUrl order), then that sector's records in Bundle order; and the unsplit record.
fn split(index: usize, file: &str, bundle: &Value, rewrites: &mut Rewrites) -> SplitPatient {
    let entries = bundle["entry"].as_array().expect("entries").clone();
    let cpr = cpr_of(index);
    let mut patient = entries
        .iter()
        .map(|e| &e["resource"])
        .find(|r| rtype(r) == "Patient")
        .expect("a Patient")
        .clone();
    patient["identifier"]
        .as_array_mut()
        .expect("identifiers")
        .push(json!({ "system": CPR_SYSTEM, "value": cpr }));
    let patient_id = rid(&patient).to_owned();

    let parts = synthea::split(
        bundle,
        &SplitOptions {
            display_code: true,
            ..SplitOptions::default()
        },
    );
    for (k, n) in &parts.rewrites {
        *rewrites.entry(k.clone()).or_default() += n;
    }
    // Unsplit: every record the split placed, with every reference as Type/id.
    let mut unsplit = vec![patient.clone()];
    for e in &entries {
        if !parts.home.contains_key(e["fullUrl"].as_str().unwrap()) {
            continue;
        }
        let mut whole = e["resource"].clone();
        walk_refs(&mut whole, &mut Vec::new(), &mut |_, reference| {
            let u = reference["reference"].as_str().unwrap().to_owned();
            if let Some(target) = parts.by_url.get(&u) {
                reference["reference"] = json!(format!("{}/{}", rtype(target), rid(target)));
            }
        });
        unsplit.push(whole);
    }
    let mut shared: BTreeMap<&'static str, BTreeSet<&str>> = BTreeMap::new();
    for (sector, url) in &parts.shared {
        shared.entry(sector).or_default().insert(url);
    }
    let mut sectors: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
    for s in SECTORS {
        let mut list = vec![patient.clone()];
        for url in shared.get(s).into_iter().flatten() {
            list.push(parts.shared_resource(url));
        }
        sectors.insert(s, list);
    }
    for (sector, r) in parts.records {
        sectors.get_mut(sector).unwrap().push(r);
    }
    SplitPatient {
        index,
        file: file.to_owned(),
        cpr,
        patient_id,
        sectors,
        unsplit,
    }
}

fn load_patients(rewrites: &mut Rewrites) -> Vec<SplitPatient> {
    let files = synthea::files(&shared_data()).expect("synthea folder");
    assert_eq!(files.len(), 50);
    files
        .iter()
        .enumerate()
        .map(|(n, p)| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            split(n, &name, &read_json(p), rewrites)
        })
        .collect()
}

// ---- the resolution -----------------------------------------------------------------------

/// Where the coordinator of a patient's gp CareTeam came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Coordinator {
    /// The Practitioner of the latest ambulatory encounter that names one.
    LatestAmbulatory,
    /// Another Practitioner of the gp record.
    OtherGp,
    /// No Practitioner in the gp record: a participant with the role only.
    Nobody,
}

/// What the resolution step did to one patient.
#[derive(Debug)]
struct Resolution {
    /// The pure detector's findings on the raw split.
    raw: Vec<detect::Finding>,
    coordinator: Coordinator,
    /// The gp CareTeam as pushed (active).
    team: Value,
    /// A chronic-care CarePlan was added to gp.
    plan_added: bool,
    /// Conditions the plan lists under `addresses` (recorded by gp).
    by_reference: usize,
    /// Conditions of other sectors the plan's activity gives as `reasonCode`.
    by_reason_code: usize,
    /// Superseded medications made `completed`: "sector Type: label".
    completed: Vec<String>,
    /// What answered each finding: (fingerprint, action).
    actions: Vec<(String, String)>,
    /// Rounds (detect, resolve) that changed something.
    rounds: usize,
    /// What the pure detector still finds on the resolved records (must be nothing).
    left: Vec<detect::Finding>,
    /// Needs assessments recorded in the municipality.
    assessed: usize,
}

/// `authoredOn` (MedicationRequest) or `dateAsserted`/`effective[x]` (MedicationStatement) in
/// seconds; a date without a time or a missing date sorts first.
fn med_time(r: &Value) -> Option<i64> {
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    [
        &r["authoredOn"],
        &r["dateAsserted"],
        &r["effectiveDateTime"],
        &r["effectivePeriod"]["start"],
    ]
    .into_iter()
    .find_map(Value::as_str)
    .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
    .map(OffsetDateTime::unix_timestamp)
}

/// The record with gateway id `g`, with its sector.
fn record_mut<'a>(p: &'a mut SplitPatient, g: &str) -> Option<(&'static str, &'a mut Value)> {
    p.sectors
        .iter_mut()
        .flat_map(|(s, list)| list.iter_mut().map(move |r| (*s, r)))
        .find(|(s, r)| gid(s, r) == g)
}

/// A duplicate (`DUPTHPGEN`, `DUPTHPCLS`): the most recent implicated medication stays, the
/// others are completed (superseded).
fn supersede(p: &mut SplitPatient, f: &detect::Finding, res: &mut Resolution) -> Option<String> {
    let mut meds: Vec<(Option<i64>, String)> = p
        .resources()
        .filter(|(_, r)| matches!(rtype(r), "MedicationRequest" | "MedicationStatement"))
        .map(|(s, r)| (med_time(r), gid(s, r)))
        .filter(|(_, g)| f.implicated.contains(g))
        .collect();
    meds.sort();
    let (_, kept) = meds.pop()?;
    if meds.is_empty() {
        return None;
    }
    let mut done = Vec::new();
    for (_, g) in &meds {
        let (s, r) = record_mut(p, g).expect("an implicated record");
        r["status"] = json!("completed");
        done.push(format!(
            "{s} {}: {}",
            rtype(r),
            detect::concept_label(concept_of(r))
        ));
    }
    res.completed.extend(done.iter().cloned());
    let (s, r) = record_mut(p, &kept).expect("the kept record");
    Some(format!(
        "completed (superseded) {}; kept the newer {s} {}",
        done.join(", "),
        rtype(r)
    ))
}

/// A stale order (left active after its inpatient stay or validity): completed.
fn complete_stale(
    p: &mut SplitPatient,
    f: &detect::Finding,
    res: &mut Resolution,
) -> Option<String> {
    let g = f
        .implicated
        .iter()
        .find(|g| record_mut(p, g).is_some_and(|(_, r)| rtype(r) == "MedicationRequest"))?
        .clone();
    let (s, r) = record_mut(p, &g)?;
    r["status"] = json!("completed");
    let what = format!(
        "{s} MedicationRequest: {}",
        detect::concept_label(concept_of(r))
    );
    res.completed.push(what.clone());
    Some(format!("completed the stale order {what}"))
}

/// An overdue needs assessment: the municipality records one (a completed response to the
/// configured questionnaire, authored now).
fn assess(p: &mut SplitPatient, k: &Knowledge, res: &mut Resolution) -> Option<String> {
    let q = k.rules.needs_assessment.questionnaires.first()?.clone();
    let id = format!("m-needs-assessment-{}", p.patient_id);
    let subject = format!("Patient/{}", p.patient_id);
    let list = p.sectors.get_mut("municipality")?;
    if list.iter().any(|r| rid(r) == id) {
        return None;
    }
    list.push(json!({
        "resourceType": "QuestionnaireResponse", "id": id, "status": "completed",
        "questionnaire": q, "subject": { "reference": subject },
        "authored": carebridge::fhir::time::instant(carebridge::fhir::time::now_us()),
    }));
    res.assessed += 1;
    Some("municipality needs assessment (QuestionnaireResponse) recorded".into())
}

/// An unaddressed chronic condition: the gp chronic-care plan addresses it (`addresses` for a
/// gp Condition, an activity's `reasonCode` for another sector's).
fn address(
    p: &mut SplitPatient,
    f: &detect::Finding,
    team_id: &str,
    res: &mut Resolution,
) -> Option<String> {
    let conditions: Vec<(&'static str, Value)> = p
        .resources()
        .filter(|(s, r)| rtype(r) == "Condition" && f.implicated.contains(&gid(s, r)))
        .map(|(s, r)| (s, r.clone()))
        .collect();
    if conditions.is_empty() {
        return None;
    }
    let plan_id = format!("gp-chronic-care-{}", p.patient_id);
    let subject = format!("Patient/{}", p.patient_id);
    let gp = p.sectors.get_mut("gp").unwrap();
    let at = match gp
        .iter()
        .position(|r| rtype(r) == "CarePlan" && rid(r) == plan_id)
    {
        Some(at) => at,
        None => {
            res.plan_added = true;
            gp.push(json!({
                "resourceType": "CarePlan", "id": plan_id, "status": "active", "intent": "plan",
                "category": [{
                    "coding": [{ "system": SCT, "code": "736271009", "display": "Outpatient care plan" }],
                    "text": "Chronic care in general practice"
                }],
                "title": "Chronic care in general practice",
                "subject": { "reference": subject },
                "careTeam": [{ "reference": format!("CareTeam/{team_id}") }],
            }));
            gp.len() - 1
        }
    };
    let plan = &mut gp[at];
    let mut how = Vec::new();
    for (s, c) in conditions {
        if s == "gp" {
            push_concept(
                &mut plan["addresses"],
                &json!({ "reference": format!("Condition/{}", rid(&c)), "display": label(&c) }),
            );
            res.by_reference += 1;
            how.push(format!("addresses gp Condition '{}'", label(&c)));
        } else {
            if !plan["activity"].is_array() {
                plan["activity"] = json!([{ "detail": {
                    "status": "in-progress",
                    "description": "Follow-up of chronic conditions in general practice",
                } }]);
            }
            push_concept(&mut plan["activity"][0]["detail"]["reasonCode"], &c["code"]);
            res.by_reason_code += 1;
            how.push(format!("reasonCode of {s} Condition '{}'", label(&c)));
        }
    }
    Some(format!("gp chronic-care plan: {}", how.join(", ")))
}

/// The resolution step (module documentation): the raw split of `raw` changed the way the care
/// team answers its findings.
fn resolve(k: &Knowledge, raw: &SplitPatient) -> (SplitPatient, Resolution) {
    let mut p = raw.clone();
    let pid = p.patient_id.clone();
    let found = k.detect(raw.items());

    // The general-practice CareTeam, coordinated by the patient's GP.
    let gp = &p.sectors["gp"];
    let latest = gp
        .iter()
        .filter(|r| rtype(r) == "Encounter" && r["class"]["code"] == "AMB")
        .filter_map(|e| {
            let who = e["participant"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x["individual"]["reference"].as_str())
                .find(|r| r.starts_with("Practitioner/"))?;
            let start = e["period"]["start"].as_str().and_then(|s| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            });
            Some((
                start,
                rid(e),
                who,
                e["serviceProvider"]["reference"].as_str(),
            ))
        })
        .max();
    let (coordinator, member, organization) = match latest {
        Some((_, _, who, org)) => (
            Coordinator::LatestAmbulatory,
            Some(who.to_owned()),
            org.filter(|o| o.starts_with("Organization/"))
                .map(str::to_owned),
        ),
        None => match gp.iter().find(|r| rtype(r) == "Practitioner") {
            Some(pr) => (
                Coordinator::OtherGp,
                Some(format!("Practitioner/{}", rid(pr))),
                None,
            ),
            None => (Coordinator::Nobody, None, None),
        },
    };
    let (role_system, role_code) = k.rules.coordinator_roles[0]
        .split_once('|')
        .expect("a coordinator role as system|code");
    let mut participant = json!({ "role": [{
        "coding": [{ "system": role_system, "code": role_code, "display": "Care coordinator" }]
    }] });
    if let Some(m) = &member {
        participant["member"] = json!({ "reference": m });
    }
    let team_id = format!("gp-team-{pid}");
    let mut team = json!({
        "resourceType": "CareTeam", "id": team_id, "status": "active",
        "category": [{ "coding": [{ "system": "http://loinc.org", "code": "LA28865-6",
                                     "display": "Longitudinal care-coordination focused care team" }] }],
        "name": "General practice",
        "subject": { "reference": format!("Patient/{pid}") },
        "participant": [participant],
    });
    if let Some(o) = organization {
        team["managingOrganization"] = json!([{ "reference": o }]);
    }
    p.sectors.get_mut("gp").unwrap().push(team.clone());
    let mut res = Resolution {
        raw: found.clone(),
        coordinator,
        team,
        plan_added: false,
        by_reference: 0,
        by_reason_code: 0,
        completed: Vec::new(),
        actions: Vec::new(),
        rounds: 0,
        left: Vec::new(),
        assessed: 0,
    };
    for f in found.iter().filter(|f| f.code.1 == "no-care-coordinator") {
        res.actions.push((
            f.fingerprint.clone(),
            format!(
                "gp CareTeam, coordinator {}",
                member.as_deref().unwrap_or("(role only)")
            ),
        ));
    }

    // Rounds: detect on the changed records, answer what is found, until nothing is.
    for _ in 0..3 {
        let found = k.detect(p.items());
        let mut changed = false;
        for f in &found {
            let action = match f.code.1 {
                "DUPTHPGEN" | "DUPTHPCLS" => supersede(&mut p, f, &mut res),
                "unaddressed-condition" => address(&mut p, f, &team_id, &mut res),
                "stale-order" => complete_stale(&mut p, f, &mut res),
                "needs-assessment-overdue" => assess(&mut p, k, &mut res),
                _ => None,
            };
            if let Some(a) = action {
                changed = true;
                res.actions.push((f.fingerprint.clone(), a));
            }
        }
        if !changed {
            break;
        }
        res.rounds += 1;
    }
    res.left = k.detect(p.items());
    (p, res)
}

// ---- pushing and reading alerts ---------------------------------------------------------

/// One transaction Bundle of PUTs under a sector.
async fn push_sector(app: &TestApp, file: &str, sector: &str, list: &[&Value]) {
    let entries: Vec<Value> = list
        .iter()
        .map(|r| {
            json!({ "resource": r,
                    "request": { "method": "PUT", "url": format!("{}/{}", rtype(r), rid(r)) } })
        })
        .collect();
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries });
    let (status, body, _) = app.post(sector, &format!("/{sector}"), &bundle).await;
    assert_eq!(status, 200, "{file} {sector}: {body}");
}

async fn push_patient(app: &TestApp, p: &SplitPatient) {
    for (sector, list) in &p.sectors {
        push_sector(app, &p.file, sector, &list.iter().collect::<Vec<_>>()).await;
    }
}

/// Records of one patient, one transaction per sector.
async fn push_records(app: &TestApp, p: &SplitPatient, records: &[(&'static str, Value)]) {
    for sector in SECTORS {
        let list: Vec<&Value> = records
            .iter()
            .filter(|(s, _)| *s == sector)
            .map(|(_, r)| r)
            .collect();
        if !list.is_empty() {
            push_sector(app, &p.file, sector, &list).await;
        }
    }
}

/// One DetectedIssue, as the test needs it.
#[derive(Debug, Clone)]
struct Alert {
    code: String,
    fingerprint: String,
    status: String,
    implicated: BTreeSet<String>,
    detail: String,
}

async fn open_alerts(app: &TestApp, p: &SplitPatient) -> Vec<Alert> {
    let (status, found) = app
        .get(
            "careteam",
            &format!("/Patient?identifier={CPR_SYSTEM}|{}", p.cpr),
        )
        .await;
    assert_eq!(status, 200, "{found}");
    let entries = found["entry"].as_array().expect("a linked patient");
    assert_eq!(entries.len(), 1, "{}: one gateway patient", p.file);
    let pid = entries[0]["resource"]["id"].as_str().unwrap().to_owned();
    let (status, bundle) = app
        .get(
            "careteam",
            &format!("/DetectedIssue?patient={pid}&_count=1000"),
        )
        .await;
    assert_eq!(status, 200, "{bundle}");
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(|di| di["status"] != "cancelled")
        .map(|di| Alert {
            code: di["code"]["coding"][0]["code"].as_str().unwrap().to_owned(),
            fingerprint: di["identifier"][0]["value"].as_str().unwrap().to_owned(),
            status: di["status"].as_str().unwrap().to_owned(),
            implicated: di["implicated"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["reference"].as_str())
                .filter_map(|r| r.split('/').nth(1).map(str::to_owned))
                .collect(),
            detail: di["detail"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

async fn all_open_alerts(app: &TestApp, patients: &[SplitPatient]) -> Vec<Vec<Alert>> {
    let mut out = Vec::new();
    for p in patients {
        out.push(open_alerts(app, p).await);
    }
    out
}

// ---- the pure detector --------------------------------------------------------------------

struct Knowledge {
    med: MedKnowledge,
    mapping: Mapping,
    rules: Rules,
}

impl Knowledge {
    fn load() -> Knowledge {
        let dir = repo().join("fhir-profiles");
        Knowledge {
            med: MedKnowledge::load(&dir).expect("medication knowledge"),
            mapping: Mapping::load(&dir).expect("concept maps"),
            rules: Rules::from(&AlertSettings::default()),
        }
    }

    fn detect(&self, items: Vec<Item>) -> Vec<detect::Finding> {
        let s = Snapshot {
            patient_id: "p".into(),
            now_us: carebridge::fhir::time::now_us(),
            items,
            copies: HashMap::new(),
        };
        let cx = Context {
            knowledge: &self.med,
            mapping: &self.mapping,
            rules: &self.rules,
        };
        detect::detect(&s, &cx)
    }

    /// Widened condition keys of a CodeableConcept.
    fn keys(&self, concept: &Value) -> BTreeSet<(String, String)> {
        detect::concept_condition_keys(Some(concept), &self.mapping)
    }

    /// Ingredients (ATC) and route family of an active medication, as the detectors see it.
    fn med(&self, r: &Value) -> (Vec<String>, String) {
        let concept = concept_of(r).cloned().unwrap_or(Value::Null);
        let family = match self.med.route_family(r, &concept) {
            RouteFamily::Unknown => RouteFamily::Systemic,
            f => f,
        };
        (
            self.med
                .ingredients(&concept)
                .into_iter()
                .map(|i| i.atc)
                .collect(),
            format!("{family:?}").to_lowercase(),
        )
    }

    /// The distinct active ingredients the polypharmacy rule counts.
    fn distinct(&self, items: &[Item]) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for i in items.iter().filter(|i| detect::active_medication(i)) {
            let (ings, _) = self.med(&i.body);
            if ings.is_empty() {
                let key = detect::coding_keys(concept_of(&i.body))
                    .first()
                    .map(|(s, c)| format!("{s}|{c}"))
                    .unwrap_or_else(|| i.gid.clone());
                out.insert(key);
            } else {
                out.extend(ings);
            }
        }
        out
    }
}

fn count_codes<'a>(codes: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for c in codes {
        *m.entry(c.to_owned()).or_default() += 1;
    }
    m
}

// ---- injection ----------------------------------------------------------------------------

/// One finding the test plants, and how to recognise it.
#[derive(Debug, Clone)]
struct Planted {
    code: &'static str,
    /// The expected fingerprint, when the test can name it beforehand.
    fingerprint: Option<String>,
    /// Gateway ids the alert must implicate.
    implicated: Vec<String>,
    what: String,
}

/// What is injected into one patient, and what it must raise.
#[derive(Debug, Default)]
struct Injection {
    planted: Vec<Planted>,
    /// Consequences the injection controls (not planted), per alert code: `polypharmacy` when
    /// the new ingredients reach the threshold.
    caused: BTreeMap<&'static str, usize>,
    /// The new records, by sector.
    records: Vec<(&'static str, Value)>,
    /// Changed resolved records (the gp CareTeam made inactive), pushed after `records`.
    updates: Vec<(&'static str, Value)>,
    /// `no-care-coordinator` was not planted: fewer than two sectors with active plans.
    no_coordinator_skipped: bool,
    /// The patient is recorded as deceased: the records are pushed, nothing may be raised.
    deceased: bool,
    /// Findings that would have been planted for a living patient.
    suppressed: usize,
}

impl Injection {
    /// Expected `injected − clean` per alert code: the planted findings and the consequences.
    fn delta(&self) -> BTreeMap<&'static str, usize> {
        let mut d = self.caused.clone();
        for pl in &self.planted {
            *d.entry(pl.code).or_default() += 1;
        }
        d
    }

    /// Everything pushed, in push order.
    fn pushed(&self) -> impl Iterator<Item = &(&'static str, Value)> {
        self.records.iter().chain(&self.updates)
    }
}

/// `items` with `records` applied: a record replaces the item of the same gateway id, or is
/// added.
fn applied<'a>(
    mut items: Vec<Item>,
    records: impl IntoIterator<Item = &'a (&'static str, Value)>,
) -> Vec<Item> {
    for (s, r) in records {
        let Some(new) = item(s, r) else { continue };
        match items.iter_mut().find(|i| i.gid == new.gid) {
            Some(old) => *old = new,
            None => items.push(new),
        }
    }
    items
}

fn order(id: &str, patient: &str, concept: Value, requester: &str, dosage: Option<Value>) -> Value {
    let mut r = json!({
        "resourceType": "MedicationRequest", "id": id, "status": "active", "intent": "order",
        "medicationCodeableConcept": concept,
        "subject": { "reference": format!("Patient/{patient}") },
        "authoredOn": "2024-03-01T09:00:00+01:00",
        "requester": { "display": requester },
    });
    if let Some(d) = dosage {
        r["dosageInstruction"] = d;
    }
    r
}

fn atc_concept(code: &str) -> Value {
    json!({ "coding": [{ "system": ATC, "code": code }], "text": code })
}

fn oral() -> Option<Value> {
    Some(
        json!([{ "text": "1 tablet daily", "route": { "coding": [{ "system": SCT, "code": "26643006", "display": "Oral route" }] } }]),
    )
}

fn condition(id: &str, patient: &str, code: Value, status: &str) -> Value {
    let mut c = json!({
        "resourceType": "Condition", "id": id,
        "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": status }] },
        "verificationStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed" }] },
        "code": code,
        "subject": { "reference": format!("Patient/{patient}") },
        "recordedDate": "2024-03-01",
    });
    if status == "resolved" {
        c["abatementDateTime"] = json!("2024-02-20");
    }
    c
}

fn plan(id: &str, patient: &str, code: &Value, activity_status: &str) -> Value {
    json!({
        "resourceType": "CarePlan", "id": id, "status": "active", "intent": "plan",
        "title": "Injected plan",
        "subject": { "reference": format!("Patient/{patient}") },
        "activity": [{ "detail": { "code": code, "status": activity_status } }],
    })
}

/// ACE inhibitors (ATC C09AA): the class of the planted class duplicate, with three of its
/// ingredients.
const ACE_INHIBITORS: (&str, [&str; 3]) = ("C09AA", ["C09AA05", "C09AA02", "C09AA03"]);

/// Chronic ICPC-2 codes (all in the default `alerts.chronic`) for the unaddressed condition.
const CHRONIC_ICPC2: [&str; 8] = ["L95", "R96", "K78", "P76", "L89", "U99", "K77", "T90"];

/// Non-chronic ICPC-2 codes for a planted status conflict when the gp has no active condition.
const PLAIN_ICPC2: [&str; 3] = ["D93", "S91", "F92"];

/// Plants findings in the resolved patient `p` (whose clean split raises nothing): new
/// resources, and the gp CareTeam `team` made inactive where that leaves plans of two sectors
/// without a coordinator.
fn inject(k: &Knowledge, p: &SplitPatient, team: &Value) -> Injection {
    let pid = p.patient_id.clone();
    let mut inj = Injection::default();
    let before = p.items();
    let mut add: Vec<(&'static str, Value)> = Vec::new();

    // 1. DUPTHPGEN: the hospital orders what an active gp order gives (one known ingredient,
    //    still active after resolution). Else gp and hospital both order allopurinol.
    let target = before.iter().find_map(|i| {
        if i.sector != "gp" || i.rtype != "MedicationRequest" || !detect::active_medication(i) {
            return None;
        }
        let (ings, family) = k.med(&i.body);
        let fp = format!("DUPTHPGEN|{}|{family}", ings.first()?);
        (ings.len() == 1).then_some((i, fp))
    });
    let dup_id = format!("inj-dupgen-{}", p.index);
    match target {
        Some((gp_order, fp)) => {
            let r = order(
                &dup_id,
                &pid,
                gp_order.body["medicationCodeableConcept"].clone(),
                "Hospital physician (injected)",
                gp_order.body.get("dosageInstruction").cloned(),
            );
            inj.planted.push(Planted {
                code: "DUPTHPGEN",
                fingerprint: Some(fp),
                implicated: vec![gp_order.gid.clone(), gid("hospital", &r)],
                what: format!(
                    "hospital re-orders gp's {}",
                    detect::concept_label(gp_order.body.get("medicationCodeableConcept"))
                ),
            });
            add.push(("hospital", r));
        }
        None => {
            let gp = order(
                &format!("{dup_id}-gp"),
                &pid,
                atc_concept("M04AA01"),
                "GP (injected)",
                oral(),
            );
            let h = order(
                &dup_id,
                &pid,
                atc_concept("M04AA01"),
                "Hospital physician (injected)",
                oral(),
            );
            inj.planted.push(Planted {
                code: "DUPTHPGEN",
                fingerprint: Some("DUPTHPGEN|M04AA01|systemic".into()),
                implicated: vec![gid("gp", &gp), gid("hospital", &h)],
                what: "gp and hospital both order allopurinol".into(),
            });
            add.push(("gp", gp));
            add.push(("hospital", h));
        }
    }

    // 2. DUPTHPCLS: a second ingredient of a class (ACE inhibitors: the clean split has no class
    //    alert, so the patient takes at most one); when the patient takes none of the class, gp and hospital order two.
    let active_ings: BTreeSet<String> = before
        .iter()
        .filter(|i| detect::active_medication(i))
        .flat_map(|i| k.med(&i.body).0)
        .collect();
    let (class, ings) = &ACE_INHIBITORS;
    let present: Vec<&String> = active_ings
        .iter()
        .filter(|a| a.starts_with(class))
        .collect();
    let fresh: Vec<&str> = ings
        .iter()
        .copied()
        .filter(|a| !active_ings.contains(*a))
        .collect();
    let cls_id = format!("inj-dupcls-{}", p.index);
    let mut cls_gids = Vec::new();
    let mut what = format!("class {class}: ");
    if present.is_empty() {
        let gp = order(
            &format!("{cls_id}-gp"),
            &pid,
            atc_concept(fresh[0]),
            "GP (injected)",
            oral(),
        );
        cls_gids.push(gid("gp", &gp));
        what.push_str(&format!("gp {} + ", fresh[0]));
        add.push(("gp", gp));
    } else {
        what.push_str(&format!("active {present:?} + "));
    }
    let h = order(
        &cls_id,
        &pid,
        atc_concept(fresh[if present.is_empty() { 1 } else { 0 }]),
        "Hospital physician (injected)",
        oral(),
    );
    what.push_str(&format!(
        "hospital {}",
        fresh[if present.is_empty() { 1 } else { 0 }]
    ));
    cls_gids.push(gid("hospital", &h));
    add.push(("hospital", h));
    inj.planted.push(Planted {
        code: "DUPTHPCLS",
        fingerprint: Some(format!("DUPTHPCLS|{class}|systemic")),
        implicated: cls_gids,
        what,
    });

    // 3. condition-status-conflict: the hospital records an active gp condition as resolved.
    let gp_condition = before
        .iter()
        .find(|i| i.sector == "gp" && detect::active_condition(i));
    let csc_id = format!("inj-resolved-{}", p.index);
    let all_condition_keys: BTreeSet<(String, String)> = before
        .iter()
        .filter(|i| i.rtype == "Condition")
        .flat_map(|i| k.keys(&i.body["code"]))
        .collect();
    match gp_condition {
        Some(c) => {
            let r = condition(&csc_id, &pid, c.body["code"].clone(), "resolved");
            inj.planted.push(Planted {
                code: "condition-status-conflict",
                fingerprint: None,
                implicated: vec![c.gid.clone(), gid("hospital", &r)],
                what: format!("hospital: '{}' resolved", label(&c.body)),
            });
            add.push(("hospital", r));
        }
        None => {
            let code = PLAIN_ICPC2
                .iter()
                .map(|c| json!({ "coding": [{ "system": ICPC2, "code": c }] }))
                .find(|c| k.keys(c).is_disjoint(&all_condition_keys))
                .expect("a free code");
            let gp = condition(&format!("{csc_id}-gp"), &pid, code.clone(), "active");
            let h = condition(&csc_id, &pid, code, "resolved");
            inj.planted.push(Planted {
                code: "condition-status-conflict",
                fingerprint: None,
                implicated: vec![gid("gp", &gp), gid("hospital", &h)],
                what: "gp active, hospital resolved (planted pair)".into(),
            });
            add.push(("gp", gp));
            add.push(("hospital", h));
        }
    }

    // 4. conflicting-plans: another sector's plan stops an activity an active plan keeps.
    let keeps = |d: &Value| {
        d["doNotPerform"].as_bool() != Some(true)
            && matches!(
                d["status"].as_str(),
                None | Some("not-started" | "scheduled" | "in-progress" | "on-hold")
            )
    };
    let plans: Vec<&Item> = before.iter().filter(|i| detect::active_plan(i)).collect();
    let kept = plans.iter().find_map(|pl| {
        pl.body["activity"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| &a["detail"])
            .find(|d| keeps(d) && d.get("code").is_some())
            .map(|d| (*pl, d["code"].clone()))
    });
    let cp_id = format!("inj-stop-{}", p.index);
    let (stop_sector, code, mut extra_plans): (&'static str, Value, Vec<(&'static str, Value)>) =
        match &kept {
            Some((pl, code)) => (
                if pl.sector == "municipality" {
                    "gp"
                } else {
                    "municipality"
                },
                code.clone(),
                Vec::new(),
            ),
            None => {
                let code = json!({ "coding": [{ "system": SCT, "code": "229065009", "display": "Exercise therapy" }] });
                let keep = plan(&format!("{cp_id}-gp"), &pid, &code, "in-progress");
                ("municipality", code, vec![("gp", keep)])
            }
        };
    let stop = plan(&cp_id, &pid, &code, "stopped");
    let stop_gid = gid(stop_sector, &stop);
    let stop_keys: BTreeSet<String> = k
        .keys(&code)
        .into_iter()
        .map(|(s, c)| format!("{s}|{c}"))
        .collect();
    // Every active plan of another sector that keeps an activity with a shared key conflicts.
    let mut all_plans: Vec<(String, &str, Value)> = plans
        .iter()
        .map(|pl| (pl.gid.clone(), pl.sector.as_str(), pl.body.clone()))
        .collect();
    for (s, pl) in &extra_plans {
        all_plans.push((gid(s, pl), *s, pl.clone()));
    }
    let mut conflicting = 0;
    for (g, s, body) in &all_plans {
        if *s == stop_sector {
            continue;
        }
        let hit = body["activity"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| &a["detail"])
            .filter(|d| keeps(d))
            .any(|d| {
                k.keys(&d["code"])
                    .into_iter()
                    .any(|(s, c)| stop_keys.contains(&format!("{s}|{c}")))
            });
        if hit {
            conflicting += 1;
            inj.planted.push(Planted {
                code: "conflicting-plans",
                fingerprint: None,
                implicated: vec![g.clone(), stop_gid.clone()],
                what: format!(
                    "{stop_sector} plan stops '{}' that the {s} plan keeps",
                    detect::concept_label(Some(&code))
                ),
            });
        }
    }
    assert!(conflicting >= 1, "{}: a plan conflict is planted", p.file);
    add.append(&mut extra_plans);
    add.push((stop_sector, stop));

    // 5. unaddressed-condition: a chronic condition in gp that nothing addresses and that the
    //    patient does not have in any form.
    let plan_reasons: BTreeSet<(String, String)> = plans
        .iter()
        .flat_map(|pl| pl.body["activity"].as_array().into_iter().flatten())
        .flat_map(|a| a["detail"]["reasonCode"].as_array().into_iter().flatten())
        .flat_map(|c| k.keys(c))
        .collect();
    let taken: BTreeSet<(String, String)> = all_condition_keys
        .union(&plan_reasons)
        .cloned()
        .chain(
            add.iter()
                .filter(|(_, r)| rtype(r) == "Condition")
                .flat_map(|(_, r)| k.keys(&r["code"])),
        )
        .collect();
    let chronic_code = CHRONIC_ICPC2
        .iter()
        .map(|c| json!({ "coding": [{ "system": ICPC2, "code": c }] }))
        .find(|c| k.keys(c).is_disjoint(&taken))
        .expect("a chronic code the patient has not got");
    let un = condition(
        &format!("inj-chronic-{}", p.index),
        &pid,
        chronic_code.clone(),
        "active",
    );
    let first_key = k.keys(&chronic_code).into_iter().next().unwrap();
    inj.planted.push(Planted {
        code: "unaddressed-condition",
        fingerprint: Some(format!(
            "unaddressed-condition|{}|{}",
            first_key.0, first_key.1
        )),
        implicated: vec![gid("gp", &un)],
        what: format!(
            "gp: chronic {} without a plan",
            detect::concept_label(Some(&chronic_code))
        ),
    });
    add.push(("gp", un));

    // 6. no-care-coordinator: the gp CareTeam made inactive (an update of the same CareTeam,
    //    pushed last), where the patient then has active plans in two or more sectors.
    let after = applied(before.clone(), &add);
    let active_plans: Vec<&Item> = after.iter().filter(|i| detect::active_plan(i)).collect();
    let plan_sectors: BTreeSet<&str> = active_plans.iter().map(|i| i.sector.as_str()).collect();
    if plan_sectors.len() >= 2 {
        let mut off = team.clone();
        off["status"] = json!("inactive");
        inj.planted.push(Planted {
            code: "no-care-coordinator",
            fingerprint: Some("no-care-coordinator".into()),
            implicated: active_plans.iter().map(|i| i.gid.clone()).collect(),
            what: format!(
                "gp CareTeam inactive; active plans in {}",
                plan_sectors.iter().copied().collect::<Vec<_>>().join(", ")
            ),
        });
        inj.updates.push(("gp", off));
    } else {
        inj.no_coordinator_skipped = true;
    }

    // The consequence the injection controls: polypharmacy when the new ingredients reach the
    // threshold.
    let threshold = k.rules.polypharmacy_threshold;
    let (n_before, n_after) = (k.distinct(&before).len(), k.distinct(&after).len());
    if n_before < threshold && n_after >= threshold {
        *inj.caused.entry("polypharmacy").or_default() += 1;
    }
    inj.records = add;
    // A deceased patient gets no new alert, whatever is recorded.
    let cx = Context {
        knowledge: &k.med,
        mapping: &k.mapping,
        rules: &k.rules,
    };
    if detect::patient::deceased(&snapshot_of(before, &cx)).is_some() {
        inj.deceased = true;
        inj.suppressed = inj.planted.len() + inj.caused.values().sum::<usize>();
        inj.planted.clear();
        inj.caused.clear();
    }
    inj
}

fn snapshot_of(items: Vec<Item>, _cx: &Context<'_>) -> Snapshot {
    Snapshot {
        patient_id: "p".into(),
        now_us: carebridge::fhir::time::now_us(),
        items,
        copies: HashMap::new(),
    }
}

/// The injected records withdrawn: orders and conditions entered in error, plans revoked, the
/// CareTeam active again.
fn withdrawn(r: &Value) -> Value {
    let mut r = r.clone();
    match rtype(&r) {
        "MedicationRequest" => r["status"] = json!("entered-in-error"),
        "CarePlan" => r["status"] = json!("revoked"),
        "CareTeam" => r["status"] = json!("active"),
        "Condition" => {
            r.as_object_mut().unwrap().remove("clinicalStatus");
            r.as_object_mut().unwrap().remove("abatementDateTime");
            r["verificationStatus"]["coding"][0]["code"] = json!("entered-in-error");
        }
        _ => {}
    }
    r
}

// ---- the test -----------------------------------------------------------------------------

fn table_row(name: &str, counts: &BTreeMap<String, usize>) -> String {
    signed_row(name, &|k| counts.get(k).copied().unwrap_or(0) as i64)
}

fn signed_row(name: &str, count: &dyn Fn(&str) -> i64) -> String {
    let mut s = format!("  {name:<32}");
    let mut total = 0;
    for k in KINDS {
        s.push_str(&format!(" {:>10}", count(k)));
        total += count(k);
    }
    s.push_str(&format!(" {total:>7}"));
    s
}

fn short(kind: &str) -> &str {
    match kind {
        "DUPTHPGEN" => "DUPGEN",
        "DUPTHPCLS" => "DUPCLS",
        "polypharmacy" => "polypharm",
        "conflicting-plans" => "conflplan",
        "condition-status-conflict" => "statusconf",
        "unaddressed-condition" => "unaddress",
        "no-care-coordinator" => "nocoord",
        "stale-order" => "stale",
        "needs-assessment-overdue" => "needsasmt",
        _ => "unanswer",
    }
}

fn fingerprints(alerts: &[Alert]) -> BTreeSet<&str> {
    alerts.iter().map(|a| a.fingerprint.as_str()).collect()
}

fn pure_fingerprints(k: &Knowledge, items: Vec<Item>) -> BTreeSet<String> {
    k.detect(items).into_iter().map(|f| f.fingerprint).collect()
}

/// The API's open alerts against the pure detector on the same records, by fingerprint.
fn api_equals_pure(
    failures: &mut Vec<String>,
    state: &str,
    k: &Knowledge,
    p: &SplitPatient,
    alerts: &[Alert],
    items: Vec<Item>,
) {
    let api = fingerprints(alerts);
    let pure = pure_fingerprints(k, items);
    if api != pure.iter().map(String::as_str).collect() {
        failures.push(format!(
            "{}: {state}: API {api:?} != pure detector {pure:?}",
            p.file
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthea_split_resolved_raises_nothing_and_every_planted_finding_once() {
    let started = Instant::now();
    let k = Knowledge::load();
    let mut rewrites = Rewrites::new();
    let raw = load_patients(&mut rewrites);
    assert!(
        raw.iter()
            .flat_map(|p| p.unsplit.iter())
            .all(|r| !matches!(rtype(r), "CareTeam" | "Communication")),
        "Synthea has no CareTeam or Communication (the resolution's CareTeam assumes it)"
    );
    let mut failures: Vec<String> = Vec::new();

    // (1) The raw split, in-process: what the data itself says (unsplit: all of a patient in
    //     one sector), and that the split adds nothing the sectors do not explain.
    let unsplit: Vec<Vec<detect::Finding>> = raw
        .iter()
        .map(|p| k.detect(p.unsplit.iter().filter_map(|r| item("lab", r)).collect()))
        .collect();
    let raw_found: Vec<Vec<detect::Finding>> = raw.iter().map(|p| k.detect(p.items())).collect();
    for ((p, split_f), whole) in raw.iter().zip(&raw_found).zip(&unsplit) {
        let split_fps: BTreeSet<&str> = split_f.iter().map(|f| f.fingerprint.as_str()).collect();
        let whole_fps: BTreeSet<&str> = whole.iter().map(|f| f.fingerprint.as_str()).collect();
        for kind in ["DUPTHPCLS", "polypharmacy", "unaddressed-condition"] {
            let of = |fs: &[detect::Finding]| -> BTreeSet<String> {
                fs.iter()
                    .filter(|f| f.code.1 == kind)
                    .map(|f| f.fingerprint.clone())
                    .collect()
            };
            if of(split_f) != of(whole) {
                failures.push(format!(
                    "{}: {kind}: split {:?} but unsplit {:?}",
                    p.file,
                    of(split_f),
                    of(whole)
                ));
            }
        }
        for f in whole.iter().filter(|f| f.code.1 == "DUPTHPGEN") {
            if !split_fps.contains(f.fingerprint.as_str()) {
                failures.push(format!(
                    "{}: unsplit {} lost in the split",
                    p.file, f.fingerprint
                ));
            }
        }
        let sector_of: HashMap<String, &str> = p.resources().map(|(s, r)| (gid(s, r), s)).collect();
        for f in split_f
            .iter()
            .filter(|f| f.code.1 == "DUPTHPGEN" && !whole_fps.contains(f.fingerprint.as_str()))
        {
            let sectors: BTreeSet<&str> = f
                .implicated
                .iter()
                .filter_map(|g| sector_of.get(g).copied())
                .collect();
            if sectors.len() < 2 {
                failures.push(format!(
                    "{}: split-only {} within one sector ({sectors:?})",
                    p.file, f.fingerprint
                ));
            }
        }
    }

    // (2) The resolution: the raw split answered the way the care team would, before pushing.
    let (patients, resolutions): (Vec<SplitPatient>, Vec<Resolution>) =
        raw.iter().map(|p| resolve(&k, p)).unzip();
    for (p, res) in patients.iter().zip(&resolutions) {
        if !res.left.is_empty() {
            failures.push(format!(
                "{}: the pure detector still finds {:?} after the resolution",
                p.file,
                res.left.iter().map(|f| &f.fingerprint).collect::<Vec<_>>()
            ));
        }
    }
    let per_sector: BTreeMap<&str, usize> = SECTORS
        .iter()
        .map(|s| (*s, patients.iter().map(|p| p.sectors[s].len()).sum()))
        .collect();
    eprintln!(
        "split: {} patients, {} entries pushed in {} transactions ({per_sector:?}, the Patient in each; after the resolution)",
        patients.len(),
        patients.iter().map(SplitPatient::entries).sum::<usize>(),
        patients.len() * SECTORS.len()
    );
    eprintln!(
        "cross-sector references made display-only (codes kept as reasonCode where documented):"
    );
    for (k, n) in &rewrites {
        eprintln!("  {n:>5}  {k}");
    }
    let count = |f: &dyn Fn(&Resolution) -> usize| resolutions.iter().map(f).sum::<usize>();
    let completed: Vec<&String> = resolutions.iter().flat_map(|r| &r.completed).collect();
    eprintln!(
        "resolution (before pushing): {} gp CareTeams with a coordinator role (member: latest \
         ambulatory encounter's Practitioner {}, another gp Practitioner {}, none {}); {} \
         chronic-care CarePlans in gp addressing {} Conditions ({} by `addresses`, {} by activity \
         `reasonCode`); {} medications completed as superseded ({} MedicationRequests, {} \
         MedicationStatements); rounds: {:?}",
        resolutions.len(),
        count(&|r| usize::from(r.coordinator == Coordinator::LatestAmbulatory)),
        count(&|r| usize::from(r.coordinator == Coordinator::OtherGp)),
        count(&|r| usize::from(r.coordinator == Coordinator::Nobody)),
        count(&|r| usize::from(r.plan_added)),
        count(&|r| r.by_reference + r.by_reason_code),
        count(&|r| r.by_reference),
        count(&|r| r.by_reason_code),
        completed.len(),
        completed
            .iter()
            .filter(|c| c.contains(" MedicationRequest:"))
            .count(),
        completed
            .iter()
            .filter(|c| c.contains(" MedicationStatement:"))
            .count(),
        count_codes(resolutions.iter().map(|r| match r.rounds {
            0 => "0",
            1 => "1",
            2 => "2",
            _ => "3",
        })),
    );

    // (3) The resolved clean split through the API: no open alert at all.
    let app = TestApp::spawn_config(Backend::Sqlite, config).await;
    let t = Instant::now();
    // Two clients (odd and even patients): one validates while the other writes.
    let stream = |parity: usize| {
        let (app, patients) = (&app, &patients);
        async move {
            for p in patients.iter().filter(|p| p.index % 2 == parity) {
                push_patient(app, p).await;
            }
        }
    };
    tokio::join!(stream(0), stream(1));
    let push_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let clean = all_open_alerts(&app, &patients).await;
    let read_secs = t.elapsed().as_secs_f64();
    for (p, alerts) in patients.iter().zip(&clean) {
        if !alerts.is_empty() {
            failures.push(format!(
                "{}: resolved clean split: open alerts {:?}",
                p.file,
                alerts
                    .iter()
                    .map(|a| format!("{}: {}", a.code, a.detail))
                    .collect::<Vec<_>>()
            ));
        }
        api_equals_pure(&mut failures, "clean", &k, p, alerts, p.items());
    }

    // (4) Injected: planted findings added to the same patients (new records, one transaction
    //     per sector and patient; then the CareTeam update).
    let injections: Vec<Injection> = patients
        .iter()
        .zip(&resolutions)
        .map(|(p, res)| inject(&k, p, &res.team))
        .collect();
    let t = Instant::now();
    for (p, inj) in patients.iter().zip(&injections) {
        push_records(&app, p, &inj.records).await;
        push_records(&app, p, &inj.updates).await;
    }
    let inject_secs = t.elapsed().as_secs_f64();
    let injected = all_open_alerts(&app, &patients).await;
    let mut planted_total: BTreeMap<String, usize> = BTreeMap::new();
    let mut caused_total: BTreeMap<String, usize> = BTreeMap::new();
    let mut expected_delta: BTreeMap<String, usize> = BTreeMap::new();
    for (((p, inj), before), after) in patients.iter().zip(&injections).zip(&clean).zip(&injected) {
        // Each planted finding is exactly one new alert, and no two are the same alert.
        let mut matched: BTreeSet<&str> = BTreeSet::new();
        for pl in &inj.planted {
            *planted_total.entry(pl.code.to_owned()).or_default() += 1;
            let hits: Vec<&Alert> = after
                .iter()
                .filter(|a| a.code == pl.code)
                .filter(|a| pl.implicated.iter().all(|g| a.implicated.contains(g)))
                .collect();
            if hits.len() != 1 {
                failures.push(format!(
                    "{}: planted {} ({}) raised {} times: {hits:?}",
                    p.file,
                    pl.code,
                    pl.what,
                    hits.len()
                ));
                continue;
            }
            let a = hits[0];
            if let Some(fp) = pl.fingerprint.as_ref().filter(|fp| **fp != a.fingerprint) {
                failures.push(format!(
                    "{}: planted {} has fingerprint {} (expected {fp})",
                    p.file, pl.code, a.fingerprint
                ));
            }
            if fingerprints(before).contains(a.fingerprint.as_str()) || a.status != "preliminary" {
                failures.push(format!(
                    "{}: planted {} is not a new alert: {} ({})",
                    p.file, pl.code, a.fingerprint, a.status
                ));
            }
            if !matched.insert(a.fingerprint.as_str()) {
                failures.push(format!(
                    "{}: two planted findings are one alert {}",
                    p.file, a.fingerprint
                ));
            }
        }
        // Every other open alert is a consequence the injection controls, as many as computed.
        let rest = count_codes(
            after
                .iter()
                .filter(|a| !matched.contains(a.fingerprint.as_str()))
                .map(|a| a.code.as_str()),
        );
        let (c0, c1) = (
            count_codes(before.iter().map(|a| a.code.as_str())),
            count_codes(after.iter().map(|a| a.code.as_str())),
        );
        let delta = inj.delta();
        for kind in KINDS {
            let caused = inj.caused.get(kind).copied().unwrap_or(0);
            *caused_total.entry(kind.to_owned()).or_default() += caused;
            if rest.get(kind).copied().unwrap_or(0) != caused {
                failures.push(format!(
                    "{}: {kind}: {} open alerts besides the planted ones, expected {caused}: {:?}",
                    p.file,
                    rest.get(kind).copied().unwrap_or(0),
                    after
                        .iter()
                        .filter(|a| a.code == kind && !matched.contains(a.fingerprint.as_str()))
                        .map(|a| &a.detail)
                        .collect::<Vec<_>>()
                ));
            }
            let want = delta.get(kind).copied().unwrap_or(0);
            *expected_delta.entry(kind.to_owned()).or_default() += want;
            let n0 = c0.get(kind).copied().unwrap_or(0);
            let n1 = c1.get(kind).copied().unwrap_or(0);
            if n1 != n0 + want {
                failures.push(format!(
                    "{}: {kind}: clean {n0}, injected {n1}, expected +{want}",
                    p.file
                ));
            }
        }
        api_equals_pure(
            &mut failures,
            "injected",
            &k,
            p,
            after,
            applied(p.items(), inj.pushed()),
        );
    }

    // (5) Withdrawn: the injected records entered in error (plans revoked), the CareTeam active
    //     again: no open alert again.
    let withdrawals: Vec<Vec<(&'static str, Value)>> = injections
        .iter()
        .map(|inj| inj.pushed().map(|(s, r)| (*s, withdrawn(r))).collect())
        .collect();
    for (p, back) in patients.iter().zip(&withdrawals) {
        push_records(&app, p, back).await;
    }
    let restored = all_open_alerts(&app, &patients).await;
    for ((p, back), after) in patients.iter().zip(&withdrawals).zip(&restored) {
        if !after.is_empty() {
            failures.push(format!(
                "{}: after withdrawing the injections: open alerts {:?}",
                p.file,
                fingerprints(after)
            ));
        }
        api_equals_pure(
            &mut failures,
            "withdrawn",
            &k,
            p,
            after,
            applied(p.items(), back),
        );
    }
    app.stop().await;

    // Report.
    let totals = |runs: &[Vec<Alert>]| count_codes(runs.iter().flatten().map(|a| a.code.as_str()));
    let pure_totals =
        |runs: &[Vec<detect::Finding>]| count_codes(runs.iter().flatten().map(|f| f.code.1));
    let (clean_counts, injected_counts) = (totals(&clean), totals(&injected));
    let mut header = format!("  {:<32}", "open alerts, 50 patients");
    for kind in KINDS {
        header.push_str(&format!(" {:>10}", short(kind)));
    }
    header.push_str("   total");
    eprintln!("\nalerts per code ({}):", KINDS.join(", "));
    eprintln!("{header}");
    eprintln!(
        "{}",
        table_row("unsplit (pure detector)", &pure_totals(&unsplit))
    );
    eprintln!(
        "{}",
        table_row("raw split (pure detector)", &pure_totals(&raw_found))
    );
    let left: Vec<Vec<detect::Finding>> = resolutions.iter().map(|r| r.left.clone()).collect();
    eprintln!(
        "{}",
        table_row("resolved split (pure detector)", &pure_totals(&left))
    );
    eprintln!("{}", table_row("resolved clean split (API)", &clean_counts));
    eprintln!("{}", table_row("injected (API)", &injected_counts));
    let n = |m: &BTreeMap<String, usize>, k: &str| m.get(k).copied().unwrap_or(0) as i64;
    eprintln!(
        "{}",
        signed_row("injected - clean", &|k| n(&injected_counts, k)
            - n(&clean_counts, k))
    );
    eprintln!("{}", table_row("  of which planted", &planted_total));
    eprintln!("{}", table_row("  of which caused", &caused_total));
    eprintln!(
        "{}",
        table_row("  expected (planted + caused)", &expected_delta)
    );
    eprintln!("{}", table_row("withdrawn (API)", &totals(&restored)));
    eprintln!(
        "deceased patients (no alert may be raised): {}; planted findings suppressed for them: {}; \
         needs assessments recorded by the resolution: {}",
        injections.iter().filter(|i| i.deceased).count(),
        injections.iter().map(|i| i.suppressed).sum::<usize>(),
        resolutions.iter().map(|r| r.assessed).sum::<usize>()
    );
    eprintln!(
        "patients with a raw-split finding: {} of 50; no-care-coordinator not planted (plans in \
         fewer than two sectors): {}; pushing the split took {push_secs:.1} s, reading the \
         alerts {read_secs:.1} s, pushing the injections {inject_secs:.1} s",
        raw_found.iter().filter(|f| !f.is_empty()).count(),
        injections
            .iter()
            .filter(|i| i.no_coordinator_skipped)
            .count()
    );
    eprintln!(
        "\nraw-split findings (what the Synthea data says under this split) and their resolution:"
    );
    for (p, res) in patients.iter().zip(&resolutions) {
        for f in &res.raw {
            let how: Vec<&str> = res
                .actions
                .iter()
                .filter(|(fp, _)| *fp == f.fingerprint)
                .map(|(_, a)| a.as_str())
                .collect();
            eprintln!(
                "  [{:>2}] {} | {} | {}\n         -> {}",
                p.index,
                p.file,
                f.code.1,
                f.detail,
                if how.is_empty() {
                    "(nothing)".to_owned()
                } else {
                    how.join("; ")
                }
            );
        }
    }
    eprintln!("\ninjections per patient:");
    for (p, inj) in patients.iter().zip(&injections) {
        let what: Vec<String> = inj
            .planted
            .iter()
            .map(|x| format!("{}: {}", x.code, x.what))
            .collect();
        let caused: Vec<String> = inj
            .caused
            .iter()
            .map(|(c, n)| format!("+{n} {c}"))
            .collect();
        eprintln!(
            "  [{:>2}] {}; {}",
            p.index,
            what.join("; "),
            caused.join(", ")
        );
    }
    eprintln!("({:.1} s in all)", started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
