//! The exchange's part of the store: the outbox, what was delivered where, pull cursors,
//! leases and the quarantine. The same SQL runs on SQLite and PostgreSQL; claiming differs only
//! in `FOR UPDATE SKIP LOCKED`, which PostgreSQL needs so that replicas never wait on (or take)
//! each other's entries, and which SQLite does not need because `BEGIN IMMEDIATE` admits one
//! writer at a time.

use async_trait::async_trait;
use sqlx::FromRow;

use super::Result;
use super::sql::{Dialect, SqlTx, map_err};

/// An entry to add to the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxNew {
    pub target: String,
    pub source: String,
    pub gid: String,
    pub version: i64,
    pub rtype: String,
    pub patient_id: Option<String>,
    /// Why it goes there: `care`, `recipients`, `backfill`, or `route:<n>` for a listed route.
    pub route: String,
}

crate::audit::row::codes! {
    /// Where an outbox entry stands.
    DeliveryState {
        /// Waiting for (another) attempt.
        Pending = "pending",
        /// The target holds it.
        Delivered = "delivered",
        /// Given up: a permanent failure, or retries exhausted (an operator may retry it).
        Dead = "dead",
        /// A later version reached the target first; never sent.
        Superseded = "superseded",
    }
}

impl TryFrom<String> for DeliveryState {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        DeliveryState::parse(&s).ok_or_else(|| format!("unknown outbox state '{s}'"))
    }
}

/// One outbox entry, as the `outbox` table holds it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxEntry {
    pub id: i64,
    pub target: String,
    pub source: String,
    pub gid: String,
    pub version: i64,
    pub rtype: String,
    pub patient_id: Option<String>,
    pub route: String,
    #[sqlx(try_from = "String")]
    pub state: DeliveryState,
    pub attempts: i64,
    pub created_us: i64,
    pub next_us: i64,
    pub updated_us: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub target_id: Option<String>,
    pub target_version: Option<String>,
}

/// What a target sector holds of a delivered resource (a row of `delivered`, read by the
/// column names of [`DELIVERED_COLUMNS`]).
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Delivered {
    pub target: String,
    pub gid: String,
    pub rtype: String,
    pub target_id: String,
    pub target_version: Option<String>,
    /// The source version that was delivered.
    pub version: i64,
    /// SHA-256 of the body sent.
    pub hash: String,
}

/// A delivery the target accepted (or whose copy already holds the version), as recorded by
/// [`ExchangeTx::deliveries_finish`]: the outbox entry `id` finished with `status`, and what the
/// target now holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredOutcome {
    pub id: i64,
    pub status: i64,
    pub delivered: Delivered,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Delivered {
        status: i64,
        target_id: String,
        target_version: Option<String>,
    },
    /// A retryable failure: try again at `next_us`.
    Retry {
        status: Option<i64>,
        error: String,
        next_us: i64,
    },
    /// Given up: a permanent failure, or retries exhausted.
    Dead { status: Option<i64>, error: String },
    /// A later version already reached the target.
    Superseded,
    /// Not attempted: waits for a resource it references (no attempt is counted).
    Deferred { next_us: i64 },
}

/// A resource queued again by a resync: the current version of one resource.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct ResyncCandidate {
    pub gid: String,
    pub sector: String,
    pub rtype: String,
    pub version: i64,
    pub patient_id: Option<String>,
}

/// The `delivered.hash` of a copy the worker must read at the target before it sends: the
/// target may have lost it (a resync).
pub const UNVERIFIED: &str = "";

/// Filters for listing outbox entries.
#[derive(Debug, Clone, Default)]
pub struct OutboxFilter {
    pub state: Option<DeliveryState>,
    pub target: Option<String>,
    pub offset: i64,
    pub count: i64,
}

/// A pull cursor: the last `meta.lastUpdated` read, and the `id|versionId` keys read at exactly
/// that instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollCursor {
    pub since: String,
    pub seen: Vec<String>,
}

#[async_trait]
pub trait ExchangeTx: Send {
    /// The sectors that take part in a gateway patient's care: those holding a clinical record
    /// of it (anything but its Patient), and those a Communication about it was addressed to.
    /// A sector that sent only the Patient does not.
    async fn care_sectors(&mut self, patient_id: &str) -> Result<Vec<String>>;
    /// How many resources a sector holds for a gateway patient (only clinical records, its
    /// Patient left out, when `clinical`).
    async fn sector_resource_count(
        &mut self,
        patient_id: &str,
        sector: &str,
        clinical: bool,
    ) -> Result<i64>;
    /// Backfills to `sector` audited since `since_us` (the patients it joined the care of).
    async fn backfills_since(&mut self, sector: &str, since_us: i64) -> Result<i64>;
    /// The current (gid, sector, type, version) of every resource of a gateway patient.
    async fn patient_resources(
        &mut self,
        patient_id: &str,
    ) -> Result<Vec<(String, String, String, i64)>>;
    /// The sector's own id of its Patient for a gateway patient, if it sent one.
    async fn sector_patient(&mut self, patient_id: &str, sector: &str) -> Result<Option<String>>;
    /// For the resource `gid` (a sector's Patient), in one statement: the gateway patient it
    /// belongs to, and that patient's own Patient in `sector` (as [`Self::sector_patient`]).
    /// `None` when no resource has that gateway id.
    async fn patient_and_own(
        &mut self,
        gid: &str,
        sector: &str,
    ) -> Result<Option<(Option<String>, Option<String>)>>;
    /// (sector, gid, rid) of every resource of a type holding a business identifier.
    async fn identifier_owners(
        &mut self,
        rtype: &str,
        system: &str,
        value: &str,
    ) -> Result<Vec<(String, String, String)>>;
    /// What a delivery of one stored version reads, in one statement: the target's copy as
    /// recorded (`delivered`), and the version's body with the resource's id in its sector
    /// (empty when the resource row is gone; `None` when the version is not stored).
    async fn delivery_source(
        &mut self,
        target: &str,
        gid: &str,
        version: i64,
    ) -> Result<(Option<Delivered>, Option<(String, String)>)>;

    /// Adds an entry unless the same (target, resource, version) is already there.
    async fn outbox_add(&mut self, entry: &OutboxNew) -> Result<bool>;
    /// Leases up to `limit` due entries of one target, oldest first, leaving out any entry
    /// with an older pending entry of the same resource (per-resource order).
    async fn outbox_claim(
        &mut self,
        target: &str,
        owner: &str,
        now_us: i64,
        lease_until_us: i64,
        limit: i64,
    ) -> Result<Vec<OutboxEntry>>;
    /// Gives a leased entry back untouched.
    async fn outbox_release(&mut self, id: i64, owner: &str) -> Result<()>;
    /// Extends the leases `owner` holds on pending entries of `target` to `until_us`; returns
    /// how many.
    async fn outbox_renew(&mut self, target: &str, owner: &str, until_us: i64) -> Result<u64>;
    /// Every owner of a lease, an outbox entry's or a named one.
    async fn lease_holders(&mut self) -> Result<Vec<String>>;
    /// Gives back everything `owner` holds: (outbox entries, named leases).
    async fn reclaim_owner(&mut self, owner: &str) -> Result<(u64, u64)>;
    /// The resources `target` was sent (or was to be sent) at their current version, with
    /// their patient, optionally of one patient and changed at or after `since` (a FHIR
    /// instant or date, compared with `meta.lastUpdated`).
    async fn resync_candidates(
        &mut self,
        target: &str,
        patient_id: Option<&str>,
        since: Option<&str>,
    ) -> Result<Vec<ResyncCandidate>>;
    /// Queues the current version of one resource for `target` again (a new entry, or its
    /// finished entry back to pending), and marks what the target holds of it as unverified
    /// (the worker reads the target's copy before it sends). False when an entry of that
    /// version is pending already.
    async fn resync_queue(
        &mut self,
        c: &ResyncCandidate,
        target: &str,
        now_us: i64,
    ) -> Result<bool>;
    /// Records how an attempt ended; [`StoreError::LeaseLost`] when `owner` no longer holds
    /// the lease (the caller must then commit nothing of the attempt).
    async fn outbox_finish(&mut self, id: i64, owner: &str, finish: &Finish) -> Result<()>;
    /// True when an older entry of the same resource for the same target is still pending.
    async fn outbox_pending_before(&mut self, target: &str, gid: &str, before: i64)
    -> Result<bool>;
    async fn outbox_get(&mut self, id: i64) -> Result<Option<OutboxEntry>>;
    async fn outbox_list(&mut self, filter: &OutboxFilter) -> Result<Vec<OutboxEntry>>;
    /// Puts a dead entry back in the queue (attempts from zero, due now). None when there is
    /// no such entry or it is not dead.
    async fn outbox_retry(&mut self, id: i64, now_us: i64) -> Result<Option<OutboxEntry>>;
    /// (target, state, entries).
    async fn outbox_counts(&mut self) -> Result<Vec<(String, String, i64)>>;

    async fn delivered_get(&mut self, target: &str, gid: &str) -> Result<Option<Delivered>>;
    async fn delivered_by_target_id(
        &mut self,
        target: &str,
        rtype: &str,
        target_id: &str,
    ) -> Result<Option<Delivered>>;
    async fn delivered_put(&mut self, d: &Delivered, now_us: i64) -> Result<()>;
    /// Records delivered outcomes, each as [`Self::outbox_finish`] with [`Finish::Delivered`]
    /// and then [`Self::delivered_put`] of what the target holds, for the entries whose lease
    /// `owner` still holds; nothing of the others is written, and their ids are returned (the
    /// lease was lost). On PostgreSQL two statements whatever their number (a recording
    /// transaction holds about ten: P4); on SQLite, in the process, one pair each.
    async fn deliveries_finish(
        &mut self,
        owner: &str,
        done: &[DeliveredOutcome],
        now_us: i64,
    ) -> Result<Vec<i64>>;

    async fn cursor_get(&mut self, sector: &str, rtype: &str) -> Result<Option<PollCursor>>;
    async fn cursor_put(&mut self, sector: &str, rtype: &str, cursor: &PollCursor) -> Result<()>;
    /// Takes or renews a named lease; false while another owner holds it.
    async fn lease_acquire(
        &mut self,
        name: &str,
        owner: &str,
        now_us: i64,
        until_us: i64,
    ) -> Result<bool>;
    async fn lease_release(&mut self, name: &str, owner: &str) -> Result<()>;
    /// Keeps a pulled resource that failed validation.
    async fn quarantine_add(
        &mut self,
        sector: &str,
        rtype: &str,
        rid: &str,
        version_id: Option<&str>,
        body: &str,
        issues: &str,
    ) -> Result<()>;
}

const OUTBOX_COLUMNS: &str = "id, target, source, gid, version, rtype, patient_id, route, state, \
     attempts, created_us, next_us, updated_us, last_status, last_error, target_id, target_version";

/// The row of [`ExchangeTx::delivery_source`].
#[derive(FromRow)]
struct SourceRow {
    body: Option<String>,
    rid: String,
    d_rtype: Option<String>,
    d_target_id: Option<String>,
    d_target_version: Option<String>,
    d_version: Option<i64>,
    d_hash: Option<String>,
}

const DELIVERED_COLUMNS: &str = "target, gid, rtype, target_id, target_version, version, hash";

/// A `poll_cursors` row as stored: `seen` is a JSON array in a text column.
#[derive(FromRow)]
struct CursorRecord {
    since: String,
    seen: String,
}

impl From<CursorRecord> for PollCursor {
    fn from(r: CursorRecord) -> PollCursor {
        PollCursor {
            since: r.since,
            // Written by `cursor_put` from a Vec<String>; an unreadable value only means the
            // versions at the boundary instant are read (and recognised as unchanged) again.
            seen: serde_json::from_str(&r.seen).unwrap_or_default(),
        }
    }
}

/// One current resource of a patient: (gid, sector, type, version).
#[derive(FromRow)]
struct PatientResource {
    gid: String,
    sector: String,
    rtype: String,
    version: i64,
}

/// A resource holding a business identifier: (sector, gid, rid).
#[derive(FromRow)]
struct IdentifierOwner {
    sector: String,
    gid: String,
    rid: String,
}

/// Outbox entries per target and state.
#[derive(FromRow)]
struct StateCount {
    target: String,
    state: String,
    entries: i64,
}

/// Error texts are kept short in the outbox (they may quote a server's answer).
fn clip(s: &str) -> String {
    s.chars().take(500).collect()
}

#[async_trait]
impl ExchangeTx for SqlTx {
    async fn care_sectors(&mut self, patient_id: &str) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT sector FROM resources WHERE patient_id = $1 AND rtype <> 'Patient' \
             UNION SELECT target FROM outbox WHERE patient_id = $1 AND route = 'recipients' \
             ORDER BY 1",
        )
        .bind(patient_id)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn sector_resource_count(
        &mut self,
        patient_id: &str,
        sector: &str,
        clinical: bool,
    ) -> Result<i64> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM resources WHERE patient_id = $1 AND sector = $2 \
             AND ($3 = 0 OR rtype <> 'Patient')",
        )
        .bind(patient_id)
        .bind(sector)
        .bind(i64::from(clinical))
        .fetch_one(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn backfills_since(&mut self, sector: &str, since_us: i64) -> Result<i64> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_log WHERE recorded_us >= $1 AND interaction = 'backfill' \
             AND target_sector = $2",
        )
        .bind(since_us)
        .bind(sector)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn patient_resources(
        &mut self,
        patient_id: &str,
    ) -> Result<Vec<(String, String, String, i64)>> {
        let rows = sqlx::query_as::<_, PatientResource>(
            "SELECT gid, sector, rtype, version FROM resources WHERE patient_id = $1 ORDER BY gid",
        )
        .bind(patient_id)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(|r| (r.gid, r.sector, r.rtype, r.version))
            .collect())
    }

    async fn sector_patient(&mut self, patient_id: &str, sector: &str) -> Result<Option<String>> {
        sqlx::query_scalar(
            "SELECT rid FROM resources WHERE patient_id = $1 AND sector = $2 AND rtype = 'Patient' \
             ORDER BY rid LIMIT 1",
        )
        .bind(patient_id)
        .bind(sector)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn patient_and_own(
        &mut self,
        gid: &str,
        sector: &str,
    ) -> Result<Option<(Option<String>, Option<String>)>> {
        sqlx::query_as(
            "SELECT s.patient_id, (SELECT t.rid FROM resources t WHERE t.patient_id = s.patient_id \
             AND t.sector = $2 AND t.rtype = 'Patient' ORDER BY t.rid LIMIT 1) AS own \
             FROM resources s WHERE s.gid = $1",
        )
        .bind(gid)
        .bind(sector)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn identifier_owners(
        &mut self,
        rtype: &str,
        system: &str,
        value: &str,
    ) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query_as::<_, IdentifierOwner>(
            "SELECT i.sector AS sector, r.gid AS gid, r.rid AS rid \
             FROM resource_identifiers i JOIN resources r ON r.gid = i.gid \
             WHERE i.rtype = $1 AND i.system = $2 AND i.value = $3 ORDER BY i.sector",
        )
        .bind(rtype)
        .bind(system)
        .bind(value)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(rows.into_iter().map(|r| (r.sector, r.gid, r.rid)).collect())
    }

    async fn delivery_source(
        &mut self,
        target: &str,
        gid: &str,
        version: i64,
    ) -> Result<(Option<Delivered>, Option<(String, String)>)> {
        // One row whatever is found: the key, joined to each of the three.
        let row: SourceRow = sqlx::query_as(
            "SELECT v.body, COALESCE(r.rid, '') AS rid, d.rtype AS d_rtype, \
             d.target_id AS d_target_id, d.target_version AS d_target_version, \
             d.version AS d_version, d.hash AS d_hash \
             FROM (SELECT $1 AS target, $2 AS gid) AS k \
             LEFT JOIN resource_versions v ON v.gid = k.gid AND v.version = $3 \
             LEFT JOIN resources r ON r.gid = k.gid \
             LEFT JOIN delivered d ON d.target = k.target AND d.gid = k.gid",
        )
        .bind(target)
        .bind(gid)
        .bind(version)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(map_err)?;
        let known = match (row.d_rtype, row.d_target_id, row.d_version, row.d_hash) {
            (Some(rtype), Some(target_id), Some(version), Some(hash)) => Some(Delivered {
                target: target.to_owned(),
                gid: gid.to_owned(),
                rtype,
                target_id,
                target_version: row.d_target_version,
                version,
                hash,
            }),
            _ => None,
        };
        Ok((known, row.body.map(|b| (row.rid, b))))
    }

    async fn outbox_add(&mut self, e: &OutboxNew) -> Result<bool> {
        let now = crate::fhir::time::now_us();
        let done = sqlx::query(
            "INSERT INTO outbox (target, source, gid, version, rtype, patient_id, route, state, \
             attempts, created_us, next_us, updated_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8, $8) \
             ON CONFLICT (target, gid, version) DO NOTHING",
        )
        .bind(&e.target)
        .bind(&e.source)
        .bind(&e.gid)
        .bind(e.version)
        .bind(&e.rtype)
        .bind(e.patient_id.as_deref())
        .bind(&e.route)
        .bind(now)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn outbox_claim(
        &mut self,
        target: &str,
        owner: &str,
        now_us: i64,
        lease_until_us: i64,
        limit: i64,
    ) -> Result<Vec<OutboxEntry>> {
        let lock = match self.dialect {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        // The probe for a resource's earliest pending entry goes through the resource's key
        // (gid, target, version): a handful of rows. `p.state || ''` keeps both planners off
        // `outbox_queue` (target, state, id), through which the probe would walk every pending
        // entry of the target before it.
        let sql = sqlx::AssertSqlSafe(format!(
            "UPDATE outbox SET lease_owner = $1, lease_until_us = $2, updated_us = $3 \
             WHERE id IN (SELECT o.id FROM outbox o WHERE o.target = $4 AND o.state = 'pending' \
               AND o.next_us <= $3 AND (o.lease_until_us IS NULL OR o.lease_until_us < $3) \
               AND o.id = (SELECT min(p.id) FROM outbox p WHERE p.gid = o.gid \
                           AND p.target = o.target AND p.state || '' = 'pending') \
               ORDER BY o.id LIMIT $5{lock}) \
             RETURNING {OUTBOX_COLUMNS}"
        ));
        let mut out = sqlx::query_as::<_, OutboxEntry>(sql)
            .bind(owner)
            .bind(lease_until_us)
            .bind(now_us)
            .bind(target)
            .bind(limit)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    async fn outbox_release(&mut self, id: i64, owner: &str) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET lease_owner = NULL, lease_until_us = NULL \
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(owner)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn outbox_renew(&mut self, target: &str, owner: &str, until_us: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE outbox SET lease_until_us = $3 WHERE target = $1 AND lease_owner = $2 \
             AND state = 'pending'",
        )
        .bind(target)
        .bind(owner)
        .bind(until_us)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    async fn lease_holders(&mut self) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT DISTINCT lease_owner FROM outbox WHERE lease_owner IS NOT NULL \
             UNION SELECT owner FROM leases",
        )
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn reclaim_owner(&mut self, owner: &str) -> Result<(u64, u64)> {
        let entries = sqlx::query(
            "UPDATE outbox SET lease_owner = NULL, lease_until_us = NULL WHERE lease_owner = $1",
        )
        .bind(owner)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        let leases = sqlx::query("DELETE FROM leases WHERE owner = $1")
            .bind(owner)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        Ok((entries, leases))
    }

    async fn resync_candidates(
        &mut self,
        target: &str,
        patient_id: Option<&str>,
        since: Option<&str>,
    ) -> Result<Vec<ResyncCandidate>> {
        sqlx::query_as::<_, ResyncCandidate>(
            "SELECT r.gid AS gid, r.sector AS sector, r.rtype AS rtype, r.version AS version, \
             r.patient_id AS patient_id FROM resources r \
             WHERE r.gid IN (SELECT o.gid FROM outbox o WHERE o.target = $1) \
             AND ($2 = '' OR r.patient_id = $2) AND ($3 = '' OR r.last_updated >= $3) \
             ORDER BY r.gid",
        )
        .bind(target)
        .bind(patient_id.unwrap_or(""))
        .bind(since.unwrap_or(""))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn resync_queue(
        &mut self,
        c: &ResyncCandidate,
        target: &str,
        now_us: i64,
    ) -> Result<bool> {
        let queued = sqlx::query(
            "INSERT INTO outbox (target, source, gid, version, rtype, patient_id, route, state, \
             attempts, created_us, next_us, updated_us) \
             VALUES ($1, $2, $3, $4, $5, $6, 'resync', 'pending', 0, $7, $7, $7) \
             ON CONFLICT (target, gid, version) DO UPDATE SET state = 'pending', attempts = 0, \
             created_us = $7, next_us = $7, updated_us = $7, lease_owner = NULL, \
             lease_until_us = NULL WHERE outbox.state <> 'pending'",
        )
        .bind(target)
        .bind(&c.sector)
        .bind(&c.gid)
        .bind(c.version)
        .bind(&c.rtype)
        .bind(c.patient_id.as_deref())
        .bind(now_us)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        sqlx::query("UPDATE delivered SET hash = $3 WHERE target = $1 AND gid = $2")
            .bind(target)
            .bind(&c.gid)
            .bind(UNVERIFIED)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(queued == 1)
    }

    async fn outbox_finish(&mut self, id: i64, owner: &str, finish: &Finish) -> Result<()> {
        let now = crate::fhir::time::now_us();
        let q = match finish {
            Finish::Delivered {
                status,
                target_id,
                target_version,
            } => sqlx::query(
                "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, updated_us = $3, \
                 last_status = $4, last_error = NULL, target_id = $5, target_version = $6, \
                 lease_owner = NULL, lease_until_us = NULL WHERE id = $1 AND lease_owner = $2",
            )
            .bind(id)
            .bind(owner)
            .bind(now)
            .bind(*status)
            .bind(target_id.clone())
            .bind(target_version.clone()),
            Finish::Retry {
                status,
                error,
                next_us,
            } => sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, updated_us = $3, last_status = $4, \
                 last_error = $5, next_us = $6, lease_owner = NULL, lease_until_us = NULL \
                 WHERE id = $1 AND lease_owner = $2",
            )
            .bind(id)
            .bind(owner)
            .bind(now)
            .bind(*status)
            .bind(clip(error))
            .bind(*next_us),
            Finish::Dead { status, error } => sqlx::query(
                "UPDATE outbox SET state = 'dead', attempts = attempts + 1, updated_us = $3, \
                 last_status = $4, last_error = $5, lease_owner = NULL, lease_until_us = NULL \
                 WHERE id = $1 AND lease_owner = $2",
            )
            .bind(id)
            .bind(owner)
            .bind(now)
            .bind(*status)
            .bind(clip(error)),
            Finish::Superseded => sqlx::query(
                "UPDATE outbox SET state = 'superseded', updated_us = $3, lease_owner = NULL, \
                 lease_until_us = NULL WHERE id = $1 AND lease_owner = $2",
            )
            .bind(id)
            .bind(owner)
            .bind(now),
            Finish::Deferred { next_us } => sqlx::query(
                "UPDATE outbox SET next_us = $3, lease_owner = NULL, lease_until_us = NULL \
                 WHERE id = $1 AND lease_owner = $2",
            )
            .bind(id)
            .bind(owner)
            .bind(*next_us),
        };
        let done = q.execute(&mut *self.tx).await.map_err(map_err)?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(super::StoreError::LeaseLost(id))
        }
    }

    async fn outbox_pending_before(
        &mut self,
        target: &str,
        gid: &str,
        before: i64,
    ) -> Result<bool> {
        Ok(sqlx::query(
            // Through the resource's key, as in `outbox_claim`.
            "SELECT 1 FROM outbox WHERE gid = $2 AND target = $1 AND state || '' = 'pending' \
             AND id < $3 LIMIT 1",
        )
        .bind(target)
        .bind(gid)
        .bind(before)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)?
        .is_some())
    }

    async fn outbox_get(&mut self, id: i64) -> Result<Option<OutboxEntry>> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = $1"));
        sqlx::query_as::<_, OutboxEntry>(sql)
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn outbox_list(&mut self, f: &OutboxFilter) -> Result<Vec<OutboxEntry>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE ($1 = '' OR state = $1) \
             AND ($2 = '' OR target = $2) ORDER BY id LIMIT $3 OFFSET $4"
        ));
        sqlx::query_as::<_, OutboxEntry>(sql)
            .bind(f.state.map_or("", DeliveryState::code))
            .bind(f.target.as_deref().unwrap_or(""))
            .bind(f.count)
            .bind(f.offset)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn outbox_retry(&mut self, id: i64, now_us: i64) -> Result<Option<OutboxEntry>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_us = $2, updated_us = $2, \
             lease_owner = NULL, lease_until_us = NULL WHERE id = $1 AND state = 'dead' \
             RETURNING {OUTBOX_COLUMNS}"
        ));
        sqlx::query_as::<_, OutboxEntry>(sql)
            .bind(id)
            .bind(now_us)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn outbox_counts(&mut self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query_as::<_, StateCount>(
            "SELECT target, state, COUNT(*) AS entries FROM outbox GROUP BY target, state \
             ORDER BY target, state",
        )
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(|r| (r.target, r.state, r.entries))
            .collect())
    }

    async fn delivered_get(&mut self, target: &str, gid: &str) -> Result<Option<Delivered>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERED_COLUMNS} FROM delivered WHERE target = $1 AND gid = $2"
        ));
        sqlx::query_as::<_, Delivered>(sql)
            .bind(target)
            .bind(gid)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn delivered_by_target_id(
        &mut self,
        target: &str,
        rtype: &str,
        target_id: &str,
    ) -> Result<Option<Delivered>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERED_COLUMNS} FROM delivered WHERE target = $1 AND rtype = $2 \
             AND target_id = $3 ORDER BY delivered_us DESC LIMIT 1"
        ));
        sqlx::query_as::<_, Delivered>(sql)
            .bind(target)
            .bind(rtype)
            .bind(target_id)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn deliveries_finish(
        &mut self,
        owner: &str,
        done: &[DeliveredOutcome],
        now_us: i64,
    ) -> Result<Vec<i64>> {
        if self.dialect == Dialect::Postgres {
            return self.deliveries_finish_pg(owner, done, now_us).await;
        }
        let mut lost = Vec::new();
        for o in done {
            let finish = Finish::Delivered {
                status: o.status,
                target_id: o.delivered.target_id.clone(),
                target_version: o.delivered.target_version.clone(),
            };
            match self.outbox_finish(o.id, owner, &finish).await {
                Ok(()) => self.delivered_put(&o.delivered, now_us).await?,
                Err(super::StoreError::LeaseLost(id)) => lost.push(id),
                Err(err) => return Err(err),
            }
        }
        Ok(lost)
    }

    async fn delivered_put(&mut self, d: &Delivered, now_us: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO delivered (target, gid, rtype, target_id, target_version, version, hash, delivered_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (target, gid) DO UPDATE SET rtype = excluded.rtype, \
             target_id = excluded.target_id, target_version = excluded.target_version, \
             version = excluded.version, hash = excluded.hash, delivered_us = excluded.delivered_us",
        )
        .bind(&d.target)
        .bind(&d.gid)
        .bind(&d.rtype)
        .bind(&d.target_id)
        .bind(d.target_version.as_deref())
        .bind(d.version)
        .bind(&d.hash)
        .bind(now_us)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn cursor_get(&mut self, sector: &str, rtype: &str) -> Result<Option<PollCursor>> {
        let row = sqlx::query_as::<_, CursorRecord>(
            "SELECT since, seen FROM poll_cursors WHERE sector = $1 AND rtype = $2",
        )
        .bind(sector)
        .bind(rtype)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(row.map(PollCursor::from))
    }

    async fn cursor_put(&mut self, sector: &str, rtype: &str, c: &PollCursor) -> Result<()> {
        // A Vec<String> always serialises.
        let seen = serde_json::to_string(&c.seen).unwrap_or_else(|_| "[]".into());
        sqlx::query(
            "INSERT INTO poll_cursors (sector, rtype, since, seen, updated_us) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (sector, rtype) DO UPDATE SET since = excluded.since, seen = excluded.seen, \
             updated_us = excluded.updated_us",
        )
        .bind(sector)
        .bind(rtype)
        .bind(&c.since)
        .bind(seen)
        .bind(crate::fhir::time::now_us())
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn lease_acquire(
        &mut self,
        name: &str,
        owner: &str,
        now_us: i64,
        until_us: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO leases (name, owner, until_us) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until_us = excluded.until_us \
             WHERE leases.owner = excluded.owner OR leases.until_us < $4",
        )
        .bind(name)
        .bind(owner)
        .bind(until_us)
        .bind(now_us)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn lease_release(&mut self, name: &str, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND owner = $2")
            .bind(name)
            .bind(owner)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn quarantine_add(
        &mut self,
        sector: &str,
        rtype: &str,
        rid: &str,
        version_id: Option<&str>,
        body: &str,
        issues: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO quarantine (sector, rtype, rid, version_id, received_us, body, issues) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(sector)
        .bind(rtype)
        .bind(rid)
        .bind(version_id)
        .bind(crate::fhir::time::now_us())
        .bind(body)
        .bind(issues)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }
}
