//! When a database error means "busy, try again" ([`super::StoreError::Busy`], a 503 that
//! stored nothing): recognised by the driver's error code, never by the message text (which
//! PostgreSQL translates with `lc_messages`, and which SQLite words alike for different codes).
//!
//! **SQLite** reports an extended result code; its primary code is the low byte. Busy are
//! - `SQLITE_BUSY` (5) and its extended codes: `SQLITE_BUSY_RECOVERY` (261),
//!   `SQLITE_BUSY_SNAPSHOT` (517: a read transaction's snapshot went stale before it wrote),
//!   `SQLITE_BUSY_TIMEOUT` (773) — another connection (or process) holds the write lock past
//!   `busy_timeout`;
//! - `SQLITE_LOCKED` (6) and its extended codes: `SQLITE_LOCKED_SHAREDCACHE` (262),
//!   `SQLITE_LOCKED_VTAB` (518) — a conflict inside one connection or shared cache.
//!
//! **PostgreSQL** reports a SQLSTATE. Busy are
//! - `40001` serialization_failure ("could not serialize access …");
//! - `40P01` deadlock_detected;
//! - `53200` out_of_memory, which is what a full lock table reports ("out of shared memory",
//!   `max_locks_per_transaction`): the entries come free as other transactions end.
//!
//! - `23505` unique_violation **of `resource_versions`' primary key only**: two transactions
//!   wrote the same version of one resource. A write reads the current rows `FOR UPDATE`
//!   (PostgreSQL), so two writers of an existing resource wait for each other; two first
//!   writes of a new one through `put` find no row to lock, both insert version 1, and the
//!   second, having waited for the first's commit, is refused by the key. Run again, it finds
//!   the first's version and writes the next. (A multi-row write settles this inside its
//!   transaction: its first versions' `resources` rows go in first, a violation of
//!   `resources`' own key there is caught under a savepoint ([`is_key_taken`]) and the insert
//!   made again skipping the rows that exist, and a row it met is read and written as the
//!   next version.) Every other unique violation is an error.
//!
//! Each rolls the transaction back and succeeds when retried. `55P03` lock_not_available is
//! deliberately *not* busy: it is raised only by `NOWAIT` or an expired `lock_timeout`, which the
//! gateway never uses (its row claims use `SKIP LOCKED`, its locks wait), so it would mean
//! something unexpected — an error worth reporting, as before.
//!
//! An exhausted pool (`PoolTimedOut`) is busy too.

use std::borrow::Cow;

use sqlx::error::DatabaseError;
use sqlx::postgres::PgDatabaseError;
use sqlx::sqlite::SqliteError;

/// SQLite primary result codes that mean busy: `SQLITE_BUSY`, `SQLITE_LOCKED`.
const SQLITE_BUSY_PRIMARY: [i32; 2] = [5, 6];
/// PostgreSQL SQLSTATEs that mean busy: serialization_failure, deadlock_detected, a full lock
/// table.
const POSTGRES_BUSY_SQLSTATES: [&str; 3] = ["40001", "40P01", "53200"];
/// PostgreSQL's unique_violation, busy only as a violation of [`VERSIONS_KEY`].
const UNIQUE_VIOLATION: &str = "23505";
/// The primary key `(gid, version)` of `resource_versions`, as PostgreSQL names it.
const VERSIONS_KEY: &str = "resource_versions_pkey";

/// True when the error is worth retrying: lock contention (by code) or an exhausted pool.
pub(super) fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => database_busy(db.as_ref()),
        _ => false,
    }
}

/// The driver that raised the error decides how its code reads (under the `Any` driver the
/// error is still the SQLite or PostgreSQL driver's own).
fn database_busy(db: &dyn DatabaseError) -> bool {
    let code = db.code();
    if db.try_downcast_ref::<SqliteError>().is_some() {
        sqlite_busy(code)
    } else if db.try_downcast_ref::<PgDatabaseError>().is_some() {
        postgres_busy(code.clone()) || same_version_written(code, db.constraint())
    } else {
        false
    }
}

/// A SQLite (extended) result code, in decimal as sqlx reports it, whose primary code is
/// `SQLITE_BUSY` or `SQLITE_LOCKED`.
fn sqlite_busy(code: Option<Cow<'_, str>>) -> bool {
    code.and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| SQLITE_BUSY_PRIMARY.contains(&(c & 0xff)))
}

/// A PostgreSQL SQLSTATE of serialization failure, deadlock or a full lock table.
fn postgres_busy(code: Option<Cow<'_, str>>) -> bool {
    code.is_some_and(|c| POSTGRES_BUSY_SQLSTATES.contains(&c.as_ref()))
}

/// A second first write of one resource version (see the module's note): unique_violation of
/// `resource_versions`' primary key.
fn same_version_written(code: Option<Cow<'_, str>>, constraint: Option<&str>) -> bool {
    unique_violation_of(code, constraint, VERSIONS_KEY)
}

/// A unique_violation SQLSTATE raised by the constraint named `key`.
fn unique_violation_of(code: Option<Cow<'_, str>>, constraint: Option<&str>, key: &str) -> bool {
    code.is_some_and(|c| c == UNIQUE_VIOLATION) && constraint == Some(key)
}

/// A PostgreSQL unique_violation of `constraint`: what a plain insert meets where a row with
/// its key exists (not busy; the caller knows what to do instead).
pub(super) fn is_key_taken(e: &sqlx::Error, constraint: &str) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.try_downcast_ref::<PgDatabaseError>().is_some()
                && unique_violation_of(db.code(), db.constraint(), constraint)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use crate::store::sql::map_err;
    use sqlx::{AnyConnection, Connection, Executor};

    fn sqlite(code: &str) -> bool {
        sqlite_busy(Some(code.into()))
    }

    fn postgres(code: &str) -> bool {
        postgres_busy(Some(code.into()))
    }

    #[test]
    fn sqlite_codes_are_read_by_their_primary_code() {
        for busy in ["5", "261", "517", "773", "6", "262", "518"] {
            assert!(sqlite(busy), "{busy}");
        }
        // SQLITE_ERROR, _CONSTRAINT_UNIQUE, _CONSTRAINT, _READONLY, _IOERR, _IOERR_LOCK,
        // _CANTOPEN, _FULL, _NOMEM; and what is no SQLite code.
        for other in [
            "1", "2067", "19", "8", "10", "3850", "14", "13", "7", "", "x", "40001",
        ] {
            assert!(!sqlite(other), "{other}");
        }
        assert!(!sqlite_busy(None));
    }

    #[test]
    fn postgres_sqlstates_are_serialization_failure_deadlock_and_a_full_lock_table() {
        assert!(postgres("40001") && postgres("40P01") && postgres("53200"));
        // lock_not_available, unique_violation, query_canceled, the SQLite busy code.
        for other in ["55P03", "23505", "57014", "40000", "5", ""] {
            assert!(!postgres(other), "{other}");
        }
        assert!(!postgres_busy(None));
    }

    #[test]
    fn a_unique_violation_is_busy_only_on_the_versions_key() {
        let unique = || Some("23505".into());
        assert!(same_version_written(
            unique(),
            Some("resource_versions_pkey")
        ));
        assert!(!same_version_written(unique(), Some("resources_pkey")));
        assert!(!same_version_written(unique(), None));
        assert!(!same_version_written(
            Some("40001".into()),
            Some("resource_versions_pkey")
        ));
        assert!(!same_version_written(None, Some("resource_versions_pkey")));
    }

    #[test]
    fn pool_timeout_is_busy_and_other_errors_are_not() {
        assert!(is_busy(&sqlx::Error::PoolTimedOut));
        assert!(!is_busy(&sqlx::Error::RowNotFound));
        assert!(!is_busy(&sqlx::Error::PoolClosed));
    }

    /// Two connections to one SQLite file, through the `Any` driver as the store uses it, that
    /// give up at once instead of waiting for a lock.
    async fn sqlite_pair(dir: &tempfile::TempDir) -> (AnyConnection, AnyConnection) {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("busy.db").display());
        let mut a = AnyConnection::connect(&url).await.unwrap();
        a.execute("PRAGMA journal_mode = WAL").await.unwrap();
        a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
            .await
            .unwrap();
        a.execute("INSERT INTO t (id, v) VALUES (1, 1)")
            .await
            .unwrap();
        let mut b = AnyConnection::connect(&url).await.unwrap();
        for c in [&mut a, &mut b] {
            c.execute("PRAGMA busy_timeout = 0").await.unwrap();
        }
        (a, b)
    }

    fn code_of(e: &sqlx::Error) -> String {
        e.as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_sqlite_write_lock_held_by_another_connection_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b) = sqlite_pair(&dir).await;
        a.execute("BEGIN IMMEDIATE").await.unwrap();
        let e = b.execute("BEGIN IMMEDIATE").await.unwrap_err();
        assert_eq!(code_of(&e), "5", "{e}");
        assert!(matches!(map_err(e), StoreError::Busy));
        a.execute("ROLLBACK").await.unwrap();
    }

    #[tokio::test]
    async fn a_stale_sqlite_snapshot_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b) = sqlite_pair(&dir).await;
        b.execute("BEGIN").await.unwrap();
        b.execute("SELECT v FROM t").await.unwrap();
        a.execute("UPDATE t SET v = 2 WHERE id = 1").await.unwrap();
        let e = b
            .execute("UPDATE t SET v = 3 WHERE id = 1")
            .await
            .unwrap_err();
        assert_eq!(code_of(&e), "517", "SQLITE_BUSY_SNAPSHOT: {e}");
        assert!(matches!(map_err(e), StoreError::Busy));
        b.execute("ROLLBACK").await.unwrap();
    }

    #[tokio::test]
    async fn a_sqlite_constraint_violation_is_not_busy() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, _b) = sqlite_pair(&dir).await;
        let e = a
            .execute("INSERT INTO t (id, v) VALUES (1, 1)")
            .await
            .unwrap_err();
        assert_eq!(code_of(&e), "1555", "SQLITE_CONSTRAINT_PRIMARYKEY: {e}");
        assert!(matches!(map_err(e), StoreError::Database(_)));
    }

    /// Two connections to a fresh PostgreSQL database holding `t (id, v)` with rows 1 and 2.
    async fn postgres_pair() -> (AnyConnection, AnyConnection, String) {
        sqlx::any::install_default_drivers();
        let (url, name) = crate::store::tests::fresh_pg_database().await;
        let mut a = AnyConnection::connect(&url).await.unwrap();
        a.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)")
            .await
            .unwrap();
        a.execute("INSERT INTO t (id, v) VALUES (1, 1), (2, 2)")
            .await
            .unwrap();
        let b = AnyConnection::connect(&url).await.unwrap();
        (a, b, name)
    }

    #[tokio::test]
    async fn postgres_serialization_failure_and_deadlock_are_busy_lock_not_available_is_not() {
        let (mut a, mut b, name) = postgres_pair().await;
        // 40001: a repeatable-read transaction updates a row changed since its snapshot.
        a.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .unwrap();
        a.execute("SELECT v FROM t").await.unwrap();
        b.execute("UPDATE t SET v = 10 WHERE id = 1").await.unwrap();
        let e = a
            .execute("UPDATE t SET v = 20 WHERE id = 1")
            .await
            .unwrap_err();
        assert_eq!(code_of(&e), "40001", "{e}");
        assert!(matches!(map_err(e), StoreError::Busy));
        a.execute("ROLLBACK").await.unwrap();

        // 55P03: NOWAIT on a locked row (the gateway never asks for it): not busy.
        a.execute("BEGIN").await.unwrap();
        a.execute("UPDATE t SET v = 30 WHERE id = 1").await.unwrap();
        let e = b
            .execute("SELECT v FROM t WHERE id = 1 FOR UPDATE NOWAIT")
            .await
            .unwrap_err();
        assert_eq!(code_of(&e), "55P03", "{e}");
        assert!(matches!(map_err(e), StoreError::Database(_)));

        // 40P01: each holds one row and waits for the other's.
        b.execute("BEGIN").await.unwrap();
        b.execute("UPDATE t SET v = 40 WHERE id = 2").await.unwrap();
        let waiting = tokio::spawn(async move {
            let r = a
                .execute("UPDATE t SET v = 50 WHERE id = 2")
                .await
                .map(drop);
            (a, r)
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let second = b
            .execute("UPDATE t SET v = 60 WHERE id = 1")
            .await
            .map(drop);
        let (_a, first) = waiting.await.unwrap();
        let e = first
            .err()
            .or(second.err())
            .expect("one of them is the deadlock victim");
        assert_eq!(code_of(&e), "40P01", "{e}");
        assert!(matches!(map_err(e), StoreError::Busy));
        drop((_a, b));
        crate::store::tests::drop_pg_database(&name).await;
    }

    #[tokio::test]
    async fn postgres_second_first_write_of_a_version_is_busy_other_unique_violations_are_not() {
        let (mut a, mut b, name) = postgres_pair().await;
        a.execute(
            "CREATE TABLE resource_versions (gid TEXT NOT NULL, version BIGINT NOT NULL, \
             PRIMARY KEY (gid, version))",
        )
        .await
        .unwrap();
        // Both insert version 1 of one resource; the second waits for the first's commit.
        a.execute("BEGIN").await.unwrap();
        a.execute("INSERT INTO resource_versions VALUES ('x', 1)")
            .await
            .unwrap();
        let waiting = tokio::spawn(async move {
            b.execute("BEGIN").await.unwrap();
            let r = b
                .execute("INSERT INTO resource_versions VALUES ('x', 1)")
                .await
                .map(drop);
            (b, r)
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        a.execute("COMMIT").await.unwrap();
        let (mut b, r) = waiting.await.unwrap();
        let e = r.unwrap_err();
        assert_eq!(code_of(&e), "23505", "{e}");
        assert!(is_key_taken(&e, VERSIONS_KEY));
        assert!(!is_key_taken(&e, "resources_pkey"));
        assert!(matches!(map_err(e), StoreError::Busy));
        b.execute("ROLLBACK").await.unwrap();
        // Any other key's violation is an error.
        let e = a
            .execute("INSERT INTO t (id, v) VALUES (1, 1)")
            .await
            .unwrap_err();
        assert_eq!(code_of(&e), "23505", "{e}");
        assert!(is_key_taken(&e, "t_pkey"));
        assert!(!is_key_taken(&e, VERSIONS_KEY));
        assert!(matches!(map_err(e), StoreError::Database(_)));
        drop((a, b));
        crate::store::tests::drop_pg_database(&name).await;
    }
}
