//! The workers above the gateway core: one delivery worker per target sector ([`deliver`]:
//! lease, map, send, record; retries, dead letters) and one poller per pull-mode sector
//! ([`poll`]: durable cursors, echo suppression, quarantine), plus the outbox gauge; the audit
//! log's checkpoint signer and witness pushes ([`checkpoints`]); and the witness of another
//! log (`carebridge audit witness`, [`witness`]). They send through [`crate::outbound`] and
//! reach the store only through the core's store handle.

pub mod checkpoints;
pub mod circuit;
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

/// One value per start of this process: tells a process's earlier life from itself when a
/// restart gets the same process id (as the first process of a container does).
fn start_mark() -> &'static str {
    static MARK: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MARK.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_owned())
}

/// The instance name of leases: `exchange.instance`, else the host name.
fn instance_name(configured: Option<&str>) -> String {
    if let Some(name) = configured {
        return name.to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(64)
        .collect();
    if host.is_empty() {
        "localhost".into()
    } else {
        host
    }
}

/// A name for one set of workers in leases: `<instance>/<process id>/<start mark>/<random>`
/// (several sets may run in one process, as in tests).
pub fn replica_name(instance: Option<&str>) -> String {
    format!(
        "{}/{}/{}/{}",
        instance_name(instance),
        std::process::id(),
        start_mark(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Whether a lease owner is a process of `instance` on this host that no longer runs: another
/// process id that `alive` denies, or this process id with another start mark. Owners of other
/// instances (other hosts, other replicas) are left to their leases' expiry.
pub fn owner_is_gone(
    owner: &str,
    instance: &str,
    pid: u32,
    mark: &str,
    alive: impl Fn(u32) -> bool,
) -> bool {
    let mut parts = owner.split('/');
    let (Some(name), Some(their_pid), Some(their_mark)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(their_pid) = their_pid.parse::<u32>() else {
        return false;
    };
    if name != instance {
        return false;
    }
    if their_pid == pid {
        their_mark != mark
    } else {
        !alive(their_pid)
    }
}

/// Whether a process id runs on this host (`/proc/<pid>`); without `/proc`, every process
/// counts as running (its leases then end by expiry).
fn process_alive(pid: u32) -> bool {
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl Workers {
    /// Builds the workers without starting them.
    pub fn new(gateway: Arc<Gateway>) -> anyhow::Result<Workers> {
        let timeout = Duration::from_millis(gateway.settings().exchange.request_timeout_ms);
        let outbound = Arc::new(Outbound::new(timeout)?);
        let owner = replica_name(gateway.settings().exchange.instance.as_deref());
        let delivery = Arc::new(deliver::Delivery::new(
            gateway.clone(),
            outbound.clone(),
            owner.clone(),
        ));
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

    /// Takes back what a process of this instance held when it died (its outbox entries'
    /// leases and its pollers' leases), so that they are delivered now rather than when the
    /// leases expire; a warning says how much (counts only).
    pub async fn reclaim(&self) {
        let gw = &self.delivery.gateway;
        let instance = instance_name(gw.settings().exchange.instance.as_deref());
        let result = async {
            let mut tx = gw.store().begin().await?;
            let mut taken = (0u64, 0u64, 0usize);
            for owner in tx.lease_holders().await? {
                if owner_is_gone(
                    &owner,
                    &instance,
                    std::process::id(),
                    start_mark(),
                    process_alive,
                ) {
                    let (entries, leases) = tx.reclaim_owner(&owner).await?;
                    taken = (taken.0 + entries, taken.1 + leases, taken.2 + 1);
                }
            }
            tx.commit().await?;
            Ok::<_, crate::store::StoreError>(taken)
        }
        .await;
        match result {
            Ok((0, 0, _)) => {}
            Ok((entries, leases, processes)) => {
                gw.outbox_signal().notify_waiters();
                tracing::warn!(
                    entries,
                    leases,
                    processes,
                    instance = %instance,
                    "took back the outbox entries and poller leases of a process of this instance that is no longer running; they are delivered now"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not take back the leases of a process that is no longer running; they return when the leases expire");
            }
        }
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

/// Keeps `carebridge_outbox_entries` and `carebridge_sector_failing` current.
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
        // The endpoints' states, as whichever replica recorded them.
        let _ = crate::gateway::sector_health::refresh_gauge(&gw).await;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_processes_of_this_instance_are_taken_over() {
        let alive = |pid: u32| pid == 7;
        let gone = |owner: &str| owner_is_gone(owner, "host-a", 42, "m1", alive);
        // Another process of this instance that no longer runs.
        assert!(gone("host-a/99/m0/r1"));
        // This process id, started again (a container's first process).
        assert!(gone("host-a/42/m0/r1"));
        // This very process (another set of workers in it), a running process, another
        // instance, a name of an older release: left to expiry.
        assert!(!gone("host-a/42/m1/r2"));
        assert!(!gone("host-a/7/m0/r1"));
        assert!(!gone("host-b/99/m0/r1"));
        assert!(!gone("replica-99-abcdef12"));
        assert!(!gone("host-a/x/m0/r1"));
        let name = replica_name(Some("gw-1"));
        assert!(name.starts_with(&format!("gw-1/{}/{}/", std::process::id(), start_mark())));
        assert!(!owner_is_gone(
            &name,
            "gw-1",
            std::process::id(),
            start_mark(),
            |_| false
        ));
    }
}
