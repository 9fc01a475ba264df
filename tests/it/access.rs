//! Access control and limits: every route with no token, a bad token and each role, checked
//! against the matrix documented in README.md ("Access matrix"; `tests/it/jwt.rs` runs the role
//! columns again with bearer JWTs), with the `WWW-Authenticate` challenge of each 401; and the
//! limit cases (body size, JSON depth, Bundle entries, rate) each answered with their status
//! and an OperationOutcome, never a 5xx.

use crate::common::{Backend, TestApp};
use reqwest::Method;
use serde_json::{Value, json};

const CPR: &str = "0505051234";

fn gp_patient() -> Value {
    json!({ "resourceType": "Patient", "id": "ap1",
            "identifier": [{ "system": "urn:oid:1.2.208.176.1.2", "value": CPR }] })
}

fn gp_condition() -> Value {
    json!({ "resourceType": "Condition", "id": "ac1",
            "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
            "code": { "coding": [{ "system": "urn:oid:1.2.208.176.2.31", "code": "T90", "display": "Diabetes" }] },
            "subject": { "reference": "Patient/ap1" } })
}

/// Who calls: no token, an unknown token, and each configured role.
const CALLERS: [&str; 7] = ["", "bad", "gp", "hospital", "careteam", "auditor", "admin"];

fn is_outcome(v: &Value) -> bool {
    v["resourceType"] == "OperationOutcome" && v["issue"][0]["diagnostics"].is_string()
}

#[tokio::test]
async fn every_route_answers_each_caller_as_the_matrix_says() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let root = app.base.trim_end_matches("/fhir").to_owned();
    let (s, _, _) = app.put("gp", "/gp/Patient/ap1", &gp_patient()).await;
    assert_eq!(s, 201);
    let (s, cond, _) = app.put("gp", "/gp/Condition/ac1", &gp_condition()).await;
    assert_eq!(s, 201, "{cond}");
    let gid = carebridge::ids::gateway_id("gp", "Condition", "ac1");
    let (_, found) = app
        .get(
            "careteam",
            &format!("/Patient?identifier=urn:oid:1.2.208.176.1.2|{CPR}"),
        )
        .await;
    let pid = found["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "fullUrl": "urn:uuid:6f1c7c4e-3d0a-4c57-9d59-0f5a7d1c2b01", "resource": gp_condition(),
          "request": { "method": "PUT", "url": "Condition/ac1" } } ] });

    // (method, path from the host root, body, expected status per CALLERS entry).
    // 2xx is written 200 and matches any 2xx.
    let matrix: Vec<(Method, String, Option<Value>, [u16; 7])> = vec![
        (
            Method::GET,
            "/healthz".into(),
            None,
            [200, 200, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            "/readyz".into(),
            None,
            [200, 200, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            "/metrics".into(),
            None,
            [200, 200, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            "/fhir/metadata".into(),
            None,
            [200, 200, 200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/fhir/gp/Condition".into(),
            Some(gp_condition()),
            [401, 401, 200, 403, 403, 403, 403],
        ),
        (
            Method::PUT,
            "/fhir/gp/Condition/ac1".into(),
            Some(gp_condition()),
            [401, 401, 200, 403, 403, 403, 403],
        ),
        (
            Method::POST,
            "/fhir/gp".into(),
            Some(bundle),
            [401, 401, 200, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            "/fhir/gp/Condition/ac1".into(),
            None,
            [401, 401, 200, 403, 200, 403, 403],
        ),
        (
            Method::GET,
            format!("/fhir/Condition/{gid}"),
            None,
            [401, 401, 200, 403, 200, 403, 403],
        ),
        (
            Method::GET,
            format!("/fhir/Condition?patient={pid}"),
            None,
            [401, 401, 200, 200, 200, 403, 403],
        ),
        (
            Method::GET,
            format!("/fhir/Patient?identifier=urn:oid:1.2.208.176.1.2|{CPR}"),
            None,
            [401, 401, 403, 403, 200, 403, 403],
        ),
        (
            Method::GET,
            format!("/fhir/Patient/{pid}"),
            None,
            [401, 401, 404, 404, 200, 403, 403],
        ),
        (
            Method::GET,
            "/fhir/AuditEvent".into(),
            None,
            [401, 401, 403, 403, 403, 200, 403],
        ),
        (
            Method::GET,
            "/audit/verify".into(),
            None,
            [401, 401, 403, 403, 403, 200, 403],
        ),
        (
            Method::GET,
            "/audit/export".into(),
            None,
            [401, 401, 403, 403, 403, 200, 403],
        ),
        (
            Method::GET,
            "/admin/deliveries?state=pending".into(),
            None,
            [401, 401, 403, 403, 403, 403, 200],
        ),
        (
            Method::POST,
            "/admin/deliveries/999999/retry".into(),
            None,
            [401, 401, 403, 403, 403, 403, 404],
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, body, expected) in &matrix {
        for (who, want) in CALLERS.iter().zip(expected) {
            let mut req = app.http.request(method.clone(), format!("{root}{path}"));
            match *who {
                "" => {}
                "bad" => req = req.bearer_auth("cb_not_a_valid_token"),
                w => req = req.bearer_auth(app.token(w)),
            }
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/fhir+json")
                    .body(b.to_string());
            }
            let resp = req.send().await.unwrap();
            let got = resp.status().as_u16();
            if got == 401 {
                // RFC 6750: a bare challenge without a token, `invalid_token` with a bad one.
                let challenge = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                let want_challenge = if who.is_empty() {
                    "Bearer"
                } else {
                    "Bearer error=\"invalid_token\""
                };
                if challenge != want_challenge {
                    failures.push(format!(
                        "{method} {path} as '{who}': WWW-Authenticate {challenge:?}, want {want_challenge:?}"
                    ));
                }
            }
            let ok = if *want == 200 {
                (200..300).contains(&got)
            } else {
                got == *want
            };
            if !ok {
                failures.push(format!(
                    "{method} {path} as '{who}': got {got}, want {want}"
                ));
            }
            if got >= 400 {
                let text = resp.text().await.unwrap();
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if !is_outcome(&v) {
                    failures.push(format!(
                        "{method} {path} as '{who}': {got} without an OperationOutcome: {text}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    app.stop().await;
}

#[tokio::test]
async fn limits_answer_with_their_status_and_an_outcome() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        "max_json_depth = 16\nrate_limit_per_second = 5\nrate_limit_burst = 5",
    )
    .await;
    // Test config: max_body_bytes 4 MiB, max_bundle_entries 5000.
    let mut cases: Vec<(&str, String, Vec<u8>, u16, &str)> = Vec::new();
    let big = format!(
        "{{\"resourceType\":\"Basic\",\"id\":\"big\",\"code\":{{\"text\":\"{}\"}}}}",
        "x".repeat(5 * 1024 * 1024)
    );
    cases.push((
        "body size",
        "/lab/Basic".into(),
        big.into_bytes(),
        413,
        "too-costly",
    ));
    let mut deep = json!({ "text": "bottom" });
    for _ in 0..30 {
        deep = json!({ "extension": [{ "url": "http://example.org/x", "valueCodeableConcept": deep }] });
    }
    let deep = json!({ "resourceType": "Basic", "id": "deep", "code": deep });
    cases.push((
        "depth",
        "/lab/Basic".into(),
        deep.to_string().into_bytes(),
        400,
        "structure",
    ));
    let entries: Vec<Value> = (0..5001)
        .map(|i| json!({ "resource": { "resourceType": "Basic", "id": format!("b{i}"), "code": { "text": "x" } },
                         "request": { "method": "PUT", "url": format!("Basic/b{i}") } }))
        .collect();
    let many = json!({ "resourceType": "Bundle", "type": "batch", "entry": entries });
    cases.push((
        "bundle entries",
        "/lab".into(),
        many.to_string().into_bytes(),
        400,
        "too-costly",
    ));
    for (name, path, body, status, code) in cases {
        let (got, v, _) = app
            .send(
                "lab",
                Method::POST,
                &path,
                Some(body),
                "application/fhir+json",
            )
            .await;
        assert_eq!(got, status, "{name}: {v}");
        assert!(is_outcome(&v), "{name}: {v}");
        assert_eq!(v["issue"][0]["code"], code, "{name}: {v}");
    }
    assert_eq!(
        app.stored_count().await,
        0,
        "nothing from the refused requests is stored"
    );

    // Rate: the bucket of 5 is spent (three requests above, refilled while they ran), the next
    // ones are throttled with Retry-After however slowly a loaded machine sends them; another
    // client is not affected.
    let mut throttled = None;
    for _ in 0..100 {
        let (s, v, headers) = app
            .send("lab", Method::GET, "/lab/metadata", None, "")
            .await;
        if s == 429 {
            throttled = Some((v, headers));
            break;
        }
    }
    let (v, headers) = throttled.expect("the per-client rate limit answers 429");
    assert!(is_outcome(&v), "{v}");
    assert_eq!(v["issue"][0]["code"], "throttled");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    let (s, _) = app.get("careteam", "/lab/metadata").await;
    assert_eq!(s, 200, "another client keeps its own allowance");
    let root = app.base.trim_end_matches("/fhir").to_owned();
    let metrics = app
        .http
        .get(format!("{root}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("carebridge_rate_limited_total"),
        "{metrics}"
    );
    assert!(metrics.contains("status=\"429\""), "{metrics}");
    app.stop().await;
}

#[tokio::test]
async fn a_request_over_the_time_limit_gets_an_outcome() {
    // A one-second limit and a Bundle large enough to take longer in a debug build would be
    // a timed test; instead the limit is checked on a request that cannot finish: a body that
    // never completes.
    let app = TestApp::spawn_with(Backend::Sqlite, "request_timeout_secs = 1").await;
    let url = format!("{}/lab/Basic", app.base);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(b"{\"resourceType\":".to_vec())).await.unwrap();
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|item| (item, rx))
    }));
    let resp = app
        .http
        .post(url)
        .bearer_auth(app.token("lab"))
        .header("content-type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let v: Value = resp.json().await.unwrap();
    assert!(is_outcome(&v), "{v}");
    assert_eq!(v["issue"][0]["code"], "timeout");
    drop(tx);
    app.stop().await;
}
