//! The real binary: a resource answered 201 survives the process being killed right after.

use crate::common;

use crate::common::server::{Serve, Server};

/// Starts `carebridge serve` and returns it with its base URL (read from its log).
fn start(config: &std::path::Path) -> (Server, String) {
    let server = Serve::new(config).start().expect("the binary starts");
    let base = server.base.clone();
    (server, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_201_survives_a_kill_right_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("carebridge.db").display());
    let (clients, tokens) = common::conf::mint(&[("lab", "sector:lab")]);
    let token = &tokens["lab"];
    let text = common::config_text(&url, "") + &clients;
    let config = dir.path().join("carebridge.toml");
    std::fs::write(&config, text).unwrap();

    let (mut child, base) = start(&config);
    let http = carebridge::outbound::client().expect("an HTTP client");
    let patient =
        serde_json::json!({ "resourceType": "Patient", "id": "survivor", "gender": "other" });
    let resp = http
        .post(format!("{base}/lab/Patient"))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(patient.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    child.kill(); // SIGKILL

    let (mut child, base) = start(&config);
    let resp = http
        .get(format!("{base}/lab/Patient/survivor"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["gender"], "other");
    assert_eq!(body["meta"]["versionId"], "1");
    child.kill();
}
