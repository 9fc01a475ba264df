//! Test harness: starts the real application on port 0 with a real store (a SQLite file in a
//! temporary folder, or a fresh PostgreSQL database), with minted tokens for every role.
#![allow(dead_code)]

use carebridge::app::App;
use carebridge::auth::{Clients, new_token, token_hash};
use carebridge::config::Settings;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod fault;
pub mod peers;

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

/// Creates an empty PostgreSQL database for one test and returns its URL.
pub async fn fresh_pg_database() -> (String, String) {
    use sqlx::Connection;
    let name = format!("cb_test_{}", uuid::Uuid::new_v4().simple());
    let admin = pg_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("PostgreSQL is reachable for tests");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or(admin);
    (format!("{base}/{name}"), name)
}

pub async fn drop_pg_database(name: &str) {
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    }
}

/// The test configuration: the three Danish sectors with their profiles, plus `lab`, a
/// hospital-kind sector with structural validation only (for official examples and Synthea).
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

[[sectors]]
id = "gp"
name = "General practice"
kind = "general-practice"
base_url = "http://gp.test/fhir"
profile = "dk-gp"

[[sectors]]
id = "hospital"
name = "Hospital"
kind = "hospital"
base_url = "http://hospital.test/fhir"
profile = "dk-hospital"

[[sectors]]
id = "municipality"
name = "Municipality"
kind = "municipality"
base_url = "http://municipality.test/fhir"
profile = "dk-municipality"

[[sectors]]
id = "lab"
name = "Laboratory"
kind = "hospital"
"#,
        profiles = profiles.display()
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
    pub app_gateway: Arc<carebridge::ingest::Gateway>,
    pub dir: tempfile::TempDir,
    pub pg_database: Option<String>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
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
        let mut text = make(&url);
        let mut tokens = HashMap::new();
        for (id, role) in ROLES {
            let token = new_token();
            text.push_str(&format!(
                "\n[[clients]]\nid = \"{id}\"\nrole = \"{role}\"\ntoken_sha256 = \"{}\"\n",
                token_hash(&token)
            ));
            tokens.insert(id.to_owned(), token);
        }
        std::fs::write(&config, text).expect("write config");
        let settings = Settings::load(&config).expect("test configuration loads");
        let clients = Clients::from_settings(&settings.clients);
        let app = App::build(settings, &config.display().to_string(), clients)
            .await
            .expect("app builds");
        let gateway = app.gateway.clone();
        let (listener, addr) = App::bind("127.0.0.1:0").await.expect("bind port 0");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let _ = app
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await;
        });
        TestApp {
            base: format!("http://{addr}/fhir"),
            tokens,
            http: reqwest::Client::new(),
            app_gateway: gateway,
            dir,
            pg_database,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn token(&self, who: &str) -> &str {
        &self.tokens[who]
    }

    pub async fn post(
        &self,
        who: &str,
        path: &str,
        body: &Value,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        self.send(
            who,
            reqwest::Method::POST,
            path,
            Some(body.to_string().into_bytes()),
            "application/fhir+json",
        )
        .await
    }

    pub async fn put(
        &self,
        who: &str,
        path: &str,
        body: &Value,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        self.send(
            who,
            reqwest::Method::PUT,
            path,
            Some(body.to_string().into_bytes()),
            "application/fhir+json",
        )
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
        let stats = self.app_gateway.store.stats().await.expect("stats");
        stats.by_sector_type.iter().map(|r| r.2).sum()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        if let Some(db) = self.pg_database.take() {
            drop_pg_database(&db).await;
        }
    }
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
