//! Recovering without an operator: a flood of unauthenticated requests costs (almost) nothing;
//! the real binary killed during delivery delivers the interrupted entries within seconds of
//! its restart; a long outage of a sector loses nothing and catches up soon after it returns;
//! `deliveries resync` refills a sector restored empty; and a storm of `kill -9` on SQLite and
//! PostgreSQL loses no acknowledged write, applies no version twice at the target and leaves an
//! audit log that verifies. The sectors are real FHIR servers (Medplum's router from
//! `tests/peers/`); the fault proxy sits in front of one only to inject the outage.

use crate::common;

use crate::common::fault::{Fault, FaultProxy, Matcher};
use crate::common::peers::{Peer, PeerOptions};
use crate::common::records::{ICPC2, condition, patient, transaction};
use crate::common::server::{Serve, Server};
use crate::common::{Backend, TestApp, conf, copy_at, repo, wait_for};
use carebridge::store::{OutboxEntry, SqlStore};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn kind_and_profile(id: &str) -> (&'static str, &'static str) {
    match id {
        "gp" => ("general-practice", "dk-gp"),
        "hospital" => ("hospital", "dk-hospital"),
        _ => ("municipality", "dk-municipality"),
    }
}

/// The three Danish sectors (those in `served` with their base URL, in push mode) and the
/// given `[server]` and `[exchange]` lines.
fn config(store_url: &str, served: &[(&str, String)], server: &str, exchange: &str) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_second = 0\n{server}\n\n\
         [store]\nurl = \"{store_url}\"\nmax_connections = 4\n\n\
         [fhir]\nprofiles_dir = \"{}\"\n\n[exchange]\n{exchange}\n",
        repo().join("fhir-profiles").display()
    );
    text.push_str("\n[[sectors]]\nid = \"lab\"\nname = \"Laboratory\"\nkind = \"hospital\"\n");
    for id in ["gp", "hospital", "municipality"] {
        let (kind, profile) = kind_and_profile(id);
        text.push_str(&format!(
            "\n[[sectors]]\nid = \"{id}\"\nname = \"{id}\"\nkind = \"{kind}\"\nprofile = \"{profile}\"\n"
        ));
        if let Some((_, base)) = served.iter().find(|s| s.0 == id) {
            text.push_str(&format!(
                "base_url = \"{base}\"\nmode = \"push\"\njoin_care_on_patient = true\n"
            ));
        }
    }
    text
}

/// A Condition of general practice carrying `marker` (in the extension every copy keeps).
fn marked(id: &str, patient: &str, marker: &str) -> Value {
    let mut c = condition(id, patient, ICPC2, "K77", "Hjerteinsufficiens");
    c["extension"][0]["valueString"] = json!(marker);
    c
}

fn marker_of(r: &Value) -> String {
    r["extension"][0]["valueString"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn outbox(store: &dyn carebridge::store::Store) -> Vec<OutboxEntry> {
    common::outbox(store, None).await
}

/// Waits until every entry of the outbox is delivered (and there are `at_least` of them).
async fn all_delivered(store: &dyn carebridge::store::Store, at_least: usize, secs: u64) {
    wait_for("every delivery", secs, || async {
        let all = outbox(store).await;
        (all.len() >= at_least && all.iter().all(|e| e.state.code() == "delivered")).then_some(())
    })
    .await;
}

/// The versions of a resource in a history Bundle, oldest first, as their markers.
fn markers(history: &Value) -> Vec<String> {
    let mut out: Vec<String> = history["entry"]
        .as_array()
        .map(|a| a.iter().map(|e| marker_of(&e["resource"])).collect())
        .unwrap_or_default();
    out.reverse();
    out
}

// ---------------------------------------------------------------------------------------------
// The flood
// ---------------------------------------------------------------------------------------------

/// The bytes of a SQLite store on disk (the file and its WAL).
fn store_bytes(dir: &Path) -> u64 {
    ["carebridge.db", "carebridge.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// `n` requests without a token carrying `request_id`, 16 at a time; their statuses.
async fn unauthenticated(app: &TestApp, n: usize, request_id: &str) -> Vec<(u16, String)> {
    let paths = ["/gp/Condition", "/Patient", "/gp/metadata", "/AuditEvent"];
    let mut out = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let calls = chunk.iter().map(|i| {
            let req = app
                .http
                .get(format!("{}{}", app.base, paths[i % paths.len()]))
                .header("x-request-id", request_id);
            async move {
                let resp = req.send().await.expect("the gateway answers");
                let echoed = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
                (resp.status().as_u16(), echoed)
            }
        });
        out.extend(futures_util::future::join_all(calls).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_without_tokens_grows_the_store_by_under_1_mb() {
    // The per-address limit off: every request reaches authentication and is refused.
    let app = TestApp::spawn_with(Backend::Sqlite, "address_rate_limit_per_second = 0").await;
    let huge = "x".repeat(60 * 1024);
    app.app_gateway.flush_refusals(true).await;
    let before = store_bytes(app.dir.path());
    let started = Instant::now();
    let answers = unauthenticated(&app, 2_000, &huge).await;
    let took = started.elapsed();
    app.app_gateway.flush_refusals(true).await;
    let grown = store_bytes(app.dir.path()).saturating_sub(before);
    assert!(answers.iter().all(|(s, _)| *s == 401), "all refused");
    assert!(
        answers.iter().all(|(_, id)| id.len() <= 64),
        "the gateway's own id replaced the 60 kB one"
    );
    eprintln!(
        "flood: 2,000 unauthenticated requests with a 60 kB x-request-id in {:.2} s; the store grew by {grown} bytes",
        took.as_secs_f64()
    );
    assert!(grown < 1_000_000, "the store grew by {grown} bytes");

    // The refusals are in the log, counted: one row per address and minute.
    let (s, log) = app
        .get("auditor", "/AuditEvent?outcome=4&_count=1000")
        .await;
    assert_eq!(s, 200, "{log}");
    let rows: Vec<String> = log["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["subtype"][0]["code"] == "authenticate")
        .map(|e| e["resource"]["outcomeDesc"].as_str().unwrap().to_owned())
        .collect();
    let counted: u64 = rows
        .iter()
        .map(|d| d.split(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, 2_000, "{rows:?}");
    assert!(rows.len() <= 2, "{rows:?}");
    assert!(
        rows.iter().all(|d| d.contains("from 127.0.0.1")),
        "{rows:?}"
    );
    assert!(!log.to_string().contains(&huge[..100]));

    // A plain request id is kept.
    let resp = app
        .http
        .get(format!("{}/metadata", app.base))
        .header("x-request-id", "trace-42.a_b")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-42.a_b");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_over_its_rate_is_answered_429_before_authentication() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        "address_rate_limit_per_second = 5\naddress_rate_limit_burst = 5",
    )
    .await;
    let answers = unauthenticated(&app, 40, "flood").await;
    let throttled = answers.iter().filter(|(s, _)| *s == 429).count();
    assert!(throttled >= 20, "{throttled} of 40 throttled");
    assert!(answers.iter().all(|(s, _)| *s == 401 || *s == 429));
    let resp = app
        .http
        .get(format!("{}/gp/metadata", app.base))
        .bearer_auth(app.token("gp"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429, "the address is over its rate");
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait >= 1);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The real binary, killed
// ---------------------------------------------------------------------------------------------

/// The real binary on a configuration file, restarted at will, with the tokens of its clients.
struct Binary {
    config: PathBuf,
    server: Option<Server>,
    base: String,
    tokens: std::collections::HashMap<String, String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Binary {
    fn write(dir: &Path, text: String) -> Binary {
        let (clients, tokens) = conf::mint(&[
            ("gp", "sector:gp"),
            ("hospital", "sector:hospital"),
            ("auditor", "auditor"),
        ]);
        let config = dir.join("carebridge.toml");
        std::fs::write(&config, text + &clients).unwrap();
        Binary {
            config,
            server: None,
            base: String::new(),
            tokens,
            log: Arc::default(),
        }
    }

    fn start(&mut self) {
        let log = self.log.clone();
        let server = Serve::new(&self.config)
            .rust_log("warn,carebridge=info")
            .on_line(move |line| {
                if line.contains(" WARN ") {
                    log.lock().unwrap().push(line.to_owned());
                }
            })
            .start()
            .expect("the binary starts");
        self.base = server.base.clone();
        self.server = Some(server);
    }

    /// SIGKILL, and waits for the process to end.
    fn kill(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
    }

    async fn send(&self, who: &str, method: reqwest::Method, path: &str, body: &Value) -> u16 {
        let http = carebridge::outbound::client().unwrap();
        match http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.tokens[who])
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// The patient known at the hospital (its server and the gateway) and in general
    /// practice; returns the general practice's id.
    async fn register(&self, hospital: &Peer, cpr: &str) -> String {
        let created = hospital.create(&patient(cpr, "Rahimi")).await;
        let hid = created["id"].as_str().unwrap().to_owned();
        let mut hp = patient(cpr, "Rahimi");
        hp["id"] = json!(hid);
        let put = reqwest::Method::PUT;
        let s = self
            .send(
                "hospital",
                put.clone(),
                &format!("/hospital/Patient/{hid}"),
                &hp,
            )
            .await;
        assert!(s == 201 || s == 200, "{s}");
        let mut gp = patient(cpr, "Rahimi");
        gp["id"] = json!("gp-p1");
        let s = self.send("gp", put, "/gp/Patient/gp-p1", &gp).await;
        assert!(s == 201 || s == 200, "{s}");
        "gp-p1".into()
    }

    /// `carebridge <args> --config <config>`: its exit status and standard output.
    fn cli(&self, args: &[&str]) -> (bool, String) {
        cli(&self.config, args)
    }
}

/// Runs the real binary's command line on `config`.
fn cli(config: &Path, args: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_carebridge"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CAREBRIDGE_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .args(args)
        .arg("--config")
        .arg(config)
        .current_dir(repo())
        .output()
        .expect("the command line runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_during_delivery_the_restarted_process_delivers_within_10_s() {
    let hospital = Peer::start("hospital", &PeerOptions::default()).await;
    let proxy = FaultProxy::start(&hospital.base).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("carebridge.db").display());
    // Leases of two minutes: only taking them back at start delivers within 10 s.
    let exchange = "lease_secs = 120\nidle_poll_ms = 100\nretry_initial_ms = 100\n\
                    retry_max_ms = 1000\nrequest_timeout_ms = 60000\n";
    let text = config(&url, &[("hospital", proxy.base.clone())], "", exchange);
    let mut gw = Binary::write(dir.path(), text);
    gw.start();
    let pid = gw.register(&hospital, "1503570721").await;
    // The hospital hangs: the first delivery is in flight, the batch leased, when the kill
    // comes.
    proxy.set_always(Matcher::Method("POST"), Some(Fault::Hang));
    let conditions: Vec<Value> = (0..5)
        .map(|i| marked(&format!("kd-{i}"), &pid, "v1"))
        .collect();
    let s = gw
        .send(
            "gp",
            reqwest::Method::POST,
            "/gp",
            &transaction(&conditions),
        )
        .await;
    assert_eq!(s, 200);
    wait_for("a delivery in flight", 30, || async {
        (!proxy.seen().is_empty()).then_some(())
    })
    .await;
    gw.kill();
    proxy.set_always(Matcher::Method("POST"), None);

    let restarted = Instant::now();
    gw.start();
    let store = SqlStore::connect(&url, 2).await.unwrap();
    all_delivered(&store, 5, 10).await;
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(10), "{took:?}");
    eprintln!(
        "kill during delivery: the interrupted entries delivered {:.2} s after the restart began",
        took.as_secs_f64()
    );
    for i in 0..5 {
        assert!(
            copy_at(&hospital, "gp", "Condition", &format!("kd-{i}"))
                .await
                .is_some()
        );
    }
    let log = gw.log.lock().unwrap().join("\n");
    assert!(
        log.contains("took back") && log.contains("entries=5"),
        "a warning says what was taken back: {log}"
    );
    assert!(
        !log.contains("Rahimi") && !log.contains("1503570721"),
        "{log}"
    );
    store.close().await;
    gw.kill();
}

/// Another process's lease on the entry of `gp/Condition/<id>`, for `secs` from now (as a
/// replica on another host that died leaves it).
async fn lease_elsewhere(url: &str, id: &str, secs: i64) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let gid = carebridge::ids::gateway_id("gp", "Condition", id);
    let until = carebridge::fhir::time::now_us() + secs * 1_000_000;
    let done = sqlx::query(
        "UPDATE outbox SET lease_owner = 'other-host/4242/dead/beef', lease_until_us = $1 \
         WHERE gid = $2 AND state = 'pending'",
    )
    .bind(until)
    .bind(gid)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(done.rows_affected(), 1);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_of_a_dead_replica_elsewhere_is_taken_over_when_it_expires() {
    let hospital = Peer::start("hospital", &PeerOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("carebridge.db").display());
    let served = [("hospital", hospital.base.clone())];
    // First without workers: the entry waits in the outbox, then a replica on another host
    // leases it and dies.
    let mut gw = Binary::write(dir.path(), config(&url, &served, "", "enabled = false\n"));
    gw.start();
    let pid = gw.register(&hospital, "0101010101").await;
    let v1 = transaction(&[marked("exp-1", &pid, "v1")]);
    assert_eq!(gw.send("gp", reqwest::Method::POST, "/gp", &v1).await, 200);
    gw.kill();
    lease_elsewhere(&url, "exp-1", 4).await;
    let leased = Instant::now();
    let exchange = "lease_secs = 2\nidle_poll_ms = 100\nretry_initial_ms = 100\n";
    let mut gw = Binary {
        log: Arc::default(),
        ..Binary::write(dir.path(), config(&url, &served, "", exchange))
    };
    gw.start();
    // A later version waits behind the leased one, and not for long.
    let v2 = transaction(&[marked("exp-1", &pid, "v2")]);
    assert_eq!(gw.send("gp", reqwest::Method::POST, "/gp", &v2).await, 200);
    let store = SqlStore::connect(&url, 2).await.unwrap();
    all_delivered(&store, 2, 20).await;
    let took = leased.elapsed();
    eprintln!(
        "expired lease: taken over {:.2} s after a 4 s lease was taken",
        took.as_secs_f64()
    );
    assert!(
        took >= Duration::from_secs(3),
        "the lease was honoured: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let copy = copy_at(&hospital, "gp", "Condition", "exp-1")
        .await
        .unwrap();
    let history = hospital
        .history(&format!("Condition/{}", copy["id"].as_str().unwrap()))
        .await;
    assert_eq!(markers(&history), ["v1", "v2"], "in order, once each");
    let log = gw.log.lock().unwrap().join("\n");
    assert!(
        !log.contains("took back"),
        "another host's lease is left to expire: {log}"
    );
    store.close().await;
    gw.kill();
}

// ---------------------------------------------------------------------------------------------
// An outage, and a sector restored empty
// ---------------------------------------------------------------------------------------------

/// The in-process gateway delivering to `served`, with its patient registered at the
/// hospital's own server and in general practice; returns the general practice's id.
async fn gateway_with_patient(
    served: &[(&str, String)],
    hospital: &Peer,
    exchange: &str,
) -> (TestApp, String) {
    let app = TestApp::spawn_config(Backend::Sqlite, |url| config(url, served, "", exchange)).await;
    let cpr = "0205600643";
    let created = hospital.create(&patient(cpr, "Mortensen")).await;
    let hid = created["id"].as_str().unwrap().to_owned();
    let mut hp = patient(cpr, "Mortensen");
    hp["id"] = json!(hid);
    let (s, v, _) = app
        .put("hospital", &format!("/hospital/Patient/{hid}"), &hp)
        .await;
    assert!(s == 201 || s == 200, "{s} {v}");
    let mut gp = patient(cpr, "Mortensen");
    gp["id"] = json!("gp-p1");
    let (s, v, _) = app.put("gp", "/gp/Patient/gp-p1", &gp).await;
    assert!(s == 201 || s == 200, "{s} {v}");
    (app, "gp-p1".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_loses_nothing_and_catches_up_when_the_sector_returns() {
    let hospital = Peer::start("hospital", &PeerOptions::default()).await;
    let proxy = FaultProxy::start(&hospital.base).await;
    // Back-off of 20–200 ms: the outage below is some 40 probes, four times the 10 attempts
    // after which an entry used to be given up (7 to 8 minutes at the default back-off).
    let exchange = "retry_initial_ms = 20\nretry_max_ms = 200\nidle_poll_ms = 50\n\
                    request_timeout_ms = 2000\n";
    let (app, pid) =
        gateway_with_patient(&[("hospital", proxy.base.clone())], &hospital, exchange).await;
    let store = app.app_gateway.store().clone();
    proxy.set_always(Matcher::Any, Some(Fault::Status(503)));
    for i in 0..10 {
        let c = marked(&format!("out-{i}"), &pid, "v1");
        let (s, v, _) = app.post("gp", "/gp", &transaction(&[c])).await;
        assert_eq!(s, 200, "{v}");
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.set_always(Matcher::Any, Some(Fault::Drop));
    tokio::time::sleep(Duration::from_secs(4)).await;

    let during = outbox(store.as_ref()).await;
    assert_eq!(during.len(), 10);
    assert!(
        during.iter().all(|e| e.state.code() == "pending"),
        "{during:#?}"
    );
    let probed: Vec<&OutboxEntry> = during.iter().filter(|e| e.attempts > 0).collect();
    let attempts: i64 = during.iter().map(|e| e.attempts).sum();
    eprintln!(
        "outage: {attempts} attempts in 8 s by {} probing entries; {} requests reached the proxy",
        probed.len(),
        proxy.seen().len()
    );
    assert!(attempts > 20, "{attempts} attempts");
    assert!(
        probed.len() <= 2,
        "one entry probes, the others wait: {during:#?}"
    );

    proxy.set_always(Matcher::Any, None);
    let back = Instant::now();
    all_delivered(store.as_ref(), 10, 30).await;
    let caught_up = back.elapsed();
    eprintln!(
        "outage: caught up {:.2} s after the sector returned",
        caught_up.as_secs_f64()
    );
    assert!(caught_up < Duration::from_secs(10), "{caught_up:?}");
    for i in 0..10 {
        assert!(
            copy_at(&hospital, "gp", "Condition", &format!("out-{i}"))
                .await
                .is_some()
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_refills_a_sector_restored_empty_and_leaves_a_full_one_alone() {
    let mut hospital = Peer::start("hospital", &PeerOptions::default()).await;
    let exchange = "retry_initial_ms = 100\nretry_max_ms = 1000\nidle_poll_ms = 100\n\
                    request_timeout_ms = 5000\n";
    let (app, pid) =
        gateway_with_patient(&[("hospital", hospital.base.clone())], &hospital, exchange).await;
    let store = app.app_gateway.store().clone();
    let ids: Vec<String> = (0..4).map(|i| format!("rs-{i}")).collect();
    let bundle = transaction(
        &ids.iter()
            .map(|id| marked(id, &pid, "v1"))
            .collect::<Vec<_>>(),
    );
    let (s, v, _) = app.post("gp", "/gp", &bundle).await;
    assert_eq!(s, 200, "{v}");
    all_delivered(store.as_ref(), 4, 30).await;

    // The hospital's server comes back empty (Medplum keeps nothing).
    hospital.restart().await;
    assert!(
        copy_at(&hospital, "gp", "Condition", "rs-0")
            .await
            .is_none()
    );
    let config = app.dir.path().join("carebridge.toml");
    let (ok, out) = cli(&config, &["deliveries", "resync", "--target", "hospital"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("resync hospital: 4 resources, 4 queued again"),
        "{out}"
    );
    all_delivered(store.as_ref(), 4, 30).await;
    let mut copies = BTreeMap::new();
    for id in &ids {
        let copy = copy_at(&hospital, "gp", "Condition", id)
            .await
            .unwrap_or_else(|| panic!("{id} refilled"));
        copies.insert(id.clone(), copy["id"].as_str().unwrap().to_owned());
    }

    // Again, with nothing lost (one patient, since a date): the copies are read, nothing sent.
    let gateway_patient = patient_id(&app).await;
    let (ok, out) = cli(
        &config,
        &[
            "deliveries",
            "resync",
            "--target",
            "hospital",
            "--patient",
            &gateway_patient,
            "--since",
            "2020-01-01",
        ],
    );
    assert!(ok && out.contains("4 resources, 4 queued again"), "{out}");
    all_delivered(store.as_ref(), 4, 30).await;
    for (id, tid) in &copies {
        let history = hospital.history(&format!("Condition/{tid}")).await;
        assert_eq!(
            markers(&history),
            ["v1"],
            "{id}: one version at the hospital"
        );
    }
    let (ok, out) = cli(&config, &["deliveries", "resync", "--target", "lab"]);
    assert!(!ok && out.contains("--target lab"), "{out}");
    let (_, log) = app.get("auditor", "/AuditEvent?_count=1000").await;
    assert_eq!(log.to_string().matches("resync of hospital").count(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_whose_answer_was_lost_adds_no_version_at_the_target() {
    let hospital = Peer::start("hospital", &PeerOptions::default()).await;
    let proxy = FaultProxy::start(&hospital.base).await;
    let exchange = "retry_initial_ms = 50\nretry_max_ms = 200\nidle_poll_ms = 50\n\
                    request_timeout_ms = 5000\n";
    let (app, pid) =
        gateway_with_patient(&[("hospital", proxy.base.clone())], &hospital, exchange).await;
    let store = app.app_gateway.store().clone();
    let (s, v, _) = app
        .post("gp", "/gp", &transaction(&[marked("lost-1", &pid, "v1")]))
        .await;
    assert_eq!(s, 200, "{v}");
    all_delivered(store.as_ref(), 1, 30).await;
    // The update reaches the hospital, its answer does not (as when the process dies between
    // sending and recording).
    proxy.push(Matcher::Method("PUT"), Fault::DropAfterForward, 1);
    let (s, v, _) = app
        .post("gp", "/gp", &transaction(&[marked("lost-1", &pid, "v2")]))
        .await;
    assert_eq!(s, 200, "{v}");
    all_delivered(store.as_ref(), 2, 30).await;
    let copy = copy_at(&hospital, "gp", "Condition", "lost-1")
        .await
        .unwrap();
    let history = hospital
        .history(&format!("Condition/{}", copy["id"].as_str().unwrap()))
        .await;
    assert_eq!(markers(&history), ["v1", "v2"], "the update applied once");
    let puts: Vec<u16> = proxy
        .seen()
        .into_iter()
        .filter(|(m, _, _)| m == "PUT")
        .map(|(_, _, s)| s)
        .collect();
    assert_eq!(puts, [0, 412], "re-sent with If-Match, refused, read back");
    app.stop().await;
}

/// The gateway patient of the test's patient.
async fn patient_id(app: &TestApp) -> String {
    let gid = carebridge::ids::gateway_id("gp", "Condition", "rs-0");
    outbox(app.app_gateway.store().as_ref())
        .await
        .into_iter()
        .find(|e| e.gid == gid)
        .and_then(|e| e.patient_id)
        .expect("the Condition's gateway patient")
}

// ---------------------------------------------------------------------------------------------
// The kill -9 storm
// ---------------------------------------------------------------------------------------------

/// What the client was told: every write answered 2xx, as (resource id, marker).
type Ledger = Arc<Mutex<Vec<(String, String)>>>;

/// Writes Conditions through whichever process runs (`base`) until `stop`: new ones, and
/// every fourth an update of an acknowledged one; records what was acknowledged.
async fn write_until(
    base: Arc<Mutex<String>>,
    token: String,
    pid: String,
    ledger: Ledger,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let http = carebridge::outbound::client().unwrap();
    let mut n = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let acked = ledger.lock().unwrap().len();
        let id = if n.is_multiple_of(4) && acked > 0 {
            ledger.lock().unwrap()[n % acked].0.clone()
        } else {
            format!("st-{n}")
        };
        let marker = format!("m-{n}");
        let url = format!("{}/gp/Condition/{id}", base.lock().unwrap());
        let sent = http
            .put(url)
            .bearer_auth(&token)
            .header("content-type", "application/fhir+json")
            .body(marked(&id, &pid, &marker).to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => ledger.lock().unwrap().push((id, marker)),
            Ok(r) => assert!(
                r.status().as_u16() >= 500,
                "a write refused: {}",
                r.status()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(30)).await,
        }
    }
}

/// Checks the ledger against the gateway and the hospital: every acknowledged write is a
/// version at the gateway, no version is there twice, and the hospital's copy of each
/// resource holds each version at most once, the last one last.
async fn check_ledger(gw: &Binary, hospital: &Peer, ledger: &[(String, String)]) -> usize {
    let http = carebridge::outbound::client().unwrap();
    let mut by_id: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
    for (id, marker) in ledger {
        by_id.entry(id).or_default().insert(marker);
    }
    let mut versions_at_target = 0;
    for (id, acked) in &by_id {
        let history: Value = http
            .get(format!("{}/gp/Condition/{id}/_history", gw.base))
            .bearer_auth(&gw.tokens["gp"])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let stored = markers(&history);
        let distinct: HashSet<&String> = stored.iter().collect();
        assert_eq!(
            distinct.len(),
            stored.len(),
            "{id}: a version stored twice: {stored:?}"
        );
        for m in acked {
            assert!(
                stored.iter().any(|s| s == m),
                "{id}: acknowledged {m} lost: {stored:?}"
            );
        }
        let copy = copy_at(hospital, "gp", "Condition", id)
            .await
            .unwrap_or_else(|| panic!("{id} never reached the hospital"));
        let at_target = markers(
            &hospital
                .history(&format!("Condition/{}", copy["id"].as_str().unwrap()))
                .await,
        );
        let distinct: HashSet<&String> = at_target.iter().collect();
        assert_eq!(
            distinct.len(),
            at_target.len(),
            "{id}: a version applied twice at the hospital: {at_target:?}"
        );
        assert_eq!(
            at_target.last(),
            stored.last(),
            "{id}: the hospital holds the last version"
        );
        versions_at_target += at_target.len();
    }
    versions_at_target
}

/// At least `kills` times: the binary killed with SIGKILL while a client writes and the
/// workers deliver to the hospital, then started again.
async fn storm(backend: Backend, kills: usize) {
    let hospital = Peer::start("hospital", &PeerOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (url, pg) = match backend {
        Backend::Sqlite => (
            format!("sqlite://{}", dir.path().join("carebridge.db").display()),
            None,
        ),
        Backend::Postgres => {
            let (url, name) = common::fresh_pg_database().await;
            (url, Some(name))
        }
    };
    let exchange = "retry_initial_ms = 50\nretry_max_ms = 500\nidle_poll_ms = 50\n\
                    request_timeout_ms = 5000\nlease_secs = 3\nbatch = 4\n";
    let mut gw = Binary::write(
        dir.path(),
        config(&url, &[("hospital", hospital.base.clone())], "", exchange),
    );
    gw.start();
    let pid = gw.register(&hospital, "1901420116").await;
    let base = Arc::new(Mutex::new(gw.base.clone()));
    let ledger: Ledger = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn(write_until(
        base.clone(),
        gw.tokens["gp"].clone(),
        pid,
        ledger.clone(),
        stop.clone(),
    ));
    let started = Instant::now();
    for k in 0..kills {
        // Each kill comes while the client writes and the workers deliver: after three more
        // acknowledged writes, at a varying moment.
        let acked = ledger.lock().unwrap().len();
        wait_for("writes before the kill", 60, || async {
            (ledger.lock().unwrap().len() >= acked + 3).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(97 * (k as u64 % 5))).await;
        gw.kill();
        gw.start();
        *base.lock().unwrap() = gw.base.clone();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let ledger = ledger.lock().unwrap().clone();
    let store = SqlStore::connect(&url, 2).await.unwrap();
    all_delivered(&store, 1, 120).await;
    let versions = check_ledger(&gw, &hospital, &ledger).await;
    let (ok, out) = gw.cli(&["audit", "verify"]);
    assert!(ok, "audit verify: {out}");
    eprintln!(
        "kill storm ({backend:?}): {kills} kills in {:.1} s, {} acknowledged writes, none lost, {versions} versions at the hospital, none twice; {}",
        started.elapsed().as_secs_f64(),
        ledger.len(),
        out.trim()
    );
    assert!(
        ledger.len() >= kills * 3,
        "the client wrote throughout: {}",
        ledger.len()
    );
    store.close().await;
    gw.kill();
    if let Some(db) = pg {
        common::drop_pg_database(&db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_storm_on_sqlite_loses_nothing_and_applies_nothing_twice() {
    storm(Backend::Sqlite, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_storm_on_postgresql_loses_nothing_and_applies_nothing_twice() {
    storm(Backend::Postgres, 10).await;
}
