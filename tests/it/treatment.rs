//! Access by treatment relationship (Sundhedsloven § 42 a), table-driven: care-team members
//! (persons) × patients × bases — CareTeam member by reference, by identifier, organisation
//! with a recent exchange, an expired exchange window, no relationship, a block for that
//! person, a block for everyone, break-the-glass before and after its expiry, a private
//! marking — checked on every read path (gateway patient read, identifier search, search by
//! patient, read by id, `$total-plan`, DetectedIssue search with and without a patient,
//! `$acknowledge`, the SSE stream), with the basis (or the refusal) in the audit log.
//! The launch context is checked with real JWTs in `jwt.rs`.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::common::{Backend, TestApp, conf};

const CPR: &str = "urn:oid:1.2.208.176.1.2";
const AUTH: &str = "https://autregweb.sst.dk";

/// The persons: `(client id, the person's keys in [[clients]])`.
const PERSONS: [(&str, &str); 4] = [
    (
        "u-ref",
        "practitioner = \"https://autregweb.sst.dk|REF1\"\n",
    ),
    (
        "u-ident",
        "practitioner = \"https://autregweb.sst.dk|IDENT1\"\n",
    ),
    (
        "u-org",
        "organization = \"urn:oid:1.2.208.176.1.1|4000000001\"\nsector = \"municipality\"\n",
    ),
    (
        "u-none",
        "practitioner = \"https://autregweb.sst.dk|NOBODY\"\n",
    ),
];

fn patient(id: &str, cpr: &str) -> Value {
    json!({ "resourceType": "Patient", "id": id,
            "identifier": [{ "system": CPR, "value": cpr }] })
}

/// An active condition in the sector's code system: diabetes in ICPC-2 (gp) and SKS-D
/// (hospital) is chronic and addressed by no plan, so it raises an alert.
fn condition(id: &str, patient: &str, sector: &str) -> Value {
    let code = match sector {
        "hospital" => {
            json!({ "system": "urn:oid:1.2.208.176.2.4.12", "code": "DE11", "display": "Type 2-diabetes" })
        }
        "municipality" => {
            json!({ "system": "urn:oid:1.2.208.176.2.21", "code": "I4.4", "display": "Problemer med tryksår" })
        }
        _ => json!({ "system": "urn:oid:1.2.208.176.2.31", "code": "T90", "display": "Diabetes" }),
    };
    json!({ "resourceType": "Condition", "id": id,
            "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
            "code": { "coding": [code] },
            "subject": { "reference": format!("Patient/{patient}") } })
}

fn care_team(id: &str, patient: &str, members: Vec<Value>) -> Value {
    let participant: Vec<Value> = members
        .into_iter()
        .map(|m| json!({ "member": m }))
        .collect();
    json!({ "resourceType": "CareTeam", "id": id, "status": "active",
            "subject": { "reference": format!("Patient/{patient}") },
            "participant": participant })
}

fn consent_deny(id: &str, patient: &str, actor: Option<&str>) -> Value {
    let mut provision = json!({ "type": "deny" });
    if let Some(a) = actor {
        provision["actor"] = json!([{
            "role": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP" }] },
            "reference": { "reference": a } }]);
    }
    json!({ "resourceType": "Consent", "id": id, "status": "active",
            "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] },
            "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
            "patient": { "reference": format!("Patient/{patient}") },
            "provision": provision })
}

/// A MedicationRequest the GP marked private (FMK "privatmarkering").
fn private_medication(id: &str, patient: &str) -> Value {
    json!({ "resourceType": "MedicationRequest", "id": id, "status": "active", "intent": "order",
            "meta": { "security": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R" }] },
            "medicationCodeableConcept": { "coding": [{ "system": "http://www.whocc.no/atc", "code": "N06AB06" }] },
            "subject": { "reference": format!("Patient/{patient}") } })
}

/// The world of the test: which sector writes what.
fn records() -> Vec<(&'static str, String, Value)> {
    let pr = |id: &str| json!({ "reference": format!("Practitioner/{id}") });
    let by_ident = json!({ "identifier": { "system": AUTH, "value": "IDENT1" } });
    let mut out = vec![(
        "gp",
        "Practitioner/pr-ref".to_owned(),
        json!({ "resourceType": "Practitioner", "id": "pr-ref",
                "identifier": [{ "system": AUTH, "value": "REF1" }] }),
    )];
    let mut add = |sector: &'static str, v: Value| {
        let path = format!(
            "{}/{}",
            v["resourceType"].as_str().unwrap(),
            v["id"].as_str().unwrap()
        );
        out.push((sector, path, v));
    };
    for (sector, id, cpr) in [
        ("gp", "p-ref", "0101010001"),
        ("hospital", "h-ident", "0101010002"),
        ("municipality", "m-exch", "0101010003"),
        ("municipality", "m-old", "0101010004"),
        ("gp", "p-none", "0101010005"),
        ("gp", "p-blk-user", "0101010006"),
        ("gp", "p-blk-all", "0101010007"),
    ] {
        add(sector, patient(id, cpr));
        add(sector, condition(&format!("c-{id}"), id, sector));
    }
    add("gp", care_team("ct-ref", "p-ref", vec![pr("pr-ref")]));
    add("gp", private_medication("mr-private", "p-ref"));
    add(
        "gp",
        json!({ "resourceType": "CarePlan", "id": "cp-ref", "status": "active", "intent": "plan",
                "subject": { "reference": "Patient/p-ref" },
                "addresses": [{ "reference": "Condition/c-p-ref" }] }),
    );
    add(
        "hospital",
        care_team("ct-ident", "h-ident", vec![by_ident.clone()]),
    );
    add(
        "gp",
        care_team(
            "ct-blk-user",
            "p-blk-user",
            vec![pr("pr-ref"), by_ident.clone()],
        ),
    );
    add(
        "gp",
        consent_deny("cs-user", "p-blk-user", Some("Practitioner/pr-ref")),
    );
    add(
        "gp",
        care_team("ct-blk-all", "p-blk-all", vec![pr("pr-ref"), by_ident]),
    );
    add("gp", consent_deny("cs-all", "p-blk-all", None));
    out
}

/// What a person may do with a patient: read on a basis (its prefix), or be refused.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Basis(&'static str),
    Refused(&'static str),
}

const NO_RELATIONSHIP: &str = "no treatment relationship";
const BLOCKED: &str = "a block applies";

struct World {
    app: TestApp,
    /// Gateway patient id by the sector Patient's id.
    gid: HashMap<&'static str, String>,
}

impl World {
    async fn start(backend: Backend) -> World {
        let mut tokens = HashMap::new();
        let mut tables = String::new();
        for (id, keys) in PERSONS {
            let token = carebridge::auth::new_token();
            tables.push_str(&conf::client_table(id, "careteam", &token));
            tables.push_str(keys);
            tokens.insert(id.to_owned(), token);
        }
        let mut app =
            TestApp::spawn_config(backend, |url| crate::common::config_text(url, "") + &tables)
                .await;
        app.tokens.extend(tokens);
        // The blocks come last: the asserting care-team system looks the patients up first.
        let (consents, rest): (Vec<_>, Vec<_>) = records()
            .into_iter()
            .partition(|(_, path, _)| path.starts_with("Consent/"));
        for (sector, path, body) in &rest {
            let (status, resp, _) = app.put(sector, &format!("/{sector}/{path}"), body).await;
            assert!(
                status == 201 || status == 200,
                "{sector} {path}: {status} {resp}"
            );
        }
        let mut gid = HashMap::new();
        for (id, cpr) in [
            ("p-ref", "0101010001"),
            ("h-ident", "0101010002"),
            ("m-exch", "0101010003"),
            ("m-old", "0101010004"),
            ("p-none", "0101010005"),
            ("p-blk-user", "0101010006"),
            ("p-blk-all", "0101010007"),
        ] {
            let (s, found) = app
                .get("careteam", &format!("/Patient?identifier={CPR}|{cpr}"))
                .await;
            assert_eq!(s, 200, "{found}");
            let g = found["entry"][0]["resource"]["id"]
                .as_str()
                .expect("a gateway patient");
            gid.insert(id, g.to_owned());
        }
        for (sector, path, body) in &consents {
            let (status, resp, _) = app.put(sector, &format!("/{sector}/{path}"), body).await;
            assert!(
                status == 201 || status == 200,
                "{sector} {path}: {status} {resp}"
            );
        }
        World { app, gid }
    }

    /// Runs one statement on the store (to age records or grants), SQLite file or PostgreSQL.
    async fn sql(&self, statement: &str) {
        use sqlx::Connection;
        let text = || sqlx::AssertSqlSafe(statement.to_owned());
        match &self.app.pg_database {
            Some(name) => {
                let url = crate::common::pg::database_url(&crate::common::pg_admin_url(), name);
                let mut c = sqlx::PgConnection::connect(&url).await.expect("the store");
                sqlx::query(text()).execute(&mut c).await.expect("runs");
            }
            None => {
                let db = self.app.dir.path().join("carebridge.db");
                let url = format!("sqlite://{}", db.display());
                let mut c = sqlx::SqliteConnection::connect(&url)
                    .await
                    .expect("the store");
                sqlx::query(text()).execute(&mut c).await.expect("runs");
            }
        }
    }

    /// Every read path of one patient, as `who`: `(path, status, diagnostics)`.
    async fn read_paths(&self, who: &str, patient: &str) -> Vec<(String, u16, String)> {
        let g = &self.gid[patient];
        let cpr = self.cpr(patient);
        let condition =
            carebridge::ids::gateway_id(self.sector(patient), "Condition", &format!("c-{patient}"));
        let paths = [
            format!("/Patient/{g}"),
            format!("/Patient?identifier={CPR}|{cpr}"),
            format!("/Condition?patient={g}"),
            format!("/Condition/{condition}"),
            format!("/Patient/{g}/$total-plan"),
            format!("/DetectedIssue?patient={g}"),
        ];
        let mut out = Vec::new();
        for p in paths {
            let (s, body) = self.app.get(who, &p).await;
            let why = body["issue"][0]["diagnostics"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            out.push((p, s, why));
        }
        out
    }

    fn cpr(&self, patient: &str) -> String {
        let n = [
            "p-ref",
            "h-ident",
            "m-exch",
            "m-old",
            "p-none",
            "p-blk-user",
            "p-blk-all",
        ]
        .iter()
        .position(|p| *p == patient)
        .expect("a known patient");
        format!("010101000{}", n + 1)
    }

    fn sector(&self, patient: &str) -> &'static str {
        match patient {
            "h-ident" => "hospital",
            "m-exch" | "m-old" => "municipality",
            _ => "gp",
        }
    }

    /// The access report of a patient, as the auditor reads it.
    async fn report(&self, patient: &str) -> Vec<Value> {
        let root = self.app.base.trim_end_matches("/fhir").to_owned();
        let resp = self
            .app
            .http
            .get(format!(
                "{root}/audit/access-report?patient={}",
                self.gid[patient]
            ))
            .bearer_auth(self.app.token("auditor"))
            .send()
            .await
            .expect("answered");
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.expect("JSON");
        v["accesses"].as_array().cloned().unwrap_or_default()
    }

    /// Checks every read path and the audit log for one (person, patient, expectation).
    async fn check(&self, who: &str, patient: &str, expect: &Expect, failures: &mut Vec<String>) {
        let before = self.report(patient).await.len();
        for (path, status, why) in self.read_paths(who, patient).await {
            match expect {
                Expect::Basis(_) if status != 200 => failures.push(format!(
                    "{who} {patient} {path}: {status} {why}, expected 200"
                )),
                Expect::Refused(reason) if status != 403 || !why.contains(reason) => failures.push(
                    format!("{who} {patient} {path}: {status} {why:?}, expected 403 {reason:?}"),
                ),
                _ => {}
            }
        }
        // One audit line per read path, each naming the person and the basis or the refusal.
        let lines = self.report(patient).await;
        let new: Vec<&Value> = lines
            .iter()
            .take(lines.len() - before)
            .filter(|l| l["client"] == who)
            .collect();
        if new.len() < 6 {
            failures.push(format!(
                "{who} {patient}: {} access lines for 6 reads: {lines:?}",
                new.len()
            ));
        }
        for l in new {
            let basis = l["basis"].as_str().unwrap_or("");
            let granted = l["granted"].as_bool().unwrap_or(false);
            let ok = match expect {
                Expect::Basis(prefix) => granted && basis.starts_with(prefix),
                Expect::Refused(_) => !granted && basis == "refused",
            };
            if !ok || l["person"].is_null() {
                failures.push(format!("{who} {patient}: audit line {l} for {expect:?}"));
            }
        }
    }
}

#[tokio::test]
async fn persons_read_only_the_patients_in_their_care_on_every_path() {
    every_path(Backend::Sqlite).await;
}

#[tokio::test]
async fn persons_read_only_the_patients_in_their_care_on_every_path_postgres() {
    every_path(Backend::Postgres).await;
}

async fn every_path(backend: Backend) {
    let w = World::start(backend).await;
    // Age the municipality's records of m-old beyond the 90-day exchange window.
    w.sql(&format!(
        "UPDATE resources SET last_updated = '2020-01-01T00:00:00.000Z' WHERE patient_id = '{}'",
        w.gid["m-old"]
    ))
    .await;
    let table: Vec<(&str, &str, Expect)> = vec![
        ("u-ref", "p-ref", Expect::Basis("care-team CareTeam/")),
        ("u-ident", "h-ident", Expect::Basis("care-team CareTeam/")),
        (
            "u-org",
            "m-exch",
            Expect::Basis("exchange municipality sent "),
        ),
        ("u-org", "m-old", Expect::Refused(NO_RELATIONSHIP)),
        ("u-ref", "p-none", Expect::Refused(NO_RELATIONSHIP)),
        ("u-none", "p-ref", Expect::Refused(NO_RELATIONSHIP)),
        ("u-ident", "p-ref", Expect::Refused(NO_RELATIONSHIP)),
        ("u-ref", "p-blk-user", Expect::Refused(BLOCKED)),
        (
            "u-ident",
            "p-blk-user",
            Expect::Basis("care-team CareTeam/"),
        ),
        ("u-ref", "p-blk-all", Expect::Refused(BLOCKED)),
        ("u-ident", "p-blk-all", Expect::Refused(BLOCKED)),
    ];
    let mut failures = Vec::new();
    for (who, patient, expect) in &table {
        w.check(who, patient, expect, &mut failures).await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let p_ref = w.gid["p-ref"].clone();
    // Searches without a patient, and what they include, hold only related patients' records.
    let (s, found) = w
        .app
        .get(
            "u-ref",
            "/Condition?code=urn:oid:1.2.208.176.2.31|T90&_include=Condition:subject",
        )
        .await;
    assert_eq!(s, 200, "{found}");
    let mine = format!("Patient/{}", w.gid["p-ref"]);
    let entries = found["entry"].as_array().cloned().unwrap_or_default();
    assert!(!entries.is_empty(), "{found}");
    for e in &entries {
        let r = &e["resource"];
        match r["resourceType"].as_str() {
            Some("Condition") => assert_eq!(r["subject"]["reference"], mine.as_str(), "{r}"),
            Some("Patient") => assert_eq!(r["id"], w.gid["p-ref"].as_str(), "{r}"),
            other => panic!("unexpected {other:?} in {found}"),
        }
    }
    assert!(
        entries.iter().any(|e| e["search"]["mode"] == "include"),
        "the gateway patient is included: {found}"
    );
    // The asserting system's same search finds every patient's diabetes (blocks aside).
    let (_, every) = w
        .app
        .get("careteam", "/Condition?code=urn:oid:1.2.208.176.2.31|T90")
        .await;
    assert!(every["total"].as_u64().unwrap_or(0) > found["total"].as_u64().unwrap_or(0));
    // A search's audit row carries the basis of what it returned.
    let lines = w.report("p-ref").await;
    assert!(
        lines.iter().any(|l| l["interaction"] == "search-type"
            && l["basis"]
                .as_str()
                .unwrap_or("")
                .starts_with("care-team CareTeam/")),
        "{lines:?}"
    );
    // _include and _revinclude of a patient in care: the care team's practitioner, the plan
    // that addresses the condition; for a person without a relationship the search is refused.
    let (s, team) = w
        .app
        .get(
            "u-ref",
            &format!("/CareTeam?patient={p_ref}&_include=CareTeam:participant"),
        )
        .await;
    assert_eq!(s, 200, "{team}");
    assert!(team.to_string().contains("\"Practitioner\""), "{team}");
    let revinclude = format!("/Condition?patient={p_ref}&_revinclude=CarePlan:addresses");
    let (s, plans) = w.app.get("u-ref", &revinclude).await;
    assert_eq!(s, 200, "{plans}");
    assert!(
        plans["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .any(
                |e| e["resource"]["resourceType"] == "CarePlan" && e["search"]["mode"] == "include"
            ),
        "{plans}"
    );
    let (s, _) = w.app.get("u-none", &revinclude).await;
    assert_eq!(s, 403);

    // History and vread decide like a read.
    let c_none = carebridge::ids::gateway_id("gp", "Condition", "c-p-none");
    let (s, _) = w
        .app
        .get("u-ref", &format!("/Condition/{c_none}/_history"))
        .await;
    assert_eq!(s, 403);
    let (s, _) = w
        .app
        .get("u-ref", &format!("/Condition/{c_none}/_history/1"))
        .await;
    assert_eq!(s, 403);
    let c_ref = carebridge::ids::gateway_id("gp", "Condition", "c-p-ref");
    let (s, _) = w
        .app
        .get("u-ref", &format!("/Condition/{c_ref}/_history/1"))
        .await;
    assert_eq!(s, 200);

    // The GP's private marking: the record stays with the GP, even for a person in the care team.
    let private = carebridge::ids::gateway_id("gp", "MedicationRequest", "mr-private");
    let (s, found) = w
        .app
        .get("u-ref", &format!("/MedicationRequest?patient={p_ref}"))
        .await;
    assert_eq!(s, 200);
    assert!(!found.to_string().contains(&private), "{found}");
    let (s, body) = w
        .app
        .get("u-ref", &format!("/MedicationRequest/{private}"))
        .await;
    assert_eq!(s, 403, "{body}");
    assert!(body.to_string().contains(BLOCKED), "{body}");
    let (s, plan) = w
        .app
        .get("u-ref", &format!("/Patient/{p_ref}/$total-plan"))
        .await;
    assert_eq!(s, 200);
    assert!(!plan.to_string().contains(&private), "{plan}");
    let (s, _) = w.app.get("gp", "/gp/MedicationRequest/mr-private").await;
    assert_eq!(s, 200);

    // The CareTeam that proves a relationship is named in the basis.
    let ct = carebridge::ids::gateway_id("gp", "CareTeam", "ct-ref");
    let lines = w.report("p-ref").await;
    assert!(
        lines
            .iter()
            .any(|l| l["basis"] == format!("care-team CareTeam/{ct}")),
        "{lines:?}"
    );
    w.app.stop().await;
}

#[tokio::test]
async fn break_the_glass_grants_one_patient_until_it_expires_and_is_reviewed() {
    break_the_glass(Backend::Sqlite).await;
}

#[tokio::test]
async fn break_the_glass_grants_one_patient_until_it_expires_and_is_reviewed_postgres() {
    break_the_glass(Backend::Postgres).await;
}

async fn break_the_glass(backend: Backend) {
    let w = World::start(backend).await;
    let glass = |reason: &str, text: &str| {
        json!({ "resourceType": "Parameters", "parameter": [
            { "name": "reason", "valueCode": reason }, { "name": "text", "valueString": text } ] })
    };
    let none = w.gid["p-none"].clone();
    let mut failures = Vec::new();
    w.check(
        "u-ref",
        "p-none",
        &Expect::Refused(NO_RELATIONSHIP),
        &mut failures,
    )
    .await;
    // A reason outside the configured list, or no text, is refused with the path.
    let (s, body, _) = w
        .app
        .post(
            "u-ref",
            &format!("/Patient/{none}/$break-glass"),
            &glass("curiosity", "x"),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    let (s, _, _) = w
        .app
        .post(
            "u-ref",
            &format!("/Patient/{none}/$break-glass"),
            &glass("emergency", " "),
        )
        .await;
    assert_eq!(s, 400);
    // Systems and auditors do not break the glass.
    let (s, _, _) = w
        .app
        .post(
            "gp",
            &format!("/Patient/{none}/$break-glass"),
            &glass("emergency", "x"),
        )
        .await;
    assert_eq!(s, 403);
    let (s, granted, _) = w
        .app
        .post(
            "u-ref",
            &format!("/Patient/{none}/$break-glass"),
            &glass(
                "emergency",
                "unconscious on admission, no relatives reachable",
            ),
        )
        .await;
    assert_eq!(s, 200, "{granted}");
    let grant = granted["parameter"][0]["valueString"]
        .as_str()
        .unwrap()
        .to_owned();
    w.check(
        "u-ref",
        "p-none",
        &Expect::Basis("break-glass "),
        &mut failures,
    )
    .await;
    // Only that patient, only that person.
    w.check(
        "u-ref",
        "m-exch",
        &Expect::Refused(NO_RELATIONSHIP),
        &mut failures,
    )
    .await;
    w.check(
        "u-none",
        "p-none",
        &Expect::Refused(NO_RELATIONSHIP),
        &mut failures,
    )
    .await;
    // Break-the-glass does not override a block unless configuration allows it.
    let blocked = w.gid["p-blk-user"].clone();
    let (s, _, _) = w
        .app
        .post(
            "u-ref",
            &format!("/Patient/{blocked}/$break-glass"),
            &glass("emergency", "acute"),
        )
        .await;
    assert_eq!(s, 200);
    w.check(
        "u-ref",
        "p-blk-user",
        &Expect::Refused(BLOCKED),
        &mut failures,
    )
    .await;
    // Reads under the grant are marked ETREAT in the audit log.
    let lines = w.report("p-none").await;
    let marked: Vec<&Value> = lines
        .iter()
        .filter(|l| l["basis"] == format!("break-glass {grant}"))
        .collect();
    assert!(marked.len() >= 6, "{lines:?}");
    assert!(
        marked.iter().all(|l| l["purpose"] == "ETREAT"),
        "{marked:?}"
    );
    assert!(
        lines.iter().any(|l| l["interaction"] == "break-glass"),
        "the grant itself is in the report: {lines:?}"
    );
    // After expiry the relationship is gone again.
    w.sql(&format!(
        "UPDATE break_glass SET expires_us = granted_us + 1 WHERE id = '{grant}'"
    ))
    .await;
    w.check(
        "u-ref",
        "p-none",
        &Expect::Refused(NO_RELATIONSHIP),
        &mut failures,
    )
    .await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The auditor's review queue: unreviewed grants, reviewed once with a note.
    let root = w.app.base.trim_end_matches("/fhir").to_owned();
    let queue = |status: &'static str| {
        let url = format!("{root}/audit/break-glass?status={status}");
        let http = w.app.http.clone();
        let token = w.app.token("auditor").to_owned();
        async move {
            let v: Value = http
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["grants"].as_array().cloned().unwrap_or_default()
        }
    };
    let open = queue("unreviewed").await;
    assert_eq!(open.len(), 2, "{open:?}");
    let first = open
        .iter()
        .find(|g| g["id"] == grant.as_str())
        .expect("the grant");
    assert_eq!(first["reason"], "emergency");
    assert_eq!(first["grantee"], format!("{AUTH}|REF1"));
    assert_eq!(
        first["text"],
        "unconscious on admission, no relatives reachable"
    );
    let review = |token: String, note: &'static str| {
        let url = format!("{root}/audit/break-glass/{grant}/review");
        let http = w.app.http.clone();
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({ "note": note }))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(review(w.app.token("u-ref").to_owned(), "mine").await, 403);
    assert_eq!(
        review(
            w.app.token("auditor").to_owned(),
            "justified: admitted unconscious"
        )
        .await,
        200
    );
    assert_eq!(
        review(w.app.token("auditor").to_owned(), "again").await,
        409
    );
    assert_eq!(queue("unreviewed").await.len(), 1);
    let done = queue("reviewed").await;
    assert_eq!(done[0]["review_note"], "justified: admitted unconscious");
    w.app.stop().await;
}

/// Alerts and the stream: a person sees only the alerts of patients in their care.
#[tokio::test]
async fn alerts_and_the_stream_carry_only_related_patients() {
    let w = World::start(Backend::Sqlite).await;
    let (s, all) = w.app.get("u-ref", "/DetectedIssue?_count=1000").await;
    assert_eq!(s, 200, "{all}");
    let patients: Vec<String> = all["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            e["resource"]["patient"]["reference"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let mine = format!("Patient/{}", w.gid["p-ref"]);
    assert!(patients.contains(&mine), "{patients:?}");
    assert!(patients.iter().all(|p| *p == mine), "{patients:?}");
    // The asserting care-team system sees every patient's alerts.
    let (_, every) = w.app.get("careteam", "/DetectedIssue?_count=1000").await;
    assert!(every["entry"].as_array().map_or(0, Vec::len) > patients.len());

    // $acknowledge: refused for a patient outside the person's care.
    let alert_of = |p: &str| {
        let g = format!("Patient/{}", w.gid[p]);
        every["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["resource"]["patient"]["reference"] == g.as_str())
            .and_then(|e| e["resource"]["id"].as_str())
            .map(str::to_owned)
            .expect("an alert")
    };
    let ack = json!({ "resourceType": "Parameters", "parameter": [{ "name": "author", "valueString": "Nurse" }] });
    let (s, _, _) = w
        .app
        .post(
            "u-ref",
            &format!("/DetectedIssue/{}/$acknowledge", alert_of("p-none")),
            &ack,
        )
        .await;
    assert_eq!(s, 403);
    let (s, _, _) = w
        .app
        .post(
            "u-ref",
            &format!("/DetectedIssue/{}/$acknowledge", alert_of("p-ref")),
            &ack,
        )
        .await;
    assert_eq!(s, 200);

    // The stream: an alert raised for p-none (not in care) and then for p-ref; the person's
    // stream carries only the second.
    let resp = w
        .app
        .http
        .get(format!(
            "{}/alerts/stream",
            w.app.base.trim_end_matches("/fhir")
        ))
        .bearer_auth(w.app.token("u-ref"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let hypertension = |id: &str, patient: &str| {
        let mut c = condition(id, patient, "gp");
        c["code"] = json!({ "coding": [{ "system": "urn:oid:1.2.208.176.2.31", "code": "K86", "display": "Hypertension" }] });
        c
    };
    for p in ["p-none", "p-ref"] {
        let (s, _, _) = w
            .app
            .put(
                "gp",
                &format!("/gp/Condition/k86-{p}"),
                &hypertension(&format!("k86-{p}"), p),
            )
            .await;
        assert_eq!(s, 201);
    }
    let mut text = String::new();
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if let Some(line) = text.lines().find(|l| l.starts_with("data:")) {
                return line.to_owned();
            }
        }
        String::new()
    })
    .await
    .expect("an event within 10 s");
    let event: Value = serde_json::from_str(first.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(event["patient"], w.gid["p-ref"].as_str(), "{event}");
    w.app.stop().await;
}
