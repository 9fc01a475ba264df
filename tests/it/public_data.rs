//! The official R4 examples and the Synthea patients, through the real API.

use crate::common::synthea;
use crate::common::{Backend, TestApp, expressions, official_examples, read_json, shared_data};
use serde_json::Value;
use std::collections::BTreeMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_official_example_is_accepted_and_the_edge_case_is_rejected_with_a_path() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let examples = official_examples();
    assert!(
        examples.len() >= 400,
        "expected the full example set, found {}",
        examples.len()
    );
    let mut accepted = 0;
    for path in &examples {
        let resource = read_json(path);
        let rtype = resource["resourceType"]
            .as_str()
            .expect("resourceType")
            .to_owned();
        let (status, body, headers) = app.post("lab", &format!("/lab/{rtype}"), &resource).await;
        if path.ends_with("Patient/json-edge-cases.json") {
            assert_eq!(status, 400, "{}: {body}", path.display());
            let exprs = expressions(&body);
            assert!(exprs.iter().any(|e| e.starts_with("Patient.")), "{exprs:?}");
            continue;
        }
        assert!(
            status == 201 || status == 200,
            "{}: {status} {body}",
            path.display()
        );
        assert_eq!(body["resourceType"], rtype);
        assert!(body["meta"]["versionId"].is_string(), "{body}");
        assert!(headers.get("location").is_some());
        accepted += 1;
    }
    assert_eq!(accepted, examples.len() - 1);
    app.stop().await;
}

/// Counts resources per type in a transaction Bundle.
fn counts(bundle: &Value) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for e in bundle["entry"].as_array().expect("entries") {
        *c.entry(
            e["resource"]["resourceType"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        )
        .or_default() += 1;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_synthea_bundle_is_accepted_whole_and_read_back_by_patient() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let files = synthea::files(&shared_data()).expect("synthea folder");
    assert_eq!(files.len(), 50);
    for path in &files {
        let bundle = read_json(path);
        let (status, response, _) = app.post("lab", "/lab", &bundle).await;
        assert_eq!(status, 200, "{}: {response}", path.display());
        assert_eq!(response["type"], "transaction-response");
        let entries = response["entry"].as_array().expect("response entries");
        assert_eq!(
            entries.len(),
            bundle["entry"].as_array().map_or(0, Vec::len)
        );
        // Organizations and Practitioners recur across patients with the same ids and content:
        // the second time they are recognised (200), everything else is new (201).
        for (e, sent) in entries
            .iter()
            .zip(bundle["entry"].as_array().expect("entries"))
        {
            let shared = matches!(
                sent["resource"]["resourceType"].as_str(),
                Some("Organization" | "Practitioner")
            );
            let status = e["response"]["status"].as_str().unwrap_or_default();
            assert!(
                status == "201 Created" || (shared && status == "200 OK"),
                "{}: {e}",
                path.display()
            );
        }

        // The gateway patient of this sector Patient, then every resource type by patient.
        let patient_location = entries
            .iter()
            .filter_map(|e| e["response"]["location"].as_str())
            .find(|l| l.contains("/lab/Patient/"))
            .expect("a Patient entry");
        assert!(
            patient_location.starts_with(&app.base),
            "{patient_location}"
        );
        let rid = patient_location
            .split("/lab/Patient/")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .expect("patient id");
        let (status, found) = app
            .get(
                "careteam",
                &format!("/Patient?identifier=urn:carebridge:sector-patient:lab|{rid}"),
            )
            .await;
        assert_eq!(status, 200, "{found}");
        let patient_id = found["entry"][0]["resource"]["id"]
            .as_str()
            .expect("gateway patient")
            .to_owned();
        for (rtype, expected) in counts(&bundle) {
            if rtype == "Patient" || rtype == "Organization" || rtype == "Practitioner" {
                continue;
            }
            let mut seen = 0;
            let mut next = Some(format!("/{rtype}?patient={patient_id}&_count=500"));
            while let Some(path) = next.take() {
                let (status, page) = app.get("careteam", &path).await;
                assert_eq!(status, 200, "{page}");
                for e in page["entry"].as_array().cloned().unwrap_or_default() {
                    assert_eq!(e["resource"]["resourceType"], rtype.as_str());
                    let tags = e["resource"]["meta"]["tag"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    assert!(
                        tags.iter()
                            .any(|t| t["system"] == carebridge::fhir::SECTOR_TAG_SYSTEM
                                && t["code"] == "lab"),
                        "{tags:?}"
                    );
                    seen += 1;
                }
                next = page["link"]
                    .as_array()
                    .and_then(|l| l.iter().find(|x| x["relation"] == "next"))
                    .and_then(|x| x["url"].as_str())
                    .map(|u| u.split("/fhir").nth(1).unwrap_or_default().to_owned());
            }
            assert_eq!(seen, expected, "{}: {rtype}", path.display());
        }
    }
    app.stop().await;
}
