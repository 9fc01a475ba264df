//! Patient identity under review: writes held because they would have joined two gateway
//! patients (`held_writes`), and undoing a merge (`patient_merges` keeps what the merged
//! patient held).

use async_trait::async_trait;
use sqlx::FromRow;

use super::Result;
use super::sql::{SECTOR_PATIENT_SYSTEM, SqlTx, map_err};
use crate::fhir::time::now_us;
use crate::ids::gateway_id;

/// A held write as stored.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct HeldWrite {
    pub id: i64,
    pub sector: String,
    /// The interaction of the request (`create`, `update`, `transaction`, `batch`).
    pub interaction: String,
    pub client_id: Option<String>,
    /// The write as the pipeline applies it: a JSON array of entries.
    pub entries: String,
    /// Why it was held (no patient data).
    pub reason: String,
    /// The gateway patients it would have joined: a JSON array of ids.
    pub patients: String,
    pub held_us: i64,
    /// `held`, `released` or `rejected`.
    pub state: String,
    pub decided_us: Option<i64>,
    pub decided_by: Option<String>,
}

/// A write to hold.
#[derive(Debug, Clone)]
pub struct HeldNew {
    pub sector: String,
    pub interaction: String,
    pub client_id: Option<String>,
    pub entries: String,
    pub reason: String,
    pub patients: Vec<String>,
}

/// What undoing a merge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmerged {
    /// The patient `from` had been merged into.
    pub into: String,
    pub merged_us: i64,
    /// Identifiers given back to `from`.
    pub identifiers: usize,
    /// Resources that belong to `from` again.
    pub resources: i64,
}

/// An outbox entry written for a patient since some time: what was routed meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct RoutedEntry {
    pub id: i64,
    pub target: String,
    pub source: String,
    pub rtype: String,
    pub gid: String,
    pub version: i64,
    pub route: String,
    pub state: String,
}

#[derive(FromRow)]
struct Merge {
    into_id: String,
    merged_us: i64,
    moved_identifiers: String,
}

#[async_trait]
pub trait IdentityTx: Send {
    /// Keeps a held write; returns its id.
    async fn held_add(&mut self, held: &HeldNew) -> Result<i64>;
    /// Held writes, newest first; only those in `state` when given.
    async fn held_list(&mut self, state: Option<&str>) -> Result<Vec<HeldWrite>>;
    async fn held_get(&mut self, id: i64) -> Result<Option<HeldWrite>>;
    /// Moves a write still `held` to `state` (`released`, `rejected`); false when it is not held.
    async fn held_decide(&mut self, id: i64, state: &str, by: &str) -> Result<bool>;
    /// Undoes the merge of `from` (a gateway patient merged into another): gives back the
    /// identifiers it held, relinks every resource of the survivor by its own patient reference,
    /// and removes the merge. `None` when `from` was not merged.
    async fn unmerge(&mut self, from: &str) -> Result<Option<Unmerged>>;
    /// Outbox entries written since `since_us` for any of `patients`.
    async fn routed_since(
        &mut self,
        patients: &[String],
        since_us: i64,
    ) -> Result<Vec<RoutedEntry>>;
}

const HELD_COLUMNS: &str = "id, sector, interaction, client_id, entries, reason, patients, held_us, \
     state, decided_us, decided_by";

#[async_trait]
impl IdentityTx for SqlTx {
    async fn held_add(&mut self, h: &HeldNew) -> Result<i64> {
        // A Vec<String> always serialises.
        let patients = serde_json::to_string(&h.patients).unwrap_or_else(|_| "[]".into());
        sqlx::query_scalar(
            "INSERT INTO held_writes (sector, interaction, client_id, entries, reason, patients, \
             held_us, state) VALUES ($1, $2, $3, $4, $5, $6, $7, 'held') RETURNING id",
        )
        .bind(&h.sector)
        .bind(&h.interaction)
        .bind(h.client_id.as_deref())
        .bind(&h.entries)
        .bind(&h.reason)
        .bind(patients)
        .bind(now_us())
        .fetch_one(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn held_list(&mut self, state: Option<&str>) -> Result<Vec<HeldWrite>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {HELD_COLUMNS} FROM held_writes WHERE ($1 = '' OR state = $1) ORDER BY id DESC"
        ));
        sqlx::query_as::<_, HeldWrite>(sql)
            .bind(state.unwrap_or(""))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn held_get(&mut self, id: i64) -> Result<Option<HeldWrite>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {HELD_COLUMNS} FROM held_writes WHERE id = $1"
        ));
        sqlx::query_as::<_, HeldWrite>(sql)
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn held_decide(&mut self, id: i64, state: &str, by: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE held_writes SET state = $2, decided_us = $3, decided_by = $4 \
             WHERE id = $1 AND state = 'held'",
        )
        .bind(id)
        .bind(state)
        .bind(now_us())
        .bind(by)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn unmerge(&mut self, from: &str) -> Result<Option<Unmerged>> {
        let merge: Option<Merge> = sqlx::query_as(
            "SELECT into_id, merged_us, moved_identifiers FROM patient_merges WHERE from_id = $1",
        )
        .bind(from)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)?;
        let Some(merge) = merge else {
            return Ok(None);
        };
        // Linking and merging take the identifiers' locks; an unmerge takes the patients'.
        let mut keys = [
            format!("unmerge|{from}"),
            format!("unmerge|{}", merge.into_id),
        ];
        keys.sort();
        for k in &keys {
            self.lock(k).await?;
        }
        let moved: Vec<(String, String)> =
            serde_json::from_str(&merge.moved_identifiers).unwrap_or_default();
        for (system, value) in &moved {
            sqlx::query(
                "UPDATE patient_identifiers SET patient_id = $1 WHERE system = $2 AND value = $3",
            )
            .bind(from)
            .bind(system)
            .bind(value)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        }
        sqlx::query("DELETE FROM patient_merges WHERE from_id = $1")
            .bind(from)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        self.forget_patient_refs();
        self.relink(&merge.into_id).await?;
        let resources: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM resources WHERE patient_id = $1")
                .bind(from)
                .fetch_one(&mut *self.tx)
                .await
                .map_err(map_err)?;
        Ok(Some(Unmerged {
            into: merge.into_id,
            merged_us: merge.merged_us,
            identifiers: moved.len(),
            resources,
        }))
    }

    async fn routed_since(
        &mut self,
        patients: &[String],
        since_us: i64,
    ) -> Result<Vec<RoutedEntry>> {
        let mut out = Vec::new();
        for p in patients {
            out.extend(
                sqlx::query_as::<_, RoutedEntry>(
                    "SELECT id, target, source, rtype, gid, version, route, state FROM outbox \
                     WHERE patient_id = $1 AND created_us >= $2 ORDER BY id",
                )
                .bind(p)
                .bind(since_us)
                .fetch_all(&mut *self.tx)
                .await
                .map_err(map_err)?,
            );
        }
        out.sort_by_key(|e| e.id);
        Ok(out)
    }
}

impl SqlTx {
    /// Points every resource of `patient` at the gateway patient its own patient reference
    /// names now: a Patient by its sector key, anything else by `Patient/<id>` of its sector or
    /// `Patient?identifier=system|value`. A resource whose reference names no linked patient
    /// (what the gateway authors names the gateway patient itself) keeps `patient`.
    async fn relink(&mut self, patient: &str) -> Result<()> {
        let statements = [
            "UPDATE resources SET patient_id = COALESCE((SELECT i.patient_id FROM patient_identifiers i \
             WHERE i.system = $2 || resources.sector AND i.value = resources.rid), patient_id) \
             WHERE patient_id = $1 AND rtype = 'Patient'",
            "UPDATE resources SET patient_id = COALESCE((SELECT i.patient_id FROM patient_identifiers i \
             WHERE 'Patient?identifier=' || i.system || '|' || i.value = resources.patient_ref), patient_id) \
             WHERE patient_id = $1 AND rtype <> 'Patient' AND patient_ref LIKE 'Patient?identifier=%' AND $2 <> ''",
        ];
        for sql in statements {
            sqlx::query(sql)
                .bind(patient)
                .bind(SECTOR_PATIENT_SYSTEM)
                .execute(&mut *self.tx)
                .await
                .map_err(map_err)?;
        }
        // `Patient/<id>`: that Patient of the resource's own sector, read by its gateway id.
        let refs: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT sector, patient_ref FROM resources WHERE patient_id = $1 \
             AND rtype <> 'Patient' AND patient_ref LIKE 'Patient/%'",
        )
        .bind(patient)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        for (sector, reference) in refs {
            let rid = reference.strip_prefix("Patient/").unwrap_or(&reference);
            sqlx::query(
                "UPDATE resources SET patient_id = COALESCE((SELECT p.patient_id FROM resources p \
                 WHERE p.gid = $4), patient_id) WHERE patient_id = $1 AND sector = $2 \
                 AND patient_ref = $3 AND rtype <> 'Patient'",
            )
            .bind(patient)
            .bind(&sector)
            .bind(&reference)
            .bind(gateway_id(&sector, "Patient", rid))
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        }
        Ok(())
    }
}
