//! Delivery workers: one per target sector (a sector that is down never slows the others).
//!
//! A worker leases a batch of due entries of its target (oldest first; an entry waits while an
//! older entry of the same resource is pending, so version n+1 never overtakes version n),
//! then for each entry: maps the stored version for the target, sends it (update of the known
//! target id with `If-Match` on the version the gateway wrote, else conditional create with
//! `If-None-Exist` on the source-resource identifier, in a transaction Bundle when it carries
//! conditional references), and records the outcome with its audit row.
//!
//! The batch is pipelined: while entry i's request is in flight, the outcomes of the entries
//! before it are recorded in one write transaction (each with its own audit row and its lease
//! checked; the endpoint's health written once) and entry i + 1 is read and mapped in a read
//! transaction. An outcome waits 100 ms for the next ones to share its transaction, and the
//! group ends with the first answer after that — just as the next request leaves, so that the
//! transaction runs beside that request instead of where its answer comes back — or at 250 ms
//! (up to 32; at once when the sending side waits for it or the batch ends), so that the
//! transaction, the audit chain's append, the health write and (on PostgreSQL) the accepted
//! deliveries' rows (`deliveries_finish`) are one each per several requests. The statements
//! beside a request start only after the tasks ready to run have run (`after_the_request_left`):
//! the request is on the wire before a database backend is woken;
//! when the batch runs out, the next one is claimed beside its last request. Requests stay
//! one at a time per target, in order. An entry of the same resource
//! as the one in flight, or whose stored body may name it (`Names`: its mapping could depend
//! on that outcome), is mapped only after that outcome is recorded. Nothing is recorded before
//! the target answered; a crash loses at most the records of answers (the entries are sent
//! again, idempotently, as after a crash during a request).
//!
//! The HTTP request never runs inside a database transaction; the lease (`exchange.lease_secs`,
//! renewed while the batch runs) keeps other replicas off the entry meanwhile, and ends soon
//! after a process dies (at once when the process of the same instance starts again:
//! [`super::Workers::reclaim`]).
//!
//! An update answered 412 (the target's copy is not the version the gateway last wrote: an
//! update whose answer was lost in a crash, or an edit at the target) and a copy a resync
//! marked unverified are read back first: equal content is recorded without sending (no second
//! version at the target), a copy that is gone is created again, another one is updated.
//!
//! Failures: timeouts, connection errors, 408, 429 and 5xx are retryable: they open the
//! target's circuit ([`super::circuit`]): the queue pauses for a back-off (doubling with
//! jitter up to `exchange.retry_max_ms`), then one entry probes the sector while the others
//! wait without attempts. A retryable failure is retried until the entry is older than
//! `exchange.max_age_secs` (7 days by default; `exchange.max_attempts` can add a bound by
//! count); other 4xx are permanent and dead-lettered at once: a metric, a warning in the log,
//! an audit row, and `GET /admin/deliveries?state=dead`.

use rand::RngExt;
use reqwest::header::{self, HeaderMap};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

use super::circuit::{Change, Circuit};

use crate::audit::{self, Action, Actor, AuditRow, Interaction, Outcome};
use crate::config::{ExchangeSettings, OutboundAuth, SectorSettings};
use crate::exchange::map::{Mapped, Mapper};
use crate::fhir::FHIR_JSON;
use crate::gateway::Gateway;
use crate::gateway::sector_health;
use crate::ids::content_hash;
use crate::metrics::TargetLabels;
use crate::outbound::{Outbound, kind};
use crate::store::{
    Delivered, DeliveredOutcome, Finish, OutboxEntry, StoreError, StoreTx, UNVERIFIED,
};

/// What one attempt came to.
#[derive(Debug)]
enum Attempt {
    Sent(Sent),
    /// The mapped content equals what the target already holds.
    Unchanged {
        delivered: Delivered,
    },
    Superseded,
    Deferred,
    Failed(Failure),
}

/// A copy the target accepted.
#[derive(Debug)]
struct Sent {
    accepted: Accepted,
    /// The hash of the mapped content (as the target holds it, without the id).
    hash: String,
    mapped: Box<Mapped>,
    /// The target held a copy already (it was updated, or created again after a 404 or 410).
    update: bool,
}

/// What the target holds after a request it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Accepted {
    status: u16,
    target_id: String,
    target_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: Option<u16>,
    pub error: String,
    pub retryable: bool,
    pub retry_after: Option<Duration>,
}

impl Failure {
    fn permanent(status: Option<u16>, error: impl Into<String>) -> Self {
        Failure {
            status,
            error: error.into(),
            retryable: false,
            retry_after: None,
        }
    }
    fn retryable(status: Option<u16>, error: impl Into<String>) -> Self {
        Failure {
            status,
            error: error.into(),
            retryable: true,
            retry_after: None,
        }
    }
}

pub struct Delivery {
    pub gateway: Arc<Gateway>,
    pub outbound: Arc<Outbound>,
    /// This replica's name in leases.
    pub owner: String,
    /// Each target's circuit.
    circuits: Mutex<HashMap<String, Circuit>>,
}

/// What reading the target's copy showed.
#[derive(Debug)]
enum TargetCopy {
    /// It holds what the gateway would send, at this version.
    Same(Option<String>),
    /// It holds something else, at this version.
    Differs(Option<String>),
    /// It holds nothing (404 or 410).
    Gone,
}

/// An entry read and mapped for its target, or the end of its attempt.
enum Prepared {
    /// Nothing to send: superseded, unchanged, deferred, or a failure before any request.
    Done(Attempt),
    /// Its mapping may depend on an outcome not recorded yet: prepared again after it is.
    Wait,
    Ready(Box<Ready>),
}

/// What the requests of one entry need, read and mapped before they are sent.
struct Ready {
    target: SectorSettings,
    /// The target's copy as recorded.
    known: Option<Delivered>,
    mapped: Mapped,
    /// The hash of the mapped content (as the target will hold it, without the id).
    hash: String,
    /// How another entry's stored body can name this entry's resource.
    names: Names,
    /// The first request, built beside the request before it (none when a resync reads the
    /// target's copy first, or the target has no base URL).
    request: Option<Request>,
}

/// Nothing to send when the mapping defers the entry or the target's copy already holds this
/// content (the attempt's end); else the hash of the content to send, and that content as text.
fn to_send(known: Option<&Delivered>, mapped: &Mapped) -> Result<(String, String), Box<Attempt>> {
    if mapped.deferred {
        return Err(Box::new(Attempt::Deferred));
    }
    // The hash covers the content as the target will hold it, without the id.
    let text = mapped.body.to_string();
    let hash = content_hash(text.as_bytes());
    match known.filter(|d| d.hash == hash) {
        Some(d) => Err(Box::new(Attempt::Unchanged {
            delivered: d.clone(),
        })),
        None => Ok((hash, text)),
    }
}

/// The ways a stored body can name an entry's resource: its gateway id (what the gateway
/// authors), `Type/id` (a relative reference, an absolute URL, the source-resource identifier
/// `<sector>/Type/id`) and its identifier values (logical and conditional references).
#[derive(Debug, Clone, Default, PartialEq)]
struct Names {
    gid: String,
    needles: Vec<String>,
}

impl Names {
    fn of(e: &OutboxEntry, rid: &str, body: &Value) -> Names {
        let mut needles = vec![e.gid.clone()];
        if !rid.is_empty() {
            needles.push(format!("{}/{rid}", e.rtype));
        }
        for (_, value) in crate::fhir::identifiers(body) {
            // As the value appears inside a JSON string of the stored text.
            let quoted = Value::String(value.to_owned()).to_string();
            let inner = &quoted[1..quoted.len() - 1];
            if !inner.is_empty() && !needles.iter().any(|n| n == inner) {
                needles.push(inner.to_owned());
            }
        }
        Names {
            gid: e.gid.clone(),
            needles,
        }
    }

    /// Whether the entry of resource `gid` with the stored body `body` may depend on this
    /// entry's outcome: the same resource, or a body that may name this one. A textual test
    /// that errs one way only: a false match makes an entry wait for an outcome it does not
    /// need, never the other way round.
    fn named_by(&self, gid: &str, body: &str) -> bool {
        gid == self.gid || self.needles.iter().any(|n| mentions(body, n))
    }
}

/// Whether `needle` occurs in `text` not followed by a character that could continue an id
/// (`Condition/c1` is not named by `Condition/c10`).
fn mentions(text: &str, needle: &str) -> bool {
    text.match_indices(needle).any(|(i, _)| {
        !text[i + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    })
}

/// An attempt that ended (answered, or nothing to send) and is not recorded yet.
#[derive(Debug)]
struct Answered {
    entry: OutboxEntry,
    attempt: Attempt,
    /// From the start of its preparation to its end.
    took: Duration,
}

/// The sending side of a batch in the pipeline.
struct Sending {
    /// Entries not prepared yet, in order.
    queue: VecDeque<OutboxEntry>,
    /// When the queue runs out, the next batch is claimed beside the last request (the worker
    /// loop; `Delivery::step` takes one batch).
    refill: bool,
    /// The next entry, prepared while the one before it was in flight (and when it started).
    next: Option<(OutboxEntry, Prepared, Instant)>,
    /// Attempts handed to the recorder so far.
    handed: usize,
    /// How the resources of attempts handed over and perhaps not recorded yet are named, by
    /// their number in the hand-over order.
    unrecorded: VecDeque<(usize, Names)>,
    answers: mpsc::UnboundedSender<Answered>,
    /// How many attempts the sending side waits to see recorded: the recorder records what it
    /// gathered at once instead of waiting for more.
    wanted: watch::Sender<usize>,
}

impl Sending {
    /// Hands an attempt that ended to the recorder.
    fn hand(&mut self, entry: OutboxEntry, attempt: Attempt, took: Duration, names: Option<Names>) {
        self.handed += 1;
        if let Some(n) = names {
            self.unrecorded.push_back((self.handed, n));
        }
        let id = entry.id;
        let answered = Answered {
            entry,
            attempt,
            took,
        };
        if self.answers.send(answered).is_err() {
            // The recorder ends only after this side does; should it be gone, the entry keeps
            // its lease and is sent again when the lease ends, as after a crash.
            tracing::warn!(
                entry = id,
                "a delivery outcome could not be handed over for recording"
            );
        }
    }

    /// Waits until every attempt handed over is recorded (or given up on), or the recorder
    /// stopped the batch.
    async fn wait_recorded(&self, progress: &mut watch::Receiver<Progress>) -> Progress {
        let n = self.handed;
        self.wanted.send_replace(n);
        match progress.wait_for(|p| p.recorded >= n || p.stop).await {
            Ok(p) => p.clone(),
            Err(_) => Progress {
                stop: true,
                ..Progress::default()
            },
        }
    }

    /// Forgets the names of the first `recorded` attempts: their outcomes are recorded.
    fn prune(&mut self, recorded: usize) {
        while self.unrecorded.front().is_some_and(|(k, _)| *k <= recorded) {
            self.unrecorded.pop_front();
        }
    }

    /// The names of the resources whose outcomes are not recorded yet, and of the one in flight.
    fn names(&self, in_flight: Option<&Names>) -> Vec<Names> {
        self.unrecorded
            .iter()
            .map(|(_, n)| n.clone())
            .chain(in_flight.cloned())
            .collect()
    }
}

/// How far the recorder has come, as the sending side sees it.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// Attempts recorded (or given up on), in the hand-over order.
    recorded: usize,
    /// The batch stops: a retryable failure to retry later, a lease lost, the store failing.
    stop: bool,
    /// Until when the queue pauses.
    pause: Option<Instant>,
}

/// The recorder's side of the pipeline: the attempts handed over, and how many of them the
/// sending side waits for.
struct Received {
    answers: mpsc::UnboundedReceiver<Answered>,
    wanted: watch::Receiver<usize>,
}

/// At most this many outcomes in one recording transaction.
const GROUP_MAX: usize = 32;
/// An outcome waits this long for others to be recorded with it (unless the sending side waits
/// for it, or the batch ended): one transaction, one audit-chain append and one health write for
/// the answers of several requests. Against a peer that takes 10 ms a request that is about ten
/// answers a transaction; with 20 ms it was two, and the recording's CPU on the gateway's side
/// (its own and its database's, which runs beside the requests in flight) was a third more per
/// delivery (P4, issue 17's ninth round). After it the group ends with the next answer handed
/// over — the moment the next request has just left, so that the transaction runs while that
/// request is in flight instead of where its answer comes back — or at [`GROUP_LATEST`].
const GROUP_WITHIN: Duration = Duration::from_millis(100);
/// An outcome waits at most this long for its record (when no answer follows within it: a slow
/// target). A crash loses at most the records of this long's answers, whose entries are sent
/// again, idempotently.
const GROUP_LATEST: Duration = Duration::from_millis(250);

impl Received {
    /// The next group of outcomes to record in one transaction: those handed over within
    /// [`GROUP_WITHIN`] of the first and the first one after it (at most [`GROUP_MAX`]; ended at
    /// [`GROUP_LATEST`] when none comes), ended early when the sending side waits for a record
    /// or is done. `None` when the sending side is done and all was taken.
    async fn group(&mut self, recorded: usize) -> Option<Vec<Answered>> {
        let first = self.answers.recv().await?;
        let mut group = vec![first];
        let start = tokio::time::Instant::now();
        let latest = start + GROUP_LATEST;
        loop {
            while group.len() < GROUP_MAX {
                match self.answers.try_recv() {
                    Ok(a) => group.push(a),
                    Err(_) => break,
                }
            }
            if group.len() >= GROUP_MAX || *self.wanted.borrow_and_update() > recorded {
                return Some(group);
            }
            tokio::select! {
                a = self.answers.recv() => match a {
                    Some(a) => {
                        group.push(a);
                        if start.elapsed() >= GROUP_WITHIN {
                            return Some(group);
                        }
                    }
                    None => return Some(group),
                },
                changed = self.wanted.changed() => if changed.is_err() {
                    return Some(group);
                },
                () = tokio::time::sleep_until(latest) => return Some(group),
            }
        }
    }
}

/// Lets the tasks that are ready run first — among them the connection task that a request
/// just handed to it wakes, which writes that request — before the caller starts the
/// statements it runs beside the request. A statement wakes a database backend (PostgreSQL's
/// is another process), which the scheduler lets run ahead of this process on a shared core:
/// started first, its work delayed the request by that long on the critical path instead of
/// overlapping it (P4 PostgreSQL, issue 17's eighteenth round: 0.39 ms a delivery more than the
/// direct client beyond the peer's time, 0.10 after). `yield_now` puts the task behind every
/// task that is ready; the second turn covers a connection task that needs one more wake-up.
async fn after_the_request_left() {
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
}

/// What recording a run of outcomes came to.
#[derive(Debug, Default)]
struct Recorded {
    /// The queue pauses this long (a retryable failure to be retried).
    pause: Option<Duration>,
    /// An entry's lease was lost before its outcome was recorded.
    lease_lost: bool,
}

/// One recorded outcome, for after the commit.
struct Step {
    outcome: &'static str,
    pause: Option<Duration>,
    health: Option<sector_health::Change>,
}

/// The delay before retry `attempt` (1-based): doubling from `initial`, at most `max`, with
/// jitter (50–100 % of the step), never below the server's `Retry-After`.
pub fn backoff(
    initial_ms: u64,
    max_ms: u64,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let step = initial_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(30))
        .min(max_ms);
    let jitter: f64 = rand::rng().random_range(0.5..=1.0);
    let d = Duration::from_millis((step as f64 * jitter) as u64);
    match retry_after {
        Some(r) => d.max(r),
        None => d,
    }
}

fn us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Delivery {
    pub fn new(gateway: Arc<Gateway>, outbound: Arc<Outbound>, owner: String) -> Delivery {
        Delivery {
            gateway,
            outbound,
            owner,
            circuits: Mutex::new(HashMap::new()),
        }
    }

    /// The circuit of `target` as it stands.
    pub fn circuit(&self, target: &str) -> Circuit {
        self.circuits
            .lock()
            .map(|c| c.get(target).copied().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Records whether `target` answered (`reached`) or failed in a retryable way; the log
    /// says when its circuit opens and closes (the sector, never a resource).
    fn sector_outcome(&self, target: &str, reached: bool) {
        let Ok(mut circuits) = self.circuits.lock() else {
            return;
        };
        let circuit = circuits.entry(target.to_owned()).or_default();
        let failures = circuit.failures();
        let change = if reached {
            circuit.answered()
        } else {
            circuit.failed()
        };
        drop(circuits);
        match change {
            Change::Opened => tracing::warn!(
                target_sector = %target,
                "sector unreachable: its deliveries wait, one entry probes it after each back-off"
            ),
            Change::Closed => tracing::warn!(
                target_sector = %target,
                failures,
                "sector reachable again: its deliveries resume"
            ),
            Change::Same => {}
        }
    }

    /// How long a claim holds an entry before it is renewed.
    fn lease(&self) -> Duration {
        Duration::from_secs(self.gateway.settings().exchange.lease_secs)
    }

    /// Runs the worker of one target until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, target: String, mut shutdown: watch::Receiver<bool>) {
        let x = self.gateway.settings().exchange.clone();
        let idle = Duration::from_millis(x.idle_poll_ms);
        let mut paused_until: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if let Some(until) = paused_until.take() {
                tokio::select! {
                    () = tokio::time::sleep_until(until.into()) => {}
                    _ = shutdown.changed() => continue,
                }
            }
            let signal = self.gateway.outbox_signal().clone();
            let notified = signal.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.claim(&target).await {
                Ok(batch) if batch.is_empty() => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep(idle) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Ok(batch) => {
                    paused_until = self.process_batch(&target, batch, &shutdown, true).await;
                }
                Err(e) => {
                    tracing::warn!(target_sector = %target, error = %e, "could not claim outbox entries");
                    tokio::select! {
                        () = tokio::time::sleep(idle) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    /// Claims and processes one batch of `target` now; returns how many entries were taken.
    /// (The worker loop does the same; tests and tools use this to step delivery.)
    pub async fn step(self: &Arc<Self>, target: &str) -> Result<usize, StoreError> {
        let batch = self.claim(target).await?;
        let n = batch.len();
        let (_tx, rx) = watch::channel(false);
        self.process_batch(target, batch, &rx, false).await;
        Ok(n)
    }

    /// Leases a batch of due entries (one, the probe, while the target's circuit is open) for
    /// `exchange.lease_secs`.
    async fn claim(&self, target: &str) -> Result<Vec<OutboxEntry>, StoreError> {
        let x = &self.gateway.settings().exchange;
        let now = crate::fhir::time::now_us();
        let limit = self.circuit(target).batch(x.batch);
        let mut tx = self.gateway.store().begin().await?;
        let batch = tx
            .outbox_claim(
                target,
                &self.owner,
                now,
                now.saturating_add(us(self.lease())),
                i64::from(limit),
            )
            .await?;
        tx.commit().await?;
        Ok(batch)
    }

    /// Processes a claimed batch, renewing its leases every third of the lease meanwhile. The
    /// two run side by side: a renewal waiting for the batch's open transaction (its lock, or
    /// SQLite's one writer) never holds the batch up.
    async fn process_batch(
        self: &Arc<Self>,
        target: &str,
        batch: Vec<OutboxEntry>,
        shutdown: &watch::Receiver<bool>,
        refill: bool,
    ) -> Option<Instant> {
        let every = self.lease() / 3;
        let renewals = async {
            loop {
                tokio::time::sleep(every).await;
                self.renew(target).await;
            }
        };
        tokio::select! {
            pause = self.process_entries(target, batch, shutdown, refill) => pause,
            () = renewals => None,
        }
    }

    /// Extends the leases of this worker's entries of `target`.
    async fn renew(&self, target: &str) {
        let until = crate::fhir::time::now_us().saturating_add(us(self.lease()));
        let result = async {
            let mut tx = self.gateway.store().begin().await?;
            tx.outbox_renew(target, &self.owner, until).await?;
            tx.commit().await
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(target_sector = %target, error = %err, "could not renew the leases of a batch; another replica may take its entries over");
        }
    }

    /// Processes a claimed batch in order, pipelined (see the module's documentation): the
    /// requests one at a time, each beside the mapping of the entry after it, while the
    /// outcomes are recorded as they come (those that came meanwhile in one transaction).
    /// Returns when the queue should pause (a retryable failure): the rest of the batch is
    /// given back.
    async fn process_entries(
        self: &Arc<Self>,
        target: &str,
        batch: Vec<OutboxEntry>,
        shutdown: &watch::Receiver<bool>,
        refill: bool,
    ) -> Option<Instant> {
        let (answers, received) = mpsc::unbounded_channel();
        let (wanted, wanted_rx) = watch::channel(0);
        let received = Received {
            answers: received,
            wanted: wanted_rx,
        };
        let (progress, watched) = watch::channel(Progress::default());
        // The recorder is a task of its own: its transactions run on another worker while a
        // request is in flight, and an answer that arrives meanwhile is read at once instead of
        // after the recorder's next step. It ends when the sender (and with it `answers`) does.
        let recording = tokio::spawn({
            let (me, target) = (self.clone(), target.to_owned());
            async move { me.record_entries(&target, received, progress).await }
        });
        let (rest, stopped) = self
            .send_entries(
                target,
                (batch, refill),
                (answers, wanted),
                watched,
                shutdown,
            )
            .await;
        let recorded = recording.await.unwrap_or_else(|err| {
            tracing::warn!(target_sector = %target, error = %err, "the delivery recorder stopped; the batch's unrecorded entries return when their lease ends");
            Progress {
                pause: Some(self.idle_until()),
                stop: true,
                ..Progress::default()
            }
        });
        if !rest.is_empty()
            && let Err(err) = self.release(&rest).await
        {
            tracing::warn!(target_sector = %target, error = %err, "could not release leased entries; they return when the lease ends");
        }
        recorded.pause.or(stopped)
    }

    /// Sends a batch's entries in order, each beside the preparation of the next, and hands
    /// every attempt that ended to the recorder. Returns the entries not attempted and, when a
    /// read failed, when to resume.
    async fn send_entries(
        &self,
        target: &str,
        (batch, refill): (Vec<OutboxEntry>, bool),
        (answers, wanted): (mpsc::UnboundedSender<Answered>, watch::Sender<usize>),
        mut progress: watch::Receiver<Progress>,
        shutdown: &watch::Receiver<bool>,
    ) -> (Vec<OutboxEntry>, Option<Instant>) {
        let mut s = Sending {
            queue: batch.into(),
            refill,
            next: None,
            handed: 0,
            unrecorded: VecDeque::new(),
            answers,
            wanted,
        };
        let stopped = loop {
            if progress.borrow().stop || *shutdown.borrow() {
                break None;
            }
            let (e, prepared, started) = match s.next.take() {
                Some(next) => next,
                None => match self.prepare_now(&mut s, &mut progress).await {
                    Ok(Some(next)) => next,
                    Ok(None) => break None,
                    Err(err) => break Some(self.read_failed(target, &err)),
                },
            };
            match prepared {
                Prepared::Ready(ready) => {
                    let sent = self.send_beside(&mut s, (e, *ready, started), &mut progress);
                    if let Err(err) = sent.await {
                        break Some(self.read_failed(target, &err));
                    }
                }
                Prepared::Done(attempt) => {
                    // A failure before any request changes what later mappings find (the entry
                    // is no longer pending): they wait for its record.
                    let failed = matches!(attempt, Attempt::Failed(_));
                    let took = started.elapsed();
                    s.hand(e, attempt, took, None);
                    if failed {
                        s.wait_recorded(&mut progress).await;
                    }
                }
                Prepared::Wait => s.queue.push_front(e),
            }
        };
        let mut rest: Vec<OutboxEntry> = s.next.take().map(|n| n.0).into_iter().collect();
        rest.extend(s.queue);
        (rest, stopped)
    }

    /// The next entry of the queue prepared now: beside the outcomes not recorded yet, unless
    /// its mapping may depend on one of them; then once they are recorded. `None` when the
    /// queue is empty or the batch stops.
    async fn prepare_now(
        &self,
        s: &mut Sending,
        progress: &mut watch::Receiver<Progress>,
    ) -> Result<Option<(OutboxEntry, Prepared, Instant)>, StoreError> {
        let Some(e) = s.queue.pop_front() else {
            return Ok(None);
        };
        s.prune(progress.borrow().recorded);
        let started = Instant::now();
        let prepared = match self.prepare(&e, &s.names(None)).await {
            Ok(Prepared::Wait) => {
                if s.wait_recorded(progress).await.stop {
                    s.queue.push_front(e);
                    return Ok(None);
                }
                self.prepare(&e, &[]).await
            }
            other => other,
        };
        match prepared {
            Ok(p) => Ok(Some((e, p, started))),
            Err(err) => {
                s.queue.push_front(e);
                Err(err)
            }
        }
    }

    /// Sends `e` while the entry after it is prepared (beside `e` in flight and the outcomes
    /// not recorded yet; when the queue ran out, the next batch is claimed first), and hands
    /// `e`'s attempt to the recorder. A retryable failure waits for its record: whether the
    /// queue pauses depends on it.
    async fn send_beside(
        &self,
        s: &mut Sending,
        (e, ready, started): (OutboxEntry, Ready, Instant),
        progress: &mut watch::Receiver<Progress>,
    ) -> Result<(), StoreError> {
        s.prune(progress.borrow().recorded);
        let names = s.names(Some(&ready.names));
        let own = ready.names.clone();
        let following = s.queue.pop_front();
        let claim = following.is_none() && s.refill;
        let preparing = async {
            after_the_request_left().await;
            let mut more = VecDeque::new();
            let following = match following {
                None if claim => match self.claim(&e.target).await {
                    Ok(batch) => {
                        more = VecDeque::from(batch);
                        more.pop_front()
                    }
                    Err(err) => {
                        tracing::warn!(target_sector = %e.target, error = %err, "could not claim outbox entries");
                        None
                    }
                },
                other => other,
            };
            let prepared = match &following {
                Some(n) => Some((Instant::now(), self.prepare(n, &names).await)),
                None => None,
            };
            (following, more, prepared)
        };
        let (attempt, (following, more, prepared)) =
            tokio::join!(self.send_ready(&e, ready), preparing);
        s.queue.extend(more);
        let retryable = matches!(&attempt, Attempt::Failed(f) if f.retryable);
        s.hand(e, attempt, started.elapsed(), Some(own));
        let mut result = Ok(());
        match (following, prepared) {
            (Some(n), Some((at, Ok(p)))) if !matches!(p, Prepared::Wait) => {
                s.next = Some((n, p, at));
            }
            (Some(n), Some((_, Err(err)))) => {
                s.queue.push_front(n);
                result = Err(err);
            }
            (Some(n), _) => s.queue.push_front(n),
            (None, _) => {}
        }
        if retryable {
            s.wait_recorded(progress).await;
        }
        result
    }

    /// Records the attempts handed over in groups ([`Received::group`]), each in one
    /// transaction ([`Self::record`]), until the sending side is done. Returns the progress at
    /// the end (whether, and until when, the queue pauses).
    async fn record_entries(
        &self,
        target: &str,
        mut received: Received,
        progress: watch::Sender<Progress>,
    ) -> Progress {
        let mut recorded = 0;
        while let Some(group) = received.group(recorded).await {
            let n = group.len();
            recorded += n;
            // The group ended as the next request was handed to its connection.
            after_the_request_left().await;
            let result = self.record(group).await;
            let idle = self.idle_until();
            progress.send_modify(|p| {
                p.recorded += n;
                match result {
                    Ok(r) => {
                        if let Some(wait) = r.pause {
                            p.pause = p.pause.or(Some(Instant::now() + wait));
                            p.stop = true;
                        }
                        if r.lease_lost {
                            p.pause = p.pause.or(Some(idle));
                            p.stop = true;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(target_sector = %target, error = %err, "could not record a delivery outcome");
                        p.pause = p.pause.or(Some(idle));
                        p.stop = true;
                    }
                }
            });
        }
        progress.borrow().clone()
    }

    /// A read before a request failed: the batch stops, and the queue waits as long as an idle
    /// worker does.
    fn read_failed(&self, target: &str, err: &StoreError) -> Instant {
        tracing::warn!(target_sector = %target, error = %err, "could not read an entry to deliver");
        self.idle_until()
    }

    /// As long from now as an idle worker waits.
    fn idle_until(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.gateway.settings().exchange.idle_poll_ms)
    }

    async fn release(&self, entries: &[OutboxEntry]) -> Result<(), StoreError> {
        let mut tx = self.gateway.store().begin().await?;
        for e in entries {
            tx.outbox_release(e.id, &self.owner).await?;
        }
        tx.commit().await
    }

    /// Records the outcomes of consecutive attempts in one transaction, in order, each with its
    /// audit row (a deferral leaves none) and the endpoint's health observed; then, after the
    /// commit, the health changes announced, the metrics and the circuit. An entry whose lease
    /// was lost is left out: its outcome is not recorded (the replica that holds it now sends
    /// it again, idempotently).
    async fn record(&self, done: Vec<Answered>) -> Result<Recorded, StoreError> {
        let mut out = Recorded::default();
        let Some(target) = done.first().map(|a| a.entry.target.clone()) else {
            return Ok(out);
        };
        // The target's consecutive failures as each outcome finds them (an answer resets them).
        let mut failures = self.circuit(&target).failures();
        let mut after = Vec::with_capacity(done.len());
        let mut tx = self.gateway.store().begin().await?;
        // The accepted deliveries' entries and what the target holds, all at once; an entry
        // whose lease was lost is left out of it, and of what follows.
        let lost = tx
            .deliveries_finish(
                &self.owner,
                &delivered_outcomes(&done),
                crate::fhir::time::now_us(),
            )
            .await?;
        let mut health = sector_health::Observer::new(&self.gateway);
        for a in done {
            let reached = reached(&a.attempt);
            let id = a.entry.id;
            let recorded = if lost.contains(&id) {
                Err(StoreError::LeaseLost(id))
            } else {
                self.record_one(tx.as_mut(), &mut health, a, failures).await
            };
            match recorded {
                Ok(step) => {
                    out.pause = out.pause.or(step.as_ref().and_then(|s| s.pause));
                    after.push((step, reached));
                }
                Err(StoreError::LeaseLost(_)) => {
                    tracing::warn!(target_sector = %target, entry = id, "lease lost before the outcome was recorded; another replica delivers the entry");
                    out.lease_lost = true;
                    continue;
                }
                Err(err) => return Err(err),
            }
            failures = match reached {
                Some(true) => 0,
                Some(false) => failures.saturating_add(1),
                None => failures,
            };
        }
        health.write(tx.as_mut()).await?;
        tx.commit().await?;
        tracing::debug!(target_sector = %target, outcomes = after.len(), "delivery outcomes recorded in one transaction");
        for (step, reached) in after {
            if let Some(step) = step {
                sector_health::announce(&self.gateway, step.health);
                self.gateway.metrics().delivery(&target, step.outcome);
            }
            if let Some(reached) = reached {
                self.sector_outcome(&target, reached);
            }
        }
        Ok(out)
    }

    /// One attempt's outcome with its audit row, inside the recording transaction (a deferral
    /// leaves no row: `None`). The entry's lease is checked first.
    async fn record_one(
        &self,
        tx: &mut dyn StoreTx,
        health: &mut sector_health::Observer<'_>,
        a: Answered,
        failures: u32,
    ) -> Result<Option<Step>, StoreError> {
        let Answered {
            entry: e,
            attempt,
            took,
        } = a;
        let now = crate::fhir::time::now_us();
        let mut row = delivery_row(&e);
        let (outcome, pause) = match attempt {
            Attempt::Deferred => {
                self.record_deferred(tx, &e, now).await?;
                return Ok(None);
            }
            Attempt::Sent(sent) => (self.record_sent(&e, &sent, took, &mut row), None),
            Attempt::Unchanged { delivered } => (record_unchanged(&e, &delivered, &mut row), None),
            Attempt::Superseded => (self.record_superseded(tx, &e, &mut row).await?, None),
            Attempt::Failed(f) => {
                self.record_failure(tx, &e, &f, i64::from(failures), now, &mut row)
                    .await?
            }
        };
        let health = health.observe(tx, &e, outcome).await?;
        tx.audit(&row).await?;
        Ok(Some(Step {
            outcome,
            pause,
            health,
        }))
    }

    /// Sent (the entry and what the target holds are written by
    /// [`crate::store::ExchangeTx::deliveries_finish`]): the row naming the copy and what
    /// mapping did, and the delivery's duration observed.
    fn record_sent(
        &self,
        e: &OutboxEntry,
        sent: &Sent,
        took: Duration,
        row: &mut AuditRow,
    ) -> &'static str {
        let action = if sent.update {
            Action::Update
        } else {
            Action::Create
        };
        row.action = action.code().into();
        row.detail = Some(format!(
            "version {} delivered as {}/{} ({}) by {}; mapped: {} codes translated, {} not accepted by the target's equivalence policy, {} references rewritten",
            e.version,
            e.rtype,
            sent.accepted.target_id,
            sent.accepted.status,
            self.owner,
            sent.mapped.codes.translated,
            sent.mapped.codes.not_accepted,
            sent.mapped.references
        ));
        self.gateway
            .metrics()
            .delivery_duration
            .get_or_create(&TargetLabels {
                target: e.target.clone(),
            })
            .observe(took.as_secs_f64());
        "delivered"
    }

    /// Superseded: a later version already reached the target; this one is never sent.
    async fn record_superseded(
        &self,
        tx: &mut dyn StoreTx,
        e: &OutboxEntry,
        row: &mut AuditRow,
    ) -> Result<&'static str, StoreError> {
        tx.outbox_finish(e.id, &self.owner, &Finish::Superseded)
            .await?;
        row.detail = Some(format!(
            "version {} not sent: a later version already reached the target",
            e.version
        ));
        Ok("superseded")
    }

    /// Deferred: the entry waits (no attempt counted) for a resource it references.
    async fn record_deferred(
        &self,
        tx: &mut dyn StoreTx,
        e: &OutboxEntry,
        now: i64,
    ) -> Result<(), StoreError> {
        let wait = Duration::from_millis(self.gateway.settings().exchange.retry_initial_ms);
        tx.outbox_finish(
            e.id,
            &self.owner,
            &Finish::Deferred {
                next_us: now.saturating_add(us(wait)),
            },
        )
        .await?;
        Ok(())
    }

    /// Failed: retried after a back-off (the queue pauses that long), or dead-lettered.
    /// `failures`: the target's consecutive failures before this one.
    async fn record_failure(
        &self,
        tx: &mut dyn StoreTx,
        e: &OutboxEntry,
        f: &Failure,
        failures: i64,
        now: i64,
        row: &mut AuditRow,
    ) -> Result<(&'static str, Option<Duration>), StoreError> {
        let x = &self.gateway.settings().exchange;
        match verdict(x, e.attempts, failures, e.created_us, now, f) {
            Verdict::Retry(retry) => {
                self.record_retry(tx, e, f, &retry, now, row).await?;
                Ok(("retry", Some(retry.wait)))
            }
            Verdict::Dead { why } => {
                self.record_dead(tx, e, f, &why, row).await?;
                Ok(("dead", None))
            }
        }
    }

    /// A retryable failure: the entry is due again after the back-off.
    async fn record_retry(
        &self,
        tx: &mut dyn StoreTx,
        e: &OutboxEntry,
        f: &Failure,
        retry: &Retry,
        now: i64,
        row: &mut AuditRow,
    ) -> Result<(), StoreError> {
        tx.outbox_finish(
            e.id,
            &self.owner,
            &Finish::Retry {
                status: f.status.map(i64::from),
                error: f.error.clone(),
                next_us: now.saturating_add(us(retry.wait)),
            },
        )
        .await?;
        row.outcome = Outcome::MinorFailure.code().into();
        row.detail = Some(format!(
            "version {} attempt {} failed: {}; retry in {} ms",
            e.version,
            retry.attempts,
            f.error,
            retry.wait.as_millis()
        ));
        Ok(())
    }

    /// A dead letter: the entry is given up, counted, and named in the log (without patient
    /// data) for `GET /admin/deliveries?state=dead`.
    async fn record_dead(
        &self,
        tx: &mut dyn StoreTx,
        e: &OutboxEntry,
        f: &Failure,
        why: &str,
        row: &mut AuditRow,
    ) -> Result<(), StoreError> {
        tx.outbox_finish(
            e.id,
            &self.owner,
            &Finish::Dead {
                status: f.status.map(i64::from),
                error: f.error.clone(),
            },
        )
        .await?;
        row.outcome = Outcome::SeriousFailure.code().into();
        row.detail = Some(format!(
            "version {} dead-lettered after {why}: {}",
            e.version, f.error
        ));
        self.gateway
            .metrics()
            .dead_letters
            .get_or_create(&TargetLabels {
                target: e.target.clone(),
            })
            .inc();
        tracing::warn!(
            target_sector = %e.target,
            entry = e.id,
            resource_type = %e.rtype,
            status = f.status.unwrap_or(0),
            "delivery dead-lettered; see GET /admin/deliveries?state=dead"
        );
        Ok(())
    }

    /// Reads and maps one entry for its target (a read transaction; no request): what to send,
    /// or the attempt's end when there is nothing to send. `Wait` when the entry's mapping may
    /// depend on the outcome of one of `unrecorded` (the same resource, or a stored body that
    /// may name it): it is prepared again once that outcome is recorded.
    async fn prepare(&self, e: &OutboxEntry, unrecorded: &[Names]) -> Result<Prepared, StoreError> {
        let Some(target) = self.gateway.settings().sector(&e.target).cloned() else {
            return Ok(Prepared::Done(Attempt::Failed(Failure::permanent(
                None,
                format!("sector '{}' is no longer configured", e.target),
            ))));
        };
        if unrecorded.iter().any(|n| n.gid == e.gid) {
            return Ok(Prepared::Wait);
        }
        let gw = &self.gateway;
        let mut tx = gw.store().begin_read().await?;
        let (known, stored) = tx.delivery_source(&e.target, &e.gid, e.version).await?;
        // A later version reached the target; the same version did unless a resync asks.
        if known.as_ref().is_some_and(|d| {
            d.version > e.version || (d.version == e.version && d.hash != UNVERIFIED)
        }) {
            return Ok(Prepared::Done(Attempt::Superseded));
        }
        let Some((rid, text)) = stored else {
            return Ok(Prepared::Done(Attempt::Failed(Failure::permanent(
                None,
                "the stored version is missing",
            ))));
        };
        if unrecorded.iter().any(|n| n.named_by(&e.gid, &text)) {
            return Ok(Prepared::Wait);
        }
        let what = || format!("{}/{} version {}", e.rtype, e.gid, e.version);
        let Ok(body) = crate::store::parse_body(what, &text) else {
            return Ok(Prepared::Done(Attempt::Failed(Failure::permanent(
                None,
                "the stored version is not JSON",
            ))));
        };
        let names = Names::of(e, &rid, &body);
        let mapper = Mapper {
            settings: gw.settings(),
            mapping: gw.mapping(),
            schema: &gw.validator().schema,
        };
        let mapped = mapper.map(&mut *tx, e, &rid, body).await?;
        drop(tx);
        Ok(match to_send(known.as_ref(), &mapped) {
            Err(done) => Prepared::Done(*done),
            Ok((hash, text)) => {
                let resync = known.as_ref().is_some_and(|d| d.hash == UNVERIFIED);
                let request = base_url(&target)
                    .filter(|_| !resync)
                    .map(|base| build_request(base, &e.rtype, &mapped, known.as_ref(), Some(text)));
                Prepared::Ready(Box::new(Ready {
                    target,
                    known,
                    mapped,
                    hash,
                    names,
                    request,
                }))
            }
        })
    }

    /// The requests of a prepared entry (no transaction is open meanwhile): a copy a resync
    /// marked unverified is read first; then the delivery.
    async fn send_ready(&self, e: &OutboxEntry, ready: Ready) -> Attempt {
        let Ready {
            target,
            mut known,
            mapped,
            hash,
            request,
            ..
        } = ready;
        if let Some(d) = known.clone().filter(|d| d.hash == UNVERIFIED) {
            // A resync: what the target holds now decides.
            match self.read_copy(&target, e, &mapped, &d).await {
                Err(f) => return Attempt::Failed(f),
                Ok(TargetCopy::Same(version)) => return unchanged(&d, version, hash),
                Ok(TargetCopy::Gone) => known = None,
                Ok(TargetCopy::Differs(version)) => known = Some(at_version(&d, version)),
            }
        }
        self.deliver(&target, e, (mapped, request), known, hash)
            .await
    }

    /// Sends the mapped version. An update of a copy the target no longer has (404, 410)
    /// creates it again; an update refused for its `If-Match` (412) reads the copy first: the
    /// same content is recorded as it is (no second version), another is updated at the
    /// version read.
    async fn deliver(
        &self,
        target: &SectorSettings,
        e: &OutboxEntry,
        (mapped, request): (Mapped, Option<Request>),
        known: Option<Delivered>,
        hash: String,
    ) -> Attempt {
        let mut result = self.send(target, e, &mapped, known.as_ref(), request).await;
        if let (Some(d), Err(f)) = (&known, &result) {
            match f.status {
                Some(404 | 410) => result = self.send(target, e, &mapped, None, None).await,
                Some(412) => match self.read_copy(target, e, &mapped, d).await {
                    Ok(TargetCopy::Same(version)) => return unchanged(d, version, hash),
                    Ok(TargetCopy::Gone) => {
                        result = self.send(target, e, &mapped, None, None).await;
                    }
                    Ok(TargetCopy::Differs(version)) => {
                        let at = at_version(d, version);
                        result = self.send(target, e, &mapped, Some(&at), None).await;
                    }
                    Err(f) => result = Err(f),
                },
                _ => {}
            }
        }
        match result {
            Ok(accepted) => Attempt::Sent(Sent {
                accepted,
                hash,
                mapped: Box::new(mapped),
                update: known.is_some(),
            }),
            Err(f) => Attempt::Failed(f),
        }
    }

    /// The target's base URL (without a trailing slash) and the Authorization header to send.
    async fn endpoint<'t>(
        &self,
        target: &'t SectorSettings,
    ) -> Result<(&'t str, Option<String>), Failure> {
        let Some(base) = base_url(target) else {
            return Err(Failure::permanent(
                None,
                "the target sector has no base_url",
            ));
        };
        let auth = self
            .outbound
            .authorization(target)
            .await
            .map_err(|err| Failure::retryable(None, err.0))?;
        Ok((base, auth))
    }

    /// Reads the target's copy `d` and compares it with what the gateway would send.
    async fn read_copy(
        &self,
        target: &SectorSettings,
        e: &OutboxEntry,
        mapped: &Mapped,
        d: &Delivered,
    ) -> Result<TargetCopy, Failure> {
        let (base, auth) = self.endpoint(target).await?;
        let mut req = self
            .outbound
            .http
            .get(format!("{base}/{}/{}", e.rtype, d.target_id))
            .header(header::ACCEPT, FHIR_JSON);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = req
            .send()
            .await
            .map_err(|err| Failure::retryable(None, kind(&err)))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .text()
            .await
            .map_err(|err| Failure::retryable(Some(status), kind(&err)))?;
        // A body that is not JSON is treated as absent (as in `read_answer`).
        let copy: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        match status {
            404 | 410 => Ok(TargetCopy::Gone),
            200..=299 => Ok(compare_copy(&mapped.body, &copy)),
            _ => {
                let client_credentials =
                    matches!(target.auth, OutboundAuth::ClientCredentials { .. });
                Err(refusal(status, &headers, &copy, client_credentials))
            }
        }
    }

    /// Sends a mapped resource: the copy the target now holds, or why not.
    async fn send(
        &self,
        target: &SectorSettings,
        e: &OutboxEntry,
        mapped: &Mapped,
        known: Option<&Delivered>,
        prepared: Option<Request>,
    ) -> Result<Accepted, Failure> {
        let (base, auth) = self.endpoint(target).await?;
        let request =
            prepared.unwrap_or_else(|| build_request(base, &e.rtype, mapped, known, None));
        let transaction = request.transaction;
        let answer = self.call(request, auth.as_deref()).await?;
        let client_credentials = matches!(target.auth, OutboundAuth::ClientCredentials { .. });
        if answer.status == 401 && client_credentials {
            // The cached token was refused: the next attempt obtains a new one.
            self.outbound.invalidate(&target.id);
        }
        read_answer(&answer, &e.rtype, transaction, known, client_credentials)
    }

    /// The HTTP exchange: the request with the fixed headers and the credentials, and the
    /// whole answer. A transport failure is retryable.
    async fn call(&self, request: Request, auth: Option<&str>) -> Result<Answer, Failure> {
        let mut req = self
            .outbound
            .http
            .request(request.method, &request.url)
            .header(header::CONTENT_TYPE, FHIR_JSON)
            .header(header::ACCEPT, FHIR_JSON)
            .header("Prefer", "return=representation")
            .body(request.body);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        if let Some(q) = &request.if_none_exist {
            req = req.header("If-None-Exist", q);
        }
        if let Some(v) = &request.if_match {
            req = req.header(header::IF_MATCH, v);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(err) => return Err(Failure::retryable(None, kind(&err))),
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        match resp.text().await {
            Ok(body) => Ok(Answer {
                status,
                headers,
                body,
            }),
            Err(err) => Err(Failure::retryable(Some(status), kind(&err))),
        }
    }
}

/// Unchanged (the entry and what the target holds are written by
/// [`crate::store::ExchangeTx::deliveries_finish`]): the target's copy now stands for this
/// version too; nothing was sent.
fn record_unchanged(e: &OutboxEntry, delivered: &Delivered, row: &mut AuditRow) -> &'static str {
    row.detail = Some(format!(
        "version {} maps to what {}/{} already holds; nothing sent",
        e.version, e.rtype, delivered.target_id
    ));
    "unchanged"
}

/// The outcomes among `done` whose target holds the entry's version — sent and accepted, or
/// already there — with what it holds.
fn delivered_outcomes(done: &[Answered]) -> Vec<DeliveredOutcome> {
    done.iter()
        .filter_map(|a| {
            let e = &a.entry;
            match &a.attempt {
                Attempt::Sent(sent) => Some(DeliveredOutcome {
                    id: e.id,
                    status: i64::from(sent.accepted.status),
                    delivered: Delivered {
                        target: e.target.clone(),
                        gid: e.gid.clone(),
                        rtype: e.rtype.clone(),
                        target_id: sent.accepted.target_id.clone(),
                        target_version: sent.accepted.target_version.clone(),
                        version: e.version,
                        hash: sent.hash.clone(),
                    },
                }),
                Attempt::Unchanged { delivered } => Some(DeliveredOutcome {
                    id: e.id,
                    status: 304,
                    delivered: Delivered {
                        version: e.version,
                        ..delivered.clone()
                    },
                }),
                _ => None,
            }
        })
        .collect()
}

/// The target's copy `d` stands for this version too (its content is what would be sent).
fn unchanged(d: &Delivered, version: Option<String>, hash: String) -> Attempt {
    Attempt::Unchanged {
        delivered: Delivered {
            target_version: version.or_else(|| d.target_version.clone()),
            hash,
            ..d.clone()
        },
    }
}

/// The target's copy `d` at another version.
fn at_version(d: &Delivered, version: Option<String>) -> Delivered {
    Delivered {
        target_version: version,
        ..d.clone()
    }
}

/// Whether a copy read from the target holds what the gateway would send: equal without the
/// id and the server's `meta.versionId` and `meta.lastUpdated` (key order aside).
fn compare_copy(mapped: &Value, copy: &Value) -> TargetCopy {
    fn bare(v: &Value) -> Value {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("id");
            if let Some(meta) = o.get_mut("meta").and_then(Value::as_object_mut) {
                meta.remove("versionId");
                meta.remove("lastUpdated");
                if meta.is_empty() {
                    o.remove("meta");
                }
            }
        }
        v
    }
    let version = copy
        .pointer("/meta/versionId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if copy.is_object() && bare(mapped) == bare(copy) {
        TargetCopy::Same(version)
    } else {
        TargetCopy::Differs(version)
    }
}

/// The audit row of a delivery attempt before its outcome is known: the gateway exports a
/// resource of the source sector to the target sector, for treatment.
fn delivery_row(e: &OutboxEntry) -> AuditRow {
    let action = if e.version > 1 {
        Action::Update
    } else {
        Action::Create
    };
    let mut row = audit::row(
        &Actor::gateway(),
        Some(&e.source),
        action,
        Interaction::Deliver,
        Outcome::Success,
    );
    row.target_sector = Some(e.target.clone());
    row.patient_id = e.patient_id.clone();
    row.entities = vec![format!("{}/{}", e.rtype, e.gid)];
    row.purpose = Some("TREAT".into());
    row
}

/// What a failed attempt leads to.
#[derive(Debug, PartialEq)]
enum Verdict {
    Retry(Retry),
    /// Given up, and why ("a permanent failure", "older than … s", "… attempts").
    Dead {
        why: String,
    },
}

#[derive(Debug, PartialEq)]
struct Retry {
    /// Attempts made, this one included.
    attempts: u32,
    wait: Duration,
}

/// Retry or dead letter: a retryable failure is retried until the entry is older than
/// `exchange.max_age_secs` (or, when `exchange.max_attempts` is set, that many attempts were
/// made). `attempts_before` counts the entry's earlier attempts, `failures_before` the target's
/// consecutive failures: the back-off grows with the larger, so probes of a sector that stays
/// down grow apart whichever entry probes.
fn verdict(
    x: &ExchangeSettings,
    attempts_before: i64,
    failures_before: i64,
    created_us: i64,
    now: i64,
    f: &Failure,
) -> Verdict {
    let attempts = u32::try_from(attempts_before + 1).unwrap_or(u32::MAX);
    let too_old = now.saturating_sub(created_us)
        > i64::try_from(x.max_age_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
    let exhausted = x.max_attempts > 0 && attempts >= x.max_attempts;
    if f.retryable && !exhausted && !too_old {
        let step = u32::try_from(attempts_before.max(failures_before) + 1).unwrap_or(u32::MAX);
        let wait = backoff(x.retry_initial_ms, x.retry_max_ms, step, f.retry_after);
        return Verdict::Retry(Retry { attempts, wait });
    }
    let why = if !f.retryable {
        "a permanent failure".to_owned()
    } else if too_old {
        format!("older than {} s", x.max_age_secs)
    } else {
        format!("{attempts} attempts")
    };
    Verdict::Dead { why }
}

/// Whether an attempt reached the target (`Some(true)`: it answered; `Some(false)`: a
/// retryable failure) or says nothing about it (`None`: nothing was sent, or the failure was
/// the gateway's own).
fn reached(attempt: &Attempt) -> Option<bool> {
    match attempt {
        Attempt::Sent(_) => Some(true),
        Attempt::Failed(f) if f.retryable => Some(false),
        Attempt::Failed(f) => f.status.map(|_| true),
        Attempt::Unchanged { .. } | Attempt::Superseded | Attempt::Deferred => None,
    }
}

/// A delivery request: what goes on the wire besides the fixed headers (`Content-Type`,
/// `Accept`, `Prefer: return=representation`) and the credentials.
#[derive(Debug, Clone, PartialEq)]
struct Request {
    method: reqwest::Method,
    url: String,
    /// The `If-None-Exist` header: a plain create only (a transaction carries it in its entry).
    if_none_exist: Option<String>,
    /// The `If-Match` header: a plain update of a copy whose version is known.
    if_match: Option<String>,
    /// The body is a transaction Bundle (and the answer a transaction-response).
    transaction: bool,
    /// The body as sent.
    body: String,
}

/// The request that delivers `mapped` to the target at `base`: a PUT of the copy the target
/// holds (`known`), else a POST conditional on the source-resource identifier (`If-None-Exist`,
/// so a repeated create leaves one copy); inside a transaction Bundle when the body holds
/// conditional references. An update carries `If-Match` on the version the gateway wrote
/// (when the target named it), so that an update re-sent after a crash adds no version.
fn build_request(
    base: &str,
    rtype: &str,
    mapped: &Mapped,
    known: Option<&Delivered>,
    text: Option<String>,
) -> Request {
    let if_none_exist = mapped
        .business_id
        .as_ref()
        .map(|(s, v)| format!("identifier={}|{}", encode(s), encode(v)));
    match (known, mapped.conditional) {
        (Some(d), false) => {
            let mut body = mapped.body.clone();
            body["id"] = json!(d.target_id);
            Request {
                method: reqwest::Method::PUT,
                url: format!("{base}/{rtype}/{}", d.target_id),
                if_none_exist: None,
                if_match: if_match(d),
                transaction: false,
                body: body.to_string(),
            }
        }
        (None, false) => Request {
            method: reqwest::Method::POST,
            url: format!("{base}/{rtype}"),
            if_none_exist,
            if_match: None,
            transaction: false,
            // The mapped content as it is: its text when the caller has it already.
            body: text.unwrap_or_else(|| mapped.body.to_string()),
        },
        (known, true) => Request {
            method: reqwest::Method::POST,
            url: base.to_owned(),
            if_none_exist: None,
            if_match: None,
            transaction: true,
            body: transaction_bundle(rtype, mapped.body.clone(), known, if_none_exist).to_string(),
        },
    }
}

/// The target's base URL without a trailing slash.
fn base_url(target: &SectorSettings) -> Option<&str> {
    target.base_url.as_deref().map(|b| b.trim_end_matches('/'))
}

/// The `If-Match` value of an update of `d`: the version the target gave it, when it did.
fn if_match(d: &Delivered) -> Option<String> {
    d.target_version.as_ref().map(|v| format!("W/\"{v}\""))
}

/// A transaction Bundle of one entry: the update of the copy the target holds, else a create
/// conditional on `if_none_exist`.
fn transaction_bundle(
    rtype: &str,
    mut body: Value,
    known: Option<&Delivered>,
    if_none_exist: Option<String>,
) -> Value {
    let request = match known {
        Some(d) => {
            body["id"] = json!(d.target_id);
            let mut r = json!({ "method": "PUT", "url": format!("{rtype}/{}", d.target_id) });
            if let Some(v) = if_match(d) {
                r["ifMatch"] = json!(v);
            }
            r
        }
        None => {
            let mut r = json!({ "method": "POST", "url": rtype });
            if let Some(q) = &if_none_exist {
                r["ifNoneExist"] = json!(q);
            }
            r
        }
    };
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{ "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": body, "request": request }]
    })
}

/// A target's answer as received.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

/// Reads a target's answer (pure): a 2xx names the copy the target holds — from the returned
/// resource, else `Location`/`Content-Location` (or the transaction-response's first entry),
/// else for an update the id that was updated; the version likewise, else the `ETag`. A 2xx
/// without an id, and every other status, is a failure.
fn read_answer(
    answer: &Answer,
    rtype: &str,
    transaction: bool,
    known: Option<&Delivered>,
    client_credentials: bool,
) -> Result<Accepted, Failure> {
    let status = answer.status;
    // A received body that is not JSON (empty, or a proxy's HTML page) is treated as absent:
    // the status and the headers still say what happened. (Stored bodies are never read so.)
    let json: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        return Err(refusal(status, &answer.headers, &json, client_credentials));
    }
    let (id, version) = if transaction {
        transaction_copy(&json, status, rtype)?
    } else {
        plain_copy(&json, &answer.headers, rtype, known)
    };
    match id {
        Some(target_id) => Ok(Accepted {
            status,
            target_id,
            target_version: version,
        }),
        None => Err(Failure::permanent(
            Some(status),
            format!("the server answered {status} without the id of the resource"),
        )),
    }
}

/// The failure a non-2xx answer stands for: 408, 429 and 5xx are retried, and 401 when the
/// sector's token comes from client credentials (a new one is obtained); the rest is permanent.
fn refusal(status: u16, headers: &HeaderMap, body: &Value, client_credentials: bool) -> Failure {
    let retryable = matches!(status, 401 | 408 | 429) || status >= 500;
    let mut f = Failure {
        status: Some(status),
        error: describe_failure(status, body),
        retryable: retryable && (status != 401 || client_credentials),
        retry_after: retry_after(headers),
    };
    if status == 401 && !f.retryable {
        f.error.push_str(" (check the sector's outbound auth)");
    }
    f
}

/// The id and the version of a target's copy, where its answer names them.
type CopyIds = (Option<String>, Option<String>);

/// (id, version) of the copy a transaction-response's first entry names; an entry that did
/// not succeed is a permanent failure.
fn transaction_copy(json: &Value, status: u16, rtype: &str) -> Result<CopyIds, Failure> {
    let first = json.pointer("/entry/0").unwrap_or(&Value::Null);
    let status_text = first
        .pointer("/response/status")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !status_text.starts_with('2') {
        // The entry's own status where it gives one (a 412 or 404 is handled like a plain one).
        let entry_status = status_text.get(..3).and_then(|c| c.parse::<u16>().ok());
        return Err(Failure::permanent(
            Some(entry_status.unwrap_or(status)),
            format!("the transaction entry answered '{status_text}'"),
        ));
    }
    let from_location = first
        .pointer("/response/location")
        .and_then(Value::as_str)
        .and_then(|l| id_from_location(l, rtype));
    let from_resource = first
        .get("resource")
        .and_then(|r| id_from_resource(r, rtype));
    Ok(pick_copy(from_resource, from_location))
}

/// (id, version) of the copy a plain create or update answer names: the returned resource, the
/// location headers, the id that was updated; the version also from the `ETag`.
fn plain_copy(
    json: &Value,
    headers: &HeaderMap,
    rtype: &str,
    known: Option<&Delivered>,
) -> CopyIds {
    let from_resource = id_from_resource(json, rtype);
    let from_location = headers
        .get(header::LOCATION)
        .or_else(|| headers.get(header::CONTENT_LOCATION))
        .and_then(|v| v.to_str().ok())
        .and_then(|l| id_from_location(l, rtype));
    let etag = headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|t| t.trim_start_matches("W/").trim_matches('"').to_owned());
    let (id, version) = pick_copy(from_resource, from_location);
    (
        id.or_else(|| known.map(|d| d.target_id.clone())),
        version.or(etag),
    )
}

/// The id and the version each from the returned resource first, then from the location.
fn pick_copy(
    from_resource: Option<(String, Option<String>)>,
    from_location: Option<(String, Option<String>)>,
) -> CopyIds {
    let id = from_resource
        .as_ref()
        .map(|(i, _)| i.clone())
        .or_else(|| from_location.as_ref().map(|(i, _)| i.clone()));
    let version = from_resource
        .and_then(|(_, v)| v)
        .or_else(|| from_location.and_then(|(_, v)| v));
    (id, version)
}

/// A value of an `If-None-Exist` query (`identifier=<system>|<value>`), percent-encoded as
/// the gateway sends it.
pub fn encode(s: &str) -> String {
    use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
    const SET: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'%')
        .add(b'&')
        .add(b'+')
        .add(b'<')
        .add(b'>')
        .add(b'|');
    utf8_percent_encode(s, SET).to_string()
}

/// (id, versionId) of a returned resource of the expected type.
fn id_from_resource(r: &Value, rtype: &str) -> Option<(String, Option<String>)> {
    if r.get("resourceType").and_then(Value::as_str) != Some(rtype) {
        return None;
    }
    let id = r.get("id")?.as_str()?.to_owned();
    let version = r
        .pointer("/meta/versionId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some((id, version))
}

/// (id, versionId) from `[base/]Type/id[/_history/vid]`.
fn id_from_location(l: &str, rtype: &str) -> Option<(String, Option<String>)> {
    let parts: Vec<&str> = l.split('/').collect();
    let i = parts.iter().rposition(|p| *p == rtype)?;
    let id = parts.get(i + 1)?.to_string();
    let version = match (parts.get(i + 2), parts.get(i + 3)) {
        (Some(&"_history"), Some(v)) => Some((*v).to_owned()),
        _ => None,
    };
    (!id.is_empty()).then_some((id, version))
}

/// `Retry-After` in seconds (an HTTP date is not honoured; the back-off applies).
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(3600)))
}

/// A failure described without patient data: the status and the OperationOutcome's issue
/// codes and locations (never its diagnostics, which may quote the resource).
fn describe_failure(status: u16, body: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(issues) = body.get("issue").and_then(Value::as_array) {
        for i in issues.iter().take(5) {
            let code = i.get("code").and_then(Value::as_str).unwrap_or("?");
            let at = i
                .get("expression")
                .or_else(|| i.get("location"))
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(Value::as_str);
            parts.push(match at {
                Some(p) => format!("{code} at {p}"),
                None => code.to_owned(),
            });
        }
    }
    if parts.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_respects_the_cap_and_retry_after() {
        for attempt in 1..=6u32 {
            let d = backoff(100, 1_000, attempt, None).as_millis() as u64;
            let step = (100u64 << (attempt - 1)).min(1_000);
            assert!(d >= step / 2 && d <= step, "attempt {attempt}: {d} ms");
        }
        assert!(backoff(100, 1_000, 1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
    }

    #[test]
    fn locations_and_failures_are_read() {
        assert_eq!(
            id_from_location("http://h/fhir/Condition/abc/_history/7", "Condition"),
            Some(("abc".into(), Some("7".into())))
        );
        assert_eq!(
            id_from_location("Condition/abc", "Condition"),
            Some(("abc".into(), None))
        );
        let oo = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Jens Hansen", "expression": ["Condition.code"]}]});
        let d = describe_failure(400, &oo);
        assert_eq!(d, "HTTP 400: invalid at Condition.code");
        assert!(!d.contains("Jens"));
    }

    fn mapped(conditional: bool, business_id: Option<(&str, &str)>) -> Mapped {
        Mapped {
            body: json!({ "resourceType": "Condition", "subject": { "reference": "Patient/p" } }),
            conditional,
            codes: Default::default(),
            references: 0,
            business_id: business_id.map(|(s, v)| (s.to_owned(), v.to_owned())),
            deferred: false,
        }
    }

    fn known(target_id: &str) -> Delivered {
        Delivered {
            target: "hospital".into(),
            gid: "g".into(),
            rtype: "Condition".into(),
            target_id: target_id.into(),
            target_version: Some("1".into()),
            version: 1,
            hash: "h".into(),
        }
    }

    fn body(r: &Request) -> Value {
        serde_json::from_str(&r.body).unwrap()
    }

    const SOURCE_ID: Option<(&str, &str)> = Some(("http://x/source", "gp/Condition/a b"));

    #[test]
    fn a_new_resource_is_a_conditional_create() {
        let r = build_request(
            "http://h/fhir",
            "Condition",
            &mapped(false, SOURCE_ID),
            None,
            None,
        );
        assert_eq!(r.method, reqwest::Method::POST);
        assert_eq!(r.url, "http://h/fhir/Condition");
        assert_eq!(
            r.if_none_exist.as_deref(),
            Some("identifier=http://x/source|gp/Condition/a%20b")
        );
        assert!(!r.transaction);
        assert_eq!(r.body, mapped(false, None).body.to_string());
        let text = Some("{\"resourceType\":\"Condition\"}".to_owned());
        let given = build_request(
            "http://h/fhir",
            "Condition",
            &mapped(false, None),
            None,
            text,
        );
        assert_eq!(
            given.body, "{\"resourceType\":\"Condition\"}",
            "the text given is sent"
        );
    }

    #[test]
    fn a_known_resource_is_an_update_of_the_targets_copy() {
        let d = known("t1");
        let r = build_request(
            "http://h/fhir",
            "Condition",
            &mapped(false, SOURCE_ID),
            Some(&d),
            None,
        );
        assert_eq!(r.method, reqwest::Method::PUT);
        assert_eq!(r.url, "http://h/fhir/Condition/t1");
        assert_eq!(r.if_none_exist, None);
        assert_eq!(r.if_match.as_deref(), Some("W/\"1\""));
        assert_eq!(body(&r)["id"], "t1");
        assert!(!r.transaction);
    }

    #[test]
    fn conditional_references_travel_in_a_transaction() {
        let r = build_request(
            "http://h/fhir",
            "Condition",
            &mapped(true, SOURCE_ID),
            None,
            None,
        );
        assert_eq!(
            (r.method.clone(), r.url.as_str()),
            (reqwest::Method::POST, "http://h/fhir")
        );
        assert!(r.transaction);
        assert_eq!(r.if_none_exist, None);
        assert_eq!(body(&r)["type"], "transaction");
        let entry = &body(&r)["entry"][0];
        assert!(entry["fullUrl"].as_str().unwrap().starts_with("urn:uuid:"));
        assert_eq!(
            entry["request"],
            json!({ "method": "POST", "url": "Condition", "ifNoneExist": "identifier=http://x/source|gp/Condition/a%20b" })
        );
        assert_eq!(entry["resource"]["resourceType"], "Condition");

        let d = known("t1");
        let r = build_request(
            "http://h/fhir",
            "Condition",
            &mapped(true, SOURCE_ID),
            Some(&d),
            None,
        );
        let entry = &body(&r)["entry"][0];
        assert_eq!(
            entry["request"],
            json!({ "method": "PUT", "url": "Condition/t1", "ifMatch": "W/\"1\"" })
        );
        assert_eq!(entry["resource"]["id"], "t1");
    }

    fn answer(status: u16, headers: &[(&'static str, &str)], body: &str) -> Answer {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, v.parse().unwrap());
        }
        Answer {
            status,
            headers: map,
            body: body.into(),
        }
    }

    fn accepted(status: u16, id: &str, version: Option<&str>) -> Result<Accepted, Failure> {
        Ok(Accepted {
            status,
            target_id: id.into(),
            target_version: version.map(str::to_owned),
        })
    }

    #[test]
    fn an_accepted_copy_is_named_by_the_resource_then_the_headers() {
        let created = r#"{"resourceType":"Condition","id":"c9","meta":{"versionId":"3"}}"#;
        let a = answer(
            201,
            &[("location", "http://h/Condition/other/_history/1")],
            created,
        );
        assert_eq!(
            read_answer(&a, "Condition", false, None, false),
            accepted(201, "c9", Some("3"))
        );
        // An empty or non-JSON body counts as absent: the headers name the copy.
        let a = answer(
            201,
            &[("location", "http://h/fhir/Condition/c1/_history/2")],
            "",
        );
        assert_eq!(
            read_answer(&a, "Condition", false, None, false),
            accepted(201, "c1", Some("2"))
        );
        let a = answer(
            201,
            &[("content-location", "Condition/c2"), ("etag", "W/\"5\"")],
            "<html>",
        );
        assert_eq!(
            read_answer(&a, "Condition", false, None, false),
            accepted(201, "c2", Some("5"))
        );
        // A resource of another type does not name the copy.
        let a = answer(
            200,
            &[("etag", "W/\"2\"")],
            r#"{"resourceType":"OperationOutcome","id":"x"}"#,
        );
        let d = known("t1");
        assert_eq!(
            read_answer(&a, "Condition", false, Some(&d), false),
            accepted(200, "t1", Some("2"))
        );
        let f = read_answer(&a, "Condition", false, None, false).unwrap_err();
        assert_eq!((f.status, f.retryable), (Some(200), false));
        assert_eq!(
            f.error,
            "the server answered 200 without the id of the resource"
        );
    }

    #[test]
    fn a_transaction_response_names_the_copy_in_its_first_entry() {
        let body = json!({ "resourceType": "Bundle", "type": "transaction-response", "entry": [
            { "response": { "status": "201 Created", "location": "Condition/t7/_history/1" } }
        ] });
        let a = answer(200, &[("location", "Condition/ignored")], &body.to_string());
        assert_eq!(
            read_answer(&a, "Condition", true, None, false),
            accepted(200, "t7", Some("1"))
        );
        let body = json!({ "resourceType": "Bundle", "entry": [
            { "response": { "status": "412 Precondition Failed" } }
        ] });
        let f = read_answer(
            &answer(200, &[], &body.to_string()),
            "Condition",
            true,
            None,
            false,
        )
        .unwrap_err();
        assert_eq!(
            f.error,
            "the transaction entry answered '412 Precondition Failed'"
        );
        assert!(!f.retryable);
        let f = read_answer(
            &answer(200, &[], "not json"),
            "Condition",
            true,
            None,
            false,
        )
        .unwrap_err();
        assert_eq!(f.error, "the transaction entry answered ''");
    }

    #[test]
    fn refusals_are_retryable_or_permanent() {
        let oo = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid","diagnostics":"Jens","expression":["Condition.code"]}]}"#;
        let f = read_answer(&answer(400, &[], oo), "Condition", false, None, false).unwrap_err();
        assert_eq!((f.status, f.retryable), (Some(400), false));
        assert_eq!(f.error, "HTTP 400: invalid at Condition.code");
        let f = read_answer(
            &answer(503, &[("retry-after", "7")], "down"),
            "Condition",
            false,
            None,
            false,
        )
        .unwrap_err();
        assert!(f.retryable);
        assert_eq!(f.error, "HTTP 503");
        assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
        for status in [408, 429, 500] {
            let f =
                read_answer(&answer(status, &[], ""), "Condition", false, None, false).unwrap_err();
            assert!(f.retryable, "{status}");
        }
        let f = read_answer(&answer(401, &[], ""), "Condition", false, None, false).unwrap_err();
        assert!(!f.retryable);
        assert_eq!(f.error, "HTTP 401 (check the sector's outbound auth)");
        let f = read_answer(&answer(401, &[], ""), "Condition", false, None, true).unwrap_err();
        assert!(f.retryable);
        assert_eq!(f.error, "HTTP 401");
    }

    #[test]
    fn failures_are_retried_until_the_entry_is_too_old() {
        let x = ExchangeSettings {
            max_age_secs: 60,
            retry_initial_ms: 100,
            retry_max_ms: 1_000,
            ..ExchangeSettings::default()
        };
        assert_eq!(x.max_attempts, 0, "no bound by count by default");
        let now = 1_000_000_000;
        let retryable = Failure::retryable(Some(503), "HTTP 503");
        match verdict(&x, 1, 0, now, now, &retryable) {
            Verdict::Retry(r) => {
                assert_eq!(r.attempts, 2);
                assert!(
                    r.wait >= Duration::from_millis(100) && r.wait <= Duration::from_millis(200)
                );
            }
            other => panic!("{other:?}"),
        }
        // A thousand attempts are no reason to give up; the back-off stays at its maximum.
        match verdict(&x, 1_000, 0, now - 59_000_000, now, &retryable) {
            Verdict::Retry(r) => assert!(r.wait <= Duration::from_millis(1_000)),
            other => panic!("{other:?}"),
        }
        // A fresh entry probing a sector that failed often waits as long as the sector's
        // failures say.
        match verdict(&x, 0, 4, now, now, &retryable) {
            Verdict::Retry(r) => assert!(r.wait >= Duration::from_millis(500), "{r:?}"),
            other => panic!("{other:?}"),
        }
        let dead = |why: &str| Verdict::Dead { why: why.into() };
        assert_eq!(
            verdict(&x, 0, 0, now - 61_000_000, now, &retryable),
            dead("older than 60 s")
        );
        let permanent = Failure::permanent(Some(400), "HTTP 400");
        assert_eq!(
            verdict(&x, 0, 0, now, now, &permanent),
            dead("a permanent failure")
        );
        let counted = ExchangeSettings {
            max_attempts: 3,
            ..x
        };
        assert_eq!(
            verdict(&counted, 2, 0, now, now, &retryable),
            dead("3 attempts")
        );
    }

    /// The recorder's side of a pipeline, and the sending side's ends.
    fn pipeline() -> (
        Received,
        mpsc::UnboundedSender<Answered>,
        watch::Sender<usize>,
    ) {
        let (answers, received) = mpsc::unbounded_channel();
        let (wanted, wanted_rx) = watch::channel(0);
        let r = Received {
            answers: received,
            wanted: wanted_rx,
        };
        (r, answers, wanted)
    }

    fn answered(k: i64) -> Answered {
        let mut entry = outbox_entry(&format!("g{k}"), "Condition");
        entry.id = k;
        Answered {
            entry,
            attempt: Attempt::Deferred,
            took: Duration::ZERO,
        }
    }

    fn ids(group: Option<Vec<Answered>>) -> Vec<i64> {
        group
            .unwrap_or_default()
            .iter()
            .map(|a| a.entry.id)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_are_recorded_in_groups_within_a_window() {
        let (mut r, answers, wanted) = pipeline();
        // Answers handed over within the window share a transaction, and so does the first one
        // after it: the group ends as that answer's next request leaves.
        let start = tokio::time::Instant::now();
        let late = answers.clone();
        answers.send(answered(1)).unwrap();
        answers.send(answered(2)).unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            late.send(answered(3)).unwrap();
            tokio::time::sleep(GROUP_WITHIN).await;
            late.send(answered(4)).unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            late.send(answered(5)).unwrap();
        });
        assert_eq!(ids(r.group(0).await), [1, 2, 3, 4]);
        assert_eq!(
            start.elapsed(),
            GROUP_WITHIN + Duration::from_millis(5),
            "the group ended with the first answer after its window"
        );
        // No answer follows: the group ends at the latest.
        assert_eq!(ids(r.group(4).await), [5]);
        assert_eq!(
            start.elapsed(),
            GROUP_WITHIN + Duration::from_millis(305) + GROUP_LATEST,
            "a lone answer waited until the latest"
        );
        // The sending side waits for what it handed over: recorded at once.
        answers.send(answered(6)).unwrap();
        wanted.send_replace(6);
        let at = tokio::time::Instant::now();
        assert_eq!(ids(r.group(5).await), [6]);
        assert_eq!(
            at.elapsed(),
            Duration::ZERO,
            "no wait when the sender waits"
        );
        // At most GROUP_MAX in one transaction, the rest in the next.
        for k in 7..7 + GROUP_MAX as i64 + 3 {
            answers.send(answered(k)).unwrap();
        }
        assert_eq!(r.group(6).await.map(|g| g.len()), Some(GROUP_MAX));
        // The sending side is done: what is left is recorded at once, then nothing.
        drop((answers, wanted));
        let at = tokio::time::Instant::now();
        assert_eq!(r.group(6 + GROUP_MAX).await.map(|g| g.len()), Some(3));
        assert_eq!(at.elapsed(), Duration::ZERO);
        assert!(r.group(9 + GROUP_MAX).await.is_none());
    }

    fn outbox_entry(gid: &str, rtype: &str) -> OutboxEntry {
        OutboxEntry {
            id: 1,
            target: "hospital".into(),
            source: "gp".into(),
            gid: gid.into(),
            version: 1,
            rtype: rtype.into(),
            patient_id: None,
            route: "care".into(),
            state: crate::store::DeliveryState::Pending,
            attempts: 0,
            created_us: 0,
            next_us: 0,
            updated_us: 0,
            last_status: None,
            last_error: None,
            target_id: None,
            target_version: None,
        }
    }

    #[test]
    fn an_entry_waits_for_the_outcome_of_a_resource_its_body_may_name() {
        let body = json!({"resourceType": "Condition", "identifier": [
            {"system": "http://gp.example/conditions", "value": "cond-77"},
            {"system": "http://x/empty", "value": ""}
        ]});
        let names = Names::of(&outbox_entry("g-cond", "Condition"), "c1", &body);
        assert_eq!(names.gid, "g-cond");
        assert_eq!(names.needles, ["g-cond", "Condition/c1", "cond-77"]);
        // The same resource (another version).
        assert!(names.named_by("g-cond", "{}"));
        // A relative reference, an absolute URL, the gateway's name, a logical reference.
        for body in [
            r#"{"reasonReference":[{"reference":"Condition/c1"}]}"#,
            r#"{"reasonReference":[{"reference":"http://gp.example/fhir/Condition/c1"}]}"#,
            r#"{"reasonReference":[{"reference":"http://gw/fhir/Condition/g-cond"}]}"#,
            r#"{"reasonReference":[{"identifier":{"system":"http://gp.example/conditions","value":"cond-77"}}]}"#,
        ] {
            assert!(names.named_by("g-other", body), "{body}");
        }
        // Another resource: no wait (an empty identifier value names nothing).
        assert!(!names.named_by(
            "g-other",
            r#"{"subject":{"reference":"Patient/p1"},"reasonReference":[{"reference":"Condition/c2"}]}"#
        ));
        // Another id that begins with this one names another resource.
        assert!(!names.named_by("g-other", r#"{"reference":"Condition/c10"}"#));
        assert!(!names.named_by("g-other", r#"{"value":"cond-770"}"#));
        // A false match errs on the safe side: it only delays.
        assert!(names.named_by("g-other", r#"{"note":[{"text":"see Condition/c1, 2025"}]}"#));
        // An identifier value as JSON writes it.
        let quoted = json!({"identifier": [{"system": "s", "value": "a\"b"}]});
        let names = Names::of(&outbox_entry("g", "Condition"), "c1", &quoted);
        assert!(names.named_by(
            "g-other",
            &json!({"identifier": {"value": "a\"b"}}).to_string()
        ));
        // Without a known id, the gateway id and the identifiers still name it.
        let bare = Names::of(&outbox_entry("g-cond", "Condition"), "", &json!({}));
        assert_eq!(bare.needles, ["g-cond"]);
    }

    #[test]
    fn nothing_is_sent_when_the_mapping_defers_or_the_copy_is_the_same() {
        let mut m = mapped(false, SOURCE_ID);
        let hash = content_hash(m.body.to_string().as_bytes());
        let mut same = known("t1");
        same.hash = hash.clone();
        assert!(matches!(
            to_send(Some(&same), &m).map_err(|a| *a),
            Err(Attempt::Unchanged { delivered }) if delivered == same
        ));
        let text = m.body.to_string();
        assert_eq!(
            to_send(Some(&known("t1")), &m).ok(),
            Some((hash.clone(), text.clone()))
        );
        assert_eq!(to_send(None, &m).ok(), Some((hash, text)));
        m.deferred = true;
        assert!(matches!(
            to_send(None, &m).map_err(|a| *a),
            Err(Attempt::Deferred)
        ));
    }

    #[test]
    fn a_copy_read_back_is_compared_without_the_servers_fields() {
        let mapped = json!({"resourceType": "Condition", "meta": {"profile": ["p"]}, "code": {"text": "x"}, "subject": {"reference": "Patient/p"}});
        let copy = json!({"subject": {"reference": "Patient/p"}, "resourceType": "Condition", "id": "t1", "code": {"text": "x"}, "meta": {"versionId": "v2", "lastUpdated": "2026-01-01T00:00:00Z", "profile": ["p"]}});
        assert!(matches!(compare_copy(&mapped, &copy), TargetCopy::Same(Some(v)) if v == "v2"));
        let mut other = copy.clone();
        other["code"]["text"] = json!("y");
        assert!(matches!(compare_copy(&mapped, &other), TargetCopy::Differs(Some(v)) if v == "v2"));
        assert!(matches!(
            compare_copy(&mapped, &Value::Null),
            TargetCopy::Differs(None)
        ));
    }
}
