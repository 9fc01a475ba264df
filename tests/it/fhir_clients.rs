//! Two FHIR clients this project did not write drive the gateway unchanged: npm
//! `fhir-kit-client` 2.0.3 (`tests/peers/fhir-kit-conformance.mjs`) and PyPI `fhirpy` 2.3.1
//! (`tests/peers/fhirpy-conformance.py`): metadata, a transaction to a sector base, create,
//! conditional create, update and a stale `If-Match` (412), read, vread, history, search paged
//! to the end (every alert of a patient with more than `_count`), `_include`, `$total-plan`
//! (every reference read back) and `$acknowledge`. What the gateway answered them is valid R4
//! for Lantana FHIR.js 4.12.0 and for fhir.resources 5.1.1.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::common::peers::{
    ensure_npm_installed, lantana_errors, lantana_invalid, node_bin, peers_dir,
};
use crate::common::{Backend, TestApp};
use crate::fhir_api::push_scenario;

/// The Python with the packages of `tests/peers/requirements.txt` (`CAREBRIDGE_PYTHON`
/// overrides `python3`).
fn python_bin() -> String {
    std::env::var("CAREBRIDGE_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Runs a client script with `input` on stdin; its JSON report and exit status.
fn run(program: &str, script: &str, input: &Value) -> (bool, Value, String) {
    let mut child = Command::new(program)
        .arg(peers_dir().join(script))
        .current_dir(peers_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("`{program} {script}` does not start: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("input written");
    let out = child.wait_with_output().expect("the script ends");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{script} answered no report ({e}); stderr:\n{stderr}"));
    (out.status.success(), report, stderr)
}

fn failed_steps(report: &Value) -> Vec<String> {
    report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["ok"] != json!(true))
        .map(|s| format!("{}: {}", s["name"], s["detail"]))
        .collect()
}

async fn setup(tag: &str) -> (TestApp, Value) {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let cpr = format!("08{tag:0>8}");
    for s in [
        "dupthpgen-two-sectors.json",
        "dupthpcls-two-ace-inhibitors.json",
        "unaddressed-condition.json",
        "no-care-coordinator.json",
    ] {
        push_scenario(&app, s, &cpr).await;
    }
    let (_, found) = app
        .get(
            "careteam",
            &format!("/Patient?identifier=urn:oid:1.2.208.176.1.2|{cpr}"),
        )
        .await;
    let patient = found["entry"][0]["resource"]["id"]
        .as_str()
        .expect("linked")
        .to_owned();
    let input = json!({
        "base": app.base, "careteam": app.token("careteam"), "gp": app.token("gp"),
        "patient": patient, "tag": tag,
    });
    (app, input)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_kit_client_uses_the_gateway_unchanged() {
    tokio::task::spawn_blocking(ensure_npm_installed)
        .await
        .expect("npm");
    let (app, input) = setup("1").await;
    let (ok, report, stderr) =
        tokio::task::spawn_blocking(move || run(&node_bin(), "fhir-kit-conformance.mjs", &input))
            .await
            .expect("the client ran");
    let failed = failed_steps(&report);
    assert!(
        ok && failed.is_empty(),
        "fhir-kit-client steps failed: {failed:#?}\n{stderr}"
    );
    assert_eq!(report["steps"].as_array().unwrap().len(), 10);
    let resources: Vec<Value> = report["resources"].as_array().expect("resources").clone();
    assert!(resources.len() > 20, "{} answers kept", resources.len());
    let invalid: Vec<String> = tokio::task::spawn_blocking(move || {
        lantana_invalid(&resources)
            .iter()
            .map(|r| format!("{}/{}: {:?}", r["resourceType"], r["id"], lantana_errors(r)))
            .collect()
    })
    .await
    .expect("validated");
    assert!(
        invalid.is_empty(),
        "not valid for Lantana FHIR.js: {invalid:#?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhirpy_uses_the_gateway_unchanged() {
    let probe = Command::new(python_bin())
        .args(["-c", "import fhirpy, fhir.resources"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "{} lacks fhirpy or fhir.resources: install tests/peers/requirements.txt \
         (python3 -m pip install --user -r tests/peers/requirements.txt; CAREBRIDGE_PYTHON \
         names another interpreter): {probe:?}",
        python_bin()
    );
    let (app, input) = setup("2").await;
    let (ok, report, stderr) =
        tokio::task::spawn_blocking(move || run(&python_bin(), "fhirpy-conformance.py", &input))
            .await
            .expect("the client ran");
    let failed = failed_steps(&report);
    assert!(
        failed.is_empty(),
        "fhirpy steps failed: {failed:#?}\n{stderr}"
    );
    assert_eq!(report["steps"].as_array().unwrap().len(), 10);
    assert_eq!(
        report["invalid"],
        json!([]),
        "not valid for fhir.resources 5.1.1"
    );
    assert!(report["resources"].as_u64().unwrap() > 20, "{report}");
    assert!(ok, "{report}\n{stderr}");
    app.stop().await;
}
