//! No patient data in the application log: the demo fixtures go through the real binary's API
//! (pushes, reads, searches by CPR, rejects that carry names), with every log level on, and the
//! captured output contains none of the fixture patients' names or national identifiers.

use crate::common;

use crate::common::server::Serve;
use serde_json::{Value, json};

/// Names and CPR numbers of every Patient in the demo fixtures.
fn fixture_patient_data() -> Vec<String> {
    let mut found = Vec::new();
    for sector in ["gp", "hospital", "municipality"] {
        let dir = common::repo().join("fixtures/demo").join(sector);
        for f in std::fs::read_dir(dir).unwrap() {
            let bundle = common::read_json(&f.unwrap().path());
            for e in bundle["entry"].as_array().unwrap() {
                let r = &e["resource"];
                if r["resourceType"] != "Patient" {
                    continue;
                }
                for n in r["name"].as_array().into_iter().flatten() {
                    found.extend(n["family"].as_str().map(str::to_owned));
                    for g in n["given"].as_array().into_iter().flatten() {
                        found.extend(g.as_str().map(str::to_owned));
                    }
                }
                for i in r["identifier"].as_array().into_iter().flatten() {
                    if i["system"] == "urn:oid:1.2.208.176.1.2" {
                        found.push(i["value"].as_str().unwrap().to_owned());
                    }
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_holds_no_names_or_national_identifiers() {
    let secrets = fixture_patient_data();
    assert!(secrets.len() >= 15, "{secrets:?}");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("carebridge.db");
    let (clients, tokens) = common::conf::mint(&common::ROLES);
    let text = common::config_text(&format!("sqlite://{}", db.display()), "") + &clients;
    let config = dir.path().join("carebridge.toml");
    std::fs::write(&config, text).unwrap();

    let mut server = Serve::traced(&config).start().expect("the server starts");
    let base = server.base.clone();
    let http = carebridge::outbound::client().expect("an HTTP client");

    // Push every fixture Bundle through the API.
    for sector in ["gp", "hospital", "municipality"] {
        let dir = common::repo().join("fixtures/demo").join(sector);
        for f in std::fs::read_dir(dir).unwrap() {
            let body = std::fs::read(f.unwrap().path()).unwrap();
            let resp = http
                .post(format!("{base}/{sector}"))
                .bearer_auth(&tokens[sector])
                .header("content-type", "application/fhir+json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        }
    }
    // Reads and searches by CPR, and rejects that carry a name and a CPR number.
    for cpr in secrets
        .iter()
        .filter(|s| s.chars().all(|c| c.is_ascii_digit()))
    {
        let found: Value = http
            .get(format!(
                "{base}/Patient?identifier=urn:oid:1.2.208.176.1.2|{cpr}"
            ))
            .bearer_auth(&tokens["careteam"])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let pid = found["entry"][0]["resource"]["id"].as_str().unwrap();
        let resp = http
            .get(format!("{base}/MedicationRequest?patient={pid}"))
            .bearer_auth(&tokens["careteam"])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let name = secrets
        .iter()
        .find(|s| !s.starts_with(char::is_numeric))
        .unwrap();
    let cpr = secrets
        .iter()
        .find(|s| s.starts_with(char::is_numeric))
        .unwrap();
    let bad = json!({ "resourceType": "Patient", "name": [{ "family": name }],
                      "identifier": [{ "system": "urn:oid:1.2.208.176.1.2", "value": cpr }],
                      "birthDate": format!("{name}-{cpr}") });
    let resp = http
        .post(format!("{base}/gp/Patient"))
        .bearer_auth(&tokens["gp"])
        .header("content-type", "application/fhir+json")
        .body(bad.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = http
        .post(format!("{base}/gp/Patient"))
        .bearer_auth(&tokens["gp"])
        .header("content-type", "application/fhir+json")
        .body(format!(
            "{{\"resourceType\": \"Patient\", \"name\": \"{name} {cpr}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let log = server.output();
    assert!(
        log.lines().count() > 50,
        "the log at trace level was captured"
    );
    let leaks: Vec<&String> = secrets
        .iter()
        .filter(|s| log.contains(s.as_str()))
        .collect();
    assert!(leaks.is_empty(), "patient data in the log: {leaks:?}");
}
