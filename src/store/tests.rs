//! Round trips through every row the store reads, on a real database: what is written comes
//! back field for field. SQLite runs always (a file in a temporary folder); PostgreSQL runs with
//! `cargo test --lib -- --ignored` against `CAREBRIDGE_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/test`), in a fresh database dropped afterwards.

use serde_json::{Value, json};

use super::sql::{Dialect, SqlStore};
use super::{
    AlertQuery, AlertRow, AuditQuery, Delivered, DeliveredOutcome, DeliveryState, Finish,
    HistoryRow, InboxQuery, OutboxFilter, OutboxNew, PollCursor, Prepared, SearchFilter, Snooze,
    Snoozed, Store,
};
use crate::audit::{AuditRow, GENESIS, row_hash};
use crate::ids::{content_hash, gateway_id};

const CPR: &str = "urn:oid:1.2.208.176.1.2";

pub(crate) async fn sqlite_store() -> (tempfile::TempDir, SqlStore) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = SqlStore::connect(&url, 2).await.unwrap();
    (dir, store)
}

pub(super) fn pg_admin_url() -> String {
    std::env::var("CAREBRIDGE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh PostgreSQL database: (its URL, its name).
pub(super) async fn fresh_pg_database() -> (String, String) {
    use sqlx::Connection;
    let name = format!("cb_store_{}", uuid::Uuid::new_v4().simple());
    let admin = pg_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {admin} (set CAREBRIDGE_TEST_PG or start it: see README): {e}"
            )
        });
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin
        .rsplit_once('/')
        .map_or(admin.clone(), |(b, _)| b.into());
    (format!("{base}/{name}"), name)
}

pub(super) async fn drop_pg_database(name: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
}

fn prepared(sector: &str, body: Value, patient_ref: Option<&str>) -> Prepared {
    let rtype = body["resourceType"].as_str().unwrap().to_owned();
    let rid = body["id"].as_str().unwrap().to_owned();
    let text = body.to_string();
    let link_identifiers = if rtype == "Patient" {
        body["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                (
                    i["system"].as_str().unwrap().to_owned(),
                    i["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    Prepared {
        sector: sector.into(),
        hash: content_hash(text.as_bytes()),
        body: text,
        rtype,
        patient_ref: patient_ref.map(str::to_owned),
        identifiers: vec![("urn:test:id".into(), format!("{sector}-{rid}"))],
        link_identifiers,
        rid,
        patient_id: None,
        expected_version: None,
        authority_systems: Vec::new(),
        allow_merge: false,
    }
}

fn patient(id: &str, cpr: &str) -> Value {
    json!({ "resourceType": "Patient", "id": id, "identifier": [{ "system": CPR, "value": cpr }] })
}

fn condition(id: &str, text: &str) -> Value {
    json!({ "resourceType": "Condition", "id": id, "code": { "text": text } })
}

fn audit_row(n: i64, patient_id: Option<&str>, full: bool) -> AuditRow {
    let some = |s: &str| full.then(|| format!("{s}-{n}"));
    AuditRow {
        kind: if full { "event".into() } else { String::new() },
        recorded_us: 1_000 * n,
        recorded: format!("1970-01-01T00:00:00.{n:03}Z"),
        request_id: some("req"),
        client_id: some("client"),
        role: some("role"),
        sector: Some("gp".into()),
        target_sector: some("hospital"),
        action: "R".into(),
        interaction: "read".into(),
        outcome: "0".into(),
        patient_id: patient_id.map(str::to_owned),
        entities: if full {
            vec![format!("Condition/c{n}"), "Patient/x".into()]
        } else {
            Vec::new()
        },
        query: some("Condition?code=x"),
        purpose: some("TREAT"),
        detail: some("detail \"quoted\""),
        ..Default::default()
    }
}

fn alert(id: &str, patient_id: &str, open: bool, created_us: i64) -> AlertRow {
    AlertRow {
        id: id.into(),
        patient_id: patient_id.into(),
        fingerprint: format!("fp|{id}"),
        code: "polypharmacy".into(),
        status: if open { "preliminary" } else { "cancelled" }.into(),
        open,
        evidence: format!("ev-{id}"),
        version: 3,
        created_us,
        updated_us: created_us + 5,
        body: json!({ "resourceType": "DetectedIssue", "id": id }).to_string(),
    }
}

/// What [`write_resources`] stored.
struct Written {
    pid: String,
    patient_gid: String,
    condition_gid: String,
    /// The Condition's first and second version.
    v1: Prepared,
    v2: Prepared,
    v2_last_updated: String,
    orphan_gid: String,
}

/// A gp Patient with a Condition in two versions (and the first sent twice), a hospital
/// Patient with the same CPR, and a lab Condition without a patient.
async fn write_resources(store: &SqlStore) -> Written {
    let mut tx = store.begin().await.unwrap();
    let p = tx
        .put(&prepared("gp", patient("p1", "0101701234"), None))
        .await
        .unwrap();
    let pid = p.patient_id.clone().unwrap();
    let v1 = prepared("gp", condition("c1", "diabetes"), Some("Patient/p1"));
    let out = tx.put(&v1).await.unwrap();
    assert!(out.created && out.changed && out.version == 1);
    let same = tx.put(&v1).await.unwrap();
    assert!(!same.changed && !same.created && same.version == 1);
    assert_eq!(
        (same.gid.as_str(), same.last_updated.as_str()),
        (out.gid.as_str(), out.last_updated.as_str())
    );
    assert_eq!(same.patient_id.as_deref(), Some(pid.as_str()));
    let v2 = prepared("gp", condition("c1", "diabetes 2"), Some("Patient/p1"));
    let next = tx.put(&v2).await.unwrap();
    assert!(next.changed && !next.created && next.version == 2);
    tx.put(&prepared("hospital", patient("h1", "0101701234"), None))
        .await
        .unwrap();
    let orphan = tx
        .put(&prepared("lab", condition("o1", "x"), None))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    Written {
        pid,
        patient_gid: p.gid,
        condition_gid: out.gid,
        v1,
        v2,
        v2_last_updated: next.last_updated,
        orphan_gid: orphan.gid,
    }
}

async fn read_resources(store: &SqlStore, w: &Written) {
    let mut tx = store.begin_read().await.unwrap();
    let s = tx.get(&w.condition_gid).await.unwrap().unwrap();
    assert_eq!(
        (&s.gid, s.sector.as_str(), s.rtype.as_str(), s.rid.as_str()),
        (&w.condition_gid, "gp", "Condition", "c1")
    );
    assert_eq!(
        (s.version, &s.last_updated, s.patient_id.as_ref(), &s.body),
        (2, &w.v2_last_updated, Some(&w.pid), &w.v2.body)
    );
    let o = tx.get_sector("lab", "Condition", "o1").await.unwrap();
    let o = o.unwrap();
    assert_eq!((&o.gid, o.patient_id), (&w.orphan_gid, None));
    assert!(tx.get("nothing").await.unwrap().is_none());
    let all = tx.by_patient(&w.pid, None, 0, 10).await.unwrap();
    let keys: Vec<(&str, &str)> = all
        .iter()
        .map(|s| (s.rtype.as_str(), s.sector.as_str()))
        .collect();
    let expected = [
        ("Condition", "gp"),
        ("Patient", "gp"),
        ("Patient", "hospital"),
    ];
    assert_eq!(keys, expected);
    let typed = tx
        .by_patient_types(&w.pid, &["Patient", "Condition"])
        .await
        .unwrap();
    assert_eq!(typed.len(), 3);
    assert_eq!(typed[0].body, w.v2.body);
    let gp = tx.patient(&w.pid).await.unwrap().unwrap();
    let cpr = (CPR.to_owned(), "0101701234".to_owned());
    assert_eq!(gp.identifiers, vec![cpr]);
    assert_eq!(gp.sector_patients.len(), 2);
    let found = tx.patient_by_identifier(CPR, "0101701234").await.unwrap();
    assert_eq!(found.as_ref(), Some(&w.pid));
    let rid = tx
        .find_by_identifier("gp", "Condition", "urn:test:id", "gp-c1")
        .await
        .unwrap();
    assert_eq!(rid.as_deref(), Some("c1"));
    // `_id` on a sector base: sector-local ids, read through the gateway ids they make.
    let by_rid = |sector: Option<&str>, rids: &[&str]| SearchFilter {
        rtype: "Condition".into(),
        sector: sector.map(String::from),
        rids: Some(rids.iter().map(|r| r.to_string()).collect()),
        limit: 10,
        ..SearchFilter::default()
    };
    let found = tx.search(&by_rid(Some("gp"), &["c1", "o1"])).await.unwrap();
    let found: Vec<(&str, &str, i64)> = found
        .iter()
        .map(|s| (s.sector.as_str(), s.rid.as_str(), s.version))
        .collect();
    assert_eq!(found, [("gp", "c1", 2)]);
    let lab = tx.search(&by_rid(Some("lab"), &["o1"])).await.unwrap();
    assert_eq!(lab.len(), 1);
    assert_eq!(lab[0].gid, w.orphan_gid);
    let anywhere = tx.search(&by_rid(None, &["c1", "o1"])).await.unwrap();
    assert_eq!(anywhere.len(), 2, "without a sector: by sector-local id");
    assert!(
        tx.search(&by_rid(Some("gp"), &[]))
            .await
            .unwrap()
            .is_empty()
    );
}

/// The exchange's reads of the rows [`write_resources`] stored, and the summary counts.
async fn read_for_exchange(store: &SqlStore, w: &Written) {
    let mut tx = store.begin_read().await.unwrap();
    let pid = w.pid.as_str();
    // The hospital sent only its Patient: it does not take part in the care.
    let sectors = tx.care_sectors(pid).await.unwrap();
    assert_eq!(sectors, ["gp"].map(String::from));
    assert_eq!(tx.sector_resource_count(pid, "gp", false).await.unwrap(), 2);
    assert_eq!(tx.sector_resource_count(pid, "gp", true).await.unwrap(), 1);
    assert_eq!(
        tx.sector_resource_count(pid, "hospital", true)
            .await
            .unwrap(),
        0
    );
    let hospital_patient = gateway_id("hospital", "Patient", "h1");
    let mut expected = vec![
        (w.condition_gid.clone(), "gp".into(), "Condition".into(), 2),
        (w.patient_gid.clone(), "gp".into(), "Patient".into(), 1),
        (hospital_patient, "hospital".into(), "Patient".into(), 1),
    ];
    expected.sort();
    assert_eq!(tx.patient_resources(pid).await.unwrap(), expected);
    let rid = tx.sector_patient(pid, "hospital").await.unwrap();
    assert_eq!(rid.as_deref(), Some("h1"));
    assert_eq!(tx.sector_patient(pid, "lab").await.unwrap(), None);
    // From gp's Patient: its patient and the hospital's own record of it, in one read.
    let both = |own: Option<&str>| Some((Some(pid.to_owned()), own.map(str::to_owned)));
    let own = tx.patient_and_own(&w.patient_gid, "hospital").await;
    assert_eq!(own.unwrap(), both(Some("h1")));
    let own = tx.patient_and_own(&w.patient_gid, "lab").await;
    assert_eq!(own.unwrap(), both(None));
    assert_eq!(
        tx.patient_and_own("nowhere", "hospital").await.unwrap(),
        None
    );
    let owners = tx
        .identifier_owners("Condition", "urn:test:id", "gp-c1")
        .await
        .unwrap();
    let owner = ("gp".to_owned(), w.condition_gid.clone(), "c1".to_owned());
    assert_eq!(owners, vec![owner]);
    let source = tx
        .delivery_source("hospital", &w.condition_gid, 1)
        .await
        .unwrap();
    assert_eq!(source, (None, Some(("c1".to_owned(), w.v1.body.clone()))));
    let missing = tx
        .delivery_source("hospital", &w.condition_gid, 9)
        .await
        .unwrap();
    assert_eq!(missing, (None, None));
    drop(tx);

    let stats = store.stats().await.unwrap();
    let count = |s: &str, t: &str| (s.to_owned(), t.to_owned(), 1);
    assert_eq!(
        stats.by_sector_type,
        vec![
            count("gp", "Condition"),
            count("gp", "Patient"),
            count("hospital", "Patient"),
            count("lab", "Condition"),
        ]
    );
    assert_eq!((stats.patients, stats.linked_patients), (1, 1));
}

async fn outbox_round_trip(store: &SqlStore, pid: &str) {
    let mut tx = store.begin().await.unwrap();
    let new = OutboxNew {
        target: "hospital".into(),
        source: "gp".into(),
        gid: "g1".into(),
        version: 1,
        rtype: "Condition".into(),
        patient_id: Some(pid.into()),
        route: "care".into(),
    };
    assert!(tx.outbox_add(&new).await.unwrap());
    assert!(!tx.outbox_add(&new).await.unwrap());
    let v2 = OutboxNew {
        version: 2,
        patient_id: None,
        ..new.clone()
    };
    assert!(tx.outbox_add(&v2).await.unwrap());
    let now = i64::MAX / 2;
    let claimed = tx
        .outbox_claim("hospital", "w1", now, now + 10, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "version 2 waits for version 1");
    let e = &claimed[0];
    assert_eq!(
        (&e.target, &e.source, &e.gid, e.version, &e.rtype, &e.route),
        (
            &new.target,
            &new.source,
            &new.gid,
            1,
            &new.rtype,
            &new.route
        )
    );
    assert_eq!(e.patient_id.as_deref(), Some(pid));
    assert_eq!((e.state, e.attempts), (DeliveryState::Pending, 0));
    let finish = Finish::Delivered {
        status: 201,
        target_id: "t1".into(),
        target_version: Some("7".into()),
    };
    // Another worker's outcome is refused: the lease is w1's.
    let lost = tx.outbox_finish(e.id, "w2", &finish).await;
    assert!(
        matches!(lost, Err(super::StoreError::LeaseLost(id)) if id == e.id),
        "{lost:?}"
    );
    tx.outbox_finish(e.id, "w1", &finish).await.unwrap();
    // Once finished, the lease is gone: a second outcome is refused too.
    assert!(matches!(
        tx.outbox_finish(e.id, "w1", &finish).await,
        Err(super::StoreError::LeaseLost(_))
    ));
    let got = tx.outbox_get(e.id).await.unwrap().unwrap();
    assert_eq!(
        (got.state, got.attempts, got.last_status, got.last_error),
        (DeliveryState::Delivered, 1, Some(201), None)
    );
    assert_eq!(
        (got.target_id.as_deref(), got.target_version.as_deref()),
        (Some("t1"), Some("7"))
    );
    let pending = OutboxFilter {
        state: Some(DeliveryState::Pending),
        count: 10,
        ..Default::default()
    };
    let listed = tx.outbox_list(&pending).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].version, listed[0].patient_id.clone()), (2, None));
    let counts = tx.outbox_counts().await.unwrap();
    let count = |state: &str| ("hospital".to_owned(), state.to_owned(), 1);
    assert_eq!(counts, vec![count("delivered"), count("pending")]);
    tx.commit().await.unwrap();
}

async fn delivered_and_cursors_round_trip(store: &SqlStore) {
    let mut tx = store.begin().await.unwrap();
    let d1 = Delivered {
        target: "hospital".into(),
        gid: "g1".into(),
        rtype: "Condition".into(),
        target_id: "t1".into(),
        target_version: None,
        version: 1,
        hash: "h1".into(),
    };
    let d2 = Delivered {
        gid: "g2".into(),
        target_id: "t2".into(),
        target_version: Some("3".into()),
        version: 4,
        ..d1.clone()
    };
    tx.delivered_put(&d1, 10).await.unwrap();
    tx.delivered_put(&d2, 20).await.unwrap();
    assert_eq!(tx.delivered_get("hospital", "g1").await.unwrap(), Some(d1));
    let by_target_id = tx
        .delivered_by_target_id("hospital", "Condition", "t2")
        .await
        .unwrap();
    assert_eq!(by_target_id, Some(d2.clone()));
    assert_eq!(tx.delivered_get("gp", "g1").await.unwrap(), None);
    // A delivery's read finds the copy beside the version (none stored here).
    let source = tx.delivery_source("hospital", "g2", 4).await.unwrap();
    assert_eq!(source, (Some(d2.clone()), None));
    assert_eq!(
        tx.delivery_source("gp", "g2", 4).await.unwrap(),
        (None, None)
    );

    assert_eq!(tx.cursor_get("gp", "Condition").await.unwrap(), None);
    let cursor = PollCursor {
        since: "2024-01-01T00:00:00Z".into(),
        seen: vec!["a|1".into(), "b|2".into()],
    };
    tx.cursor_put("gp", "Condition", &cursor).await.unwrap();
    let read = tx.cursor_get("gp", "Condition").await.unwrap();
    assert_eq!(read, Some(cursor));
    assert!(tx.lease_acquire("poll:gp", "a", 1, 100).await.unwrap());
    assert!(!tx.lease_acquire("poll:gp", "b", 2, 100).await.unwrap());
    tx.commit().await.unwrap();
}

/// Delivered outcomes recorded together: the entries whose lease the owner holds finished and
/// what the target holds of them written (of a resource named twice, the last); the others
/// left as they were and named.
async fn deliveries_finish_round_trip(store: &SqlStore) {
    let mut tx = store.begin().await.unwrap();
    let mut ids = Vec::new();
    for gid in ["f1", "f2", "f3", "f4"] {
        let new = OutboxNew {
            target: "municipality".into(),
            source: "gp".into(),
            gid: gid.into(),
            version: 3,
            rtype: "Condition".into(),
            patient_id: None,
            route: "care".into(),
        };
        assert!(tx.outbox_add(&new).await.unwrap());
    }
    let now = i64::MAX / 2;
    for e in tx
        .outbox_claim("municipality", "w1", now, now + 10, 10)
        .await
        .unwrap()
    {
        ids.push(e.id);
    }
    assert_eq!(ids.len(), 4);
    // f3's lease is given back (another replica may hold it now).
    tx.outbox_release(ids[2], "w1").await.unwrap();
    let outcome = |i: usize, gid: &str, status: i64, target_id: &str| DeliveredOutcome {
        id: ids[i],
        status,
        delivered: Delivered {
            target: "municipality".into(),
            gid: gid.into(),
            rtype: "Condition".into(),
            target_id: target_id.into(),
            target_version: (status != 304).then(|| "1".to_owned()),
            version: 3,
            hash: format!("hash-{target_id}"),
        },
    };
    let done = [
        outcome(0, "f1", 201, "m1"),
        outcome(1, "f2", 304, "m2"),
        outcome(2, "f3", 201, "m3"),
        // Named twice: the later write stands.
        outcome(3, "f1", 200, "m1-again"),
    ];
    let lost = tx.deliveries_finish("w1", &done, 77).await.unwrap();
    assert_eq!(lost, [ids[2]]);
    for (i, status) in [(0, 201), (1, 304), (3, 200)] {
        let e = tx.outbox_get(ids[i]).await.unwrap().unwrap();
        assert_eq!(
            (e.state, e.attempts, e.last_status),
            (DeliveryState::Delivered, 1, Some(status))
        );
    }
    let f3 = tx.outbox_get(ids[2]).await.unwrap().unwrap();
    assert_eq!((f3.state, f3.attempts), (DeliveryState::Pending, 0));
    let held = tx.delivered_get("municipality", "f1").await.unwrap();
    assert_eq!(held, Some(done[3].delivered.clone()));
    let held = tx.delivered_get("municipality", "f2").await.unwrap();
    assert_eq!(held, Some(done[1].delivered.clone()));
    assert_eq!(tx.delivered_get("municipality", "f3").await.unwrap(), None);
    // Nothing to record, nothing written; a second time, every lease is gone.
    assert!(
        tx.deliveries_finish("w1", &[], 78)
            .await
            .unwrap()
            .is_empty()
    );
    let again = tx.deliveries_finish("w1", &done[..2], 79).await.unwrap();
    assert_eq!(again, [ids[0], ids[1]]);
    tx.commit().await.unwrap();
}

async fn alerts_round_trip(store: &SqlStore) {
    let mut tx = store.begin().await.unwrap();
    let open = alert("a1", "pat", true, 100);
    let closed = alert("a2", "pat", false, 200);
    tx.alert_put(&open).await.unwrap();
    tx.alert_put(&closed).await.unwrap();
    tx.alert_put(&alert("a3", "other", true, 50)).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin_read().await.unwrap();
    assert_eq!(tx.alert_get("a1").await.unwrap(), Some(open.clone()));
    assert_eq!(tx.alert_get("a2").await.unwrap(), Some(closed.clone()));
    assert_eq!(tx.alert_get("none").await.unwrap(), None);
    assert_eq!(
        tx.alerts_of_patient("pat").await.unwrap(),
        vec![open.clone(), closed.clone()]
    );
    let found = tx
        .alert_search(&AlertQuery {
            status: Some("cancelled".into()),
            count: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let found: Vec<AlertRow> = found.into_iter().map(|r| r.alert).collect();
    assert_eq!(found, vec![closed]);
}

fn inbox_alert(id: &str, severity: &str, sectors: &[&str], created_us: i64) -> AlertRow {
    let implicated: Vec<Value> = sectors
        .iter()
        .map(|s| json!({ "reference": "Condition/x", "display": format!("{s} Condition") }))
        .collect();
    AlertRow {
        code: if severity == "high" {
            "DUPTHPGEN"
        } else {
            "polypharmacy"
        }
        .into(),
        body: json!({ "resourceType": "DetectedIssue", "id": id, "severity": severity,
                      "implicated": implicated })
        .to_string(),
        ..alert(id, &format!("p-{id}"), true, created_us)
    }
}

async fn inbox_ids(store: &SqlStore, q: &InboxQuery) -> Vec<String> {
    let mut tx = store.begin_read().await.unwrap();
    let rows = tx.alert_inbox(q).await.unwrap();
    rows.into_iter().map(|r| r.alert.id).collect()
}

/// The inbox's order (severity, then oldest first), keyset paging, the column filters, snoozes
/// (ended by any change of the alert) and the history.
async fn inbox_round_trip(store: &SqlStore) {
    let mut tx = store.begin().await.unwrap();
    for a in [
        inbox_alert("i1", "low", &["gp"], 10),
        inbox_alert("i2", "high", &["gp", "hospital"], 30),
        inbox_alert("i3", "moderate", &["my_sector"], 20),
        inbox_alert("i4", "high", &["municipality"], 20),
        alert("i5", "p", false, 1),
    ] {
        tx.alert_put(&a).await.unwrap();
    }
    let snooze = Snooze {
        until_us: 1_000,
        by: "N".into(),
        note: "later".into(),
    };
    tx.alert_snooze("i3", &snooze).await.unwrap();
    tx.commit().await.unwrap();
    let q = |f: &dyn Fn(&mut InboxQuery)| {
        let mut q = InboxQuery {
            now_us: 500,
            limit: 10,
            ..Default::default()
        };
        f(&mut q);
        q
    };
    // a3 and a1 (of alerts_round_trip) have no severity: low, after i1.
    assert_eq!(
        inbox_ids(store, &q(&|_| {})).await,
        ["i4", "i2", "i1", "a3", "a1"]
    );
    assert_eq!(
        inbox_ids(store, &q(&|q| q.snoozed = Snoozed::Any)).await,
        ["i4", "i2", "i3", "i1", "a3", "a1"]
    );
    assert_eq!(
        inbox_ids(store, &q(&|q| q.snoozed = Snoozed::Only)).await,
        ["i3"]
    );
    // After the date the snooze is over by itself.
    assert_eq!(
        inbox_ids(store, &q(&|q| q.now_us = 1_000)).await,
        ["i4", "i2", "i3", "i1", "a3", "a1"]
    );
    let after = q(&|q| {
        q.limit = 1;
        q.after = Some((0, 20, "i4".into()));
    });
    assert_eq!(inbox_ids(store, &after).await, ["i2"]);
    let gp = q(&|q| q.sector = Some("gp".into()));
    assert_eq!(inbox_ids(store, &gp).await, ["i2", "i1"]);
    // `_` is not a wildcard: "my_sector" does not match "myXsector".
    let like = q(&|q| {
        q.sector = Some("my_sector".into());
        q.snoozed = Snoozed::Any;
    });
    assert_eq!(inbox_ids(store, &like).await, ["i3"]);
    let wild = q(&|q| {
        q.sector = Some("my%".into());
        q.snoozed = Snoozed::Any;
    });
    assert!(inbox_ids(store, &wild).await.is_empty());
    let sev = q(&|q| q.severity_rank = Some(0));
    assert_eq!(inbox_ids(store, &sev).await, ["i4", "i2"]);
    let code = q(&|q| q.code = Some("polypharmacy".into()));
    assert_eq!(inbox_ids(store, &code).await, ["i1", "a3", "a1"]);
    snoozes_end_and_history_appends(store, snooze).await;
}

/// A change of the alert ends its snooze; the history counts its changes per alert.
async fn snoozes_end_and_history_appends(store: &SqlStore, snooze: Snooze) {
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.alert_snooze_get("i3").await.unwrap(), Some(snooze));
    // A change of the alert ends its snooze.
    tx.alert_put(&inbox_alert("i3", "moderate", &["my_sector"], 20))
        .await
        .unwrap();
    assert_eq!(
        tx.alert_snooze_get("i3").await.unwrap(),
        Some(Snooze::default())
    );
    for kind in ["raised", "acknowledged"] {
        let h = HistoryRow {
            alert_id: "i3".into(),
            kind: kind.into(),
            version: 1,
            at_us: 7,
            author: "N".into(),
            note: "n".into(),
            detail: "d".into(),
            implicated: "[]".into(),
            ..Default::default()
        };
        tx.alert_history_append(&h).await.unwrap();
    }
    tx.commit().await.unwrap();
    let mut tx = store.begin_read().await.unwrap();
    let h = tx.alert_history("i3").await.unwrap();
    let got: Vec<(i64, &str)> = h.iter().map(|h| (h.seq, h.kind.as_str())).collect();
    assert_eq!(got, [(1, "raised"), (2, "acknowledged")]);
}

async fn audit_round_trip(store: &SqlStore, pid: &str) {
    let rows = [
        audit_row(1, Some(pid), true),
        audit_row(2, None, false),
        audit_row(3, Some(pid), true),
    ];
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.audit_head().await.unwrap(), None);
    for r in &rows {
        tx.audit(r).await.unwrap();
    }
    tx.commit().await.unwrap();
    let mut expected = Vec::new();
    let mut prev = GENESIS.to_owned();
    for (n, r) in rows.iter().enumerate() {
        let mut e = r.clone();
        e.seq = n as i64 + 1;
        e.kind = "event".into();
        e.prev_hash = prev;
        e.hash = row_hash(&e);
        prev = e.hash.clone();
        expected.push(e);
    }
    let mut tx = store.begin_read().await.unwrap();
    assert_eq!(tx.audit_chain_page(0, 10).await.unwrap(), expected);
    assert_eq!(tx.audit_chain_page(1, 1).await.unwrap(), expected[1..2]);
    assert_eq!(
        tx.audit_range_page(0, 2_000, 3_000, 10).await.unwrap(),
        expected[1..]
    );
    assert_eq!(tx.audit_range_count(1_000, 2_000).await.unwrap(), 2);
    assert_eq!(tx.audit_last_seq_before(2_500).await.unwrap(), Some(2));
    assert_eq!(tx.audit_last_seq_before(0).await.unwrap(), None);
    assert_eq!(
        tx.audit_head().await.unwrap(),
        Some((3, expected[2].hash.clone()))
    );
    let by_patient = tx
        .audit_search(&AuditQuery {
            patient_id: Some(pid.into()),
            entity_type: Some("Condition".into()),
            count: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_patient, vec![expected[0].clone(), expected[2].clone()]);
}

async fn round_trips(store: &SqlStore) {
    let written = write_resources(store).await;
    read_resources(store, &written).await;
    read_for_exchange(store, &written).await;
    outbox_round_trip(store, &written.pid).await;
    delivered_and_cursors_round_trip(store).await;
    deliveries_finish_round_trip(store).await;
    alerts_round_trip(store).await;
    inbox_round_trip(store).await;
    audit_round_trip(store, &written.pid).await;
}

#[tokio::test]
async fn rows_round_trip_on_sqlite() {
    let (_dir, store) = sqlite_store().await;
    assert_eq!(store.dialect(), Dialect::Sqlite);
    round_trips(&store).await;
    store.close().await;
}

/// SQLite in WAL mode: the write connections leave the WAL's sync to the gateway
/// (`synchronous = NORMAL`, 1) while the pool's keep `FULL` (2), and a write's `commit` returns
/// only once a sync of the WAL that covered it has finished.
#[tokio::test]
async fn a_sqlite_commit_returns_after_a_wal_sync_that_covers_it() {
    let (_dir, store) = sqlite_store().await;
    let (_, synced, writer, pool) = store.wal_state().await;
    assert!(synced.is_some(), "the gateway syncs the WAL");
    assert_eq!((writer, pool), (1, 2));
    for n in 1..=3 {
        let mut tx = store.begin().await.unwrap();
        tx.audit(&audit_row(n, None, false)).await.unwrap();
        tx.commit().await.unwrap();
        let (commits, synced, _, _) = store.wal_state().await;
        assert!(
            synced >= Some(commits),
            "commit {n}: {synced:?} of {commits}"
        );
    }
    // A transaction dropped unfinished takes no number and needs no sync.
    let (commits, _, _, _) = store.wal_state().await;
    let mut tx = store.begin().await.unwrap();
    tx.audit(&audit_row(9, None, false)).await.unwrap();
    drop(tx);
    assert_eq!(store.wal_state().await.0, commits);
    store.close().await;
}

#[tokio::test]
async fn rows_round_trip_on_postgres() {
    let (url, name) = fresh_pg_database().await;
    let store = SqlStore::connect(&url, 2).await.unwrap();
    assert_eq!(store.dialect(), Dialect::Postgres);
    round_trips(&store).await;
    store.close().await;
    drop_pg_database(&name).await;
}
