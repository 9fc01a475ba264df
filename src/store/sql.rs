//! The SQL store over `sqlx`'s `Any` driver: one body of SQL for SQLite and PostgreSQL.
//!
//! Placeholders are written `$1, $2, …`, which both databases accept. What differs between the
//! dialects is confined to the migrations and to [`Dialect`]: how a write transaction begins
//! (SQLite: `BEGIN IMMEDIATE`, so concurrent writers queue instead of failing on upgrade) and
//! how two writers of one resource are kept apart (PostgreSQL: the current rows are read
//! `FOR UPDATE`, and a second first write of a resource is refused by `resource_versions`'
//! primary key and retried, see [`SqlTx::lock_writes`]; the keys that are no row, such as a
//! patient identifier, take a transaction-scoped advisory lock, see [`SqlTx::lock`]).

use async_trait::async_trait;
use sqlx::any::AnyPoolOptions;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, FromRow, Transaction};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{
    AuditQuery, GatewayPatient, Prepared, PutOutcome, Result, SearchFilter, Stats, Store,
    StoreError, StoreTx, Stored,
};
use crate::audit::AuditRow;
use crate::audit::{Action, Outcome};
use crate::fhir::time::{instant, now_us};
use crate::ids::gateway_id;

mod bulk;
mod bulk_pg;
mod wal;

pub(super) use bulk::insert;
pub use bulk::pieces;

/// The identifier system under which each sector Patient keys its own gateway patient link.
pub const SECTOR_PATIENT_SYSTEM: &str = "urn:carebridge:sector-patient:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The settings of every SQLite connection, run in this order right after it opens.
pub const SQLITE_PRAGMAS: [&str; 6] = [
    // WAL lets readers proceed beside the writer; synchronous=FULL makes every commit durable
    // (the WAL synced) before the gateway answers 2xx.
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    "PRAGMA busy_timeout = 30000",
    // A Bundle's multi-row inserts touch hundreds of index pages at random places (gateway ids
    // are hashes): the statement journal that lets one statement be undone is kept in memory
    // instead of a temporary file. (The page cache stays at SQLite's 2 MiB on the pool's
    // connections: at 64 MiB on all of them the reads of P5 grew the server from 63 to 119 MB;
    // the write connection has its own, `SQLITE_WRITER_CACHE`.)
    "PRAGMA temp_store = MEMORY",
    // The WAL is copied back into the database file by a task of its own beside the writer
    // (`checkpointer`, every `SQLITE_CHECKPOINT_EVERY`, 2 s, while there are writes): at SQLite's
    // default a commit runs the checkpoint itself once the WAL holds 1,000 pages, which for
    // Bundles of hundreds of resources was nearly every commit, inside the writer's turn. A
    // commit still checkpoints itself past 100,000 pages (400 MiB), should the task fall
    // behind. After a checkpoint the WAL file is cut back to 512 MiB: P2 writes about 250 MiB
    // between two checkpoints, and a WAL cut to 64 MiB grew again every cycle, a kernel block
    // allocation for each new block inside the writer's turn (kept blocks are overwritten).
    "PRAGMA wal_autocheckpoint = 100000",
    "PRAGMA journal_size_limit = 536870912",
];

/// The page cache of the one connection write transactions run on (`SqlStore::writes`), after
/// [`SQLITE_PRAGMAS`]: 64 MiB (negative: KiB), so that the index pages a Bundle's writes go
/// through (gateway ids are hashes: every Bundle touches pages all over each index) are still
/// in memory for the next write — about a fifth of SQLite's ingest rate in P2. Only pages that
/// writes touch fill it: audited reads run on a connection of their own ([`Store::begin_audited`]).
pub const SQLITE_WRITER_CACHE: &str = "PRAGMA cache_size = -65536";

/// The checkpoint `checkpointer` runs: as far as no reader still needs, without waiting for
/// anyone (the writer goes on meanwhile).
pub const SQLITE_CHECKPOINT: &str = "PRAGMA wal_checkpoint(PASSIVE)";

/// How often `checkpointer` copies the WAL back while there are writes. Every 250 ms (until
/// issue 17's fourth round) the checkpoint copied the same hot index pages again and again and
/// its `fsync` of the database file sat in front of the writer's commits: at half of P2's load
/// p99 ÷ p50 was 1.77–2.69 per Bundle on SQLite, every 2 s 1.38–1.55 (four runs each), the
/// ingest rate the same or higher. The WAL holds at most about 2 s of writes (`journal_size_limit`
/// cuts its file back to 512 MiB after a checkpoint; `wal_autocheckpoint` is the backstop).
pub const SQLITE_CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

/// SQLite: copies the WAL back into the database file every [`SQLITE_CHECKPOINT_EVERY`] when
/// write transactions have committed since the last time, on a connection of `pool` (not the
/// writer's). Ends when the store is dropped (`commits` gone) or its pool closed.
async fn checkpointer(pool: AnyPool, commits: std::sync::Weak<AtomicU64>) {
    // Once at the start too: what the migrations (or an earlier process) left in the WAL.
    let mut seen = u64::MAX;
    loop {
        tokio::time::sleep(SQLITE_CHECKPOINT_EVERY).await;
        let Some(now) = commits.upgrade().map(|c| c.load(Ordering::Relaxed)) else {
            return;
        };
        if now == seen {
            continue;
        }
        seen = now;
        match sqlx::query(SQLITE_CHECKPOINT).execute(&pool).await {
            Ok(_) => {}
            Err(sqlx::Error::PoolClosed) => return,
            Err(err) => {
                tracing::debug!(error = %err, "a WAL checkpoint did not run; the next one will")
            }
        }
    }
}

/// SQLite: `options` with every new connection set up by [`SQLITE_PRAGMAS`] and then `extra`
/// (the write connection: [`SQLITE_WRITER_CACHE`]; the connections that write, when the gateway
/// syncs the WAL itself: [`wal::WRITER_SYNCHRONOUS`]).
fn with_pragmas(options: AnyPoolOptions, extra: Vec<&'static str>) -> AnyPoolOptions {
    options.after_connect(move |conn, _meta| {
        let extra = extra.clone();
        Box::pin(async move {
            for pragma in SQLITE_PRAGMAS.into_iter().chain(extra) {
                sqlx::query(pragma).execute(&mut *conn).await?;
            }
            Ok(())
        })
    })
}

/// SQLite: the gateway's own WAL sync ([`wal::WalSync`]) when the database is in WAL mode.
async fn sqlite_wal_sync(pool: &AnyPool, commits: Arc<AtomicU64>) -> Result<Option<wal::WalSync>> {
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .map_err(map_err)?;
    let file: String =
        sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_one(pool)
            .await
            .map_err(map_err)?;
    Ok(wal::WalSync::open(&file, &mode, commits))
}

/// `options` for a pool of one connection that stays open.
fn single(options: &AnyPoolOptions) -> AnyPoolOptions {
    options
        .clone()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
}

pub struct SqlStore {
    pool: AnyPool,
    /// SQLite: the one connection write transactions run on. A connection's page cache is
    /// dropped whenever another connection has written since its last transaction, so writes
    /// spread over the pool each began by reading their index pages from the file again; on
    /// one connection the pages the last write touched are still there. PostgreSQL: `pool`.
    writes: AnyPool,
    /// SQLite: the one connection audited reads ([`Store::begin_audited`]) run on. They take the
    /// writer's turn, so one connection serves them all, with one page cache of SQLite's default
    /// size (spread over the pool, each connection would fill a cache of its own). PostgreSQL:
    /// `pool`.
    audited: AnyPool,
    /// Write transactions committed (SQLite: read by the `checkpointer`).
    commits: Arc<AtomicU64>,
    dialect: Dialect,
    /// SQLite admits one writer at a time; writers of this process queue here, first come
    /// first served, instead of in SQLite's busy handler (which sleeps and retries, so a writer
    /// can wait far longer than the transactions ahead of it take). Other processes on the same
    /// file still meet `busy_timeout`.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// The Merkle tree's right edge after this process's last committed append (see
    /// [`TreeCache`]).
    tree: TreeCache,
    /// SQLite in WAL mode: the WAL synced after the writer's turn, shared by the commits before
    /// each sync ([`wal`]).
    wal: Option<Arc<wal::WalSync>>,
}

/// How long a pooled PostgreSQL connection may sit idle before it is pinged on its way out of
/// the pool.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Whether a PostgreSQL connection leaving the pool may be used: one that sat idle for
/// [`PING_AFTER_IDLE`] or longer (the server may have restarted, a firewall may have dropped
/// it) must answer a ping first, as every connection did before; one given back moments ago is
/// used as it is. Under load a connection is back in the pool for microseconds, and the ping
/// was a round trip on every transaction and read (two per delivery, one per Bundle). A failed
/// ping closes the connection and the pool hands out another.
async fn ping_if_idle(
    conn: &mut AnyConnection,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> std::result::Result<bool, sqlx::Error> {
    if meta.idle_for >= PING_AFTER_IDLE {
        sqlx::Connection::ping(conn).await?;
    }
    Ok(true)
}

impl SqlStore {
    /// Connects (creating a SQLite file if needed) and brings the schema up to date.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            if path.is_empty() {
                return Err(StoreError::Url(
                    "sqlite: needs a file path, e.g. sqlite://carebridge.db".into(),
                ));
            }
            let sep = if path.contains('?') { '&' } else { '?' };
            (Dialect::Sqlite, format!("sqlite://{path}{sep}mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Dialect::Postgres, url.to_owned())
        } else {
            return Err(StoreError::Url("use sqlite://PATH or postgres://…".into()));
        };
        let mut options = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            // A SQLite connection is a file handle in this process: it cannot have been dropped
            // by a server or the network, so the ping before each use (a round trip to the
            // connection's thread, inside the writer's turn for a write) is left out. A
            // PostgreSQL connection is pinged only after it sat idle ([`ping_if_idle`]).
            .test_before_acquire(false);
        if dialect == Dialect::Postgres {
            options = options.before_acquire(|conn, meta| Box::pin(ping_if_idle(conn, meta)));
        }
        let pool = match dialect {
            Dialect::Sqlite => with_pragmas(options.clone(), Vec::new()),
            Dialect::Postgres => options.clone(),
        }
        .connect(&url)
        .await?;
        match dialect {
            Dialect::Sqlite => SQLITE_MIGRATOR.run(&pool).await?,
            Dialect::Postgres => POSTGRES_MIGRATOR.run(&pool).await?,
        }
        let commits = Arc::new(AtomicU64::new(0));
        let wal = match dialect {
            Dialect::Sqlite => sqlite_wal_sync(&pool, commits.clone()).await?,
            Dialect::Postgres => None,
        };
        // After the migrations, so that the writer's first cache is of the current schema.
        let (writes, audited) = match dialect {
            Dialect::Sqlite => {
                let sync: Vec<&'static str> = wal.iter().map(|_| wal::WRITER_SYNCHRONOUS).collect();
                let mut writer = sync.clone();
                writer.push(SQLITE_WRITER_CACHE);
                (
                    with_pragmas(single(&options), writer).connect(&url).await?,
                    with_pragmas(single(&options), sync).connect(&url).await?,
                )
            }
            Dialect::Postgres => (pool.clone(), pool.clone()),
        };
        if dialect == Dialect::Sqlite {
            tokio::spawn(checkpointer(pool.clone(), Arc::downgrade(&commits)));
        }
        let store = SqlStore {
            pool,
            writes,
            audited,
            commits,
            dialect,
            writer: Arc::new(tokio::sync::Mutex::new(())),
            tree: Default::default(),
            wal: wal.map(Arc::new),
        };
        store.merkle_backfill().await?;
        Ok(store)
    }

    /// A write transaction (see [`Store::begin`]).
    pub(super) async fn begin_sql(&self) -> Result<SqlTx> {
        self.begin_on(&self.writes).await
    }

    /// A write transaction on a connection of `on` (SQLite: in this process's writer turn).
    async fn begin_on(&self, on: &AnyPool) -> Result<SqlTx> {
        let (tx, writer) = match self.dialect {
            Dialect::Sqlite => {
                let turn = self.writer.clone().lock_owned().await;
                (on.begin_with("BEGIN IMMEDIATE").await, Some(turn))
            }
            Dialect::Postgres => (on.begin().await, None),
        };
        Ok(SqlTx {
            tx: Conn::Tx(tx.map_err(map_err)?),
            dialect: self.dialect,
            pending_audit: Vec::new(),
            turn: writer,
            patient_refs: Default::default(),
            merged: Vec::new(),
            tree: self.tree.clone(),
            tree_after: None,
            commits: (self.dialect == Dialect::Sqlite).then(|| self.commits.clone()),
            wal: self.wal.clone(),
            read_only: false,
            alone: false,
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// SQLite: commits so far, commits the last WAL sync covered (`None`: SQLite syncs in
    /// `COMMIT`), and `PRAGMA synchronous` of the write connection and of the pool's.
    #[cfg(test)]
    pub(crate) async fn wal_state(&self) -> (u64, Option<u64>, i64, i64) {
        let synced = match &self.wal {
            Some(w) => Some(w.synced().await),
            None => None,
        };
        let mode = |pool: AnyPool| async move {
            let v: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&pool)
                .await
                .expect("PRAGMA synchronous");
            v
        };
        let commits = self.commits.load(Ordering::Acquire);
        (
            commits,
            synced,
            mode(self.writes.clone()).await,
            mode(self.pool.clone()).await,
        )
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.writes.close().await;
        self.audited.close().await;
    }
}

/// The right edge of the tree at a size, with the chain's head hash at that size.
pub type Edge = (u64, String, crate::audit::merkle::Frontier);

/// This process's right edge after its last committed append. An append uses it only when the
/// chain's head (read under the chain lock) is exactly the size and hash it was left at, so an
/// append by another process or replica in between (which moves the head) makes it read the
/// edge from the database as usual; it saves that read on every commit otherwise.
pub type TreeCache = Arc<std::sync::Mutex<Option<Edge>>>;

/// A sqlx error as a [`StoreError`]: lock contention and an exhausted pool are
/// [`StoreError::Busy`] (see [`super::busy`] for the codes), everything else passes through.
pub(super) fn map_err(e: sqlx::Error) -> StoreError {
    if super::busy::is_busy(&e) {
        return StoreError::Busy;
    }
    StoreError::Database(e)
}

#[async_trait]
impl Store for SqlStore {
    async fn begin(&self) -> Result<Box<dyn StoreTx>> {
        Ok(Box::new(self.begin_sql().await?))
    }

    async fn begin_audited(&self) -> Result<Box<dyn StoreTx>> {
        Ok(Box::new(self.begin_on(&self.audited).await?))
    }

    async fn begin_read(&self) -> Result<Box<dyn StoreTx>> {
        // SQLite: a deferred `BEGIN`, one WAL snapshot for every statement of the read.
        let tx = match self.dialect {
            Dialect::Sqlite => Conn::Tx(self.pool.begin().await.map_err(map_err)?),
            Dialect::Postgres => Conn::Plain(self.pool.acquire().await.map_err(map_err)?),
        };
        Ok(Box::new(SqlTx {
            tx,
            dialect: self.dialect,
            pending_audit: Vec::new(),
            turn: None,
            patient_refs: Default::default(),
            merged: Vec::new(),
            tree: self.tree.clone(),
            tree_after: None,
            commits: None,
            wal: None,
            read_only: true,
            alone: false,
        }))
    }

    async fn stats(&self) -> Result<Stats> {
        let by_sector_type = sqlx::query_as::<_, TypeCount>(
            "SELECT sector, rtype, COUNT(*) AS resources FROM resources GROUP BY sector, rtype \
             ORDER BY sector, rtype",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?
        .into_iter()
        .map(|c| (c.sector, c.rtype, c.resources))
        .collect();
        let patients: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM patients")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        let linked_patients: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT patient_id FROM resources WHERE rtype = 'Patient' \
             AND patient_id IS NOT NULL GROUP BY patient_id HAVING COUNT(DISTINCT sector) > 1) AS linked",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(Stats {
            by_sector_type,
            patients,
            linked_patients,
        })
    }

    async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

/// What a [`SqlTx`] runs its statements on: a database transaction, or — PostgreSQL's reads —
/// a pool connection used statement by statement. Under `READ COMMITTED` every statement of a
/// transaction takes its own snapshot anyway, so a read transaction there bought nothing but
/// `BEGIN` and `ROLLBACK`: two round trips per read (a delivery reads once per entry).
pub(super) enum Conn {
    Tx(Transaction<'static, Any>),
    Plain(PoolConnection<Any>),
}

impl std::ops::Deref for Conn {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match self {
            Conn::Tx(t) => t,
            Conn::Plain(c) => c,
        }
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Conn::Tx(t) => t,
            Conn::Plain(c) => c,
        }
    }
}

impl Conn {
    pub(super) async fn commit(self) -> std::result::Result<(), sqlx::Error> {
        match self {
            Conn::Tx(t) => t.commit().await,
            Conn::Plain(_) => Ok(()),
        }
    }
}

pub(super) struct SqlTx {
    pub(super) tx: Conn,
    pub(super) dialect: Dialect,
    /// Audit rows appended to the chain at commit.
    pending_audit: Vec<AuditRow>,
    /// SQLite: this process's writer turn, held until the transaction ends (field order: it
    /// is released after `tx` is dropped or committed).
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// (sector, patient reference) → gateway patient, for the rest of the transaction (a
    /// Bundle's entries name the same patient hundreds of times). Cleared whenever a Patient is
    /// linked or patients are merged.
    patient_refs: std::collections::HashMap<(String, String), Option<String>>,
    /// Gateway patients the last linked Patient merged (taken into its `PutOutcome` by `decide`).
    merged: Vec<String>,
    /// The process's cached right edge of the Merkle tree, and what it becomes once this
    /// transaction commits.
    pub(super) tree: TreeCache,
    pub(super) tree_after: Option<Edge>,
    /// The store's count of committed write transactions (SQLite), counted at commit.
    commits: Option<Arc<AtomicU64>>,
    /// SQLite write transactions when the gateway syncs the WAL: the commit waits, after
    /// releasing the writer's turn, for a sync that covers it.
    wal: Option<Arc<wal::WalSync>>,
    /// Begun by `begin_read`: nothing it writes is meant to count.
    read_only: bool,
    /// Holds [`WRITE_GATE`] exclusively (PostgreSQL): no other write that links a Patient
    /// runs, so [`SqlTx::lock_writes`] takes no more locks.
    alone: bool,
}

/// The one audit chain (all replicas append to it) and the lock that orders appends.
const AUDIT_CHAIN: &str = "main";
const AUDIT_CHAIN_LOCK: &str = "carebridge:audit-chain";

/// The lock every write that links a Patient takes on PostgreSQL before its patient
/// identifiers' ([`SqlTx::lock_writes`]): shared by a write that locks each of its identifiers,
/// exclusive by one with too many for that.
const WRITE_GATE: &str = "carebridge:resource-writes";

/// The most keys a write locks one by one ([`SqlTx::lock_writes`]): eight connections a replica
/// at this many stay well inside PostgreSQL's default lock table (6,400 entries).
const LOCK_KEYS_MAX: usize = 512;

/// How a write holds [`WRITE_GATE`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Beside other writes; the write locks each of its keys.
    Shared,
    /// Alone among writes that link a Patient.
    Exclusive,
}

pub(super) const AUDIT_COLUMNS: &str = "seq, kind, recorded_us, recorded, request_id, client_id, role, sector, \
     target_sector, action, interaction, outcome, patient_id, entities, query, purpose, detail, \
     person, basis, prev_hash, hash";

/// An `audit_log` row as stored ([`AUDIT_COLUMNS`]): [`AuditRow`] itself knows nothing of the
/// database, and `entities` is kept as a JSON array in a text column.
#[derive(FromRow)]
pub(super) struct AuditRecord {
    seq: i64,
    kind: String,
    recorded_us: i64,
    recorded: String,
    request_id: Option<String>,
    client_id: Option<String>,
    role: Option<String>,
    sector: Option<String>,
    target_sector: Option<String>,
    action: String,
    interaction: String,
    outcome: String,
    patient_id: Option<String>,
    entities: String,
    query: Option<String>,
    purpose: Option<String>,
    detail: Option<String>,
    person: Option<String>,
    basis: Option<String>,
    prev_hash: String,
    hash: String,
}

impl From<AuditRecord> for AuditRow {
    fn from(r: AuditRecord) -> AuditRow {
        AuditRow {
            seq: r.seq,
            kind: r.kind,
            recorded_us: r.recorded_us,
            recorded: r.recorded,
            request_id: r.request_id,
            client_id: r.client_id,
            role: r.role,
            sector: r.sector,
            target_sector: r.target_sector,
            action: r.action,
            interaction: r.interaction,
            outcome: r.outcome,
            patient_id: r.patient_id,
            // Written by `append_audit` from a Vec<String>; an unreadable value (a row edited
            // outside the gateway) shows as no entities and fails `audit verify`.
            entities: serde_json::from_str(&r.entities).unwrap_or_default(),
            query: r.query,
            purpose: r.purpose,
            detail: r.detail,
            person: r.person,
            basis: r.basis,
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}

/// The chain's head (`audit_head`): the last appended seq and its hash.
#[derive(FromRow)]
struct Head {
    seq: i64,
    hash: String,
}

/// The columns of [`Stored`], from `resources r` joined with `resource_versions v`.
const STORED_COLUMNS: &str = "r.gid AS gid, r.sector AS sector, r.rtype AS rtype, r.rid AS rid, \
     r.version AS version, r.last_updated AS last_updated, r.patient_id AS patient_id, \
     v.body AS body";

/// The columns of [`Stored`] for one version of `resource_versions`.
const VERSION_COLUMNS: &str = "r.gid AS gid, r.sector AS sector, r.rtype AS rtype, r.rid AS rid, \
     v.version AS version, v.last_updated AS last_updated, r.patient_id AS patient_id, \
     v.body AS body";

/// `$from, $from+1, …` (`n` placeholders).
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds every value of a `Vec<Bind>` to a sqlx query (`query_as`, `query_scalar`, …), in order.
macro_rules! bind_all {
    ($query:expr, $values:expr) => {{
        let mut q = $query;
        for v in $values {
            q = match v {
                Bind::Text(t) => q.bind(t),
                Bind::Int(i) => q.bind(i),
                Bind::OptText(t) => q.bind(t),
                Bind::OptInt(i) => q.bind(i),
            };
        }
        q
    }};
}
pub(super) use bind_all;

/// A value bound to a search statement (resources, the audit log, the outbox browser).
pub(super) enum Bind {
    Text(String),
    Int(i64),
    /// A text column that may be NULL.
    OptText(Option<String>),
    /// An integer column that may be NULL (the unfilled slots of a multi-row statement: on
    /// PostgreSQL a `VALUES` column takes one type from all its rows).
    OptInt(Option<i64>),
}

/// The statement of [`StoreTx::search`] and its values, in placeholder order. Only
/// placeholders and fixed conditions are formatted into the text; every value is bound.
fn search_sql(f: &SearchFilter, patient: Option<String>) -> (String, Vec<Bind>) {
    let mut conds = vec!["r.rtype = $1".to_owned()];
    let mut binds = vec![Bind::Text(f.rtype.clone())];
    let mut push = |cond: &dyn Fn(usize) -> String, b: Bind, binds: &mut Vec<Bind>| {
        binds.push(b);
        conds.push(cond(binds.len()));
    };
    if let Some(s) = &f.sector {
        push(
            &|i| format!("r.sector = ${i}"),
            Bind::Text(s.clone()),
            &mut binds,
        );
    }
    if let Some(p) = patient {
        push(
            &|i| format!("r.patient_id = ${i}"),
            Bind::Text(p),
            &mut binds,
        );
    }
    if let Some(from) = &f.updated_from {
        push(
            &|i| format!("r.last_updated >= ${i}"),
            Bind::Text(from.clone()),
            &mut binds,
        );
    }
    if let Some(to) = &f.updated_to {
        push(
            &|i| format!("r.last_updated <= ${i}"),
            Bind::Text(to.clone()),
            &mut binds,
        );
    }
    // Sector-local ids with their sector are gateway ids (`gateway_id`), read through the
    // primary key; `resources` has no index on `rid` (migration 0011).
    let rids = f.rids.as_ref().map(|rids| match &f.sector {
        Some(sector) => (
            "r.gid",
            rids.iter()
                .map(|rid| gateway_id(sector, &f.rtype, rid))
                .collect(),
        ),
        None => ("r.rid", rids.clone()),
    });
    let gids = f.gids.as_ref().map(|gids| ("r.gid", gids.clone()));
    for (column, ids) in [gids, rids].into_iter().flatten() {
        let (start, n) = (binds.len() + 1, ids.len());
        binds.extend(ids.into_iter().map(Bind::Text));
        conds.push(if n == 0 {
            "1 = 0".to_owned()
        } else {
            format!("{column} IN ({})", placeholders(start, n))
        });
    }
    if let Some((system, value)) = &f.identifier {
        binds.push(Bind::Text(value.clone()));
        let v = binds.len();
        let mut cond =
            format!("r.gid IN (SELECT gid FROM identifier_index WHERE rtype = $1 AND value = ${v}");
        if let Some(system) = system {
            binds.push(Bind::Text(system.clone()));
            cond.push_str(&format!(" AND system = ${}", binds.len()));
        }
        cond.push(')');
        conds.push(cond);
    }
    binds.push(Bind::Int(f.limit));
    let sql = format!(
        "SELECT {STORED_COLUMNS} FROM resources r JOIN resource_versions v \
         ON v.gid = r.gid AND v.version = r.version WHERE {} ORDER BY r.gid LIMIT ${}",
        conds.join(" AND "),
        binds.len()
    );
    (sql, binds)
}

/// The identifiers a sector Patient links by: its own key (`SECTOR_PATIENT_SYSTEM` + sector,
/// id) and its linking identifiers.
fn link_keys(p: &Prepared) -> Vec<(String, String)> {
    let mut keys = vec![(
        format!("{SECTOR_PATIENT_SYSTEM}{}", p.sector),
        p.rid.clone(),
    )];
    keys.extend(p.link_identifiers.iter().cloned());
    keys
}

/// An identifier system within the writing sector's own authority: its sector Patient keys
/// (`SECTOR_PATIENT_SYSTEM` + a sector) and the replacement numbers it issues.
fn is_authority_key(p: &Prepared, system: &str) -> bool {
    system.starts_with(SECTOR_PATIENT_SYSTEM) || p.authority_systems.iter().any(|a| a == system)
}

/// The lock keys of a Patient's linking identifiers (none for other types).
fn patient_lock_keys(p: &Prepared) -> Vec<String> {
    if p.rtype != "Patient" {
        return Vec::new();
    }
    link_keys(p)
        .iter()
        .map(|(s, v)| format!("patient|{s}|{v}"))
        .collect()
}

/// What `put` compares a new version with: the current row of `resources`.
#[derive(FromRow)]
struct Current {
    version: i64,
    hash: String,
    last_updated: String,
    patient_id: Option<String>,
}

/// One identifier of a gateway patient (`patient_identifiers`).
#[derive(FromRow)]
struct Identifier {
    system: String,
    value: String,
}

/// Resources per sector and type, for [`Stats`].
#[derive(FromRow)]
struct TypeCount {
    sector: String,
    rtype: String,
    resources: i64,
}

impl SqlTx {
    /// The `WHERE` clause of an audit search (placeholders `$1`…`$9`, then one per merged
    /// patient id from `$10`) and the values bound to it, in order.
    async fn audit_filter(&mut self, q: &AuditQuery) -> Result<(String, Vec<Bind>)> {
        // A merged patient's rows were recorded under its old id: search all ids merged into it.
        let mut patient_ids: Vec<String> = Vec::new();
        if let Some(p) = &q.patient_id {
            let survivor = self.resolve_patient(p).await?;
            patient_ids.push(survivor.clone());
            let merged: Vec<String> =
                sqlx::query_scalar("SELECT from_id FROM patient_merges WHERE into_id = $1")
                    .bind(&survivor)
                    .fetch_all(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
            patient_ids.extend(merged);
        }
        let patient_filter = if patient_ids.is_empty() {
            String::new()
        } else {
            let marks: Vec<String> = (0..patient_ids.len())
                .map(|i| format!("${}", i + 10))
                .collect();
            format!("AND patient_id IN ({})", marks.join(", "))
        };
        let entity_pattern = q
            .entity_type
            .as_deref()
            .map(|t| format!("%\"{t}/%"))
            .unwrap_or_default();
        let filter = format!(
            "WHERE kind = 'event' AND recorded_us >= $1 AND recorded_us <= $2 \
             AND ($3 = '' OR outcome = $3) AND ($4 = '' OR client_id = $4) \
             AND ($5 = '' OR sector = $5 OR target_sector = $5) AND ($6 = '' OR action = $6) \
             AND ($7 = '' OR entities LIKE $7) AND ($8 = '' OR person = $8) \
             AND ($9 = '' OR basis LIKE $9) {patient_filter}"
        );
        let mut values = vec![
            Bind::Int(q.from_us.unwrap_or(i64::MIN)),
            Bind::Int(q.to_us.unwrap_or(i64::MAX)),
            Bind::Text(q.outcome.map_or("", Outcome::code).to_owned()),
            Bind::Text(q.agent.clone().unwrap_or_default()),
            Bind::Text(q.sector.clone().unwrap_or_default()),
            Bind::Text(q.action.map_or("", Action::code).to_owned()),
            Bind::Text(entity_pattern),
            Bind::Text(q.person.clone().unwrap_or_default()),
            Bind::Text(
                q.basis
                    .as_deref()
                    .map(|b| format!("{b}%"))
                    .unwrap_or_default(),
            ),
        ];
        values.extend(patient_ids.into_iter().map(Bind::Text));
        Ok((filter, values))
    }

    /// Serialises writers of one key (a resource, a patient identifier) until commit. SQLite
    /// needs nothing: `BEGIN IMMEDIATE` already admits one writer at a time. On PostgreSQL a
    /// transaction-scoped advisory lock makes "read the current version, write the next" and
    /// "find or create the gateway patient" safe across connections and replicas.
    pub(super) async fn lock(&mut self, key: &str) -> Result<()> {
        if self.dialect == Dialect::Postgres {
            sqlx::query(
                "SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtextextended($1, 0))) AS locked",
            )
            .bind(key)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        }
        Ok(())
    }

    /// Appends the pending audit rows to the chain: with its head locked
    /// ([`SqlTx::chain_head_locked`]), each row gets the next `seq`, the previous row's hash and
    /// its own hash, and the head moves to the last one. On PostgreSQL, once the chain has a
    /// head, the rows, their Merkle nodes and the new head are one statement
    /// ([`SqlTx::append_rows_pg`]).
    async fn append_audit(&mut self) -> Result<()> {
        if self.pending_audit.is_empty() {
            return Ok(());
        }
        let head = self.chain_head_locked().await?;
        let head_existed = head.is_some();
        let (mut seq, mut prev) = head.unwrap_or_else(|| (0, crate::audit::GENESIS.to_owned()));
        let tree = (seq as u64, prev.clone());
        let mut rows = std::mem::take(&mut self.pending_audit);
        for a in &mut rows {
            seq += 1;
            a.seq = seq;
            if a.kind.is_empty() {
                a.kind = "event".into();
            }
            a.prev_hash = std::mem::take(&mut prev);
            a.hash = crate::audit::row_hash(a);
            prev = a.hash.clone();
        }
        let leaves: Vec<String> = rows.iter().map(|a| a.hash.clone()).collect();
        let nodes = self.merkle_extend(tree.0, Some(&tree.1), &leaves).await?;
        if self.dialect == Dialect::Postgres && head_existed && rows.len() <= bulk::AUDIT_CHUNK {
            return self.append_rows_pg(&rows, &nodes, (seq, &prev)).await;
        }
        self.insert_audit_rows(&rows).await?;
        self.insert_nodes(&nodes).await?;
        let sql = if head_existed {
            "UPDATE audit_head SET seq = $2, hash = $3 WHERE chain = $1"
        } else {
            "INSERT INTO audit_head (chain, seq, hash) VALUES ($1, $2, $3)"
        };
        sqlx::query(sql)
            .bind(AUDIT_CHAIN)
            .bind(seq)
            .bind(&prev)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// The chain's head, locked until commit. PostgreSQL: its row read `FOR UPDATE` (a writer
    /// that waited for another reads the head the other committed); before the first append
    /// there is no row to lock, so the chain's advisory lock is taken and the row read again
    /// (a first append that committed meanwhile made it). SQLite's `BEGIN IMMEDIATE` already
    /// admits one writer.
    async fn chain_head_locked(&mut self) -> Result<Option<(i64, String)>> {
        if self.dialect == Dialect::Sqlite {
            return self.audit_head().await;
        }
        if let Some(head) = self.head_for_update().await? {
            return Ok(Some(head));
        }
        self.lock(AUDIT_CHAIN_LOCK).await?;
        self.head_for_update().await
    }

    /// PostgreSQL: the chain's head row, locked until commit.
    async fn head_for_update(&mut self) -> Result<Option<(i64, String)>> {
        let head = sqlx::query_as::<_, Head>(
            "SELECT seq, hash FROM audit_head WHERE chain = $1 FOR UPDATE",
        )
        .bind(AUDIT_CHAIN)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(head.map(|h| (h.seq, h.hash)))
    }

    /// The current row of a resource, if it has one (`put`, step 1), locked until commit on
    /// PostgreSQL (see [`SqlTx::lock_writes`]).
    async fn current(&mut self, gid: &str) -> Result<Option<Current>> {
        let sql = match self.dialect {
            Dialect::Postgres => {
                "SELECT version, hash, last_updated, patient_id FROM resources WHERE gid = $1 \
                 FOR UPDATE"
            }
            Dialect::Sqlite => {
                "SELECT version, hash, last_updated, patient_id FROM resources WHERE gid = $1"
            }
        };
        sqlx::query_as::<_, Current>(sql)
            .bind(gid)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    /// The gateway patient of a resource about to be stored (`put`, step 2): a Patient is
    /// linked (found or created), anything else follows its patient reference if the Patient
    /// is known yet.
    async fn patient_of_prepared(&mut self, p: &Prepared) -> Result<Option<String>> {
        if p.rtype == "Patient" {
            Ok(Some(self.link_patient(p).await?))
        } else if let Some(id) = &p.patient_id {
            Ok(Some(self.resolve_patient(id).await?))
        } else if let Some(r) = &p.patient_ref {
            self.patient_of_reference(&p.sector, r).await
        } else {
            Ok(None)
        }
    }

    /// Keeps the new version's body (`put`, step 3).
    async fn insert_version(
        &mut self,
        gid: &str,
        version: i64,
        p: &Prepared,
        received_us: i64,
        last_updated: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO resource_versions (gid, version, hash, body, received_us, last_updated) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(gid)
        .bind(version)
        .bind(&p.hash)
        .bind(&p.body)
        .bind(received_us)
        .bind(last_updated)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    /// Points the resource at its new current version (`put`, step 4).
    async fn upsert_resource(
        &mut self,
        gid: &str,
        version: i64,
        p: &Prepared,
        patient_id: Option<&str>,
        last_updated: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO resources (gid, sector, rtype, rid, version, hash, patient_ref, patient_id, last_updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (gid) DO UPDATE SET version = excluded.version, hash = excluded.hash, \
             patient_ref = excluded.patient_ref, patient_id = excluded.patient_id, last_updated = excluded.last_updated",
        )
        .bind(gid)
        .bind(&p.sector)
        .bind(&p.rtype)
        .bind(&p.rid)
        .bind(version)
        .bind(&p.hash)
        .bind(p.patient_ref.as_deref())
        .bind(patient_id)
        .bind(last_updated)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    /// Records the resource's business identifiers, for conditional create and search
    /// (`put`, step 5): `resource_identifiers` keeps the latest holder of each identifier,
    /// `identifier_index` every current holder.
    async fn index_identifiers(&mut self, gid: &str, p: &Prepared) -> Result<()> {
        sqlx::query("DELETE FROM identifier_index WHERE gid = $1")
            .bind(gid)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        let rows: Vec<[&str; 5]> = p
            .identifiers
            .iter()
            .map(|(system, value)| [p.sector.as_str(), &p.rtype, system, value, gid])
            .collect();
        self.index_identifier_rows(&rows).await
    }

    /// `put` with its patient identifiers' locks already held ([`SqlTx::lock_writes`]): the
    /// current row read (and locked, on PostgreSQL), the decision of [`SqlTx::decide`], written
    /// row by row. `gid` is `p`'s gateway id.
    async fn put_one(&mut self, p: &Prepared, gid: String) -> Result<PutOutcome> {
        let current = self.current(&gid).await?;
        let received = now_us();
        let last_updated = instant(received);
        let (outcome, write) = self.decide(p, gid, current, &last_updated).await?;
        if let Some(w) = write {
            self.insert_version(&w.gid, w.version, p, received, &last_updated)
                .await?;
            self.upsert_resource(&w.gid, w.version, p, w.patient_id.as_deref(), &last_updated)
                .await?;
            self.index_identifiers(&w.gid, p).await?;
        }
        Ok(outcome)
    }

    /// Takes the locks of the keys that are no row: each patient identifier a Patient among
    /// `writes` links, in one statement, sorted, so that transactions linking overlapping sets
    /// never wait for each other in a cycle, after the write gate ([`WRITE_GATE`]) in shared
    /// mode. A write of more than [`LOCK_KEYS_MAX`] such keys takes the gate exclusively
    /// instead, and no key's lock: every PostgreSQL server shares one lock table of
    /// `max_locks_per_transaction` × `max_connections` entries (6,400 by default), and two
    /// 9,000-Patient Bundles at once, a lock per key, would fill it ("out of shared memory").
    /// A write with no Patient takes nothing here. SQLite needs none (`BEGIN IMMEDIATE` admits
    /// one writer).
    ///
    /// The resources themselves take no advisory lock (on a 340-entry Bundle those were 341
    /// lock-table entries and ≈ 10 % of PostgreSQL's time at 4 clients): their current rows are
    /// read `FOR UPDATE` in gateway-id order, or (a multi-row write's first versions) their
    /// `resources` rows inserted first, in gateway-id order (plain, or `ON CONFLICT DO NOTHING`
    /// once the key refused that: see [`SqlTx::insert_first_rows_pg`]; a row
    /// lock lives in the row, not the lock table), so two writers of an existing resource take
    /// turns as before, and the second sees the first's version; a multi-row writer that meets
    /// another's new row waits for its commit, then reads it and writes the next version. Through
    /// `put`, a resource with no row yet has nothing to lock: two first writes both insert
    /// version 1, the second waits for the first's commit and is refused by
    /// `resource_versions`' primary key, which is [`StoreError::Busy`] (see [`super::busy`]):
    /// run again, it reads the first's row.
    pub(super) async fn lock_writes(&mut self, writes: &[&Prepared]) -> Result<()> {
        if self.dialect != Dialect::Postgres || self.alone {
            return Ok(());
        }
        let mut keys: Vec<String> = writes.iter().flat_map(|p| patient_lock_keys(p)).collect();
        if keys.is_empty() {
            return Ok(());
        }
        keys.sort();
        keys.dedup();
        if keys.len() > LOCK_KEYS_MAX {
            self.lock_keys_pg(Gate::Exclusive, &[]).await?;
            self.alone = true;
            return Ok(());
        }
        self.lock_keys_pg(Gate::Shared, &keys).await
    }

    /// Forgets the patients of references remembered in this transaction (after an unmerge).
    pub(super) fn forget_patient_refs(&mut self) {
        self.patient_refs.clear();
    }

    /// Follows merges to the surviving gateway patient.
    pub(super) async fn resolve_patient(&mut self, id: &str) -> Result<String> {
        let mut current = id.to_owned();
        for _ in 0..16 {
            let next: Option<String> =
                sqlx::query_scalar("SELECT into_id FROM patient_merges WHERE from_id = $1")
                    .bind(&current)
                    .fetch_optional(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
            match next {
                Some(n) => current = n,
                None => break,
            }
        }
        Ok(current)
    }

    async fn patient_for_identifier(
        &mut self,
        system: &str,
        value: &str,
    ) -> Result<Option<String>> {
        sqlx::query_scalar(
            "SELECT patient_id FROM patient_identifiers WHERE system = $1 AND value = $2",
        )
        .bind(system)
        .bind(value)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    /// Finds or creates the gateway patient of a sector Patient from its linking identifiers,
    /// merging gateway patients when one Patient names identifiers of two of them. Its
    /// identifiers' locks are held already: every write takes them up front
    /// ([`SqlTx::lock_writes`]), or holds the write gate alone.
    async fn link_patient(&mut self, p: &Prepared) -> Result<String> {
        self.patient_refs.clear();
        let keys = link_keys(p);
        let mut found: Vec<String> = Vec::new();
        // Gateway patients named by an identifier outside the sector's own authority.
        let mut real: Vec<String> = Vec::new();
        for (s, v) in &keys {
            if let Some(pid) = self.patient_for_identifier(s, v).await? {
                let pid = self.resolve_patient(&pid).await?;
                if !is_authority_key(p, s) && !real.contains(&pid) {
                    real.push(pid.clone());
                }
                if !found.contains(&pid) {
                    found.push(pid);
                }
            }
        }
        if found.len() > 1 && !p.allow_merge {
            self.check_merge(p, &found, &real).await?;
        }
        // The patient a real identifier names survives (a replacement number's joins it).
        if let Some(r) = real.first()
            && let Some(i) = found.iter().position(|f| f == r)
        {
            let survivor = found.remove(i);
            found.insert(0, survivor);
        }
        let survivor = match found.first() {
            Some(first) => first.clone(),
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                sqlx::query("INSERT INTO patients (id, created_us) VALUES ($1, $2)")
                    .bind(&id)
                    .bind(now_us())
                    .execute(&mut *self.tx)
                    .await
                    .map_err(map_err)?;
                id
            }
        };
        for other in found.iter().skip(1) {
            self.merge_patient(other, &survivor).await?;
        }
        self.merged = found.iter().skip(1).cloned().collect();
        for (s, v) in &keys {
            sqlx::query(
                "INSERT INTO patient_identifiers (system, value, patient_id) VALUES ($1, $2, $3) \
                 ON CONFLICT (system, value) DO UPDATE SET patient_id = excluded.patient_id",
            )
            .bind(s)
            .bind(v)
            .bind(&survivor)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        }
        self.link_waiting(p, &survivor).await?;
        // The references to this Patient resolve to the survivor before its own row is written
        // (`put_many` writes it with the rest of the request).
        let own = (p.sector.clone(), format!("Patient/{}", p.rid));
        self.patient_refs.insert(own, Some(survivor.clone()));
        Ok(survivor)
    }

    /// Resources of the sector that arrived before their Patient are linked now.
    async fn link_waiting(&mut self, p: &Prepared, survivor: &str) -> Result<()> {
        sqlx::query(
            "UPDATE resources SET patient_id = $1 WHERE sector = $2 AND patient_ref = $3 \
             AND (patient_id IS NULL OR patient_id <> $1)",
        )
        .bind(survivor)
        .bind(&p.sector)
        .bind(format!("Patient/{}", p.rid))
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        for (s, v) in &p.link_identifiers {
            sqlx::query(
                "UPDATE resources SET patient_id = $1 WHERE sector = $2 AND patient_ref = $3 AND patient_id IS NULL",
            )
            .bind(survivor)
            .bind(&p.sector)
            .bind(format!("Patient?identifier={s}|{v}"))
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        }
        Ok(())
    }

    /// Whether the sector may join the gateway patients `found` (named by the Patient's
    /// identifiers; `real` are those named by an identifier outside its own authority): only
    /// when at most one of them is named by a real identifier and every other one is known by
    /// nothing but sector Patient keys and numbers the sector issues itself (a replacement
    /// number, linked to the real CPR once it is known). Otherwise [`StoreError::MergeHeld`].
    async fn check_merge(&mut self, p: &Prepared, found: &[String], real: &[String]) -> Result<()> {
        let held = |reason: String| StoreError::MergeHeld {
            reason,
            patients: found.to_vec(),
        };
        if real.len() > 1 {
            return Err(held(format!(
                "the Patient's identifiers name {} different people known to the gateway;                  a sector may join two people's records only through a replacement number it                  issues itself",
                real.len()
            )));
        }
        for other in found.iter().filter(|f| !real.contains(f)) {
            let idents: Vec<Identifier> = sqlx::query_as(
                "SELECT system, value FROM patient_identifiers WHERE patient_id = $1",
            )
            .bind(other)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
            if idents.iter().any(|i| !is_authority_key(p, &i.system)) {
                return Err(held(
                    "the write would join two people known to the gateway by identifiers outside                      this sector's own replacement numbers"
                        .to_owned(),
                ));
            }
        }
        if real.is_empty() {
            return Err(held(
                "the Patient's own numbers name two people known to the gateway and none of its                  identifiers is a real one"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    async fn merge_patient(&mut self, from: &str, into: &str) -> Result<()> {
        self.patient_refs.clear();
        // What `from` held, so that `unmerge` can give it back.
        let moved: Vec<Identifier> = sqlx::query_as(
            "SELECT system, value FROM patient_identifiers WHERE patient_id = $1 ORDER BY system, value",
        )
        .bind(from)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        let moved: Vec<(String, String)> = moved.into_iter().map(|i| (i.system, i.value)).collect();
        // A Vec of string pairs always serialises.
        let moved = serde_json::to_string(&moved).unwrap_or_else(|_| "[]".into());
        // Audit rows keep the id they were recorded under; searches follow patient_merges.
        for sql in [
            "UPDATE patient_identifiers SET patient_id = $2 WHERE patient_id = $1",
            "UPDATE resources SET patient_id = $2 WHERE patient_id = $1",
        ] {
            sqlx::query(sql)
                .bind(from)
                .bind(into)
                .execute(&mut *self.tx)
                .await
                .map_err(map_err)?;
        }
        sqlx::query(
            "INSERT INTO patient_merges (from_id, into_id, merged_us, moved_identifiers)              VALUES ($1, $2, $3, $4)",
        )
        .bind(from)
        .bind(into)
        .bind(now_us())
        .bind(moved)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    /// The gateway patient a non-Patient resource belongs to, if its Patient is known yet.
    async fn patient_of_reference(
        &mut self,
        sector: &str,
        reference: &str,
    ) -> Result<Option<String>> {
        let key = (sector.to_owned(), reference.to_owned());
        if let Some(known) = self.patient_refs.get(&key) {
            return Ok(known.clone());
        }
        let found = self
            .patient_of_reference_uncached(sector, reference)
            .await?;
        self.patient_refs.insert(key, found.clone());
        Ok(found)
    }

    async fn patient_of_reference_uncached(
        &mut self,
        sector: &str,
        reference: &str,
    ) -> Result<Option<String>> {
        let found = if let Some(rid) = reference.strip_prefix("Patient/") {
            // By primary key: PostgreSQL's generic plan for the (sector, rtype, rid) form was
            // seen scanning once the table grew.
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT patient_id FROM resources WHERE gid = $1",
            )
            .bind(gateway_id(sector, "Patient", rid))
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)?
            .flatten()
        } else if let Some((s, v)) = reference
            .strip_prefix("Patient?identifier=")
            .and_then(|q| q.split_once('|'))
        {
            self.patient_for_identifier(s, v).await?
        } else {
            None
        };
        match found {
            Some(id) => Ok(Some(self.resolve_patient(&id).await?)),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl StoreTx for SqlTx {
    async fn find_by_identifier(
        &mut self,
        sector: &str,
        rtype: &str,
        system: &str,
        value: &str,
    ) -> Result<Option<String>> {
        sqlx::query_scalar(
            "SELECT r.rid FROM resource_identifiers i JOIN resources r ON r.gid = i.gid \
             WHERE i.sector = $1 AND i.rtype = $2 AND i.system = $3 AND i.value = $4",
        )
        .bind(sector)
        .bind(rtype)
        .bind(system)
        .bind(value)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn put_many(&mut self, writes: &[&Prepared]) -> Result<Vec<PutOutcome>> {
        self.put_many_sql(writes).await
    }

    async fn outbox_add_many(
        &mut self,
        entries: &[super::OutboxNew],
    ) -> Result<std::collections::BTreeSet<String>> {
        self.outbox_add_many_sql(entries).await
    }

    async fn put(&mut self, p: &Prepared) -> Result<PutOutcome> {
        let gid = gateway_id(&p.sector, &p.rtype, &p.rid);
        self.lock_writes(&[p]).await?;
        self.put_one(p, gid).await
    }

    async fn get(&mut self, gid: &str) -> Result<Option<Stored>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {STORED_COLUMNS} FROM resources r JOIN resource_versions v \
             ON v.gid = r.gid AND v.version = r.version WHERE r.gid = $1"
        ));
        sqlx::query_as::<_, Stored>(sql)
            .bind(gid)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn get_sector(&mut self, sector: &str, rtype: &str, rid: &str) -> Result<Option<Stored>> {
        self.get(&gateway_id(sector, rtype, rid)).await
    }

    async fn by_patient(
        &mut self,
        patient_id: &str,
        rtype: Option<&str>,
        offset: i64,
        count: i64,
    ) -> Result<Vec<Stored>> {
        let patient_id = self.resolve_patient(patient_id).await?;
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {STORED_COLUMNS} FROM resources r JOIN resource_versions v \
             ON v.gid = r.gid AND v.version = r.version \
             WHERE r.patient_id = $1 AND ($2 = '' OR r.rtype = $2) \
             ORDER BY r.rtype, r.sector, r.gid LIMIT $3 OFFSET $4"
        ));
        sqlx::query_as::<_, Stored>(sql)
            .bind(&patient_id)
            .bind(rtype.unwrap_or(""))
            .bind(count)
            .bind(offset)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn by_patient_types(&mut self, patient_id: &str, rtypes: &[&str]) -> Result<Vec<Stored>> {
        if rtypes.is_empty() {
            return Ok(Vec::new());
        }
        let patient_id = self.resolve_patient(patient_id).await?;
        let params: Vec<String> = (0..rtypes.len()).map(|i| format!("${}", i + 2)).collect();
        // Only placeholders are formatted into the statement; the types are bound.
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {STORED_COLUMNS} FROM resources r JOIN resource_versions v \
             ON v.gid = r.gid AND v.version = r.version \
             WHERE r.patient_id = $1 AND r.rtype IN ({}) \
             ORDER BY r.rtype, r.sector, r.gid",
            params.join(", ")
        ));
        let mut q = sqlx::query_as::<_, Stored>(sql).bind(&patient_id);
        for t in rtypes {
            q = q.bind(*t);
        }
        q.fetch_all(&mut *self.tx).await.map_err(map_err)
    }

    async fn versions(&mut self, gid: &str) -> Result<Vec<Stored>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {VERSION_COLUMNS} FROM resources r JOIN resource_versions v ON v.gid = r.gid \
             WHERE r.gid = $1 ORDER BY v.version DESC"
        ));
        sqlx::query_as::<_, Stored>(sql)
            .bind(gid)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn version(&mut self, gid: &str, version: i64) -> Result<Option<Stored>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {VERSION_COLUMNS} FROM resources r JOIN resource_versions v ON v.gid = r.gid \
             WHERE r.gid = $1 AND v.version = $2"
        ));
        sqlx::query_as::<_, Stored>(sql)
            .bind(gid)
            .bind(version)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn type_history(
        &mut self,
        rtype: &str,
        sector: Option<&str>,
        offset: i64,
        count: i64,
    ) -> Result<Vec<Stored>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {VERSION_COLUMNS} FROM resources r JOIN resource_versions v ON v.gid = r.gid \
             WHERE r.rtype = $1 AND ($2 = '' OR r.sector = $2) \
             ORDER BY v.received_us DESC, v.gid, v.version DESC LIMIT $3 OFFSET $4"
        ));
        sqlx::query_as::<_, Stored>(sql)
            .bind(rtype)
            .bind(sector.unwrap_or(""))
            .bind(count)
            .bind(offset)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn search(&mut self, f: &SearchFilter) -> Result<Vec<Stored>> {
        let patient = match &f.patient_id {
            Some(p) => Some(self.resolve_patient(p).await?),
            None => None,
        };
        let (sql, binds) = search_sql(f, patient);
        let sql = sqlx::AssertSqlSafe(sql);
        bind_all!(sqlx::query_as::<_, Stored>(sql), binds)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn get_many(&mut self, gids: &[String]) -> Result<Vec<Stored>> {
        let mut out = Vec::new();
        for chunk in gids.chunks(500) {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT {STORED_COLUMNS} FROM resources r JOIN resource_versions v \
                 ON v.gid = r.gid AND v.version = r.version WHERE r.gid IN ({}) ORDER BY r.gid",
                placeholders(1, chunk.len())
            ));
            let mut q = sqlx::query_as::<_, Stored>(sql);
            for g in chunk {
                q = q.bind(g);
            }
            out.extend(q.fetch_all(&mut *self.tx).await.map_err(map_err)?);
        }
        Ok(out)
    }

    async fn existing(&mut self, gids: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for chunk in gids.chunks(500) {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT gid FROM resources WHERE gid IN ({})",
                placeholders(1, chunk.len())
            ));
            let mut q = sqlx::query_scalar::<_, String>(sql);
            for g in chunk {
                q = q.bind(g);
            }
            out.extend(q.fetch_all(&mut *self.tx).await.map_err(map_err)?);
        }
        Ok(out)
    }

    async fn patient(&mut self, patient_id: &str) -> Result<Option<GatewayPatient>> {
        let id = self.resolve_patient(patient_id).await?;
        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM patients WHERE id = $1")
            .bind(&id)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)?;
        if exists.is_none() {
            return Ok(None);
        }
        let identifiers = sqlx::query_as::<_, Identifier>(
            "SELECT system, value FROM patient_identifiers WHERE patient_id = $1 ORDER BY system, value",
        )
        .bind(&id)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?
        .into_iter()
        .filter(|i| !i.system.starts_with(SECTOR_PATIENT_SYSTEM))
        .map(|i| (i.system, i.value))
        .collect();
        let sector_patients = self.by_patient(&id, Some("Patient"), 0, 1000).await?;
        Ok(Some(GatewayPatient {
            id,
            identifiers,
            sector_patients,
        }))
    }

    async fn patient_by_identifier(&mut self, system: &str, value: &str) -> Result<Option<String>> {
        match self.patient_for_identifier(system, value).await? {
            Some(id) => Ok(Some(self.resolve_patient(&id).await?)),
            None => Ok(None),
        }
    }

    async fn audit(&mut self, a: &AuditRow) -> Result<()> {
        self.pending_audit.push(a.clone());
        Ok(())
    }

    async fn audit_search(&mut self, q: &AuditQuery) -> Result<Vec<AuditRow>> {
        let (filter, mut values) = self.audit_filter(q).await?;
        let (limit, offset) = (values.len() + 1, values.len() + 2);
        values.extend([Bind::Int(q.count), Bind::Int(q.offset)]);
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log {filter} ORDER BY seq LIMIT ${limit} OFFSET ${offset}"
        ));
        let rows = bind_all!(sqlx::query_as::<_, AuditRecord>(sql), values)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(rows.into_iter().map(AuditRow::from).collect())
    }

    async fn audit_count(&mut self, q: &AuditQuery) -> Result<i64> {
        let (filter, values) = self.audit_filter(q).await?;
        let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM audit_log {filter}"));
        bind_all!(sqlx::query_scalar::<_, i64>(sql), values)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn audit_chain_page(&mut self, after: i64, limit: i64) -> Result<Vec<AuditRow>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
        ));
        let rows = sqlx::query_as::<_, AuditRecord>(sql)
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(rows.into_iter().map(AuditRow::from).collect())
    }

    async fn audit_range_page(
        &mut self,
        after: i64,
        from_us: i64,
        to_us: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 AND recorded_us >= $2 \
             AND recorded_us <= $3 ORDER BY seq LIMIT $4"
        ));
        let rows = sqlx::query_as::<_, AuditRecord>(sql)
            .bind(after)
            .bind(from_us)
            .bind(to_us)
            .bind(limit)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(rows.into_iter().map(AuditRow::from).collect())
    }

    async fn audit_range_count(&mut self, from_us: i64, to_us: i64) -> Result<i64> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_log WHERE recorded_us >= $1 AND recorded_us <= $2",
        )
        .bind(from_us)
        .bind(to_us)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn audit_last_seq_before(&mut self, before_us: i64) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT MAX(seq) FROM audit_log WHERE recorded_us < $1")
            .bind(before_us)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn audit_head(&mut self) -> Result<Option<(i64, String)>> {
        let head = sqlx::query_as::<_, Head>("SELECT seq, hash FROM audit_head WHERE chain = $1")
            .bind(AUDIT_CHAIN)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(head.map(|h| (h.seq, h.hash)))
    }

    async fn audit_prune(&mut self, upto: i64, checkpoint: AuditRow) -> Result<i64> {
        self.chain_head_locked().await?;
        sqlx::query("INSERT INTO audit_prune_permit (upto) VALUES ($1)")
            .bind(upto)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        let deleted = sqlx::query("DELETE FROM audit_log WHERE seq <= $1")
            .bind(upto)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        sqlx::query("DELETE FROM audit_prune_permit")
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        self.pending_audit.push(checkpoint);
        Ok(deleted as i64)
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if self.read_only && !self.pending_audit.is_empty() {
            // On PostgreSQL a read runs outside a transaction: the rows would not hold the
            // chain's lock, nor commit as one.
            return Err(StoreError::Corrupt {
                what: "a read transaction".into(),
                error: "audit rows are written in begin() or begin_audited(), not begin_read()"
                    .into(),
            });
        }
        self.append_audit().await?;
        let after = self.tree_after.take();
        let cache = self.tree.clone();
        self.tx.commit().await.map_err(map_err)?;
        // Numbered inside the writer's turn, after its frames are written (see `wal`).
        let ticket = self
            .commits
            .as_ref()
            .map(|c| c.fetch_add(1, Ordering::AcqRel) + 1);
        // Only what committed is remembered.
        if let Some(edge) = after
            && let Ok(mut c) = cache.lock()
        {
            *c = Some(edge);
        }
        // The next writer goes on while the WAL is synced; this one is answered after.
        drop(self.turn.take());
        match (&self.wal, ticket) {
            (Some(wal), Some(ticket)) => wal.wait(ticket).await,
            _ => Ok(()),
        }
    }
}
