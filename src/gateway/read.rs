//! The read service: one record, a gateway patient, the audit search (searches, histories and
//! vread are in `search`). Each read decides access through [`authorize`] and leaves an audit
//! row in the transaction it reads in.

use super::relation::mark;
use super::{Gateway, GatewayError};
use crate::access::{BLOCKED, Caller, Denied, Request, authorize};
use crate::audit::{self, Action, AuditRow, Interaction, Outcome};
use crate::store::{AuditQuery, GatewayPatient, Stored};

impl Gateway {
    /// Reads one resource by gateway id (or, with `sector`, by the sector's own id); audited.
    pub async fn read(
        &self,
        caller: &Caller,
        sector: Option<&str>,
        rtype: &str,
        id: &str,
    ) -> Result<Stored, GatewayError> {
        self.gate(caller, Request::PatientData, Interaction::Read)
            .await?;
        let mut tx = self.store.begin_audited().await?;
        let found = match sector {
            Some(s) => tx.get_sector(s, rtype, id).await?,
            None => tx.get(id).await?,
        };
        let stored = match found {
            Some(s) if s.rtype == rtype => s,
            _ => return Err(GatewayError::NotFound(format!("{rtype}/{id}"))),
        };
        authorize(
            caller,
            Request::Record {
                sector: &stored.sector,
            },
        )?;
        let mut basis = None;
        if let Some(pid) = stored.patient_id.clone() {
            let (t, access) = self.admit(tx, caller, &pid, Interaction::Read).await?;
            tx = t;
            if !self.record_shown(caller, &stored, &access) {
                drop(tx);
                let denied = Denied(BLOCKED.into());
                return Err(self
                    .gate_refused(caller, Some(&pid), Interaction::Read, denied)
                    .await);
            }
            basis = Some(access.basis);
        }
        let mut row = audit::row(
            &caller.actor(),
            Some(&stored.sector),
            Action::Read,
            Interaction::Read,
            Outcome::Success,
        );
        if let Some(b) = &basis {
            mark(&mut row, b);
        }
        row.patient_id = stored.patient_id.clone();
        row.entities = vec![format!("{}/{}", stored.rtype, stored.gid)];
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// A gateway patient with its linked sector Patients; audited.
    pub async fn patient(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Option<GatewayPatient>, GatewayError> {
        if authorize(caller, Request::GatewayPatient).is_err() {
            // Not a care-team member: the id is read as a sector Patient's gateway id instead.
            return Ok(None);
        }
        let mut tx = self.store.begin_audited().await?;
        let Some(p) = tx.patient(id).await? else {
            return Ok(None);
        };
        let (mut tx, access) = self.admit(tx, caller, &p.id, Interaction::Read).await?;
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Read,
            Interaction::Read,
            Outcome::Success,
        );
        mark(&mut row, &access.basis);
        row.patient_id = Some(p.id.clone());
        row.entities = vec![format!("Patient/{}", p.id)];
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(Some(p))
    }

    /// Gateway patients by identifier (`system|value`); audited like a read.
    pub async fn patients_by_identifier(
        &self,
        caller: &Caller,
        system: &str,
        value: &str,
    ) -> Result<Vec<GatewayPatient>, GatewayError> {
        self.gate(
            caller,
            Request::GatewayPatientSearch,
            Interaction::SearchType,
        )
        .await?;
        let mut tx = self.store.begin_audited().await?;
        let found = match tx.patient_by_identifier(system, value).await? {
            Some(id) => tx.patient(&id).await?,
            None => None,
        };
        let mut basis = None;
        if let Some(p) = &found {
            let (t, access) = self
                .admit(tx, caller, &p.id, Interaction::SearchType)
                .await?;
            tx = t;
            basis = Some(access.basis);
        }
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Execute,
            Interaction::SearchType,
            Outcome::Success,
        );
        row.patient_id = found.as_ref().map(|p| p.id.clone());
        row.entities = found.iter().map(|p| format!("Patient/{}", p.id)).collect();
        if let Some(b) = &basis {
            mark(&mut row, b);
        }
        row.query = Some(format!("Patient?identifier={system}|{value}"));
        row.detail = Some(format!(
            "search Patient by identifier: {} results",
            found.iter().count()
        ));
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(found.into_iter().collect())
    }

    /// The audit log, for auditors; with `total`, how many rows match in all (paging aside).
    /// The search itself is audited.
    pub async fn audit_search(
        &self,
        caller: &Caller,
        query: &AuditQuery,
        total: bool,
    ) -> Result<(Vec<AuditRow>, Option<i64>), GatewayError> {
        authorize(caller, Request::AuditLog)?;
        let mut tx = self.store.begin_audited().await?;
        let resolved = resolve_identifier(tx.as_mut(), query).await?;
        let query = &resolved;
        let rows = match &query.patient_id {
            Some(p) if p.is_empty() => Vec::new(),
            _ => tx.audit_search(query).await?,
        };
        let total = match (total, &query.patient_id) {
            (true, Some(p)) if p.is_empty() => Some(0),
            (true, _) => Some(tx.audit_count(query).await?),
            (false, _) => None,
        };
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Execute,
            Interaction::SearchType,
            Outcome::Success,
        );
        row.patient_id = query.patient_id.clone().filter(|p| !p.is_empty());
        row.entities = vec!["AuditEvent".into()];
        row.query = Some(query.describe());
        row.detail = Some(format!("audit search: {} events", rows.len()));
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok((rows, total))
    }
}

/// The query with its patient identifier (`system|value`) resolved to the gateway patient, so
/// that the identifier itself is never written to the log; an identifier no patient holds
/// matches nothing (an empty `patient_id`).
async fn resolve_identifier(
    tx: &mut dyn crate::store::StoreTx,
    query: &AuditQuery,
) -> Result<AuditQuery, GatewayError> {
    let mut q = query.clone();
    let Some(ident) = q.patient_identifier.take() else {
        return Ok(q);
    };
    let Some((system, value)) = crate::config::split_system_value(&ident) else {
        return Err(GatewayError::invalid(
            crate::fhir::outcome::Issue::error("value", "a patient identifier is system|value")
                .at("patient-identifier"),
        ));
    };
    q.patient_id = Some(
        tx.patient_by_identifier(system, value)
            .await?
            .unwrap_or_default(),
    );
    Ok(q)
}
