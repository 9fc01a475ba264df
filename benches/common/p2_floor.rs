//! The durable-write floor of P2: the same Bundles' bytes written into the gateway's own schema
//! with the gateway's durability, one transaction per Bundle, and no FHIR work — the rate the
//! gateway cannot beat on the same store (see benches/README.md, "P2 — the durable-write floor").
//!
//! Per Bundle: the entries' resources are taken as the bytes sent (`serde_json::value::RawValue`)
//! with a small struct for `resourceType`, `id`, `identifier` and the patient reference
//! (`subject`, `patient`, `beneficiary`, `individual`); gateway ids and hashes are computed as
//! the gateway does (`ids::gateway_id`, `ids::content_hash`); then one transaction writes, for
//! every entry, its `resource_versions` row (version 1, the bytes as sent), its `resources` row
//! and its identifier rows (`identifier_index`, `resource_identifiers`), plus the Bundle's
//! gateway patient (`patients`, one `patient_identifiers` row: the sector Patient key) and one
//! `audit_log` row naming every entry (seq from a counter of this process, no hash chain, no
//! Merkle tree). Statements: SQLite, multi-row `INSERT … VALUES` of at most [`CHUNK`] rows (the
//! remainder in powers of two, so each connection prepares a few texts and reuses them);
//! PostgreSQL, one `INSERT … SELECT FROM UNNEST($n::text[], …)` per table.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::value::RawValue;
use sqlx::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use carebridge::fhir::time::{instant, now_us};
use carebridge::ids::{content_hash, gateway_id};

/// The sector the gateway side writes as.
pub const SECTOR: &str = "lab";
/// The most rows of one SQLite statement.
pub const CHUNK: usize = 128;
/// Where a resource names its patient, in the gateway's order (`fhir::patient_reference`).
const PATIENT_ELEMENTS: usize = 4;

#[derive(Deserialize)]
struct BundleIn<'a> {
    #[serde(borrow, default)]
    entry: Vec<EntryIn<'a>>,
}

#[derive(Deserialize)]
struct EntryIn<'a> {
    #[serde(borrow)]
    resource: &'a RawValue,
}

/// What the floor reads of a resource; every other member is skipped.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "resourceType")]
    rtype: String,
    id: Option<String>,
    identifier: Option<Identifiers>,
    subject: Option<Ref>,
    patient: Option<Ref>,
    beneficiary: Option<Ref>,
    individual: Option<Ref>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Identifiers {
    Many(Vec<Identifier>),
    One(Identifier),
}

#[derive(Deserialize)]
struct Identifier {
    system: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
struct Ref {
    reference: Option<String>,
}

impl Head {
    fn refs(&self) -> [Option<&str>; PATIENT_ELEMENTS] {
        [
            &self.subject,
            &self.patient,
            &self.beneficiary,
            &self.individual,
        ]
        .map(|r| r.as_ref().and_then(|r| r.reference.as_deref()))
    }

    fn identifiers(&self) -> Vec<(String, String)> {
        let list = match &self.identifier {
            Some(Identifiers::Many(v)) => v.iter().collect(),
            Some(Identifiers::One(i)) => vec![i],
            None => Vec::new(),
        };
        list.into_iter()
            .filter_map(|i| Some((i.system.clone()?, i.value.clone()?)))
            .collect()
    }
}

/// One resource's row values.
struct Item<'a> {
    rtype: String,
    rid: String,
    gid: String,
    hash: String,
    body: &'a str,
    patient_ref: Option<String>,
    patient_id: Option<String>,
}

/// One identifier row: (rtype, system, value, gid).
type IdentRow = (String, String, String, String);

/// Everything one Bundle writes.
struct Rows<'a> {
    items: Vec<Item<'a>>,
    /// `identifier_index` (every holder, deduplicated).
    index: Vec<IdentRow>,
    /// `resource_identifiers` (the last holder of each identifier).
    latest: Vec<IdentRow>,
    /// The gateway patient and the sector Patient's id.
    patient: Option<(String, String)>,
    /// The audit row's entities (`["Type/gid", …]`).
    entities: String,
    received_us: i64,
    last_updated: String,
}

/// The minimal extraction: resource bytes, type, id, identifiers and patient reference.
fn extract(text: &str) -> Result<Rows<'_>> {
    let bundle: BundleIn<'_> = serde_json::from_str(text).context("a Bundle")?;
    let mut heads = Vec::with_capacity(bundle.entry.len());
    for e in &bundle.entry {
        let body = e.resource.get();
        let head: Head = serde_json::from_str(body).context("an entry's resource")?;
        heads.push((head, body));
    }
    let patient_rid = heads
        .iter()
        .find(|(h, _)| h.rtype == "Patient")
        .and_then(|(h, _)| h.id.clone());
    let patient = patient_rid.map(|rid| (uuid::Uuid::new_v4().to_string(), rid));
    let received_us = now_us();
    let mut rows = Rows {
        items: Vec::with_capacity(heads.len()),
        index: Vec::new(),
        latest: Vec::new(),
        patient: patient.clone(),
        entities: String::new(),
        received_us,
        last_updated: instant(received_us),
    };
    let mut latest = std::collections::HashMap::new();
    let mut entities = Vec::with_capacity(heads.len());
    for (head, body) in heads {
        let Some(rid) = head.id.clone() else {
            bail!(
                "a {} without an id (the floor takes each resource's own id)",
                head.rtype
            );
        };
        let gid = gateway_id(SECTOR, &head.rtype, &rid);
        let (patient_ref, patient_id) = match &patient {
            Some((pid, prid)) if head.rtype == "Patient" && *prid == rid => {
                (None, Some(pid.clone()))
            }
            Some((pid, prid)) => {
                let urn = format!("urn:uuid:{prid}");
                let local = format!("Patient/{prid}");
                let names = head
                    .refs()
                    .into_iter()
                    .flatten()
                    .any(|r| r == urn || r == local);
                if names {
                    (Some(local), Some(pid.clone()))
                } else {
                    (None, None)
                }
            }
            None => (None, None),
        };
        for (system, value) in head.identifiers() {
            let row = (head.rtype.clone(), system, value, gid.clone());
            if !rows.index.contains(&row) {
                rows.index.push(row.clone());
            }
            latest.insert((row.0.clone(), row.1.clone(), row.2.clone()), row);
        }
        entities.push(format!("{}/{gid}", head.rtype));
        rows.items.push(Item {
            hash: content_hash(body.as_bytes()),
            rtype: head.rtype,
            rid,
            gid,
            body,
            patient_ref,
            patient_id,
        });
    }
    rows.latest = latest.into_values().collect();
    rows.latest.sort();
    rows.entities = serde_json::to_string(&entities)?;
    Ok(rows)
}

/// The floor's store: a fresh SQLite file or PostgreSQL database with the gateway's schema.
pub struct Floor {
    url: String,
    postgres: bool,
    /// SQLite: writers of this process queue here first come first served, as the gateway's do
    /// (`SqlStore::writer`), instead of in SQLite's busy handler.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// The audit rows' `seq` (no chain: one counter for every client).
    seq: Arc<AtomicI64>,
}

/// One Bundle written: when it started (from the step's start), how long it took, its entries.
pub struct Done {
    pub at: Duration,
    pub latency: Duration,
    pub resources: usize,
}

enum Conn {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Floor {
    /// A fresh SQLite file `floor.db` in `dir`.
    pub async fn sqlite(dir: &Path) -> Result<Floor> {
        let url = format!("sqlite://{}", dir.join("floor.db").display());
        Floor::migrated(url, false).await
    }

    /// An existing empty PostgreSQL database.
    pub async fn postgres(url: &str) -> Result<Floor> {
        Floor::migrated(url.to_owned(), true).await
    }

    /// The gateway's schema, made by the gateway's own migrations (`SqlStore::connect`).
    async fn migrated(url: String, postgres: bool) -> Result<Floor> {
        let store = carebridge::store::SqlStore::connect(&url, 1)
            .await
            .with_context(|| format!("migrating the floor's store {url}"))?;
        store.close().await;
        Ok(Floor {
            url,
            postgres,
            writer: Arc::new(tokio::sync::Mutex::new(())),
            seq: Arc::new(AtomicI64::new(0)),
        })
    }

    /// A connection with the gateway's settings: for SQLite the URL `SqlStore::connect` builds
    /// and the pragmas it sets after connecting its write connection (the page cache of
    /// `SQLITE_WRITER_CACHE` included: each floor connection writes); for PostgreSQL the
    /// server's defaults.
    async fn connect(&self) -> Result<Conn> {
        if self.postgres {
            return Ok(Conn::Postgres(
                sqlx::PgConnection::connect(&self.url).await?,
            ));
        }
        let path = self.url.trim_start_matches("sqlite://");
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{path}?mode=rwc")).await?;
        let writer = [carebridge::store::sql::SQLITE_WRITER_CACHE];
        for pragma in carebridge::store::sql::SQLITE_PRAGMAS
            .into_iter()
            .chain(writer)
        {
            sqlx::query(pragma).execute(&mut c).await?;
        }
        Ok(Conn::Sqlite(c))
    }

    /// The settings a floor connection runs with, for the record.
    pub async fn settings(&self) -> Result<serde_json::Value> {
        let mut out = serde_json::Map::new();
        match self.connect().await? {
            Conn::Sqlite(mut c) => {
                for key in [
                    "journal_mode",
                    "synchronous",
                    "locking_mode",
                    "foreign_keys",
                    "page_size",
                    "cache_size",
                    "temp_store",
                    "wal_autocheckpoint",
                ] {
                    let sql = sqlx::AssertSqlSafe(format!("PRAGMA {key}"));
                    let v: sqlx::sqlite::SqliteRow = sqlx::query(sql).fetch_one(&mut c).await?;
                    let text: String = sqlx::Row::try_get::<String, _>(&v, 0)
                        .or_else(|_| sqlx::Row::try_get::<i64, _>(&v, 0).map(|n| n.to_string()))?;
                    out.insert(key.into(), text.into());
                }
            }
            Conn::Postgres(mut c) => {
                for key in ["fsync", "synchronous_commit", "wal_sync_method"] {
                    let sql = sqlx::AssertSqlSafe(format!("SHOW {key}"));
                    let v: String = sqlx::query_scalar(sql).fetch_one(&mut c).await?;
                    out.insert(key.into(), v.into());
                }
            }
        }
        Ok(out.into())
    }

    /// Rows in the floor's tables.
    pub async fn count_rows(&self) -> Result<serde_json::Value> {
        let mut out = serde_json::Map::new();
        let mut conn = self.connect().await?;
        for t in [
            "resources",
            "resource_versions",
            "identifier_index",
            "resource_identifiers",
            "patients",
            "audit_log",
        ] {
            let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {t}"));
            let n: i64 = match &mut conn {
                Conn::Sqlite(c) => sqlx::query_scalar(sql).fetch_one(c).await?,
                Conn::Postgres(c) => sqlx::query_scalar(sql).fetch_one(c).await?,
            };
            out.insert(t.into(), n.into());
        }
        Ok(out.into())
    }

    /// `clients` clients (threads, each its own connection), each writing its next Bundle when
    /// the last one committed; returns every Bundle's figures and the step's seconds.
    pub async fn step(
        &self,
        bodies: Arc<Vec<(String, usize)>>,
        clients: usize,
    ) -> Result<(Vec<Done>, f64)> {
        let next = Arc::new(AtomicUsize::new(0));
        // SQLite: the WAL copied back beside the writers as the gateway's store does it
        // (`store::sql::SQLITE_CHECKPOINT` every `SQLITE_CHECKPOINT_EVERY`, on a connection of
        // its own), so that the floor's commits do not skip work the gateway's pay for.
        let stop = Arc::new(AtomicBool::new(false));
        let checkpoints = (!self.postgres).then(|| {
            let (floor, stop) = (self.clone_handle(), stop.clone());
            tokio::task::spawn_blocking(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let Conn::Sqlite(mut c) = floor.connect().await? else {
                        return Ok(());
                    };
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(carebridge::store::sql::SQLITE_CHECKPOINT_EVERY).await;
                        sqlx::query(carebridge::store::sql::SQLITE_CHECKPOINT)
                            .execute(&mut c)
                            .await?;
                    }
                    Ok(())
                })
            })
        });
        let barrier = Arc::new(Barrier::new(clients));
        let t0: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let floor = self.clone_handle();
            let (bodies, next, barrier, t0) =
                (bodies.clone(), next.clone(), barrier.clone(), t0.clone());
            tasks.push(tokio::task::spawn_blocking(
                move || -> Result<(Vec<Done>, Instant)> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        let conn = floor.connect().await;
                        // Every client connected before the clock starts.
                        barrier.wait();
                        let start = *t0.get_or_init(Instant::now);
                        let mut conn = conn?;
                        let mut done = Vec::new();
                        while let Some((body, resources)) =
                            bodies.get(next.fetch_add(1, Ordering::Relaxed))
                        {
                            let t = Instant::now();
                            floor.write(&mut conn, body).await?;
                            done.push(Done {
                                at: t - start,
                                latency: t.elapsed(),
                                resources: *resources,
                            });
                        }
                        Ok((done, Instant::now()))
                    })
                },
            ));
        }
        let mut all = Vec::new();
        let mut end = None::<Instant>;
        for t in tasks {
            let (done, finished) = t.await.context("floor client")??;
            all.extend(done);
            end = Some(end.map_or(finished, |e| e.max(finished)));
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(c) = checkpoints {
            c.await.context("floor checkpoints")??;
        }
        let secs = match (t0.get(), end) {
            (Some(s), Some(e)) => (e - *s).as_secs_f64(),
            _ => f64::NAN,
        };
        Ok((all, secs))
    }

    fn clone_handle(&self) -> Floor {
        Floor {
            url: self.url.clone(),
            postgres: self.postgres,
            writer: self.writer.clone(),
            seq: self.seq.clone(),
        }
    }

    /// One Bundle: extraction, then one transaction.
    async fn write(&self, conn: &mut Conn, body: &str) -> Result<()> {
        let rows = extract(body)?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        match conn {
            Conn::Sqlite(c) => {
                let _turn = self.writer.lock().await;
                sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *c).await?;
                sqlite_rows(c, &rows, seq).await?;
                sqlx::raw_sql("COMMIT").execute(&mut *c).await?;
            }
            Conn::Postgres(c) => {
                sqlx::raw_sql("BEGIN").execute(&mut *c).await?;
                postgres_rows(c, &rows, seq).await?;
                sqlx::raw_sql("COMMIT").execute(&mut *c).await?;
            }
        }
        Ok(())
    }
}

type SqliteQuery = sqlx::query::Query<'static, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// `head VALUES row, row, … tail` in statements of [`CHUNK`] rows, the rest in powers of two
/// (`store::sql::pieces`; the floor's fastest cut, benches/README.md: the gateway's own SQLite
/// statements are larger, since each of its statements is also a round trip inside the
/// writer's turn), each row bound by `bind`.
async fn sqlite_insert<T>(
    c: &mut sqlx::SqliteConnection,
    rows: &[T],
    (head, row, tail): (&str, &str, &str),
    bind: impl Fn(SqliteQuery, &T) -> SqliteQuery,
) -> Result<()> {
    for piece in carebridge::store::sql::pieces(rows, CHUNK) {
        let values = vec![row; piece.len()].join(", ");
        let mut q: SqliteQuery =
            sqlx::query(sqlx::AssertSqlSafe(format!("{head} VALUES {values}{tail}")));
        for r in piece {
            q = bind(q, r);
        }
        q.execute(&mut *c).await?;
    }
    Ok(())
}

async fn sqlite_rows(c: &mut sqlx::SqliteConnection, rows: &Rows<'_>, seq: i64) -> Result<()> {
    let (received, updated) = (rows.received_us, rows.last_updated.as_str());
    sqlite_insert(
        c,
        &rows.items,
        (
            "INSERT INTO resource_versions (gid, version, hash, body, received_us, last_updated)",
            "(?, 1, ?, ?, ?, ?)",
            "",
        ),
        |q, i| {
            q.bind(&i.gid)
                .bind(&i.hash)
                .bind(i.body)
                .bind(received)
                .bind(updated)
        },
    )
    .await?;
    sqlite_insert(
        c,
        &rows.items,
        (
            "INSERT INTO resources (gid, sector, rtype, rid, version, hash, patient_ref, patient_id, last_updated)",
            "(?, ?, ?, ?, 1, ?, ?, ?, ?)",
            "",
        ),
        |q, i| {
            q.bind(&i.gid)
                .bind(SECTOR)
                .bind(&i.rtype)
                .bind(&i.rid)
                .bind(&i.hash)
                .bind(i.patient_ref.as_deref())
                .bind(i.patient_id.as_deref())
                .bind(updated)
        },
    )
    .await?;
    sqlite_insert(
        c,
        &rows.index,
        (
            "INSERT INTO identifier_index (sector, rtype, system, value, gid)",
            "(?, ?, ?, ?, ?)",
            " ON CONFLICT DO NOTHING",
        ),
        |q, r| q.bind(SECTOR).bind(&r.0).bind(&r.1).bind(&r.2).bind(&r.3),
    )
    .await?;
    sqlite_insert(
        c,
        &rows.latest,
        (
            "INSERT INTO resource_identifiers (sector, rtype, system, value, gid)",
            "(?, ?, ?, ?, ?)",
            " ON CONFLICT (sector, rtype, system, value) DO UPDATE SET gid = excluded.gid",
        ),
        |q, r| q.bind(SECTOR).bind(&r.0).bind(&r.1).bind(&r.2).bind(&r.3),
    )
    .await?;
    if let Some((pid, rid)) = &rows.patient {
        sqlx::query("INSERT INTO patients (id, created_us) VALUES (?, ?)")
            .bind(pid)
            .bind(received)
            .execute(&mut *c)
            .await?;
        sqlx::query("INSERT INTO patient_identifiers (system, value, patient_id) VALUES (?, ?, ?)")
            .bind(sector_key())
            .bind(rid)
            .bind(pid)
            .execute(&mut *c)
            .await?;
    }
    let (pid, hash) = audit_values(rows, seq);
    sqlx::query(AUDIT_INSERT)
        .bind(seq)
        .bind(received)
        .bind(updated)
        .bind(SECTOR)
        .bind(SECTOR)
        .bind(pid)
        .bind(&rows.entities)
        .bind(format!(
            "accepted: {} created, 0 updated, 0 unchanged",
            rows.items.len()
        ))
        .bind(hash)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// The audit-like row: an event as the gateway's accepting row has it, but `prev_hash` empty and
/// `hash` the entities' SHA-256 (no chain, no Merkle tree).
const AUDIT_INSERT: &str = "INSERT INTO audit_log (seq, kind, recorded_us, recorded, client_id, \
     sector, action, interaction, outcome, patient_id, entities, detail, prev_hash, hash) \
     VALUES ($1, 'event', $2, $3, $4, $5, 'C', 'transaction', '0', $6, $7, $8, '', $9)";

fn audit_values<'a>(rows: &'a Rows<'_>, seq: i64) -> (Option<&'a str>, String) {
    let pid = rows.patient.as_ref().map(|(p, _)| p.as_str());
    (
        pid,
        content_hash(format!("{seq}\n{}", rows.entities).as_bytes()),
    )
}

fn sector_key() -> String {
    format!("{}{SECTOR}", carebridge::store::sql::SECTOR_PATIENT_SYSTEM)
}

async fn postgres_rows(c: &mut sqlx::PgConnection, rows: &Rows<'_>, seq: i64) -> Result<()> {
    let (received, updated) = (rows.received_us, rows.last_updated.as_str());
    let items = &rows.items;
    let gids: Vec<&str> = items.iter().map(|i| i.gid.as_str()).collect();
    let hashes: Vec<&str> = items.iter().map(|i| i.hash.as_str()).collect();
    let bodies: Vec<&str> = items.iter().map(|i| i.body).collect();
    let rtypes: Vec<&str> = items.iter().map(|i| i.rtype.as_str()).collect();
    let rids: Vec<&str> = items.iter().map(|i| i.rid.as_str()).collect();
    let prefs: Vec<Option<&str>> = items.iter().map(|i| i.patient_ref.as_deref()).collect();
    let pids: Vec<Option<&str>> = items.iter().map(|i| i.patient_id.as_deref()).collect();
    sqlx::query(
        "INSERT INTO resource_versions (gid, version, hash, body, received_us, last_updated) \
         SELECT gid, 1, hash, body, $4, $5 FROM UNNEST($1::text[], $2::text[], $3::text[]) AS t(gid, hash, body)",
    )
    .bind(&gids)
    .bind(&hashes)
    .bind(&bodies)
    .bind(received)
    .bind(updated)
    .execute(&mut *c)
    .await?;
    sqlx::query(
        "INSERT INTO resources (gid, sector, rtype, rid, version, hash, patient_ref, patient_id, last_updated) \
         SELECT gid, $1, rtype, rid, 1, hash, pref, pid, $8 \
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) \
         AS t(gid, rtype, rid, hash, pref, pid)",
    )
    .bind(SECTOR)
    .bind(&gids)
    .bind(&rtypes)
    .bind(&rids)
    .bind(&hashes)
    .bind(&prefs)
    .bind(&pids)
    .bind(updated)
    .execute(&mut *c)
    .await?;
    for (list, tail) in [
        (
            &rows.index,
            "identifier_index (sector, rtype, system, value, gid) SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[]) ON CONFLICT DO NOTHING",
        ),
        (
            &rows.latest,
            "resource_identifiers (sector, rtype, system, value, gid) SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[]) ON CONFLICT (sector, rtype, system, value) DO UPDATE SET gid = excluded.gid",
        ),
    ] {
        let part = |k: usize| {
            list.iter()
                .map(|r| [&r.0, &r.1, &r.2, &r.3][k].as_str())
                .collect::<Vec<&str>>()
        };
        sqlx::query(sqlx::AssertSqlSafe(format!("INSERT INTO {tail}")))
            .bind(SECTOR)
            .bind(part(0))
            .bind(part(1))
            .bind(part(2))
            .bind(part(3))
            .execute(&mut *c)
            .await?;
    }
    if let Some((pid, rid)) = &rows.patient {
        sqlx::query("INSERT INTO patients (id, created_us) VALUES ($1, $2)")
            .bind(pid)
            .bind(received)
            .execute(&mut *c)
            .await?;
        sqlx::query(
            "INSERT INTO patient_identifiers (system, value, patient_id) VALUES ($1, $2, $3)",
        )
        .bind(sector_key())
        .bind(rid)
        .bind(pid)
        .execute(&mut *c)
        .await?;
    }
    let (pid, hash) = audit_values(rows, seq);
    sqlx::query(AUDIT_INSERT)
        .bind(seq)
        .bind(received)
        .bind(updated)
        .bind(SECTOR)
        .bind(SECTOR)
        .bind(pid)
        .bind(&rows.entities)
        .bind(format!(
            "accepted: {} created, 0 updated, 0 unchanged",
            rows.items.len()
        ))
        .bind(hash)
        .execute(&mut *c)
        .await?;
    Ok(())
}
