//! The read service: one record, a gateway patient, the audit search (searches, histories and
//! vread are in `search`). Each read decides access through [`authorize`] and leaves an audit
//! row in the transaction it reads in.

use super::{Gateway, GatewayError};
use crate::access::{Caller, Request, authorize};
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
        authorize(caller, Request::PatientData)?;
        let mut tx = self.store.begin().await?;
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
        let mut row = audit::row(
            &caller.actor(),
            Some(&stored.sector),
            Action::Read,
            Interaction::Read,
            Outcome::Success,
        );
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
        let mut tx = self.store.begin().await?;
        let Some(p) = tx.patient(id).await? else {
            return Ok(None);
        };
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Read,
            Interaction::Read,
            Outcome::Success,
        );
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
        authorize(caller, Request::GatewayPatientSearch)?;
        let mut tx = self.store.begin().await?;
        let found = match tx.patient_by_identifier(system, value).await? {
            Some(id) => tx.patient(&id).await?,
            None => None,
        };
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Execute,
            Interaction::SearchType,
            Outcome::Success,
        );
        row.patient_id = found.as_ref().map(|p| p.id.clone());
        row.entities = found.iter().map(|p| format!("Patient/{}", p.id)).collect();
        row.query = Some(format!("Patient?identifier={system}|{value}"));
        row.detail = Some(format!(
            "search Patient by identifier: {} results",
            found.iter().count()
        ));
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(found.into_iter().collect())
    }

    /// The audit log, for auditors (and administrators); the search itself is audited.
    pub async fn audit_search(
        &self,
        caller: &Caller,
        query: &AuditQuery,
    ) -> Result<Vec<AuditRow>, GatewayError> {
        authorize(caller, Request::AuditLog)?;
        let mut tx = self.store.begin().await?;
        let rows = tx.audit_search(query).await?;
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Execute,
            Interaction::SearchType,
            Outcome::Success,
        );
        row.patient_id = query.patient_id.clone();
        row.entities = vec!["AuditEvent".into()];
        row.query = Some(query.describe());
        row.detail = Some(format!("audit search: {} events", rows.len()));
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(rows)
    }
}
