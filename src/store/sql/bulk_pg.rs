//! PostgreSQL's form of the bulk writes ([`super::bulk`]): one statement per table and
//! request, `INSERT … SELECT … FROM UNNEST($1::text[], …)`, instead of the rows cut into
//! multi-row `VALUES` pieces (the bodies of `resource_versions` excepted: see
//! [`SqlTx::upsert_resources_pg`]). The bulk writes of a 340-entry Bundle were about 35
//! statements; they are about 13 (P2's durable-write floor writes its rows in 4). `sqlx`'s
//! `Any` driver binds no arrays, so each column goes as one text parameter in PostgreSQL's
//! array syntax ([`text_array`]) and the statement casts it; every value is still bound, none
//! is formatted into the statement.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write;

use super::bulk::{
    AUDIT, AUDIT_CHUNK, AUDIT_WIDTH, FirstRows, KeyedCurrent, NewVersion, audit_binds, text,
};
use super::{AUDIT_CHAIN, Bind, Current, Dialect, Gate, SqlTx, bind_all, map_err};
use crate::audit::AuditRow;
use crate::audit::merkle::{Hash, Node};
use crate::store::busy::is_key_taken;
use crate::store::{Delivered, DeliveredOutcome, OutboxNew, Result};

/// `resources`' primary key, as PostgreSQL names it: the key a first version's row may find
/// taken ([`SqlTx::insert_first_rows_pg`]).
const RESOURCES_KEY: &str = "resources_pkey";

/// The insert of first versions' `resources` rows: `one_sector` binds the sector once (`$7`),
/// `sectors` as an array.
macro_rules! first_rows {
    (one_sector) => {
        "INSERT INTO resources (gid, sector, rtype, rid, version, hash, patient_ref, patient_id, \
         last_updated) \
         SELECT gid, $7, rtype, rid, 1, hash, patient_ref, patient_id, $8 \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
              AS t(gid, rtype, rid, hash, patient_ref, patient_id)"
    };
    (sectors) => {
        "INSERT INTO resources (gid, sector, rtype, rid, version, hash, patient_ref, patient_id, \
         last_updated) \
         SELECT gid, sector, rtype, rid, 1, hash, patient_ref, patient_id, $8 \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::text[]) AS t(gid, rtype, rid, hash, patient_ref, patient_id, sector)"
    };
}
/// What makes [`first_rows`] skip the rows that exist and name the ones it inserted.
macro_rules! skipping {
    () => {
        " ON CONFLICT (gid) DO NOTHING RETURNING gid"
    };
}

/// A text array literal (`{"a","b",NULL}`): each element quoted, with `\` and `"` escaped by a
/// backslash; `None` is SQL NULL.
fn text_array<'a>(items: impl IntoIterator<Item = Option<&'a str>>) -> String {
    let mut out = String::from("{");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            None => out.push_str("NULL"),
            Some(s) => {
                out.reserve(s.len() + 2);
                out.push('"');
                if s.contains(['\\', '"']) {
                    for c in s.chars() {
                        if c == '\\' || c == '"' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                } else {
                    // Ids, hashes, codes: nothing to escape, copied whole.
                    out.push_str(s);
                }
                out.push('"');
            }
        }
    }
    out.push('}');
    out
}

/// A bigint array literal (`{1,2}`).
fn int_array(items: impl IntoIterator<Item = i64>) -> String {
    let mut out = String::from("{");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{item}");
    }
    out.push('}');
    out
}

/// The first six `resources` columns of `writes` as arrays, in the order both of its
/// statements unnest them: gid, rtype, rid, hash, patient_ref, patient_id.
fn resource_arrays(writes: &[&NewVersion<'_>]) -> [String; 6] {
    [
        column(writes.iter().map(|w| w.gid.as_str())),
        column(writes.iter().map(|w| w.p.rtype.as_str())),
        column(writes.iter().map(|w| w.p.rid.as_str())),
        column(writes.iter().map(|w| w.p.hash.as_str())),
        text_array(writes.iter().map(|w| w.p.patient_ref.as_deref())),
        text_array(writes.iter().map(|w| w.patient_id.as_deref())),
    ]
}

/// `text_array` of a column that is never NULL.
fn column<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    text_array(items.into_iter().map(Some))
}

impl SqlTx {
    /// Takes the write gate ([`super::WRITE_GATE`], shared or exclusive) and then the advisory
    /// locks of `keys` (sorted by the caller) in their order: a function scan of `UNNEST`
    /// returns the elements in array order, and the aggregate calls the lock function row by
    /// row.
    pub(super) async fn lock_keys_pg(&mut self, gate: Gate, keys: &[String]) -> Result<()> {
        let all = std::iter::once(super::WRITE_GATE).chain(keys.iter().map(String::as_str));
        sqlx::query(
            "SELECT count(CASE WHEN t.n = 1 AND $2 \
                          THEN pg_advisory_xact_lock_shared(hashtextextended(t.k, 0)) \
                          ELSE pg_advisory_xact_lock(hashtextextended(t.k, 0)) END) \
             FROM UNNEST($1::text[]) WITH ORDINALITY AS t(k, n)",
        )
        .bind(column(all))
        .bind(gate == Gate::Shared)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    /// The current rows of these gateway ids, each locked until commit (`FOR UPDATE`, in
    /// gateway-id order: the rows are sorted before they are locked, so two requests locking
    /// overlapping sets take them in one order; see [`SqlTx::lock_writes`]).
    pub(super) async fn currents_pg(&mut self, gids: &[&str]) -> Result<HashMap<String, Current>> {
        let rows = sqlx::query_as::<_, KeyedCurrent>(
            // A join, not `gid = ANY($1)`: with the array a parameter PostgreSQL's generic plan
            // scanned the table (8.9 ms a Bundle, 156 ms at worst, in P2); the join probes the
            // primary key once per element.
            "SELECT r.gid, r.version, r.hash, r.last_updated, r.patient_id \
             FROM UNNEST($1::text[]) AS k(gid) JOIN resources r ON r.gid = k.gid \
             ORDER BY r.gid FOR UPDATE OF r",
        )
        .bind(column(gids.iter().copied()))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(rows.into_iter().map(|r| (r.gid, r.current)).collect())
    }

    /// The `resources` rows of first versions (`writes`, sorted by gateway id). Usually none of
    /// them exists: one plain multi-row `INSERT` under a savepoint writes them all
    /// ([`FirstRows::All`]); a plain insert costs PostgreSQL less than a speculative one
    /// (`ON CONFLICT`: ≈ 1 ms less for 340 rows), more than the two round trips of the
    /// savepoint. When one of them exists (or another writer inserted it meanwhile: the insert
    /// waits for that writer's commit), `resources`' key refuses the insert; it is rolled back
    /// to the savepoint and made again `ON CONFLICT (gid) DO NOTHING`, which writes the others
    /// and names them ([`FirstRows::Only`]). The ones left out are decided again with their
    /// current rows ([`SqlTx::settle_first_versions_pg`]).
    pub(super) async fn insert_first_rows_pg(
        &mut self,
        writes: &[&NewVersion<'_>],
        last_updated: &str,
    ) -> Result<FirstRows> {
        if writes.is_empty() {
            return Ok(FirstRows::All);
        }
        self.execute_pg("SAVEPOINT first_rows").await?;
        match self.first_rows(writes, last_updated, false).await {
            Ok(_) => {
                self.execute_pg("RELEASE SAVEPOINT first_rows").await?;
                Ok(FirstRows::All)
            }
            Err(e) if is_key_taken(&e, RESOURCES_KEY) => {
                self.execute_pg("ROLLBACK TO SAVEPOINT first_rows").await?;
                self.execute_pg("RELEASE SAVEPOINT first_rows").await?;
                let inserted = self.first_rows(writes, last_updated, true).await;
                Ok(FirstRows::Only(
                    inserted.map_err(map_err)?.into_iter().collect(),
                ))
            }
            Err(e) => Err(map_err(e)),
        }
    }

    /// One statement without parameters (savepoints).
    async fn execute_pg(&mut self, sql: &'static str) -> Result<()> {
        sqlx::query(sql)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// The insert of [`SqlTx::insert_first_rows_pg`]: plain, or `skip_taken` (`ON CONFLICT
    /// (gid) DO NOTHING`, returning the gateway ids it inserted). Sector and version are bound
    /// once when every write is of one sector.
    async fn first_rows(
        &mut self,
        writes: &[&NewVersion<'_>],
        last_updated: &str,
        skip_taken: bool,
    ) -> std::result::Result<Vec<String>, sqlx::Error> {
        let sector = writes.first().map_or("", |w| w.p.sector.as_str());
        let one_sector = writes.iter().all(|w| w.p.sector == sector);
        let sql = match (one_sector, skip_taken) {
            (true, false) => first_rows!(one_sector),
            (true, true) => concat!(first_rows!(one_sector), skipping!()),
            (false, false) => first_rows!(sectors),
            (false, true) => concat!(first_rows!(sectors), skipping!()),
        };
        let mut q = sqlx::query_scalar::<_, String>(sql);
        for array in resource_arrays(writes) {
            q = q.bind(array);
        }
        let q = match one_sector {
            true => q.bind(sector),
            false => q.bind(column(writes.iter().map(|w| w.p.sector.as_str()))),
        };
        q.bind(last_updated).fetch_all(&mut *self.tx).await
    }

    /// The `resources` rows of versions after the first (rows that exist, locked by
    /// [`SqlTx::currents_pg`]), moved to their new versions in one statement. The bodies go to
    /// `resource_versions` as bound parameters of multi-row `VALUES` ([`super::bulk`]): in an
    /// array literal every quote of a body is escaped and PostgreSQL parses them all again
    /// (3.7 ms more per 340-entry Bundle).
    pub(super) async fn upsert_resources_pg(
        &mut self,
        writes: &[&NewVersion<'_>],
        last_updated: &str,
    ) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut q = sqlx::query(
            "INSERT INTO resources (gid, sector, rtype, rid, version, hash, patient_ref, \
             patient_id, last_updated) \
             SELECT gid, sector, rtype, rid, version, hash, patient_ref, patient_id, $9 \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                         $6::text[], $7::text[], $8::int8[]) \
                  AS t(gid, rtype, rid, hash, patient_ref, patient_id, sector, version) \
             ON CONFLICT (gid) DO UPDATE SET version = excluded.version, hash = excluded.hash, \
             patient_ref = excluded.patient_ref, patient_id = excluded.patient_id, \
             last_updated = excluded.last_updated",
        );
        for array in resource_arrays(writes) {
            q = q.bind(array);
        }
        q.bind(column(writes.iter().map(|w| w.p.sector.as_str())))
            .bind(int_array(writes.iter().map(|w| w.version)))
            .bind(last_updated)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// Removes the identifier rows of these gateway ids.
    pub(super) async fn identifiers_gone_pg(&mut self, gids: &[&str]) -> Result<()> {
        sqlx::query("DELETE FROM identifier_index WHERE gid = ANY($1::text[])")
            .bind(column(gids.iter().copied()))
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// Identifier rows `[sector, rtype, system, value, gid]`: each to `identifier_index`, the
    /// last holder of each identifier (`latest`) to `resource_identifiers`.
    pub(super) async fn index_identifier_rows_pg(
        &mut self,
        rows: &[[&str; 5]],
        latest: &[[&str; 5]],
    ) -> Result<()> {
        for (list, sql) in [
            (
                rows,
                "INSERT INTO identifier_index (sector, rtype, system, value, gid) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
                 ON CONFLICT DO NOTHING",
            ),
            (
                latest,
                "INSERT INTO resource_identifiers (sector, rtype, system, value, gid) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
                 ON CONFLICT (sector, rtype, system, value) DO UPDATE SET gid = excluded.gid",
            ),
        ] {
            if list.is_empty() {
                continue;
            }
            let mut q = sqlx::query(sql);
            for k in 0..5 {
                q = q.bind(column(list.iter().map(|r| r[k])));
            }
            q.execute(&mut *self.tx).await.map_err(map_err)?;
        }
        Ok(())
    }

    /// The outbox rows of a request; an entry of the same resource version for the same target
    /// that is already queued is left as it is. Returns the targets that got a new entry.
    pub(super) async fn outbox_add_pg(
        &mut self,
        entries: &[OutboxNew],
        now: i64,
    ) -> Result<BTreeSet<String>> {
        let added: Vec<String> = sqlx::query_scalar(
            "INSERT INTO outbox (target, source, gid, version, rtype, patient_id, route, \
             created_us, next_us, updated_us, state, attempts) \
             SELECT target, source, gid, version, rtype, patient_id, route, $8, $8, $8, \
                    'pending', 0 \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], \
                         $7::text[]) AS t(target, source, gid, version, rtype, patient_id, route) \
             ON CONFLICT (target, gid, version) DO NOTHING RETURNING target",
        )
        .bind(column(entries.iter().map(|e| e.target.as_str())))
        .bind(column(entries.iter().map(|e| e.source.as_str())))
        .bind(column(entries.iter().map(|e| e.gid.as_str())))
        .bind(int_array(entries.iter().map(|e| e.version)))
        .bind(column(entries.iter().map(|e| e.rtype.as_str())))
        .bind(text_array(entries.iter().map(|e| e.patient_id.as_deref())))
        .bind(column(entries.iter().map(|e| e.route.as_str())))
        .bind(now)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(added.into_iter().collect())
    }
}

/// The text of [`SqlTx::append_rows_pg`] with room for `slots` audit rows: the rows (as
/// [`AUDIT`] writes them), the Merkle nodes from three arrays (hashes in hex) and the head's
/// update, one statement.
fn append_text(slots: usize) -> String {
    let n = slots * AUDIT_WIDTH;
    format!(
        "WITH appended AS ({}), nodes AS (INSERT INTO audit_merkle (level, idx, hash) \
         SELECT l, i, decode(h, 'hex') FROM UNNEST(${}::int8[], ${}::int8[], ${}::text[]) \
         AS t(l, i, h)) UPDATE audit_head SET seq = ${}, hash = ${} WHERE chain = ${}",
        AUDIT.text(Dialect::Postgres, slots),
        n + 1,
        n + 2,
        n + 3,
        n + 4,
        n + 5,
        n + 6
    )
}

impl SqlTx {
    /// Appends audit rows whose `seq` and hashes are set (at most [`AUDIT_CHUNK`]), their
    /// Merkle `nodes` and the chain's new head (`seq`, `hash`) in one statement, the head's row
    /// already locked ([`SqlTx::append_audit`]): one round trip at every commit that writes
    /// audit rows instead of three.
    pub(super) async fn append_rows_pg(
        &mut self,
        rows: &[AuditRow],
        nodes: &[(Node, Hash)],
        (seq, hash): (i64, &str),
    ) -> Result<()> {
        // The caller sends at most one piece's rows ([`super::bulk::padded_pieces`]).
        debug_assert!(!rows.is_empty() && rows.len() <= AUDIT_CHUNK);
        let slots = rows.len().next_power_of_two();
        let mut binds: Vec<Bind> = Vec::with_capacity(slots * AUDIT_WIDTH + 6);
        for a in rows {
            binds.extend(audit_binds(a));
        }
        AUDIT.fill(slots, &mut binds);
        let hashes: Vec<String> = nodes.iter().map(|(_, h)| hex::encode(h)).collect();
        binds.extend([
            Bind::Text(int_array(nodes.iter().map(|(n, _)| i64::from(n.level)))),
            Bind::Text(int_array(nodes.iter().map(|(n, _)| n.idx as i64))),
            Bind::Text(column(hashes.iter().map(String::as_str))),
            Bind::Int(seq),
            Bind::Text(hash.to_owned()),
            Bind::Text(AUDIT_CHAIN.to_owned()),
        ]);
        let sql = text("audit-append", Dialect::Postgres, slots, || {
            append_text(slots)
        });
        bind_all!(sqlx::query(sql), binds)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

/// The outbox entries of delivered outcomes finished (as `outbox_finish` finishes one), those
/// whose lease `$1` holds; their ids returned.
const FINISH_DELIVERED: &str = "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, \
     updated_us = $2, last_status = f.status, last_error = NULL, target_id = f.target_id, \
     target_version = f.target_version, lease_owner = NULL, lease_until_us = NULL \
     FROM UNNEST($3::int8[], $4::int8[], $5::text[], $6::text[]) \
          AS f(id, status, target_id, target_version) \
     WHERE outbox.id = f.id AND outbox.lease_owner = $1 RETURNING outbox.id";

/// What the targets hold after delivered outcomes (as `delivered_put` writes one row).
const PUT_DELIVERED: &str = "INSERT INTO delivered (target, gid, rtype, target_id, \
     target_version, version, hash, delivered_us) \
     SELECT target, gid, rtype, target_id, target_version, version, hash, $8 \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], \
                 $7::text[]) AS d(target, gid, rtype, target_id, target_version, version, hash) \
     ON CONFLICT (target, gid) DO UPDATE SET rtype = excluded.rtype, \
     target_id = excluded.target_id, target_version = excluded.target_version, \
     version = excluded.version, hash = excluded.hash, delivered_us = excluded.delivered_us";

impl SqlTx {
    /// [`crate::store::ExchangeTx::deliveries_finish`] on PostgreSQL: the entries finished in
    /// one statement, which names those whose lease this owner still holds, and what the
    /// targets hold of those in a second. A resource delivered twice among them (the worker
    /// never records two outcomes of one resource together) keeps the last, as one write after
    /// the other would.
    pub(crate) async fn deliveries_finish_pg(
        &mut self,
        owner: &str,
        done: &[DeliveredOutcome],
        now_us: i64,
    ) -> Result<Vec<i64>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let kept: HashSet<i64> = sqlx::query_scalar::<_, i64>(FINISH_DELIVERED)
            .bind(owner)
            .bind(now_us)
            .bind(int_array(done.iter().map(|o| o.id)))
            .bind(int_array(done.iter().map(|o| o.status)))
            .bind(column(done.iter().map(|o| o.delivered.target_id.as_str())))
            .bind(text_array(
                done.iter().map(|o| o.delivered.target_version.as_deref()),
            ))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?
            .into_iter()
            .collect();
        let mut seen = HashSet::new();
        let rows: Vec<&Delivered> = done
            .iter()
            .rev()
            .filter(|o| kept.contains(&o.id))
            .map(|o| &o.delivered)
            .filter(|d| seen.insert((d.target.as_str(), d.gid.as_str())))
            .collect();
        if !rows.is_empty() {
            sqlx::query(PUT_DELIVERED)
                .bind(column(rows.iter().map(|d| d.target.as_str())))
                .bind(column(rows.iter().map(|d| d.gid.as_str())))
                .bind(column(rows.iter().map(|d| d.rtype.as_str())))
                .bind(column(rows.iter().map(|d| d.target_id.as_str())))
                .bind(text_array(rows.iter().map(|d| d.target_version.as_deref())))
                .bind(int_array(rows.iter().map(|d| d.version)))
                .bind(column(rows.iter().map(|d| d.hash.as_str())))
                .bind(now_us)
                .execute(&mut *self.tx)
                .await
                .map_err(map_err)?;
        }
        Ok(done
            .iter()
            .map(|o| o.id)
            .filter(|id| !kept.contains(id))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::{int_array, text_array};

    #[test]
    fn array_literals_quote_escape_and_keep_null_apart_from_the_word() {
        assert_eq!(text_array([]), "{}");
        assert_eq!(
            text_array([
                Some("a"),
                None,
                Some("NULL"),
                Some(r#"{"x":"a\b, c"}"#),
                Some("")
            ]),
            r#"{"a",NULL,"NULL","{\"x\":\"a\\b, c\"}",""}"#
        );
        assert_eq!(int_array([1, -2, 30]), "{1,-2,30}");
    }
}
