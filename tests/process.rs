//! The real binary: a resource answered 201 survives the process being killed right after.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Starts `carebridge serve` and returns the child and its base URL (read from its log).
fn start(config: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_carebridge"))
        .args(["serve", "--config"])
        .arg(config)
        .current_dir(common::repo())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server logs its address before exiting")
            .expect("readable log");
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, format!("http://{addr}/fhir"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_201_survives_a_kill_right_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("carebridge.db").display());
    let token = carebridge::auth::new_token();
    let mut text = common::config_text(&url, "");
    text.push_str(&format!(
        "\n[[clients]]\nid = \"lab\"\nrole = \"sector:lab\"\ntoken_sha256 = \"{}\"\n",
        carebridge::auth::token_hash(&token)
    ));
    let config = dir.path().join("carebridge.toml");
    std::fs::write(&config, text).unwrap();

    let (mut child, base) = start(&config);
    let http = reqwest::Client::new();
    let patient =
        serde_json::json!({ "resourceType": "Patient", "id": "survivor", "gender": "other" });
    let resp = http
        .post(format!("{base}/lab/Patient"))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .body(patient.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    child.kill().expect("SIGKILL the server");
    child.wait().unwrap();

    let (mut child, base) = start(&config);
    let resp = http
        .get(format!("{base}/lab/Patient/survivor"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["gender"], "other");
    assert_eq!(body["meta"]["versionId"], "1");
    child.kill().unwrap();
    child.wait().unwrap();
}
