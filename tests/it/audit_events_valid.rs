//! Every AuditEvent the gateway renders is valid R4 for an independent validator (Lantana
//! FHIR.js, `tests/common/peers.rs`): the app is driven through accepted and refused writes,
//! reads, searches, 401s, a delivery to a sector (delivered and dead-lettered), a replayed dead
//! letter, `/audit/verify`, `/audit/export` and a prune; then every AuditEvent of the search
//! API, of the NDJSON export and of the prune file is validated. The chain still verifies.

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::common::peers::{lantana_errors, validate_with_lantana};
use crate::common::{Backend, TestApp};
use axum::body::Bytes;
use axum::http::{HeaderMap, Method as HttpMethod, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use reqwest::Method;
use serde_json::{Value, json};

const CPR: &str = "0606061234";

fn gp_patient() -> Value {
    json!({ "resourceType": "Patient", "id": "vp1",
            "identifier": [{ "system": "urn:oid:1.2.208.176.1.2", "value": CPR }] })
}

fn gp_condition(id: &str) -> Value {
    json!({ "resourceType": "Condition", "id": id,
            "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
            "code": { "coding": [{ "system": "urn:oid:1.2.208.176.2.31", "code": "T90", "display": "Diabetes" }] },
            "subject": { "reference": "Patient/vp1" } })
}

fn lab_patient() -> Value {
    json!({ "resourceType": "Patient", "id": "lp1",
            "identifier": [{ "system": "urn:oid:1.2.208.176.1.2", "value": CPR }] })
}

fn lab_condition() -> Value {
    json!({ "resourceType": "Condition", "id": "lc1",
            "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
            "code": { "text": "Hypertension" },
            "subject": { "reference": "Patient/lp1" } })
}

/// A minimal FHIR server for the `lab` sector: every create or update succeeds with a new id.
async fn stub_handler(
    axum::extract::State(counter): axum::extract::State<Arc<AtomicU64>>,
    method: HttpMethod,
    uri: Uri,
    body: Bytes,
) -> Response {
    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
    let mut resource: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    if resource["resourceType"] == "Bundle" {
        // A transaction of one entry.
        let mut r = resource["entry"][0]["resource"].clone();
        let rtype = r["resourceType"].as_str().unwrap_or("Basic").to_owned();
        let id = format!("s{n}");
        r["id"] = json!(id);
        r["meta"] = json!({ "versionId": "1" });
        let out = json!({ "resourceType": "Bundle", "type": "transaction-response", "entry": [{
            "resource": r,
            "response": { "status": "201 Created", "location": format!("{rtype}/{id}/_history/1") }
        }]});
        return (StatusCode::OK, out.to_string()).into_response();
    }
    let rtype = segments.get(1).copied().unwrap_or("Basic").to_owned();
    let id = if method == HttpMethod::PUT {
        segments.get(2).copied().unwrap_or("x").to_owned()
    } else {
        format!("s{n}")
    };
    resource["id"] = json!(id);
    resource["meta"] = json!({ "versionId": "1" });
    let mut headers = HeaderMap::new();
    headers.insert(
        header::LOCATION,
        format!("/fhir/{rtype}/{id}/_history/1").parse().unwrap(),
    );
    headers.insert(
        header::CONTENT_TYPE,
        "application/fhir+json".parse().unwrap(),
    );
    let status = if method == HttpMethod::PUT {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    (status, headers, resource.to_string()).into_response()
}

async fn stub_sector() -> (String, tokio::task::JoinHandle<()>) {
    let router = axum::Router::new()
        .fallback(stub_handler)
        .with_state(Arc::new(AtomicU64::new(0)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{addr}/fhir"), handle)
}

/// A port nothing listens on: deliveries there fail at once (connection refused).
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

fn config(store_url: &str, lab_base: &str, gp_port: u16) -> String {
    let profiles = common::repo().join("fhir-profiles");
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[store]
url = "{store_url}"
max_connections = 4

[fhir]
profiles_dir = "{profiles}"

[exchange]
enabled = true
max_attempts = 1
retry_initial_ms = 10
idle_poll_ms = 50
request_timeout_ms = 2000

[[sectors]]
id = "gp"
name = "General practice"
kind = "general-practice"
base_url = "http://127.0.0.1:{gp_port}/fhir"
profile = "dk-gp"

[[sectors]]
id = "hospital"
name = "Hospital"
kind = "hospital"
profile = "dk-hospital"

[[sectors]]
id = "municipality"
name = "Municipality"
kind = "municipality"
profile = "dk-municipality"

[[sectors]]
id = "lab"
name = "Laboratory"
kind = "hospital"
base_url = "{lab_base}"
"#,
        profiles = profiles.display()
    )
}

/// Every AuditEvent of the search API, following `next` links.
async fn searched_events(app: &TestApp) -> Vec<Value> {
    let mut out = Vec::new();
    let mut url = format!("{}/AuditEvent?_count=200", app.base);
    loop {
        let resp = app
            .http
            .get(&url)
            .bearer_auth(app.token("auditor"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let page: Value = resp.json().await.unwrap();
        for e in page["entry"].as_array().cloned().unwrap_or_default() {
            out.push(e["resource"].clone());
        }
        let next = page["link"].as_array().and_then(|links| {
            links
                .iter()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str().map(str::to_owned))
        });
        match next {
            Some(n) => url = n,
            None => break,
        }
    }
    out
}

async fn exported_events(app: &TestApp) -> Vec<Value> {
    let root = app.base.trim_end_matches("/fhir");
    let resp = app
        .http
        .get(format!("{root}/audit/export"))
        .bearer_auth(app.token("auditor"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn subtype_code(e: &Value) -> String {
    e["subtype"][0]["code"].as_str().unwrap_or("").to_owned()
}

async fn wait_for_events(app: &TestApp, what: &str, pred: impl Fn(&[Value]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = searched_events(app).await;
        if pred(&events) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_audit_event_is_valid_for_lantana() {
    let (lab_base, stub) = stub_sector().await;
    let gp_port = closed_port().await;
    let app = TestApp::spawn_config(Backend::Sqlite, |url| config(url, &lab_base, gp_port)).await;
    let root = app.base.trim_end_matches("/fhir").to_owned();

    // Accepted writes, then a prune of what is recorded so far (a checkpoint row).
    let (s, v, _) = app.put("gp", "/gp/Patient/vp1", &gp_patient()).await;
    assert_eq!(s, 201, "{v}");
    let (s, v, _) = app
        .put("gp", "/gp/Condition/vc1", &gp_condition("vc1"))
        .await;
    assert_eq!(s, 201, "{v}");
    let pruned_file = app.dir.path().join("pruned.ndjson");
    let actor = carebridge::audit::Actor {
        client_id: Some("carebridge-cli".into()),
        role: Some("admin".into()),
        request_id: None,
        person: None,
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let pruned = carebridge::gateway::ledger::prune(
        app.app_gateway.store().as_ref(),
        carebridge::fhir::time::now_us(),
        &pruned_file,
        &actor,
        &mut |_, _| {},
    )
    .await
    .unwrap()
    .expect("rows to prune");
    assert!(pruned.deleted >= 2);

    let (s, v, _) = app
        .put("gp", "/gp/Condition/vc1", &gp_condition("vc1"))
        .await;
    assert_eq!(s, 200, "{v}");
    let mut changed = gp_condition("vc1");
    changed["code"]["text"] = json!("Type 2 diabetes");
    let (s, v, _) = app.put("gp", "/gp/Condition/vc1", &changed).await;
    assert_eq!(s, 200, "{v}");
    let (s, v, _) = app.post("gp", "/gp/Condition", &gp_condition("vc2")).await;
    assert_eq!(s, 201, "{v}");
    let transaction = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "fullUrl": "urn:uuid:7f1c7c4e-3d0a-4c57-9d59-0f5a7d1c2b01", "resource": gp_condition("vc3"),
          "request": { "method": "PUT", "url": "Condition/vc3" } } ] });
    let (s, v, _) = app.post("gp", "/gp", &transaction).await;
    assert_eq!(s, 200, "{v}");
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "resource": gp_condition("vc4"), "request": { "method": "PUT", "url": "Condition/vc4" } },
        { "resource": { "resourceType": "Condition", "id": "vc5", "bogus": true },
          "request": { "method": "PUT", "url": "Condition/vc5" } } ] });
    let (s, v, _) = app.post("gp", "/gp", &batch).await;
    assert_eq!(s, 200, "{v}");

    // The lab joins the patient's care: the gp's Conditions go to the lab (delivered), the
    // lab's Condition to the gp (nobody listens there: dead-lettered at the first attempt).
    let (s, v, _) = app.put("lab", "/lab/Patient/lp1", &lab_patient()).await;
    assert_eq!(s, 201, "{v}");
    let (s, v, _) = app.put("lab", "/lab/Condition/lc1", &lab_condition()).await;
    assert_eq!(s, 201, "{v}");

    // Refused writes: role, media type, unparseable, structure, a business rule.
    let (s, _, _) = app
        .post("careteam", "/gp/Condition", &gp_condition("vc6"))
        .await;
    assert_eq!(s, 403);
    let (s, _, _) = app
        .send(
            "gp",
            Method::POST,
            "/gp/Condition",
            Some(b"{}".to_vec()),
            "text/plain",
        )
        .await;
    assert_eq!(s, 415);
    let (s, _, _) = app
        .send(
            "gp",
            Method::POST,
            "/gp/Condition",
            Some(b"{\"resourceType\":".to_vec()),
            "application/fhir+json",
        )
        .await;
    assert_eq!(s, 400);
    let (s, _, _) = app
        .post(
            "gp",
            "/gp/Condition",
            &json!({ "resourceType": "Condition", "bogus": 1 }),
        )
        .await;
    assert_eq!(s, 400);
    let mut foreign = gp_condition("vc7");
    foreign["subject"]["reference"] = json!(format!("{lab_base}/Patient/lp1"));
    let (s, v, _) = app.post("gp", "/gp/Condition", &foreign).await;
    assert_eq!(s, 422, "{v}");

    // Reads and searches.
    let (s, _) = app.get("gp", "/gp/Condition/vc1").await;
    assert_eq!(s, 200);
    let gid = carebridge::ids::gateway_id("gp", "Condition", "vc1");
    let (s, _) = app.get("careteam", &format!("/Condition/{gid}")).await;
    assert_eq!(s, 200);
    let (s, found) = app
        .get(
            "careteam",
            &format!("/Patient?identifier=urn:oid:1.2.208.176.1.2|{CPR}"),
        )
        .await;
    assert_eq!(s, 200);
    let pid = found["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = app.get("careteam", &format!("/Patient/{pid}")).await;
    assert_eq!(s, 200);
    let (s, _) = app
        .get("careteam", &format!("/Condition?patient={pid}"))
        .await;
    assert_eq!(s, 200);
    let (s, _) = app.get("gp", &format!("/Condition?patient={pid}")).await;
    assert_eq!(s, 200);
    let (s, _) = app.get("auditor", "/AuditEvent?agent=gp&_count=5").await;
    assert_eq!(s, 200);

    // 401s: no token, an unknown token, on /fhir and on /audit.
    let (s, _) = app.get("", "/gp/metadata").await;
    assert_eq!(s, 401);
    let (s, _) = app.get("cb_not_a_token", "/gp/Condition/vc1").await;
    assert_eq!(s, 401);
    let resp = app
        .http
        .get(format!("{root}/audit/verify"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // Refusals are audited per client address and minute; the minute is closed here.
    app.app_gateway.flush_refusals(true).await;

    // The deliveries: one delivered to the lab, one dead-lettered for the gp; replay it.
    wait_for_events(&app, "a delivery and a dead letter", |events| {
        let delivers: Vec<&Value> = events
            .iter()
            .filter(|e| subtype_code(e) == "deliver")
            .collect();
        delivers.iter().any(|e| e["outcome"] == "0") && delivers.iter().any(|e| e["outcome"] != "0")
    })
    .await;
    let (s, dead) = app.get("admin", "/../admin/deliveries?state=dead").await;
    assert_eq!(s, 200, "{dead}");
    let id = dead["entries"][0]["id"].as_i64().expect("a dead entry");
    let (s, v, _) = app
        .send(
            "admin",
            Method::POST,
            &format!("/../admin/deliveries/{id}/retry"),
            None,
            "",
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // The auditor's own activity.
    let resp = app
        .http
        .get(format!("{root}/audit/verify"))
        .bearer_auth(app.token("auditor"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let _ = exported_events(&app).await;
    wait_for_events(&app, "the replayed delivery", |events| {
        events
            .iter()
            .filter(|e| subtype_code(e) == "deliver" && e["outcome"] != "0")
            .count()
            >= 2
    })
    .await;

    // Everything recorded, from all three places.
    let searched = searched_events(&app).await;
    let exported = exported_events(&app).await;
    let pruned: Vec<Value> = std::fs::read_to_string(&pruned_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let codes: BTreeSet<String> = searched
        .iter()
        .chain(&exported)
        .chain(&pruned)
        .map(subtype_code)
        .collect();
    for want in [
        "create",
        "update",
        "transaction",
        "batch",
        "read",
        "search-type",
        "authenticate",
        "verify",
        "export",
        "prune",
        "deliver",
        "retry-delivery",
    ] {
        assert!(
            codes.contains(want),
            "no AuditEvent with subtype {want}: {codes:?}"
        );
    }
    let outcomes: BTreeSet<String> = searched
        .iter()
        .map(|e| e["outcome"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        outcomes.contains("0") && outcomes.contains("4"),
        "{outcomes:?}"
    );

    let all: Vec<Value> = searched
        .iter()
        .chain(&exported)
        .chain(&pruned)
        .cloned()
        .collect();
    let results = validate_with_lantana(&all);
    let mut failures = Vec::new();
    for (e, r) in all.iter().zip(&results) {
        if r["valid"] != json!(true) {
            failures.push(format!(
                "AuditEvent {} ({}): {}\n  {}",
                e["id"],
                subtype_code(e),
                lantana_errors(r).join("\n  "),
                e
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} AuditEvents are invalid:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
    // Warnings (codes outside an extensible binding's value set) are allowed only where they
    // are deliberate; any other warning fails, so that a wrong code in a standard CodeSystem is
    // caught.
    const EXPECTED_WARNINGS: [&str; 3] = [
        // The project's own subtype codes: the binding of AuditEvent.subtype is extensible and
        // its value set has no code for these events (see src/audit.rs).
        "(http://carebridge.example.org/fhir/CodeSystem/audit-event-subtype) not found in value set",
        // IHE BALP's entity type for the X-Request-Id entity.
        "\"XrequestId\" (https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType) not found in value set",
        // TREAT is in the PurposeOfUse value set (an is-a filter on v3-ActReason), which
        // FHIR.js does not expand.
        "\"TREAT\" (http://terminology.hl7.org/CodeSystem/v3-ActReason) not found in value set",
    ];
    let mut unexpected = BTreeSet::new();
    let mut allowed = BTreeSet::new();
    for r in &results {
        for m in r["messages"].as_array().cloned().unwrap_or_default() {
            // Errors failed above; `information` notes what FHIR.js could not check (value
            // sets it does not ship).
            if m["severity"] != "warning" {
                continue;
            }
            let text = format!("{}: {}", m["location"], m["message"]);
            if EXPECTED_WARNINGS
                .iter()
                .any(|w| m["message"].as_str().unwrap_or("").contains(w))
            {
                allowed.insert(text);
            } else {
                unexpected.insert(text);
            }
        }
    }
    for w in &allowed {
        eprintln!("expected Lantana warning: {w}");
    }
    assert!(
        unexpected.is_empty(),
        "unexpected Lantana messages:\n{}",
        unexpected.into_iter().collect::<Vec<_>>().join("\n")
    );
    // subtype[0] names the interaction, in the system that defines it: a FHIR RESTful
    // interaction under type `rest`, anything else a documented code of the project CodeSystem
    // under a DICOM event type.
    let documented: Vec<&str> = carebridge::audit::SUBTYPES
        .iter()
        .map(|(code, _, _)| *code)
        .collect();
    for e in &all {
        let code = subtype_code(e);
        let system = e["subtype"][0]["system"].as_str().unwrap_or("");
        if system == "http://hl7.org/fhir/restful-interaction" {
            assert_eq!(e["type"]["code"], "rest", "{e}");
        } else {
            assert_eq!(system, carebridge::audit::SUBTYPE_SYSTEM, "{e}");
            assert!(
                documented.contains(&code.as_str()),
                "{code} is not in audit::SUBTYPES: {e}"
            );
            assert_eq!(
                e["type"]["system"], "http://dicom.nema.org/resources/ontology/DCM",
                "{e}"
            );
        }
    }
    for code in [
        "create",
        "update",
        "read",
        "search-type",
        "transaction",
        "batch",
    ] {
        assert!(
            all.iter().any(|e| subtype_code(e) == code
                && e["subtype"][0]["system"] == "http://hl7.org/fhir/restful-interaction"),
            "{code}"
        );
    }
    // A delivery is an export from the gateway (source) to the target sector (destination).
    let deliveries: Vec<&Value> = all
        .iter()
        .filter(|e| subtype_code(e) == "deliver")
        .collect();
    for d in &deliveries {
        assert_eq!(d["type"]["code"], "110106", "a delivery is an export: {d}");
        assert_eq!(d["agent"][0]["type"]["coding"][0]["code"], "110153", "{d}");
        assert_eq!(d["agent"][1]["type"]["coding"][0]["code"], "110152", "{d}");
        assert_eq!(d["agent"].as_array().unwrap().len(), 2, "{d}");
    }
    assert!(
        deliveries
            .iter()
            .any(|d| d["outcome"] == "0" && d["agent"][1]["who"]["identifier"]["value"] == "lab"),
        "the lab is the destination of its delivery"
    );

    // Rendering does not touch the chain.
    let resp = app
        .http
        .get(format!("{root}/audit/verify"))
        .bearer_auth(app.token("auditor"))
        .send()
        .await
        .unwrap();
    let report: Value = resp.json().await.unwrap();
    assert_eq!(report["ok"], true, "{report}");
    app.stop().await;
    stub.abort();
}
