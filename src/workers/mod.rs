//! The workers above the gateway core: one delivery worker per target sector ([`deliver`]:
//! lease, map, send, record; retries, dead letters) and one poller per pull-mode sector
//! ([`poll`]: durable cursors, echo suppression, quarantine), plus the outbox gauge; the audit
//! log's checkpoint signer and witness pushes ([`checkpoints`]); and the witness of another
//! log (`carebridge audit witness`, [`witness`]). They send through [`crate::outbound`] and
//! reach the store only through the core's store handle.

pub mod checkpoints;
pub mod deliver;
pub mod poll;
pub mod schedule;
pub mod witness;

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::SectorMode;
use crate::gateway::Gateway;
use crate::outbound::Outbound;

/// The running delivery workers and pollers of one process.
pub struct Workers {
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

impl Workers {
    /// Builds the workers without starting them.
    pub fn new(gateway: Arc<Gateway>) -> anyhow::Result<Workers> {
        let timeout = Duration::from_millis(gateway.settings().exchange.request_timeout_ms);
        let outbound = Arc::new(Outbound::new(timeout)?);
        let owner = replica_name();
        let delivery = Arc::new(deliver::Delivery {
            gateway: gateway.clone(),
            outbound: outbound.clone(),
            owner: owner.clone(),
        });
        let poller = Arc::new(poll::Poller {
            gateway,
            outbound,
            owner,
        });
        let (shutdown, _) = watch::channel(false);
        Ok(Workers {
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
        for s in &gw.settings().sectors {
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

    /// Starts the time-driven alert evaluation ([`schedule`]).
    pub fn start_schedule(&mut self) {
        let gw = self.delivery.gateway.clone();
        let rx = self.shutdown.subscribe();
        self.tasks.push(tokio::spawn(schedule::run(gw, rx)));
    }

    /// Starts the audit checkpoint signer and a pusher per configured witness.
    pub fn start_audit(&mut self) {
        let gw = self.delivery.gateway.clone();
        let rx = self.shutdown.subscribe();
        self.tasks
            .push(tokio::spawn(checkpoints::run_signer(gw.clone(), rx)));
        for url in &gw.settings().audit.witnesses {
            let rx = self.shutdown.subscribe();
            self.tasks.push(tokio::spawn(checkpoints::run_witness(
                gw.clone(),
                url.clone(),
                rx,
            )));
        }
    }

    /// Stops the tasks: each finishes the request in flight (bounded by the request timeout).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let grace = Duration::from_millis(
            self.delivery
                .gateway
                .settings()
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
        if let Ok(mut tx) = gw.store().begin_read().await
            && let Ok(counts) = tx.outbox_counts().await
        {
            gw.metrics().outbox.clear();
            for (target, state, n) in counts {
                gw.metrics()
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
