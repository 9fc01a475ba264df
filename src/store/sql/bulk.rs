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

/// Rows per multi-row statement: at most 12 columns × 128 = 1,536 bound values, well under
/// SQLite's 32,766 and PostgreSQL's 65,535 (P2's floor found 128 rows a statement the fastest
/// on SQLite: 32 rows and 512 rows were both slower).
const CHUNK: usize = 128;

/// Audit rows per statement: 21 columns ([`AUDIT_COLUMNS`]) × 32 = 672 bound values.
const AUDIT_CHUNK: usize = 32;
/// The columns of an audit row, counted from [`AUDIT_COLUMNS`] itself.
const AUDIT_WIDTH: usize = column_count(AUDIT_COLUMNS);

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

/// A statement's text for `rows` rows, built once per process and kept: `kind` names the
/// statement, `build` makes its text. Formatting the placeholders of a 128-row statement (up
/// to 1,536 of them) for every statement cost about 3 % of the server's CPU under ingest. The
/// texts are few and bounded: a handful of kinds, two dialects and the row counts
/// [`pieces`] makes (powers of two up to the chunk).
pub(super) fn text(
    kind: &'static str,
    dialect: Dialect,
    rows: usize,
    build: impl FnOnce() -> String,
) -> sqlx::AssertSqlSafe<Arc<str>> {
    type Texts = HashMap<(&'static str, bool, usize), Arc<str>>;
    static TEXTS: LazyLock<Mutex<Texts>> = LazyLock::new(Mutex::default);
    let key = (kind, dialect == Dialect::Postgres, rows);
    // A poisoned lock only means another thread panicked while inserting: the map is whole.
    let mut texts = TEXTS.lock().unwrap_or_else(|e| e.into_inner());
    let t = texts.entry(key).or_insert_with(|| Arc::from(build()));
    sqlx::AssertSqlSafe(t.clone())
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

/// `(…), (…), …`: `rows` groups of `width` placeholders ([`marks`]), numbered on.
fn value_groups(dialect: Dialect, rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", marks(dialect, 1 + r * width, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SqlTx {
    /// [`StoreTx::put_many`](crate::store::StoreTx::put_many): the locks first (one sorted
    /// statement on PostgreSQL), then every resource with its current row read in bulk and its
    /// new version, `resources` row and identifier rows written in multi-row statements. A
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
        self.lock_writes(ps, &gids).await?;
        let distinct: HashSet<&String> = gids.iter().collect();
        if distinct.len() != gids.len() {
            // The same resource twice: each version must see the one before it.
            let mut out = Vec::with_capacity(ps.len());
            for (p, gid) in ps.iter().zip(&gids) {
                out.push(self.put_locked(p, gid.clone()).await?);
            }
            return Ok(out);
        }
        let mut out: Vec<Option<PutOutcome>> = vec![None; ps.len()];
        let patients: Vec<usize> = (0..ps.len())
            .filter(|&i| ps[i].rtype == "Patient")
            .collect();
        if patients.len() > 1 {
            for &i in &patients {
                out[i] = Some(self.put_locked(ps[i], gids[i].clone()).await?);
            }
        }
        let mut rest: Vec<usize> = (0..ps.len()).filter(|&i| out[i].is_none()).collect();
        // The Patient (at most one is left) first; the order of the rest is kept.
        rest.sort_by_key(|&i| ps[i].rtype != "Patient");
        let keys: Vec<&str> = rest.iter().map(|&i| gids[i].as_str()).collect();
        let mut currents = self.currents(&keys).await?;
        let received = now_us();
        let last_updated = instant(received);
        let mut writes = Vec::with_capacity(rest.len());
        for i in rest {
            let (p, gid) = (ps[i], gids[i].clone());
            let current = currents.remove(&gid);
            let (outcome, write) = self.decide(p, gid, current, &last_updated).await?;
            out[i] = Some(outcome);
            writes.extend(write);
        }
        self.write_versions(&writes, received, &last_updated)
            .await?;
        Ok(out.into_iter().flatten().collect())
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

    /// The current rows of these gateway ids, read in chunks of [`CHUNK`].
    async fn currents(&mut self, gids: &[&str]) -> Result<HashMap<String, Current>> {
        if self.dialect == Dialect::Postgres {
            return self.currents_pg(gids).await;
        }
        let mut found = HashMap::with_capacity(gids.len());
        for chunk in pieces(gids, CHUNK) {
            let sql = text("currents", self.dialect, chunk.len(), || {
                format!(
                    "SELECT gid, version, hash, last_updated, patient_id FROM resources \
                     WHERE gid IN ({})",
                    marks(self.dialect, 1, chunk.len())
                )
            });
            let mut q = sqlx::query_as::<_, KeyedCurrent>(sql);
            for g in chunk {
                q = q.bind(*g);
            }
            for row in q.fetch_all(&mut *self.tx).await.map_err(map_err)? {
                found.insert(row.gid, row.current);
            }
        }
        Ok(found)
    }

    /// Writes the new versions: `resource_versions`, `resources` and the identifier rows.
    async fn write_versions(
        &mut self,
        writes: &[NewVersion<'_>],
        received: i64,
        last_updated: &str,
    ) -> Result<()> {
        for chunk in pieces(writes, CHUNK) {
            let mut binds = Vec::with_capacity(chunk.len() * 6);
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
            let sql = text("versions", self.dialect, chunk.len(), || {
                format!(
                    "{} INTO resource_versions (gid, version, hash, body, received_us, \
                     last_updated) VALUES {}",
                    insert(self.dialect),
                    value_groups(self.dialect, chunk.len(), 6)
                )
            });
            self.execute(sql, binds).await?;
            if self.dialect == Dialect::Sqlite {
                self.upsert_resources(chunk, last_updated).await?;
            }
        }
        if self.dialect == Dialect::Postgres {
            self.upsert_resources_pg(writes, last_updated).await?;
        }
        self.replace_identifiers(writes).await
    }

    async fn upsert_resources(
        &mut self,
        chunk: &[NewVersion<'_>],
        last_updated: &str,
    ) -> Result<()> {
        let mut binds = Vec::with_capacity(chunk.len() * 9);
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
        let sql = text("resources", self.dialect, chunk.len(), || {
            format!(
                "{} INTO resources (gid, sector, rtype, rid, version, hash, patient_ref, \
                 patient_id, last_updated) VALUES {} \
                 ON CONFLICT (gid) DO UPDATE SET version = excluded.version, hash = excluded.hash, \
                 patient_ref = excluded.patient_ref, patient_id = excluded.patient_id, \
                 last_updated = excluded.last_updated",
                insert(self.dialect),
                value_groups(self.dialect, chunk.len(), 9)
            )
        });
        self.execute(sql, binds).await
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
            for chunk in pieces(&old, CHUNK) {
                let binds = chunk.iter().map(|g| Bind::Text((*g).to_owned())).collect();
                let sql = text("identifiers-gone", self.dialect, chunk.len(), || {
                    format!(
                        "DELETE FROM identifier_index WHERE gid IN ({})",
                        marks(self.dialect, 1, chunk.len())
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
        for chunk in pieces(rows, CHUNK) {
            self.insert_identifier_rows(
                "identifier-index",
                "INTO identifier_index (sector, rtype, system, value, gid) VALUES {} \
                 ON CONFLICT DO NOTHING",
                chunk,
            )
            .await?;
        }
        for chunk in pieces(&latest, CHUNK) {
            self.insert_identifier_rows(
                "resource-identifiers",
                "INTO resource_identifiers (sector, rtype, system, value, gid) VALUES {} \
                 ON CONFLICT (sector, rtype, system, value) DO UPDATE SET gid = excluded.gid",
                chunk,
            )
            .await?;
        }
        Ok(())
    }

    /// [`insert`] `template` (the statement `kind`) with `{}` replaced by the value groups of
    /// `rows`.
    async fn insert_identifier_rows(
        &mut self,
        kind: &'static str,
        template: &str,
        rows: &[[&str; 5]],
    ) -> Result<()> {
        let binds = rows
            .iter()
            .flat_map(|r| r.iter().map(|c| Bind::Text((*c).to_owned())))
            .collect();
        let sql = text(kind, self.dialect, rows.len(), || {
            let values = value_groups(self.dialect, rows.len(), 5);
            format!(
                "{} {}",
                insert(self.dialect),
                template.replacen("{}", &values, 1)
            )
        });
        self.execute(sql, binds).await
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
        for chunk in pieces(entries, CHUNK) {
            let mut binds = Vec::with_capacity(chunk.len() * 12);
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
            let sql = text("outbox", self.dialect, chunk.len(), || {
                let groups = value_groups(self.dialect, chunk.len(), 12);
                format!(
                    "{} INTO outbox (target, source, gid, version, rtype, patient_id, route, \
                     created_us, next_us, updated_us, state, attempts) VALUES {groups} \
                     ON CONFLICT (target, gid, version) DO NOTHING RETURNING target",
                    insert(self.dialect)
                )
            });
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
        for chunk in pieces(rows, AUDIT_CHUNK) {
            let mut binds = Vec::with_capacity(chunk.len() * AUDIT_WIDTH);
            for a in chunk {
                // A Vec<String> always serialises.
                let entities = serde_json::to_string(&a.entities).unwrap_or_else(|_| "[]".into());
                // One value per column: the array's length is checked against the list's.
                let row: [Bind; AUDIT_WIDTH] = [
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
                ];
                binds.extend(row);
            }
            let sql = text("audit", self.dialect, chunk.len(), || {
                format!(
                    "{} INTO audit_log ({AUDIT_COLUMNS}) VALUES {}",
                    insert(self.dialect),
                    value_groups(self.dialect, chunk.len(), AUDIT_WIDTH)
                )
            });
            self.execute(sql, binds).await?;
        }
        Ok(())
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
    use super::{Dialect, pieces, text};
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
