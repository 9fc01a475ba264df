//! The store's part of IT staff's console (`store::ops`) against SQLite (a real file) and
//! PostgreSQL (a fresh database): endpoint health under its lock, attempts per hour, queue and
//! cursor figures, the message browser's filters and paging, replaying a sector's dead
//! letters and queueing a resend — the same SQL on both.

use carebridge::store::{
    Delivered, Finish, OutboxEntry, OutboxNew, OutboxQuery, PollCursor, SectorHealth, SqlStore,
    Store, StoreTx,
};

use crate::common::{drop_pg_database, fresh_pg_database};
use carebridge::fhir::time::now_us;

fn entry(target: &str, gid: &str, rtype: &str) -> OutboxNew {
    OutboxNew {
        target: target.into(),
        source: "gp".into(),
        gid: gid.into(),
        version: 1,
        rtype: rtype.into(),
        patient_id: Some("patient-1".into()),
        route: "care".into(),
    }
}

/// Six entries for `hospital`, two for `municipality`; of the hospital's, one dead and one
/// delivered (through a claim, as a worker records them).
async fn fill(store: &dyn Store) {
    let mut tx = store.begin().await.unwrap();
    for i in 0..6 {
        let rtype = if i % 2 == 0 { "Condition" } else { "CarePlan" };
        assert!(
            tx.outbox_add(&entry("hospital", &format!("g{i}"), rtype))
                .await
                .unwrap()
        );
    }
    for i in 0..2 {
        tx.outbox_add(&entry("municipality", &format!("m{i}"), "Condition"))
            .await
            .unwrap();
    }
    let claimed = tx
        .outbox_claim(
            "hospital",
            "w",
            now_us() + 1_000_000,
            now_us() + 60_000_000,
            2,
        )
        .await
        .unwrap();
    let dead = Finish::Dead {
        status: Some(503),
        error: "HTTP 503".into(),
    };
    tx.outbox_finish(claimed[0].id, "w", &dead).await.unwrap();
    let delivered = Finish::Delivered {
        status: 201,
        target_id: "t1".into(),
        target_version: None,
    };
    tx.outbox_finish(claimed[1].id, "w", &delivered)
        .await
        .unwrap();
    tx.delivered_put(
        &Delivered {
            target: "hospital".into(),
            gid: claimed[1].gid.clone(),
            rtype: claimed[1].rtype.clone(),
            target_id: "t1".into(),
            target_version: None,
            version: 1,
            hash: "h".into(),
        },
        1,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

async fn browse(tx: &mut dyn StoreTx, q: OutboxQuery) -> Vec<OutboxEntry> {
    tx.outbox_browse(&OutboxQuery { count: 50, ..q })
        .await
        .unwrap()
}

async fn browsing(store: &dyn Store) {
    let mut tx = store.begin_read().await.unwrap();
    let all = browse(tx.as_mut(), OutboxQuery::default()).await;
    assert_eq!(all.len(), 8);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let one = browse(
        tx.as_mut(),
        OutboxQuery {
            gid: Some("g3".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        one.iter().map(|e| e.gid.as_str()).collect::<Vec<_>>(),
        ["g3"]
    );
    let plans = OutboxQuery {
        target: Some("hospital".into()),
        rtype: Some("CarePlan".into()),
        ..Default::default()
    };
    assert_eq!(browse(tx.as_mut(), plans).await.len(), 3);
    let dead = OutboxQuery {
        state: carebridge::store::DeliveryState::parse("dead"),
        ..Default::default()
    };
    assert_eq!(browse(tx.as_mut(), dead).await.len(), 1);
    let page = tx
        .outbox_browse(&OutboxQuery {
            count: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let next = OutboxQuery {
        before_id: Some(page[2].id),
        ..Default::default()
    };
    let rest = browse(tx.as_mut(), next).await;
    assert_eq!(page.len() + rest.len(), 8);
    assert!(rest.iter().all(|e| e.id < page[2].id));
    let future = OutboxQuery {
        from_us: Some(i64::MAX - 1),
        ..Default::default()
    };
    assert!(browse(tx.as_mut(), future).await.is_empty());
    let stats = tx.queue_stats().await.unwrap();
    let h = stats.iter().find(|s| s.target == "hospital").unwrap();
    assert_eq!((h.pending, h.dead), (4, 1));
    assert!(h.oldest_us.is_some());
    assert_eq!(tx.oldest_pending("hospital").await.unwrap(), h.oldest_us);
}

async fn replaying_and_resending(store: &dyn Store) {
    let mut tx = store.begin().await.unwrap();
    let replayed = tx.outbox_requeue_dead("hospital", 5).await.unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].state.code(), "pending");
    assert!(
        tx.outbox_requeue_dead("hospital", 5)
            .await
            .unwrap()
            .is_empty()
    );
    let delivered = browse(
        tx.as_mut(),
        OutboxQuery {
            state: carebridge::store::DeliveryState::parse("delivered"),
            ..Default::default()
        },
    )
    .await;
    let d = &delivered[0];
    // To another target: a new entry; to its own: the same entry made pending again, and
    // what the target was recorded to hold is forgotten.
    let other = tx.outbox_resend(d, "municipality", 7).await.unwrap();
    assert_ne!(other.id, d.id);
    assert_eq!(
        (other.target.as_str(), other.route.as_str()),
        ("municipality", "resend")
    );
    let again = tx.outbox_resend(d, "hospital", 8).await.unwrap();
    assert_eq!((again.id, again.state.code()), (d.id, "pending"));
    assert!(
        tx.delivered_get("hospital", &d.gid)
            .await
            .unwrap()
            .is_none()
    );
    tx.commit().await.unwrap();
}

async fn health_and_counts(store: &dyn Store) {
    let mut tx = store.begin().await.unwrap();
    assert!(tx.health_lock("hospital").await.unwrap().is_none());
    let h = SectorHealth {
        target: "hospital".into(),
        state: "failing".into(),
        streak: 3,
        since_us: 10,
        last_attempt_us: 11,
        last_success_us: None,
        last_failure_us: Some(11),
        last_status: Some(503),
        last_error: Some("HTTP 503".into()),
    };
    tx.health_put(&h).await.unwrap();
    tx.health_put(&SectorHealth {
        streak: 4,
        ..h.clone()
    })
    .await
    .unwrap();
    assert_eq!(
        tx.health_lock("hospital").await.unwrap().map(|x| x.streak),
        Some(4)
    );
    for ok in [true, true, false] {
        tx.attempts_add("hospital", 3_600_000_000, i64::from(ok), i64::from(!ok))
            .await
            .unwrap();
    }
    tx.attempts_add("hospital", 0, 1, 0).await.unwrap();
    tx.cursor_put(
        "lab",
        "Observation",
        &PollCursor {
            since: "2026-12-01T00:00:00Z".into(),
            seen: vec![],
        },
    )
    .await
    .unwrap();
    tx.cursor_put(
        "lab",
        "Condition",
        &PollCursor {
            since: "2026-12-02T00:00:00Z".into(),
            seen: vec![],
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin_read().await.unwrap();
    assert_eq!(tx.health_all().await.unwrap().len(), 1);
    let a = tx.attempts_since(3_600_000_000).await.unwrap();
    assert_eq!(
        (a[0].delivered, a[0].failed),
        (2, 1),
        "only the hours since"
    );
    let c = tx.cursor_stats().await.unwrap();
    assert_eq!(
        (c[0].sector.as_str(), c[0].since.as_str()),
        ("lab", "2026-12-02T00:00:00Z")
    );
}

async fn suite(url: &str) {
    let store = SqlStore::connect(url, 4).await.unwrap();
    fill(&store).await;
    browsing(&store).await;
    replaying_and_resending(&store).await;
    health_and_counts(&store).await;
    store.close().await;
}

#[tokio::test]
async fn the_operations_store_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    suite(&format!("sqlite://{}", dir.path().join("ops.db").display())).await;
}

#[tokio::test]
async fn the_operations_store_on_postgresql() {
    let (url, name) = fresh_pg_database().await;
    suite(&url).await;
    drop_pg_database(&name).await;
}
