//! The end-to-end test infrastructure works: real FHIR peers (Medplum) start, store, search and
//! restart empty; token and OAuth2 client-credentials peers guard their data; the fault proxy
//! produces every fault as a real HTTP client sees it; Lantana FHIR.js validates independently.

use crate::common::fault::{Fault, FaultProxy, Matcher};
use crate::common::peers;
use crate::common::peers::{Peer, PeerOptions, lantana_errors, start_three, validate_with_lantana};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const CPR: &str = "urn:oid:1.2.208.176.1.2";

fn patient(cpr: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": CPR, "value": cpr}],
        "name": [{"family": "Testesen", "given": ["Tove"]}]
    })
}

fn client() -> reqwest::Client {
    carebridge::outbound::client_builder()
        .no_proxy()
        .build()
        .expect("client")
}

async fn get_status(http: &reqwest::Client, url: &str, bearer: Option<&str>) -> u16 {
    let mut req = http.get(url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request").status().as_u16()
}

#[tokio::test]
async fn three_peers_store_search_and_restart_empty() {
    let started = Instant::now();
    let (mut gp, hospital, municipality) = start_three(&PeerOptions::default()).await;
    eprintln!(
        "three peers up in {:.2} s (gp {:.2} s, hospital {:.2} s, municipality {:.2} s)",
        started.elapsed().as_secs_f64(),
        gp.started_in.as_secs_f64(),
        hospital.started_in.as_secs_f64(),
        municipality.started_in.as_secs_f64()
    );
    let names: Vec<&str> = [&gp, &hospital, &municipality]
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["gp", "hospital", "municipality"]);
    let mut ports = vec![gp.port, hospital.port, municipality.port];
    ports.dedup();
    assert_eq!(ports.len(), 3, "three distinct ports");
    for p in [&gp, &hospital, &municipality] {
        assert_eq!(p.base, format!("http://127.0.0.1:{}/fhir", p.port));
    }

    // create / read / search / history on one peer; the others stay empty.
    let created = gp.create(&patient("0101010101")).await;
    let id = created["id"].as_str().expect("server id").to_owned();
    let (status, read) = gp.read(&format!("Patient/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(read["identifier"][0]["value"], "0101010101");
    let found = gp
        .search_resources(&format!("Patient?identifier={CPR}|0101010101"))
        .await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], id.as_str());
    let history = gp.history(&format!("Patient/{id}")).await;
    assert_eq!(history["type"], "history");
    assert_eq!(history["entry"].as_array().map(Vec::len), Some(1));
    assert_eq!(hospital.total("Patient").await, 0);
    assert_eq!(municipality.total("Patient").await, 0);
    assert_eq!(hospital.read(&format!("Patient/{id}")).await.0, 404);

    // Medplum does not resolve conditional references (`Patient?identifier=...`) inside
    // transaction entries: it stores them verbatim and answers 201 whether one, none or
    // several Patients match. Only `urn:uuid:` fullUrls are rewritten.
    let bundle = |cpr: &str| {
        json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{
                "resource": {
                    "resourceType": "Condition",
                    "subject": {"reference": format!("Patient?identifier={CPR}|{cpr}")}
                },
                "request": {"method": "POST", "url": "Condition"}
            }]
        })
    };
    for cpr in ["0101010101", "9999999999"] {
        let (status, response) = gp.transaction(&bundle(cpr)).await;
        assert_eq!(status, 200, "{response}");
        let entry = &response["entry"][0];
        assert_eq!(entry["response"]["status"], "201", "{response}");
        assert_eq!(
            entry["resource"]["subject"]["reference"],
            format!("Patient?identifier={CPR}|{cpr}"),
            "stored verbatim"
        );
    }
    assert_eq!(
        gp.total(&format!("Condition?subject=Patient/{id}")).await,
        0
    );

    // Restart: same port, nothing kept.
    let port = gp.port;
    let t = Instant::now();
    gp.restart().await;
    eprintln!("restart in {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(gp.port, port);
    assert_eq!(gp.base, format!("http://127.0.0.1:{port}/fhir"));
    assert_eq!(gp.read(&format!("Patient/{id}")).await.0, 404);
    assert_eq!(gp.total("Patient").await, 0);
    assert_eq!(gp.total("Condition").await, 0);
    let again = gp.create(&patient("0101010101")).await;
    assert_ne!(again["id"], id.as_str());

    gp.stop().await;
    assert!(
        client().get(&gp.base).send().await.is_err(),
        "a stopped peer refuses connections"
    );

    // start_on_port retries while the port is taken by someone else (here for longer than
    // a peer takes to reach `listen`, so the first attempt fails).
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).expect("port is free");
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        drop(squatter);
    });
    let t = Instant::now();
    let back = Peer::start_on_port("gp", port, &PeerOptions::default()).await;
    eprintln!(
        "start_on_port behind a squatter: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    release.await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(2500));
    assert_eq!(back.port, port);
    assert_eq!(back.total("Patient").await, 0);
}

#[tokio::test]
async fn token_and_client_credentials_peers_refuse_without_a_valid_token() {
    let token_opts = PeerOptions {
        token: Some("static-t0ken".to_owned()),
        ..PeerOptions::default()
    };
    let cc_opts = PeerOptions {
        client_credentials: Some(("carebridge".to_owned(), "s3cret:with+colon".to_owned())),
        token_ttl: Some(2),
        ..PeerOptions::default()
    };
    let (tok, cc) = tokio::join!(Peer::start("tok", &token_opts), Peer::start("cc", &cc_opts));
    let http = client();

    // --token
    let url = format!("{}/Patient", tok.base);
    assert_eq!(
        get_status(&http, &format!("{}/metadata", tok.base), None).await,
        401
    );
    assert_eq!(get_status(&http, &url, Some("wrong")).await, 401);
    assert_eq!(get_status(&http, &url, Some("static-t0ken")).await, 200);
    let created = tok.create(&patient("0202020202")).await;
    let type_id = format!("Patient/{}", created["id"].as_str().unwrap());
    assert_eq!(tok.read(&type_id).await.0, 200);

    // --client-credentials: nothing without a token; the harness mints its own.
    let url = format!("{}/Patient", cc.base);
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(get_status(&http, &url, Some("static-t0ken")).await, 401);
    let created = cc.create(&patient("0303030303")).await;
    let type_id = format!("Patient/{}", created["id"].as_str().unwrap());
    assert_eq!(cc.read(&type_id).await.0, 200);
    assert_eq!(cc.harness_tokens_issued().await, 1, "token cached");
    assert_eq!(cc.tokens_issued_to_others().await, 0);

    // The token endpoint (RFC 6749 4.4): wrong secret, then HTTP Basic.
    let form = |secret: &str| {
        peers::form_encode(&[
            ("grant_type", "client_credentials"),
            ("client_id", "carebridge"),
            ("client_secret", secret),
        ])
    };
    let resp = http
        .post(cc.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
    let resp = http
        .post(cc.token_url())
        .basic_auth("carebridge", Some("s3cret:with+colon"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let grant: Value = resp.json().await.unwrap();
    assert_eq!(grant["token_type"], "Bearer");
    assert_eq!(grant["expires_in"], 2);
    let token = grant["access_token"].as_str().unwrap().to_owned();
    assert_eq!(get_status(&http, &url, Some(&token)).await, 200);
    assert_eq!(cc.oauth_stats().await["issued"], 2);
    assert_eq!(cc.tokens_issued_to_others().await, 1);

    // Through the fault proxy: /oauth2/token and the Authorization header pass through.
    let proxy = FaultProxy::start(&cc.base).await;
    let via = http
        .post(format!(
            "{}/oauth2/token",
            proxy.base.trim_end_matches("/fhir")
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form("s3cret:with+colon"))
        .send()
        .await
        .unwrap();
    assert_eq!(via.status().as_u16(), 200);
    let proxied_token = via.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let via_url = format!("{}/{type_id}", proxy.base);
    assert_eq!(get_status(&http, &via_url, Some(&proxied_token)).await, 200);
    assert_eq!(get_status(&http, &via_url, None).await, 401);

    // Expiry: 401 with error="invalid_token"; the harness renews its own token.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert_eq!(cc.read(&type_id).await.0, 200);
    assert_eq!(cc.harness_tokens_issued().await, 2);
    assert_eq!(cc.tokens_issued_to_others().await, 2);
}

#[tokio::test]
async fn fault_proxy_injects_each_fault_then_passes_through() {
    let peer = Peer::start("upstream", &PeerOptions::default()).await;
    let proxy = FaultProxy::start(&peer.base).await;
    let http = client();
    let post = |path: &str, body: &Value| {
        let url = if path.is_empty() {
            proxy.base.clone()
        } else {
            format!("{}/{path}", proxy.base)
        };
        http.post(url)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
    };

    // Pass-through: status, Location (still the upstream's), ETag, conditional create header.
    let resp = post("Patient", &patient("1111111111"))
        .header("if-none-exist", format!("identifier={CPR}|1111111111"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&peer.base), "{location}");
    assert!(resp.headers().contains_key("etag"));
    assert!(resp.headers().contains_key("last-modified"));
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/fhir+json")
    );
    let first: Value = resp.json().await.unwrap();
    let resp = post("Patient", &patient("1111111111"))
        .header("if-none-exist", format!("identifier={CPR}|1111111111"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "If-None-Exist reached the peer"
    );
    assert_eq!(resp.json::<Value>().await.unwrap()["id"], first["id"]);

    // Status faults, each once, then pass-through.
    let search = format!("{}/Patient?identifier={CPR}|1111111111", proxy.base);
    for status in [503u16, 429, 500, 400, 422] {
        proxy.push(Matcher::Method("GET"), Fault::Status(status), 1);
        let resp = http.get(&search).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(retry_after.as_deref(), (status == 429).then_some("1"));
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["resourceType"], "OperationOutcome");
        assert_eq!(get_status(&http, &search, None).await, 200);
    }
    proxy.push(Matcher::Any, Fault::StatusRetryAfter(503, 7), 1);
    let resp = http.get(&search).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "7");

    // Matchers: only POST /Condition is faulted; a scripted fault waits for its request.
    proxy.push(
        Matcher::MethodPath("POST", "/Condition".to_owned()),
        Fault::Status(503),
        1,
    );
    assert_eq!(
        get_status(&http, &format!("{}/Condition", proxy.base), None).await,
        200
    );
    assert_eq!(proxy.pending(), 1);
    let condition = json!({"resourceType": "Condition", "subject": {"reference": "Patient/x"}});
    assert_eq!(
        post("Condition", &condition).send().await.unwrap().status(),
        503
    );
    assert_eq!(proxy.pending(), 0);
    proxy.push(Matcher::Exact("POST", String::new()), Fault::Status(503), 1);
    let batch = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "Patient?_count=1"}}]
    });
    assert_eq!(post("", &batch).send().await.unwrap().status(), 503);
    assert_eq!(post("", &batch).send().await.unwrap().status(), 200);

    // Delay shorter than the client's timeout: just slow.
    proxy.push(Matcher::Any, Fault::Delay(Duration::from_millis(300)), 1);
    let t = Instant::now();
    let resp = http
        .get(&search)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    // Delay longer than the client's timeout: a timeout, and the write still happens.
    proxy.push(Matcher::Any, Fault::Delay(Duration::from_millis(800)), 1);
    let err = post("Condition", &condition)
        .timeout(Duration::from_millis(250))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while peer.total("Condition").await == 0 {
        assert!(Instant::now() < deadline, "the delayed write never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Hang: the client times out.
    proxy.push(Matcher::Any, Fault::Hang, 1);
    let err = http
        .get(&search)
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");

    // Drop: a connection error, no HTTP status, nothing written.
    let before = peer.total("Patient").await;
    proxy.push(Matcher::Any, Fault::Drop, 1);
    let err = post("Patient", &patient("2222222222"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout() && err.status().is_none(), "{err:?}");
    assert_eq!(peer.total("Patient").await, before);

    // DropAfterForward: the client sees an error, but the resource exists upstream.
    proxy.push(
        Matcher::MethodPath("POST", "/Patient".to_owned()),
        Fault::DropAfterForward,
        1,
    );
    let err = post("Patient", &patient("3333333333"))
        .header("if-none-exist", format!("identifier={CPR}|3333333333"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout() && err.status().is_none(), "{err:?}");
    let stored = peer
        .search_resources(&format!("Patient?identifier={CPR}|3333333333"))
        .await;
    assert_eq!(
        stored.len(),
        1,
        "the write happened although the answer was lost"
    );
    // A conditional retry finds it instead of writing twice.
    let resp = post("Patient", &patient("3333333333"))
        .header("if-none-exist", format!("identifier={CPR}|3333333333"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["id"], stored[0]["id"]);

    // Persistent faults until cleared.
    proxy.set_always(Matcher::Method("POST"), Some(Fault::Status(500)));
    for _ in 0..2 {
        assert_eq!(
            post("Patient", &patient("4444444444"))
                .send()
                .await
                .unwrap()
                .status(),
            500
        );
    }
    assert_eq!(get_status(&http, &search, None).await, 200);
    proxy.set_always(Matcher::Method("POST"), None);
    assert_eq!(
        post("Patient", &patient("4444444444"))
            .send()
            .await
            .unwrap()
            .status(),
        201
    );

    let seen = proxy.seen();
    let dropped = seen.iter().filter(|(_, _, s)| *s == 0).count();
    assert_eq!(dropped, 3, "Hang, Drop, DropAfterForward: {seen:#?}");
    assert!(seen.contains(&("POST".to_owned(), "/fhir/Condition".to_owned(), 503)));
    assert!(seen.contains(&("POST".to_owned(), "/fhir".to_owned(), 503)));
    assert!(
        seen.iter()
            .any(|(m, p, s)| m == "GET" && p.starts_with("/fhir/Patient?identifier=") && *s == 429)
    );
    assert!(seen.iter().filter(|(_, _, s)| *s == 500).count() >= 3);
}

#[test]
fn lantana_accepts_official_examples_and_rejects_broken_resources() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/fhir-r4-examples");
    let mut files = Vec::new();
    for folder in [
        "Condition",
        "CarePlan",
        "CareTeam",
        "MedicationRequest",
        "Communication",
    ] {
        for e in std::fs::read_dir(root.join(folder)).expect("examples folder") {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                files.push(p);
            }
        }
    }
    files.sort();
    let examples: Vec<Value> = files
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    assert!(examples.len() >= 60, "{} examples", examples.len());

    peers::ensure_npm_installed();
    let started = Instant::now();
    let results = validate_with_lantana(&examples);
    let took = started.elapsed();
    eprintln!(
        "Lantana: {} resources in {:.0} ms ({:.2} ms per resource, node start included)",
        examples.len(),
        took.as_secs_f64() * 1000.0,
        took.as_secs_f64() * 1000.0 / examples.len() as f64
    );
    // Known quirk: FHIR.js takes `allowedBoolean: false` for a missing required choice
    // (MedicationRequest.substitution.allowed[x]); see tests/peers/README.md.
    let quirk = ["medicationrequest0308.json", "medicationrequest0330.json"];
    for (file, result) in files.iter().zip(&results) {
        let name = file.file_name().unwrap().to_str().unwrap();
        if quirk.contains(&name) {
            assert_eq!(
                lantana_errors(result),
                ["MedicationRequest.substitution.allowed[x]: Missing property"],
                "{name}"
            );
        } else {
            assert_eq!(
                result["valid"],
                true,
                "{name}: {:?}",
                lantana_errors(result)
            );
        }
    }

    let subject = json!({"reference": "Patient/p1"});
    let broken = [
        // a valid one first
        json!({"resourceType": "Condition", "id": "ok", "subject": subject}),
        // wrong type: a string where a Reference belongs
        json!({"resourceType": "Condition", "id": "wrong-type", "subject": "Patient/p1"}),
        // wrong primitive type
        json!({"resourceType": "Patient", "id": "wrong-primitive", "active": "yes"}),
        // unknown element
        json!({"resourceType": "Condition", "id": "unknown", "subject": subject, "colour": "blue"}),
        // code outside a required binding
        json!({"resourceType": "CarePlan", "id": "bad-code", "status": "bogus", "intent": "plan", "subject": subject}),
        // missing required element
        json!({"resourceType": "Condition", "id": "no-subject"}),
        // not a resource type
        json!({"resourceType": "Foo", "id": "foo"}),
    ];
    let results = validate_with_lantana(&broken);
    let valid: Vec<bool> = results.iter().map(|r| r["valid"] == true).collect();
    assert_eq!(valid, [true, false, false, false, false, false, false]);
    for (r, resource) in results.iter().zip(&broken) {
        assert_eq!(r["id"], resource["id"]);
        assert_eq!(r["resourceType"], resource["resourceType"]);
    }
    let first_error = |i: usize| {
        lantana_errors(&results[i])
            .first()
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        first_error(1).starts_with("Condition.subject."),
        "{}",
        first_error(1)
    );
    assert!(
        first_error(2).starts_with("Patient.active:"),
        "{}",
        first_error(2)
    );
    assert_eq!(first_error(3), "Condition.colour: Unexpected property");
    assert_eq!(
        first_error(4),
        "CarePlan.status: Code \"bogus\" not found in value set"
    );
    assert_eq!(first_error(5), "Condition.subject: Missing property");
    assert!(first_error(6).contains("not a valid resource type"));
}
