//! What the console's pages show, read from the FHIR resources the gateway core returns (a
//! DetectedIssue, the `$total-plan` Bundle, a record): small typed lines, nothing computed that
//! the core did not decide. Pure.

use serde_json::Value;
use std::collections::BTreeMap;

use crate::detect::team::coordinator_role;
use crate::fhir::SECTOR_TAG_SYSTEM;
use crate::fhir::time::instant;
use crate::gateway::history::SNOOZE_EXTENSION;
use crate::store::HistoryRow;
use crate::terminology::Mapping;

/// One alert as the inbox and the detail page show it.
#[derive(Debug, Clone)]
pub struct AlertLine {
    pub id: String,
    pub patient: String,
    pub code: String,
    pub code_text: String,
    pub severity: String,
    pub status: String,
    pub raised: String,
    pub detail: String,
    /// The implicated records: (`Type/gid`, sector, type).
    pub implicated: Vec<(String, String, String)>,
    /// While the alert is snoozed: until when (a FHIR dateTime), by whom, why.
    pub snoozed: Option<(String, String, String)>,
}

/// One change in an alert's history, as the detail page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryLine {
    /// raised, updated, acknowledged, snoozed, closed or reopened.
    pub kind: String,
    /// When (a FHIR instant).
    pub at: String,
    /// Who (empty: the gateway's detection).
    pub author: String,
    pub note: String,
    /// The alert's detail text after the change.
    pub detail: String,
    /// Implicated records that joined or left with this change (`Type/gid`).
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// The history lines of an alert's stored history: each change with what it changed in the
/// implicated records, compared with the change before it.
pub fn history(rows: &[HistoryRow]) -> Vec<HistoryLine> {
    let mut before: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (i, h) in rows.iter().enumerate() {
        let now: Vec<String> = serde_json::from_str(&h.implicated).unwrap_or_default();
        let (added, removed) = if i == 0 || h.kind == "snoozed" || h.kind == "acknowledged" {
            (Vec::new(), Vec::new())
        } else {
            (
                now.iter()
                    .filter(|r| !before.contains(r))
                    .cloned()
                    .collect(),
                before
                    .iter()
                    .filter(|r| !now.contains(r))
                    .cloned()
                    .collect(),
            )
        };
        out.push(HistoryLine {
            kind: h.kind.clone(),
            at: instant(h.at_us),
            author: h.author.clone(),
            note: h.note.clone(),
            detail: h.detail.clone(),
            added,
            removed,
        });
        before = now;
    }
    out
}

fn s(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        cur = match p.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[*p],
        };
    }
    cur.as_str().unwrap_or("").to_owned()
}

impl AlertLine {
    pub fn from_issue(di: &Value) -> AlertLine {
        let implicated = di["implicated"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let reference = s(r, &["reference"]);
                let display = s(r, &["display"]);
                let (sector, rtype) = display.split_once(' ').unwrap_or(("", ""));
                (reference, sector.to_owned(), rtype.to_owned())
            })
            .collect();
        AlertLine {
            id: s(di, &["id"]),
            patient: s(di, &["patient", "reference"])
                .trim_start_matches("Patient/")
                .to_owned(),
            code: s(di, &["code", "coding", "0", "code"]),
            code_text: s(di, &["code", "text"]),
            severity: s(di, &["severity"]),
            status: s(di, &["status"]),
            raised: s(di, &["identifiedDateTime"]),
            detail: s(di, &["detail"]),
            implicated,
            snoozed: snooze_of(di),
        }
    }

    /// Whether the alert is still open (not closed by detection).
    pub fn open(&self) -> bool {
        self.status != "cancelled"
    }

    /// The sectors of its implicated records, each once.
    pub fn sectors(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (_, sector, _) in &self.implicated {
            if !sector.is_empty() && !out.contains(&sector.as_str()) {
                out.push(sector);
            }
        }
        out
    }

    /// 0 for high, 1 for moderate, 2 for low: the inbox's order.
    pub fn rank(&self) -> u8 {
        match self.severity.as_str() {
            "high" => 0,
            "moderate" => 1,
            _ => 2,
        }
    }
}

/// The snooze extension of a served DetectedIssue: (until, author, note).
fn snooze_of(di: &Value) -> Option<(String, String, String)> {
    let ext = di["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == SNOOZE_EXTENSION)?;
    let part = |name: &str, key: &str| {
        ext["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["url"] == name)
            .map(|e| s(e, &[key]))
            .unwrap_or_default()
    };
    Some((
        part("until", "valueDateTime"),
        part("author", "valueString"),
        part("note", "valueString"),
    ))
}

/// Orders alerts by severity, then the oldest first.
pub fn order(lines: &mut [AlertLine]) {
    lines.sort_by(|a, b| (a.rank(), &a.raised, &a.id).cmp(&(b.rank(), &b.raised, &b.id)));
}

/// The date part of a FHIR instant or dateTime (`2026-12-05T10:00:00Z` → `2026-12-05`).
pub fn day(t: &str) -> &str {
    t.get(..10).unwrap_or(t)
}

/// What the pages need of the gateway's knowledge: the coordinator roles detection uses, and
/// the ConceptMaps (the codes given as equal to a code).
pub struct Knowledge<'a> {
    pub coordinator_roles: &'a [String],
    pub mapping: &'a Mapping,
}

/// A record of the total plan or an alert's implicated record, reduced to what a card shows.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub gid: String,
    pub rtype: String,
    pub sector: String,
    pub sector_name: String,
    /// What it is: the text or first display of its main concept.
    pub title: String,
    /// Its codes as `system-name code`.
    pub codes: Vec<String>,
    /// The codes the gateway's ConceptMaps give as the same (a condition's, for other sectors).
    pub mapped: Vec<String>,
    pub status: String,
    /// A period or date, as written.
    pub when: String,
    /// Dosage text of a medication; description of a plan or goal.
    pub note: String,
    /// CareTeam participants: (member, role, is coordinator).
    pub members: Vec<(String, String, bool)>,
}

/// The concept that names a record of this type.
fn concept<'a>(rtype: &str, r: &'a Value) -> &'a Value {
    match rtype {
        "Condition" => &r["code"],
        "MedicationRequest" | "MedicationStatement" => &r["medicationCodeableConcept"],
        "Goal" => &r["description"],
        "CarePlan" | "CareTeam" => &r["category"][0],
        "Communication" => &r["category"][0],
        _ => &r["code"],
    }
}

/// A short name for a code system URI (the last path segment or OID arc).
fn system_name(system: &str) -> String {
    match system {
        "http://snomed.info/sct" => "SNOMED CT".into(),
        "http://www.whocc.no/atc" => "ATC".into(),
        "http://hl7.org/fhir/sid/icd-10" => "ICD-10".into(),
        "urn:oid:1.2.208.176.2.31" => "ICPC-2".into(),
        "urn:oid:1.2.208.176.2.4" | "urn:oid:1.2.208.176.2.4.12" => "SKS-D".into(),
        "urn:oid:1.2.208.176.2.21" => "FSIII".into(),
        "http://loinc.org" => "LOINC".into(),
        _ => system
            .rsplit(['/', ':', '.'])
            .next()
            .unwrap_or(system)
            .to_owned(),
    }
}

fn codes(c: &Value) -> Vec<String> {
    c["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|cd| format!("{} {}", system_name(&s(cd, &["system"])), s(cd, &["code"])))
        .collect()
}

fn title(rtype: &str, r: &Value) -> String {
    let c = concept(rtype, r);
    let text = [
        s(c, &["text"]),
        s(c, &["coding", "0", "display"]),
        s(r, &["title"]),
        s(r, &["name"]),
        s(r, &["payload", "0", "contentString"]),
        s(r, &["description"]),
    ];
    text.into_iter()
        .find(|t| !t.is_empty())
        .unwrap_or_else(|| rtype.to_owned())
}

fn when(r: &Value) -> String {
    let period = |p: &Value| {
        let (a, b) = (s(p, &["start"]), s(p, &["end"]));
        match (a.is_empty(), b.is_empty()) {
            (true, true) => String::new(),
            _ => format!("{} – {}", day(&a), day(&b)),
        }
    };
    [
        period(&r["period"]),
        period(&r["effectivePeriod"]),
        s(r, &["authoredOn"]),
        s(r, &["onsetDateTime"]),
        s(r, &["recordedDate"]),
        s(r, &["effectiveDateTime"]),
        s(r, &["sent"]),
        s(r, &["startDate"]),
        s(r, &["target", "0", "dueDate"]),
    ]
    .into_iter()
    .find(|t| !t.is_empty())
    .unwrap_or_default()
}

fn status(r: &Value) -> String {
    let clinical = s(r, &["clinicalStatus", "coding", "0", "code"]);
    if clinical.is_empty() {
        [s(r, &["status"]), s(r, &["lifecycleStatus"])]
            .into_iter()
            .find(|t| !t.is_empty())
            .unwrap_or_default()
    } else {
        clinical
    }
}

fn note(rtype: &str, r: &Value) -> String {
    match rtype {
        "MedicationRequest" => s(r, &["dosageInstruction", "0", "text"]),
        "MedicationStatement" => s(r, &["dosage", "0", "text"]),
        "Goal" => {
            let t = &r["target"][0];
            let measure = s(t, &["measure", "text"]);
            let high = t["detailRange"]["high"]["value"].to_string();
            if measure.is_empty() {
                String::new()
            } else {
                format!("{measure} ≤ {high}").replace(" ≤ null", "")
            }
        }
        _ => s(r, &["description"]),
    }
}

impl Record {
    pub fn from_view(r: &Value, k: &Knowledge<'_>) -> Record {
        let rtype = s(r, &["resourceType"]);
        let tag = r["meta"]["tag"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["system"] == SECTOR_TAG_SYSTEM);
        let members = r["participant"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let role = &p["role"][0];
                let name = [s(p, &["member", "display"]), s(p, &["member", "reference"])]
                    .into_iter()
                    .find(|t| !t.is_empty())
                    .unwrap_or_default();
                let role_text = [s(role, &["text"]), s(role, &["coding", "0", "display"])]
                    .into_iter()
                    .find(|t| !t.is_empty())
                    .unwrap_or_default();
                (name, role_text, coordinator_role(role, k.coordinator_roles))
            })
            .collect();
        let mapped = if rtype == "Condition" {
            r["code"]["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| k.mapping.equivalents(&s(c, &["system"]), &s(c, &["code"])))
                .map(|(system, code)| format!("{} {code}", system_name(&system)))
                .collect()
        } else {
            Vec::new()
        };
        Record {
            mapped,
            gid: s(r, &["id"]),
            sector: tag.map(|t| s(t, &["code"])).unwrap_or_default(),
            sector_name: tag.map(|t| s(t, &["display"])).unwrap_or_default(),
            title: title(&rtype, r),
            codes: codes(concept(&rtype, r)),
            status: status(r),
            when: when(r),
            note: note(&rtype, r),
            members,
            rtype,
        }
    }
}

/// The total plan, grouped for the patient page.
#[derive(Debug, Default)]
pub struct Plan {
    pub identifiers: Vec<(String, String)>,
    /// Records by type, each in sector order.
    pub by_type: BTreeMap<String, Vec<Record>>,
    pub alerts: Vec<AlertLine>,
}

impl Plan {
    pub fn from_bundle(bundle: &Value, k: &Knowledge<'_>) -> Plan {
        let mut plan = Plan::default();
        for e in bundle["entry"].as_array().into_iter().flatten() {
            let r = &e["resource"];
            match r["resourceType"].as_str().unwrap_or("") {
                "Patient" => {
                    for i in r["identifier"].as_array().into_iter().flatten() {
                        plan.identifiers.push((s(i, &["system"]), s(i, &["value"])));
                    }
                }
                "DetectedIssue" => plan.alerts.push(AlertLine::from_issue(r)),
                _ => {
                    let rec = Record::from_view(r, k);
                    plan.by_type.entry(rec.rtype.clone()).or_default().push(rec);
                }
            }
        }
        order(&mut plan.alerts);
        plan
    }

    /// The records of some types, in sector order then title.
    pub fn records(&self, types: &[&str]) -> Vec<&Record> {
        let mut out: Vec<&Record> = types
            .iter()
            .filter_map(|t| self.by_type.get(*t))
            .flatten()
            .collect();
        out.sort_by(|a, b| (&a.sector, &a.title).cmp(&(&b.sector, &b.title)));
        out
    }

    /// The gids the open alerts of `code` implicate.
    pub fn implicated_by(&self, code: &str) -> Vec<String> {
        self.alerts
            .iter()
            .filter(|a| a.code == code && a.open())
            .flat_map(|a| a.implicated.iter())
            .filter_map(|(r, _, _)| r.split_once('/').map(|(_, g)| g.to_owned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_alert_line_reads_its_detected_issue() {
        let di = json!({ "resourceType": "DetectedIssue", "id": "a1", "status": "preliminary",
            "code": { "coding": [{ "code": "DUPTHPGEN" }], "text": "Duplicate medication" },
            "severity": "high", "patient": { "reference": "Patient/p1" },
            "identifiedDateTime": "2026-01-02T03:04:05Z",
            "implicated": [{ "reference": "MedicationRequest/g1", "display": "gp MedicationRequest" },
                           { "reference": "MedicationRequest/g2", "display": "hospital MedicationRequest" }],
            "mitigation": [{ "action": { "text": "Acknowledged" }, "date": "2026-01-03", "author": { "display": "N" } }] });
        let a = AlertLine::from_issue(&di);
        assert_eq!(
            (a.patient.as_str(), a.code.as_str(), a.rank()),
            ("p1", "DUPTHPGEN", 0)
        );
        assert_eq!(a.sectors(), ["gp", "hospital"]);
        assert!(a.open());
    }

    #[test]
    fn a_snooze_and_the_history_are_read_as_shown() {
        let di = json!({ "resourceType": "DetectedIssue", "id": "a1", "extension": [{
            "url": SNOOZE_EXTENSION, "extension": [
                { "url": "until", "valueDateTime": "2026-12-10T00:00:00.000Z" },
                { "url": "author", "valueString": "N" } ] }] });
        assert_eq!(
            AlertLine::from_issue(&di).snoozed,
            Some(("2026-12-10T00:00:00.000Z".into(), "N".into(), String::new()))
        );
        let row = |kind: &str, implicated: &str| HistoryRow {
            kind: kind.into(),
            implicated: implicated.into(),
            ..HistoryRow::default()
        };
        let lines = history(&[
            row("raised", r#"["A/1","A/2"]"#),
            row("acknowledged", r#"["A/1","A/2"]"#),
            row("updated", r#"["A/1","A/3"]"#),
        ]);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].added.is_empty() && lines[1].added.is_empty());
        assert_eq!(
            (lines[2].added.clone(), lines[2].removed.clone()),
            (vec!["A/3".to_owned()], vec!["A/2".to_owned()])
        );
    }
}
