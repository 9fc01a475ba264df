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

/// An open alert hidden from the default inbox until `until_us` (0: not snoozed), by whom and
/// why. Columns `snoozed_until_us`, `snoozed_by`, `snooze_note`.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Snooze {
    #[sqlx(rename = "snoozed_until_us")]
    pub until_us: i64,
    #[sqlx(rename = "snoozed_by")]
    pub by: String,
    #[sqlx(rename = "snooze_note")]
    pub note: String,
}

/// An alert as the inbox and the DetectedIssue search read it: the row, its snooze, its rank.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InboxRow {
    #[sqlx(flatten)]
    pub alert: AlertRow,
    #[sqlx(flatten)]
    pub snooze: Snooze,
    /// 0 high, 1 moderate, 2 low.
    pub severity_rank: i64,
}

impl InboxRow {
    /// The row's place in inbox order (see [`InboxQuery::after`]).
    pub fn sort_key(&self) -> (i64, i64, String) {
        (
            self.severity_rank,
            self.alert.created_us,
            self.alert.id.clone(),
        )
    }
}

/// Which open alerts the inbox reads, by their snooze at [`InboxQuery::now_us`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Snoozed {
    /// Those not snoozed (the default view).
    #[default]
    Awake,
    /// Only those snoozed.
    Only,
    /// Both.
    Any,
}

/// A page of open alerts in inbox order (severity rank, then oldest first, then id), with the
/// filters the store answers from columns.
#[derive(Debug, Clone, Default)]
pub struct InboxQuery {
    pub code: Option<String>,
    pub status: Option<String>,
    /// A sector among the implicated records' sectors.
    pub sector: Option<String>,
    /// 0 high, 1 moderate, 2 low.
    pub severity_rank: Option<i64>,
    pub snoozed: Snoozed,
    pub now_us: i64,
    /// The sort key (rank, created, id) of the last row already read: rows after it.
    pub after: Option<(i64, i64, String)>,
    pub limit: i64,
}

/// One lifecycle change of an alert (`alert_history`): raised, updated, acknowledged, snoozed,
/// closed or reopened; `implicated` is the JSON array of the version's implicated references.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct HistoryRow {
    pub alert_id: String,
    pub seq: i64,
    pub kind: String,
    pub version: i64,
    pub at_us: i64,
    pub author: String,
    pub note: String,
    pub detail: String,
    pub implicated: String,
}

/// The inbox rank of a DetectedIssue body's severity: 0 high, 1 moderate, 2 low (or none).
pub fn severity_rank(body: &str) -> i64 {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    match v.get("severity").and_then(serde_json::Value::as_str) {
        Some("high") => 0,
        Some("moderate") => 1,
        _ => 2,
    }
}

/// The sectors of a DetectedIssue body's implicated records (the first word of each display,
/// as `gateway::alerts::render` writes it), as the `sectors` column holds them: `,gp,hospital,`
/// (`,` for none).
pub fn sectors_column(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let mut out: Vec<&str> = Vec::new();
    for r in v
        .get("implicated")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some((sector, _)) = r
            .get("display")
            .and_then(serde_json::Value::as_str)
            .and_then(|d| d.split_once(' '))
            && !sector.is_empty()
            && !out.contains(&sector)
        {
            out.push(sector);
        }
    }
    if out.is_empty() {
        return ",".to_owned();
    }
    format!(",{},", out.join(","))
}

/// A LIKE pattern matching `,value,` anywhere, with `\` escaping LIKE's wildcards.
fn contains_pattern(value: &str) -> String {
    let mut p = String::from("%,");
    for c in value.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push_str(",%");
    p
}

#[async_trait]
pub trait AlertTx: Send {
    /// Every alert of a patient, open or closed.
    async fn alerts_of_patient(&mut self, patient_id: &str) -> Result<Vec<AlertRow>>;
    async fn alert_get(&mut self, id: &str) -> Result<Option<AlertRow>>;
    /// Inserts or replaces (by id).
    async fn alert_put(&mut self, row: &AlertRow) -> Result<()>;
    /// Alerts of the DetectedIssue search (open or closed), with their snoozes.
    async fn alert_search(&mut self, q: &AlertQuery) -> Result<Vec<InboxRow>>;
    /// Open alerts in inbox order, filtered in SQL, at most `q.limit` of them.
    async fn alert_inbox(&mut self, q: &InboxQuery) -> Result<Vec<InboxRow>>;
    /// An alert's snooze (`None`: no such alert).
    async fn alert_snooze_get(&mut self, id: &str) -> Result<Option<Snooze>>;
    /// Sets an alert's snooze (every [`AlertTx::alert_put`] of a change ends it).
    async fn alert_snooze(&mut self, id: &str, snooze: &Snooze) -> Result<()>;
    /// Appends a lifecycle change to an alert's history (its `seq` is the next one; `h.seq` is
    /// ignored). Callers hold the patient's alert lock.
    async fn alert_history_append(&mut self, h: &HistoryRow) -> Result<()>;
    /// An alert's history, in order.
    async fn alert_history(&mut self, id: &str) -> Result<Vec<HistoryRow>>;
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

/// The columns of [`InboxRow`] beyond [`COLUMNS`].
const INBOX_COLUMNS: &str = "snoozed_until_us, snoozed_by, snooze_note, severity_rank";

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
             created_us, updated_us, body, severity_rank, sectors) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, is_open = excluded.is_open, \
             evidence = excluded.evidence, version = excluded.version, updated_us = excluded.updated_us, \
             body = excluded.body, severity_rank = excluded.severity_rank, sectors = excluded.sectors, \
             snoozed_until_us = 0, snoozed_by = '', snooze_note = ''",
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
        // The inbox's columns follow the body; a change ends a snooze.
        .bind(severity_rank(&a.body))
        .bind(sectors_column(&a.body))
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn alert_search(&mut self, q: &AlertQuery) -> Result<Vec<InboxRow>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS}, {INBOX_COLUMNS} FROM alerts WHERE ($1 = '' OR patient_id = $1) \
             AND ($2 = '' OR status = $2) AND ($3 = '' OR code = $3) \
             ORDER BY updated_us DESC, id LIMIT $4 OFFSET $5"
        ));
        sqlx::query_as::<_, InboxRow>(sql)
            .bind(q.patient_id.as_deref().unwrap_or(""))
            .bind(q.status.as_deref().unwrap_or(""))
            .bind(q.code.as_deref().unwrap_or(""))
            .bind(q.count)
            .bind(q.offset)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn alert_inbox(&mut self, q: &InboxQuery) -> Result<Vec<InboxRow>> {
        let (rank, created, id) = q.after.clone().unwrap_or((-1, i64::MIN, String::new()));
        let snoozed = match q.snoozed {
            Snoozed::Awake => 1,
            Snoozed::Only => 2,
            Snoozed::Any => 0,
        };
        // The code filter is written only when given, so that the index led by `code` serves
        // it (an `$n = '' OR` form would hide it from the planner).
        let code = if q.code.is_some() {
            "code = $10"
        } else {
            "$10 = ''"
        };
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS}, {INBOX_COLUMNS} FROM alerts WHERE is_open = 1 AND {code} \
             AND ($1 = '' OR status = $1) \
             AND ($2 = '' OR sectors LIKE $2 ESCAPE '\\') AND ($3 < 0 OR severity_rank = $3) \
             AND ($4 = 0 OR ($4 = 1 AND snoozed_until_us <= $5) OR ($4 = 2 AND snoozed_until_us > $5)) \
             AND (severity_rank > $6 OR (severity_rank = $6 AND (created_us > $7 \
                  OR (created_us = $7 AND id > $8)))) \
             ORDER BY severity_rank, created_us, id LIMIT $9"
        ));
        sqlx::query_as::<_, InboxRow>(sql)
            .bind(q.status.as_deref().unwrap_or(""))
            .bind(
                q.sector
                    .as_deref()
                    .map(contains_pattern)
                    .unwrap_or_default(),
            )
            .bind(q.severity_rank.unwrap_or(-1))
            .bind(snoozed)
            .bind(q.now_us)
            .bind(rank)
            .bind(created)
            .bind(id)
            .bind(q.limit)
            .bind(q.code.as_deref().unwrap_or(""))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn alert_snooze_get(&mut self, id: &str) -> Result<Option<Snooze>> {
        sqlx::query_as::<_, Snooze>(
            "SELECT snoozed_until_us, snoozed_by, snooze_note FROM alerts WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn alert_snooze(&mut self, id: &str, snooze: &Snooze) -> Result<()> {
        sqlx::query(
            "UPDATE alerts SET snoozed_until_us = $1, snoozed_by = $2, snooze_note = $3 \
             WHERE id = $4",
        )
        .bind(snooze.until_us)
        .bind(&snooze.by)
        .bind(&snooze.note)
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn alert_history_append(&mut self, h: &HistoryRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO alert_history (alert_id, seq, kind, version, at_us, author, note, detail, \
             implicated) SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5, $6, $7, $8 \
             FROM alert_history WHERE alert_id = $1",
        )
        .bind(&h.alert_id)
        .bind(&h.kind)
        .bind(h.version)
        .bind(h.at_us)
        .bind(&h.author)
        .bind(&h.note)
        .bind(&h.detail)
        .bind(&h.implicated)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn alert_history(&mut self, id: &str) -> Result<Vec<HistoryRow>> {
        sqlx::query_as::<_, HistoryRow>(
            "SELECT alert_id, seq, kind, version, at_us, author, note, detail, implicated \
             FROM alert_history WHERE alert_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_columns_come_from_the_body() {
        let body = r#"{"severity":"moderate","implicated":[
            {"reference":"A/1","display":"gp MedicationRequest"},
            {"reference":"A/2","display":"hospital Condition"},
            {"reference":"A/3","display":"gp CarePlan"},{"reference":"Resource/x"}]}"#;
        assert_eq!(severity_rank(body), 1);
        assert_eq!(sectors_column(body), ",gp,hospital,");
        assert_eq!(severity_rank(r#"{"severity":"high"}"#), 0);
        assert_eq!(
            (severity_rank("not json"), sectors_column("{}").as_str()),
            (2, ",")
        );
        assert_eq!(contains_pattern("a_b%"), "%,a\\_b\\%,%");
    }
}
