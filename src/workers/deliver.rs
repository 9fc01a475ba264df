//! Delivery workers: one per target sector (a sector that is down never slows the others).
//!
//! A worker leases a batch of due entries of its target (oldest first; an entry waits while an
//! older entry of the same resource is pending, so version n+1 never overtakes version n),
//! then for each entry: maps the stored version for the target, sends it (update of the known
//! target id, else conditional create with `If-None-Exist` on the source-resource identifier,
//! in a transaction Bundle when it carries conditional references), and records the outcome
//! with its audit row in one transaction. The HTTP request never runs inside a database
//! transaction; the lease keeps other replicas off the entry meanwhile.
//!
//! Failures: timeouts, connection errors, 408, 429 and 5xx are retried with exponential
//! back-off and jitter, and pause the whole queue of that target until the retry is due (the
//! next entries would fail the same way); other 4xx are permanent. After
//! `exchange.max_attempts` or `exchange.max_age_secs` an entry is dead-lettered: a metric, a
//! warning in the log, an audit row, and `GET /admin/deliveries?state=dead`.

use rand::RngExt;
use reqwest::header::{self, HeaderMap};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::audit::{self, Action, Actor, Interaction, Outcome};
use crate::config::{OutboundAuth, SectorSettings};
use crate::exchange::map::{Mapped, Mapper};
use crate::fhir::FHIR_JSON;
use crate::gateway::Gateway;
use crate::ids::content_hash;
use crate::outbound::{Outbound, kind};
use crate::store::{Delivered, Finish, OutboxEntry, StoreError};

/// What one attempt came to.
#[derive(Debug)]
enum Attempt {
    Sent {
        status: u16,
        target_id: String,
        target_version: Option<String>,
        hash: String,
        mapped: Box<Mapped>,
        update: bool,
    },
    /// The mapped content equals what the target already holds.
    Unchanged {
        delivered: Delivered,
    },
    Superseded,
    Deferred,
    Failed(Failure),
}

#[derive(Debug, Clone)]
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
                    paused_until = self.process_batch(&target, batch, &shutdown).await;
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
    pub async fn step(&self, target: &str) -> Result<usize, StoreError> {
        let batch = self.claim(target).await?;
        let n = batch.len();
        let (_tx, rx) = watch::channel(false);
        self.process_batch(target, batch, &rx).await;
        Ok(n)
    }

    async fn claim(&self, target: &str) -> Result<Vec<OutboxEntry>, StoreError> {
        let x = &self.gateway.settings().exchange;
        let now = crate::fhir::time::now_us();
        // The lease outlasts every request of the batch (each bounded by the request timeout).
        let lease = Duration::from_millis(x.request_timeout_ms)
            .saturating_mul(2 * x.batch + 1)
            .saturating_add(Duration::from_secs(30));
        let mut tx = self.gateway.store().begin().await?;
        let batch = tx
            .outbox_claim(
                target,
                &self.owner,
                now,
                now.saturating_add(us(lease)),
                i64::from(x.batch),
            )
            .await?;
        tx.commit().await?;
        Ok(batch)
    }

    /// Processes a claimed batch in order. Returns when the queue should pause (a retryable
    /// failure): the rest of the batch is given back.
    async fn process_batch(
        &self,
        target: &str,
        batch: Vec<OutboxEntry>,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<Instant> {
        let mut iter = batch.into_iter();
        let mut pause = None;
        for e in iter.by_ref() {
            match self.process(&e).await {
                Ok(Some(wait)) => {
                    pause = Some(Instant::now() + wait);
                    break;
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(target_sector = %target, entry = e.id, error = %err, "could not record a delivery outcome");
                    pause = Some(
                        Instant::now()
                            + Duration::from_millis(self.gateway.settings().exchange.idle_poll_ms),
                    );
                    break;
                }
            }
            if *shutdown.borrow() {
                break;
            }
        }
        let rest: Vec<OutboxEntry> = iter.collect();
        if !rest.is_empty()
            && let Err(err) = self.release(&rest).await
        {
            tracing::warn!(target_sector = %target, error = %err, "could not release leased entries; they return when the lease ends");
        }
        pause
    }

    async fn release(&self, entries: &[OutboxEntry]) -> Result<(), StoreError> {
        let mut tx = self.gateway.store().begin().await?;
        for e in entries {
            tx.outbox_release(e.id, &self.owner).await?;
        }
        tx.commit().await
    }

    /// One attempt at one entry, recorded. `Some(wait)` asks the worker to pause the queue.
    async fn process(&self, e: &OutboxEntry) -> Result<Option<Duration>, StoreError> {
        let x = &self.gateway.settings().exchange;
        let started = Instant::now();
        let attempt = self.attempt(e).await?;
        let now = crate::fhir::time::now_us();
        let metrics = &self.gateway.metrics();
        let mut tx = self.gateway.store().begin().await?;
        let mut pause = None;
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
        let outcome_label;
        match attempt {
            Attempt::Sent {
                status,
                target_id,
                target_version,
                hash,
                mapped,
                update,
            } => {
                tx.delivered_put(
                    &Delivered {
                        target: e.target.clone(),
                        gid: e.gid.clone(),
                        rtype: e.rtype.clone(),
                        target_id: target_id.clone(),
                        target_version: target_version.clone(),
                        version: e.version,
                        hash,
                    },
                    now,
                )
                .await?;
                tx.outbox_finish(
                    e.id,
                    &self.owner,
                    &Finish::Delivered {
                        status: i64::from(status),
                        target_id: target_id.clone(),
                        target_version,
                    },
                )
                .await?;
                row.action = if update { "U".into() } else { "C".into() };
                row.detail = Some(format!(
                    "version {} delivered as {}/{} ({status}) by {}; mapped: {} codes translated, {} not accepted by the target's equivalence policy, {} references rewritten",
                    e.version,
                    e.rtype,
                    target_id,
                    self.owner,
                    mapped.codes.translated,
                    mapped.codes.not_accepted,
                    mapped.references
                ));
                metrics
                    .delivery_duration
                    .get_or_create(&crate::metrics::TargetLabels {
                        target: e.target.clone(),
                    })
                    .observe(started.elapsed().as_secs_f64());
                outcome_label = "delivered";
            }
            Attempt::Unchanged { delivered } => {
                tx.delivered_put(
                    &Delivered {
                        version: e.version,
                        ..delivered.clone()
                    },
                    now,
                )
                .await?;
                tx.outbox_finish(
                    e.id,
                    &self.owner,
                    &Finish::Delivered {
                        status: 304,
                        target_id: delivered.target_id.clone(),
                        target_version: delivered.target_version.clone(),
                    },
                )
                .await?;
                row.detail = Some(format!(
                    "version {} maps to what {}/{} already holds; nothing sent",
                    e.version, e.rtype, delivered.target_id
                ));
                outcome_label = "unchanged";
            }
            Attempt::Superseded => {
                tx.outbox_finish(e.id, &self.owner, &Finish::Superseded)
                    .await?;
                row.detail = Some(format!(
                    "version {} not sent: a later version already reached the target",
                    e.version
                ));
                outcome_label = "superseded";
            }
            Attempt::Deferred => {
                let wait = Duration::from_millis(x.retry_initial_ms);
                tx.outbox_finish(
                    e.id,
                    &self.owner,
                    &Finish::Deferred {
                        next_us: now.saturating_add(us(wait)),
                    },
                )
                .await?;
                tx.commit().await?;
                return Ok(None);
            }
            Attempt::Failed(f) => {
                let attempts = u32::try_from(e.attempts + 1).unwrap_or(u32::MAX);
                let too_old = now.saturating_sub(e.created_us)
                    > i64::try_from(x.max_age_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
                let status = f.status.map(i64::from);
                if f.retryable && attempts < x.max_attempts && !too_old {
                    let wait = backoff(x.retry_initial_ms, x.retry_max_ms, attempts, f.retry_after);
                    tx.outbox_finish(
                        e.id,
                        &self.owner,
                        &Finish::Retry {
                            status,
                            error: f.error.clone(),
                            next_us: now.saturating_add(us(wait)),
                        },
                    )
                    .await?;
                    row.outcome = Outcome::MinorFailure.code().into();
                    row.detail = Some(format!(
                        "version {} attempt {attempts} failed: {}; retry in {} ms",
                        e.version,
                        f.error,
                        wait.as_millis()
                    ));
                    pause = Some(wait);
                    outcome_label = "retry";
                } else {
                    tx.outbox_finish(
                        e.id,
                        &self.owner,
                        &Finish::Dead {
                            status,
                            error: f.error.clone(),
                        },
                    )
                    .await?;
                    let why = if !f.retryable {
                        "a permanent failure".to_owned()
                    } else if too_old {
                        format!("older than {} s", x.max_age_secs)
                    } else {
                        format!("{attempts} attempts")
                    };
                    row.outcome = Outcome::SeriousFailure.code().into();
                    row.detail = Some(format!(
                        "version {} dead-lettered after {why}: {}",
                        e.version, f.error
                    ));
                    metrics
                        .dead_letters
                        .get_or_create(&crate::metrics::TargetLabels {
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
                    outcome_label = "dead";
                }
            }
        }
        tx.audit(&row).await?;
        tx.commit().await?;
        metrics.delivery(&e.target, outcome_label);
        Ok(pause)
    }

    /// Maps and sends one entry (no transaction is open during the request).
    async fn attempt(&self, e: &OutboxEntry) -> Result<Attempt, StoreError> {
        let gw = &self.gateway;
        let Some(target) = gw.settings().sector(&e.target).cloned() else {
            return Ok(Attempt::Failed(Failure::permanent(
                None,
                format!("sector '{}' is no longer configured", e.target),
            )));
        };
        let (known, mapped) = {
            let mut tx = gw.store().begin_read().await?;
            let known = tx.delivered_get(&e.target, &e.gid).await?;
            if known.as_ref().is_some_and(|d| d.version >= e.version) {
                return Ok(Attempt::Superseded);
            }
            let Some(body) = tx.version_body(&e.gid, e.version).await? else {
                return Ok(Attempt::Failed(Failure::permanent(
                    None,
                    "the stored version is missing",
                )));
            };
            let rid = tx.get(&e.gid).await?.map(|s| s.rid).unwrap_or_default();
            let what = || format!("{}/{} version {}", e.rtype, e.gid, e.version);
            let body: Value = match crate::store::parse_body(what, &body) {
                Ok(v) => v,
                Err(_) => {
                    return Ok(Attempt::Failed(Failure::permanent(
                        None,
                        "the stored version is not JSON",
                    )));
                }
            };
            let mapper = Mapper {
                settings: gw.settings(),
                mapping: self.gateway.mapping(),
                schema: &gw.validator().schema,
            };
            let mapped = mapper.map(&mut *tx, e, &rid, body).await?;
            (known, mapped)
        };
        if mapped.deferred {
            return Ok(Attempt::Deferred);
        }
        // The hash covers the content as the target will hold it, without the id.
        let hash = content_hash(mapped.body.to_string().as_bytes());
        if let Some(d) = &known
            && d.hash == hash
        {
            return Ok(Attempt::Unchanged {
                delivered: d.clone(),
            });
        }
        let mut result = self.send(&target, e, &mapped, known.as_ref()).await;
        if known.is_some()
            && let Err(f) = &result
            && matches!(f.status, Some(404 | 410))
        {
            // The target no longer has the resource: create it again.
            result = self.send(&target, e, &mapped, None).await;
        }
        Ok(match result {
            Ok((status, target_id, target_version)) => Attempt::Sent {
                status,
                target_id,
                target_version,
                hash,
                mapped: Box::new(mapped),
                update: known.is_some(),
            },
            Err(f) => Attempt::Failed(f),
        })
    }

    /// Sends a mapped resource; returns (status, target id, target version).
    async fn send(
        &self,
        target: &SectorSettings,
        e: &OutboxEntry,
        mapped: &Mapped,
        known: Option<&Delivered>,
    ) -> Result<(u16, String, Option<String>), Failure> {
        let Some(base) = target.base_url.as_deref().map(|b| b.trim_end_matches('/')) else {
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
        let mut body = mapped.body.clone();
        let if_none_exist = mapped
            .business_id
            .as_ref()
            .map(|(s, v)| format!("identifier={}|{}", encode(s), encode(v)));
        let (method, url, transaction) = match (known, mapped.conditional) {
            (Some(d), false) => {
                body["id"] = json!(d.target_id);
                (
                    reqwest::Method::PUT,
                    format!("{base}/{}/{}", e.rtype, d.target_id),
                    false,
                )
            }
            (None, false) => (reqwest::Method::POST, format!("{base}/{}", e.rtype), false),
            (known, true) => {
                let request = match known {
                    Some(d) => {
                        body["id"] = json!(d.target_id);
                        json!({ "method": "PUT", "url": format!("{}/{}", e.rtype, d.target_id) })
                    }
                    None => {
                        let mut r = json!({ "method": "POST", "url": e.rtype });
                        if let Some(q) = &if_none_exist {
                            r["ifNoneExist"] = json!(q);
                        }
                        r
                    }
                };
                body = json!({
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": [{ "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": body, "request": request }]
                });
                (reqwest::Method::POST, base.to_owned(), true)
            }
        };
        let mut req = self
            .outbound
            .http
            .request(method.clone(), &url)
            .header(header::CONTENT_TYPE, FHIR_JSON)
            .header(header::ACCEPT, FHIR_JSON)
            .header("Prefer", "return=representation")
            .body(body.to_string());
        if let Some(a) = &auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        if !transaction
            && method == reqwest::Method::POST
            && let Some(q) = &if_none_exist
        {
            req = req.header("If-None-Exist", q);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(err) => return Err(Failure::retryable(None, kind(&err))),
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = match resp.text().await {
            Ok(t) => t,
            Err(err) => return Err(Failure::retryable(Some(status), kind(&err))),
        };
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            if status == 401 && matches!(target.auth, OutboundAuth::ClientCredentials { .. }) {
                self.outbound.invalidate(&target.id);
            }
            let retryable = matches!(status, 401 | 408 | 429) || status >= 500;
            let mut f = Failure {
                status: Some(status),
                error: describe_failure(status, &json),
                retryable: retryable
                    && (status != 401
                        || matches!(target.auth, OutboundAuth::ClientCredentials { .. })),
                retry_after: retry_after(&headers),
            };
            if status == 401 && !f.retryable {
                f.error.push_str(" (check the sector's outbound auth)");
            }
            return Err(f);
        }
        let (id, version) = if transaction {
            let first = json.pointer("/entry/0").cloned().unwrap_or(Value::Null);
            let status_text = first
                .pointer("/response/status")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !status_text.starts_with('2') {
                return Err(Failure::permanent(
                    Some(status),
                    format!("the transaction entry answered '{status_text}'"),
                ));
            }
            let from_location = first
                .pointer("/response/location")
                .and_then(Value::as_str)
                .and_then(|l| id_from_location(l, &e.rtype));
            let from_resource = first
                .get("resource")
                .and_then(|r| id_from_resource(r, &e.rtype));
            let id = from_resource
                .clone()
                .map(|(i, _)| i)
                .or_else(|| from_location.clone().map(|(i, _)| i));
            let version = from_resource
                .and_then(|(_, v)| v)
                .or_else(|| from_location.and_then(|(_, v)| v));
            (id, version)
        } else {
            let from_resource = id_from_resource(&json, &e.rtype);
            let from_location = headers
                .get(header::LOCATION)
                .or_else(|| headers.get(header::CONTENT_LOCATION))
                .and_then(|v| v.to_str().ok())
                .and_then(|l| id_from_location(l, &e.rtype));
            let etag = headers
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(|t| t.trim_start_matches("W/").trim_matches('"').to_owned());
            let id = from_resource
                .clone()
                .map(|(i, _)| i)
                .or_else(|| from_location.clone().map(|(i, _)| i))
                .or_else(|| known.map(|d| d.target_id.clone()));
            let version = from_resource
                .and_then(|(_, v)| v)
                .or_else(|| from_location.and_then(|(_, v)| v))
                .or(etag);
            (id, version)
        };
        match id {
            Some(id) => Ok((status, id, version)),
            None => Err(Failure::permanent(
                Some(status),
                format!("the server answered {status} without the id of the resource"),
            )),
        }
    }
}

fn encode(s: &str) -> String {
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
}
