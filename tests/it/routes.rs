//! Every route of the router goes through `access::authorize`: the routes are read from the
//! sources of `src/api/`, each must be listed here with the access request it stands for, and
//! each is sent as every kind of caller to the real application. A route answers 403 exactly
//! when `authorize` refuses one of its requests, with the reason `authorize` gives — so a route
//! that skipped the decision, or asked the wrong question, fails here.

use std::collections::BTreeSet;

use carebridge::access::{Caller, Client, Request, Role, authorize};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{Backend, TestApp};

const CPR: &str = "0707071234";

/// The callers, by token holder of the test application, with their roles.
const CALLERS: [(&str, &str); 5] = [
    ("gp", "sector:gp"),
    ("hospital", "sector:hospital"),
    ("careteam", "careteam"),
    ("auditor", "auditor"),
    ("admin", "admin"),
];

/// The `(method, path template)` of every route declared in `src/api/`.
fn declared_routes() -> BTreeSet<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut out = BTreeSet::new();
    // The sources of src/api and its folders (the console's, src/api/ui/).
    let mut files = Vec::new();
    let mut dirs = vec![dir];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(d).expect("src/api") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    for path in files {
        let text = std::fs::read_to_string(path).expect("a file");
        let mut rest = text.as_str();
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            // The call's text, up to its closing parenthesis.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(rest.len(), |(i, _)| i);
            let call = &rest[..end];
            let start = call.find('"').expect("a path literal") + 1;
            let path = &call[start..start + call[start..].find('"').expect("closed")];
            let handlers = &call[start + path.len() + 1..];
            for (needle, method) in [("get(", "GET"), ("post(", "POST"), ("put(", "PUT")] {
                let named = handlers
                    .match_indices(needle)
                    .any(|(i, _)| i == 0 || !handlers.as_bytes()[i - 1].is_ascii_alphanumeric());
                if named {
                    out.insert((method.to_owned(), path.to_owned()));
                }
            }
        }
    }
    out
}

struct Route {
    method: Method,
    template: &'static str,
    /// An example request of this route.
    path: String,
    body: Option<Value>,
    /// What `authorize` is asked for this request (all must be granted); empty for the
    /// operational endpoints that take no token.
    requests: Vec<Request<'static>>,
}

fn caller(id: &str, role: &str) -> Caller {
    let mut client = Client::system(id, Role::parse(role).expect("a role"));
    // As the test application configures it (tests/common/conf.rs).
    client.asserts_relationship = id == "careteam";
    Caller {
        client,
        request_id: None,
    }
}

fn condition() -> Value {
    json!({ "resourceType": "Condition", "id": "rc1",
            "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
            "code": { "coding": [{ "system": "urn:oid:1.2.208.176.2.31", "code": "T90", "display": "Diabetes" }] },
            "subject": { "reference": "Patient/rp1" } })
}

fn table(gid: &str, pid: &str) -> Vec<Route> {
    let route = |method: Method, template, path: String, body, requests| Route {
        method,
        template,
        path,
        body,
        requests,
    };
    let bundle = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "resource": condition(), "request": { "method": "PUT", "url": "Condition/rc1" } } ] });
    let ack = json!({ "resourceType": "Parameters", "parameter": [
        { "name": "author", "valueString": "Dr. Test" } ] });
    let snooze = json!({ "resourceType": "Parameters", "parameter": [
        { "name": "until", "valueDate": "2999-01-01" },
        { "name": "author", "valueString": "Dr. Test" } ] });
    let glass = json!({ "resourceType": "Parameters", "parameter": [
        { "name": "reason", "valueCode": "emergency" },
        { "name": "text", "valueString": "unconscious on admission" } ] });
    let record = vec![Request::PatientData, Request::Record { sector: "gp" }];
    vec![
        route(Method::GET, "/healthz", "/healthz".into(), None, vec![]),
        route(Method::GET, "/readyz", "/readyz".into(), None, vec![]),
        route(Method::GET, "/metrics", "/metrics".into(), None, vec![]),
        route(
            Method::GET,
            "/fhir/metadata",
            "/fhir/metadata".into(),
            None,
            vec![],
        ),
        route(
            Method::GET,
            "/.well-known/smart-configuration",
            "/.well-known/smart-configuration".into(),
            None,
            vec![],
        ),
        route(
            Method::GET,
            "/fhir/.well-known/smart-configuration",
            "/fhir/.well-known/smart-configuration".into(),
            None,
            vec![],
        ),
        route(
            Method::POST,
            "/fhir/{base}/",
            "/fhir/gp/".into(),
            Some(bundle.clone()),
            vec![Request::WriteSector("gp")],
        ),
        route(
            Method::GET,
            "/fhir/{base}/{segment}/{leaf}/{more}",
            format!("/fhir/Condition/{gid}/_history/1"),
            None,
            record.clone(),
        ),
        route(
            Method::GET,
            "/fhir/{base}/{segment}/{leaf}/{more}/{last}",
            "/fhir/gp/Condition/rc1/_history/1".into(),
            None,
            record.clone(),
        ),
        route(
            Method::GET,
            "/fhir/{base}/{segment}/{leaf}",
            format!("/fhir/Condition/{gid}/_history"),
            None,
            record.clone(),
        ),
        route(
            Method::GET,
            "/fhir/{base}/{segment}",
            "/fhir/gp/Condition?code=T90".into(),
            None,
            vec![Request::PatientData],
        ),
        route(
            Method::GET,
            "/fhir/{base}",
            format!("/fhir/Condition?patient={pid}"),
            None,
            vec![Request::PatientData],
        ),
        route(
            Method::GET,
            "/fhir/{base}",
            format!("/fhir/Patient?identifier=urn:oid:1.2.208.176.1.2|{CPR}"),
            None,
            vec![Request::GatewayPatientSearch],
        ),
        route(
            Method::GET,
            "/fhir/{base}",
            "/fhir/AuditEvent".into(),
            None,
            vec![Request::AuditLog],
        ),
        route(
            Method::GET,
            "/fhir/{base}",
            format!("/fhir/DetectedIssue?patient={pid}"),
            None,
            vec![Request::Alerts],
        ),
        route(
            Method::POST,
            "/fhir/{base}",
            "/fhir/gp".into(),
            Some(bundle),
            vec![Request::WriteSector("gp")],
        ),
        route(
            Method::GET,
            "/fhir/{base}/{segment}",
            format!("/fhir/Condition/{gid}"),
            None,
            record.clone(),
        ),
        route(
            Method::GET,
            "/fhir/{base}/{segment}",
            "/fhir/gp/metadata".into(),
            None,
            vec![Request::Capabilities],
        ),
        route(
            Method::GET,
            "/fhir/{base}/{segment}",
            "/fhir/DetectedIssue/no-such-alert".into(),
            None,
            vec![Request::Alerts],
        ),
        route(
            Method::POST,
            "/fhir/{base}/{segment}",
            "/fhir/gp/Condition".into(),
            Some(condition()),
            vec![Request::WriteSector("gp")],
        ),
        route(
            Method::GET,
            "/fhir/{base}/{segment}/{leaf}",
            "/fhir/gp/Condition/rc1".into(),
            None,
            record,
        ),
        route(
            Method::GET,
            "/fhir/{base}/{segment}/{leaf}",
            format!("/fhir/Patient/{pid}/$total-plan"),
            None,
            vec![Request::Alerts],
        ),
        route(
            Method::PUT,
            "/fhir/{base}/{segment}/{leaf}",
            "/fhir/gp/Condition/rc1".into(),
            Some(condition()),
            vec![Request::WriteSector("gp")],
        ),
        route(
            Method::POST,
            "/fhir/{base}/{segment}/{leaf}",
            "/fhir/DetectedIssue/no-such-alert/$acknowledge".into(),
            Some(ack),
            vec![Request::Alerts],
        ),
        route(
            Method::POST,
            "/fhir/{base}/{segment}/{leaf}",
            "/fhir/DetectedIssue/no-such-alert/$snooze".into(),
            Some(snooze),
            vec![Request::Alerts],
        ),
        route(
            Method::POST,
            "/fhir/{base}/{segment}/{leaf}",
            format!("/fhir/Patient/{pid}/$break-glass"),
            Some(glass),
            vec![Request::BreakGlass],
        ),
        route(
            Method::GET,
            "/audit/break-glass",
            "/audit/break-glass?status=all".into(),
            None,
            vec![Request::AccessReview],
        ),
        route(
            Method::POST,
            "/audit/break-glass/{id}/review",
            "/audit/break-glass/no-such-grant/review".into(),
            Some(json!({ "note": "checked with the ward" })),
            vec![Request::AccessReview],
        ),
        route(
            Method::GET,
            "/audit/access-report",
            format!("/audit/access-report?patient={pid}"),
            None,
            vec![Request::AccessReview],
        ),
        route(
            Method::GET,
            "/alerts/stream",
            "/alerts/stream".into(),
            None,
            vec![Request::Alerts],
        ),
        route(
            Method::GET,
            "/audit/verify",
            "/audit/verify".into(),
            None,
            vec![Request::AuditLog],
        ),
        route(
            Method::GET,
            "/audit/export",
            "/audit/export".into(),
            None,
            vec![Request::AuditLog],
        ),
        route(
            Method::GET,
            "/audit/checkpoint",
            "/audit/checkpoint".into(),
            None,
            vec![Request::AuditLog],
        ),
        route(
            Method::GET,
            "/audit/proof/inclusion",
            "/audit/proof/inclusion?seq=1&size=1".into(),
            None,
            vec![Request::AuditLog],
        ),
        route(
            Method::GET,
            "/audit/proof/consistency",
            "/audit/proof/consistency?from=1&to=2".into(),
            None,
            vec![Request::AuditLog],
        ),
        route(
            Method::GET,
            "/audit/rows",
            "/audit/rows?from=1&to=2".into(),
            None,
            vec![Request::AuditLog],
        ),
        route(
            Method::GET,
            "/admin/deliveries",
            "/admin/deliveries".into(),
            None,
            vec![Request::Deliveries],
        ),
        route(
            Method::POST,
            "/admin/deliveries/{id}/retry",
            "/admin/deliveries/999999/retry".into(),
            None,
            vec![Request::Deliveries],
        ),
    ]
}

/// The console's routes (`src/api/ui/`): a person's session cookie, not a bearer token, signs
/// them in, and each page calls the gateway core as that person (`tests/it/console.rs` shows
/// the gateway's refusals on them). With a bearer token and no session, each answers this.
const CONSOLE: [(&str, &str, &str, u16); 16] = [
    ("GET", "/ui", "/ui", 303),
    ("GET", "/ui/", "/ui/", 303),
    ("GET", "/ui/sign-in", "/ui/sign-in", 200),
    ("GET", "/ui/sign-in/{token}", "/ui/sign-in/cb_unknown", 403),
    ("POST", "/ui/sign-out", "/ui/sign-out", 303),
    // The test application configures no OpenID issuer.
    ("GET", "/ui/oidc/start", "/ui/oidc/start", 404),
    (
        "GET",
        "/ui/oidc/callback",
        "/ui/oidc/callback?code=x&state=y",
        404,
    ),
    ("GET", "/ui/language/{lang}", "/ui/language/en", 303),
    ("GET", "/ui/inbox", "/ui/inbox", 303),
    ("GET", "/ui/events", "/ui/events", 303),
    ("GET", "/ui/alerts/{id}", "/ui/alerts/no-such-alert", 303),
    (
        "POST",
        "/ui/alerts/{id}/acknowledge",
        "/ui/alerts/no-such-alert/acknowledge",
        303,
    ),
    (
        "POST",
        "/ui/alerts/{id}/snooze",
        "/ui/alerts/no-such-alert/snooze",
        303,
    ),
    (
        "GET",
        "/ui/patients/{id}",
        "/ui/patients/no-such-patient",
        303,
    ),
    ("GET", "/ui/assets/{file}", "/ui/assets/console.css", 200),
    ("GET", "/ui/assets/{file}", "/ui/assets/console.js", 200),
];

/// The auditor's and IT staff's pages of the console: a bearer token is no session either.
const OPS_CONSOLE: [(&str, &str, &str, u16); 16] = [
    ("GET", "/ui/audit", "/ui/audit", 303),
    ("GET", "/ui/audit/search", "/ui/audit/search", 303),
    ("POST", "/ui/audit/search", "/ui/audit/search", 303),
    ("POST", "/ui/audit/export", "/ui/audit/export", 303),
    ("GET", "/ui/audit/verify", "/ui/audit/verify", 303),
    ("GET", "/ui/audit/access", "/ui/audit/access", 303),
    ("POST", "/ui/audit/access", "/ui/audit/access", 303),
    ("GET", "/ui/audit/break-glass", "/ui/audit/break-glass", 303),
    (
        "POST",
        "/ui/audit/break-glass/{id}/review",
        "/ui/audit/break-glass/x/review",
        303,
    ),
    ("GET", "/ui/it", "/ui/it", 303),
    ("GET", "/ui/it/board", "/ui/it/board", 303),
    ("GET", "/ui/it/dead", "/ui/it/dead", 303),
    (
        "POST",
        "/ui/it/dead/{id}/replay",
        "/ui/it/dead/1/replay",
        303,
    ),
    (
        "POST",
        "/ui/it/dead/replay-sector",
        "/ui/it/dead/replay-sector",
        303,
    ),
    ("GET", "/ui/it/messages", "/ui/it/messages", 303),
    (
        "POST",
        "/ui/it/messages/{id}/resend",
        "/ui/it/messages/1/resend",
        303,
    ),
];

/// Every page of the console, the care team's and the others'.
fn console_routes() -> impl Iterator<Item = (&'static str, &'static str, &'static str, u16)> {
    CONSOLE.into_iter().chain(OPS_CONSOLE).chain([
        ("GET", "/ui/it/system", "/ui/it/system", 303),
        ("POST", "/ui/it/system/probe", "/ui/it/system/probe", 303),
    ])
}

#[tokio::test]
async fn console_routes_need_a_session_not_a_bearer_token() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let root = app.base.trim_end_matches("/fhir").to_owned();
    let http = carebridge::outbound::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client");
    let mut failures = Vec::new();
    for (method, _, path, expected) in console_routes() {
        for (who, _) in CALLERS {
            let method = Method::from_bytes(method.as_bytes()).expect("a method");
            let resp = http
                .request(method.clone(), format!("{root}{path}"))
                .bearer_auth(app.token(who))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("csrf=x")
                .send()
                .await
                .expect("answered");
            let status = resp.status().as_u16();
            let location = resp
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap_or("").to_owned());
            let to_sign_in = location
                .as_deref()
                .is_some_and(|l| l.starts_with("/ui/sign-in") || l.starts_with("/ui/inbox"));
            if status != expected || (status == 303 && !to_sign_in) {
                failures.push(format!(
                    "{method} {path} as {who}: {status} {location:?}, expected {expected}"
                ));
            }
        }
    }
    app.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_declared_route_is_in_the_table() {
    let declared = declared_routes();
    assert!(
        declared.len() >= 15,
        "found only {} routes in src/api",
        declared.len()
    );
    let listed: BTreeSet<(String, String)> = table("g", "p")
        .iter()
        .map(|r| (r.method.to_string(), r.template.to_owned()))
        .chain(console_routes().map(|(m, t, _, _)| (m.to_owned(), t.to_owned())))
        .collect();
    let missing: Vec<_> = declared.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "routes without an access request here: {missing:?}"
    );
    let stale: Vec<_> = listed.difference(&declared).collect();
    assert!(
        stale.is_empty(),
        "listed routes the router no longer has: {stale:?}"
    );
}

#[tokio::test]
async fn each_route_answers_403_exactly_when_authorize_refuses() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let root = app.base.trim_end_matches("/fhir").to_owned();
    let patient = json!({ "resourceType": "Patient", "id": "rp1",
        "identifier": [{ "system": "urn:oid:1.2.208.176.1.2", "value": CPR }] });
    assert_eq!(app.put("gp", "/gp/Patient/rp1", &patient).await.0, 201);
    assert_eq!(
        app.put("gp", "/gp/Condition/rc1", &condition()).await.0,
        201
    );
    let gid = carebridge::ids::gateway_id("gp", "Condition", "rc1");
    let (_, found) = app
        .get(
            "careteam",
            &format!("/Patient?identifier=urn:oid:1.2.208.176.1.2|{CPR}"),
        )
        .await;
    let pid = found["entry"][0]["resource"]["id"]
        .as_str()
        .expect("a gateway patient")
        .to_owned();

    let mut failures = Vec::new();
    for r in table(&gid, &pid) {
        for (who, role) in CALLERS {
            let decision = r
                .requests
                .iter()
                .map(|q| authorize(&caller(who, role), *q))
                .find(|d| d.is_err());
            let mut req = app
                .http
                .request(r.method.clone(), format!("{root}{}", r.path))
                .bearer_auth(app.token(who));
            if let Some(b) = &r.body {
                req = req
                    .header("content-type", "application/fhir+json")
                    .body(b.to_string());
            }
            let resp = req.send().await.expect("the request is answered");
            let status = resp.status().as_u16();
            // The alert stream stays open for callers it admits: only its status is read.
            let body: Value = if status == 403 {
                resp.json().await.unwrap_or(Value::Null)
            } else {
                Value::Null
            };
            match decision {
                Some(Err(denied)) => {
                    let reason = body["issue"][0]["diagnostics"].as_str().unwrap_or("");
                    if status != 403 || reason != denied.0 {
                        failures.push(format!(
                            "{} {} as {who}: {status} {reason:?}, authorize says 403 {:?}",
                            r.method, r.path, denied.0
                        ));
                    }
                }
                _ => {
                    if status == 403 || status == 401 {
                        failures.push(format!(
                            "{} {} as {who}: {status}, authorize grants it",
                            r.method, r.path
                        ));
                    }
                }
            }
        }
    }
    app.stop().await;
    assert!(
        failures.is_empty(),
        "routes deciding access otherwise:\n{}",
        failures.join("\n")
    );
}
