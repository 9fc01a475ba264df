//! The command line, run as the real binary.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn carebridge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_carebridge"));
    c.current_dir(common::repo());
    c
}

#[test]
fn validate_prints_an_outcome_per_file_and_fails_on_an_invalid_one() {
    let examples = common::shared_data().join("fhir-r4-examples");
    let good = examples.join("Condition/condition-example.json");
    let out = carebridge().arg("validate").arg(&good).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"valid\""));

    let bad = examples.join("Patient/json-edge-cases.json");
    let out = carebridge()
        .arg("validate")
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 2);
    assert!(
        stdout.contains("Patient.identifier[0].assigner.display"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(
        &broken,
        r#"{"resourceType":"Patient","gender":"male","gender":"female"}"#,
    )
    .unwrap();
    let out = carebridge().arg("validate").arg(&broken).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("duplicate key"));
}

#[test]
fn validate_applies_a_sectors_profile_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("condition.json");
    std::fs::write(
        &file,
        r#"{"resourceType":"Condition","subject":{"reference":"Patient/1"},
            "code":{"coding":[{"system":"urn:oid:1.2.208.176.2.31","code":"T90"}]}}"#,
    )
    .unwrap();
    let out = carebridge().arg("validate").arg(&file).output().unwrap();
    assert!(out.status.success(), "structurally valid");
    let out = carebridge()
        .args([
            "validate",
            "--sector",
            "hospital",
            "--config",
            "config/default.toml",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SKS-D"));
}

#[test]
fn check_config_names_the_file_key_and_fix() {
    let out = carebridge()
        .args([
            "check-config",
            "--offline",
            "--config",
            "config/default.toml",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[sectors]]\nid = \"gp\"\nname = \"GP\"\nkind = \"general-practice\"\nprofile = \"dk-nowhere\"\n").unwrap();
    let out = carebridge()
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bad.toml")
            && text.contains("sectors[0].profile")
            && text.contains("fhir-profiles/rules"),
        "{text}"
    );

    let out = carebridge()
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a wrong configuration fails at start"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("sectors[0].profile"));
}

#[test]
fn token_new_prints_a_token_and_its_hash_line() {
    let out = carebridge()
        .args(["token", "new", "--client", "gp-system"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let token = text
        .lines()
        .next()
        .unwrap()
        .strip_prefix("token ")
        .unwrap()
        .to_owned();
    let hash_line = text
        .lines()
        .find(|l| l.starts_with("token_sha256"))
        .unwrap();
    assert!(hash_line.contains(&carebridge::auth::token_hash(&token)));
}

#[test]
fn the_demo_loads_its_fixtures_serves_and_answers() {
    let mut child = carebridge()
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut nurse_tokens = std::collections::HashMap::new();
    let mut base = None;
    let mut summary = String::new();
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        summary.push_str(&line);
        summary.push('\n');
        for nurse in ["nurse-lassen", "nurse-dam"] {
            if let Some(rest) = line.strip_prefix(&format!("token {nurse} careteam ")) {
                let token = rest.split_whitespace().next().unwrap().to_owned();
                nurse_tokens.insert(nurse, token);
            }
        }
        if let Some(rest) = line.strip_prefix("serving on ") {
            base = Some(rest.split_whitespace().next().unwrap().to_owned());
            break;
        }
    }
    let base = base.unwrap_or_else(|| panic!("the demo did not start serving:\n{summary}"));
    assert!(summary.contains("[15/15]"), "{summary}");
    assert!(
        summary.contains("5 linked across two or more sectors"),
        "{summary}"
    );
    // Each care-team token is a person who sees the patients in their care, and says so.
    assert!(
        summary.contains("# may read 2 of 5 demo patients: ahmad-rahimi, karen-holm"),
        "{summary}"
    );
    assert!(
        summary.contains(
            "# may read 3 of 5 demo patients: bent-larsen, ingrid-mortensen, poul-andersen"
        ),
        "{summary}"
    );
    let lassen = nurse_tokens["nurse-lassen"].clone();
    // Keep reading what the demo prints after it started serving.
    std::thread::spawn(move || lines.for_each(drop));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let get = |path: String| {
        let base = base.clone();
        let token = lassen.clone();
        rt.block_on(async move {
            carebridge::outbound::client()
                .expect("an HTTP client")
                .get(format!("{base}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let cpr = |v: &str| format!("/Patient?identifier=urn:oid:1.2.208.176.1.2|{v}");
    // Ahmad Rahimi is in Pia Lassen's care; Bent Larsen is not.
    assert_eq!(get(cpr("1503570721")), 200);
    assert_eq!(get(cpr("0906543083")), 403);
    let status = get("/metadata".into());
    assert_eq!(status, 200);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn the_demo_refuses_a_non_loopback_address() {
    let out = carebridge()
        .args(["demo", "--listen", "0.0.0.0:8080", "--no-serve"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}
