//! The bulk writes of one request: a Bundle's resources and its outbox rows in a few
//! multi-row statements instead of four to six round trips per resource (issue 17). The
//! decisions are the same as [`StoreTx::put`](crate::store::StoreTx::put)'s, taken in memory
//! over the current rows read in one statement.

use sqlx::FromRow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};

use super::{AUDIT_COLUMNS, Bind, Current, Dialect, SqlTx, bind_all, map_err, placeholders};
use crate::audit::AuditRow;
use crate::fhir::time::{instant, now_us};
use crate::ids::gateway_id;
use crate::store::{OutboxNew, Prepared, PutOutcome, Result, StoreError};

/// Ids per `IN` list of a read or delete by gateway id (SQLite): 512 bound values.
const READ_CHUNK: usize = 512;

/// Rows per multi-row statement on SQLite: at most 12 columns × 512 = 6,144 bound values a
/// statement, well under SQLite's 32,766. Each statement is a round trip between the request's
/// task and the connection's thread inside the writer's turn, two thread wake-ups that wait
/// for a core while the other requests' checks hold both; with [`padded_pieces`] a P2 Bundle
/// (≈ 340 resources) is one statement a table instead of six (benches/README.md, issue 17's
/// thirteenth round).
const SQLITE_CHUNK: usize = 512;

/// Rows per multi-row statement on PostgreSQL (only `resource_versions` and the audit log are
/// written this way there; the rest binds arrays): 6 × 128 = 768 bound values.
const PG_CHUNK: usize = 128;

/// Audit rows per statement: 21 columns ([`AUDIT_COLUMNS`]) × 32 = 672 bound values.
pub(super) const AUDIT_CHUNK: usize = 32;
/// The columns of an audit row, counted from [`AUDIT_COLUMNS`] itself.
pub(super) const AUDIT_WIDTH: usize = column_count(AUDIT_COLUMNS);

/// How many columns a comma-separated column list names.
const fn column_count(list: &str) -> usize {
    let bytes = list.as_bytes();
    let (mut i, mut n) = (0, 1);
    while i < bytes.len() {
        if bytes[i] == b',' {
            n += 1;
        }
        i += 1;
    }
    n
}

/// `items` in statements of at most `max` rows (a power of two): full pieces of `max`, the rest
/// in descending powers of two (77 rows: 64, 8, 4, 1). Each row count is its own statement text,
/// which each connection prepares (SQLite) or parses and plans (PostgreSQL) once and keeps in its
/// statement cache; cut at any size, Bundles of every length would bring new texts all the time
/// and push the used ones out of the cache.
pub fn pieces<T>(items: &[T], max: usize) -> Vec<&[T]> {
    debug_assert!(max.is_power_of_two());
    let mut out: Vec<&[T]> = items.chunks_exact(max).collect();
    let mut rest = items.chunks_exact(max).remainder();
    let mut size = max / 2;
    while !rest.is_empty() {
        if rest.len() >= size {
            let (piece, tail) = rest.split_at(size);
            out.push(piece);
            rest = tail;
        }
        size /= 2;
    }
    out
}

/// `items` cut for the multi-row statements: pieces of `max` rows (a power of two), each
/// written by a statement with room for the next power of two of its rows (its `slots`); the
/// slots a piece does not fill are bound as NULL and skipped (`WHERE column1 IS NOT NULL`, see
/// [`RowsInsert::text`]). With pieces of 128, 340 rows are three statements (128, 128, 84 in
/// 128 slots) where [`pieces`] makes five (128, 128, 64, 16, 4): every statement is a round
/// trip (on SQLite to the connection's thread inside the writer's turn, on PostgreSQL to the
/// server: a P2 Bundle's `resource_versions` rows were seven statements there, now three), and
/// the texts stay as few (one per power of two).
pub(super) fn padded_pieces<T>(items: &[T], max: usize) -> Vec<(&[T], usize)> {
    debug_assert!(max.is_power_of_two());
    items
        .chunks(max)
        .map(|piece| (piece, piece.len().next_power_of_two()))
        .collect()
}

/// A statement's text for `rows` rows, built once per process and kept: `kind` names the
/// statement, `build` makes its text. Formatting the placeholders of a 128-row statement (up
/// to 1,536 of them) for every statement cost about 3 % of the server's CPU under ingest. The
/// texts are few and bounded: a handful of kinds, two dialects and the row counts
/// [`padded_pieces`] makes (powers of two up to the chunk).
pub(super) fn text(
    kind: &'static str,
    dialect: Dialect,
    rows: usize,
    build: impl FnOnce() -> String,
) -> sqlx::AssertSqlSafe<Arc<str>> {
    kept_text(vec![(kind, rows)], dialect, build)
}

/// [`text`] for a text of several statements ([`SqlTx::insert_together`]), kept under the
/// kind and row count of each.
fn kept_text(
    parts: Vec<(&'static str, usize)>,
    dialect: Dialect,
    build: impl FnOnce() -> String,
) -> sqlx::AssertSqlSafe<Arc<str>> {
    type Texts = HashMap<(Vec<(&'static str, usize)>, bool), Arc<str>>;
    static TEXTS: LazyLock<Mutex<Texts>> = LazyLock::new(Mutex::default);
    let key = (parts, dialect == Dialect::Postgres);
    // A poisoned lock only means another thread panicked while inserting: the map is whole.
    let mut texts = TEXTS.lock().unwrap_or_else(|e| e.into_inner());
    let t = texts.entry(key).or_insert_with(|| Arc::from(build()));
    sqlx::AssertSqlSafe(t.clone())
}

/// The values of an audit row whose `seq` and hashes are set, in [`AUDIT_COLUMNS`]' order.
pub(super) fn audit_binds(a: &AuditRow) -> [Bind; AUDIT_WIDTH] {
    // A Vec<String> always serialises.
    let entities = serde_json::to_string(&a.entities).unwrap_or_else(|_| "[]".into());
    // One value per column: the array's length is checked against the list's.
    [
        Bind::Int(a.seq),
        Bind::Text(a.kind.clone()),
        Bind::Int(a.recorded_us),
        Bind::Text(a.recorded.clone()),
        Bind::OptText(a.request_id.clone()),
        Bind::OptText(a.client_id.clone()),
        Bind::OptText(a.role.clone()),
        Bind::OptText(a.sector.clone()),
        Bind::OptText(a.target_sector.clone()),
        Bind::Text(a.action.clone()),
        Bind::Text(a.interaction.clone()),
        Bind::Text(a.outcome.clone()),
        Bind::OptText(a.patient_id.clone()),
        Bind::Text(entities),
        Bind::OptText(a.query.clone()),
        Bind::OptText(a.purpose.clone()),
        Bind::OptText(a.detail.clone()),
        Bind::OptText(a.person.clone()),
        Bind::OptText(a.basis.clone()),
        Bind::Text(a.prev_hash.clone()),
        Bind::Text(a.hash.clone()),
    ]
}

/// A current row of `resources`, with its key.
#[derive(FromRow)]
pub(super) struct KeyedCurrent {
    pub(super) gid: String,
    #[sqlx(flatten)]
    pub(super) current: Current,
}

/// A new version to write: the resource, its gateway id, version and patient.
pub(super) struct NewVersion<'p> {
    pub(super) p: &'p Prepared,
    pub(super) gid: String,
    pub(super) version: i64,
    pub(super) patient_id: Option<String>,
}

/// `n` placeholders from `from` on: `$from, …` on PostgreSQL ([`placeholders`]); `?, ?, …` on
/// SQLite, whose parser looks every numbered parameter up by name in a list (quadratic in a
/// statement of thousands), while anonymous ones are simply counted.
fn marks(dialect: Dialect, from: usize, n: usize) -> String {
    match dialect {
        Dialect::Sqlite => vec!["?"; n].join(", "),
        Dialect::Postgres => placeholders(from, n),
    }
}

/// How a multi-row statement inserts. SQLite: `INSERT OR FAIL`. Under SQLite's default
/// (`ABORT`) a statement that may fail halfway keeps a statement journal, a copy of every page
/// it changes, so that it alone can be undone; with `FAIL` it keeps none (about a quarter of the
/// insert time in a micro-benchmark of the same statement shapes). A failing statement ends its
/// request's transaction anyway: the error goes up and the transaction is rolled back when
/// dropped, the rows the statement wrote before failing with it.
pub(crate) fn insert(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => "INSERT OR FAIL",
        Dialect::Postgres => "INSERT",
    }
}

/// A multi-row insert: the statement's `kind` (for [`text`]), its table and columns (one value
/// each a row) and what follows the rows (`tail`: its conflict rule, what it returns).
pub(super) struct RowsInsert {
    kind: &'static str,
    table: &'static str,
    columns: &'static str,
    width: usize,
    tail: &'static str,
}

impl RowsInsert {
    const fn new(
        kind: &'static str,
        table: &'static str,
        columns: &'static str,
        tail: &'static str,
    ) -> Self {
        let width = column_count(columns);
        Self {
            kind,
            table,
            columns,
            width,
            tail,
        }
    }

    /// `binds`, one piece's rows, with the slots it leaves bound as NULL, each of its column's
    /// type in the first row (PostgreSQL resolves a `VALUES` column to one type).
    pub(super) fn fill(&self, slots: usize, binds: &mut Vec<Bind>) {
        for k in binds.len()..slots * self.width {
            let null = match binds.get(k % self.width) {
                Some(Bind::Int(_) | Bind::OptInt(_)) => Bind::OptInt(None),
                _ => Bind::OptText(None),
            };
            binds.push(null);
        }
    }

    /// The statement's text with `slots` rows: a `VALUES` list read by `INSERT … SELECT`, which
    /// skips the slots a piece left NULL ([`padded_pieces`]); on SQLite the `WHERE` also keeps
    /// an upsert's `ON CONFLICT` from being read as a join's.
    pub(super) fn text(&self, dialect: Dialect, slots: usize) -> String {
        let (table, columns, tail) = (self.table, self.columns, self.tail);
        let groups = value_groups(dialect, slots, self.width);
        format!(
            "{} INTO {table} ({columns}) SELECT * FROM (VALUES {groups}) AS v \
             WHERE column1 IS NOT NULL{tail}",
            insert(dialect)
        )
    }
}

const VERSIONS: RowsInsert = RowsInsert::new(
    "versions",
    "resource_versions",
    "gid, version, hash, body, received_us, last_updated",
    "",
);
const RESOURCES: RowsInsert = RowsInsert::new(
    "resources",
    "resources",
    "gid, sector, rtype, rid, version, hash, patient_ref, patient_id, last_updated",
    " ON CONFLICT (gid) DO UPDATE SET version = excluded.version, hash = excluded.hash, \
     patient_ref = excluded.patient_ref, patient_id = excluded.patient_id, \
     last_updated = excluded.last_updated",
);
const IDENTIFIER_INDEX: RowsInsert = RowsInsert::new(
    "identifier-index",
    "identifier_index",
    "sector, rtype, system, value, gid",
    " ON CONFLICT DO NOTHING",
);
const RESOURCE_IDENTIFIERS: RowsInsert = RowsInsert::new(
    "resource-identifiers",
    "resource_identifiers",
    "sector, rtype, system, value, gid",
    " ON CONFLICT (sector, rtype, system, value) DO UPDATE SET gid = excluded.gid",
);
const OUTBOX: RowsInsert = RowsInsert::new(
    "outbox",
    "outbox",
    "target, source, gid, version, rtype, patient_id, route, created_us, next_us, updated_us, \
     state, attempts",
    " ON CONFLICT (target, gid, version) DO NOTHING RETURNING target",
);
pub(super) const AUDIT: RowsInsert = RowsInsert::new("audit", "audit_log", AUDIT_COLUMNS, "");

/// `(…), (…), …`: `rows` groups of `width` placeholders ([`marks`]), numbered on.
fn value_groups(dialect: Dialect, rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", marks(dialect, 1 + r * width, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `resources` rows of new versions ([`RESOURCES`]), with room for `slots` rows.
fn resource_rows(chunk: &[&NewVersion<'_>], slots: usize, last_updated: &str) -> Vec<Bind> {
    let mut binds = Vec::with_capacity(slots * RESOURCES.width);
    for w in chunk {
        binds.extend([
            Bind::Text(w.gid.clone()),
            Bind::Text(w.p.sector.clone()),
            Bind::Text(w.p.rtype.clone()),
            Bind::Text(w.p.rid.clone()),
            Bind::Int(w.version),
            Bind::Text(w.p.hash.clone()),
            Bind::OptText(w.p.patient_ref.clone()),
            Bind::OptText(w.patient_id.clone()),
            Bind::Text(last_updated.to_owned()),
        ]);
    }
    binds
}

/// Which first versions' `resources` rows [`SqlTx::insert_first_rows_pg`] wrote.
pub(super) enum FirstRows {
    /// Every one.
    All,
    /// These gateway ids only; the others' rows exist.
    Only(HashSet<String>),
}

/// Whether a write must be decided with its current row read first, on PostgreSQL too: a
/// Patient (linking it has effects, and an unchanged one links nothing) and a write under
/// `If-Match`.
fn needs_current(p: &Prepared) -> bool {
    p.rtype == "Patient" || p.expected_version.is_some()
}

impl SqlTx {
    /// [`StoreTx::put_many`](crate::store::StoreTx::put_many): the patient identifiers' locks
    /// first ([`SqlTx::lock_writes`]), then every resource with its current row read in bulk
    /// (SQLite; on PostgreSQL only what [`needs_current`], the rest settled by inserting their
    /// `resources` rows first, see [`SqlTx::settle_first_versions_pg`]) and its new version,
    /// `resources` row and identifier rows written in multi-row statements. A
    /// Patient is decided first (linking may create, join or hold gateway patients, and the
    /// other resources' patient references resolve through it; `link_patient` remembers its
    /// gateway patient for them, since its own row is written with the others).
    /// Two or more Patients are stored one by one through `put` first: a later one's link may
    /// join the gateway patient an earlier one linked to, and the rows it relinks must exist.
    pub(super) async fn put_many_sql(&mut self, ps: &[&Prepared]) -> Result<Vec<PutOutcome>> {
        let gids: Vec<String> = ps
            .iter()
            .map(|p| gateway_id(&p.sector, &p.rtype, &p.rid))
            .collect();
        self.lock_writes(ps).await?;
        let distinct: HashSet<&String> = gids.iter().collect();
        if distinct.len() != gids.len() {
            // The same resource twice: each version must see the one before it.
            let mut out = Vec::with_capacity(ps.len());
            for (p, gid) in ps.iter().zip(&gids) {
                out.push(self.put_one(p, gid.clone()).await?);
            }
            return Ok(out);
        }
        let mut out: Vec<Option<PutOutcome>> = vec![None; ps.len()];
        let patients: Vec<usize> = (0..ps.len())
            .filter(|&i| ps[i].rtype == "Patient")
            .collect();
        if patients.len() > 1 {
            for &i in &patients {
                out[i] = Some(self.put_one(ps[i], gids[i].clone()).await?);
            }
        }
        let mut rest: Vec<usize> = (0..ps.len()).filter(|&i| out[i].is_none()).collect();
        // The Patient (at most one is left) first; the order of the rest is kept.
        rest.sort_by_key(|&i| ps[i].rtype != "Patient");
        // PostgreSQL reads the current rows only of what needs them to be decided (a Patient,
        // whose link has effects; a write under `If-Match`); every other write is decided as a
        // first version and settled by `resources`' own key (`settle_first_versions_pg`).
        let keys: Vec<&str> = rest
            .iter()
            .filter(|&&i| self.dialect == Dialect::Sqlite || needs_current(ps[i]))
            .map(|&i| gids[i].as_str())
            .collect();
        let mut currents = match keys.is_empty() {
            true => HashMap::new(),
            false => self.currents(&keys).await?,
        };
        let received = now_us();
        let last_updated = instant(received);
        let mut decided = Vec::with_capacity(rest.len());
        for i in rest {
            let current = currents.remove(&gids[i]);
            let (outcome, write) = self
                .decide(ps[i], gids[i].clone(), current, &last_updated)
                .await?;
            out[i] = Some(outcome);
            decided.push((i, write));
        }
        if self.dialect == Dialect::Postgres {
            self.settle_first_versions_pg(ps, &mut out, &mut decided, &last_updated)
                .await?;
        }
        let writes: Vec<NewVersion<'_>> = decided.into_iter().filter_map(|(_, w)| w).collect();
        self.write_versions(&writes, received, &last_updated)
            .await?;
        Ok(out.into_iter().flatten().collect())
    }

    /// PostgreSQL: the `resources` rows of every first version among `decided`, inserted in
    /// gateway-id order ([`SqlTx::insert_first_rows_pg`]). A resource whose row was there (or
    /// that another writer inserted first: the insert waits for that writer's commit) is read
    /// now, locked, and decided again with its current row, as it would have been had it been
    /// read first. One index probe per resource instead of two (the read, then the insert's
    /// own): the read of 340 new resources that finds nothing was about 1 ms of PostgreSQL's
    /// time a Bundle.
    async fn settle_first_versions_pg<'p>(
        &mut self,
        ps: &[&'p Prepared],
        out: &mut [Option<PutOutcome>],
        decided: &mut [(usize, Option<NewVersion<'p>>)],
        last_updated: &str,
    ) -> Result<()> {
        let mut firsts: Vec<&NewVersion<'_>> = decided
            .iter()
            .filter_map(|(_, w)| w.as_ref().filter(|w| w.version == 1))
            .collect();
        if firsts.is_empty() {
            return Ok(());
        }
        firsts.sort_by(|a, b| a.gid.cmp(&b.gid));
        let inserted = match self.insert_first_rows_pg(&firsts, last_updated).await? {
            FirstRows::All => return Ok(()),
            FirstRows::Only(inserted) => inserted,
        };
        let taken: Vec<&str> = firsts
            .iter()
            .map(|w| w.gid.as_str())
            .filter(|g| !inserted.contains(*g))
            .collect();
        let mut found = self.currents_pg(&taken).await?;
        for (i, write) in decided.iter_mut() {
            let Some(w) = write
                .as_ref()
                .filter(|w| w.version == 1 && !inserted.contains(&w.gid))
            else {
                continue;
            };
            // A Patient was read first and linked as new: another writer inserted it since, and
            // linking it again would leave this transaction's new gateway patient behind. The
            // transaction is run again instead, and then reads the Patient first.
            if ps[*i].rtype == "Patient" {
                return Err(StoreError::Busy);
            }
            // Rows are never deleted: one that stopped the insert is there to be read.
            let current = found.remove(&w.gid).ok_or(StoreError::Busy)?;
            let gid = w.gid.clone();
            let (outcome, again) = self
                .decide(ps[*i], gid, Some(current), last_updated)
                .await?;
            out[*i] = Some(outcome);
            *write = again;
        }
        Ok(())
    }

    /// What storing `p` does given its current row: nothing (identical content), or a new
    /// version with its patient. A version other than `If-Match`'s is a conflict.
    pub(super) async fn decide<'p>(
        &mut self,
        p: &'p Prepared,
        gid: String,
        current: Option<Current>,
        last_updated: &str,
    ) -> Result<(PutOutcome, Option<NewVersion<'p>>)> {
        if let Some(expected) = p.expected_version {
            let now = current.as_ref().map(|c| c.version);
            if now != Some(expected) {
                return Err(StoreError::VersionConflict {
                    expected,
                    current: now,
                });
            }
        }
        if let Some(c) = current.as_ref().filter(|c| c.hash == p.hash) {
            let outcome = PutOutcome {
                gid,
                version: c.version,
                last_updated: c.last_updated.clone(),
                changed: false,
                created: false,
                patient_id: c.patient_id.clone(),
                merged: Vec::new(),
            };
            return Ok((outcome, None));
        }
        let version = current.as_ref().map_or(1, |c| c.version + 1);
        let patient_id = self.patient_of_prepared(p).await?;
        let outcome = PutOutcome {
            gid: gid.clone(),
            version,
            last_updated: last_updated.to_owned(),
            changed: true,
            created: current.is_none(),
            patient_id: patient_id.clone(),
            // What linking a Patient merged (`link_patient`); empty for anything else.
            merged: std::mem::take(&mut self.merged),
        };
        let write = NewVersion {
            p,
            gid,
            version,
            patient_id,
        };
        Ok((outcome, Some(write)))
    }

    /// The current rows of these gateway ids (SQLite; PostgreSQL's are also locked, see
    /// [`SqlTx::currents_pg`]), read in [`padded_pieces`] of
    /// [`READ_CHUNK`]: a NULL in an `IN` list matches nothing.
    async fn currents(&mut self, gids: &[&str]) -> Result<HashMap<String, Current>> {
        if self.dialect == Dialect::Postgres {
            return self.currents_pg(gids).await;
        }
        let mut found = HashMap::with_capacity(gids.len());
        for (chunk, slots) in padded_pieces(gids, READ_CHUNK) {
            let sql = text("currents", self.dialect, slots, || {
                format!(
                    "SELECT gid, version, hash, last_updated, patient_id FROM resources \
                     WHERE gid IN ({})",
                    marks(self.dialect, 1, slots)
                )
            });
            let mut q = sqlx::query_as::<_, KeyedCurrent>(sql);
            for g in chunk {
                q = q.bind(*g);
            }
            for _ in chunk.len()..slots {
                q = q.bind(None::<&str>);
            }
            for row in q.fetch_all(&mut *self.tx).await.map_err(map_err)? {
                found.insert(row.gid, row.current);
            }
        }
        Ok(found)
    }

    /// Writes the new versions: `resource_versions`, `resources` and the identifier rows. On
    /// PostgreSQL the first versions' `resources` rows are in already
    /// ([`SqlTx::settle_first_versions_pg`], the one caller before this), so only later
    /// versions' rows are written here; versions and rows go in gateway-id order, so that two
    /// requests writing overlapping resources wait for each other in one order (see
    /// [`SqlTx::lock_writes`]); the identifier rows keep the request's order (its last holder
    /// of an identifier holds it).
    async fn write_versions(
        &mut self,
        writes: &[NewVersion<'_>],
        received: i64,
        last_updated: &str,
    ) -> Result<()> {
        let mut ordered: Vec<&NewVersion<'_>> = writes.iter().collect();
        if self.dialect == Dialect::Postgres {
            ordered.sort_by(|a, b| a.gid.cmp(&b.gid));
        }
        for (chunk, slots) in padded_pieces(&ordered, self.chunk()) {
            let mut binds = Vec::with_capacity(slots * VERSIONS.width);
            for w in chunk {
                binds.extend([
                    Bind::Text(w.gid.clone()),
                    Bind::Int(w.version),
                    Bind::Text(w.p.hash.clone()),
                    Bind::Text(w.p.body.clone()),
                    Bind::Int(received),
                    Bind::Text(last_updated.to_owned()),
                ]);
            }
            let mut parts = vec![(&VERSIONS, slots, binds)];
            if self.dialect == Dialect::Sqlite {
                parts.push((&RESOURCES, slots, resource_rows(chunk, slots, last_updated)));
            }
            self.insert_together(parts).await?;
        }
        if self.dialect == Dialect::Postgres {
            // First versions' rows are in already (`settle_first_versions_pg`).
            let later: Vec<&NewVersion<'_>> =
                ordered.iter().copied().filter(|w| w.version > 1).collect();
            self.upsert_resources_pg(&later, last_updated).await?;
        }
        self.replace_identifiers(writes).await
    }

    /// `identifier_index` keeps every current holder of an identifier, `resource_identifiers`
    /// the latest: a resource's old rows go, its identifiers are added (the last writer of an
    /// identifier within the request holds it, as with one `put` after another).
    async fn replace_identifiers(&mut self, writes: &[NewVersion<'_>]) -> Result<()> {
        // A version after the first replaces a resource that had identifier rows.
        let old: Vec<&str> = writes
            .iter()
            .filter(|w| w.version > 1)
            .map(|w| w.gid.as_str())
            .collect();
        if self.dialect == Dialect::Postgres {
            if !old.is_empty() {
                self.identifiers_gone_pg(&old).await?;
            }
        } else {
            for (chunk, slots) in padded_pieces(&old, READ_CHUNK) {
                let mut binds: Vec<Bind> =
                    chunk.iter().map(|g| Bind::Text((*g).to_owned())).collect();
                binds.resize_with(slots, || Bind::OptText(None));
                let sql = text("identifiers-gone", self.dialect, slots, || {
                    format!(
                        "DELETE FROM identifier_index WHERE gid IN ({})",
                        marks(self.dialect, 1, slots)
                    )
                });
                self.execute(sql, binds).await?;
            }
        }
        let mut rows: Vec<[&str; 5]> = Vec::new();
        for w in writes {
            for (system, value) in &w.p.identifiers {
                rows.push([&w.p.sector, &w.p.rtype, system, value, &w.gid]);
            }
        }
        self.index_identifier_rows(&rows).await
    }

    /// Adds identifier rows `[sector, rtype, system, value, gid]` in multi-row statements:
    /// every one to `identifier_index`, the last holder of each identifier to
    /// `resource_identifiers`.
    pub(super) async fn index_identifier_rows(&mut self, rows: &[[&str; 5]]) -> Result<()> {
        // One row per key in a statement (PostgreSQL refuses to update a row twice in one
        // statement): the last holder of each identifier.
        let mut last: HashMap<[&str; 4], usize> = HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            last.insert([r[0], r[1], r[2], r[3]], i);
        }
        let kept: BTreeSet<usize> = last.into_values().collect();
        let latest: Vec<[&str; 5]> = kept.into_iter().map(|i| rows[i]).collect();
        if self.dialect == Dialect::Postgres {
            return self.index_identifier_rows_pg(rows, &latest).await;
        }
        let mut parts = Vec::new();
        for (list, to) in [(rows, &IDENTIFIER_INDEX), (&latest, &RESOURCE_IDENTIFIERS)] {
            for (chunk, slots) in padded_pieces(list, self.chunk()) {
                let binds = chunk
                    .iter()
                    .flat_map(|r| r.iter().map(|c| Bind::Text((*c).to_owned())))
                    .collect();
                parts.push((to, slots, binds));
            }
        }
        self.insert_together(parts).await
    }

    /// [`StoreTx::outbox_add_many`](crate::store::StoreTx::outbox_add_many): one multi-row
    /// insert per chunk; an entry of the same resource version for the same target that is
    /// already queued is left as it is. Returns the targets that got a new entry.
    pub(super) async fn outbox_add_many_sql(
        &mut self,
        entries: &[OutboxNew],
    ) -> Result<BTreeSet<String>> {
        let now = now_us();
        if self.dialect == Dialect::Postgres {
            return self.outbox_add_pg(entries, now).await;
        }
        let mut targets = BTreeSet::new();
        for (chunk, slots) in padded_pieces(entries, self.chunk()) {
            let mut binds = Vec::with_capacity(slots * OUTBOX.width);
            for e in chunk {
                binds.extend([
                    Bind::Text(e.target.clone()),
                    Bind::Text(e.source.clone()),
                    Bind::Text(e.gid.clone()),
                    Bind::Int(e.version),
                    Bind::Text(e.rtype.clone()),
                    Bind::OptText(e.patient_id.clone()),
                    Bind::Text(e.route.clone()),
                    Bind::Int(now),
                    Bind::Int(now),
                    Bind::Int(now),
                    Bind::Text("pending".to_owned()),
                    Bind::Int(0),
                ]);
            }
            OUTBOX.fill(slots, &mut binds);
            let sql = self.piece_text(&OUTBOX, slots);
            let added: Vec<String> = bind_all!(sqlx::query_scalar(sql), binds)
                .fetch_all(&mut *self.tx)
                .await
                .map_err(map_err)?;
            targets.extend(added);
        }
        Ok(targets)
    }

    /// Audit rows whose `seq` and hashes are set, in multi-row statements of at most
    /// [`AUDIT_CHUNK`] rows (a delivery worker records up to 32 outcomes, each with its row, in
    /// one transaction: one statement instead of 32).
    pub(super) async fn insert_audit_rows(&mut self, rows: &[AuditRow]) -> Result<()> {
        for (chunk, slots) in padded_pieces(rows, AUDIT_CHUNK) {
            let mut binds = Vec::with_capacity(slots * AUDIT_WIDTH);
            for a in chunk {
                binds.extend(audit_binds(a));
            }
            self.insert_piece(&AUDIT, slots, binds).await?;
        }
        Ok(())
    }

    /// Rows per multi-row statement on this store.
    fn chunk(&self) -> usize {
        match self.dialect {
            Dialect::Sqlite => SQLITE_CHUNK,
            Dialect::Postgres => PG_CHUNK,
        }
    }

    /// The text of `to` with `slots` rows, built once ([`text`]).
    fn piece_text(&self, to: &RowsInsert, slots: usize) -> sqlx::AssertSqlSafe<Arc<str>> {
        text(to.kind, self.dialect, slots, || {
            to.text(self.dialect, slots)
        })
    }

    /// Inserts one piece ([`padded_pieces`]) into `to`: `binds` are its rows' values, the slots it
    /// leaves are bound as NULL.
    async fn insert_piece(
        &mut self,
        to: &RowsInsert,
        slots: usize,
        binds: Vec<Bind>,
    ) -> Result<()> {
        self.insert_together(vec![(to, slots, binds)]).await
    }

    /// Inserts pieces, each as [`SqlTx::insert_piece`]. SQLite: all in one text of several
    /// statements (its values bound in order across them), so one round trip to the
    /// connection's thread inside the writer's turn instead of one per piece; the texts are
    /// kept by the kinds and slots of their pieces. PostgreSQL: one statement each (its
    /// extended protocol takes one statement per text).
    async fn insert_together(
        &mut self,
        mut parts: Vec<(&RowsInsert, usize, Vec<Bind>)>,
    ) -> Result<()> {
        for (to, slots, binds) in &mut parts {
            to.fill(*slots, binds);
        }
        if self.dialect == Dialect::Postgres {
            for (to, slots, binds) in parts {
                let sql = self.piece_text(to, slots);
                self.execute(sql, binds).await?;
            }
            return Ok(());
        }
        if parts.is_empty() {
            return Ok(());
        }
        // One piece's key is the one `piece_text` keeps it under.
        let key = parts
            .iter()
            .map(|(to, slots, _)| (to.kind, *slots))
            .collect();
        let sql = kept_text(key, self.dialect, || {
            let texts: Vec<String> = parts
                .iter()
                .map(|(to, slots, _)| to.text(self.dialect, *slots))
                .collect();
            texts.join(";\n")
        });
        let all = parts.into_iter().flat_map(|(_, _, binds)| binds).collect();
        self.execute(sql, all).await
    }

    /// Runs one statement built from fixed text and placeholders ([`text`]), every value bound.
    async fn execute(
        &mut self,
        sql: sqlx::AssertSqlSafe<Arc<str>>,
        binds: Vec<Bind>,
    ) -> Result<()> {
        bind_all!(sqlx::query(sql), binds)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{
        AUDIT, Bind, Dialect, IDENTIFIER_INDEX, OUTBOX, RESOURCES, VERSIONS, padded_pieces, pieces,
        text,
    };
    use std::sync::Arc;

    #[test]
    fn statement_texts_are_built_once_per_kind_dialect_and_rows() {
        let mut built = Vec::new();
        let mut get = |dialect, rows, t: &str| {
            text("test-kind", dialect, rows, || {
                built.push(t.to_owned());
                t.to_owned()
            })
            .0
        };
        let a = get(Dialect::Sqlite, 4, "a");
        let again = get(Dialect::Sqlite, 4, "not built");
        let pg = get(Dialect::Postgres, 4, "b");
        let eight = get(Dialect::Sqlite, 8, "c");
        assert!(Arc::ptr_eq(&a, &again), "kept, not built again");
        assert_eq!(
            [&*a, &*pg, &*eight],
            ["a", "b", "c"],
            "each dialect and row count its own text"
        );
        assert_eq!(built, ["a", "b", "c"]);
    }

    #[test]
    fn padded_pieces_are_full_then_one_with_room_for_a_power_of_two() {
        let items: Vec<usize> = (0..1100).collect();
        let cut = padded_pieces(&items, 512);
        let shape: Vec<(usize, usize)> = cut.iter().map(|(p, s)| (p.len(), *s)).collect();
        assert_eq!(shape, [(512, 512), (512, 512), (76, 128)]);
        let joined: Vec<usize> = cut.iter().flat_map(|(p, _)| p.iter().copied()).collect();
        assert_eq!(joined, items, "every row once, in order");
        assert!(padded_pieces(&items[..0], 512).is_empty());
        let one: Vec<(usize, usize)> = padded_pieces(&items[..1], 512)
            .iter()
            .map(|(p, s)| (p.len(), *s))
            .collect();
        assert_eq!(one, [(1, 1)]);
        // Every length uses only the texts of the powers of two up to the chunk.
        let mut texts = std::collections::BTreeSet::new();
        for n in 1..=1100 {
            texts.extend(padded_pieces(&items[..n], 512).iter().map(|(_, s)| *s));
        }
        assert_eq!(texts.len(), 10, "512, 256, …, 1");
    }

    #[test]
    fn inserts_skip_the_unfilled_slots_each_null_typed_as_its_column() {
        let sqlite = IDENTIFIER_INDEX.text(Dialect::Sqlite, 2);
        assert_eq!(
            sqlite,
            "INSERT OR FAIL INTO identifier_index (sector, rtype, system, value, gid) \
             SELECT * FROM (VALUES (?, ?, ?, ?, ?), (?, ?, ?, ?, ?)) AS v \
             WHERE column1 IS NOT NULL ON CONFLICT DO NOTHING"
        );
        let pg = OUTBOX.text(Dialect::Postgres, 2);
        assert!(pg.starts_with("INSERT INTO outbox (target, "), "{pg}");
        assert!(pg.contains(
            "SELECT * FROM (VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12), \
             ($13, "
        ));
        assert!(
            pg.contains(" AS v WHERE column1 IS NOT NULL ON CONFLICT"),
            "{pg}"
        );
        assert_eq!((OUTBOX.width, AUDIT.width, RESOURCES.width), (12, 21, 9));
        // PostgreSQL gives a VALUES column one type: an unfilled slot is NULL of the type its
        // column has in the first row.
        let mut binds = vec![
            Bind::Text("g".into()),
            Bind::Int(1),
            Bind::Text("h".into()),
            Bind::Text("{}".into()),
            Bind::Int(7),
            Bind::OptText(None),
        ];
        VERSIONS.fill(2, &mut binds);
        let kinds: Vec<&str> = binds[6..]
            .iter()
            .map(|b| match b {
                Bind::OptInt(None) => "int",
                Bind::OptText(None) => "text",
                _ => "value",
            })
            .collect();
        assert_eq!(kinds, ["text", "int", "text", "text", "int", "text"]);
    }

    #[test]
    fn pieces_are_full_then_powers_of_two_in_order() {
        let items: Vec<usize> = (0..333).collect();
        let sizes: Vec<usize> = pieces(&items, 128).iter().map(|p| p.len()).collect();
        assert_eq!(sizes, [128, 128, 64, 8, 4, 1]);
        let joined: Vec<usize> = pieces(&items, 128).concat();
        assert_eq!(joined, items, "every row once, in order");
        assert!(pieces(&items[..0], 128).is_empty());
        let one: Vec<usize> = pieces(&items[..1], 512).iter().map(|p| p.len()).collect();
        assert_eq!(one, [1]);
        // Every length up to two pieces uses only a handful of statement texts.
        let mut texts = std::collections::BTreeSet::new();
        for n in 0..=256 {
            texts.extend(pieces(&items[..n], 128).iter().map(|p| p.len()));
        }
        assert_eq!(texts.len(), 8, "128, 64, …, 1");
    }
}
