//! The outbox as IT staff see it: entries by state and target, and replaying a dead letter.
//! Administrators only ([`Request::Deliveries`]); the command line, run by the operator of the
//! machine, uses the free functions.

use super::{Gateway, GatewayError};
use crate::access::{Caller, Request, authorize};
use crate::audit::{self, Action, Actor, Interaction, Outcome};
use crate::fhir::outcome::Issue;
use crate::fhir::time::now_us;
use crate::store::{DeliveryState, OutboxEntry, OutboxFilter, Store};

/// What `deliveries resync` found and queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resync {
    /// Resources the target was sent or was to be sent (within the filters).
    pub resources: usize,
    /// Of those, queued again (the others were pending already).
    pub queued: usize,
}

/// `deliveries resync`: the current version of every resource `target` was sent (or was to
/// be sent), of one gateway patient and changed at or after `since` when given, queued again
/// with the target's copies marked unverified: the worker reads each copy before it sends, so
/// a copy that is there with the same content is left alone, a lost one is created again
/// (conditionally on the source-resource identifier) and an outdated one updated. One audit
/// row names the target, the filters and the counts.
pub async fn resync(
    store: &dyn Store,
    actor: &Actor,
    target: &str,
    patient: Option<&str>,
    since_instant: Option<&str>,
) -> crate::store::Result<Resync> {
    let mut tx = store.begin().await?;
    let candidates = tx.resync_candidates(target, patient, since_instant).await?;
    let now = now_us();
    let mut queued = 0;
    for c in &candidates {
        if tx.resync_queue(c, target, now).await? {
            queued += 1;
        }
    }
    let mut row = audit::row(
        actor,
        None,
        Action::Execute,
        Interaction::RetryDelivery,
        Outcome::Success,
    );
    row.target_sector = Some(target.to_owned());
    row.patient_id = patient.map(str::to_owned);
    row.detail = Some(format!(
        "resync of {target}{}{}: {} resources, {queued} queued again; the target's copies are read before anything is sent",
        patient.map_or(String::new(), |_| " for one patient".to_owned()),
        since_instant.map_or(String::new(), |s| format!(" changed since {s}")),
        candidates.len()
    ));
    tx.audit(&row).await?;
    tx.commit().await?;
    Ok(Resync {
        resources: candidates.len(),
        queued,
    })
}

impl Gateway {
    /// `GET /admin/deliveries?state=&target=&_count=&_offset=`: the filter as understood and
    /// the entries it selects.
    pub async fn deliveries(
        &self,
        caller: &Caller,
        params: &[(String, String)],
    ) -> Result<(OutboxFilter, Vec<OutboxEntry>), GatewayError> {
        authorize(caller, Request::Deliveries)?;
        let filter = outbox_filter(params)?;
        let entries = list_deliveries(self.store.as_ref(), &filter).await?;
        Ok((filter, entries))
    }

    /// `POST /admin/deliveries/{id}/retry`: `None` when no dead entry has that id.
    pub async fn retry_delivery(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Option<OutboxEntry>, GatewayError> {
        authorize(caller, Request::Deliveries)?;
        let id: i64 = id.parse().map_err(|_| {
            GatewayError::invalid(Issue::error("invalid", "the delivery id is a number").at("id"))
        })?;
        let e = retry_delivery(self.store.as_ref(), &caller.actor(), id).await?;
        if e.is_some() {
            self.outbox_signal.notify_waiters();
        }
        Ok(e)
    }
}

/// The outbox filter of the list's query parameters.
fn outbox_filter(params: &[(String, String)]) -> Result<OutboxFilter, GatewayError> {
    let invalid =
        |at: &str, why: String| GatewayError::invalid(Issue::error("invalid", why).at(at));
    let text = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let number = |name: &str| -> Result<Option<i64>, GatewayError> {
        match text(name) {
            None => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .map(Some)
                .map_err(|_| invalid(name, format!("{name} must be an integer"))),
        }
    };
    let state = match text("state") {
        None => None,
        Some(s) => Some(DeliveryState::parse(&s).ok_or_else(|| {
            invalid(
                "state",
                format!("state must be one of {}", DeliveryState::codes()),
            )
        })?),
    };
    Ok(OutboxFilter {
        state,
        target: text("target"),
        offset: number("_offset")?.unwrap_or(0).max(0),
        count: number("_count")?.unwrap_or(100).clamp(1, 1000),
    })
}

/// Outbox entries (`carebridge deliveries list`).
pub async fn list_deliveries(
    store: &dyn Store,
    filter: &OutboxFilter,
) -> crate::store::Result<Vec<OutboxEntry>> {
    let mut tx = store.begin_read().await?;
    tx.outbox_list(filter).await
}

/// Puts a dead-lettered entry back in its queue, with an audit row; `None` when no dead entry
/// has that id. (Running workers pick it up within `exchange.idle_poll_ms`.)
pub async fn retry_delivery(
    store: &dyn Store,
    actor: &Actor,
    id: i64,
) -> crate::store::Result<Option<OutboxEntry>> {
    let mut tx = store.begin().await?;
    let Some(e) = tx.outbox_retry(id, now_us()).await? else {
        return Ok(None);
    };
    let mut row = audit::row(
        actor,
        Some(&e.source),
        Action::Execute,
        Interaction::RetryDelivery,
        Outcome::Success,
    );
    row.target_sector = Some(e.target.clone());
    row.patient_id = e.patient_id.clone();
    row.entities = vec![format!("{}/{}", e.rtype, e.gid)];
    row.detail = Some(format!(
        "dead-lettered delivery {} (version {}) put back in the queue",
        e.id, e.version
    ));
    tx.audit(&row).await?;
    tx.commit().await?;
    Ok(Some(e))
}
