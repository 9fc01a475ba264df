//! The gateway's Prometheus metrics: one registry per application (no process-wide state),
//! shared by the HTTP layer and the exchange. Labels carry methods, statuses, sector ids and
//! states only — never paths, ids or anything about a patient.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The target sector.
    pub target: String,
    /// delivered, retry, dead, superseded.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SectorLabels {
    pub sector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboxLabels {
    pub target: String,
    /// pending, delivered, dead, superseded.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SectorStateLabels {
    pub target: String,
    /// failing, recovered.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PullLabels {
    pub sector: String,
    /// stored, unchanged, echo, quarantined, failed.
    pub outcome: String,
}

/// Stored bodies found unreadable since the process started
/// (`carebridge_corrupt_bodies_total`): process-wide, because the store counts them wherever
/// it meets one; every registry of the process exposes it.
pub static CORRUPT_BODIES: std::sync::LazyLock<Counter> =
    std::sync::LazyLock::new(Counter::default);

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Histogram,
    pub rate_limited: Counter,
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub delivery_duration: Family<TargetLabels, Histogram>,
    pub dead_letters: Family<TargetLabels, Counter>,
    pub outbox: Family<OutboxLabels, Gauge>,
    pub pulled: Family<PullLabels, Counter>,
    pub sector_failing: Family<TargetLabels, Gauge>,
    pub sector_changes: Family<SectorStateLabels, Counter>,
    /// Write transactions run again after the database answered busy.
    pub busy_retries: Counter,
    /// Writes held for review because they would have joined two gateway patients.
    pub held_writes: Family<SectorLabels, Counter>,
    /// Times a sector joined the care of more new patients within an hour than configured.
    pub care_join_alerts: Family<SectorLabels, Counter>,
}

type TrustMetrics = (
    Counter,
    Family<SectorLabels, Counter>,
    Family<SectorLabels, Counter>,
);

/// The write pipeline's operational alerts: busy retries, held writes, care joins.
fn register_trust(registry: &mut Registry) -> TrustMetrics {
    let busy_retries = Counter::default();
    registry.register(
        "busy_retries",
        "Write transactions run again after the database rolled them back as busy (serialisation failure, deadlock, full lock table)",
        busy_retries.clone(),
    );
    let held_writes = Family::<SectorLabels, Counter>::default();
    registry.register(
        "held_writes",
        "Writes held for review because they would have joined two gateway patients, by sector",
        held_writes.clone(),
    );
    let care_join_alerts = Family::<SectorLabels, Counter>::default();
    registry.register(
        "care_join_alerts",
        "Times a sector joined the care of more new patients within an hour than exchange.max_new_patients_per_hour",
        care_join_alerts.clone(),
    );
    (busy_retries, held_writes, care_join_alerts)
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("carebridge");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method and status",
            requests.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            duration.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429 by the per-client rate limit",
            rate_limited.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Delivery attempts to sector endpoints, by target sector and outcome",
            deliveries.clone(),
        );
        let delivery_duration = Family::<TargetLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "delivery_duration_seconds",
            "Time of one delivery request to a sector endpoint",
            delivery_duration.clone(),
        );
        let dead_letters = Family::<TargetLabels, Counter>::default();
        registry.register(
            "dead_letters",
            "Outbox entries given up and dead-lettered, by target sector",
            dead_letters.clone(),
        );
        let outbox = Family::<OutboxLabels, Gauge>::default();
        registry.register(
            "outbox_entries",
            "Outbox entries by target sector and state (refreshed every few seconds)",
            outbox.clone(),
        );
        let pulled = Family::<PullLabels, Counter>::default();
        registry.register(
            "pulled_resources",
            "Resources read from pull-mode sectors, by sector and outcome",
            pulled.clone(),
        );
        let (sector_failing, sector_changes) = register_sector_health(&mut registry);
        registry.register(
            "corrupt_bodies",
            "Stored bodies that were not valid JSON when read (a damaged or altered database)",
            CORRUPT_BODIES.clone(),
        );
        let (busy_retries, held_writes, care_join_alerts) = register_trust(&mut registry);
        Metrics {
            registry,
            busy_retries,
            held_writes,
            care_join_alerts,
            requests,
            duration,
            rate_limited,
            deliveries,
            delivery_duration,
            dead_letters,
            outbox,
            pulled,
            sector_failing,
            sector_changes,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn delivery(&self, target: &str, outcome: &str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                target: target.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn pull(&self, sector: &str, outcome: &str) {
        self.pulled
            .get_or_create(&PullLabels {
                sector: sector.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// `carebridge_sector_failing` and `carebridge_sector_state_changes_total`: the endpoints'
/// states as `gateway::sector_health` records them (raised once, cleared once).
fn register_sector_health(
    registry: &mut Registry,
) -> (
    Family<TargetLabels, Gauge>,
    Family<SectorStateLabels, Counter>,
) {
    let sector_failing = Family::<TargetLabels, Gauge>::default();
    registry.register(
        "sector_failing",
        "1 while a target sector endpoint is failing (raised once, cleared once), else 0",
        sector_failing.clone(),
    );
    let sector_changes = Family::<SectorStateLabels, Counter>::default();
    registry.register(
        "sector_state_changes",
        "Target sector endpoints turning failing or recovered, by target and new state",
        sector_changes.clone(),
    );
    (sector_failing, sector_changes)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
