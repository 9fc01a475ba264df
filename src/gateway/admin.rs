//! The outbox as IT staff see it: entries by state and target, and replaying a dead letter.
//! Administrators only ([`Request::Deliveries`]); the command line, run by the operator of the
//! machine, uses the free functions.

use super::{Gateway, GatewayError};
use crate::access::{Caller, Request, authorize};
use crate::audit::{self, Action, Actor, Interaction, Outcome};
use crate::fhir::outcome::Issue;
use crate::fhir::time::now_us;
use crate::store::{DeliveryState, OutboxEntry, OutboxFilter, Store};

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
