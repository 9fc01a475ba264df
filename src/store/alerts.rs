//! The alerts table: one row per finding per patient, with its DetectedIssue.

use async_trait::async_trait;

use super::Result;
use super::sql::{Dialect, SqlTx, map_err};

/// One row of `alerts`, read by column name ([`COLUMNS`]).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AlertRow {
    pub id: String,
    pub patient_id: String,
    pub fingerprint: String,
    /// The alert code (DUPTHPGEN, polypharmacy, …).
    pub code: String,
    /// The DetectedIssue status: preliminary, amended, final or cancelled.
    pub status: String,
    /// Column `is_open`: an integer, 1 or 0, on both dialects (see [`IsOpen`]).
    #[sqlx(flatten, try_from = "IsOpen")]
    pub open: bool,
    /// A hash of the evidence (implicated versions and detail).
    pub evidence: String,
    pub version: i64,
    pub created_us: i64,
    pub updated_us: i64,
    /// The DetectedIssue JSON.
    pub body: String,
}

impl AlertRow {
    /// The DetectedIssue as JSON ([`super::StoreError::Corrupt`] when the row was damaged).
    pub fn json(&self) -> Result<serde_json::Value> {
        super::parse_body(|| format!("DetectedIssue/{}", self.id), &self.body)
    }
}

/// Filters of the DetectedIssue search.
#[derive(Debug, Clone, Default)]
pub struct AlertQuery {
    pub patient_id: Option<String>,
    pub status: Option<String>,
    pub code: Option<String>,
    pub offset: i64,
    pub count: i64,
}

#[async_trait]
pub trait AlertTx: Send {
    /// Every alert of a patient, open or closed.
    async fn alerts_of_patient(&mut self, patient_id: &str) -> Result<Vec<AlertRow>>;
    async fn alert_get(&mut self, id: &str) -> Result<Option<AlertRow>>;
    /// Inserts or replaces (by id).
    async fn alert_put(&mut self, row: &AlertRow) -> Result<()>;
    async fn alert_search(&mut self, q: &AlertQuery) -> Result<Vec<AlertRow>>;
    /// Serialises alert work on one patient until the transaction ends: detection reads the
    /// patient's records and stored alerts and writes the difference, which two transactions
    /// must not do at once (on PostgreSQL each would miss the other's records, and both would
    /// insert the same new alert). SQLite admits one writer anyway.
    async fn lock_patient_alerts(&mut self, patient_id: &str) -> Result<()>;
    /// Replaces the patient's schedule: (rule, due µs) pairs; none clears it.
    async fn schedule_set(&mut self, patient_id: &str, due: &[(&str, i64)]) -> Result<()>;
    /// Claims up to `limit` patients with a row due at `now_us`, earliest first, and deletes
    /// their due rows: the caller re-evaluates them in the same transaction (which writes the
    /// next due times). On PostgreSQL rows another transaction holds are skipped.
    async fn schedule_claim(&mut self, now_us: i64, limit: i64) -> Result<Vec<String>>;
}

const COLUMNS: &str = "id, patient_id, fingerprint, code, status, is_open, evidence, version, \
     created_us, updated_us, body";

/// `alerts.is_open` as stored: an integer (the `Any` driver has no boolean common to SQLite
/// and PostgreSQL); anything but 0 is open.
#[derive(sqlx::FromRow)]
struct IsOpen {
    is_open: i64,
}

impl From<IsOpen> for bool {
    fn from(c: IsOpen) -> bool {
        c.is_open != 0
    }
}

#[async_trait]
impl AlertTx for SqlTx {
    async fn schedule_set(&mut self, patient_id: &str, due: &[(&str, i64)]) -> Result<()> {
        sqlx::query("DELETE FROM alert_schedule WHERE patient_id = $1")
            .bind(patient_id)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        for (rule, due_us) in due {
            sqlx::query(
                "INSERT INTO alert_schedule (patient_id, rule, due_us) VALUES ($1, $2, $3) \
                 ON CONFLICT (patient_id, rule) DO UPDATE SET due_us = excluded.due_us",
            )
            .bind(patient_id)
            .bind(*rule)
            .bind(*due_us)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        }
        Ok(())
    }

    async fn schedule_claim(&mut self, now_us: i64, limit: i64) -> Result<Vec<String>> {
        let lock = match self.dialect {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let sql = sqlx::AssertSqlSafe(format!(
            "DELETE FROM alert_schedule WHERE (patient_id, rule) IN (SELECT patient_id, rule \
             FROM alert_schedule WHERE due_us <= $1 ORDER BY due_us, patient_id LIMIT $2{lock}) \
             RETURNING patient_id"
        ));
        let mut ids: Vec<String> = sqlx::query_scalar(sql)
            .bind(now_us)
            .bind(limit)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn lock_patient_alerts(&mut self, patient_id: &str) -> Result<()> {
        self.lock(&format!("alerts|{patient_id}")).await
    }

    async fn alerts_of_patient(&mut self, patient_id: &str) -> Result<Vec<AlertRow>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM alerts WHERE patient_id = $1 ORDER BY created_us, id"
        ));
        sqlx::query_as::<_, AlertRow>(sql)
            .bind(patient_id)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn alert_get(&mut self, id: &str) -> Result<Option<AlertRow>> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM alerts WHERE id = $1"));
        sqlx::query_as::<_, AlertRow>(sql)
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn alert_put(&mut self, a: &AlertRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO alerts (id, patient_id, fingerprint, code, status, is_open, evidence, version, \
             created_us, updated_us, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, is_open = excluded.is_open, \
             evidence = excluded.evidence, version = excluded.version, updated_us = excluded.updated_us, \
             body = excluded.body",
        )
        .bind(&a.id)
        .bind(&a.patient_id)
        .bind(&a.fingerprint)
        .bind(&a.code)
        .bind(&a.status)
        .bind(i64::from(a.open))
        .bind(&a.evidence)
        .bind(a.version)
        .bind(a.created_us)
        .bind(a.updated_us)
        .bind(&a.body)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn alert_search(&mut self, q: &AlertQuery) -> Result<Vec<AlertRow>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM alerts WHERE ($1 = '' OR patient_id = $1) \
             AND ($2 = '' OR status = $2) AND ($3 = '' OR code = $3) \
             ORDER BY updated_us DESC, id LIMIT $4 OFFSET $5"
        ));
        sqlx::query_as::<_, AlertRow>(sql)
            .bind(q.patient_id.as_deref().unwrap_or(""))
            .bind(q.status.as_deref().unwrap_or(""))
            .bind(q.code.as_deref().unwrap_or(""))
            .bind(q.count)
            .bind(q.offset)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)
    }
}
