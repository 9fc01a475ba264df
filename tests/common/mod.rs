//! Test harness: starts the real application on port 0 with a real store (a SQLite file in a
//! temporary folder, or a fresh PostgreSQL database), with minted tokens for every role.
//!
//! The modules beside this file are self-contained, so that the benches can include them with
//! `#[path = "../tests/common/<module>.rs"]`:
//!
//! | module | what | used by |
//! |---|---|---|
//! | `browser` | chromedriver and a headless chromium (fantoccini), axe-core, screenshots | `browser` |
//! | `child` | a test run again in a process of its own, with environment variables | `exchange_auth` |
//! | `conf` | pieces of generated configurations: the four sectors, static tokens and their `[[clients]]` tables | `TestApp`, `exchange`, `exchange_auth`, `log_privacy`, `process`; P2, P3, P4, P5 |
//! | `demo` | `carebridge demo` as a child process: its tokens and sign-in links | `console`, `browser` |
//! | `fault` | a fault-injecting HTTP proxy in front of a peer | `exchange`, `exchange_auth`, `peer_harness` |
//! | `inproc` | the application in this process (`App::build`, served on port 0) | `TestApp`; P3 |
//! | `oidc` | an OpenID provider (npm `oidc-provider`) and the demo signing in with it | `browser`, `console` |
//! | `peers` | Medplum FHIR peers and the Lantana validator (Node.js) | `exchange`, `exchange_auth`, `audit_events_valid`, `peer_harness`; P4 |
//! | `pg` | fresh PostgreSQL databases | `fresh_pg_database` (every PostgreSQL test); P2, P4 |
//! | `records` | the Patient, Condition and transaction Bundle of the exchange tests | `exchange`, `exchange_auth`; P4 |
//! | `server` | the real binary, `carebridge serve`, as a child process | `exchange`, `exchange_auth`, `jwt`, `log_privacy`, `process`; P2, P4, P5 |
//! | `synthea` | the Synthea files and their split across the three sectors | `synthea_alerts`, `public_data`; P2, P3 |
//!
//! Here, for the tests only: `TestApp`, `fresh_pg_database` (the one place a missing PostgreSQL
//! is reported), `wait_for`, `outbox`, `copy_at`, the shared data.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod browser;
pub mod child;
pub mod conf;
pub mod demo;
pub mod fault;
pub mod inproc;
pub mod oidc;
pub mod peers;
pub mod pg;
pub mod records;
pub mod server;
pub mod synthea;

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Where the shared public data lives (read in place, never copied).
pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server for tests (override with CAREBRIDGE_TEST_PG).
pub fn pg_admin_url() -> String {
    std::env::var("CAREBRIDGE_TEST_PG").unwrap_or_else(|_| PG_ADMIN_URL.to_owned())
}

/// Creates an empty PostgreSQL database for one test and returns its URL and name. The one
/// place where a test meets a missing PostgreSQL: it fails with one line that says so.
pub async fn fresh_pg_database() -> (String, String) {
    let admin = pg_admin_url();
    match pg::create_database(&admin, "cb_test_").await {
        Ok(created) => created,
        Err(pg::PgError::Unreachable(e)) => panic!(
            "PostgreSQL is not reachable at {admin} (set CAREBRIDGE_TEST_PG or start it: see \
             README, \"Prerequisites\"): {e}"
        ),
        Err(e) => panic!("PostgreSQL at {admin}: {e}"),
    }
}

pub async fn drop_pg_database(name: &str) {
    pg::drop_database(&pg_admin_url(), name).await;
}

/// The test configuration: the three Danish sectors with their profiles, plus `lab`, a
/// hospital-kind sector with structural validation only (for official examples and Synthea):
/// `conf::SECTORS`.
pub fn config_text(store_url: &str, extra_server: &str) -> String {
    let profiles = repo().join("fhir-profiles");
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 4194304
max_bundle_entries = 5000
{extra_server}

[store]
url = "{store_url}"
max_connections = 4

[fhir]
profiles_dir = "{profiles}"

# These tests look at what the gateway accepts; the outbox is written, nothing is delivered
# (the end-to-end exchange tests start real sector servers).
[exchange]
enabled = false

{sectors}"#,
        profiles = profiles.display(),
        sectors = conf::SECTORS,
    )
}

pub const ROLES: [(&str, &str); 7] = [
    ("gp", "sector:gp"),
    ("hospital", "sector:hospital"),
    ("municipality", "sector:municipality"),
    ("lab", "sector:lab"),
    ("careteam", "careteam"),
    ("auditor", "auditor"),
    ("admin", "admin"),
];

/// A running application.
pub struct TestApp {
    pub base: String,
    pub tokens: HashMap<String, String>,
    pub http: reqwest::Client,
    pub app_gateway: Arc<inproc::Gateway>,
    pub dir: tempfile::TempDir,
    pub pg_database: Option<String>,
    app: inproc::InProcess,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, "").await
    }

    pub async fn spawn_with(backend: Backend, extra_server: &str) -> TestApp {
        Self::spawn_config(backend, |url| config_text(url, extra_server)).await
    }

    /// Starts the app with a configuration made from the store URL (clients are appended).
    pub async fn spawn_config(backend: Backend, make: impl FnOnce(&str) -> String) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let (url, pg_database) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", dir.path().join("carebridge.db").display()),
                None,
            ),
            Backend::Postgres => {
                let (url, name) = fresh_pg_database().await;
                (url, Some(name))
            }
        };
        let config = dir.path().join("carebridge.toml");
        let (clients, tokens) = conf::mint(&ROLES);
        std::fs::write(&config, make(&url) + &clients).expect("write config");
        let app = inproc::InProcess::start(&config)
            .await
            .unwrap_or_else(|e| panic!("the test application starts: {e:#}"));
        TestApp {
            base: app.base.clone(),
            tokens,
            http: carebridge::outbound::client().expect("an HTTP client"),
            app_gateway: app.gateway.clone(),
            dir,
            pg_database,
            app,
        }
    }

    /// A one-time sign-in link of the console for a client of this role (no person).
    pub async fn sign_in_link(&self, who: &str, role: carebridge::access::Role) -> String {
        let token = self
            .app
            .sessions
            .mint_link(carebridge::access::Client::system(who, role))
            .await
            .expect("a sign-in link is stored");
        format!("{}/ui/sign-in/{token}", self.base.trim_end_matches("/fhir"))
    }

    pub fn token(&self, who: &str) -> &str {
        &self.tokens[who]
    }

    /// The console's sessions (tests mint sign-in links here).
    pub fn sessions(&self) -> &Arc<carebridge::api::ui::Sessions> {
        &self.app.sessions
    }

    pub async fn post(
        &self,
        who: &str,
        path: &str,
        body: &Value,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        self.send_json(who, reqwest::Method::POST, path, body).await
    }

    pub async fn put(
        &self,
        who: &str,
        path: &str,
        body: &Value,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        self.send_json(who, reqwest::Method::PUT, path, body).await
    }

    async fn send_json(
        &self,
        who: &str,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let bytes = body.to_string().into_bytes();
        self.send(who, method, path, Some(bytes), "application/fhir+json")
            .await
    }

    pub async fn get(&self, who: &str, path: &str) -> (u16, Value) {
        let (s, v, _) = self.send(who, reqwest::Method::GET, path, None, "").await;
        (s, v)
    }

    /// Sends a request; `who` names a token holder ("" sends none).
    pub async fn send(
        &self,
        who: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, url);
        if let Some(t) = self.tokens.get(who) {
            req = req.bearer_auth(t);
        } else if !who.is_empty() {
            req = req.bearer_auth(who);
        }
        if !content_type.is_empty() {
            req = req.header("content-type", content_type);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.expect("request reaches the gateway");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value, headers)
    }

    /// Resources stored in total (all sectors and types).
    pub async fn stored_count(&self) -> i64 {
        let stats = self.app_gateway.store().stats().await.expect("stats");
        stats.by_sector_type.iter().map(|r| r.2).sum()
    }

    pub async fn stop(mut self) {
        self.app.stop().await;
        if let Some(db) = self.pg_database.take() {
            drop_pg_database(&db).await;
        }
    }
}

/// Polls `f` every 100 ms until it returns Some, or panics after `secs` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The outbox entries of a store (those in `state`, or all).
pub async fn outbox(
    store: &dyn carebridge::store::Store,
    state: Option<&str>,
) -> Vec<carebridge::store::OutboxEntry> {
    carebridge::gateway::admin::list_deliveries(
        store,
        &carebridge::store::OutboxFilter {
            state: state.map(|s| {
                carebridge::store::DeliveryState::parse(s)
                    .unwrap_or_else(|| panic!("no outbox state {s}"))
            }),
            target: None,
            offset: 0,
            count: 100_000,
        },
    )
    .await
    .expect("outbox list")
}

/// The gateway's copy of `<source>/<rtype>/<id>` at a sector's peer, found by the
/// source-resource identifier it carries (never more than one).
pub async fn copy_at(peer: &peers::Peer, source: &str, rtype: &str, id: &str) -> Option<Value> {
    let system = carebridge::exchange::SOURCE_ID_SYSTEM;
    let q = format!("{rtype}?identifier={system}|{source}/{rtype}/{id}");
    let found = peer.search_resources(&q).await;
    assert!(
        found.len() <= 1,
        "{} copies of {source}/{rtype}/{id} at {}",
        found.len(),
        peer.name
    );
    found.into_iter().next()
}

/// Reads a JSON file of the shared data.
pub fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every official R4 example (all folders but `_structuredefinitions`).
pub fn official_examples() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let root = shared_data().join("fhir-r4-examples");
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("examples folder") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "_structuredefinitions") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "json") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The issue expressions of an OperationOutcome.
pub fn expressions(oo: &Value) -> Vec<String> {
    oo["issue"]
        .as_array()
        .map(|issues| {
            issues
                .iter()
                .flat_map(|i| i["expression"].as_array().cloned().unwrap_or_default())
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
