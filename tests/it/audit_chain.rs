//! The tamper-evident log: an untouched chain verifies; an edited, deleted, reordered or
//! inserted row and a truncated tail are each found at the right sequence number, on SQLite and
//! on PostgreSQL. The append-only triggers refuse updates and deletes, and a pruned segment
//! leaves a chain that still verifies.

use crate::common::{Backend, drop_pg_database, fresh_pg_database};
use carebridge::audit::{self, Action, Actor, AuditRow, Interaction, Outcome, chain};
use carebridge::gateway::ledger;
use carebridge::store::{SqlStore, Store};
use sqlx::AnyPool;

const ROWS: i64 = 30;

struct Fixture {
    store: SqlStore,
    url: String,
    pg_name: Option<String>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A store with ROWS audit rows, appended over ten transactions of three rows each.
    async fn new(backend: &Backend) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (url, pg_name) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", dir.path().join("audit.db").display()),
                None,
            ),
            Backend::Postgres => {
                let (url, name) = fresh_pg_database().await;
                (url, Some(name))
            }
        };
        let store = SqlStore::connect(&url, 4).await.unwrap();
        let actor = Actor {
            client_id: Some("gp-system".into()),
            role: Some("sector:gp".into()),
            request_id: None,
            person: None,
        };
        for t in 0..ROWS / 3 {
            let mut tx = store.begin().await.unwrap();
            for i in 0..3 {
                let mut row = audit::row(
                    &actor,
                    Some("gp"),
                    Action::Create,
                    Interaction::Create,
                    Outcome::Success,
                );
                row.patient_id = Some(format!("patient-{}", t % 4));
                row.entities = vec![format!("Condition/c{t}-{i}")];
                row.detail = Some(format!("accepted Condition {t}-{i}"));
                tx.audit(&row).await.unwrap();
            }
            tx.commit().await.unwrap();
        }
        Fixture {
            store,
            url,
            pg_name,
            _dir: dir,
        }
    }

    async fn verify(&self) -> chain::Report {
        let mut tx = self.store.begin_read().await.unwrap();
        // A small page size makes the walk cross page boundaries.
        ledger::verify(tx.as_mut(), 7).await.unwrap()
    }

    /// A connection with the powers of someone who can change the database directly.
    async fn attacker(&self) -> AnyPool {
        sqlx::any::install_default_drivers();
        let pool = AnyPool::connect(&self.url).await.unwrap();
        let drops: &[&str] = if self.pg_name.is_some() {
            &["DROP TRIGGER audit_log_no_change ON audit_log"]
        } else {
            &[
                "DROP TRIGGER audit_log_no_update",
                "DROP TRIGGER audit_log_no_delete",
            ]
        };
        for d in drops {
            sqlx::query(*d).execute(&pool).await.unwrap();
        }
        pool
    }

    async fn row(&self, seq: i64) -> AuditRow {
        let mut tx = self.store.begin_read().await.unwrap();
        tx.audit_chain_page(seq - 1, 1).await.unwrap().remove(0)
    }

    async fn done(self) {
        self.store.close().await;
        if let Some(name) = &self.pg_name {
            drop_pg_database(name).await;
        }
    }
}

async fn exec(pool: &AnyPool, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn broken_at(report: &chain::Report) -> i64 {
    assert!(!report.ok, "tampering went unnoticed: {report:?}");
    report.broken.as_ref().unwrap().seq
}

async fn tamper_cases(backend: Backend) {
    // Untouched.
    let f = Fixture::new(&backend).await;
    let report = f.verify().await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.rows, ROWS);
    assert_eq!(report.head_seq, Some(ROWS));
    f.done().await;

    // Edited: one column of row 7.
    let f = Fixture::new(&backend).await;
    let pool = f.attacker().await;
    exec(&pool, "UPDATE audit_log SET outcome = '8' WHERE seq = 7").await;
    let report = f.verify().await;
    assert_eq!(broken_at(&report), 7, "{report:?}");
    assert!(report.broken.unwrap().problem.contains("altered"));
    pool.close().await;
    f.done().await;

    // Edited and re-hashed: the next row no longer continues the chain.
    let f = Fixture::new(&backend).await;
    let pool = f.attacker().await;
    let mut forged = f.row(12).await;
    forged.patient_id = Some("someone-else".into());
    forged.hash = audit::row_hash(&forged);
    exec(
        &pool,
        &format!(
            "UPDATE audit_log SET patient_id = 'someone-else', hash = '{}' WHERE seq = 12",
            forged.hash
        ),
    )
    .await;
    let report = f.verify().await;
    assert_eq!(broken_at(&report), 13, "{report:?}");
    pool.close().await;
    f.done().await;

    // Deleted: row 9.
    let f = Fixture::new(&backend).await;
    let pool = f.attacker().await;
    exec(&pool, "DELETE FROM audit_log WHERE seq = 9").await;
    let report = f.verify().await;
    assert_eq!(broken_at(&report), 9, "{report:?}");
    assert!(report.broken.unwrap().problem.contains("missing"));
    pool.close().await;
    f.done().await;

    // Reordered: rows 15 and 16 swap places.
    let f = Fixture::new(&backend).await;
    let pool = f.attacker().await;
    exec(&pool, "UPDATE audit_log SET seq = -1 WHERE seq = 15").await;
    exec(&pool, "UPDATE audit_log SET seq = 15 WHERE seq = 16").await;
    exec(&pool, "UPDATE audit_log SET seq = 16 WHERE seq = -1").await;
    let report = f.verify().await;
    assert_eq!(broken_at(&report), 15, "{report:?}");
    pool.close().await;
    f.done().await;

    // Inserted: a well-formed row slipped in at 20, the rest renumbered, the head moved.
    let f = Fixture::new(&backend).await;
    let prev = f.row(19).await;
    let pool = f.attacker().await;
    for s in (20..=ROWS).rev() {
        exec(
            &pool,
            &format!("UPDATE audit_log SET seq = {} WHERE seq = {s}", s + 1),
        )
        .await;
    }
    let mut forged = prev.clone();
    forged.seq = 20;
    forged.detail = Some("forged".into());
    forged.prev_hash = prev.hash.clone();
    forged.hash = audit::row_hash(&forged);
    exec(
        &pool,
        &format!(
            "INSERT INTO audit_log (seq, kind, recorded_us, recorded, request_id, client_id, role, sector, \
             target_sector, action, interaction, outcome, patient_id, entities, query, purpose, detail, \
             prev_hash, hash) SELECT 20, kind, recorded_us, recorded, request_id, client_id, role, sector, \
             target_sector, action, interaction, outcome, patient_id, entities, query, purpose, 'forged', \
             '{}', '{}' FROM audit_log WHERE seq = 19",
            forged.prev_hash, forged.hash
        ),
    )
    .await;
    exec(&pool, &format!("UPDATE audit_head SET seq = {}", ROWS + 1)).await;
    let report = f.verify().await;
    assert_eq!(broken_at(&report), 20, "{report:?}");
    assert!(report.broken.unwrap().problem.contains("inserted"));
    pool.close().await;
    f.done().await;

    // Truncated tail: the last three rows.
    let f = Fixture::new(&backend).await;
    let pool = f.attacker().await;
    exec(
        &pool,
        &format!("DELETE FROM audit_log WHERE seq > {}", ROWS - 3),
    )
    .await;
    let report = f.verify().await;
    assert_eq!(broken_at(&report), ROWS - 2, "{report:?}");
    pool.close().await;
    f.done().await;

    // The triggers refuse updates and deletes from anyone.
    let f = Fixture::new(&backend).await;
    sqlx::any::install_default_drivers();
    let pool = AnyPool::connect(&f.url).await.unwrap();
    for sql in [
        "UPDATE audit_log SET detail = 'x' WHERE seq = 3",
        "DELETE FROM audit_log WHERE seq = 3",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert!(f.verify().await.ok);
    pool.close().await;
    f.done().await;
}

async fn prune_keeps_the_chain_verifiable(backend: Backend) {
    let f = Fixture::new(&backend).await;
    // Everything so far is "old": prune through the last row recorded before now.
    let cut = carebridge::fhir::time::now_us() + 1;
    let later = {
        let mut tx = f.store.begin().await.unwrap();
        let mut row = audit::row(
            &Actor::default(),
            None,
            Action::Read,
            Interaction::Read,
            Outcome::Success,
        );
        row.recorded_us = cut + 1_000_000;
        tx.audit(&row).await.unwrap();
        tx.commit().await.unwrap();
        ROWS + 1
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("segment.ndjson");
    let pruned = ledger::prune(&f.store, cut, &out, &Actor::default(), &mut |_, _| {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pruned.through_seq, ROWS);
    assert_eq!(pruned.exported, ROWS);
    assert_eq!(pruned.deleted, ROWS);
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count() as i64, ROWS);
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["resourceType"], "AuditEvent");
    assert_eq!(first["id"], "1");

    let report = f.verify().await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.first_seq, Some(later));
    assert_eq!(report.rows, 2, "the later row and the checkpoint");

    // Deleting the first remaining row is still noticed.
    let pool = f.attacker().await;
    exec(&pool, &format!("DELETE FROM audit_log WHERE seq = {later}")).await;
    let report = f.verify().await;
    assert_eq!(broken_at(&report), later, "{report:?}");
    pool.close().await;
    f.done().await;
}

#[tokio::test]
async fn tampering_is_found_on_sqlite() {
    tamper_cases(Backend::Sqlite).await;
}

#[tokio::test]
async fn tampering_is_found_on_postgres() {
    tamper_cases(Backend::Postgres).await;
}

#[tokio::test]
async fn pruning_keeps_the_chain_verifiable_on_sqlite() {
    prune_keeps_the_chain_verifiable(Backend::Sqlite).await;
}

#[tokio::test]
async fn pruning_keeps_the_chain_verifiable_on_postgres() {
    prune_keeps_the_chain_verifiable(Backend::Postgres).await;
}
