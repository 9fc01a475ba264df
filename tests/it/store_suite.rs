//! The store suite: the same checks against SQLite (a real file) and PostgreSQL (a fresh
//! database on 127.0.0.1:5432).

use crate::common;

use carebridge::audit::AuditRow;
use carebridge::config::{SectorKind, SectorMode, SectorSettings};
use carebridge::gateway::prepare;
use carebridge::store::{AuditQuery, SqlStore, Store};
use serde_json::{Value, json};
use std::sync::Arc;

fn sector(id: &str) -> SectorSettings {
    SectorSettings {
        id: id.into(),
        name: id.into(),
        kind: SectorKind::Hospital,
        base_url: None,
        mode: SectorMode::Push,
        profile: None,
        patient_identifier_system: "urn:oid:1.2.208.176.1.2".into(),
        auth: Default::default(),
        resend_by_identifier: false,
        replacement_identifier_systems: vec![REPLACEMENT.into()],
        join_care_on_patient: false,
        base_url_aliases: Vec::new(),
    }
}

/// A replacement-number system the test sectors issue (erstatningspersonnummer).
const REPLACEMENT: &str = "urn:test:replacement-cpr";

fn patient(id: &str, cprs: &[&str]) -> Value {
    let identifier: Vec<Value> = cprs
        .iter()
        .map(|c| json!({ "system": "urn:oid:1.2.208.176.1.2", "value": c }))
        .collect();
    json!({ "resourceType": "Patient", "id": id, "identifier": identifier })
}

fn condition(id: &str, patient_ref: &str, text: &str) -> Value {
    json!({ "resourceType": "Condition", "id": id, "subject": { "reference": patient_ref }, "code": { "text": text },
            "identifier": [{ "system": "urn:test:condition", "value": id }] })
}

async fn put(store: &dyn Store, sector_id: &str, r: &Value) -> carebridge::store::PutOutcome {
    let s = sector(sector_id);
    let rtype = r["resourceType"].as_str().unwrap();
    let rid = r["id"].as_str().unwrap();
    let mut tx = store.begin().await.unwrap();
    let out = tx.put(&prepare(&s, rtype, rid, r)).await.unwrap();
    tx.commit().await.unwrap();
    out
}

async fn suite(store: Arc<dyn Store>) {
    let store = store.as_ref();

    // Versions: new, identical (no new version), changed; every version kept.
    let c1 = condition("c1", "Patient/p1", "diabetes");
    let first = put(store, "hospital", &c1).await;
    assert!(first.created && first.changed && first.version == 1);
    assert_eq!(first.patient_id, None, "the Patient has not arrived yet");
    let again = put(store, "hospital", &c1).await;
    assert!(!again.changed && again.version == 1);
    let changed = put(
        store,
        "hospital",
        &condition("c1", "Patient/p1", "diabetes type 2"),
    )
    .await;
    assert!(changed.changed && !changed.created && changed.version == 2);

    // Late linking: the Patient arrives, the waiting Condition is linked to it.
    let p = put(store, "hospital", &patient("p1", &["0101701234"])).await;
    let pid = p
        .patient_id
        .clone()
        .expect("a Patient always gets a gateway patient");
    let mut tx = store.begin().await.unwrap();
    let c = tx
        .get_sector("hospital", "Condition", "c1")
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(c.patient_id.as_deref(), Some(pid.as_str()));
    assert_eq!(c.version, 2);
    assert!(c.body.contains("diabetes type 2"));
    let found = tx
        .find_by_identifier("hospital", "Condition", "urn:test:condition", "c1")
        .await
        .unwrap();
    assert_eq!(found.as_deref(), Some("c1"));
    drop(tx);

    // Linking across sectors by CPR: the GP's Patient joins the same gateway patient.
    let gp = put(store, "gp", &patient("gp-77", &["0101701234"])).await;
    assert_eq!(gp.patient_id.as_deref(), Some(pid.as_str()));
    let gp_condition = put(store, "gp", &condition("k1", "Patient/gp-77", "T90")).await;
    assert_eq!(gp_condition.patient_id.as_deref(), Some(pid.as_str()));
    // Conditional references by CPR link directly.
    let muni = put(
        store,
        "municipality",
        &condition(
            "m1",
            "Patient?identifier=urn:oid:1.2.208.176.1.2|0101701234",
            "x",
        ),
    )
    .await;
    assert_eq!(muni.patient_id.as_deref(), Some(pid.as_str()));

    // One Patient naming two people's CPR numbers joins nothing: the store refuses it.
    let second = put(store, "municipality", &patient("mp-2", &["0303901234"])).await;
    let s = sector("gp");
    let two = patient("gp-78", &["0101701234", "0303901234"]);
    let mut tx = store.begin().await.unwrap();
    let held = tx.put(&prepare(&s, "Patient", "gp-78", &two)).await;
    assert!(
        matches!(held, Err(carebridge::store::StoreError::MergeHeld { ref patients, .. }) if patients.len() == 2),
        "{held:?}"
    );
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    assert!(
        tx.get_sector("gp", "Patient", "gp-78")
            .await
            .unwrap()
            .is_none()
    );
    let p2 = tx
        .patient(second.patient_id.as_deref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p2.id, second.patient_id.clone().unwrap(), "not merged");
    drop(tx);

    // A replacement CPR: a second record is known under a replacement number only; when a
    // Patient links that number to the real CPR the two gateway patients merge and the old id
    // keeps resolving.
    let other = put(
        store,
        "municipality",
        &json!({ "resourceType": "Patient", "id": "mp-1",
                 "identifier": [{ "system": REPLACEMENT, "value": "R-77" }] }),
    )
    .await;
    let other_id = other.patient_id.clone().unwrap();
    assert_ne!(other_id, pid);
    let mut both_cprs = patient("gp-77", &["0101701234"]);
    both_cprs["identifier"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "system": REPLACEMENT, "value": "R-77" }));
    let both = put(store, "gp", &both_cprs).await;
    assert_eq!(both.merged, vec![other_id.clone()]);
    assert_eq!(both.patient_id.as_deref(), Some(pid.as_str()));
    let mut tx = store.begin().await.unwrap();
    let merged = tx
        .patient(&other_id)
        .await
        .unwrap()
        .expect("the merged id resolves");
    assert_eq!(merged.id, pid);
    let cprs: Vec<&str> = merged.identifiers.iter().map(|(_, v)| v.as_str()).collect();
    assert!(
        cprs.contains(&"0101701234") && cprs.contains(&"R-77"),
        "{cprs:?}"
    );
    assert_eq!(
        merged.sector_patients.len(),
        3,
        "hospital, gp and municipality Patients"
    );
    let all = tx.by_patient(&pid, None, 0, 100).await.unwrap();
    assert_eq!(all.len(), 6);
    let conditions = tx
        .by_patient(&other_id, Some("Condition"), 0, 100)
        .await
        .unwrap();
    assert_eq!(conditions.len(), 3);
    drop(tx);

    // Audit rows commit with what they record, and a rolled-back transaction leaves nothing.
    let mut tx = store.begin().await.unwrap();
    tx.put(&prepare(
        &sector("lab"),
        "Condition",
        "never",
        &condition("never", "Patient/p1", "x"),
    ))
    .await
    .unwrap();
    tx.audit(&AuditRow {
        action: "C".into(),
        interaction: "create".into(),
        outcome: "0".into(),
        patient_id: Some(pid.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    assert!(
        tx.get_sector("lab", "Condition", "never")
            .await
            .unwrap()
            .is_none()
    );
    let rows = tx
        .audit_search(&AuditQuery {
            count: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(rows.is_empty(), "the rolled-back audit row is gone");
    tx.audit(&AuditRow {
        recorded_us: 1_000,
        recorded: "1970-01-01T00:00:00.001Z".into(),
        action: "R".into(),
        interaction: "read".into(),
        outcome: "0".into(),
        patient_id: Some(other_id.clone()),
        entities: vec!["Condition/x".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let by_patient = tx
        .audit_search(&AuditQuery {
            patient_id: Some(pid.clone()),
            count: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        by_patient.len(),
        1,
        "rows under a merged id are found by the survivor"
    );
    assert_eq!(by_patient[0].entities, vec!["Condition/x".to_string()]);
    let none = tx
        .audit_search(&AuditQuery {
            from_us: Some(2_000),
            count: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    drop(tx);

    let stats = store.stats().await.unwrap();
    assert_eq!(stats.linked_patients, 1);
}

/// Concurrent writers of one resource produce consecutive versions, none lost.
async fn concurrent_versions(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let s = sector("hospital");
            let r = condition("race", "Patient/p9", &format!("text {i}"));
            loop {
                let mut tx = store.begin().await.unwrap();
                match tx.put(&prepare(&s, "Condition", "race", &r)).await {
                    Ok(_) => match tx.commit().await {
                        Ok(()) => break,
                        Err(carebridge::store::StoreError::Busy) => continue,
                        Err(e) => panic!("{e}"),
                    },
                    Err(carebridge::store::StoreError::Busy) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut tx = store.begin().await.unwrap();
    let current = tx
        .get_sector("hospital", "Condition", "race")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.version, 8);
}

/// Advisory locks the connections of database `name` hold.
async fn advisory_locks(url: &str, name: &str) -> i64 {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND d.datname = $1",
    )
    .bind(name)
    .fetch_one(&mut c)
    .await
    .unwrap()
}

/// `n` Conditions of one patient, `text` in each, prepared for the hospital sector.
fn conditions(n: usize, text: &str) -> Vec<carebridge::store::Prepared> {
    let s = sector("hospital");
    (0..n)
        .map(|i| {
            let id = format!("bulk-{i}");
            prepare(&s, "Condition", &id, &condition(&id, "Patient/p9", text))
        })
        .collect()
}

/// `n` hospital Patients `{prefix}-{i}`, each with its own CPR number (from `0202900000` +
/// `first`).
fn patients(prefix: &str, first: usize, n: usize) -> Vec<carebridge::store::Prepared> {
    let s = sector("hospital");
    (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            let cpr = format!("02029{:05}", first + i);
            prepare(&s, "Patient", &id, &patient(&id, &[&cpr]))
        })
        .collect()
}

/// Puts `writes` in a transaction of its own on another task and commits it.
fn put_beside(
    store: &Arc<dyn Store>,
    writes: Vec<carebridge::store::Prepared>,
) -> tokio::task::JoinHandle<Vec<carebridge::store::PutOutcome>> {
    let store = store.clone();
    tokio::spawn(async move {
        let mut tx = store.begin().await.unwrap();
        let out = tx.put_many(&writes.iter().collect::<Vec<_>>()).await;
        tx.commit().await.unwrap();
        out.unwrap()
    })
}

/// PostgreSQL: resources take no advisory lock, patient identifiers do. A write linking
/// hundreds of Patients holds the write gate alone, not a lock per patient identifier (the
/// server's one lock table, 6,400 entries by default, was filled by two such writes at once),
/// and another write linking a Patient waits for it; a write with no Patient takes no advisory
/// lock at all, and a second writer of a resource that exists waits for the first's row lock and
/// writes the next version; nothing written by any of them is lost.
async fn writes_lock_rows_and_large_links_take_the_gate(
    store: Arc<dyn Store>,
    url: &str,
    name: &str,
) {
    let mut large = conditions(3000, "first");
    large.extend(patients("many", 0, 300));
    let mut tx = store.begin().await.unwrap();
    let out = tx
        .put_many(&large.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(advisory_locks(url, name).await, 1, "the gate alone");
    let linked: std::collections::HashSet<_> = out[3000..].iter().map(|o| &o.patient_id).collect();
    assert_eq!(linked.len(), 300, "each Patient its own gateway patient");
    let linking = put_beside(&store, patients("one", 300, 1));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !linking.is_finished(),
        "a write linking a Patient waits for the gate"
    );
    tx.commit().await.unwrap();
    assert!(linking.await.unwrap()[0].created);

    let mut tx = store.begin().await.unwrap();
    let second = conditions(10, "second");
    tx.put_many(&second.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(
        advisory_locks(url, name).await,
        0,
        "no Patient, no advisory lock"
    );
    let beside = put_beside(&store, conditions(10, "third"));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!beside.is_finished(), "a second writer waits for the rows");
    tx.commit().await.unwrap();
    let outcomes = beside.await.unwrap();
    assert!(outcomes.iter().all(|o| o.version == 3 && o.changed));

    let mut tx = store.begin().await.unwrap();
    tx.put_many(&patients("two", 301, 1).iter().collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(
        advisory_locks(url, name).await,
        3,
        "the gate and the Patient's two linking identifiers"
    );
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    for (i, version) in [(0, 3), (9, 3), (10, 1), (2999, 1)] {
        let id = format!("bulk-{i}");
        let stored = tx.get_sector("hospital", "Condition", &id).await.unwrap();
        assert_eq!(stored.map(|s| s.version), Some(version), "{id}");
    }
}

/// The alert schedule: a patient's rows are replaced as a whole, due rows are claimed once, and
/// (`concurrent`: PostgreSQL) a second transaction claiming at the same time skips the rows the
/// first holds instead of waiting for them or taking them twice.
async fn schedule_claims(store: Arc<dyn Store>, concurrent: bool) {
    let mut tx = store.begin().await.unwrap();
    tx.schedule_set(
        "p1",
        &[("unanswered-communication", 100), ("stale-order", 300)],
    )
    .await
    .unwrap();
    tx.schedule_set("p2", &[("unanswered-communication", 150)])
        .await
        .unwrap();
    tx.schedule_set("p3", &[("needs-assessment-overdue", 10_000)])
        .await
        .unwrap();
    // Replaced as a whole: p1 keeps only its new row.
    tx.schedule_set("p1", &[("unanswered-communication", 120)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    if concurrent {
        let mut a = store.begin().await.unwrap();
        assert_eq!(a.schedule_claim(200, 1).await.unwrap(), ["p1"]);
        let mut b = store.begin().await.unwrap();
        assert_eq!(b.schedule_claim(200, 10).await.unwrap(), ["p2"]);
        b.commit().await.unwrap();
        a.commit().await.unwrap();
    } else {
        let mut a = store.begin().await.unwrap();
        assert_eq!(a.schedule_claim(200, 10).await.unwrap(), ["p1", "p2"]);
        a.commit().await.unwrap();
    }
    let mut c = store.begin().await.unwrap();
    assert!(c.schedule_claim(9_999, 10).await.unwrap().is_empty());
    assert_eq!(c.schedule_claim(10_000, 10).await.unwrap(), ["p3"]);
    assert!(c.schedule_claim(1_000_000, 10).await.unwrap().is_empty());
    c.commit().await.unwrap();
}

/// One request's writes, in the order a Bundle lists them: a Condition before its Patient, one
/// that is then changed and one sent again unchanged, a resource naming its Patient by CPR, an
/// identifier that moves from one resource to another, and one without a patient.
/// An identifier value with every character PostgreSQL's array syntax treats specially.
const ODD: &str = "a \"q\", \\b\\ {x} NULL";

fn bulk_rounds() -> Vec<Vec<Value>> {
    let cpr = "Patient?identifier=urn:oid:1.2.208.176.1.2|0202801234";
    let moved = |id: &str| {
        json!({ "resourceType": "Condition", "id": id, "subject": { "reference": "Patient/b1" },
                "identifier": [{ "system": "urn:test:shared", "value": "s1" }] })
    };
    vec![
        vec![
            condition("bc1", "Patient/b1", "asthma"),
            condition("bc2", "Patient/b1", "copd"),
            patient("b1", &["0202801234"]),
            condition("bc3", cpr, "gout"),
            moved("bm1"),
            json!({ "resourceType": "Organization", "id": "o1", "name": "x" }),
            // Quotes, backslashes, commas, braces and the word NULL, in a key and a body: what
            // PostgreSQL's array form must carry through unchanged.
            json!({ "resourceType": "Condition", "id": "bq1", "subject": { "reference": "Patient/b1" },
                    "identifier": [{ "system": "urn:test:odd", "value": ODD }],
                    "note": [{ "text": "\"quoted\", \\ back {x} NULL" }] }),
        ],
        vec![
            condition("bc1", "Patient/b1", "asthma"),
            condition("bc2", "Patient/b1", "copd, severe"),
            moved("bm2"),
        ],
        // More rows than one statement takes (SQLite: 512), each with an identifier: two
        // pieces, the second with slots left empty.
        (0..700)
            .map(|i| {
                json!({ "resourceType": "Condition", "id": format!("bl{i}"),
                        "subject": { "reference": "Patient/b1" },
                        "identifier": [{ "system": "urn:test:long", "value": format!("l{i}") }] })
            })
            .collect(),
    ]
}

/// What an outcome says, without the gateway patient's random id and the clock.
fn shape(o: &carebridge::store::PutOutcome, pid: Option<&str>) -> (String, i64, bool, bool, bool) {
    let linked = o.patient_id.is_some() && o.patient_id.as_deref() == pid;
    (o.gid.clone(), o.version, o.changed, o.created, linked)
}

/// `put_many` decides as `put` one after another: the same versions, unchanged content
/// recognised, every resource linked to the Patient of the same request (listed after it), the
/// latest holder of a moved identifier, and an `If-Match` on another version refused whole.
async fn bulk_writes_match_single_ones(one_by_one: Arc<dyn Store>, bulk: Arc<dyn Store>) {
    let s = sector("hospital");
    for round in bulk_rounds() {
        let prepared: Vec<_> = round
            .iter()
            .map(|r| {
                prepare(
                    &s,
                    r["resourceType"].as_str().unwrap(),
                    r["id"].as_str().unwrap(),
                    r,
                )
            })
            .collect();
        let mut a = one_by_one.begin().await.unwrap();
        let mut single = Vec::new();
        // Patients first, as put_many links them.
        for p in prepared.iter().filter(|p| p.rtype == "Patient") {
            single.push((p.rid.clone(), a.put(p).await.unwrap()));
        }
        for p in prepared.iter().filter(|p| p.rtype != "Patient") {
            single.push((p.rid.clone(), a.put(p).await.unwrap()));
        }
        a.commit().await.unwrap();
        let mut b = bulk.begin().await.unwrap();
        let refs: Vec<_> = prepared.iter().collect();
        let many = b.put_many(&refs).await.unwrap();
        b.commit().await.unwrap();
        assert_eq!(many.len(), prepared.len());
        let pid_a = single
            .iter()
            .find(|(r, _)| r == "b1")
            .and_then(|(_, o)| o.patient_id.clone());
        let pid_b = many
            .iter()
            .find(|o| o.gid == single[0].1.gid)
            .and_then(|o| o.patient_id.clone());
        for (p, o) in prepared.iter().zip(&many) {
            let (_, expected) = single.iter().find(|(r, _)| *r == p.rid).unwrap();
            let pid_a = pid_a.as_deref().or(expected.patient_id.as_deref());
            let pid_b = pid_b.as_deref().or(o.patient_id.as_deref());
            assert_eq!(shape(o, pid_b), shape(expected, pid_a), "{}", p.rid);
        }
    }
    for store in [&one_by_one, &bulk] {
        let mut tx = store.begin().await.unwrap();
        let holder = tx
            .find_by_identifier("hospital", "Condition", "urn:test:shared", "s1")
            .await
            .unwrap();
        assert_eq!(holder.as_deref(), Some("bm2"), "the latest holder");
        for (value, id) in [
            ("l0", "bl0"),
            ("l511", "bl511"),
            ("l512", "bl512"),
            ("l699", "bl699"),
        ] {
            let found = tx
                .find_by_identifier("hospital", "Condition", "urn:test:long", value)
                .await
                .unwrap();
            assert_eq!(found.as_deref(), Some(id), "identifier {value}");
            let c = tx.get_sector("hospital", "Condition", id).await.unwrap();
            assert_eq!(c.map(|c| c.version), Some(1), "{id}");
        }
        let odd = tx
            .find_by_identifier("hospital", "Condition", "urn:test:odd", ODD)
            .await
            .unwrap();
        assert_eq!(
            odd.as_deref(),
            Some("bq1"),
            "an identifier with quotes and braces"
        );
        let q = tx
            .get_sector("hospital", "Condition", "bq1")
            .await
            .unwrap()
            .unwrap();
        let sent = &bulk_rounds()[0][6];
        assert_eq!(
            q.body,
            prepare(&s, "Condition", "bq1", sent).body,
            "the body as sent"
        );
        let c = tx
            .get_sector("hospital", "Condition", "bc2")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.version, 2);
        assert!(c.body.contains("severe"));
        let gout = tx
            .get_sector("hospital", "Condition", "bc3")
            .await
            .unwrap()
            .unwrap();
        assert!(
            gout.patient_id.is_some(),
            "linked by CPR in the same request"
        );
    }
    // If-Match on a stale version: nothing of the request is written.
    let mut stale = prepare(
        &s,
        "Condition",
        "bc1",
        &condition("bc1", "Patient/b1", "asthma, mild"),
    );
    stale.expected_version = Some(7);
    let fresh = prepare(
        &s,
        "Condition",
        "bc9",
        &condition("bc9", "Patient/b1", "new"),
    );
    let mut tx = bulk.begin().await.unwrap();
    let refused = tx.put_many(&[&fresh, &stale]).await;
    assert!(matches!(
        refused,
        Err(carebridge::store::StoreError::VersionConflict {
            expected: 7,
            current: Some(1)
        })
    ));
    drop(tx);
    let mut tx = bulk.begin().await.unwrap();
    assert!(
        tx.get_sector("hospital", "Condition", "bc9")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_writes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    let a: Arc<dyn Store> = Arc::new(SqlStore::connect(&open("a.db"), 2).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(SqlStore::connect(&open("b.db"), 2).await.unwrap());
    bulk_writes_match_single_ones(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_writes_on_postgres() {
    let (url_a, name_a) = common::fresh_pg_database().await;
    let (url_b, name_b) = common::fresh_pg_database().await;
    let a = Arc::new(SqlStore::connect(&url_a, 2).await.unwrap());
    let b = Arc::new(SqlStore::connect(&url_b, 2).await.unwrap());
    bulk_writes_match_single_ones(a.clone(), b.clone()).await;
    a.close().await;
    b.close().await;
    common::drop_pg_database(&name_a).await;
    common::drop_pg_database(&name_b).await;
}

/// An audit row of a read naming one entity.
fn naming(entity: &str) -> AuditRow {
    AuditRow {
        action: "R".into(),
        interaction: "read".into(),
        outcome: "0".into(),
        entities: vec![entity.into()],
        ..Default::default()
    }
}

/// An audited read (`begin_audited`) is a write transaction like `begin`'s: it reads, leaves its
/// audit row and commits it. On SQLite (`serial`) it holds this process's writer turn (on a pool
/// connection instead of the write connection): a writer waits for it, and their audit rows
/// keep that order.
async fn audited_reads(store: Arc<dyn Store>, serial: bool) {
    put(
        store.as_ref(),
        "gp",
        &condition("seen", "Patient/none", "x"),
    )
    .await;
    let mut audited = store.begin_audited().await.unwrap();
    let found = audited.get_sector("gp", "Condition", "seen").await.unwrap();
    assert!(found.is_some(), "the audited read sees committed data");
    audited
        .audit(&naming("Condition/audited-read"))
        .await
        .unwrap();
    // A writer started now.
    let writer = tokio::spawn({
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            tx.audit(&naming("Condition/after-the-read")).await.unwrap();
            tx.commit().await.unwrap();
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    if serial {
        assert!(
            !writer.is_finished(),
            "a writer went past an open audited read"
        );
    }
    audited.commit().await.unwrap();
    writer.await.unwrap();
    // A read transaction refuses audit rows (on PostgreSQL it is no transaction at all).
    let mut read = store.begin_read().await.unwrap();
    read.audit(&naming("Condition/in-a-read")).await.unwrap();
    assert!(
        read.commit().await.is_err(),
        "an audit row left in begin_read"
    );
    let mut tx = store.begin_read().await.unwrap();
    let rows = tx
        .audit_search(&AuditQuery {
            count: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        !rows
            .iter()
            .any(|r| r.entities.iter().any(|x| x == "Condition/in-a-read")),
        "nothing of the refused read was kept"
    );
    let at = |e: &str| rows.iter().position(|r| r.entities.iter().any(|x| x == e));
    let (read, write) = (at("Condition/audited-read"), at("Condition/after-the-read"));
    assert!(
        read.is_some() && write.is_some(),
        "both audit rows committed"
    );
    if serial {
        let seq = |i: Option<usize>| rows[i.unwrap()].seq;
        assert!(seq(read) < seq(write), "the audited read's row comes first");
    }
}

/// Many audit rows in one transaction (a delivery worker records up to 32 outcomes, each with
/// its row, in one): written in multi-row statements, they come back in order, field for field,
/// and the chain over them holds — across a piece boundary (77 rows: 32, 32, 8, 4, 1) and
/// between transactions.
async fn audit_rows_in_one_transaction(store: Arc<dyn Store>) {
    let before = {
        let mut tx = store.begin_read().await.unwrap();
        tx.audit_head().await.unwrap().map_or(0, |h| h.0)
    };
    let row = |i: usize| AuditRow {
        recorded_us: 1_000 + i as i64,
        recorded: format!("2026-12-06T04:00:{:02}Z", i % 60),
        client_id: Some(format!("client-{i}")),
        sector: i.is_multiple_of(3).then(|| "gp".to_owned()),
        target_sector: i.is_multiple_of(2).then(|| "hospital".to_owned()),
        detail: i
            .is_multiple_of(5)
            .then(|| format!("a \"quoted\", {{braced}} \\ detail {i}")),
        ..naming(&format!("Condition/bulk-{i}"))
    };
    let mut tx = store.begin().await.unwrap();
    for i in 0..77 {
        tx.audit(&row(i)).await.unwrap();
    }
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.audit(&row(77)).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin_read().await.unwrap();
    let rows = tx.audit_chain_page(before, 1000).await.unwrap();
    assert_eq!(rows.len(), 78, "every row of both transactions is stored");
    for (i, r) in rows.iter().enumerate() {
        let want = row(i);
        assert_eq!(
            r.seq,
            before + 1 + i as i64,
            "seq follows the order of appending"
        );
        assert_eq!(
            (
                &r.entities,
                r.recorded_us,
                &r.recorded,
                &r.client_id,
                &r.sector
            ),
            (
                &want.entities,
                want.recorded_us,
                &want.recorded,
                &want.client_id,
                &want.sector
            )
        );
        assert_eq!(
            (&r.target_sector, &r.detail),
            (&want.target_sector, &want.detail)
        );
    }
    let head = tx.audit_head().await.unwrap();
    let mut all = tx.audit_chain_page(0, 100_000).await.unwrap();
    all.sort_by_key(|r| r.seq);
    let mut walk = carebridge::audit::chain::Walk::new();
    for r in &all {
        assert!(walk.row(r), "the chain breaks at seq {}", r.seq);
    }
    let report = walk.finish(head);
    assert!(report.ok, "the chain holds: {report:?}");
}

/// Writers appending to the chain at once, from its very first row (on PostgreSQL the first
/// appends find no head row to lock and take the chain's advisory lock; the later ones lock the
/// head row; each commit's rows, Merkle nodes and new head are one statement): every row is
/// kept, `seq` runs 1, 2, 3, … without a gap, the chain holds, and the Merkle tree's root over
/// every size is the root of the rows' leaves.
async fn racing_appends(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..3 {
                let mut tx = store.begin().await.unwrap();
                for r in 0..=(w % 3) {
                    tx.audit(&naming(&format!("Condition/race-{w}-{round}-{r}")))
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut tx = store.begin_read().await.unwrap();
    let rows = tx.audit_chain_page(0, 1_000).await.unwrap();
    // Writers 0..8 append 1, 2, 3, 1, 2, 3, 1, 2 rows, three times each.
    assert_eq!(rows.len(), 45, "every appended row is kept");
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=45).collect::<Vec<i64>>(), "no gap, no repeat");
    let mut walk = carebridge::audit::chain::Walk::new();
    for r in &rows {
        assert!(walk.row(r), "the chain breaks at seq {}", r.seq);
    }
    let report = walk.finish(tx.audit_head().await.unwrap());
    assert!(report.ok, "the chain holds: {report:?}");
    let leaves: Vec<carebridge::audit::merkle::Hash> = rows
        .iter()
        .map(|r| carebridge::audit::merkle::row_leaf(&r.hash).unwrap())
        .collect();
    for size in [1, 2, 7, 23, 44, 45] {
        assert_eq!(
            carebridge::gateway::transparency::tree_root(tx.as_mut(), size)
                .await
                .unwrap(),
            carebridge::audit::merkle::root(&leaves[..size as usize]),
            "the tree's root over {size} rows"
        );
    }
}

/// Runs `race` on a fresh SQLite file with a pool of four connections.
async fn race_on_sqlite(race: impl AsyncFnOnce(Arc<dyn Store>)) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    race(Arc::new(SqlStore::connect(&url, 4).await.unwrap())).await;
}

/// Runs `race` on a fresh PostgreSQL database with a pool of four connections, dropped after.
async fn race_on_postgres(race: impl AsyncFnOnce(Arc<dyn Store>)) {
    let (url, name) = common::fresh_pg_database().await;
    let store = Arc::new(SqlStore::connect(&url, 4).await.unwrap());
    race(store.clone()).await;
    store.close().await;
    common::drop_pg_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_appends_on_sqlite() {
    race_on_sqlite(racing_appends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_appends_on_postgres() {
    race_on_postgres(racing_appends).await;
}

/// Writers of one set of new resources in multi-row writes at once, each with its own text:
/// every resource ends at one version per writer, each version kept once, none lost. On
/// PostgreSQL the first versions are settled by `resources`' key: a writer that meets another's
/// uncommitted first version waits for it and writes the next version in the same transaction.
async fn racing_bulk_writes(store: Arc<dyn Store>) {
    const WRITERS: usize = 6;
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let prepared = conditions(30, &format!("writer {i}"));
            let refs: Vec<_> = prepared.iter().collect();
            loop {
                let mut tx = store.begin().await.unwrap();
                match tx.put_many(&refs).await {
                    Ok(outcomes) => {
                        assert!(outcomes.iter().all(|o| o.changed), "writer {i}");
                        match tx.commit().await {
                            Ok(()) => break,
                            Err(carebridge::store::StoreError::Busy) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    Err(carebridge::store::StoreError::Busy) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut tx = store.begin().await.unwrap();
    for k in [0, 17, 29] {
        let id = format!("bulk-{k}");
        let current = tx.get_sector("hospital", "Condition", &id).await.unwrap();
        let current = current.unwrap();
        assert_eq!(current.version, WRITERS as i64, "{id}");
        let versions = tx.versions(&current.gid).await.unwrap();
        let mut numbers: Vec<i64> = versions.iter().map(|v| v.version).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=WRITERS as i64).collect::<Vec<_>>(), "{id}");
        let mut texts: Vec<String> = versions
            .iter()
            .map(|v| {
                v.json().unwrap()["code"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        texts.sort();
        texts.dedup();
        assert_eq!(
            texts.len(),
            WRITERS,
            "every writer's text kept once: {texts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_bulk_writes_on_sqlite() {
    race_on_sqlite(racing_bulk_writes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_bulk_writes_on_postgres() {
    race_on_postgres(racing_bulk_writes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_suite_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store: Arc<dyn Store> = Arc::new(SqlStore::connect(&url, 4).await.unwrap());
    suite(store.clone()).await;
    schedule_claims(store.clone(), false).await;
    audited_reads(store.clone(), true).await;
    audit_rows_in_one_transaction(store.clone()).await;
    concurrent_versions(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_suite_on_postgres() {
    let (url, name) = common::fresh_pg_database().await;
    let store = Arc::new(SqlStore::connect(&url, 4).await.unwrap());
    suite(store.clone()).await;
    schedule_claims(store.clone(), true).await;
    audited_reads(store.clone(), false).await;
    audit_rows_in_one_transaction(store.clone()).await;
    concurrent_versions(store.clone()).await;
    writes_lock_rows_and_large_links_take_the_gate(store.clone(), &url, &name).await;
    store.close().await;
    common::drop_pg_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let first = SqlStore::connect(&url, 1).await.unwrap();
    put(&first, "gp", &patient("a", &["1111111111"])).await;
    first.close().await;
    let second = SqlStore::connect(&url, 1).await.unwrap();
    let mut tx = second.begin().await.unwrap();
    assert!(tx.get_sector("gp", "Patient", "a").await.unwrap().is_some());
}

/// SQLite: what the write transactions append to the WAL is copied back into the database
/// file by the store's own checkpointer, beside the writer (a commit checkpoints itself only
/// past 100,000 pages, and the pool keeps its connections open, so nothing else would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_is_copied_back_beside_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqlStore::connect(&format!("sqlite://{}", path.display()), 2)
        .await
        .unwrap();
    let size = || std::fs::metadata(&path).unwrap().len();
    let before = size();
    let s = sector("gp");
    let text = "x".repeat(4_000);
    let mut tx = store.begin().await.unwrap();
    for i in 0..500 {
        let c = condition(&format!("c{i}"), "Patient/none", &text);
        tx.put(&prepare(&s, "Condition", &format!("c{i}"), &c))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let wal = std::fs::metadata(dir.path().join("store.db-wal"))
        .unwrap()
        .len();
    assert!(wal > 2_000_000, "the bodies went to the WAL ({wal} bytes)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while size() < before + 2_000_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the database file is still {} bytes ({before} before the write)",
            size()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut read = store.begin_read().await.unwrap();
    assert!(
        read.get_sector("gp", "Condition", "c499")
            .await
            .unwrap()
            .is_some()
    );
}

/// Migration 0012 gives the outbox the key `(gid, target, version)` (SQLite by building the table
/// again): entries written before it keep their ids and columns, an id handed out before it is
/// never handed out again, and the key still refuses a second entry for one target, resource
/// and version.
async fn outbox_key_migration_keeps_entries(url: &str, dialect: &str) {
    sqlx::any::install_default_drivers();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect);
    let migrator = sqlx::migrate::Migrator::new(dir).await.unwrap();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    migrator.run_to(11, &pool).await.unwrap();
    let entry = |target: &str, gid: &str, state: &str| {
        format!(
            "INSERT INTO outbox (target, source, gid, version, rtype, patient_id, route, state, \
             attempts, created_us, next_us, updated_us) \
             VALUES ('{target}', 'lab', '{gid}', 1, 'Condition', 'p1', 'routes', '{state}', 0, 1, 1, 1)"
        )
    };
    for (target, gid, state) in [
        ("gp", "g1", "pending"),
        ("hospital", "g1", "delivered"),
        ("gp", "g2", "pending"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(entry(target, gid, state)))
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query("DELETE FROM outbox WHERE gid = 'g2'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = SqlStore::connect(url, 2).await.unwrap();
    store.close().await;
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let rows: Vec<(i64, String, String, String)> =
        sqlx::query_as("SELECT id, target, gid, state FROM outbox ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let kept = |id: i64, target: &str, state: &str| {
        (id, target.to_owned(), "g1".to_owned(), state.to_owned())
    };
    assert_eq!(
        rows,
        vec![kept(1, "gp", "pending"), kept(2, "hospital", "delivered")]
    );
    let (next,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{} RETURNING id",
        entry("gp", "g3", "pending")
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(next > 3, "id {next} was handed out before the migration");
    let again = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{} ON CONFLICT (target, gid, version) DO NOTHING",
        entry("gp", "g1", "dead")
    )))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        again.rows_affected(),
        0,
        "the key finds (target, gid, version)"
    );
    assert!(
        sqlx::query(sqlx::AssertSqlSafe(entry("hospital", "g1", "pending")))
            .execute(&pool)
            .await
            .is_err(),
        "a second entry for one target, resource and version is refused"
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_key_migration_keeps_entries_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("store.db").display()
    );
    outbox_key_migration_keeps_entries(&url, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_key_migration_keeps_entries_on_postgres() {
    let (url, name) = common::fresh_pg_database().await;
    outbox_key_migration_keeps_entries(&url, "postgres").await;
    common::drop_pg_database(&name).await;
}
