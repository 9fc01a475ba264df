//! Time-driven alert evaluation: the patients whose scheduled time has come (see
//! [`super::alerts`]) re-evaluated as if their records had changed — alerts raised, amended or
//! closed, audited and sent to the care team — in one transaction per batch.

use std::collections::BTreeSet;

use super::{Gateway, GatewayError};
use crate::fhir::time::now_us;

impl Gateway {
    /// Claims up to `limit` due patients and re-evaluates them; returns how many were claimed.
    pub async fn run_schedule(&self, limit: i64) -> Result<usize, GatewayError> {
        if self.detection.is_none() || !self.settings.alerts.enabled {
            return Ok(0);
        }
        let mut tx = self.store.begin().await?;
        let due = tx.schedule_claim(now_us(), limit).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let patients: BTreeSet<String> = due.into_iter().collect();
        let events = self.detect(&mut *tx, &patients).await?;
        tx.commit().await?;
        if !events.is_empty() {
            self.outbox_signal.notify_waiters();
        }
        self.publish(events);
        Ok(patients.len())
    }
}
