//! A sector endpoint's state changes, from the real `carebridge serve` and a real Medplum
//! sector server: while the server is down, every attempt fails, yet the log says "sector
//! endpoint failing" once; after it returns and the dead letter is replayed, "sector endpoint
//! recovered" once. Neither line, nor any other, names the patient.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::peers::{Peer, PeerOptions};
use crate::common::records::{ICPC2, condition, patient, transaction};
use crate::common::server::Serve;
use crate::common::{conf, repo, wait_for};

const CPR: &str = "0707071234";

fn config(db: &std::path::Path, hospital: &str, clients: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_second = 0\n\n[store]\nurl = \"sqlite://{}\"\n\n\
         [fhir]\nprofiles_dir = \"{}\"\n\n[exchange]\nretry_initial_ms = 100\nretry_max_ms = 300\n\
         idle_poll_ms = 100\nrequest_timeout_ms = 2000\nmax_attempts = 5\nfailing_after_failures = 2\n\n\
         [[sectors]]\nid = \"hospital\"\nname = \"Hospital\"\nkind = \"hospital\"\nbase_url = \"{hospital}\"\n\
         profile = \"dk-hospital\"\njoin_care_on_patient = true\n\n[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\n\
         profile = \"dk-gp\"\n{clients}",
        db.display(),
        repo().join("fhir-profiles").display()
    )
}

async fn send(
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = carebridge::outbound::client()
        .unwrap()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/fhir+json")
            .body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// The patient at both sectors, then a GP condition the hospital is to receive.
async fn records(base: &str, tokens: &std::collections::HashMap<String, String>) {
    for (sector, id) in [("hospital", "h1"), ("gp", "g1")] {
        let mut p = patient(CPR, "Jensen");
        p["id"] = json!(id);
        let (status, out) = send(
            base,
            &tokens[sector],
            reqwest::Method::PUT,
            &format!("/{sector}/Patient/{id}"),
            Some(p),
        )
        .await;
        assert!(status == 200 || status == 201, "{out}");
    }
    let c = condition("c1", "g1", ICPC2, "K77", "Hjerteinsufficiens");
    let (status, out) = send(
        base,
        &tokens["gp"],
        reqwest::Method::POST,
        "/gp",
        Some(transaction(&[c])),
    )
    .await;
    assert_eq!(status, 200, "{out}");
}

fn count(lines: &Mutex<Vec<String>>, needle: &str) -> usize {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

#[tokio::test]
async fn a_failing_sector_is_one_log_line_and_its_recovery_another() {
    let mut hospital = Peer::start("hospital", &PeerOptions::default()).await;
    let hospital_base = hospital.base.clone();
    hospital.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let (clients, tokens) = conf::mint(&[
        ("gp", "sector:gp"),
        ("hospital", "sector:hospital"),
        ("admin", "admin"),
    ]);
    let file = dir.path().join("carebridge.toml");
    std::fs::write(
        &file,
        config(&dir.path().join("cb.db"), &hospital_base, &clients),
    )
    .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let mut server = Serve::new(&file)
        .rust_log("info")
        .on_line(move |l| sink.lock().unwrap().push(l.to_owned()))
        .start()
        .unwrap();
    let base = server.base.clone();
    records(&base, &tokens).await;
    let root = base.trim_end_matches("/fhir").to_owned();
    let dead = wait_for("the dead letter", 60, || async {
        let (_, list) = send(
            &root,
            &tokens["admin"],
            reqwest::Method::GET,
            "/admin/deliveries?state=dead",
            None,
        )
        .await;
        list["entries"][0]["id"].as_i64()
    })
    .await;
    let failed_attempts = count(&lines, "sector endpoint failing");
    assert_eq!(failed_attempts, 1, "one line for five failed attempts");
    hospital.restart().await;
    let (status, out) = send(
        &root,
        &tokens["admin"],
        reqwest::Method::POST,
        &format!("/admin/deliveries/{dead}/retry"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{out}");
    wait_for("the recovery line", 30, || async {
        (count(&lines, "sector endpoint recovered") == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop();
    assert_eq!(count(&lines, "sector endpoint failing"), 1);
    assert_eq!(count(&lines, "sector endpoint recovered"), 1);
    assert_eq!(count(&lines, CPR), 0, "no patient data in the log");
    assert_eq!(count(&lines, "Jensen"), 0, "no patient data in the log");
    hospital.stop().await;
}
