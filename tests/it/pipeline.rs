//! Pipelined delivery (`workers::deliver`): while one entry's request is in flight the next
//! entry is mapped and the outcomes before it are recorded, those answered meanwhile in one
//! transaction. The real binary delivers to a real FHIR server (Medplum's router from
//! `tests/peers/`); the fault proxy sits in front of it only to hold one request back, and the
//! test holds SQLite's write lock to keep answers from being recorded. Shown: versions of one
//! resource arrive in order and a resource referencing another in the same batch is mapped after
//! that one's outcome is recorded (never deferred); outcomes answered while the store was busy
//! are recorded together, each with its own audit row; a kill between the answers and their
//! records sends them again without a second copy or version at the target.

use crate::common;

use crate::common::fault::{Fault, FaultProxy, Matcher};
use crate::common::peers::{Peer, PeerOptions};
use crate::common::records::{ICPC2, condition, patient, transaction};
use crate::common::server::{Serve, Server};
use crate::common::{conf, copy_at, repo, wait_for};
use carebridge::store::{OutboxEntry, SqlStore};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The log line the recorder writes after each transaction (at debug level).
const RECORDED: &str = "delivery outcomes recorded in one transaction";

/// General practice and the municipality without a server, the hospital (`hospital_base`) in
/// push mode; fast retries.
fn config(store_url: &str, hospital_base: &str) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_second = 0\n\n\
         [store]\nurl = \"{store_url}\"\nmax_connections = 4\n\n\
         [fhir]\nprofiles_dir = \"{}\"\n\n[exchange]\nidle_poll_ms = 100\nretry_initial_ms = 100\n\
         retry_max_ms = 1000\nrequest_timeout_ms = 20000\n",
        repo().join("fhir-profiles").display()
    );
    for (id, kind, profile) in [
        ("gp", "general-practice", "dk-gp"),
        ("hospital", "hospital", "dk-hospital"),
        ("municipality", "municipality", "dk-municipality"),
    ] {
        text.push_str(&format!(
            "\n[[sectors]]\nid = \"{id}\"\nname = \"{id}\"\nkind = \"{kind}\"\nprofile = \"{profile}\"\n"
        ));
        if id == "hospital" {
            text.push_str(&format!(
                "base_url = \"{hospital_base}\"\nmode = \"push\"\njoin_care_on_patient = true\n"
            ));
        }
    }
    text
}

/// The real binary on a SQLite file, with the delivery worker's log kept.
struct Gateway {
    dir: tempfile::TempDir,
    config: PathBuf,
    server: Option<Server>,
    base: String,
    tokens: HashMap<String, String>,
    /// Warnings and the recorder's lines.
    log: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    fn new(hospital_base: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("carebridge.db").display());
        let (clients, tokens) = conf::mint(&[("gp", "sector:gp"), ("hospital", "sector:hospital")]);
        let config = dir.path().join("carebridge.toml");
        std::fs::write(&config, config_text(&url, hospital_base, &clients)).unwrap();
        let mut gw = Gateway {
            dir,
            config,
            server: None,
            base: String::new(),
            tokens,
            log: Arc::default(),
        };
        gw.start();
        gw
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("carebridge.db")
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.db().display())
    }

    fn start(&mut self) {
        let log = self.log.clone();
        let server = Serve::new(&self.config)
            .rust_log("warn,carebridge=info,carebridge::workers::deliver=debug")
            .on_line(move |line| {
                if line.contains(" WARN ") || line.contains(RECORDED) {
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

    async fn put(&self, who: &str, path: &str, body: &Value) -> u16 {
        self.send(who, reqwest::Method::PUT, path, body).await
    }

    async fn push(&self, resources: &[Value]) {
        let s = self
            .send("gp", reqwest::Method::POST, "/gp", &transaction(resources))
            .await;
        assert_eq!(s, 200, "the push is acknowledged");
    }

    async fn send(&self, who: &str, method: reqwest::Method, path: &str, body: &Value) -> u16 {
        let http = carebridge::outbound::client().unwrap();
        http.request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.tokens[who])
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// The patient at the hospital's own server and in the gateway for the hospital and
    /// general practice; returns general practice's id.
    async fn register(&self, hospital: &Peer) -> String {
        let cpr = "2304671138";
        let created = hospital.create(&patient(cpr, "Lindqvist")).await;
        let hid = created["id"].as_str().unwrap().to_owned();
        let mut hp = patient(cpr, "Lindqvist");
        hp["id"] = json!(hid);
        let s = self
            .put("hospital", &format!("/hospital/Patient/{hid}"), &hp)
            .await;
        assert!(s == 200 || s == 201, "{s}");
        let mut gp = patient(cpr, "Lindqvist");
        gp["id"] = json!("gp-p1");
        let s = self.put("gp", "/gp/Patient/gp-p1", &gp).await;
        assert!(s == 200 || s == 201, "{s}");
        "gp-p1".into()
    }

    /// [`Gateway::groups`] once they hold `outcomes` in all: a group's log line follows its commit,
    /// so the rows can be in the store before the line is read.
    async fn groups_of(&self, outcomes: usize) -> Vec<usize> {
        wait_for("every group's log line", 10, || async {
            let g = self.groups();
            (g.iter().sum::<usize>() >= outcomes).then_some(g)
        })
        .await
    }

    /// How many outcomes each recording transaction held, in order.
    fn groups(&self) -> Vec<usize> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(RECORDED))
            .filter_map(|l| {
                l.split("outcomes=")
                    .nth(1)?
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }

    fn warnings(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config_text(url: &str, hospital_base: &str, clients: &str) -> String {
    config(url, hospital_base) + clients
}

/// A Condition of general practice carrying `marker` in the extension every copy keeps.
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

/// The versions the hospital holds of general practice's `rtype/id`, oldest first, as markers.
async fn versions_at(hospital: &Peer, rtype: &str, id: &str) -> Vec<String> {
    let copy = copy_at(hospital, "gp", rtype, id)
        .await
        .unwrap_or_else(|| panic!("{rtype}/{id} missing at the hospital"));
    let history = hospital
        .history(&format!("{rtype}/{}", copy["id"].as_str().unwrap()))
        .await;
    let mut out: Vec<String> = history["entry"]
        .as_array()
        .map(|a| a.iter().map(|e| marker_of(&e["resource"])).collect())
        .unwrap_or_default();
    out.reverse();
    out
}

/// The outbox entries of records (a Patient may be delivered too, before them).
async fn outbox(store: &SqlStore) -> Vec<OutboxEntry> {
    let mut all = common::outbox(store, None).await;
    all.retain(|e| e.rtype != "Patient");
    all
}

async fn all_delivered(store: &SqlStore, n: usize, secs: u64) -> Vec<OutboxEntry> {
    wait_for("every delivery recorded", secs, || async {
        let all = outbox(store).await;
        (all.len() >= n && all.iter().all(|e| e.state.code() == "delivered")).then_some(all)
    })
    .await
}

/// The entry of general practice's `rtype/id`, version `version`.
fn entry<'a>(all: &'a [OutboxEntry], rtype: &str, id: &str, version: i64) -> &'a OutboxEntry {
    let gid = carebridge::ids::gateway_id("gp", rtype, id);
    all.iter()
        .find(|e| e.gid == gid && e.version == version)
        .unwrap_or_else(|| panic!("no entry for {rtype}/{id} version {version}"))
}

/// SQLite's write lock, held from outside the gateway (as another writer would): the gateway's
/// write transactions wait for it (its `busy_timeout` is 30 s), its reads do not (WAL).
struct WriteLock {
    conn: sqlx::pool::PoolConnection<sqlx::Any>,
    pool: sqlx::AnyPool,
}

impl WriteLock {
    async fn take(db: &Path) -> WriteLock {
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("PRAGMA busy_timeout = 20000")
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .unwrap();
        WriteLock { conn, pool }
    }

    /// The outbox entries (of records, not Patients) pending as this connection sees them
    /// (every commit before the lock).
    async fn pending(&mut self) -> i64 {
        use sqlx::Row;
        sqlx::query(
            "SELECT COUNT(*) AS n FROM outbox WHERE state = 'pending' AND rtype <> 'Patient'",
        )
        .fetch_one(&mut *self.conn)
        .await
        .unwrap()
        .get::<i64, _>("n")
    }

    async fn release(mut self) {
        sqlx::query("ROLLBACK")
            .execute(&mut *self.conn)
            .await
            .unwrap();
        drop(self.conn);
        self.pool.close().await;
    }
}

/// The deliveries' audit rows of records (not Patients): (entity, action, outcome, detail),
/// oldest first.
async fn delivery_rows(db: &Path) -> Vec<(String, String, String, String)> {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let rows = sqlx::query(
        "SELECT entities, action, outcome, detail FROM audit_log WHERE interaction = 'deliver' \
         AND entities NOT LIKE '%Patient/%' ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| {
            let entities: Vec<String> =
                serde_json::from_str(&r.get::<String, _>("entities")).unwrap();
            (
                entities.join(","),
                r.get("action"),
                r.get("outcome"),
                r.get::<Option<String>, _>("detail").unwrap_or_default(),
            )
        })
        .collect()
}

/// The hospital behind the fault proxy, the gateway delivering to it through the proxy, the
/// patient registered; returns general practice's patient id.
async fn setup() -> (Peer, FaultProxy, Gateway, String) {
    let hospital = Peer::start("hospital", &PeerOptions::default()).await;
    let proxy = FaultProxy::start(&hospital.base).await;
    let gw = Gateway::new(&proxy.base);
    let pid = gw.register(&hospital).await;
    let store = SqlStore::connect(&gw.url(), 2).await.unwrap();
    wait_for("nothing pending before the test", 30, || async {
        let all = common::outbox(&store, Some("pending")).await;
        all.is_empty().then_some(())
    })
    .await;
    store.close().await;
    (hospital, proxy, gw, pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_versions_arrive_in_order_and_a_reference_is_mapped_after_its_target() {
    let (hospital, proxy, gw, pid) = setup().await;
    // The first request is held back, so that what follows queues up and goes in batches.
    proxy.push(
        Matcher::Method("POST"),
        Fault::Delay(Duration::from_millis(800)),
        1,
    );
    let plan = json!({
        "resourceType": "CarePlan",
        "id": "pl-plan",
        "identifier": [{"system": "urn:carebridge:test:pl-plan", "value": "pl-plan"}],
        "status": "active",
        "intent": "plan",
        "title": "Shared plan",
        "subject": {"reference": format!("Patient/{pid}")},
        "addresses": [{"reference": "Condition/pl-a"}]
    });
    // pl-v in three versions, between them other Conditions; the plan right after the
    // Condition it addresses, in the same batch.
    gw.push(&[marked("pl-v", &pid, "v1"), marked("pl-a", &pid, "a"), plan])
        .await;
    gw.push(&[marked("pl-v", &pid, "v2"), marked("pl-b", &pid, "b")])
        .await;
    gw.push(&[marked("pl-v", &pid, "v3"), marked("pl-c", &pid, "c")])
        .await;
    let store = SqlStore::connect(&gw.url(), 2).await.unwrap();
    let all = all_delivered(&store, 7, 60).await;
    assert_eq!(all.len(), 7, "{all:#?}");

    assert_eq!(
        versions_at(&hospital, "Condition", "pl-v").await,
        ["v1", "v2", "v3"],
        "in order, once each"
    );
    let a = copy_at(&hospital, "gp", "Condition", "pl-a").await.unwrap();
    let plan = copy_at(&hospital, "gp", "CarePlan", "pl-plan")
        .await
        .unwrap();
    assert_eq!(
        plan["addresses"][0]["reference"],
        json!(format!("Condition/{}", a["id"].as_str().unwrap())),
        "the plan points at the hospital's copy of the Condition"
    );
    let p = entry(&all, "CarePlan", "pl-plan", 1);
    assert_eq!(
        (p.attempts, p.next_us),
        (1, p.created_us),
        "the plan waited for the Condition's record instead of being deferred"
    );
    assert!(all.iter().all(|e| e.attempts == 1), "{all:#?}");
    for id in ["pl-b", "pl-c"] {
        assert_eq!(versions_at(&hospital, "Condition", id).await.len(), 1);
    }
    let groups = gw.groups_of(7).await;
    assert_eq!(groups.iter().sum::<usize>(), 7, "{groups:?}");
    let warnings = gw.warnings();
    assert!(!warnings.contains(" WARN "), "{warnings}");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_come_while_the_store_is_busy_are_recorded_together_with_their_rows() {
    let (hospital, proxy, gw, pid) = setup().await;
    proxy.push(
        Matcher::Method("POST"),
        Fault::Delay(Duration::from_millis(1500)),
        1,
    );
    let ids: Vec<String> = (0..8).map(|i| format!("tg-{i}")).collect();
    let conditions: Vec<Value> = ids.iter().map(|id| marked(id, &pid, "v1")).collect();
    gw.push(&conditions).await;
    // The batch is claimed and its first request held: the store is locked meanwhile.
    wait_for("the first request", 30, || async {
        (!proxy.seen().is_empty()).then_some(())
    })
    .await;
    let mut lock = WriteLock::take(&gw.db()).await;
    wait_for("every copy at the hospital", 20, || async {
        (hospital.total("Condition").await == 8).then_some(())
    })
    .await;
    assert_eq!(
        lock.pending().await,
        8,
        "all answered, none recorded while the store is busy"
    );
    lock.release().await;

    let store = SqlStore::connect(&gw.url(), 2).await.unwrap();
    let all = all_delivered(&store, 8, 30).await;
    let groups = gw.groups_of(8).await;
    assert_eq!(groups.iter().sum::<usize>(), 8, "{groups:?}");
    assert!(
        groups.iter().any(|&n| n >= 2),
        "answers that came while a record waited were recorded in one transaction: {groups:?}"
    );
    // Each outcome with its own audit row, naming the copy the hospital holds.
    let rows = delivery_rows(&gw.db()).await;
    assert_eq!(rows.len(), 8, "{rows:#?}");
    for id in &ids {
        let e = entry(&all, "Condition", id, 1);
        let copy = copy_at(&hospital, "gp", "Condition", id).await.unwrap();
        let target_id = copy["id"].as_str().unwrap();
        assert_eq!(e.target_id.as_deref(), Some(target_id));
        assert_eq!((e.attempts, e.last_status), (1, Some(201)));
        let entity = format!("Condition/{}", e.gid);
        let row = rows
            .iter()
            .find(|r| r.0 == entity)
            .unwrap_or_else(|| panic!("no audit row for {id}"));
        assert_eq!((row.1.as_str(), row.2.as_str()), ("C", "0"));
        assert!(
            row.3.starts_with(&format!(
                "version 1 delivered as Condition/{target_id} (201)"
            )),
            "{}",
            row.3
        );
        assert_eq!(versions_at(&hospital, "Condition", id).await, ["v1"]);
    }
    // In the order of the outbox.
    let order: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let mut by_id: Vec<&OutboxEntry> = all.iter().collect();
    by_id.sort_by_key(|e| e.id);
    let expected: Vec<String> = by_id
        .iter()
        .map(|e| format!("Condition/{}", e.gid))
        .collect();
    assert_eq!(order, expected);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_answers_and_their_records_resends_without_a_second_copy_or_version() {
    let (hospital, proxy, mut gw, pid) = setup().await;
    let updated: Vec<String> = (0..4).map(|i| format!("kr-u{i}")).collect();
    let v1: Vec<Value> = updated.iter().map(|id| marked(id, &pid, "v1")).collect();
    gw.push(&v1).await;
    let store = SqlStore::connect(&gw.url(), 2).await.unwrap();
    all_delivered(&store, 4, 30).await;
    store.close().await;

    // Version 2 of four (updates with If-Match) and two new ones (creates with If-None-Exist);
    // the first request held back until the store is locked.
    proxy.clear_seen();
    proxy.push(Matcher::Any, Fault::Delay(Duration::from_millis(1500)), 1);
    let mut v2: Vec<Value> = updated.iter().map(|id| marked(id, &pid, "v2")).collect();
    v2.extend(["kr-n0", "kr-n1"].map(|id| marked(id, &pid, "v1")));
    gw.push(&v2).await;
    wait_for("the first request", 30, || async {
        (!proxy.seen().is_empty()).then_some(())
    })
    .await;
    let mut lock = WriteLock::take(&gw.db()).await;
    wait_for("every answer", 20, || async {
        let mut done = hospital.total("Condition").await == 6;
        for id in &updated {
            done = done && versions_at(&hospital, "Condition", id).await.len() == 2;
        }
        done.then_some(())
    })
    .await;
    assert_eq!(lock.pending().await, 6, "answered, none recorded");
    gw.kill();
    lock.release().await;

    gw.start();
    let store = SqlStore::connect(&gw.url(), 2).await.unwrap();
    let all = all_delivered(&store, 10, 30).await;
    for id in &updated {
        assert_eq!(
            versions_at(&hospital, "Condition", id).await,
            ["v1", "v2"],
            "{id}: no version twice"
        );
        // The update was refused (If-Match), the copy read back and found equal.
        let e = entry(&all, "Condition", id, 2);
        assert_eq!(e.last_status, Some(304), "{e:#?}");
    }
    for id in ["kr-n0", "kr-n1"] {
        assert_eq!(versions_at(&hospital, "Condition", id).await, ["v1"]);
    }
    assert_eq!(hospital.total("Condition").await, 6, "no second copy");
    let rows = delivery_rows(&gw.db()).await;
    assert_eq!(rows.len(), 10, "one row per recorded outcome: {rows:#?}");
    let unchanged = rows
        .iter()
        .filter(|r| r.3.contains("already holds; nothing sent"))
        .count();
    assert_eq!(unchanged, 4, "{rows:#?}");
    store.close().await;
}
