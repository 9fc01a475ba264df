//! Fragmentation detection: pure functions over one patient's cross-sector snapshot (no IO; the
//! time is passed in). Each finding kind has its own module; [`detect`] runs them all. The
//! rules are written for clinicians in `docs/alerts.md`; the code comments give the exact
//! predicates.
//!
//! What counts as active (shared by every detector):
//! - MedicationRequest: status `active` or `on-hold`, intent `order` or `plan` (and the other
//!   order intents: `original-order`, `reflex-order`, `filler-order`, `instance-order`);
//! - MedicationStatement: status `active` or `intended`;
//! - CarePlan: status `active`;
//! - Condition: clinicalStatus `active`, `recurrence` or `relapse` (and not refuted or entered
//!   in error);
//! - CareTeam: status `active` or no status.
//!
//! One condition across code systems and hierarchies: two Conditions are the same condition
//! when their codings, each widened by [`Mapping::condition_keys`] (ICD-10 as SKS-D, the
//! `equal`/`equivalent` translations of `fhir-profiles/conceptmaps/`, and `wider`/`narrower`
//! ones towards a concept that names one disease), relate: equal, or one below the other in the
//! SKS-D hierarchy ([`crate::terminology::conditions::related`]).
//!
//! No new alert is raised for a patient recorded as deceased in any sector ([`patient`]); the
//! lifecycle closes the open ones with that reason.

pub mod communication;
pub mod conditions;
pub mod medication;
pub mod needs;
pub mod patient;
pub mod plans;
pub mod team;

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

use crate::ids::gateway_id;
use crate::terminology::conditions::CodeList;
use crate::terminology::{Mapping, MedKnowledge};

/// The project CodeSystem of the alert codes that v3 ActCode has no code for.
pub const ALERT_CODE_SYSTEM: &str = "http://carebridge.example.org/fhir/CodeSystem/alert-code";
pub const ACT_CODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// One stored resource of the patient (its current version).
#[derive(Debug, Clone)]
pub struct Item {
    pub gid: String,
    pub sector: String,
    pub rtype: String,
    pub rid: String,
    pub version: i64,
    pub body: Value,
}

/// A patient's resources across sectors, at one instant.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub patient_id: String,
    /// Now, in microseconds since the epoch.
    pub now_us: i64,
    pub items: Vec<Item>,
    /// Copies the gateway delivered: (sector, `Type/id` there) to the origin's gateway id.
    pub copies: HashMap<(String, String), String>,
}

impl Snapshot {
    pub fn of_type<'a>(&'a self, rtype: &'a str) -> impl Iterator<Item = &'a Item> + 'a {
        self.items.iter().filter(move |i| i.rtype == rtype)
    }

    pub fn by_gid(&self, gid: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.gid == gid)
    }

    /// The gateway id a reference in `sector`'s resource points at: a delivered copy's origin,
    /// or the sector's own resource.
    pub fn target(&self, sector: &str, reference: &str) -> Option<String> {
        let local = crate::fhir::parse_relative(reference)?;
        let key = format!("{}/{}", local.0, local.1);
        if let Some(origin) = self.copies.get(&(sector.to_owned(), key)) {
            return Some(origin.clone());
        }
        Some(gateway_id(sector, local.0, local.1))
    }
}

/// Thresholds and vocabularies (configuration `[alerts]`).
#[derive(Debug, Clone)]
pub struct Rules {
    pub polypharmacy_threshold: usize,
    pub reply_within_hours: u64,
    /// Chronic conditions (`system|code`, covering its hierarchy, or `system|prefix*`); empty
    /// means the default list of `fhir-profiles/conditions/`.
    pub chronic: CodeList,
    /// `system|code` of CareTeam participant roles that coordinate care; a role whose text
    /// contains "coordinator" or "koordinator" counts too.
    pub coordinator_roles: Vec<String>,
    /// `system|code` of the Communication category that asks for a reply.
    pub reply_requested: Vec<String>,
    /// An active MedicationRequest or ServiceRequest naming a condition as its reason addresses
    /// it (besides care plans).
    pub addressed_by_orders: bool,
    /// The systematic needs assessment (PORT).
    pub needs_assessment: NeedsAssessment,
}

/// What records a systematic needs assessment, and how long one counts.
#[derive(Debug, Clone, Default)]
pub struct NeedsAssessment {
    /// `system|code` of a Procedure or Observation code (an FSIII assessment, say).
    pub codes: Vec<String>,
    /// Canonical URLs of Questionnaires whose completed responses are assessments.
    pub questionnaires: Vec<String>,
    /// Months an assessment counts; 0 turns the rule off.
    pub within_months: u32,
}

/// What detection needs besides the snapshot.
pub struct Context<'a> {
    pub knowledge: &'a MedKnowledge,
    pub mapping: &'a Mapping,
    pub rules: &'a Rules,
}

/// How bad a finding is: FHIR `DetectedIssue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    High,
    Moderate,
    Low,
}

impl Severity {
    /// Every severity, gravest first.
    pub const ALL: [Severity; 3] = [Severity::High, Severity::Moderate, Severity::Low];

    /// The code as `DetectedIssue.severity` renders it.
    pub fn code(self) -> &'static str {
        match self {
            Severity::High => "high",
            Severity::Moderate => "moderate",
            Severity::Low => "low",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// One finding: what, how bad, about which resources, and its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// (system, code, display).
    pub code: (&'static str, &'static str, &'static str),
    pub severity: Severity,
    /// Identifies the finding across re-evaluations: the same finding is never raised twice.
    pub fingerprint: String,
    /// Gateway ids of the implicated resources, sorted.
    pub implicated: Vec<String>,
    /// For the care team: names sectors and items, in plain words.
    pub detail: String,
}

/// Runs every detector; nothing for a deceased patient.
pub fn detect(s: &Snapshot, cx: &Context<'_>) -> Vec<Finding> {
    if patient::deceased(s).is_some() {
        return Vec::new();
    }
    let mut out = Vec::new();
    out.extend(medication::duplicate_ingredient(s, cx));
    out.extend(medication::duplicate_class(s, cx));
    out.extend(medication::polypharmacy(s, cx));
    out.extend(plans::conflicting_plans(s, cx));
    out.extend(conditions::status_conflict(s, cx));
    out.extend(conditions::unaddressed(s, cx));
    out.extend(team::no_coordinator(s, cx));
    out.extend(communication::unanswered(s, cx));
    out.extend(medication::stale_orders(s, cx));
    out.extend(needs::overdue(s, cx));
    out.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
    out.dedup_by(|a, b| a.fingerprint == b.fingerprint);
    out
}

/// When the time-based findings of the snapshot may next change by time alone (no record
/// changing): the earliest future due time of each rule, as (rule, due µs). Nothing for a
/// deceased patient.
pub fn next_due(s: &Snapshot, cx: &Context<'_>) -> Vec<(&'static str, i64)> {
    if patient::deceased(s).is_some() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut add = |rule: &'static str, due: Option<i64>| {
        if let Some(d) = due.filter(|d| *d > s.now_us) {
            out.push((rule, d));
        }
    };
    add("unanswered-communication", communication::next_due(s, cx));
    add("stale-order", medication::next_stale(s));
    add("needs-assessment-overdue", needs::next_due(s, cx));
    out
}

// ---- shared predicates ------------------------------------------------------------------

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

/// The codes of a CodeableConcept's codings as `system|code`.
pub fn coding_keys(concept: Option<&Value>) -> Vec<(String, String)> {
    concept
        .and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| {
                    Some((
                        c.get("system")?.as_str()?.to_owned(),
                        c.get("code")?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn status_code(concept: Option<&Value>) -> Option<String> {
    coding_keys(concept).into_iter().next().map(|(_, c)| c)
}

pub fn active_medication(i: &Item) -> bool {
    match i.rtype.as_str() {
        "MedicationRequest" => {
            matches!(str_at(&i.body, &["status"]), Some("active" | "on-hold"))
                && matches!(
                    str_at(&i.body, &["intent"]),
                    Some(
                        "order"
                            | "plan"
                            | "original-order"
                            | "reflex-order"
                            | "filler-order"
                            | "instance-order"
                    )
                )
        }
        "MedicationStatement" => {
            matches!(str_at(&i.body, &["status"]), Some("active" | "intended"))
        }
        _ => false,
    }
}

pub fn active_plan(i: &Item) -> bool {
    i.rtype == "CarePlan" && str_at(&i.body, &["status"]) == Some("active")
}

pub fn active_condition(i: &Item) -> bool {
    i.rtype == "Condition"
        && matches!(
            status_code(i.body.get("clinicalStatus")).as_deref(),
            Some("active" | "recurrence" | "relapse")
        )
        && !matches!(
            status_code(i.body.get("verificationStatus")).as_deref(),
            Some("refuted" | "entered-in-error")
        )
}

/// Resolved, inactive or in remission — or refuted.
pub fn ended_condition(i: &Item) -> bool {
    i.rtype == "Condition"
        && (matches!(
            status_code(i.body.get("clinicalStatus")).as_deref(),
            Some("resolved" | "inactive" | "remission")
        ) || matches!(
            status_code(i.body.get("verificationStatus")).as_deref(),
            Some("refuted")
        ))
}

pub fn active_team(i: &Item) -> bool {
    i.rtype == "CareTeam" && matches!(str_at(&i.body, &["status"]), None | Some("active"))
}

/// A Goal still pursued: not completed, cancelled, rejected or entered in error.
pub fn active_goal(i: &Item) -> bool {
    i.rtype == "Goal"
        && !matches!(
            str_at(&i.body, &["lifecycleStatus"]),
            Some("completed" | "cancelled" | "entered-in-error" | "rejected")
        )
}

/// A record of the patient's current care: an active plan, condition, care team, medication
/// or goal (what the total healthcare plan shows).
pub fn current(i: &Item) -> bool {
    match i.rtype.as_str() {
        "CarePlan" => active_plan(i),
        "Condition" => active_condition(i),
        "CareTeam" => active_team(i),
        "MedicationRequest" | "MedicationStatement" => active_medication(i),
        "Goal" => active_goal(i),
        _ => false,
    }
}

/// A Condition's codings widened by the equal/equivalent translations: the key set that
/// recognises one condition across code systems.
pub fn condition_keys(i: &Item, mapping: &Mapping) -> BTreeSet<(String, String)> {
    concept_condition_keys(i.body.get("code"), mapping)
}

/// The condition keys of any CodeableConcept (a reason code, say).
pub fn concept_condition_keys(
    concept: Option<&Value>,
    mapping: &Mapping,
) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (system, code) in coding_keys(concept) {
        out.extend(mapping.condition_keys(&system, &code));
    }
    out
}

/// Whether a condition (its keys) is on the chronic list: the configured one, else the default
/// of `fhir-profiles/conditions/`; an entry covers its hierarchy (SKS-D, ICD-10).
pub fn chronic_keys(keys: &BTreeSet<(String, String)>, cx: &Context<'_>) -> bool {
    let list = if cx.rules.chronic.is_empty() {
        cx.mapping.chronic_default()
    } else {
        &cx.rules.chronic
    };
    keys.iter().any(|(s, c)| list.matches(s, c))
}

/// The first instant (µs) a FHIR date/dateTime denotes.
pub fn start_us(v: Option<&Value>) -> Option<i64> {
    crate::fhir::time::period(v?.as_str()?).map(|p| p.0)
}

/// The last instant (µs) a FHIR date/dateTime denotes.
pub fn end_us(v: Option<&Value>) -> Option<i64> {
    crate::fhir::time::period(v?.as_str()?).map(|p| p.1)
}

/// The display of a CodeableConcept: its text, else the first coding's display, else code.
pub fn concept_label(concept: Option<&Value>) -> String {
    let Some(c) = concept else {
        return "(no code)".into();
    };
    if let Some(t) = c.get("text").and_then(Value::as_str) {
        return t.to_owned();
    }
    c.get("coding")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|x| {
            x.get("display")
                .or_else(|| x.get("code"))
                .and_then(Value::as_str)
        })
        .unwrap_or("(no code)")
        .to_owned()
}

/// "gp MedicationRequest" style label of an item for details.
pub fn item_label(i: &Item) -> String {
    format!("{} {}", i.sector, i.rtype)
}

/// `system|code` matches an entry `system|code` or `system|prefix*`.
pub fn matches_code_list(list: &[String], system: &str, code: &str) -> bool {
    list.iter().any(|e| match e.split_once('|') {
        Some((s, c)) if s == system => match c.strip_suffix('*') {
            Some(prefix) => code.starts_with(prefix),
            None => c == code,
        },
        _ => false,
    })
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use serde_json::json;

    pub fn item(sector: &str, rtype: &str, rid: &str, body: Value) -> Item {
        let mut body = body;
        body["resourceType"] = json!(rtype);
        body["id"] = json!(rid);
        Item {
            gid: gateway_id(sector, rtype, rid),
            sector: sector.into(),
            rtype: rtype.into(),
            rid: rid.into(),
            version: 1,
            body,
        }
    }

    pub fn rules() -> Rules {
        Rules {
            polypharmacy_threshold: 5,
            reply_within_hours: 48,
            chronic: CodeList::new(&[
                "urn:oid:1.2.208.176.2.31|T90".into(),
                "urn:oid:1.2.208.176.2.31|K77".into(),
                "urn:oid:1.2.208.176.2.4.12|DE11*".into(),
            ]),
            coordinator_roles: vec!["http://snomed.info/sct|768730001".into()],
            reply_requested: vec![
                "http://carebridge.example.org/fhir/CodeSystem/communication-category|reply-requested"
                    .into(),
            ],
            addressed_by_orders: true,
            needs_assessment: NeedsAssessment {
                codes: vec!["urn:oid:1.2.208.176.2.21|J*".into()],
                questionnaires: vec![],
                within_months: 12,
            },
        }
    }

    pub fn snapshot(items: Vec<Item>) -> Snapshot {
        Snapshot {
            patient_id: "p1".into(),
            now_us: 1_800_000_000_000_000,
            items,
            copies: HashMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{item, rules, snapshot};
    use super::*;
    use serde_json::json;

    fn cx<'a>(k: &'a MedKnowledge, m: &'a Mapping, r: &'a Rules) -> Context<'a> {
        Context {
            knowledge: k,
            mapping: m,
            rules: r,
        }
    }

    fn order(sector: &str, id: &str, atc: &str, requester: &str) -> Item {
        item(
            sector,
            "MedicationRequest",
            id,
            json!({"status": "active", "intent": "order", "requester": {"display": requester},
                   "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": atc}]}}),
        )
    }

    fn codes(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|x| x.code.1).collect()
    }

    #[test]
    fn same_ingredient_from_two_prescribers_of_one_sector_is_a_duplicate() {
        let (k, m, r) = (MedKnowledge::empty(), Mapping::empty(), rules());
        let s = snapshot(vec![
            order("gp", "a", "C03CA01", "Dr A"),
            order("gp", "b", "C03CA01", "Dr B"),
        ]);
        assert_eq!(codes(&detect(&s, &cx(&k, &m, &r))), ["DUPTHPGEN"]);
        let s = snapshot(vec![
            order("gp", "a", "C03CA01", "Dr A"),
            order("gp", "b", "C03CA01", "Dr A"),
        ]);
        assert!(detect(&s, &cx(&k, &m, &r)).is_empty());
    }

    #[test]
    fn a_statement_reporting_an_order_is_not_a_duplicate() {
        let (k, m, r) = (MedKnowledge::empty(), Mapping::empty(), rules());
        let statement = item(
            "municipality",
            "MedicationStatement",
            "s",
            json!({"status": "active", "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": "C03CA01"}]}}),
        );
        let s = snapshot(vec![order("gp", "a", "C03CA01", "Dr A"), statement]);
        assert!(detect(&s, &cx(&k, &m, &r)).is_empty());
    }

    #[test]
    fn polypharmacy_counts_distinct_ingredients_across_sectors() {
        let (k, m, r) = (MedKnowledge::empty(), Mapping::empty(), rules());
        let atc = ["C03CA01", "C09AA02", "C07AB07", "B01AC06", "C10AA05"];
        let items: Vec<Item> = atc
            .iter()
            .enumerate()
            .map(|(n, a)| {
                order(
                    if n % 2 == 0 { "gp" } else { "hospital" },
                    &format!("m{n}"),
                    a,
                    "Dr",
                )
            })
            .collect();
        let found = detect(&snapshot(items.clone()), &cx(&k, &m, &r));
        assert_eq!(codes(&found), ["polypharmacy"]);
        assert!(detect(&snapshot(items[..4].to_vec()), &cx(&k, &m, &r)).is_empty());
    }

    #[test]
    fn fingerprints_are_stable_and_evidence_is_sorted() {
        let (k, m, r) = (MedKnowledge::empty(), Mapping::empty(), rules());
        let a = vec![
            order("gp", "a", "C09AA02", "X"),
            order("hospital", "b", "C09AA05", "Y"),
        ];
        let mut b = a.clone();
        b.reverse();
        assert_eq!(
            detect(&snapshot(a), &cx(&k, &m, &r)),
            detect(&snapshot(b), &cx(&k, &m, &r))
        );
    }

    #[test]
    fn severities_render_as_detected_issue_codes() {
        let codes: Vec<&str> = Severity::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, ["high", "moderate", "low"]);
        assert_eq!(Severity::Moderate.to_string(), "moderate");
    }

    #[test]
    fn code_lists_match_codes_and_prefixes() {
        let list = vec!["s|DE11*".to_owned(), "s|T90".to_owned()];
        assert!(matches_code_list(&list, "s", "DE112"));
        assert!(matches_code_list(&list, "s", "T90"));
        assert!(!matches_code_list(&list, "s", "T9"));
        assert!(!matches_code_list(&list, "t", "T90"));
    }
}
