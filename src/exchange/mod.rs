//! Exchange: what one sector records reaches the others, in their own profiles, codes and
//! identifiers, and nothing is lost on the way.
//!
//! - [`route`]: which accepted versions go where; writes the outbox in the accepting
//!   transaction.
//! - [`resolve`]: what a reference points at across sectors.
//! - [`codes`]: target profiles and code translation through the ConceptMaps in
//!   `fhir-profiles/`.
//! - [`map`]: one version mapped for one target (profile, codes, references, identifier).
//! - [`deliver`]: the delivery workers (one queue per target sector), retries, dead letters.
//! - [`poll`]: pull-mode pollers with durable cursors and echo suppression.
//! - [`outbound`]: the HTTP client and each sector's credentials.
//! - [`probe`]: `check-config`'s look at each sector's `/metadata`.

pub mod codes;
pub mod deliver;
pub mod map;
pub mod outbound;
pub mod poll;
pub mod probe;
pub mod resolve;
pub mod route;

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::SectorMode;
use crate::ingest::Gateway;

/// The identifier system of the business identifier the gateway gives every copy it delivers:
/// `<sector>/<Type>/<id>` of the source resource.
pub const SOURCE_ID_SYSTEM: &str =
    "http://carebridge.example.org/fhir/NamingSystem/source-resource";

/// The running delivery workers and pollers of one process.
pub struct Exchange {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub delivery: Arc<deliver::Delivery>,
    pub poller: Arc<poll::Poller>,
}

/// A name for this process in leases: unique per start.
pub fn replica_name() -> String {
    format!(
        "replica-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

impl Exchange {
    /// Builds the workers without starting them.
    pub fn new(gateway: Arc<Gateway>, mapping: Arc<codes::Mapping>) -> anyhow::Result<Exchange> {
        let timeout = Duration::from_millis(gateway.settings.exchange.request_timeout_ms);
        let outbound = Arc::new(outbound::Outbound::new(timeout)?);
        let owner = replica_name();
        let delivery = Arc::new(deliver::Delivery {
            gateway: gateway.clone(),
            mapping,
            outbound: outbound.clone(),
            owner: owner.clone(),
        });
        let poller = Arc::new(poll::Poller {
            gateway,
            outbound,
            owner,
        });
        let (shutdown, _) = watch::channel(false);
        Ok(Exchange {
            shutdown,
            tasks: Vec::new(),
            delivery,
            poller,
        })
    }

    /// Starts a delivery worker per sector with a base URL, a poller per pull-mode sector and
    /// the outbox gauge refresher.
    pub fn start(&mut self) {
        let gw = self.delivery.gateway.clone();
        for s in &gw.settings.sectors {
            if s.base_url.is_some() {
                let d = self.delivery.clone();
                let rx = self.shutdown.subscribe();
                self.tasks.push(tokio::spawn(d.run(s.id.clone(), rx)));
            }
            if matches!(s.mode, SectorMode::Pull | SectorMode::Both) {
                let p = self.poller.clone();
                let rx = self.shutdown.subscribe();
                self.tasks.push(tokio::spawn(p.run(s.id.clone(), rx)));
            }
        }
        let rx = self.shutdown.subscribe();
        self.tasks.push(tokio::spawn(refresh_gauges(gw, rx)));
    }

    /// Stops the tasks: each finishes the request in flight (bounded by the request timeout).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let grace = Duration::from_millis(
            self.delivery
                .gateway
                .settings
                .exchange
                .request_timeout_ms
                .saturating_add(1_000),
        );
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(grace, t).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// Keeps `carebridge_outbox_entries` current.
async fn refresh_gauges(gw: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        if let Ok(mut tx) = gw.store.begin_read().await
            && let Ok(counts) = tx.outbox_counts().await
        {
            gw.metrics.outbox.clear();
            for (target, state, n) in counts {
                gw.metrics
                    .outbox
                    .get_or_create(&crate::metrics::OutboxLabels { target, state })
                    .set(n);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Outbox entries for IT staff (`GET /admin/deliveries`, `carebridge deliveries list`).
pub async fn list_deliveries(
    store: &dyn crate::store::Store,
    filter: &crate::store::OutboxFilter,
) -> crate::store::Result<Vec<crate::store::OutboxEntry>> {
    let mut tx = store.begin_read().await?;
    tx.outbox_list(filter).await
}

/// Puts a dead-lettered entry back in its queue, with an audit row; `None` when no dead entry
/// has that id. (Running workers pick it up within `exchange.idle_poll_ms`.)
pub async fn retry_delivery(
    store: &dyn crate::store::Store,
    actor: &crate::audit::Actor,
    id: i64,
) -> crate::store::Result<Option<crate::store::OutboxEntry>> {
    let mut tx = store.begin().await?;
    let Some(e) = tx.outbox_retry(id, crate::audit::now_us()).await? else {
        return Ok(None);
    };
    let mut row = crate::audit::row(
        actor,
        Some(&e.source),
        "E",
        "retry-delivery",
        crate::audit::outcome::SUCCESS,
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
