//! What IT staff's console reads and the delivery workers' health hook writes: each target
//! endpoint's health (`sector_health`), attempts per hour (`sector_attempts`), the queue per
//! target, poll cursors per sector, and the message browser's search of the outbox by metadata
//! (the `outbox` table only: no body is ever read).

use async_trait::async_trait;
use sqlx::FromRow;

use super::Result;
use super::outbox::{DeliveryState, OutboxEntry};
use super::sql::{Bind, SqlTx, bind_all, map_err};

/// One target endpoint's health (a row of `sector_health`).
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct SectorHealth {
    pub target: String,
    /// `healthy` or `failing`.
    pub state: String,
    /// Consecutive failed attempts (0 after a delivery).
    pub streak: i64,
    /// When the current state began.
    pub since_us: i64,
    pub last_attempt_us: i64,
    pub last_success_us: Option<i64>,
    pub last_failure_us: Option<i64>,
    pub last_status: Option<i64>,
    /// Status and issue codes and locations, never diagnostics.
    pub last_error: Option<String>,
}

/// One target's waiting entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, FromRow)]
pub struct QueueStat {
    pub target: String,
    pub pending: i64,
    pub dead: i64,
    /// When the oldest pending entry was written.
    pub oldest_us: Option<i64>,
}

/// One target's attempts in a period.
#[derive(Debug, Clone, Default, PartialEq, Eq, FromRow)]
pub struct AttemptCount {
    pub target: String,
    pub delivered: i64,
    pub failed: i64,
}

/// One pull-mode sector's cursors: the newest `_lastUpdated` read and when a cursor last moved.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct CursorStat {
    pub sector: String,
    pub since: String,
    pub updated_us: i64,
}

/// The message browser's search: every field narrows; newest first, keyset-paged by id.
#[derive(Debug, Clone, Default)]
pub struct OutboxQuery {
    /// The target sector.
    pub target: Option<String>,
    pub rtype: Option<String>,
    pub state: Option<DeliveryState>,
    /// The resource's gateway id.
    pub gid: Option<String>,
    /// Written at or after.
    pub from_us: Option<i64>,
    /// Written at or before.
    pub to_us: Option<i64>,
    /// Entries with an id below this one (the next page).
    pub before_id: Option<i64>,
    pub count: i64,
}

#[async_trait]
pub trait OpsTx: Send {
    /// The health of one target endpoint, locked for this transaction (one writer per target,
    /// on every replica).
    async fn health_lock(&mut self, target: &str) -> Result<Option<SectorHealth>>;
    /// Inserts or replaces a target's health.
    async fn health_put(&mut self, h: &SectorHealth) -> Result<()>;
    /// Every target's health.
    async fn health_all(&mut self) -> Result<Vec<SectorHealth>>;
    /// Adds attempts' outcomes to their hour's counts.
    async fn attempts_add(
        &mut self,
        target: &str,
        hour_us: i64,
        delivered: i64,
        failed: i64,
    ) -> Result<()>;
    /// Attempts per target since `since_us` (whole hours).
    async fn attempts_since(&mut self, since_us: i64) -> Result<Vec<AttemptCount>>;
    /// Pending and dead entries per target, and the oldest pending one's age.
    async fn queue_stats(&mut self) -> Result<Vec<QueueStat>>;
    /// When the oldest pending entry of one target was written.
    async fn oldest_pending(&mut self, target: &str) -> Result<Option<i64>>;
    /// Per pull-mode sector, its newest cursor.
    async fn cursor_stats(&mut self) -> Result<Vec<CursorStat>>;
    /// The message browser: outbox metadata only.
    async fn outbox_browse(&mut self, q: &OutboxQuery) -> Result<Vec<OutboxEntry>>;
    /// Puts every dead entry of `target` back in its queue; returns them.
    async fn outbox_requeue_dead(&mut self, target: &str, now_us: i64) -> Result<Vec<OutboxEntry>>;
    /// Queues `(target, gid, version)` again (a new entry, or the existing one made pending),
    /// forgetting what the target was recorded to hold, so the worker sends it (a conditional
    /// create finds a copy the target still has).
    async fn outbox_resend(
        &mut self,
        from: &OutboxEntry,
        target: &str,
        now_us: i64,
    ) -> Result<OutboxEntry>;
}

const HEALTH_COLUMNS: &str = "target, state, streak, since_us, last_attempt_us, last_success_us, \
     last_failure_us, last_status, last_error";

const BROWSE_COLUMNS: &str = "id, target, source, gid, version, rtype, patient_id, route, state, \
     attempts, created_us, next_us, updated_us, last_status, last_error, target_id, target_version";

/// The statement of [`OpsTx::outbox_browse`]: only the conditions asked for (so an index on
/// each answers it), every value bound.
fn browse_sql(q: &OutboxQuery) -> (String, Vec<Bind>) {
    let mut conds: Vec<String> = Vec::new();
    let mut binds: Vec<Bind> = Vec::new();
    let mut push = |col: &str, op: &str, b: Bind| {
        binds.push(b);
        conds.push(format!("{col} {op} ${}", binds.len()));
    };
    if let Some(t) = &q.target {
        push("target", "=", Bind::Text(t.clone()));
    }
    if let Some(t) = &q.rtype {
        push("rtype", "=", Bind::Text(t.clone()));
    }
    if let Some(s) = q.state {
        push("state", "=", Bind::Text(s.code().to_owned()));
    }
    if let Some(g) = &q.gid {
        push("gid", "=", Bind::Text(g.clone()));
    }
    if let Some(f) = q.from_us {
        push("created_us", ">=", Bind::Int(f));
    }
    if let Some(t) = q.to_us {
        push("created_us", "<=", Bind::Int(t));
    }
    if let Some(b) = q.before_id {
        push("id", "<", Bind::Int(b));
    }
    binds.push(Bind::Int(q.count));
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    let sql = format!(
        "SELECT {BROWSE_COLUMNS} FROM outbox {filter} ORDER BY id DESC LIMIT ${}",
        binds.len()
    );
    (sql, binds)
}

#[async_trait]
impl OpsTx for SqlTx {
    async fn health_lock(&mut self, target: &str) -> Result<Option<SectorHealth>> {
        self.lock(&format!("carebridge:sector-health:{target}"))
            .await?;
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {HEALTH_COLUMNS} FROM sector_health WHERE target = $1"
        ));
        sqlx::query_as::<_, SectorHealth>(sql)
            .bind(target)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn health_put(&mut self, h: &SectorHealth) -> Result<()> {
        sqlx::query(
            "INSERT INTO sector_health (target, state, streak, since_us, last_attempt_us, \
             last_success_us, last_failure_us, last_status, last_error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (target) DO UPDATE SET state = $2, streak = $3, since_us = $4, \
             last_attempt_us = $5, last_success_us = $6, last_failure_us = $7, \
             last_status = $8, last_error = $9",
        )
        .bind(&h.target)
        .bind(&h.state)
        .bind(h.streak)
        .bind(h.since_us)
        .bind(h.last_attempt_us)
        .bind(h.last_success_us)
        .bind(h.last_failure_us)
        .bind(h.last_status)
        .bind(h.last_error.clone())
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn health_all(&mut self) -> Result<Vec<SectorHealth>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {HEALTH_COLUMNS} FROM sector_health ORDER BY target"
        ));
        sqlx::query_as::<_, SectorHealth>(sql)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn attempts_add(&mut self, target: &str, hour_us: i64, d: i64, f: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO sector_attempts (target, hour_us, delivered, failed) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (target, hour_us) DO UPDATE SET \
             delivered = sector_attempts.delivered + $3, failed = sector_attempts.failed + $4",
        )
        .bind(target)
        .bind(hour_us)
        .bind(d)
        .bind(f)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn attempts_since(&mut self, since_us: i64) -> Result<Vec<AttemptCount>> {
        sqlx::query_as::<_, AttemptCount>(
            "SELECT target, CAST(SUM(delivered) AS BIGINT) AS delivered, \
             CAST(SUM(failed) AS BIGINT) AS failed FROM sector_attempts \
             WHERE hour_us >= $1 GROUP BY target ORDER BY target",
        )
        .bind(since_us)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn queue_stats(&mut self) -> Result<Vec<QueueStat>> {
        sqlx::query_as::<_, QueueStat>(
            "SELECT target, \
             CAST(SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) AS BIGINT) AS pending, \
             CAST(SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END) AS BIGINT) AS dead, \
             MIN(CASE WHEN state = 'pending' THEN created_us END) AS oldest_us \
             FROM outbox WHERE state IN ('pending', 'dead') GROUP BY target ORDER BY target",
        )
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn oldest_pending(&mut self, target: &str) -> Result<Option<i64>> {
        // The queue index (target, state, id) gives the first pending entry directly.
        sqlx::query_scalar::<_, i64>(
            "SELECT created_us FROM outbox WHERE target = $1 AND state = 'pending' \
             ORDER BY id LIMIT 1",
        )
        .bind(target)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn cursor_stats(&mut self) -> Result<Vec<CursorStat>> {
        sqlx::query_as::<_, CursorStat>(
            "SELECT sector, MAX(since) AS since, MAX(updated_us) AS updated_us \
             FROM poll_cursors GROUP BY sector ORDER BY sector",
        )
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn outbox_browse(&mut self, q: &OutboxQuery) -> Result<Vec<OutboxEntry>> {
        let (sql, binds) = browse_sql(q);
        bind_all!(
            sqlx::query_as::<_, OutboxEntry>(sqlx::AssertSqlSafe(sql)),
            binds
        )
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn outbox_requeue_dead(&mut self, target: &str, now_us: i64) -> Result<Vec<OutboxEntry>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_us = $2, updated_us = $2, \
             lease_owner = NULL, lease_until_us = NULL WHERE target = $1 AND state = 'dead' \
             RETURNING {BROWSE_COLUMNS}"
        ));
        sqlx::query_as::<_, OutboxEntry>(sql)
            .bind(target)
            .bind(now_us)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn outbox_resend(
        &mut self,
        e: &OutboxEntry,
        target: &str,
        now_us: i64,
    ) -> Result<OutboxEntry> {
        sqlx::query("DELETE FROM delivered WHERE target = $1 AND gid = $2")
            .bind(target)
            .bind(&e.gid)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        let sql = sqlx::AssertSqlSafe(format!(
            "INSERT INTO outbox (target, source, gid, version, rtype, patient_id, route, state, \
             attempts, created_us, next_us, updated_us) \
             VALUES ($1, $2, $3, $4, $5, $6, 'resend', 'pending', 0, $7, $7, $7) \
             ON CONFLICT (target, gid, version) DO UPDATE SET state = 'pending', attempts = 0, \
             next_us = $7, updated_us = $7, last_error = NULL, lease_owner = NULL, \
             lease_until_us = NULL RETURNING {BROWSE_COLUMNS}"
        ));
        sqlx::query_as::<_, OutboxEntry>(sql)
            .bind(target)
            .bind(&e.source)
            .bind(&e.gid)
            .bind(e.version)
            .bind(&e.rtype)
            .bind(e.patient_id.clone())
            .bind(now_us)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(map_err)
    }
}
