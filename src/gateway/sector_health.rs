//! Each target sector endpoint's health, as the delivery workers see it, and IT staff's board.
//!
//! The worker makes one call per recorded outcome, [`Observer::observe`], in the transaction
//! that records it (the row written once per transaction, [`Observer::write`]): the streak of
//! consecutive failed attempts, the last status and reason (the outbox's own patient-free
//! description), the attempts of the hour. The state turns `failing` once — after
//! `exchange.failing_after_failures` consecutive failures, or a failure that finds the oldest
//! waiting entry older than `exchange.failing_after_age_secs` — and `healthy` once, at the next
//! delivery; every other outcome changes no state. [`announce`], after the commit, writes the
//! one log line and the metrics of a change, so a change is raised and cleared exactly once
//! whatever the number of failed attempts (and, with several replicas, by the replica whose
//! transaction made it: the row is locked per target).

use super::{Gateway, GatewayError};
use crate::access::{Caller, Request, authorize};
use crate::config::{ExchangeSettings, SectorMode};
use crate::fhir::time::now_us;
use crate::metrics::{SectorStateLabels, TargetLabels};
use crate::store::{AttemptCount, CursorStat, OutboxEntry, QueueStat, SectorHealth, StoreTx};

const HOUR_US: i64 = 3_600_000_000;
pub const HEALTHY: &str = "healthy";
pub const FAILING: &str = "failing";

/// What one recorded outcome means for the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The target accepted (or already held) the entry.
    Delivered,
    /// The attempt failed (retried or dead-lettered).
    Failed,
    /// Nothing was attempted (superseded, deferred).
    Nothing,
}

impl Seen {
    /// The worker's outcome label (`delivered`, `unchanged`, `retry`, `dead`, `superseded`).
    pub fn of(outcome: &str) -> Seen {
        match outcome {
            "delivered" | "unchanged" => Seen::Delivered,
            "retry" | "dead" => Seen::Failed,
            _ => Seen::Nothing,
        }
    }
}

/// A change of an endpoint's state, to announce after the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Failing {
        target: String,
        streak: i64,
        status: Option<i64>,
        by_age: bool,
    },
    Recovered {
        target: String,
        failing_for_us: i64,
    },
}

/// The pure step: the health after one outcome, and the change it makes (if any).
pub fn step(
    x: &ExchangeSettings,
    before: Option<SectorHealth>,
    entry: &OutboxEntry,
    seen: Seen,
    oldest_us: Option<i64>,
    now: i64,
) -> (SectorHealth, Option<Change>) {
    let mut h = before.unwrap_or_else(|| SectorHealth {
        target: entry.target.clone(),
        state: HEALTHY.into(),
        streak: 0,
        since_us: now,
        last_attempt_us: now,
        last_success_us: None,
        last_failure_us: None,
        last_status: None,
        last_error: None,
    });
    h.last_attempt_us = now;
    let mut change = None;
    match seen {
        Seen::Nothing => {}
        Seen::Delivered => {
            h.streak = 0;
            h.last_success_us = Some(now);
            if h.state == FAILING {
                change = Some(Change::Recovered {
                    target: h.target.clone(),
                    failing_for_us: now - h.since_us,
                });
                h.state = HEALTHY.into();
                h.since_us = now;
            }
        }
        Seen::Failed => {
            h.streak += 1;
            h.last_failure_us = Some(now);
            h.last_status = entry.last_status;
            h.last_error = entry.last_error.clone();
            let age_limit = i64::try_from(x.failing_after_age_secs)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000);
            let by_age = oldest_us.is_some_and(|o| now - o >= age_limit);
            let by_streak = h.streak >= i64::from(x.failing_after_failures);
            if h.state != FAILING && (by_streak || by_age) {
                change = Some(Change::Failing {
                    target: h.target.clone(),
                    streak: h.streak,
                    status: h.last_status,
                    by_age: by_age && !by_streak,
                });
                h.state = FAILING.into();
                h.since_us = now;
            }
        }
    }
    (h, change)
}

/// The delivery worker's hook for one recording transaction: [`Observer::observe`] for each
/// outcome it records, in order, then [`Observer::write`] before the commit. A target's row
/// is locked and read at its first outcome that counts and stepped in memory after that; the
/// health and the hour's attempts are written once per transaction, whatever the number of
/// outcomes in it (the same rows as one call per outcome would leave).
pub struct Observer<'g> {
    gateway: &'g Gateway,
    /// Each target's health as the outcomes so far left it (read at its first one that counts).
    health: std::collections::BTreeMap<String, SectorHealth>,
    /// Attempts per (target, hour): delivered, failed.
    attempts: std::collections::BTreeMap<(String, i64), (i64, i64)>,
}

impl<'g> Observer<'g> {
    pub fn new(gateway: &'g Gateway) -> Observer<'g> {
        Observer {
            gateway,
            health: Default::default(),
            attempts: Default::default(),
        }
    }

    /// One outcome of `entry` (as the outbox now holds it); returns the change to
    /// [`announce`] after the commit.
    pub async fn observe(
        &mut self,
        tx: &mut dyn StoreTx,
        entry: &OutboxEntry,
        outcome: &str,
    ) -> crate::store::Result<Option<Change>> {
        let seen = Seen::of(outcome);
        if seen == Seen::Nothing {
            return Ok(None);
        }
        let now = now_us();
        let before = match self.health.remove(&entry.target) {
            Some(h) => Some(h),
            // One writer per target at a time (an advisory lock on PostgreSQL, the writer on
            // SQLite), held until the commit.
            None => tx.health_lock(&entry.target).await?,
        };
        let (recorded, oldest) = match seen {
            Seen::Failed => (
                tx.outbox_get(entry.id).await?,
                tx.oldest_pending(&entry.target).await?,
            ),
            _ => (None, None),
        };
        let entry = recorded.as_ref().unwrap_or(entry);
        let x = &self.gateway.settings().exchange;
        let (health, change) = step(x, before, entry, seen, oldest, now);
        self.health.insert(health.target.clone(), health);
        let count = self
            .attempts
            .entry((entry.target.clone(), now - now.rem_euclid(HOUR_US)))
            .or_default();
        match seen {
            Seen::Delivered => count.0 += 1,
            _ => count.1 += 1,
        }
        Ok(change)
    }

    /// Writes the health and the attempts observed (nothing when no outcome counted).
    pub async fn write(self, tx: &mut dyn StoreTx) -> crate::store::Result<()> {
        for h in self.health.values() {
            tx.health_put(h).await?;
        }
        for ((target, hour), (delivered, failed)) in &self.attempts {
            tx.attempts_add(target, *hour, *delivered, *failed).await?;
        }
        Ok(())
    }
}

/// After the commit: one log line and the metrics of a change (nothing for no change).
pub fn announce(gateway: &Gateway, change: Option<Change>) {
    let Some(change) = change else { return };
    let m = gateway.metrics();
    let (target, state, failing) = match &change {
        Change::Failing {
            target,
            streak,
            status,
            by_age,
        } => {
            tracing::warn!(
                target_sector = %target,
                streak,
                status = status.unwrap_or(0),
                by_age,
                "sector endpoint failing; see /ui/it/board"
            );
            (target, "failing", 1)
        }
        Change::Recovered {
            target,
            failing_for_us,
        } => {
            tracing::info!(
                target_sector = %target,
                failing_for_s = failing_for_us / 1_000_000,
                "sector endpoint recovered"
            );
            (target, "recovered", 0)
        }
    };
    m.sector_failing
        .get_or_create(&TargetLabels {
            target: target.clone(),
        })
        .set(failing);
    m.sector_changes
        .get_or_create(&SectorStateLabels {
            target: target.clone(),
            state: state.into(),
        })
        .inc();
}

/// Keeps `carebridge_sector_failing` of this replica equal to the stored state (another
/// replica may have made the change).
pub async fn refresh_gauge(gateway: &Gateway) -> crate::store::Result<()> {
    let mut tx = gateway.store().begin_read().await?;
    for h in tx.health_all().await? {
        gateway
            .metrics()
            .sector_failing
            .get_or_create(&TargetLabels { target: h.target })
            .set(i64::from(h.state == FAILING));
    }
    Ok(())
}

/// One line of IT staff's board: a sector endpoint, without patient data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardLine {
    pub sector: String,
    pub name: String,
    /// `healthy`, `failing`, `idle`, `paused` or `sends-only` (no endpoint to deliver to).
    pub state: &'static str,
    pub base_url: Option<String>,
    pub pull: bool,
    pub pending: i64,
    pub dead: i64,
    /// Seconds since the oldest pending entry was written.
    pub oldest_age_s: Option<i64>,
    pub streak: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub since_us: Option<i64>,
    pub last_success_us: Option<i64>,
    pub delivered_24h: i64,
    pub failed_24h: i64,
    pub cursor: Option<String>,
    pub last_poll_us: Option<i64>,
}

/// What the board reads, per sector.
struct Reading<'a> {
    health: Option<&'a SectorHealth>,
    queue: Option<&'a QueueStat>,
    attempts: Option<&'a AttemptCount>,
    cursor: Option<&'a CursorStat>,
}

/// The state a sector shows: failing as stored; paused while deliveries are off or its queue
/// waits for a retry; idle with nothing waiting and no attempt in 24 h; else healthy.
fn board_state(enabled: bool, has_endpoint: bool, r: &Reading<'_>) -> &'static str {
    if !has_endpoint {
        return "sends-only";
    }
    let waiting = r.queue.is_some_and(|q| q.pending > 0);
    match r.health {
        Some(h) if h.state == FAILING => FAILING,
        _ if !enabled && waiting => "paused",
        Some(h) if h.streak > 0 && waiting => "paused",
        _ if !waiting && r.attempts.is_none_or(|a| a.delivered + a.failed == 0) => "idle",
        _ => HEALTHY,
    }
}

impl Gateway {
    /// IT staff's board of sector endpoints (administrators; no patient data).
    pub async fn sector_board(&self, caller: &Caller) -> Result<Vec<BoardLine>, GatewayError> {
        authorize(caller, Request::Operations)?;
        let now = now_us();
        let mut tx = self.store.begin_read().await?;
        let health = tx.health_all().await?;
        let queues = tx.queue_stats().await?;
        let attempts = tx.attempts_since(now - 24 * HOUR_US).await?;
        let cursors = tx.cursor_stats().await?;
        drop(tx);
        let enabled = self.settings.exchange.enabled;
        Ok(self
            .settings
            .sectors
            .iter()
            .map(|s| {
                let r = Reading {
                    health: health.iter().find(|h| h.target == s.id),
                    queue: queues.iter().find(|q| q.target == s.id),
                    attempts: attempts.iter().find(|a| a.target == s.id),
                    cursor: cursors.iter().find(|c| c.sector == s.id),
                };
                board_line(s, enabled, &r, now)
            })
            .collect())
    }
}

fn board_line(
    s: &crate::config::SectorSettings,
    enabled: bool,
    r: &Reading<'_>,
    now: i64,
) -> BoardLine {
    BoardLine {
        sector: s.id.clone(),
        name: s.name.clone(),
        state: board_state(enabled, s.base_url.is_some(), r),
        base_url: s.base_url.clone(),
        pull: s.mode == SectorMode::Pull,
        pending: r.queue.map_or(0, |q| q.pending),
        dead: r.queue.map_or(0, |q| q.dead),
        oldest_age_s: r
            .queue
            .and_then(|q| q.oldest_us)
            .map(|o| (now - o) / 1_000_000),
        streak: r.health.map_or(0, |h| h.streak),
        last_status: r.health.and_then(|h| h.last_status),
        last_error: r.health.and_then(|h| h.last_error.clone()),
        since_us: r.health.map(|h| h.since_us),
        last_success_us: r.health.and_then(|h| h.last_success_us),
        delivered_24h: r.attempts.map_or(0, |a| a.delivered),
        failed_24h: r.attempts.map_or(0, |a| a.failed),
        cursor: r.cursor.map(|c| c.since.clone()),
        last_poll_us: r.cursor.map(|c| c.updated_us),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DeliveryState;

    fn entry(status: Option<i64>) -> OutboxEntry {
        OutboxEntry {
            id: 1,
            target: "gp".into(),
            source: "hospital".into(),
            gid: "g".into(),
            version: 1,
            rtype: "Condition".into(),
            patient_id: None,
            route: "care".into(),
            state: DeliveryState::Pending,
            attempts: 1,
            created_us: 0,
            next_us: 0,
            updated_us: 0,
            last_status: status,
            last_error: status.map(|s| format!("HTTP {s}")),
            target_id: None,
            target_version: None,
        }
    }

    #[test]
    fn failing_is_raised_once_and_cleared_once() {
        let x = ExchangeSettings::default();
        let mut h = None;
        let mut changes = Vec::new();
        for i in 0..10 {
            let (next, c) = step(&x, h, &entry(Some(503)), Seen::Failed, Some(0), i);
            changes.extend(c);
            h = Some(next);
        }
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(matches!(changes[0], Change::Failing { streak: 3, .. }));
        for i in 10..13 {
            let (next, c) = step(&x, h, &entry(None), Seen::Delivered, None, i);
            changes.extend(c);
            h = Some(next);
        }
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(matches!(changes[1], Change::Recovered { .. }));
        assert_eq!(h.map(|h| (h.state, h.streak)), Some((HEALTHY.into(), 0)));
    }

    #[test]
    fn an_old_queue_fails_before_the_streak() {
        let x = ExchangeSettings::default();
        let now = 1_000 * 1_000_000;
        let (h, c) = step(&x, None, &entry(None), Seen::Failed, Some(0), now);
        assert_eq!(h.state, FAILING);
        assert!(matches!(c, Some(Change::Failing { by_age: true, .. })));
        let (_, c) = step(&x, None, &entry(None), Seen::Failed, Some(now - 5), now);
        assert_eq!(c, None);
    }
}
