//! What access decisions read and write: a person's records by identifier, the newest
//! exchange of a sector about a patient, break-the-glass grants, and the access report.

use async_trait::async_trait;
use sqlx::FromRow;

use super::Result;
use super::sql::{AuditRecord, SqlTx, map_err};
use crate::audit::AuditRow;

/// A stored resource that carries a given identifier.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Identified {
    pub sector: String,
    pub rtype: String,
    pub rid: String,
    pub gid: String,
}

/// One break-the-glass grant (`break_glass`).
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Grant {
    pub id: String,
    /// The practitioner (`system|value`) or `client:<id>` the grant is for.
    pub grantee: String,
    pub client_id: String,
    pub patient_id: String,
    pub reason: String,
    pub reason_text: String,
    pub granted_us: i64,
    pub expires_us: i64,
    /// 1 when configuration let the grant override the patient's blocks.
    pub overrides_block: i64,
    pub reviewed_us: Option<i64>,
    pub reviewer: Option<String>,
    pub review_note: Option<String>,
}

const GRANT_COLUMNS: &str = "id, grantee, client_id, patient_id, reason, reason_text, granted_us, \
     expires_us, overrides_block, reviewed_us, reviewer, review_note";

#[derive(FromRow)]
struct Newest {
    rtype: String,
    gid: String,
}

#[async_trait]
pub trait AccessTx: Send {
    /// Every stored resource of `rtypes` carrying the identifier `system|value`, in any sector.
    async fn with_identifier(
        &mut self,
        system: &str,
        value: &str,
        rtypes: &[&str],
    ) -> Result<Vec<Identified>>;
    /// The newest record (`Type/gid`) `sector` sent about the patient updated since `since`
    /// (an instant as the store writes them).
    async fn last_sent(
        &mut self,
        patient_id: &str,
        sector: &str,
        since: &str,
    ) -> Result<Option<String>>;
    /// The newest record (`Type/gid`) delivered to `sector` about the patient since `since_us`.
    async fn last_received(
        &mut self,
        patient_id: &str,
        sector: &str,
        since_us: i64,
    ) -> Result<Option<String>>;
    async fn grant_put(&mut self, grant: &Grant) -> Result<()>;
    /// The grant of `grantee` for the patient that is in force at `now_us` (the latest).
    async fn grant_in_force(
        &mut self,
        grantee: &str,
        patient_id: &str,
        now_us: i64,
    ) -> Result<Option<Grant>>;
    async fn grant_get(&mut self, id: &str) -> Result<Option<Grant>>;
    /// Grants newest first: all, only unreviewed (`Some(false)`) or only reviewed.
    async fn grants(
        &mut self,
        reviewed: Option<bool>,
        offset: i64,
        count: i64,
    ) -> Result<Vec<Grant>>;
    /// Records an auditor's review; false when the grant is unknown or already reviewed.
    async fn grant_review(
        &mut self,
        id: &str,
        reviewer: &str,
        note: &str,
        now_us: i64,
    ) -> Result<bool>;
    /// Every read of the patient's data (reads, searches, operations, the stream), newest
    /// first, granted or refused.
    async fn access_report(
        &mut self,
        patient_id: &str,
        offset: i64,
        count: i64,
    ) -> Result<Vec<AuditRow>>;
}

#[async_trait]
impl AccessTx for SqlTx {
    async fn with_identifier(
        &mut self,
        system: &str,
        value: &str,
        rtypes: &[&str],
    ) -> Result<Vec<Identified>> {
        let mut out = Vec::new();
        // One indexed look-up per type (resource_identifiers_value is on rtype, system, value).
        for rtype in rtypes {
            let found = sqlx::query_as::<_, Identified>(
                "SELECT r.sector AS sector, r.rtype AS rtype, r.rid AS rid, r.gid AS gid \
                 FROM resource_identifiers i JOIN resources r ON r.gid = i.gid \
                 WHERE i.rtype = $1 AND i.system = $2 AND i.value = $3 LIMIT 100",
            )
            .bind(*rtype)
            .bind(system)
            .bind(value)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
            out.extend(found);
        }
        Ok(out)
    }

    async fn last_sent(
        &mut self,
        patient_id: &str,
        sector: &str,
        since: &str,
    ) -> Result<Option<String>> {
        let patient_id = self.resolve_patient(patient_id).await?;
        let found = sqlx::query_as::<_, Newest>(
            "SELECT rtype, gid FROM resources WHERE patient_id = $1 AND sector = $2 \
             AND last_updated >= $3 ORDER BY last_updated DESC LIMIT 1",
        )
        .bind(&patient_id)
        .bind(sector)
        .bind(since)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(found.map(|n| format!("{}/{}", n.rtype, n.gid)))
    }

    async fn last_received(
        &mut self,
        patient_id: &str,
        sector: &str,
        since_us: i64,
    ) -> Result<Option<String>> {
        let patient_id = self.resolve_patient(patient_id).await?;
        let found = sqlx::query_as::<_, Newest>(
            "SELECT rtype, gid FROM outbox WHERE patient_id = $1 AND target = $2 \
             AND updated_us >= $3 AND state = 'delivered' ORDER BY updated_us DESC LIMIT 1",
        )
        .bind(&patient_id)
        .bind(sector)
        .bind(since_us)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(found.map(|n| format!("{}/{}", n.rtype, n.gid)))
    }

    async fn grant_put(&mut self, g: &Grant) -> Result<()> {
        sqlx::query(
            "INSERT INTO break_glass (id, grantee, client_id, patient_id, reason, reason_text, \
             granted_us, expires_us, overrides_block) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&g.id)
        .bind(&g.grantee)
        .bind(&g.client_id)
        .bind(&g.patient_id)
        .bind(&g.reason)
        .bind(&g.reason_text)
        .bind(g.granted_us)
        .bind(g.expires_us)
        .bind(g.overrides_block)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn grant_in_force(
        &mut self,
        grantee: &str,
        patient_id: &str,
        now_us: i64,
    ) -> Result<Option<Grant>> {
        let patient_id = self.resolve_patient(patient_id).await?;
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {GRANT_COLUMNS} FROM break_glass WHERE grantee = $1 AND patient_id = $2 \
             AND expires_us > $3 AND granted_us <= $3 ORDER BY expires_us DESC LIMIT 1"
        ));
        sqlx::query_as::<_, Grant>(sql)
            .bind(grantee)
            .bind(&patient_id)
            .bind(now_us)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn grant_get(&mut self, id: &str) -> Result<Option<Grant>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {GRANT_COLUMNS} FROM break_glass WHERE id = $1"
        ));
        sqlx::query_as::<_, Grant>(sql)
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn grants(
        &mut self,
        reviewed: Option<bool>,
        offset: i64,
        count: i64,
    ) -> Result<Vec<Grant>> {
        let filter = match reviewed {
            None => "",
            Some(false) => "WHERE reviewed_us IS NULL",
            Some(true) => "WHERE reviewed_us IS NOT NULL",
        };
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {GRANT_COLUMNS} FROM break_glass {filter} \
             ORDER BY granted_us DESC, id LIMIT $1 OFFSET $2"
        ));
        sqlx::query_as::<_, Grant>(sql)
            .bind(count)
            .bind(offset)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn grant_review(
        &mut self,
        id: &str,
        reviewer: &str,
        note: &str,
        now_us: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE break_glass SET reviewed_us = $2, reviewer = $3, review_note = $4 \
             WHERE id = $1 AND reviewed_us IS NULL",
        )
        .bind(id)
        .bind(now_us)
        .bind(reviewer)
        .bind(note)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn access_report(
        &mut self,
        patient_id: &str,
        offset: i64,
        count: i64,
    ) -> Result<Vec<AuditRow>> {
        let patient_id = self.resolve_patient(patient_id).await?;
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM audit_log WHERE patient_id = $1 AND kind = 'event' \
             AND interaction IN ('read', 'search-type', 'operation', 'stream', 'break-glass') \
             ORDER BY recorded_us DESC, seq DESC LIMIT $2 OFFSET $3",
            super::sql::AUDIT_COLUMNS
        ));
        let rows = sqlx::query_as::<_, AuditRecord>(sql)
            .bind(&patient_id)
            .bind(count)
            .bind(offset)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(rows.into_iter().map(AuditRow::from).collect())
    }
}
