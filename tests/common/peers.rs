//! Real FHIR R4 sector endpoints for end-to-end tests: `tests/peers/fhir-server.mjs` (Medplum's
//! FHIR router over its in-memory repository) run as child processes, and the independent
//! Lantana FHIR.js validator (`tests/peers/validate-fhir.mjs`). See `tests/peers/README.md`.
//!
//! Node.js is required (20 or later): `require_node` fails a test with one line when it is
//! missing; `npm ci --prefix tests/peers` runs when `tests/peers/node_modules` is out of date.
//!
//! Self-contained (no `super::` items): the tests include it as `common::peers`, the P4 bench
//! with `#[path = "../tests/common/peers.rs"] mod peers;`.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// How long a peer may take to print its `listening` line (start-up is CPU-bound: 2-3 s alone,
/// up to 10 s with several peers and cargo builds on 2 cores).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `start_on_port` keeps retrying while the port is still taken.
pub const PORT_RETRY: Duration = Duration::from_secs(8);
/// A stale cross-process npm lock (a test binary killed mid-install) is broken after this.
const NPM_LOCK_STALE: Duration = Duration::from_secs(240);

/// `tests/peers` of this checkout.
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// The `node` executable (`CAREBRIDGE_NODE` overrides).
pub fn node_bin() -> String {
    std::env::var("CAREBRIDGE_NODE").unwrap_or_else(|_| "node".to_owned())
}

/// The one message for a missing Node.js or npm.
fn node_missing(detail: &str) -> String {
    format!(
        "node/npm not found: tests/peers needs Node.js 20 or later with npm (see \
         tests/peers/README.md; CAREBRIDGE_NODE names another node): {detail}"
    )
}

/// Fails the calling test with one line unless `node` (20 or later) runs. Checked once per
/// process; every peer start and every validation calls it first.
pub fn require_node() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let node = node_bin();
        let out = std::process::Command::new(&node)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| node_missing(&format!("`{node} --version`: {e}")))?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() {
            return Err(node_missing(&format!(
                "`{node} --version` failed ({})",
                out.status
            )));
        }
        let major: Option<u32> = version
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse().ok());
        match major {
            Some(m) if m >= 20 => Ok(()),
            _ => Err(format!(
                "`{node}` is Node.js {version}: tests/peers needs Node.js 20 or later (see \
                 tests/peers/README.md)"
            )),
        }
    });
    if let Err(e) = checked {
        panic!("{e}");
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// True when `tests/peers/node_modules` is missing, incomplete or older than the lock file.
fn npm_install_needed(dir: &Path) -> bool {
    // npm writes node_modules/.package-lock.json on every install; it is the install's stamp.
    let stamp = dir.join("node_modules/.package-lock.json");
    let required = [
        "node_modules/@medplum/fhir-router/package.json",
        "node_modules/@medplum/core/package.json",
        "node_modules/fhir/package.json",
    ];
    if required.iter().any(|p| !dir.join(p).exists()) {
        return true;
    }
    match (mtime(&stamp), mtime(&dir.join("package-lock.json"))) {
        (Some(installed), Some(lock)) => installed < lock,
        _ => true,
    }
}

/// A cross-process lock: an atomically created directory, broken when older than
/// `NPM_LOCK_STALE` (its owner died). Removed on drop.
struct DirLock(PathBuf);

impl DirLock {
    fn acquire(path: PathBuf, wait: Duration) -> DirLock {
        let deadline = Instant::now() + wait;
        loop {
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    let _ = std::fs::write(path.join("pid"), std::process::id().to_string());
                    return DirLock(path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = mtime(&path)
                        .and_then(|t| t.elapsed().ok())
                        .unwrap_or_default();
                    if age > NPM_LOCK_STALE {
                        eprintln!(
                            "peers: breaking stale lock {} ({} s old)",
                            path.display(),
                            age.as_secs()
                        );
                        let _ = std::fs::remove_dir_all(&path);
                        continue;
                    }
                    if Instant::now() > deadline {
                        panic!(
                            "peers: lock {} still held after {} s",
                            path.display(),
                            wait.as_secs()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("peers: cannot create lock {}: {e}", path.display()),
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `npm ci --prefix tests/peers` when `tests/peers/node_modules` is missing or older than
/// `package-lock.json`. Once per test binary (`OnceLock`: concurrent callers wait for the first),
/// and serialised across test binaries by a lock directory in the temp folder. Blocking: from
/// async code, call it through `tokio::task::spawn_blocking` (as `Peer::start` does).
pub fn ensure_npm_installed() {
    require_node();
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = DONE.get_or_init(|| {
        let dir = peers_dir();
        if !npm_install_needed(&dir) {
            return Ok(());
        }
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            dir.hash(&mut h);
            format!("{:016x}", h.finish())
        };
        let lock_path = std::env::temp_dir().join(format!("carebridge-npm-ci-{key}.lock"));
        let _lock = DirLock::acquire(lock_path, NPM_LOCK_STALE + Duration::from_secs(60));
        // Another binary may have installed while we waited.
        if !npm_install_needed(&dir) {
            return Ok(());
        }
        let started = Instant::now();
        let out = std::process::Command::new("npm")
            .arg("ci")
            .arg("--prefix")
            .arg(&dir)
            .arg("--no-audit")
            .arg("--no-fund")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| node_missing(&format!("`npm ci` is needed and `npm`: {e}")))?;
        if !out.status.success() {
            return Err(format!(
                "npm ci --prefix {} failed ({}):\n{}\n{}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        eprintln!(
            "peers: npm ci --prefix {} took {:.1} s",
            dir.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Limits how many peers start at the same time in one test binary: start-up is CPU-bound,
/// and on 2 cores six concurrent start-ups only make every one of them slow.
fn start_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores.clamp(2, 4))
    })
}

#[derive(Default, Clone, Debug)]
pub struct PeerOptions {
    /// `--validate`: Medplum's `validateResource` on every create/update (400 on failure).
    pub validate: bool,
    /// `--token T`: every request needs `Authorization: Bearer T`. The harness uses it.
    pub token: Option<String>,
    /// `--client-credentials ID:SECRET`: OAuth2 client credentials at `/oauth2/token`; every
    /// request needs a token it issued. Without `token`, the harness mints one for its own
    /// requests (counted in `/oauth2/stats`, see `Peer::harness_tokens_issued`); with `token`
    /// too, the harness uses the static token and mints none.
    pub client_credentials: Option<(String, String)>,
    /// `--token-ttl SECONDS` (default 3600 on the peer); needs `client_credentials`.
    pub token_ttl: Option<u64>,
    /// `--log`: one stderr line per request, readable through `Peer::stderr_text`.
    pub log: bool,
    /// Run the peer on these CPUs only (`taskset -c <cpus> node …`), for benchmarks that give
    /// the peer a core of its own, as a sector system on another machine has.
    pub cpus: Option<String>,
}

impl PeerOptions {
    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.validate {
            args.push("--validate".to_owned());
        }
        if let Some(t) = &self.token {
            args.push("--token".to_owned());
            args.push(t.clone());
        }
        if let Some((id, secret)) = &self.client_credentials {
            args.push("--client-credentials".to_owned());
            args.push(format!("{id}:{secret}"));
        }
        if let Some(ttl) = self.token_ttl {
            args.push("--token-ttl".to_owned());
            args.push(ttl.to_string());
        }
        if self.log {
            args.push("--log".to_owned());
        }
        args
    }
}

/// A bearer token the harness minted for itself, with its expiry.
#[derive(Default)]
struct HarnessToken {
    token: Option<(String, Instant)>,
    minted: u64,
}

/// A running FHIR peer (a `node` child process, killed on drop).
pub struct Peer {
    pub name: String,
    /// `http://127.0.0.1:<port>/fhir`
    pub base: String,
    pub port: u16,
    pub opts: PeerOptions,
    /// How long the last start took, to the `listening` line.
    pub started_in: Duration,
    pub http: reqwest::Client,
    child: Option<Child>,
    /// Held open: the peer runs with `--exit-on-stdin-eof`, so it exits when this closes
    /// (on `stop`, or when the test process dies).
    stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<String>>,
    auth: Arc<tokio::sync::Mutex<HarnessToken>>,
}

enum Spawned {
    Up(Box<Peer>),
    PortTaken(String),
}

fn spawn_drain<R>(mut reader: R, sink: Option<Arc<Mutex<String>>>)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(sink) = &sink {
                        let mut s = sink.lock().unwrap();
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                        // Keep the last 256 KiB.
                        if s.len() > 512 * 1024 {
                            let mut cut = s.len() - 256 * 1024;
                            while !s.is_char_boundary(cut) {
                                cut += 1;
                            }
                            s.drain(..cut);
                        }
                    }
                }
            }
        }
    });
}

impl Peer {
    /// Starts a peer on a free port (`--port 0`).
    pub async fn start(name: &str, opts: &PeerOptions) -> Peer {
        match Self::spawn(name, 0, opts).await {
            Spawned::Up(peer) => *peer,
            Spawned::PortTaken(err) => panic!("peer {name} could not bind port 0: {err}"),
        }
    }

    /// Starts a peer on a given port (for a restart on the same address); retries for
    /// `PORT_RETRY` while the port is still taken.
    pub async fn start_on_port(name: &str, port: u16, opts: &PeerOptions) -> Peer {
        let deadline = Instant::now() + PORT_RETRY;
        loop {
            match Self::spawn(name, port, opts).await {
                Spawned::Up(peer) => return *peer,
                Spawned::PortTaken(err) if Instant::now() < deadline => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Spawned::PortTaken(err) => {
                    panic!(
                        "peer {name}: port {port} still taken after {} s: {err}",
                        PORT_RETRY.as_secs()
                    )
                }
            }
        }
    }

    async fn spawn(name: &str, port: u16, opts: &PeerOptions) -> Spawned {
        // On the test's own thread, so that a missing Node.js fails the test with its one line
        // (a `node --version` once per process).
        require_node();
        if let Err(e) = tokio::task::spawn_blocking(ensure_npm_installed).await {
            // Fail with the install's own message (a missing Node.js says so in one line).
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
            panic!("npm install task: {e}");
        }
        let _permit = start_permits().acquire().await.expect("start semaphore");
        let script = peers_dir().join("fhir-server.mjs");
        let started = Instant::now();
        let mut command = match &opts.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(node_bin());
                c
            }
            None => Command::new(node_bin()),
        };
        let mut child = command
            .arg(&script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--name")
            .arg(name)
            .arg("--exit-on-stdin-eof")
            .args(opts.args())
            .current_dir(peers_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| match &opts.cpus {
                // `taskset` (util-linux) is what failed to start, not node.
                Some(_) => panic!("`taskset` (util-linux) is needed for PeerOptions::cpus: {e}"),
                None => panic!("{}", node_missing(&format!("`{}`: {e}", node_bin()))),
            });
        let stdin = child.stdin.take().expect("piped stdin");
        let stderr = Arc::new(Mutex::new(String::new()));
        spawn_drain(
            child.stderr.take().expect("piped stderr"),
            Some(stderr.clone()),
        );
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let read = tokio::time::timeout(START_TIMEOUT, stdout.read_line(&mut line)).await;
        let stderr_now = || stderr.lock().unwrap().clone();
        match read {
            Err(_) => {
                let _ = child.kill().await;
                panic!(
                    "peer {name} printed no `listening` line within {} s; stderr:\n{}",
                    START_TIMEOUT.as_secs(),
                    stderr_now()
                );
            }
            Ok(Err(e)) => panic!("peer {name}: reading stdout: {e}"),
            Ok(Ok(0)) => {
                // Exited before listening. Give the stderr drain a moment to collect the reason.
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let err = stderr_now();
                if port != 0 && (err.contains("EADDRINUSE") || err.contains("cannot listen")) {
                    return Spawned::PortTaken(err);
                }
                panic!("peer {name} exited before listening ({status:?}); stderr:\n{err}");
            }
            Ok(Ok(_)) => {}
        }
        let base = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("peer {name}: unexpected first line {line:?}"))
            .to_owned();
        let actual_port: u16 = base
            .trim_end_matches("/fhir")
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("peer {name}: no port in {base:?}"));
        // Nothing else is printed to stdout, but keep the pipe drained anyway.
        spawn_drain(stdout.into_inner(), None);
        let started_in = started.elapsed();
        Spawned::Up(Box::new(Peer {
            name: name.to_owned(),
            base,
            port: actual_port,
            opts: opts.clone(),
            started_in,
            http: carebridge::outbound::client_builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
            child: Some(child),
            stdin: Some(stdin),
            stderr,
            auth: Arc::default(),
        }))
    }

    /// `http://127.0.0.1:<port>` (the base without `/fhir`).
    pub fn origin(&self) -> &str {
        self.base.trim_end_matches("/fhir")
    }

    /// `http://127.0.0.1:<port>/oauth2/token`
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.origin())
    }

    /// What the peer wrote to stderr so far (errors; request lines with `opts.log`).
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// With `--log`: the time (ms) inside the peer of each request whose log line holds
    /// `request` (`" POST /fhir/Condition "`, say), in order.
    pub fn logged_ms(&self, request: &str) -> Vec<f64> {
        self.stderr_text()
            .lines()
            .filter(|l| l.contains(request))
            .filter_map(|l| {
                l.rsplit(' ')
                    .next()
                    .and_then(|d| d.strip_suffix("ms"))
                    .and_then(|d| d.parse().ok())
            })
            .collect()
    }

    /// Stops the peer: closes its stdin (it shuts down gracefully on EOF), waits up to 5 s,
    /// then kills it.
    pub async fn stop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill().await;
                }
            }
        }
    }

    /// Stops the peer and starts a fresh one on the same port. Medplum's repository is in
    /// memory: the new peer is empty (tokens it issued are gone too).
    pub async fn restart(&mut self) {
        self.stop().await;
        let fresh = Peer::start_on_port(&self.name, self.port, &self.opts).await;
        *self = fresh;
    }

    /// Mints a token at `/oauth2/token` (client id and secret in the form body).
    pub async fn fetch_token(&self) -> (String, u64) {
        let (id, secret) = self
            .opts
            .client_credentials
            .as_ref()
            .expect("peer started without client_credentials");
        let resp = self
            .http
            .post(self.token_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_encode(&[
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", secret),
            ]))
            .send()
            .await
            .expect("token request reaches the peer");
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{}: token request failed: {body}", self.name);
        let token = body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned();
        let ttl = body["expires_in"].as_u64().unwrap_or(0);
        (token, ttl)
    }

    /// `GET /oauth2/stats`: `{"issued": n, "rejected": n, "active": n}`.
    pub async fn oauth_stats(&self) -> Value {
        let resp = self
            .http
            .get(format!("{}/oauth2/stats", self.origin()))
            .send()
            .await
            .expect("stats request reaches the peer");
        assert_eq!(resp.status().as_u16(), 200, "{}: /oauth2/stats", self.name);
        resp.json().await.expect("stats JSON")
    }

    /// Tokens minted at `/oauth2/token` by anyone but this harness (e.g. by the gateway).
    pub async fn tokens_issued_to_others(&self) -> u64 {
        let issued = self.oauth_stats().await["issued"].as_u64().unwrap_or(0);
        issued - self.harness_tokens_issued().await
    }

    /// Tokens this harness minted for its own requests.
    pub async fn harness_tokens_issued(&self) -> u64 {
        self.auth.lock().await.minted
    }

    /// The bearer token for the harness's own requests, if the peer needs one.
    async fn bearer(&self, refresh: bool) -> Option<String> {
        if let Some(t) = &self.opts.token {
            return Some(t.clone());
        }
        self.opts.client_credentials.as_ref()?;
        let mut auth = self.auth.lock().await;
        if let Some((token, expires)) = &auth.token
            && !refresh
            && Instant::now() < *expires
        {
            return Some(token.clone());
        }
        let (token, ttl) = self.fetch_token().await;
        auth.minted += 1;
        // Renew a little early; a zero TTL yields a token the peer already rejects.
        let life = Duration::from_secs(ttl).saturating_sub(Duration::from_millis(500));
        auth.token = Some((token.clone(), Instant::now() + life));
        Some(token)
    }

    /// Sends a request to `base/<path>` with the harness's authorisation; retries once with a
    /// fresh token after a 401 when using client credentials. Returns status, headers, body
    /// (JSON, or the text as a JSON string, or null when empty).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let url = self.url(path);
        let mut refresh = false;
        loop {
            let mut req = self.http.request(method.clone(), &url);
            if let Some(t) = self.bearer(refresh).await {
                req = req.bearer_auth(t);
            }
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/fhir+json")
                    .body(b.to_string());
            }
            let resp = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("{} {method} {url}: {e}", self.name));
            let status = resp.status().as_u16();
            if status == 401
                && !refresh
                && self.opts.token.is_none()
                && self.opts.client_credentials.is_some()
            {
                refresh = true;
                continue;
            }
            let headers = resp.headers().clone();
            let text = resp.text().await.unwrap_or_default();
            let value = if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            };
            return (status, headers, value);
        }
    }

    fn url(&self, path: &str) -> String {
        let path = path.trim_start_matches('/');
        if path.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{path}", self.base)
        }
    }

    /// `GET base/<query>` (e.g. `Condition?patient=Patient/1`); the Bundle. Panics with the
    /// body on anything but 200.
    pub async fn search(&self, query: &str) -> Value {
        let (status, _, body) = self.request(reqwest::Method::GET, query, None, &[]).await;
        assert_eq!(
            status, 200,
            "{}: GET {query} answered {status}: {body}",
            self.name
        );
        body
    }

    /// The resources of a search (`entry[].resource`).
    pub async fn search_resources(&self, query: &str) -> Vec<Value> {
        let bundle = self.search(query).await;
        bundle["entry"]
            .as_array()
            .map(|entries| entries.iter().map(|e| e["resource"].clone()).collect())
            .unwrap_or_default()
    }

    /// `Bundle.total` of a search (`_summary=count`).
    pub async fn total(&self, query: &str) -> u64 {
        let sep = if query.contains('?') { '&' } else { '?' };
        let bundle = self.search(&format!("{query}{sep}_summary=count")).await;
        bundle["total"].as_u64().expect("Bundle.total")
    }

    /// `GET base/<Type>/<id>`: status and body (the resource, or an OperationOutcome).
    pub async fn read(&self, type_id: &str) -> (u16, Value) {
        let (status, _, body) = self.request(reqwest::Method::GET, type_id, None, &[]).await;
        (status, body)
    }

    /// `GET base/<Type>/<id>/_history`: the history Bundle, newest first. Panics unless 200.
    pub async fn history(&self, type_id: &str) -> Value {
        let path = format!("{}/_history", type_id.trim_end_matches('/'));
        let (status, _, body) = self.request(reqwest::Method::GET, &path, None, &[]).await;
        assert_eq!(
            status, 200,
            "{}: GET {path} answered {status}: {body}",
            self.name
        );
        body
    }

    /// `POST base/<resourceType>`: the created resource (with its server id and meta).
    /// Panics with the body unless 201.
    pub async fn create(&self, resource: &Value) -> Value {
        let rt = resource["resourceType"]
            .as_str()
            .expect("resource has a resourceType");
        let (status, _, body) = self
            .request(reqwest::Method::POST, rt, Some(resource), &[])
            .await;
        assert_eq!(
            status, 201,
            "{}: POST {rt} answered {status}: {body}",
            self.name
        );
        body
    }

    /// `POST base` with a transaction or batch Bundle: status and response body.
    pub async fn transaction(&self, bundle: &Value) -> (u16, Value) {
        let (status, _, body) = self
            .request(reqwest::Method::POST, "", Some(bundle), &[])
            .await;
        (status, body)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // kill_on_drop kills the child; closing stdin first lets it exit on its own.
        drop(self.stdin.take());
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// `application/x-www-form-urlencoded` body.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const FORM: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'*')
        .remove(b'-')
        .remove(b'.')
        .remove(b'_');
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, FORM),
                utf8_percent_encode(v, FORM)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Starts the three sector peers, `gp`, `hospital` and `municipality`, concurrently.
pub async fn start_three(opts: &PeerOptions) -> (Peer, Peer, Peer) {
    tokio::join!(
        Peer::start("gp", opts),
        Peer::start("hospital", opts),
        Peer::start("municipality", opts)
    )
}

/// Runs Lantana FHIR.js (`tests/peers/validate-fhir.mjs`, unknown elements are errors) over
/// the resources; one result per resource, in order:
/// `{"index", "resourceType", "id", "valid", "messages": [{"severity","location","message"}]}`.
/// `valid` counts `error`/`fatal` messages only. Panics only if node cannot run or answers
/// something unreadable.
pub fn validate_with_lantana(resources: &[Value]) -> Vec<Value> {
    if resources.is_empty() {
        return Vec::new();
    }
    ensure_npm_installed();
    let script = peers_dir().join("validate-fhir.mjs");
    let mut command = std::process::Command::new(node_bin());
    command.arg(&script).current_dir(peers_dir());
    let (stdout, stderr, status) = pipe_ndjson(command, resources).unwrap_or_else(|e| {
        panic!(
            "{}",
            node_missing(&format!("`{} {}`: {e}", node_bin(), script.display()))
        )
    });
    // 0: all valid, 1: some invalid, 2: a line was not a JSON object (still reported per line).
    if !matches!(status.code(), Some(0..=2)) {
        panic!("validate-fhir.mjs failed ({status}); stderr:\n{stderr}\nstdout:\n{stdout}");
    }
    let results: Vec<Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("validator output {l:?}: {e}")))
        .collect();
    assert_eq!(
        results.len(),
        resources.len(),
        "validate-fhir.mjs answered {} results for {} resources; stderr:\n{stderr}",
        results.len(),
        resources.len()
    );
    results
}

/// Runs a validator that reads NDJSON on stdin: the resources in, (stdout, stderr, status) out.
fn pipe_ndjson(
    mut command: std::process::Command,
    resources: &[Value],
) -> std::io::Result<(String, String, std::process::ExitStatus)> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut input = String::new();
    for r in resources {
        input.push_str(&r.to_string());
        input.push('\n');
    }
    let mut stdin = child.stdin.take().expect("piped stdin");
    // Write from a thread: the validator may stream its answers while reading, and a large
    // output must not dead-lock against a large input either way.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let mut stderr_pipe = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut stderr = String::new();
        let _ = stderr_pipe.read_to_string(&mut stderr);
        stderr
    });
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut stdout)?;
    let status = child.wait()?;
    let stderr = reader.join().unwrap_or_default();
    writer
        .join()
        .expect("writer thread")
        .unwrap_or_else(|e| panic!("writing to the validator: {e}; stderr:\n{stderr}"));
    Ok((stdout, stderr, status))
}

/// The `python3` executable (`CAREBRIDGE_PYTHON` overrides).
pub fn python_bin() -> String {
    std::env::var("CAREBRIDGE_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Validates each resource with PyPI `fhir.resources` 5.1.1 (`tests/peers/validate-fhir-resources.py`,
/// installed from `tests/peers/requirements.txt`): one result per resource, in order,
/// `{"index", "valid", "error"}`.
pub fn validate_with_fhir_resources(resources: &[Value]) -> Vec<Value> {
    if resources.is_empty() {
        return Vec::new();
    }
    let script = peers_dir().join("validate-fhir-resources.py");
    let mut command = std::process::Command::new(python_bin());
    command.arg(&script);
    let (stdout, stderr, status) = pipe_ndjson(command, resources).unwrap_or_else(|e| {
        panic!(
            "`{} {}` could not run ({e}): install Python 3 and `pip install -r \
             tests/peers/requirements.txt`",
            python_bin(),
            script.display()
        )
    });
    assert!(
        status.success(),
        "validate-fhir-resources.py failed ({status}); stderr:\n{stderr}"
    );
    let results: Vec<Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("validator output {l:?}: {e}")))
        .collect();
    assert_eq!(results.len(), resources.len(), "stderr:\n{stderr}");
    results
}

/// The Lantana results of the resources that are not valid (empty when all are).
pub fn lantana_invalid(resources: &[Value]) -> Vec<Value> {
    validate_with_lantana(resources)
        .into_iter()
        .filter(|r| r["valid"] != json!(true))
        .collect()
}

/// The `error`/`fatal` messages of one Lantana result, as `location: message` lines.
pub fn lantana_errors(result: &Value) -> Vec<String> {
    result["messages"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| m["severity"] == "error" || m["severity"] == "fatal")
                .map(|m| {
                    format!(
                        "{}: {}",
                        m["location"].as_str().unwrap_or(""),
                        m["message"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
