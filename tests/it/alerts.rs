//! Fragmentation alerts through the API: every scenario of `fixtures/scenarios/` (positive
//! cases and near misses) raises exactly what it expects; the lifecycle (raise, update,
//! acknowledge, close, reopen) as DetectedIssue; the live stream; the total healthcare plan.

use crate::common::{Backend, TestApp, repo};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const CPR: &str = "urn:oid:1.2.208.176.1.2";

fn patient(id: &str, cpr: &str) -> Value {
    json!({ "resourceType": "Patient", "id": id, "identifier": [{ "system": CPR, "value": cpr }] })
}

/// Pushes one sector's resources (with its Patient) as a transaction.
async fn push(app: &TestApp, sector: &str, cpr: &str, resources: &[Value]) {
    push_with(app, sector, cpr, resources, None).await;
}

/// Pushes one sector's resources with its Patient, to which `extra` adds elements
/// (`deceasedDateTime`, say).
async fn push_with(
    app: &TestApp,
    sector: &str,
    cpr: &str,
    resources: &[Value],
    extra: Option<&Value>,
) {
    let pid = format!("{sector}-{cpr}");
    let mut p = patient(&pid, cpr);
    for (k, v) in extra.and_then(Value::as_object).into_iter().flatten() {
        p[k] = v.clone();
    }
    let mut entries = vec![
        json!({ "resource": p, "request": { "method": "PUT", "url": format!("Patient/{pid}") } }),
    ];
    for r in resources {
        let text = r
            .to_string()
            .replace("Patient/PAT", &format!("Patient/{pid}"));
        let r: Value = serde_json::from_str(&text).unwrap();
        let url = format!(
            "{}/{}",
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap()
        );
        entries.push(json!({ "resource": r, "request": { "method": "PUT", "url": url } }));
    }
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries });
    let (status, body, _) = app.post(sector, &format!("/{sector}"), &bundle).await;
    assert_eq!(status, 200, "{sector}: {body}");
}

async fn gateway_patient(app: &TestApp, cpr: &str) -> String {
    let (_, found) = app
        .get("careteam", &format!("/Patient?identifier={CPR}|{cpr}"))
        .await;
    found["entry"][0]["resource"]["id"]
        .as_str()
        .expect("linked")
        .to_owned()
}

async fn alerts(app: &TestApp, pid: &str) -> Vec<Value> {
    let (status, bundle) = app
        .get("careteam", &format!("/DetectedIssue?patient={pid}"))
        .await;
    assert_eq!(status, 200, "{bundle}");
    bundle["entry"]
        .as_array()
        .map(|a| a.iter().map(|e| e["resource"].clone()).collect())
        .unwrap_or_default()
}

fn code(di: &Value) -> &str {
    di["code"]["coding"][0]["code"].as_str().unwrap()
}

/// Replaces every string `@now`, `@now-<n><unit>` or `@now+<n><unit>` (unit `s`, `m`, `h`, `d`)
/// by that instant: scenarios about time (a reply due in seconds, a recent assessment).
fn at_now(v: &mut Value, now_us: i64) {
    match v {
        Value::String(s) if s.starts_with("@now") => {
            let rest = &s[4..];
            let offset = if rest.is_empty() {
                0
            } else {
                let (sign, num) = rest.split_at(1);
                let (n, unit) = num.split_at(num.len() - 1);
                let n: i64 = n.parse().expect("a number after @now±");
                let unit_s = match unit {
                    "s" => 1,
                    "m" => 60,
                    "h" => 3600,
                    "d" => 86_400,
                    other => panic!("unit {other}"),
                };
                let us = n * unit_s * 1_000_000;
                if sign == "-" { -us } else { us }
            };
            *s = carebridge::fhir::time::instant(now_us + offset);
        }
        Value::Array(a) => a.iter_mut().for_each(|x| at_now(x, now_us)),
        Value::Object(o) => o.values_mut().for_each(|x| at_now(x, now_us)),
        _ => {}
    }
}

/// Pushes a scenario's sectors (each with its Patient, to which `patient.<sector>` adds).
async fn push_scenario(app: &TestApp, scenario: &Value, cpr: &str) {
    for (sector, resources) in scenario["sectors"].as_object().unwrap() {
        let extra = scenario.pointer(&format!("/patient/{sector}"));
        push_with(app, sector, cpr, resources.as_array().unwrap(), extra).await;
    }
}

/// The open alerts per code; checks what every open alert must carry.
fn open_counts(di_list: &[Value], pid: &str) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    // Alerts raised while one sector's records were in and closed when the next sector's
    // arrived (an addressed condition, say) are cancelled: count the open ones.
    for di in di_list.iter().filter(|d| d["status"] != json!("cancelled")) {
        *counts.entry(code(di).to_owned()).or_default() += 1;
        // Amended when a later sector's records changed its evidence.
        assert!(
            di["status"] == json!("preliminary") || di["status"] == json!("amended"),
            "{di}"
        );
        assert_eq!(di["patient"]["reference"], json!(format!("Patient/{pid}")));
        assert!(di["implicated"].as_array().is_some_and(|a| !a.is_empty()));
        assert!(di["detail"].as_str().is_some_and(|d| !d.is_empty()));
        // Every implicated record names its sector and its id there.
        for r in di["implicated"].as_array().unwrap() {
            let value = r["identifier"]["value"].as_str().unwrap_or("");
            let sector = r["identifier"]["assigner"]["display"]
                .as_str()
                .unwrap_or("?");
            assert!(value.starts_with(&format!("{sector}/")), "{r}");
        }
    }
    counts
}

/// What a scenario's alerts lack against its `expect`, `absent` and `closed` lists.
fn scenario_failures(name: &str, scenario: &Value, found: &[Value], pid: &str) -> Vec<String> {
    let counts = open_counts(found, pid);
    let mut failures = Vec::new();
    for want in scenario["expect"].as_array().unwrap() {
        let w = want.as_str().unwrap();
        if counts.get(w) != Some(&1) {
            failures.push(format!("{name}: expected one {w}, got {counts:?}"));
        }
    }
    for not in scenario["absent"].as_array().unwrap() {
        let w = not.as_str().unwrap();
        if counts.contains_key(w) {
            failures.push(format!("{name}: {w} raised but ruled out ({counts:?})"));
        }
    }
    // Closed with a stated reason (a mitigation), as for a deceased patient.
    for c in scenario["closed"].as_array().into_iter().flatten() {
        let w = c.as_str().unwrap();
        let ok = found.iter().any(|d| {
            code(d) == w
                && d["status"] == json!("cancelled")
                && d["mitigation"].as_array().is_some_and(|m| !m.is_empty())
        });
        if !ok {
            failures.push(format!("{name}: expected {w} closed with a reason"));
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_raises_what_it_expects_and_nothing_it_rules_out() {
    // The schedule looks for due evaluations every half second.
    let app = TestApp::spawn_config(Backend::Sqlite, |url| {
        crate::common::config_text(url, "") + "\n[alerts]\nschedule_interval_ms = 500\n"
    })
    .await;
    let dir = repo().join("fixtures/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 40);
    let mut failures = Vec::new();
    for (n, file) in files.iter().enumerate() {
        let mut scenario: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        at_now(&mut scenario, carebridge::fhir::time::now_us());
        let cpr = format!("{:010}", 1_000_000_000u64 + n as u64);
        push_scenario(&app, &scenario, &cpr).await;
        let pid = gateway_patient(&app, &cpr).await;
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        // A scenario about time waits (up to 30 s) for the schedule to re-evaluate the patient.
        let wait = scenario["await_schedule_secs"].as_u64().unwrap_or(0);
        if wait > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
        }
        let found = alerts(&app, &pid).await;
        failures.extend(scenario_failures(&name, &scenario, &found, &pid));
        // Re-sending the same records raises nothing new.
        push_scenario(&app, &scenario, &cpr).await;
        if alerts(&app, &pid).await.len() != found.len() {
            failures.push(format!("{name}: re-sending changed the alerts"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    app.stop().await;
}

fn furosemide(id: &str, status: &str) -> Value {
    json!({ "resourceType": "MedicationRequest", "id": id, "status": status, "intent": "order",
            "medicationCodeableConcept": { "coding": [{ "system": "http://www.whocc.no/atc", "code": "C03CA01", "display": "furosemide" }] },
            "subject": { "reference": "Patient/PAT" } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_is_raised_updated_acknowledged_closed_and_reopened() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let cpr = "2811520123";
    // Listen to the stream before anything happens.
    let root = app.base.trim_end_matches("/fhir").to_owned();
    let mut stream = app
        .http
        .get(format!("{root}/alerts/stream"))
        .bearer_auth(app.token("careteam"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(
        app.http
            .get(format!("{root}/alerts/stream"))
            .bearer_auth(app.token("gp"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );

    push(&app, "gp", cpr, &[furosemide("gp-furo", "active")]).await;
    push(&app, "hospital", cpr, &[furosemide("h-furo", "active")]).await;
    let pid = gateway_patient(&app, cpr).await;
    let raised = alerts(&app, &pid).await;
    assert_eq!(raised.len(), 1, "{raised:#?}");
    let id = raised[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(code(&raised[0]), "DUPTHPGEN");
    assert_eq!(
        raised[0]["code"]["coding"][0]["system"],
        json!("http://terminology.hl7.org/CodeSystem/v3-ActCode")
    );
    assert_eq!(raised[0]["severity"], json!("high"));
    let detail = raised[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("gp") && detail.contains("hospital"),
        "{detail}"
    );

    // The stream carried it.
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), stream.chunk())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&first);
    assert!(
        text.contains("event: raised") && text.contains(&id),
        "{text}"
    );

    // A third order of the same ingredient: same alert, amended.
    push(&app, "municipality", cpr, &[furosemide("m-furo", "active")]).await;
    let updated = alerts(&app, &pid).await;
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0]["id"], json!(id));
    assert_eq!(updated[0]["status"], json!("amended"));
    assert_eq!(updated[0]["implicated"].as_array().unwrap().len(), 3);

    // Acknowledged by a care-team member.
    let params = json!({ "resourceType": "Parameters", "parameter": [
        { "name": "author", "valueString": "Care coordinator Hansen" },
        { "name": "note", "valueString": "Hospital asked to review." } ] });
    let (status, acked, _) = app
        .post(
            "careteam",
            &format!("/DetectedIssue/{id}/$acknowledge"),
            &params,
        )
        .await;
    assert_eq!(status, 200, "{acked}");
    assert_eq!(acked["status"], json!("final"));
    assert_eq!(
        acked["mitigation"][0]["author"]["display"],
        json!("Care coordinator Hansen")
    );
    let (status, _, _) = app
        .post("gp", &format!("/DetectedIssue/{id}/$acknowledge"), &params)
        .await;
    assert_eq!(status, 403);
    let (status, oo, _) = app
        .post(
            "careteam",
            &format!("/DetectedIssue/{id}/$acknowledge"),
            &json!({"resourceType": "Parameters"}),
        )
        .await;
    assert_eq!(status, 400, "{oo}");

    // The cause disappears: hospital and municipality stop → the alert closes.
    push(&app, "hospital", cpr, &[furosemide("h-furo", "stopped")]).await;
    assert_eq!(alerts(&app, &pid).await[0]["status"], json!("amended"));
    let stopped = furosemide("m-furo", "stopped");
    push(&app, "municipality", cpr, &[stopped]).await;
    let closed = alerts(&app, &pid).await;
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0]["status"], json!("cancelled"));
    let (_, read) = app.get("careteam", &format!("/DetectedIssue/{id}")).await;
    assert_eq!(read["status"], json!("cancelled"));
    let (_, open) = app
        .get(
            "careteam",
            &format!("/DetectedIssue?patient={pid}&status=preliminary"),
        )
        .await;
    assert!(open["entry"].as_array().is_none_or(|a| a.is_empty()));

    // It comes back: the same alert reopens.
    push(&app, "hospital", cpr, &[furosemide("h-furo", "active")]).await;
    let reopened = alerts(&app, &pid).await;
    assert_eq!(reopened.len(), 1);
    assert_eq!(reopened[0]["id"], json!(id));
    assert_eq!(reopened[0]["status"], json!("preliminary"));

    // The total healthcare plan shows every sector's active medication and the open alert.
    let (status, plan) = app
        .get("careteam", &format!("/Patient/{pid}/$total-plan"))
        .await;
    assert_eq!(status, 200, "{plan}");
    let entries = plan["entry"].as_array().unwrap();
    let meds: Vec<&Value> = entries
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "MedicationRequest")
        .collect();
    assert_eq!(meds.len(), 2, "{plan}");
    assert!(
        entries
            .iter()
            .any(|e| e["resource"]["resourceType"] == "DetectedIssue"
                && e["resource"]["id"] == json!(id))
    );
    assert!(
        meds.iter()
            .all(|m| m["meta"]["tag"].as_array().is_some_and(|t| !t.is_empty()))
    );
    assert_eq!(
        app.get("gp", &format!("/Patient/{pid}/$total-plan"))
            .await
            .0,
        403
    );
    // Reading it is audited.
    let (_, log) = app
        .get("auditor", &format!("/AuditEvent?patient={pid}&_count=1000"))
        .await;
    let subtypes: Vec<&str> = log["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["subtype"][0]["code"].as_str())
        .collect();
    assert!(subtypes.contains(&"operation"), "{subtypes:?}");
    assert!(
        subtypes.iter().filter(|s| **s == "alert").count() >= 5,
        "{subtypes:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_plan_shows_the_last_needs_assessment_and_the_overdue_alert() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let cpr = "0101601234";
    let condition = |id: &str, system: &str, code: &str| {
        json!({ "resourceType": "Condition", "id": id, "subject": { "reference": "Patient/PAT" },
                "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
                "code": { "coding": [{ "system": system, "code": code }] } })
    };
    let plan = |id: &str, c: &str| {
        json!({ "resourceType": "CarePlan", "id": id, "status": "active", "intent": "plan",
                "subject": { "reference": "Patient/PAT" }, "addresses": [{ "reference": format!("Condition/{c}") }] })
    };
    push(
        &app,
        "gp",
        cpr,
        &[
            condition("gp-dm", "urn:oid:1.2.208.176.2.31", "T90"),
            plan("gp-plan", "gp-dm"),
        ],
    )
    .await;
    push(
        &app,
        "hospital",
        cpr,
        &[
            condition("h-hf", "urn:oid:1.2.208.176.2.4.12", "DI500"),
            plan("h-plan", "h-hf"),
        ],
    )
    .await;
    let pid = gateway_patient(&app, cpr).await;
    let plan_of = |plan: &Value| -> (Option<String>, Vec<String>) {
        let entries = plan["entry"].as_array().unwrap();
        let last = entries[0]["resource"]["extension"][0]["valueDateTime"]
            .as_str()
            .map(str::to_owned);
        let codes = entries
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "DetectedIssue")
            .map(|e| code(&e["resource"]).to_owned())
            .collect();
        (last, codes)
    };
    let (_, plan) = app
        .get("careteam", &format!("/Patient/{pid}/$total-plan"))
        .await;
    let (last, codes) = plan_of(&plan);
    assert_eq!(last, None, "{plan}");
    assert!(
        codes.contains(&"needs-assessment-overdue".to_owned()),
        "{codes:?}"
    );

    // The municipality records an FSIII functional assessment 30 days ago.
    let when =
        carebridge::fhir::time::instant(carebridge::fhir::time::now_us() - 30 * 86_400_000_000);
    let fsiii = json!({ "resourceType": "Observation", "id": "m-fsiii", "status": "final",
        "subject": { "reference": "Patient/PAT" }, "effectiveDateTime": when,
        "code": { "coding": [{ "system": "urn:oid:1.2.208.176.2.21", "code": "J3.8" }] } });
    push(&app, "municipality", cpr, &[fsiii]).await;
    let (_, plan) = app
        .get("careteam", &format!("/Patient/{pid}/$total-plan"))
        .await;
    let (last, codes) = plan_of(&plan);
    assert_eq!(last.as_deref(), Some(when.as_str()), "{plan}");
    assert!(
        !codes.contains(&"needs-assessment-overdue".to_owned()),
        "{codes:?}"
    );
    app.stop().await;
}
