//! End-to-end outbound authentication and endpoint probes: the gateway delivering to real FHIR
//! peers (`tests/peers/`, Medplum's FHIR router) that demand a static bearer token or an OAuth2
//! client-credentials token, and `carebridge check-config` probing real peers.
//!
//! - static bearer tokens from an environment variable and from a file (read on use, so a
//!   rotated file takes effect); a wrong token is a permanent failure (401), an unset variable
//!   a retryable one;
//! - client credentials: one token for many deliveries, a fresh one once it expired, a fresh one
//!   after a 401; a wrong secret retried and dead-lettered, and neither the secret nor the
//!   tokens in the log of the real binary at `RUST_LOG=trace`;
//! - `check-config`: `ok`/`FAIL endpoint <sector>:` per sector, exit 0/1, `--offline`.
//!
//! The in-process gateway reads `token_env` and `client_secret_env` from this process's
//! environment; the tests that need such a variable run in a process of their own that has it
//! from the start (`common::child`), since all tests share one process. The real binary and
//! `check-config` get theirs on their command.

use crate::common::fault::{Fault, FaultProxy, Matcher};
use crate::common::peers::{Peer, PeerOptions};
use crate::common::records::{patient, plain_heart_failure, transaction};
use crate::common::server::Serve;
use crate::common::{Backend, TestApp, child, conf, copy_at, outbox, repo, wait_for};
use base64::Engine as _;
use carebridge::store::{OutboxEntry, Store};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Fast retries for tests; an entry is dead after three attempts.
const FAST: &str = "retry_initial_ms = 100\nretry_max_ms = 400\nidle_poll_ms = 100\n\
                    request_timeout_ms = 10000\nmax_attempts = 3\n";

/// The OAuth2 client id the gateway presents.
const CLIENT_ID: &str = "carebridge";

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

fn kind_and_profile(id: &str) -> (&'static str, Option<&'static str>) {
    match id {
        "gp" => ("general-practice", Some("dk-gp")),
        "hospital" => ("hospital", Some("dk-hospital")),
        "municipality" => ("municipality", Some("dk-municipality")),
        _ => ("hospital", None),
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// One `[[sectors]]` table; `auth` is an inline table (or empty for the default, none).
fn sector(id: &str, base: Option<&str>, auth: &str) -> String {
    let (kind, profile) = kind_and_profile(id);
    let mut s = format!("\n[[sectors]]\nid = \"{id}\"\nname = \"{id}\"\nkind = \"{kind}\"\n");
    if let Some(p) = profile {
        s.push_str(&format!("profile = \"{p}\"\n"));
    }
    if let Some(b) = base {
        // Delivery is what these tests look at: the sector receives from its Patient on.
        s.push_str(&format!(
            "base_url = {}\nmode = \"push\"\njoin_care_on_patient = true\n",
            toml_str(b)
        ));
    }
    if !auth.is_empty() {
        s.push_str(&format!("auth = {auth}\n"));
    }
    s
}

fn bearer_env(var: &str) -> String {
    format!("{{ type = \"bearer\", token_env = {} }}", toml_str(var))
}

fn bearer_file(path: &Path) -> String {
    format!(
        "{{ type = \"bearer\", token_file = {} }}",
        toml_str(&path.display().to_string())
    )
}

/// `secret` is the source key: `client_secret_env = "X"` or `client_secret_file = "/p"`.
fn client_credentials(token_url: &str, secret: &str) -> String {
    format!(
        "{{ type = \"client-credentials\", token_url = {}, client_id = \"{CLIENT_ID}\", {secret} }}",
        toml_str(token_url)
    )
}

fn secret_env(var: &str) -> String {
    format!("client_secret_env = {}", toml_str(var))
}

fn secret_file(path: &Path) -> String {
    format!(
        "client_secret_file = {}",
        toml_str(&path.display().to_string())
    )
}

/// A configuration: server on port 0, the store, the profiles, `[exchange]` lines and the given
/// sector tables (clients are appended by the caller or by `TestApp`).
fn config(store_url: &str, exchange: &str, sectors: &[String]) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_second = 0\n\n[store]\nurl = {}\nmax_connections = 4\n\n\
         [fhir]\nprofiles_dir = {}\n\n[exchange]\n{exchange}\n{}",
        toml_str(store_url),
        toml_str(&repo().join("fhir-profiles").display().to_string()),
        sectors.concat()
    )
}

/// A name for an environment variable of a child process (the real binary), unique per call.
/// (Not under `CAREBRIDGE_`, the prefix of configuration overrides.)
fn unique_var(what: &str) -> String {
    format!(
        "EXCHANGE_AUTH_TEST_{what}_{}",
        uuid::Uuid::new_v4().simple().to_string().to_uppercase()
    )
}

/// The value of a variable that `common::child::in_own_process` set for this test's process
/// (the in-process gateway reads it there too).
fn own_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set for this test's own process"))
}

fn random(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

// ---------------------------------------------------------------------------------------------
// Resources and the gateway's API
// ---------------------------------------------------------------------------------------------

/// The gateway's FHIR API (in-process app or the real binary), with a token per client.
#[derive(Clone)]
struct Api {
    base: String,
    tokens: HashMap<String, String>,
    http: reqwest::Client,
}

impl Api {
    fn of(app: &TestApp) -> Api {
        Api {
            base: app.base.clone(),
            tokens: app.tokens.clone(),
            http: app.http.clone(),
        }
    }

    async fn send(
        &self,
        who: &str,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> (u16, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.tokens[who])
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("request reaches the gateway");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Registers a patient of `sector` with the gateway: created first on the sector's own
    /// server when it has one (the gateway then knows it under that server's id).
    async fn register_patient(&self, sector: &str, peer: Option<&Peer>, cpr: &str) -> String {
        let id = match peer {
            Some(p) => p.create(&patient(cpr, "Mortensen")).await["id"]
                .as_str()
                .expect("id")
                .to_owned(),
            None => format!("{sector}-{cpr}"),
        };
        let mut body = patient(cpr, "Mortensen");
        body["id"] = json!(id);
        let (status, out) = self
            .send(
                sector,
                reqwest::Method::PUT,
                &format!("/{sector}/Patient/{id}"),
                &body,
            )
            .await;
        assert!(status == 200 || status == 201, "{status} {out}");
        id
    }

    async fn push(&self, sector: &str, resources: &[Value]) {
        let (status, body) = self
            .send(
                sector,
                reqwest::Method::POST,
                &format!("/{sector}"),
                &transaction(resources),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

// ---------------------------------------------------------------------------------------------
// Outbox and peers
// ---------------------------------------------------------------------------------------------

/// The entry that carries `gp/Condition/<id>` to `target`, once it is no longer pending.
async fn settled_entry(store: &dyn Store, target: &str, id: &str) -> OutboxEntry {
    let gid = carebridge::ids::gateway_id("gp", "Condition", id);
    wait_for(
        &format!("gp/Condition/{id} to {target} to settle"),
        90,
        || async {
            outbox(store, None)
                .await
                .into_iter()
                .find(|e| e.gid == gid && e.target == target && e.state.code() != "pending")
        },
    )
    .await
}

/// Asserts that an entry was delivered and that the peer holds the copy it names.
async fn assert_delivered(e: &OutboxEntry, peer: &Peer, id: &str) {
    assert_eq!(e.state.code(), "delivered", "{e:#?}");
    let copy = copy_at(peer, "gp", "Condition", id)
        .await
        .unwrap_or_else(|| panic!("{id} is not at {}", peer.name));
    assert_eq!(copy["id"].as_str(), e.target_id.as_deref(), "{e:#?}");
}

fn oauth_peer(secret: &str, ttl: Option<u64>, harness_token: &str) -> PeerOptions {
    PeerOptions {
        client_credentials: Some((CLIENT_ID.to_owned(), secret.to_owned())),
        token_ttl: ttl,
        // The harness reads with a static token, so every minted token is the gateway's.
        token: Some(harness_token.to_owned()),
        ..PeerOptions::default()
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Static bearer tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_bearer_tokens_from_env_and_file_are_sent_and_a_wrong_one_is_dead_lettered() {
    // The gateway reads the hospital's token from the process environment: the test runs in a
    // process of its own that has the variable from the start (and never the unset one).
    const VAR: &str = "EXCHANGE_AUTH_TEST_HOSPITAL_TOKEN";
    const UNSET: &str = "EXCHANGE_AUTH_TEST_MUNICIPALITY_TOKEN_NEVER_SET";
    if !child::in_own_process(
        module_path!(),
        "static_bearer_tokens_from_env_and_file_are_sent_and_a_wrong_one_is_dead_lettered",
        &[(VAR, &random("static-token"))],
        &[UNSET],
    )
    .await
    {
        return;
    }
    let token = own_env(VAR);
    let hospital = Peer::start(
        "hospital",
        &PeerOptions {
            token: Some(token.clone()),
            ..PeerOptions::default()
        },
    )
    .await;

    // (a) The token from an environment variable. The municipality (the same server) is
    // configured with a variable that is not set: that is retried (it may be about to be
    // fixed), then dead-lettered.
    let (var, unset) = (VAR, UNSET);
    let sectors = [
        sector("gp", None, ""),
        sector("hospital", Some(&hospital.base), &bearer_env(var)),
        sector("municipality", Some(&hospital.base), &bearer_env(unset)),
        sector("lab", None, ""),
    ];
    let app = TestApp::spawn_config(Backend::Sqlite, |url| config(url, FAST, &sectors)).await;
    let api = Api::of(&app);
    let store = app.app_gateway.store().as_ref();
    let cpr = "2103481234";
    let gp_pid = api.register_patient("gp", None, cpr).await;
    api.register_patient("hospital", Some(&hospital), cpr).await;
    api.register_patient("municipality", None, cpr).await;
    api.push("gp", &[plain_heart_failure("bearer-env", &gp_pid)])
        .await;

    let e = settled_entry(store, "hospital", "bearer-env").await;
    assert_delivered(&e, &hospital, "bearer-env").await;
    assert_eq!((e.attempts, e.last_status), (1, Some(201)), "{e:#?}");

    let m = settled_entry(store, "municipality", "bearer-env").await;
    assert_eq!(
        (m.state.code(), m.attempts, m.last_status),
        ("dead", 3, None),
        "{m:#?}"
    );
    let err = m.last_error.clone().unwrap_or_default();
    assert!(err.contains(unset) && err.contains("not set"), "{err}");
    app.stop().await;

    // (b) The token from a file, first a wrong one: 401 is permanent, dead at once.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hospital-token");
    let wrong = random("wrong-token");
    std::fs::write(&file, format!("{wrong}\n")).unwrap();
    let sectors = [
        sector("gp", None, ""),
        sector("hospital", Some(&hospital.base), &bearer_file(&file)),
        sector("municipality", None, ""),
        sector("lab", None, ""),
    ];
    let app = TestApp::spawn_config(Backend::Sqlite, |url| config(url, FAST, &sectors)).await;
    let api = Api::of(&app);
    let store = app.app_gateway.store().as_ref();
    let cpr = "2103481235";
    let gp_pid = api.register_patient("gp", None, cpr).await;
    api.register_patient("hospital", Some(&hospital), cpr).await;
    api.push("gp", &[plain_heart_failure("bearer-file", &gp_pid)])
        .await;

    let dead = settled_entry(store, "hospital", "bearer-file").await;
    assert_eq!(
        (dead.state.code(), dead.attempts, dead.last_status),
        ("dead", 1, Some(401)),
        "{dead:#?}"
    );
    let err = dead.last_error.clone().unwrap_or_default();
    assert!(
        err.contains("401") && err.contains("outbound auth"),
        "{err}"
    );
    assert!(!err.contains(&wrong), "the token in last_error: {err}");
    assert!(
        copy_at(&hospital, "gp", "Condition", "bearer-file")
            .await
            .is_none()
    );

    // The file is rotated (read on use): the replayed dead letter and a new record arrive.
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let actor = carebridge::audit::Actor {
        client_id: Some("test".into()),
        role: Some("admin".into()),
        request_id: None,
        person: None,
    };
    carebridge::gateway::admin::retry_delivery(store, &actor, dead.id)
        .await
        .unwrap()
        .expect("the dead letter is put back");
    let e = settled_entry(store, "hospital", "bearer-file").await;
    assert_delivered(&e, &hospital, "bearer-file").await;
    api.push("gp", &[plain_heart_failure("bearer-file-2", &gp_pid)])
        .await;
    let e = settled_entry(store, "hospital", "bearer-file-2").await;
    assert_delivered(&e, &hospital, "bearer-file-2").await;
    assert_eq!(e.attempts, 1, "{e:#?}");
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. OAuth2 client credentials
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_tokens_are_cached_renewed_after_expiry_and_replaced_after_a_401() {
    // The hospital's tokens live 3 s; the municipality's an hour, behind a fault proxy that can
    // answer 401 to a token that is still valid.
    const TTL: u64 = 3;
    // The gateway reads the hospital's client secret from the process environment: the test
    // runs in a process of its own that has the variable from the start.
    const VAR: &str = "EXCHANGE_AUTH_TEST_HOSPITAL_CLIENT_SECRET";
    if !child::in_own_process(
        module_path!(),
        "client_credentials_tokens_are_cached_renewed_after_expiry_and_replaced_after_a_401",
        &[(VAR, &random("hospital-secret"))],
        &[],
    )
    .await
    {
        return;
    }
    let harness = random("harness");
    let h_secret = own_env(VAR);
    let m_secret = random("municipality-secret");
    let (h_opts, m_opts) = (
        oauth_peer(&h_secret, Some(TTL), &harness),
        oauth_peer(&m_secret, None, &harness),
    );
    let (hospital, municipality) = tokio::join!(
        Peer::start("hospital", &h_opts),
        Peer::start("municipality", &m_opts),
    );
    let proxy = FaultProxy::start(&municipality.base).await;
    let proxy_origin = proxy.base.trim_end_matches("/fhir").to_owned();

    let var = VAR;
    let dir = tempfile::tempdir().unwrap();
    let m_file = dir.path().join("municipality-secret");
    std::fs::write(&m_file, format!("{m_secret}\n")).unwrap();
    let sectors = [
        sector("gp", None, ""),
        sector(
            "hospital",
            Some(&hospital.base),
            &client_credentials(&hospital.token_url(), &secret_env(var)),
        ),
        sector(
            "municipality",
            Some(&proxy.base),
            &client_credentials(
                &format!("{proxy_origin}/oauth2/token"),
                &secret_file(&m_file),
            ),
        ),
        sector("lab", None, ""),
    ];
    let app = TestApp::spawn_config(Backend::Sqlite, |url| config(url, FAST, &sectors)).await;
    let api = Api::of(&app);
    let store = app.app_gateway.store().as_ref();
    let cpr = "0704521234";
    let gp_pid = api.register_patient("gp", None, cpr).await;
    api.register_patient("hospital", Some(&hospital), cpr).await;
    api.register_patient("municipality", Some(&municipality), cpr)
        .await;
    assert_eq!(hospital.tokens_issued_to_others().await, 0);
    assert_eq!(municipality.tokens_issued_to_others().await, 0);

    // Several records: one token per sector carries them all.
    let ids = ["cc-1", "cc-2", "cc-3"];
    let started = Instant::now();
    api.push(
        "gp",
        &ids.iter()
            .map(|id| plain_heart_failure(id, &gp_pid))
            .collect::<Vec<_>>(),
    )
    .await;
    for id in ids {
        let e = settled_entry(store, "hospital", id).await;
        assert_delivered(&e, &hospital, id).await;
        let e = settled_entry(store, "municipality", id).await;
        assert_delivered(&e, &municipality, id).await;
        assert_eq!(e.attempts, 1, "{e:#?}");
    }
    let phase1 = started.elapsed();
    let phase1_done = Instant::now();
    assert_eq!(municipality.tokens_issued_to_others().await, 1);
    let h1 = hospital.tokens_issued_to_others().await;
    // The gateway keeps a token until 90 % of a short lifetime (2.7 s of 3 s). Three deliveries
    // normally take a fraction of that; on a machine so loaded that they did not, a renewal in
    // between is correct, but never one token per delivery.
    let fast = phase1 < Duration::from_millis(2_500);
    if fast {
        assert_eq!(h1, 1, "three deliveries in {phase1:?} minted {h1} tokens");
    } else {
        eprintln!("note: the first deliveries took {phase1:?}; {h1} hospital tokens");
        assert!(
            h1 >= 1 && h1 <= 1 + (phase1.as_secs_f64() / 2.7) as u64,
            "{h1} tokens in {phase1:?}"
        );
    }

    // The hospital's token expires; the municipality's next POST /Condition is refused once
    // with 401 although its token is still valid.
    tokio::time::sleep_until((phase1_done + Duration::from_millis(TTL * 1000 + 500)).into()).await;
    proxy.push(
        Matcher::MethodPath("POST", "/Condition".into()),
        Fault::Status(401),
        1,
    );
    api.push("gp", &[plain_heart_failure("cc-4", &gp_pid)])
        .await;

    // The hospital: a new token, minted before the request (no refused attempt).
    let e = settled_entry(store, "hospital", "cc-4").await;
    assert_delivered(&e, &hospital, "cc-4").await;
    assert_eq!(e.attempts, 1, "{e:#?}");
    assert_eq!(hospital.tokens_issued_to_others().await, h1 + 1);
    if fast {
        // No request ever carried an expired token.
        assert_eq!(hospital.oauth_stats().await["rejected"], json!(0));
    }

    // The municipality: the 401 made the gateway drop its cached token and mint another.
    let e = settled_entry(store, "municipality", "cc-4").await;
    assert_delivered(&e, &municipality, "cc-4").await;
    assert_eq!(e.attempts, 2, "{e:#?}");
    assert_eq!(municipality.tokens_issued_to_others().await, 2);
    let condition_posts: Vec<u16> = proxy
        .seen()
        .into_iter()
        .filter(|(m, p, _)| m == "POST" && p.starts_with("/fhir/Condition"))
        .map(|(_, _, s)| s)
        .collect();
    assert_eq!(
        condition_posts,
        [201, 201, 201, 401, 201],
        "{:?}",
        proxy.seen()
    );
    assert_eq!(municipality.oauth_stats().await["rejected"], json!(0));
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. A wrong client secret, and the real binary's log at trace level
// ---------------------------------------------------------------------------------------------

/// A TCP pass-through to `upstream` (`host:port`) that keeps a copy of every byte the upstream
/// answers; its origin is `http://127.0.0.1:<port>`.
struct Tee {
    origin: String,
    answered: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tee {
    async fn start(upstream: String) -> Tee {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let answered: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = answered.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let sink = sink.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let forward = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                        let _ = server_write.shutdown().await;
                    });
                    let mut buf = vec![0u8; 8192];
                    loop {
                        match server_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                sink.lock().unwrap().extend_from_slice(&buf[..n]);
                                if client_write.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = client_write.shutdown().await;
                    forward.abort();
                });
            }
        });
        Tee {
            origin,
            answered,
            task,
        }
    }

    /// The `access_token`s the upstream handed out through this tee.
    fn access_tokens(&self) -> Vec<String> {
        let bytes = self.answered.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .split("\"access_token\":\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_is_retried_then_dead_and_no_secret_or_token_reaches_the_log() {
    let harness = random("harness");
    let secret = random("right-secret");
    let wrong = random("wrong-secret");
    // One server is both the hospital (right secret; its token endpoint reached through a tee
    // that records the tokens handed out) and the municipality (wrong secret).
    let peer = Peer::start("hospital", &oauth_peer(&secret, None, &harness)).await;
    let tee = Tee::start(format!("127.0.0.1:{}", peer.port)).await;

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("carebridge.db");
    let store_url = format!("sqlite://{}", db.display());
    let secret_path = dir.path().join("hospital-secret");
    std::fs::write(&secret_path, format!("{secret}\n")).unwrap();
    let var = unique_var("MUNICIPALITY_CLIENT_SECRET");
    let sectors = [
        sector("gp", None, ""),
        sector(
            "hospital",
            Some(&peer.base),
            &client_credentials(
                &format!("{}/oauth2/token", tee.origin),
                &secret_file(&secret_path),
            ),
        ),
        sector(
            "municipality",
            Some(&peer.base),
            &client_credentials(&peer.token_url(), &secret_env(&var)),
        ),
    ];
    let (clients, tokens) = conf::mint(&[
        ("gp", "sector:gp"),
        ("hospital", "sector:hospital"),
        ("municipality", "sector:municipality"),
    ]);
    let config_file = dir.path().join("carebridge.toml");
    std::fs::write(&config_file, config(&store_url, FAST, &sectors) + &clients).unwrap();
    // `carebridge serve` with every log level on; the variable in the child's environment
    // only.
    let mut server = Serve::traced(&config_file)
        .env(&var, &wrong)
        .start()
        .expect("the binary starts");
    let api = Api {
        base: server.base.clone(),
        tokens,
        http: carebridge::outbound::client().expect("an HTTP client"),
    };

    let cpr = "1112601234";
    let gp_pid = api.register_patient("gp", None, cpr).await;
    api.register_patient("hospital", Some(&peer), cpr).await;
    api.register_patient("municipality", None, cpr).await;
    api.push("gp", &[plain_heart_failure("cc-log", &gp_pid)])
        .await;

    let store = carebridge::store::SqlStore::connect(&store_url, 2)
        .await
        .unwrap();
    let e = settled_entry(&store, "hospital", "cc-log").await;
    assert_delivered(&e, &peer, "cc-log").await;
    // The token endpoint refusing is retryable (the secret may be about to be fixed): retried,
    // then dead after max_attempts, with the reason and without the secret.
    let dead = settled_entry(&store, "municipality", "cc-log").await;
    assert_eq!(
        (dead.state.code(), dead.attempts, dead.last_status),
        ("dead", 3, None),
        "{dead:#?}"
    );
    let err = dead.last_error.clone().unwrap_or_default();
    assert!(
        err.contains("token endpoint") && err.contains("401"),
        "{err}"
    );
    assert!(!err.contains(&wrong) && !err.contains(&secret), "{err}");
    store.close().await;

    // One token, handed to the hospital sector through the tee; none for the wrong secret.
    let minted = tee.access_tokens();
    assert_eq!(minted.len(), 1, "{minted:?}");
    assert_eq!(peer.tokens_issued_to_others().await, 1);
    assert!(peer.oauth_stats().await["rejected"] == json!(0));

    let log = server.output();
    assert!(
        log.lines().count() > 50,
        "the log at trace level was captured"
    );
    assert!(
        log.contains("delivery dead-lettered"),
        "the log covers the failed deliveries"
    );
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut secrets = vec![
        ("the right secret", secret.clone()),
        ("the wrong secret", wrong.clone()),
        (
            "the right Basic credentials",
            b64(&format!("{CLIENT_ID}:{secret}")),
        ),
        (
            "the wrong Basic credentials",
            b64(&format!("{CLIENT_ID}:{wrong}")),
        ),
    ];
    secrets.extend(minted.into_iter().map(|t| ("an access token", t)));
    let leaks: Vec<&str> = secrets
        .iter()
        .filter(|(_, s)| log.contains(s.as_str()))
        .map(|(what, _)| *what)
        .collect();
    assert!(leaks.is_empty(), "secrets in the log: {leaks:?}");
}

// ---------------------------------------------------------------------------------------------
// 4. check-config's probes
// ---------------------------------------------------------------------------------------------

/// Runs `carebridge check-config --config <dir>/<name>.toml [extra]`: exit code and stdout.
async fn check_config(
    dir: &Path,
    name: &str,
    text: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> (Option<i32>, String) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_carebridge"));
    cmd.arg("check-config")
        .arg("--config")
        .arg(&path)
        .args(extra)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("check-config {name} did not finish in 120 s"))
        .expect("check-config runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        out.status.code(),
        format!("{stdout}\n--- stderr ---\n{stderr}"),
    )
}

/// The `ok   endpoint <sector>: ...` or `FAIL endpoint <sector>: ...` line.
fn endpoint_line<'a>(out: &'a str, sector: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.starts_with(&format!("ok   endpoint {sector}: "))
                || l.starts_with(&format!("FAIL endpoint {sector}: "))
        })
        .unwrap_or_else(|| panic!("no endpoint line for {sector}:\n{out}"))
}

fn assert_ok_line(out: &str, sector: &str) {
    let line = endpoint_line(out, sector);
    assert!(
        line.starts_with(&format!("ok   endpoint {sector}: FHIR 4.0.1 ")),
        "{sector}: {line}\n{out}"
    );
}

fn assert_fail_line(out: &str, sector: &str, needles: &[&str]) {
    let line = endpoint_line(out, sector);
    assert!(
        line.starts_with(&format!("FAIL endpoint {sector}: ")),
        "{sector}: {line}\n{out}"
    );
    for n in needles {
        assert!(line.contains(n), "{sector}: {line} lacks {n:?}\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_probes_every_sector_endpoint() {
    // The municipality demands a token: the static one, or one from its token endpoint.
    let token = random("municipality-token");
    let secret = random("municipality-secret");
    let open = PeerOptions::default();
    let guarded = PeerOptions {
        token: Some(token.clone()),
        client_credentials: Some((CLIENT_ID.to_owned(), secret.clone())),
        ..PeerOptions::default()
    };
    let (gp, hospital, municipality) = tokio::join!(
        Peer::start("gp", &open),
        Peer::start("hospital", &open),
        Peer::start("municipality", &guarded),
    );
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}", dir.path().join("carebridge.db").display());
    let token_file = dir.path().join("municipality-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}/fhir", l.local_addr().unwrap().port())
    };
    let var = unique_var("PROBE_SECRET");
    let make = |exchange: &str, hospital_base: &str, municipality_auth: &str| {
        config(
            &store_url,
            exchange,
            &[
                sector("gp", Some(&gp.base), ""),
                sector("hospital", Some(hospital_base), ""),
                sector("municipality", Some(&municipality.base), municipality_auth),
            ],
        )
    };
    let sectors = ["gp", "hospital", "municipality"];

    // Every endpoint answers, the municipality with the static token from a file.
    let (code, out) = check_config(
        dir.path(),
        "ok-bearer",
        &make("", &hospital.base, &bearer_file(&token_file)),
        &[],
        &[],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    for s in sectors {
        assert_ok_line(&out, s);
    }
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("ok   endpoint "))
            .count(),
        3,
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
    assert!(
        endpoint_line(&out, "gp").contains(&gp.base)
            && endpoint_line(&out, "gp").contains("Condition"),
        "{out}"
    );

    // ... and with a token from its token endpoint.
    let cc = client_credentials(&municipality.token_url(), &secret_env(&var));
    let (code, out) = check_config(
        dir.path(),
        "ok-client-credentials",
        &make("", &hospital.base, &cc),
        &[],
        &[(var.as_str(), secret.as_str())],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    for s in sectors {
        assert_ok_line(&out, s);
    }
    assert!(!out.contains(&secret), "the secret printed:\n{out}");

    // A closed port.
    let closed_config = make("", &closed, &bearer_file(&token_file));
    let (code, out) = check_config(dir.path(), "closed-port", &closed_config, &[], &[]).await;
    assert_eq!(code, Some(1), "{out}");
    assert_fail_line(
        &out,
        "hospital",
        &[&format!("{closed}/metadata"), "connection refused"],
    );
    assert_ok_line(&out, "gp");
    assert_ok_line(&out, "municipality");

    // A server that demands a token, and the configuration gives none.
    let (code, out) = check_config(
        dir.path(),
        "no-token",
        &make("", &hospital.base, ""),
        &[],
        &[],
    )
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert_fail_line(&out, "municipality", &["401"]);
    assert_ok_line(&out, "gp");
    assert_ok_line(&out, "hospital");

    // A wrong client secret: the token endpoint refuses.
    let wrong = random("wrong-secret");
    let (code, out) = check_config(
        dir.path(),
        "wrong-secret",
        &make("", &hospital.base, &cc),
        &[],
        &[(var.as_str(), wrong.as_str())],
    )
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert_fail_line(
        &out,
        "municipality",
        &["credentials", "token endpoint", "401"],
    );
    assert!(!out.contains(&wrong), "the secret printed:\n{out}");

    // A route carrying a type the server's CapabilityStatement does not list.
    let routes = "\n[[exchange.routes]]\ntypes = [\"NotAType\"]\nto = [\"hospital\"]\n";
    let (code, out) = check_config(
        dir.path(),
        "unknown-type",
        &make(routes, &hospital.base, &bearer_file(&token_file)),
        &[],
        &[],
    )
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert_fail_line(&out, "hospital", &["create NotAType", "update NotAType"]);
    assert_ok_line(&out, "gp");
    assert_ok_line(&out, "municipality");

    // --offline probes nothing: the closed port goes unnoticed.
    let (code, out) = check_config(
        dir.path(),
        "closed-port",
        &closed_config,
        &["--offline"],
        &[],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("skip ")),
        "no skip line:\n{out}"
    );
    assert!(
        !out.lines()
            .any(|l| l.starts_with("ok   endpoint ") || l.starts_with("FAIL endpoint ")),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. A token endpoint's expires_in is not to be trusted blindly
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_expires_in_neither_crashes_the_probe_nor_stops_delivery() {
    // The in-process gateway reads the client secret from the process environment: the test
    // runs in a process of its own that has the variable from the start.
    const VAR: &str = "EXCHANGE_AUTH_TEST_ABSURD_TTL_SECRET";
    if !child::in_own_process(
        module_path!(),
        "an_absurd_expires_in_neither_crashes_the_probe_nor_stops_delivery",
        &[(VAR, &random("secret"))],
        &[],
    )
    .await
    {
        return;
    }
    // 10^19 s: a valid JSON number and u64, beyond what `Instant` can add.
    let harness = random("harness");
    let secret = own_env(VAR);
    let mut opts = oauth_peer(&secret, None, &harness);
    opts.token_ttl = Some(10_000_000_000_000_000_000);
    let hospital = Peer::start("hospital", &opts).await;
    let (_, ttl) = hospital.fetch_token().await;
    assert_eq!(
        ttl, 10_000_000_000_000_000_000,
        "the peer hands out that lifetime"
    );

    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}", dir.path().join("carebridge.db").display());
    let var = VAR;
    let auth = client_credentials(&hospital.token_url(), &secret_env(var));
    let text = config(
        &store_url,
        "",
        &[sector("hospital", Some(&hospital.base), &auth)],
    );
    let (code, out) = check_config(
        dir.path(),
        "absurd-ttl",
        &text,
        &[],
        &[(var, secret.as_str())],
    )
    .await;
    // An absurd `expires_in` is clamped (to a day): the token is used, nothing overflows.
    assert_eq!(code, Some(0), "{out}");
    assert_ok_line(&out, "hospital");

    // The same token endpoint in `serve` (in this process, which has the variable): the
    // sector's deliveries go on.
    let sectors = [
        sector("gp", None, ""),
        sector("hospital", Some(&hospital.base), &auth),
        sector("municipality", None, ""),
        sector("lab", None, ""),
    ];
    let app = TestApp::spawn_config(Backend::Sqlite, |url| config(url, FAST, &sectors)).await;
    let api = Api::of(&app);
    let cpr = "0101701234";
    let gp_pid = api.register_patient("gp", None, cpr).await;
    api.register_patient("hospital", Some(&hospital), cpr).await;
    api.push("gp", &[plain_heart_failure("absurd-ttl", &gp_pid)])
        .await;
    let e = settled_entry(app.app_gateway.store().as_ref(), "hospital", "absurd-ttl").await;
    assert_delivered(&e, &hospital, "absurd-ttl").await;
    app.stop().await;
}
