//! IT staff's operations on the outbox beside `admin`'s list and retry: the message browser (a
//! search of outbox metadata, never a body), replaying the dead letters of one entry or of a
//! whole sector, resending one delivered entry to a chosen target, each with a reason and an
//! audit row; and what the console says about the running gateway (version, configuration
//! file, start time). Administrators only ([`Request::Deliveries`], [`Request::Operations`]).

use super::{Gateway, GatewayError};
use crate::access::{Caller, Request, authorize};
use crate::audit::{self, Action, Interaction, Outcome};
use crate::fhir::outcome::Issue;
use crate::fhir::time::{instant, now_us};
use crate::store::{OutboxEntry, OutboxQuery, StoreTx};

/// The most entries one page of the message browser shows.
pub const MAX_PAGE: i64 = 200;
/// The longest reason an operation takes.
const MAX_REASON: usize = 500;

/// The running gateway as IT staff see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct About {
    pub version: &'static str,
    pub config_file: String,
    pub started: String,
}

fn reason_of(reason: &str) -> Result<&str, GatewayError> {
    let r = reason.trim();
    if r.is_empty() || r.chars().count() > MAX_REASON {
        return Err(GatewayError::invalid(
            Issue::error("required", "give a reason of 1 to 500 characters").at("reason"),
        ));
    }
    Ok(r)
}

/// The audit row of an operation on one entry.
async fn audit_entry(
    tx: &mut dyn StoreTx,
    caller: &Caller,
    e: &OutboxEntry,
    detail: String,
) -> crate::store::Result<()> {
    let mut row = audit::row(
        &caller.actor(),
        Some(&e.source),
        Action::Execute,
        Interaction::RetryDelivery,
        Outcome::Success,
    );
    row.target_sector = Some(e.target.clone());
    row.patient_id = e.patient_id.clone();
    row.entities = vec![format!("{}/{}", e.rtype, e.gid)];
    row.basis = Some("admin".into());
    row.detail = Some(detail);
    tx.audit(&row).await
}

impl Gateway {
    /// Records the configuration file the application was built from (once).
    pub fn set_config_file(&self, file: &str) {
        let _ = self.config_file.set(file.to_owned());
    }

    /// The version, configuration file and start time.
    pub fn about(&self, caller: &Caller) -> Result<About, GatewayError> {
        authorize(caller, Request::Operations)?;
        Ok(About {
            version: env!("CARGO_PKG_VERSION"),
            config_file: self.config_file.get().cloned().unwrap_or_default(),
            started: instant(self.started_us),
        })
    }

    /// The message browser: outbox entries by metadata, newest first (no body is read).
    pub async fn browse_outbox(
        &self,
        caller: &Caller,
        query: &OutboxQuery,
    ) -> Result<Vec<OutboxEntry>, GatewayError> {
        authorize(caller, Request::Deliveries)?;
        let mut q = query.clone();
        q.count = q.count.clamp(1, MAX_PAGE);
        let mut tx = self.store.begin_read().await?;
        Ok(tx.outbox_browse(&q).await?)
    }

    /// Puts one dead letter back in its queue, with a reason; `None` when no dead entry has
    /// that id.
    pub async fn replay_dead(
        &self,
        caller: &Caller,
        id: i64,
        reason: &str,
    ) -> Result<Option<OutboxEntry>, GatewayError> {
        authorize(caller, Request::Deliveries)?;
        let reason = reason_of(reason)?;
        let mut tx = self.store.begin().await?;
        let Some(e) = tx.outbox_retry(id, now_us()).await? else {
            return Ok(None);
        };
        let detail = format!(
            "dead-lettered delivery {} (version {}) replayed: {reason}",
            e.id, e.version
        );
        audit_entry(tx.as_mut(), caller, &e, detail).await?;
        tx.commit().await?;
        self.outbox_signal.notify_waiters();
        Ok(Some(e))
    }

    /// Puts every dead letter of `target` back in its queue, with a reason (one audit row per
    /// entry); returns how many.
    pub async fn replay_sector(
        &self,
        caller: &Caller,
        target: &str,
        reason: &str,
    ) -> Result<usize, GatewayError> {
        authorize(caller, Request::Deliveries)?;
        let reason = reason_of(reason)?;
        if self.settings.sector(target).is_none() {
            return Err(GatewayError::invalid(
                Issue::error("value", "not a configured sector").at("target"),
            ));
        }
        let mut tx = self.store.begin().await?;
        let entries = tx.outbox_requeue_dead(target, now_us()).await?;
        for e in &entries {
            let detail = format!(
                "dead-lettered delivery {} (version {}) replayed with every dead letter of {target}: {reason}",
                e.id, e.version
            );
            audit_entry(tx.as_mut(), caller, e, detail).await?;
        }
        tx.commit().await?;
        self.outbox_signal.notify_waiters();
        Ok(entries.len())
    }

    /// Sends one delivered entry again, to `target` (its own target or another sector with an
    /// endpoint), with a reason; `None` when no delivered entry has that id. Refused when the
    /// target holds a newer version of the resource.
    pub async fn resend(
        &self,
        caller: &Caller,
        id: i64,
        target: &str,
        reason: &str,
    ) -> Result<Option<OutboxEntry>, GatewayError> {
        authorize(caller, Request::Deliveries)?;
        let reason = reason_of(reason)?;
        let reachable = self
            .settings
            .sector(target)
            .is_some_and(|s| s.base_url.is_some());
        if !reachable {
            return Err(GatewayError::invalid(
                Issue::error("value", "not a configured sector with a base_url").at("target"),
            ));
        }
        let mut tx = self.store.begin().await?;
        let Some(e) = tx.outbox_get(id).await? else {
            return Ok(None);
        };
        if e.state.code() != "delivered" || e.source == target {
            return Ok(None);
        }
        if let Some(held) = tx.delivered_get(target, &e.gid).await?
            && held.version > e.version
        {
            return Err(GatewayError::Conflict(format!(
                "{target} holds a newer version ({}) of this resource",
                held.version
            )));
        }
        let queued = tx.outbox_resend(&e, target, now_us()).await?;
        let detail = format!(
            "delivered entry {} (version {}) resent to {target} as entry {}: {reason}",
            e.id, e.version, queued.id
        );
        audit_entry(tx.as_mut(), caller, &queued, detail).await?;
        tx.commit().await?;
        self.outbox_signal.notify_waiters();
        Ok(Some(queued))
    }
}
