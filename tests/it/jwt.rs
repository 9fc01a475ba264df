//! Bearer JWTs: RS256 and ES256 tokens of a configured issuer, verified against its JWKS served
//! by a small server in the test (keys generated here). Valid tokens of every role reach what
//! README's access matrix says; tokens failing any check answer 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"` and an OperationOutcome, and are audited;
//! key rotation refetches the key set on an unknown `kid` at most once per refresh period and
//! drops removed keys; a failed fetch keeps the cached keys; configuration errors name the key;
//! the real binary's log at trace level holds no token, claim or key.

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::server::Serve;
use crate::common::{Backend, TestApp};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.carebridge.test";
const AUDIENCE: &str = "carebridge";
const CPR: &str = "0707071234";

// ---------------------------------------------------------------------------------------------
// Keys and tokens

/// A signing key of the test issuer and its public JWK.
#[derive(Clone)]
struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
    /// The private key in PEM, to look for in logs.
    pem: String,
}

fn rsa_signer(kid: &str) -> Signer {
    use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};
    let mut rng = rsa::rand_core::OsRng;
    let private = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("RSA key");
    let pem = private.to_pkcs1_pem(LineEnding::LF).unwrap().to_string();
    signer(
        kid,
        Algorithm::RS256,
        EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        pem,
    )
}

fn ec_signer(kid: &str) -> Signer {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    signer(
        kid,
        Algorithm::ES256,
        EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        pem,
    )
}

fn signer(kid: &str, alg: Algorithm, key: EncodingKey, pem: String) -> Signer {
    let mut jwk = Jwk::from_encoding_key(&key, alg).expect("public JWK");
    jwk.common.key_id = Some(kid.to_owned());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk.common.key_algorithm = Some(match alg {
        Algorithm::RS256 => KeyAlgorithm::RS256,
        _ => KeyAlgorithm::ES256,
    });
    Signer {
        kid: kid.to_owned(),
        alg,
        key,
        jwk: serde_json::to_value(&jwk).unwrap(),
        pem,
    }
}

/// Generates the keys on blocking threads (RSA key generation is slow in a debug build).
async fn keys(rsa: &[&str], ec: &[&str]) -> HashMap<String, Signer> {
    let mut tasks = Vec::new();
    for kid in rsa {
        let kid = (*kid).to_owned();
        tasks.push(tokio::task::spawn_blocking(move || rsa_signer(&kid)));
    }
    for kid in ec {
        let kid = (*kid).to_owned();
        tasks.push(tokio::task::spawn_blocking(move || ec_signer(&kid)));
    }
    let mut out = HashMap::new();
    for t in tasks {
        let s = t.await.unwrap();
        out.insert(s.kid.clone(), s);
    }
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a valid token for `client` with `scope`, valid for five minutes.
fn claims(client: &str, scope: &str) -> Value {
    let t = now();
    json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": client, "client_id": client, "scope": scope,
            "iat": t, "nbf": t - 5, "exp": t + 300, "jti": uuid::Uuid::new_v4().to_string() })
}

fn sign(s: &Signer, claims: &Value) -> String {
    let mut h = Header::new(s.alg);
    h.kid = Some(s.kid.clone());
    jsonwebtoken::encode(&h, claims, &s.key).unwrap()
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

// ---------------------------------------------------------------------------------------------
// The issuer's JWKS endpoint

#[derive(Clone)]
struct Jwks {
    keys: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    /// When set, the endpoint answers 500.
    failing: Arc<AtomicU64>,
}

impl Jwks {
    fn set(&self, signers: &[&Signer]) {
        *self.keys.lock().unwrap() =
            json!({ "keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>() });
    }
    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn jwks_handler(State(j): State<Jwks>) -> Response {
    j.fetches.fetch_add(1, Ordering::SeqCst);
    if j.failing.load(Ordering::SeqCst) != 0 {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    let body = j.keys.lock().unwrap().to_string();
    ([("content-type", "application/json")], body).into_response()
}

async fn serve_jwks(signers: &[&Signer]) -> (Jwks, String) {
    let j = Jwks {
        keys: Arc::new(Mutex::new(json!({ "keys": [] }))),
        fetches: Arc::new(AtomicUsize::new(0)),
        failing: Arc::new(AtomicU64::new(0)),
    };
    j.set(signers);
    let router = axum::Router::new()
        .route("/.well-known/jwks.json", axum::routing::get(jwks_handler))
        .with_state(j.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (j, format!("http://{addr}/.well-known/jwks.json"))
}

/// The `[auth]` section: sector systems by a claim (`system/*.write` + `carebridge_sector`) or
/// by a fixed scope (the hospital), care team, auditor, admin.
fn auth_section(jwks_url: &str, refresh_secs: u64) -> String {
    format!(
        r#"
[auth]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_url = "{jwks_url}"
jwks_refresh_secs = {refresh_secs}
leeway_secs = 5
sector_claim = "carebridge_sector"

[[auth.scopes]]
scope = "system/*.write"
role = "sector"

[[auth.scopes]]
scope = "carebridge/sector.hospital"
role = "sector:hospital"

[[auth.scopes]]
scope = "system/*.read"
role = "careteam"

[[auth.scopes]]
scope = "system/AuditEvent.read"
role = "auditor"

[[auth.scopes]]
scope = "carebridge/admin"
role = "admin"
"#
    )
}

async fn spawn(jwks_url: &str, refresh_secs: u64) -> TestApp {
    let section = auth_section(jwks_url, refresh_secs);
    TestApp::spawn_config(Backend::Sqlite, |url| {
        common::config_text(url, "") + &section
    })
    .await
}

/// The claims of a token for each caller of the matrix: (scope, extra claims).
fn role_claims(who: &str, client: &str) -> Value {
    let mut c = match who {
        "gp" => {
            let mut c = claims(client, "system/*.write launch");
            c["carebridge_sector"] = json!("gp");
            c
        }
        "hospital" => claims(client, "carebridge/sector.hospital"),
        // A SMART launch: the sector system handed over the patient context (by CPR), which is
        // the care-team member's treatment relationship with that patient.
        "careteam" => {
            let mut c = claims(client, "openid system/*.read");
            c["patient"] = json!(format!("urn:oid:1.2.208.176.1.2|{CPR}"));
            c
        }
        "auditor" => claims(client, "system/AuditEvent.read"),
        "admin" => claims(client, "carebridge/admin"),
        other => panic!("no role {other}"),
    };
    // A token without client_id falls back to sub.
    if who == "auditor" {
        c.as_object_mut().unwrap().remove("client_id");
    }
    c
}

async fn call(
    app: &TestApp,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let root = app.base.trim_end_matches("/fhir");
    let mut req = app.http.request(method, format!("{root}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/fhir+json")
            .body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    )
}

fn gp_patient() -> Value {
    json!({ "resourceType": "Patient", "id": "jp1",
            "identifier": [{ "system": "urn:oid:1.2.208.176.1.2", "value": CPR }] })
}

fn gp_condition() -> Value {
    json!({ "resourceType": "Condition", "id": "jc1",
            "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
            "code": { "coding": [{ "system": "urn:oid:1.2.208.176.2.31", "code": "T90", "display": "Diabetes" }] },
            "subject": { "reference": "Patient/jp1" } })
}

fn is_outcome(v: &Value) -> bool {
    v["resourceType"] == "OperationOutcome" && v["issue"][0]["diagnostics"].is_string()
}

/// The rows of README's access matrix for the five role columns (sector own = gp, sector other
/// = hospital, careteam, auditor, admin); copied from tests/it/access.rs. 200 matches any 2xx.
fn matrix(gid: &str, pid: &str) -> Vec<(Method, String, Option<Value>, [u16; 5])> {
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "fullUrl": "urn:uuid:6f1c7c4e-3d0a-4c57-9d59-0f5a7d1c2b02", "resource": gp_condition(),
          "request": { "method": "PUT", "url": "Condition/jc1" } } ] });
    vec![
        (
            Method::GET,
            "/healthz".into(),
            None,
            [200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            "/fhir/metadata".into(),
            None,
            [200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            "/fhir/gp/metadata".into(),
            None,
            [200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/fhir/gp/Condition".into(),
            Some(gp_condition()),
            [200, 403, 403, 403, 403],
        ),
        (
            Method::PUT,
            "/fhir/gp/Condition/jc1".into(),
            Some(gp_condition()),
            [200, 403, 403, 403, 403],
        ),
        (
            Method::POST,
            "/fhir/gp".into(),
            Some(bundle),
            [200, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            "/fhir/gp/Condition/jc1".into(),
            None,
            [200, 403, 200, 403, 403],
        ),
        (
            Method::GET,
            format!("/fhir/Condition/{gid}"),
            None,
            [200, 403, 200, 403, 403],
        ),
        (
            Method::GET,
            format!("/fhir/Condition?patient={pid}"),
            None,
            [200, 200, 200, 403, 403],
        ),
        (
            Method::GET,
            format!("/fhir/Patient?identifier=urn:oid:1.2.208.176.1.2|{CPR}"),
            None,
            [403, 403, 200, 403, 403],
        ),
        (
            Method::GET,
            format!("/fhir/Patient/{pid}"),
            None,
            [404, 404, 200, 403, 403],
        ),
        (
            Method::GET,
            "/fhir/AuditEvent".into(),
            None,
            [403, 403, 403, 200, 403],
        ),
        (
            Method::GET,
            "/audit/verify".into(),
            None,
            [403, 403, 403, 200, 403],
        ),
        (
            Method::GET,
            "/audit/export".into(),
            None,
            [403, 403, 403, 200, 403],
        ),
        (
            Method::GET,
            "/admin/deliveries?state=pending".into(),
            None,
            [403, 403, 403, 403, 200],
        ),
        (
            Method::POST,
            "/admin/deliveries/999999/retry".into(),
            None,
            [403, 403, 403, 403, 404],
        ),
    ]
}

const MATRIX_CALLERS: [&str; 5] = ["gp", "hospital", "careteam", "auditor", "admin"];

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_tokens_of_each_role_reach_what_the_matrix_says() {
    let keys = keys(&["rsa-1"], &["ec-1"]).await;
    let (rsa, ec) = (&keys["rsa-1"], &keys["ec-1"]);
    let (_jwks, url) = serve_jwks(&[rsa, ec]).await;
    let app = spawn(&url, 300).await;

    for s in [rsa, ec] {
        let alg = format!("{:?}", s.alg).to_lowercase();
        let token = |who: &str| sign(s, &role_claims(who, &format!("{who}-{alg}")));
        // The gp writes through its token, the care team finds the gateway patient.
        let (st, v, _) = call(
            &app,
            Some(&token("gp")),
            Method::PUT,
            "/fhir/gp/Patient/jp1",
            Some(&gp_patient()),
        )
        .await;
        assert!(st == 201 || st == 200, "{alg}: {st} {v}");
        let (st, v, _) = call(
            &app,
            Some(&token("gp")),
            Method::PUT,
            "/fhir/gp/Condition/jc1",
            Some(&gp_condition()),
        )
        .await;
        assert!(st == 201 || st == 200, "{alg}: {st} {v}");
        let (st, found, _) = call(
            &app,
            Some(&token("careteam")),
            Method::GET,
            &format!("/fhir/Patient?identifier=urn:oid:1.2.208.176.1.2|{CPR}"),
            None,
        )
        .await;
        assert_eq!(st, 200, "{found}");
        let pid = found["entry"][0]["resource"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let gid = carebridge::ids::gateway_id("gp", "Condition", "jc1");

        let mut failures = Vec::new();
        for (method, path, body, expected) in matrix(&gid, &pid) {
            for (who, want) in MATRIX_CALLERS.iter().zip(expected) {
                let (got, v, _) = call(
                    &app,
                    Some(&token(who)),
                    method.clone(),
                    &path,
                    body.as_ref(),
                )
                .await;
                let ok = if want == 200 {
                    (200..300).contains(&got)
                } else {
                    got == want
                };
                if !ok {
                    failures.push(format!(
                        "{alg} {method} {path} as {who}: got {got}, want {want}: {v}"
                    ));
                }
                if got >= 400 && !is_outcome(&v) {
                    failures.push(format!(
                        "{alg} {method} {path} as {who}: {got} without an OperationOutcome"
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    // The audit log names the JWT clients (client_id, or sub without it) and their roles.
    let auditor = sign(rsa, &role_claims("auditor", "auditor-rs256"));
    let (st, log, _) = call(
        &app,
        Some(&auditor),
        Method::GET,
        "/fhir/AuditEvent?agent=gp-es256&_count=5",
        None,
    )
    .await;
    assert_eq!(st, 200, "{log}");
    let first = &log["entry"][0]["resource"];
    assert_eq!(
        first["agent"][0]["who"]["identifier"]["value"], "gp-es256",
        "{first}"
    );
    let (st, log, _) = call(
        &app,
        Some(&auditor),
        Method::GET,
        "/fhir/AuditEvent?agent=auditor-rs256&_count=5",
        None,
    )
    .await;
    assert_eq!(st, 200, "{log}");
    assert!(
        log["entry"].as_array().is_some_and(|e| !e.is_empty()),
        "{log}"
    );
    app.stop().await;
}

/// A care-team token is a person (practitioner claim) with the launch context of one patient:
/// that patient is readable on the basis `launch`, another is not, nor is any patient without
/// the context; the audit log names the person and the basis.
#[tokio::test]
async fn a_launch_context_grants_exactly_its_patient() {
    let keys = keys(&["rsa-1"], &[]).await;
    let s = &keys["rsa-1"];
    let (_jwks, url) = serve_jwks(&[s]).await;
    let section = auth_section(&url, 300).replace(
        "sector_claim = \"carebridge_sector\"",
        "sector_claim = \"carebridge_sector\"\npractitioner_claim = \"fhirUser_id\"",
    );
    let app =
        TestApp::spawn_config(Backend::Sqlite, |u| common::config_text(u, "") + &section).await;
    let other = json!({ "resourceType": "Patient", "id": "jp2",
            "identifier": [{ "system": "urn:oid:1.2.208.176.1.2", "value": "0808081234" }] });
    for p in [gp_patient(), other] {
        let id = p["id"].as_str().unwrap().to_owned();
        let (st, _, _) = app.put("gp", &format!("/gp/Patient/{id}"), &p).await;
        assert_eq!(st, 201);
    }
    let token = |launch: Option<&str>| {
        let mut c = claims("smart-app", "openid system/*.read");
        c["fhirUser_id"] = json!("JWT42");
        if let Some(l) = launch {
            c["patient"] = json!(l);
        }
        sign(s, &c)
    };
    let read = |t: String, cpr: &'static str| {
        let app = &app;
        async move {
            call(
                app,
                Some(&t),
                Method::GET,
                &format!("/fhir/Patient?identifier=urn:oid:1.2.208.176.1.2|{cpr}"),
                None,
            )
            .await
        }
    };
    let launched = token(Some(&format!("urn:oid:1.2.208.176.1.2|{CPR}")));
    let (st, found, _) = read(launched.clone(), CPR).await;
    assert_eq!(st, 200, "{found}");
    let pid = found["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // By gateway id too.
    let (st, _, _) = read(token(Some(&pid)), CPR).await;
    assert_eq!(st, 200);
    let (st, v, _) = read(launched, "0808081234").await;
    assert_eq!(st, 403, "{v}");
    assert!(
        v["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("no treatment relationship"),
        "{v}"
    );
    let (st, _, _) = read(token(None), CPR).await;
    assert_eq!(st, 403);
    let (st, report, _) = call(
        &app,
        Some(app.token("auditor")),
        Method::GET,
        &format!("/audit/access-report?patient={pid}"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let lines = report["accesses"].as_array().unwrap();
    assert!(
        lines.iter().any(|l| l["basis"] == "launch"
            && l["person"] == "https://autregweb.sst.dk|JWT42"
            && l["client"] == "smart-app"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["basis"] == "refused" && l["granted"] == false),
        "{lines:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_failing_a_check_answer_401_and_are_audited() {
    let keys = keys(&["rsa-1", "rsa-other"], &["ec-1"]).await;
    let (rsa, other, ec) = (&keys["rsa-1"], &keys["rsa-other"], &keys["ec-1"]);
    let (jwks, url) = serve_jwks(&[rsa, ec]).await;
    let app = spawn(&url, 300).await;
    let good = role_claims("careteam", "careteam-x");

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let t = now();
    let mut cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            sign(rsa, &with(&|c| c["exp"] = json!(t - 60))),
            "expired",
        ),
        (
            "expired ES256",
            sign(ec, &with(&|c| c["exp"] = json!(t - 60))),
            "expired",
        ),
        (
            "not yet valid",
            sign(rsa, &with(&|c| c["nbf"] = json!(t + 120))),
            "not valid yet",
        ),
        (
            "wrong issuer",
            sign(
                rsa,
                &with(&|c| c["iss"] = json!("https://evil.example.org")),
            ),
            "issuer",
        ),
        (
            "wrong audience",
            sign(ec, &with(&|c| c["aud"] = json!("someone-else"))),
            "audience",
        ),
        (
            "no audience",
            sign(
                rsa,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("aud");
                }),
            ),
            "required claim",
        ),
        (
            "no exp",
            sign(
                rsa,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
            ),
            "required claim",
        ),
        (
            "no mapped scope",
            sign(rsa, &with(&|c| c["scope"] = json!("openid profile"))),
            "no scope",
        ),
        (
            "two roles",
            sign(
                rsa,
                &with(&|c| c["scope"] = json!("system/*.read system/AuditEvent.read")),
            ),
            "more than one role",
        ),
        (
            "unknown sector claim",
            sign(
                rsa,
                &with(&|c| {
                    c["scope"] = json!("system/*.write");
                    c["carebridge_sector"] = json!("nowhere");
                }),
            ),
            "sector",
        ),
        (
            "no sector claim",
            sign(rsa, &with(&|c| c["scope"] = json!("system/*.write"))),
            "sector",
        ),
        (
            "no client id",
            sign(
                rsa,
                &with(&|c| {
                    let o = c.as_object_mut().unwrap();
                    o.remove("client_id");
                    o.remove("sub");
                }),
            ),
            "client id",
        ),
    ];
    // Signed by a key outside the set, under the set's kid.
    let mut forged = other.clone();
    forged.kid = rsa.kid.clone();
    cases.push(("bad signature", sign(&forged, &good), "signature"));
    // Claims changed after signing.
    let valid = sign(rsa, &good);
    let parts: Vec<&str> = valid.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&with(&|c| c["scope"] = json!("carebridge/admin"))),
        parts[2]
    );
    cases.push(("tampered claims", tampered, "signature"));
    // ES256 signature under the RSA key's kid (the algorithm does not match the key).
    let mut wrong_family = ec.clone();
    wrong_family.kid = rsa.kid.clone();
    cases.push(("ES256 under an RSA kid", sign(&wrong_family, &good), "kid"));
    // alg none, and HS256 with the RSA public key as the HMAC secret.
    let none = format!(
        "{}.{}.",
        b64(&json!({ "alg": "none", "typ": "JWT", "kid": rsa.kid })),
        b64(&good)
    );
    cases.push(("alg none", none, "algorithm"));
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(rsa.kid.clone());
    let hs = jsonwebtoken::encode(
        &h,
        &good,
        &EncodingKey::from_secret(rsa.jwk.to_string().as_bytes()),
    )
    .unwrap();
    cases.push(("HS256", hs, "algorithm"));
    cases.push(("garbage", "abc.def.ghi".into(), "malformed"));
    cases.push((
        "unknown kid",
        sign(&signer_with_kid(other, "rsa-unknown"), &good),
        "kid",
    ));

    // Within the leeway (5 s) a token that expired 2 s ago still passes (signed with the EC
    // key, quick even in a debug build, and timed from now: signing the cases took a while).
    let just_expired = now() - 2;
    let (st, v, _) = call(
        &app,
        Some(&sign(ec, &with(&|c| c["exp"] = json!(just_expired)))),
        Method::GET,
        "/fhir/gp/metadata",
        None,
    )
    .await;
    assert_eq!(st, 200, "within the leeway: {v}");

    let mut failures = Vec::new();
    for (name, token, reason) in &cases {
        for path in ["/fhir/gp/metadata", "/audit/verify"] {
            let (st, v, headers) = call(&app, Some(token), Method::GET, path, None).await;
            let challenge = headers
                .get("www-authenticate")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            if st != 401 {
                failures.push(format!("{name} on {path}: got {st}: {v}"));
            } else if challenge != "Bearer error=\"invalid_token\"" {
                failures.push(format!("{name} on {path}: WWW-Authenticate {challenge:?}"));
            } else if !is_outcome(&v) {
                failures.push(format!("{name} on {path}: no OperationOutcome: {v}"));
            } else if !v["issue"][0]["diagnostics"]
                .as_str()
                .unwrap()
                .contains(reason)
            {
                failures.push(format!(
                    "{name} on {path}: diagnostics do not say '{reason}': {v}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // No token at all: a plain challenge.
    let (st, _, headers) = call(&app, None, Method::GET, "/fhir/gp/metadata", None).await;
    assert_eq!(st, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");

    // The unknown kid caused at most one fetch after the start-up fetch (the refresh period is
    // five minutes).
    assert!(jwks.fetches() <= 2, "{} fetches", jwks.fetches());

    // Every refusal is counted in an `authenticate` failure row with its kind (one row per
    // client address and minute), and no token, claim or key is in the log.
    app.app_gateway.flush_refusals(true).await;
    let auditor = sign(ec, &role_claims("auditor", "auditor-x"));
    let (st, log, _) = call(
        &app,
        Some(&auditor),
        Method::GET,
        "/fhir/AuditEvent?outcome=4&_count=1000",
        None,
    )
    .await;
    assert_eq!(st, 200, "{log}");
    let refused: Vec<&Value> = log["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|e| e["subtype"][0]["code"] == "authenticate")
        .collect();
    let counted: u64 = refused
        .iter()
        .map(|e| {
            let text = e["outcomeDesc"].as_str().unwrap_or("");
            text.split(' ').next().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(counted, (cases.len() * 2 + 1) as u64, "every 401 counted");
    assert!(
        refused.len() <= 2,
        "one row per address and minute: {}",
        refused.len()
    );
    for (name, _, reason) in &cases {
        assert!(
            refused
                .iter()
                .any(|e| e["outcomeDesc"].as_str().unwrap_or("").contains(reason)),
            "{name}: no audit row says '{reason}'"
        );
    }
    let text = log.to_string();
    for (name, token, _) in &cases {
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(
                !text.contains(part),
                "{name}: token content in the audit log"
            );
        }
    }
    assert!(
        !text.contains("careteam-x"),
        "a refused token's client id is not audited"
    );
    app.stop().await;
}

fn signer_with_kid(s: &Signer, kid: &str) -> Signer {
    let mut s = s.clone();
    s.kid = kid.to_owned();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_refetches_once_per_period_and_drops_removed_keys() {
    const REFRESH: u64 = 5;
    let keys = keys(&["rsa-old", "rsa-new"], &[]).await;
    let (old, new) = (&keys["rsa-old"], &keys["rsa-new"]);
    let claims = role_claims("careteam", "careteam-rotation");
    // Tokens are signed before the gateway starts: RSA signing is slow in a debug build, and
    // the steps below are timed against the refresh period, which starts with the start-up
    // fetch.
    let old_token = sign(old, &claims);
    let new_token = sign(new, &claims);
    let flood: Vec<String> = (0..20)
        .map(|i| sign(&signer_with_kid(new, &format!("k{i}")), &claims))
        .collect();

    let (jwks, url) = serve_jwks(&[old]).await;
    let app = spawn(&url, REFRESH).await;
    async fn status_of(app: &TestApp, token: String) -> u16 {
        call(app, Some(&token), Method::GET, "/fhir/gp/metadata", None)
            .await
            .0
    }

    // The key set is fetched at start-up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while jwks.fetches() == 0 {
        assert!(Instant::now() < deadline, "no JWKS fetch at start-up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fetched_at = Instant::now();
    assert_eq!(status_of(&app, old_token.clone()).await, 200);

    // The issuer rotates: the new key replaces the old one.
    jwks.set(&[new]);
    // Within the refresh period, an unknown kid does not cause another fetch.
    assert_eq!(
        status_of(&app, new_token.clone()).await,
        401,
        "no refetch within the period"
    );
    assert!(
        fetched_at.elapsed() < Duration::from_secs(REFRESH),
        "the test ran too slowly"
    );
    assert_eq!(jwks.fetches(), 1);
    // After it, the unknown kid causes one fetch: the new key is accepted...
    let period = Duration::from_secs(REFRESH);
    tokio::time::sleep(period + Duration::from_millis(300) - fetched_at.elapsed().min(period))
        .await;
    let refetched_at = Instant::now();
    assert_eq!(
        status_of(&app, new_token.clone()).await,
        200,
        "refetched on the unknown kid"
    );
    assert_eq!(jwks.fetches(), 2);
    // ...and the removed key is refused, without a fetch.
    assert_eq!(
        status_of(&app, old_token).await,
        401,
        "the removed key is refused"
    );
    // A flood of unknown kids causes no fetch.
    for token in flood {
        assert_eq!(status_of(&app, token).await, 401);
    }
    assert!(refetched_at.elapsed() < period, "the test ran too slowly");
    assert_eq!(
        jwks.fetches(),
        2,
        "unknown kids are refetched at most once per period"
    );

    // The issuer fails: once the keys are stale a background fetch fails, the cached key keeps
    // working.
    jwks.failing.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(REFRESH) + Duration::from_millis(300)).await;
    assert_eq!(status_of(&app, new_token.clone()).await, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while jwks.fetches() < 3 {
        assert!(
            Instant::now() < deadline,
            "no background refresh of stale keys"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        status_of(&app, new_token).await,
        200,
        "a failed fetch keeps the cached keys"
    );
    app.stop().await;
}

#[test]
fn configuration_errors_name_the_key_and_the_fix() {
    use carebridge::config::Settings;
    let dir = tempfile::tempdir().unwrap();
    let load = |auth: &str| {
        let path = dir.path().join("c.toml");
        let text = common::config_text("sqlite://x.db", "") + auth;
        std::fs::write(&path, text).unwrap();
        Settings::load(&path)
    };
    let ok = auth_section("https://idp.example.org/jwks.json", 300);
    let s = load(&ok).expect("the test's section loads");
    assert_eq!(s.auth.scopes.len(), 5);
    assert!(
        load("").unwrap().auth.issuer.is_none(),
        "no [auth]: static tokens only"
    );

    let cases: Vec<(String, &str)> = vec![
        (
            ok.replace("audience = \"carebridge\"\n", ""),
            "auth.audience",
        ),
        (
            ok.replace(&format!("issuer = \"{ISSUER}\"\n"), ""),
            "auth.issuer",
        ),
        (
            ok.replace("https://idp.example.org/jwks.json", "ftp://idp/jwks"),
            "auth.jwks_url",
        ),
        (
            ok.replace("jwks_refresh_secs = 300", "jwks_refresh_secs = 0"),
            "auth.jwks_refresh_secs",
        ),
        (
            ok.replace("leeway_secs = 5", "leeway_secs = 3600"),
            "auth.leeway_secs",
        ),
        (
            ok.replace("role = \"sector:hospital\"", "role = \"sector:nowhere\""),
            "auth.scopes[1].role",
        ),
        (
            ok.replace("role = \"careteam\"", "role = \"root\""),
            "auth.scopes[2].role",
        ),
        (
            ok.replace("sector_claim = \"carebridge_sector\"\n", ""),
            "auth.scopes[0].role",
        ),
        (
            ok.replace("scope = \"carebridge/admin\"", "scope = \"system/*.read\""),
            "auth.scopes[4].scope",
        ),
        (
            ok.replace("scope = \"carebridge/admin\"", "scope = \"a b\""),
            "auth.scopes[4].scope",
        ),
    ];
    for (text, key) in cases {
        let err = load(&text).expect_err(key);
        assert_eq!(err.key, key, "{err}");
        assert!(err.file.ends_with("c.toml"), "{err}");
        assert!(!err.fix.is_empty(), "{err}");
    }
    let err = load("\n[auth]\nissuer = \"x\"\nbogus = 1\n").unwrap_err();
    assert!(err.problem.contains("bogus"), "{err}");
}

/// The real binary at `RUST_LOG=trace`: neither the tokens (valid and refused), their claims,
/// nor the keys reach the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_holds_no_token_claim_or_key() {
    let keys = keys(&["rsa-1"], &["ec-1"]).await;
    let (rsa, ec) = (&keys["rsa-1"], &keys["ec-1"]);
    let (_jwks, url) = serve_jwks(&[rsa, ec]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("carebridge.db");
    let text =
        common::config_text(&format!("sqlite://{}", db.display()), "") + &auth_section(&url, 300);
    let config = dir.path().join("carebridge.toml");
    std::fs::write(&config, text).unwrap();
    let mut server = Serve::traced(&config).start().expect("the server starts");
    let addr = server.addr.clone();
    let http = carebridge::outbound::client().expect("an HTTP client");
    let secret_client = "client-7f3a9c";
    let mut tokens = Vec::new();
    let mut c = role_claims("careteam", secret_client);
    c["secret_claim"] = json!("claim-value-5d2e");
    tokens.push((sign(rsa, &c), 200));
    tokens.push((sign(ec, &c), 200));
    let mut expired = c.clone();
    expired["exp"] = json!(now() - 3600);
    tokens.push((sign(rsa, &expired), 401));
    tokens.push((sign(&signer_with_kid(ec, "nope"), &c), 401));
    for (token, want) in &tokens {
        let resp = http
            .get(format!("http://{addr}/fhir/gp/metadata"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), *want);
    }
    let log = server.output();
    assert!(log.contains("fetched the issuer's JWKS"), "{log}");
    let mut secrets: Vec<String> = vec![secret_client.into(), "claim-value-5d2e".into()];
    for (token, _) in &tokens {
        secrets.extend(token.split('.').filter(|p| p.len() > 8).map(str::to_owned));
    }
    for s in [rsa, ec] {
        for field in ["n", "x", "y"] {
            if let Some(v) = s.jwk[field].as_str() {
                secrets.push(v[..24].to_owned());
            }
        }
        // From the middle of the private key (its start is the same for every key).
        let body: String = s.pem.lines().filter(|l| !l.starts_with("-----")).collect();
        secrets.push(body[body.len() / 2..][..24].to_owned());
    }
    let leaks: Vec<&String> = secrets
        .iter()
        .filter(|s| log.contains(s.as_str()))
        .collect();
    assert!(
        leaks.is_empty(),
        "token, claim or key material in the log: {leaks:?}"
    );
}
