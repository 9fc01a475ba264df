//! A stored body damaged in the database (edited by hand, a broken disk) is an error that is
//! answered 500, logged without patient data and counted in `carebridge_corrupt_bodies_total`
//! — never read as an empty resource — and the records around it stay readable.

use serde_json::json;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::common::{Backend, TestApp};

fn corrupt_count(metrics: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with("carebridge_corrupt_bodies_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no carebridge_corrupt_bodies_total in /metrics:\n{metrics}"))
}

#[tokio::test]
async fn a_damaged_stored_body_is_a_counted_error_not_an_empty_resource() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let root = app.base.trim_end_matches("/fhir").to_owned();
    let patient = json!({ "resourceType": "Patient", "id": "cp1",
        "identifier": [{ "system": "urn:oid:1.2.208.176.1.2", "value": "0808081234" }] });
    let condition = json!({ "resourceType": "Condition", "id": "cc1",
        "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
        "code": { "coding": [{ "system": "urn:oid:1.2.208.176.2.31", "code": "T90", "display": "Diabetes" }] },
        "subject": { "reference": "Patient/cp1" } });
    assert_eq!(app.put("gp", "/gp/Patient/cp1", &patient).await.0, 201);
    assert_eq!(app.put("gp", "/gp/Condition/cc1", &condition).await.0, 201);
    let metrics = |http: reqwest::Client, root: String| async move {
        http.get(format!("{root}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    };
    let before = corrupt_count(&metrics(app.http.clone(), root.clone()).await);

    // Damage the Condition's stored version behind the gateway's back.
    let gid = carebridge::ids::gateway_id("gp", "Condition", "cc1");
    let file = app.dir.path().join("carebridge.db");
    let mut db = SqliteConnectOptions::new()
        .filename(&file)
        .busy_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .expect("open the store file");
    let changed = sqlx::query(
        "UPDATE resource_versions SET body = '{\"resourceType\": \"Cond' WHERE gid = $1",
    )
    .bind(&gid)
    .execute(&mut db)
    .await
    .expect("damage the row")
    .rows_affected();
    assert_eq!(changed, 1);
    db.close().await.expect("close");

    for path in [format!("/Condition/{gid}"), "/gp/Condition/cc1".to_owned()] {
        let who = if path.starts_with("/gp") {
            "gp"
        } else {
            "careteam"
        };
        let (status, body) = app.get(who, &path).await;
        assert_eq!(status, 500, "{path}: {body}");
        assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
        assert_eq!(body["issue"][0]["code"], "exception", "{body}");
        assert!(
            !body.to_string().contains("Cond\""),
            "the damaged content is not echoed: {body}"
        );
    }
    let after = corrupt_count(&metrics(app.http.clone(), root.clone()).await);
    assert!(after >= before + 2.0, "counted: {before} → {after}");
    // The Patient beside it is untouched.
    let (status, _) = app.get("gp", "/gp/Patient/cp1").await;
    assert_eq!(status, 200);
    app.stop().await;
}
