//! The gateway core: everything a request, the console, the command line or a worker can ask of
//! carebridge, each operation deciding access through [`crate::access::authorize`] first.
//!
//! - [`write`]: the write pipeline — validate, resolve ids and references, link the patient,
//!   store, route to the outbox, detect, audit — in one transaction.
//! - [`entry`]: the shape of what is written (a resource or a Bundle entry) and the response
//!   Bundle of a transaction or batch.
//! - [`read`]: the read service — reads, the gateway patient, the audit search;
//!   [`search`] searches (with [`params`], the search registry), history and vread.
//! - [`break_glass`]: emergency access to one patient, its review queue, and a patient's
//!   access report.
//! - [`relation`]: treatment relationships — the evidence a care-team member's access to a
//!   patient is decided on, blocks, private markings, refusals audited.
//! - [`alerts`]: the alert lifecycle (detection inside the accepting transaction,
//!   acknowledgement), [`alert_service`] its reads and the total plan, [`notify`] the care
//!   team's messages.
//! - [`ledger`]: walking, exporting and pruning the audit chain.
//! - [`transparency`]: signed checkpoints over the audit log's Merkle tree, proofs for auditors.
//! - [`console`]: what the care team's console shows beside alerts (patient names, owners);
//!   [`inbox`] its first page of alerts; [`history`] an alert's durable history and `$snooze`.
//! - [`admin`]: the outbox as IT staff see it.
//! - [`views`]: how stored resources are shown (per sector, across sectors).
//!
//! The HTTP API (`api`), the command line (`cli`, `demo`) and the workers (`workers`) are
//! adapters over [`Gateway`]; only it reaches the store for them.

pub mod admin;
pub mod alert_service;
pub mod alerts;
pub mod break_glass;
pub mod console;
pub mod entry;
mod error;
pub mod history;
pub mod identity;
pub mod inbox;
pub mod ledger;
pub mod notify;
pub mod operations;
pub mod params;
pub mod read;
pub mod refusals;
pub mod relation;
pub mod schedule;
pub mod search;
pub mod sector_health;
pub mod transparency;
pub mod views;
pub mod write;

pub use entry::{Applied, Entry, Method, ResponseBundle, parse_identifier_query, prepare};
pub use error::GatewayError;

use std::sync::{Arc, OnceLock};
use tokio::sync::{Notify, broadcast, watch};

use crate::config::{SectorSettings, Settings};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::terminology::Mapping;
use crate::validate::Validator;
use alerts::{AlertEvent, Detection};

/// The gateway core. Built once by [`Gateway::new`] with everything it needs; shared by the
/// HTTP API, the workers and the command line.
pub struct Gateway {
    settings: Settings,
    validator: Validator,
    store: Arc<dyn Store>,
    mapping: Arc<Mapping>,
    metrics: Arc<Metrics>,
    /// Woken after a commit that wrote outbox entries (the delivery workers wait on it).
    outbox_signal: Arc<Notify>,
    /// Fragmentation detection; `None` turns it off (the alerts stay as they are).
    detection: Option<Detection>,
    /// Alert changes, after they committed (`GET /alerts/stream`).
    alert_events: broadcast::Sender<AlertEvent>,
    /// Turns true when the server shuts down (long-lived responses such as the alert stream
    /// end then).
    shutting_down: watch::Sender<bool>,
    /// The audit log's checkpoint signing key (`[audit]`), never kept in the store.
    signer: Option<crate::audit::note::Signer>,
    /// The FHIR base of links when `server.public_base_url` is not set: the address the server
    /// listens on, set once it is bound.
    listen_base: OnceLock<String>,
    /// Refused authentications counted per client address and minute (audited as one row
    /// each when the minute is over).
    refusals: refusals::Refusals,
    /// The configuration file the application was built from (IT staff's console shows it).
    config_file: OnceLock<String>,
    /// When the core was built (microseconds since the epoch).
    started_us: i64,
}

impl Gateway {
    /// The core over `store`, validating with `validator`, mapping codes with `mapping`, and
    /// detecting fragmentation with `detection` (`None`: alerts are left as they are).
    pub fn new(
        settings: Settings,
        validator: Validator,
        store: Arc<dyn Store>,
        mapping: Arc<Mapping>,
        detection: Option<Detection>,
    ) -> Self {
        Gateway {
            settings,
            validator,
            store,
            mapping,
            metrics: Arc::new(Metrics::new()),
            outbox_signal: Arc::new(Notify::new()),
            detection,
            alert_events: broadcast::channel(1024).0,
            shutting_down: watch::channel(false).0,
            signer: None,
            listen_base: OnceLock::new(),
            refusals: refusals::Refusals::default(),
            config_file: OnceLock::new(),
            started_us: crate::fhir::time::now_us(),
        }
    }

    /// Gives the core the audit log's checkpoint signing key (before it is shared).
    pub fn set_signer(&mut self, signer: Option<crate::audit::note::Signer>) {
        self.signer = signer;
    }

    /// The checkpoint signing key, if one is configured.
    pub fn signer(&self) -> Option<&crate::audit::note::Signer> {
        self.signer.as_ref()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    /// The store, for the workers above the core and for operations tooling.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn mapping(&self) -> &Arc<Mapping> {
        &self.mapping
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Woken after a commit that queued deliveries.
    pub fn outbox_signal(&self) -> &Arc<Notify> {
        &self.outbox_signal
    }

    /// The FHIR base URL of every link, `fullUrl` and `Location`: `server.public_base_url` +
    /// `/fhir`, else the address the server listens on. Never the request's Host header.
    pub fn fhir_base(&self) -> String {
        if let Some(base) = self.settings.server.public_fhir_base() {
            return base;
        }
        match self.listen_base.get() {
            Some(b) => b.clone(),
            None => format!("http://{}/fhir", self.settings.server.listen),
        }
    }

    /// Records the address the server listens on (for links when no public URL is set).
    pub fn listening_on(&self, addr: std::net::SocketAddr) {
        let _ = self.listen_base.set(format!("http://{addr}/fhir"));
        let _ = self
            .settings
            .server
            .listening_fhir_base
            .set(format!("http://{addr}/fhir"));
    }

    pub fn sector(&self, id: &str) -> Option<&SectorSettings> {
        self.settings.sector(id)
    }

    /// True when the store answers.
    pub async fn ready(&self) -> bool {
        self.store.ping().await
    }

    /// Counts for the demo summary and operations (no patient data).
    pub async fn stats(&self) -> Result<crate::store::Stats, crate::store::StoreError> {
        self.store.stats().await
    }

    /// Turns true when the server begins to shut down.
    pub fn watch_shutdown(&self) -> watch::Receiver<bool> {
        self.shutting_down.subscribe()
    }

    /// Tells long-lived responses (the alert stream) to end.
    pub fn begin_shutdown(&self) {
        let _ = self.shutting_down.send(true);
    }

    /// Sends committed alert changes to the stream (nobody listening is fine).
    fn publish(&self, events: Vec<AlertEvent>) {
        for e in events {
            let _ = self.alert_events.send(e);
        }
    }
}

/// Runs CPU-heavy synchronous work of a request (a large Bundle's checks, its stored forms, its
/// answer) so that the runtime's workers stay free to drive the store's round trips meanwhile:
/// on the multi-threaded runtime the worker first hands its other tasks to another thread
/// ([`tokio::task::block_in_place`]; otherwise a write transaction holding SQLite's one writer
/// waits for a worker between its statements while both run another request's checks);
/// elsewhere it just runs.
pub(crate) fn cpu_bound<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
