//! Audit rows for accepts, rejects and reads, served as AuditEvents; reads across sectors.

use crate::common::{Backend, TestApp};
use serde_json::{Value, json};

fn patient(id: &str, cpr: &str) -> Value {
    json!({ "resourceType": "Patient", "id": id, "identifier": [{ "system": "urn:oid:1.2.208.176.1.2", "value": cpr }],
            "name": [{ "family": "Auditsen" }] })
}

fn hospital_condition(id: &str, patient: &str) -> Value {
    json!({ "resourceType": "Condition", "id": id,
            "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
            "code": { "coding": [{ "system": "urn:oid:1.2.208.176.2.4.12", "code": "DE119", "display": "Type 2-diabetes" }] },
            "subject": { "reference": format!("Patient/{patient}") },
            "_recordedDate": { "extension": [{ "url": "http://example.org/x", "valueString": "kept" }] },
            "onsetDateTime": "2020-01-01" })
}

async fn audit_flow(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // Accepts in two sectors, linked through the CPR number.
    let (s, _, _) = app
        .put(
            "hospital",
            "/hospital/Patient/h1",
            &patient("h1", "0303031234"),
        )
        .await;
    assert_eq!(s, 201);
    let (s, created, headers) = app
        .put(
            "hospital",
            "/hospital/Condition/c1",
            &hospital_condition("c1", "h1"),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    assert!(
        headers["location"]
            .to_str()
            .unwrap()
            .ends_with("/hospital/Condition/c1/_history/1")
    );
    assert_eq!(
        created["_recordedDate"]["extension"][0]["valueString"], "kept",
        "primitive extensions pass through"
    );
    let (s, _, _) = app
        .put(
            "hospital",
            "/hospital/Condition/c1",
            &hospital_condition("c1", "h1"),
        )
        .await;
    assert_eq!(s, 200, "identical content is idempotent");
    let (s, gp, _) = app
        .post(
            "gp",
            "/gp/Patient",
            &json!({ "resourceType": "Patient", "id": "g1",
        "identifier": [{ "system": "urn:oid:1.2.208.176.1.2", "value": "0303031234" }] }),
        )
        .await;
    assert_eq!(s, 201, "{gp}");
    // A reject.
    let (s, _, _) = app
        .post(
            "hospital",
            "/hospital/Condition",
            &json!({ "resourceType": "Condition", "bogus": 1 }),
        )
        .await;
    assert_eq!(s, 400);

    // The gateway patient links both sectors.
    let (s, found) = app
        .get(
            "careteam",
            "/Patient?identifier=urn:oid:1.2.208.176.1.2|0303031234",
        )
        .await;
    assert_eq!(s, 200, "{found}");
    let gateway_patient = found["entry"][0]["resource"].clone();
    let pid = gateway_patient["id"].as_str().unwrap().to_owned();
    assert_eq!(
        gateway_patient["link"].as_array().unwrap().len(),
        2,
        "{gateway_patient}"
    );

    // Reads across sectors by patient, each showing its sector.
    let (s, conditions) = app
        .get("careteam", &format!("/Condition?patient={pid}"))
        .await;
    assert_eq!(s, 200);
    let c = &conditions["entry"][0]["resource"];
    assert_eq!(c["subject"]["reference"], format!("Patient/{pid}"));
    assert_eq!(c["meta"]["tag"][0]["code"], "hospital");
    let gid = c["id"].as_str().unwrap();
    let (s, one) = app.get("careteam", &format!("/Condition/{gid}")).await;
    assert_eq!(s, 200);
    assert_eq!(one["code"], c["code"]);
    let (s, _) = app.get("careteam", "/Condition/does-not-exist").await;
    assert_eq!(s, 404);
    // A sector client reads its own, not another sector's.
    let (s, _) = app.get("gp", &format!("/Condition/{gid}")).await;
    assert_eq!(s, 403);
    let (s, own) = app.get("hospital", "/hospital/Condition/c1").await;
    assert_eq!(s, 200);
    assert_eq!(own["id"], "c1");
    // Auditors read the log only; others do not read the log.
    let (s, _) = app
        .get("auditor", &format!("/Condition?patient={pid}"))
        .await;
    assert_eq!(s, 403);
    let (s, _) = app.get("careteam", "/AuditEvent").await;
    assert_eq!(s, 403);
    let (s, _) = app.get("", "/lab/metadata").await;
    assert_eq!(s, 401);
    // The CapabilityStatement is discovery: it needs no token.
    let (s, _) = app.get("", "/metadata").await;
    assert_eq!(s, 200);
    let (s, cap) = app.get("careteam", "/metadata").await;
    assert_eq!(s, 200);
    assert_eq!(cap["fhirVersion"], "4.0.1");

    // The log: accepts, the reject, the reads, the 401 (refusals are audited per address and
    // minute; the minute is closed here).
    app.app_gateway.flush_refusals(true).await;
    let (s, log) = app.get("auditor", "/AuditEvent?_count=1000").await;
    assert_eq!(s, 200, "{log}");
    let events: Vec<&Value> = log["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .collect();
    let has = |sub: &str, outcome: &str| {
        events
            .iter()
            .any(|e| e["subtype"][0]["code"] == sub && e["outcome"] == outcome)
    };
    assert!(
        has("update", "0") && has("create", "0"),
        "accepts are audited"
    );
    assert!(has("create", "4"), "the reject is audited");
    assert!(
        has("read", "0") && has("search-type", "0"),
        "reads are audited"
    );
    assert!(
        has("authenticate", "4"),
        "the unauthenticated call is audited"
    );
    // Every AuditEvent is valid R4.
    let schema = carebridge::validate::FhirSchema::load().unwrap();
    let validator = carebridge::validate::Validator::new(schema, Default::default());
    for e in &events {
        let issues = validator.structural(e);
        assert!(issues.is_empty(), "{e}: {issues:?}");
    }
    // Search by patient, date and outcome.
    let (s, mine) = app
        .get("auditor", &format!("/AuditEvent?patient={pid}"))
        .await;
    assert_eq!(s, 200);
    let mine = mine["entry"].as_array().unwrap();
    assert!(mine.len() >= 4, "{}", mine.len());
    assert!(
        mine.iter()
            .all(|e| e["resource"]["entity"][0]["what"]["reference"] == format!("Patient/{pid}"))
    );
    let (s, failures) = app.get("auditor", "/AuditEvent?outcome=4").await;
    assert_eq!(s, 200);
    assert!(
        failures["entry"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["resource"]["outcome"] == "4")
    );
    let (s, future) = app.get("auditor", "/AuditEvent?date=ge2999-01-01").await;
    assert_eq!(s, 200);
    assert!(future.get("entry").is_none());
    let (s, today) = app
        .get(
            "auditor",
            "/AuditEvent?date=ge2020-01-01&date=le2999-12-31&_count=2",
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(today["entry"].as_array().unwrap().len(), 2);
    assert!(
        today["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next")
    );
    // The total is accurate on every page (the whole log matched so far, this search's own row
    // not yet in it); `_total=none` leaves it out and still links the next page.
    let everything = log["entry"].as_array().unwrap().len() as u64;
    assert!(today["total"].as_u64().unwrap() >= everything, "{today}");
    let (_, skipped) = app
        .get(
            "auditor",
            "/AuditEvent?date=ge2020-01-01&_count=2&_total=none",
        )
        .await;
    assert!(skipped.get("total").is_none(), "{skipped}");
    assert!(
        skipped["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next")
    );
    let (s, bad) = app.get("auditor", "/AuditEvent?date=yesterday").await;
    assert_eq!(s, 400, "{bad}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_and_reads_on_sqlite() {
    audit_flow(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_and_reads_on_postgres() {
    audit_flow(Backend::Postgres).await;
}
