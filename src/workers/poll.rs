//! Pull mode: for each sector with `mode = "pull"` (or `both`), one poller at a time (a lease
//! in the store, so that of several replicas only one polls a sector) searches the sector's
//! endpoint for what changed and feeds it through the same pipeline as a push.
//!
//! Per resource type (Patient first, so that links exist, then every type a route carries from
//! the sector) it asks `Type?_lastUpdated=ge<cursor>&_sort=_lastUpdated&_count=N`, following
//! `next` links, or `_offset` paging when the server gives none. The cursor is durable: the last
//! `meta.lastUpdated` read and the `id|versionId` of every version read at exactly that instant,
//! so versions sharing a timestamp across a page boundary are neither lost nor ingested twice.
//!
//! Echo suppression: a resource carrying the gateway's source-resource identifier is a copy the
//! gateway delivered there, as is a resource whose id and version the gateway recorded when
//! delivering it; neither is ingested. Invalid resources are quarantined (kept, counted,
//! audited) and never forwarded.

use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use crate::access::Caller;
use crate::access::{Client, Role};
use crate::config::SectorSettings;
use crate::exchange::SOURCE_ID_SYSTEM;
use crate::exchange::route::pull_types;
use crate::fhir::time::parse_instant;
use crate::gateway::{Entry, Gateway, GatewayError, Method};
use crate::outbound::{Outbound, kind};
use crate::store::PollCursor;

/// Counts of one poll cycle.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PollReport {
    /// False when another replica holds the sector's lease.
    pub polled: bool,
    pub read: usize,
    pub stored: usize,
    pub unchanged: usize,
    pub echo: usize,
    pub quarantined: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("the sector answered {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(&'static str),
    #[error("the sector's answer is not a searchset Bundle")]
    NotABundle,
    #[error("{0}")]
    Auth(String),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

pub struct Poller {
    pub gateway: Arc<Gateway>,
    pub outbound: Arc<Outbound>,
    pub owner: String,
}

impl Poller {
    pub async fn run(self: Arc<Self>, sector: String, mut shutdown: watch::Receiver<bool>) {
        let every = Duration::from_millis(self.gateway.settings().exchange.poll_interval_ms);
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.cycle(&sector).await {
                Ok(r) if r.polled => tracing::debug!(
                    sector = %sector, read = r.read, stored = r.stored, unchanged = r.unchanged,
                    echo = r.echo, quarantined = r.quarantined, "poll cycle"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(sector = %sector, error = %e, "poll cycle failed; the cursor stays where it was")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One poll of every pulled type of a sector (when this replica holds its lease).
    pub async fn cycle(&self, sector_id: &str) -> Result<PollReport, PollError> {
        let gw = &self.gateway;
        let Some(sector) = gw.settings().sector(sector_id).cloned() else {
            return Ok(PollReport::default());
        };
        let x = &gw.settings().exchange;
        let now = crate::fhir::time::now_us();
        let hold = Duration::from_millis(x.poll_interval_ms.saturating_mul(2))
            + Duration::from_millis(x.request_timeout_ms.saturating_mul(4));
        let mut tx = gw.store().begin().await?;
        let mine = tx
            .lease_acquire(
                &format!("poll:{sector_id}"),
                &self.owner,
                now,
                now.saturating_add(i64::try_from(hold.as_micros()).unwrap_or(i64::MAX)),
            )
            .await?;
        tx.commit().await?;
        if !mine {
            return Ok(PollReport::default());
        }
        let mut report = PollReport {
            polled: true,
            ..PollReport::default()
        };
        for rtype in pull_types(gw.settings(), sector_id) {
            self.poll_type(&sector, &rtype, &mut report).await?;
        }
        Ok(report)
    }

    async fn poll_type(
        &self,
        sector: &SectorSettings,
        rtype: &str,
        report: &mut PollReport,
    ) -> Result<(), PollError> {
        let gw = &self.gateway;
        let Some(base) = sector.base_url.as_deref().map(|b| b.trim_end_matches('/')) else {
            return Ok(());
        };
        let page = gw.settings().exchange.poll_page_size;
        let start = {
            let mut tx = gw.store().begin_read().await?;
            tx.cursor_get(&sector.id, rtype).await?.unwrap_or_default()
        };
        let mut cursor = start.clone();
        let query = search_url(base, rtype, page, &start.since);
        let mut url = query.clone();
        let mut offset = 0usize;
        loop {
            let bundle = self.get(sector, &url).await?;
            let entries = matches_of(&bundle, rtype);
            let n = entries.len();
            for r in entries {
                self.take(sector, rtype, r, &start, &mut cursor, report)
                    .await?;
            }
            if cursor != start {
                let mut tx = gw.store().begin().await?;
                tx.cursor_put(&sector.id, rtype, &cursor).await?;
                tx.commit().await?;
            }
            match next_link(&bundle) {
                Some(n) if n != url => url = n,
                _ if n >= page as usize => {
                    offset += n;
                    url = format!("{query}&_offset={offset}");
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// One resource read from the sector: skipped when the cursor's start already covers it,
    /// else an echo, stored, unchanged or quarantined; the cursor moves past it either way
    /// (except on a store failure, which aborts the cycle before the cursor is saved).
    async fn take(
        &self,
        sector: &SectorSettings,
        rtype: &str,
        resource: Value,
        start: &PollCursor,
        cursor: &mut PollCursor,
        report: &mut PollReport,
    ) -> Result<(), PollError> {
        let Some(read) = Read::of(&resource) else {
            return Ok(());
        };
        if read.seen_at(start) {
            return Ok(());
        }
        report.read += 1;
        if self
            .is_echo(sector, rtype, &read.id, read.version.as_deref(), &resource)
            .await?
        {
            report.echo += 1;
            self.gateway.metrics().pull(&sector.id, "echo");
        } else {
            self.ingest(sector, rtype, &read, resource, report).await?;
        }
        read.advance(cursor);
        Ok(())
    }

    /// Stores a pulled resource as a PUT of the sector (quarantined when it is refused).
    async fn ingest(
        &self,
        sector: &SectorSettings,
        rtype: &str,
        read: &Read,
        resource: Value,
        report: &mut PollReport,
    ) -> Result<(), PollError> {
        let gw = &self.gateway;
        let entry = Entry {
            location: None,
            method: Method::Put,
            rtype: rtype.to_owned(),
            url_id: Some(read.id.clone()),
            if_none_exist: None,
            if_match: None,
            full_url: None,
            resource: resource.clone(),
        };
        match gw.put_one(&poller_caller(sector), &sector.id, entry).await {
            Ok(applied) if applied.outcome.changed => {
                report.stored += 1;
                gw.metrics().pull(&sector.id, "stored");
            }
            Ok(_) => {
                report.unchanged += 1;
                gw.metrics().pull(&sector.id, "unchanged");
            }
            Err(GatewayError::Store(e)) => return Err(PollError::Store(e)),
            Err(e) => {
                self.quarantine(sector, rtype, read, &resource, &quarantine_issues(&e))
                    .await?;
                report.quarantined += 1;
                gw.metrics().pull(&sector.id, "quarantined");
                tracing::warn!(sector = %sector.id, resource_type = %rtype, "a pulled resource failed validation and was quarantined");
            }
        }
        Ok(())
    }

    /// Keeps a refused resource and why it was refused.
    async fn quarantine(
        &self,
        sector: &SectorSettings,
        rtype: &str,
        read: &Read,
        resource: &Value,
        issues: &str,
    ) -> Result<(), PollError> {
        let mut tx = self.gateway.store().begin().await?;
        tx.quarantine_add(
            &sector.id,
            rtype,
            &read.id,
            read.version.as_deref(),
            &resource.to_string(),
            issues,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A copy the gateway itself delivered to this sector.
    async fn is_echo(
        &self,
        sector: &SectorSettings,
        rtype: &str,
        id: &str,
        version: Option<&str>,
        resource: &Value,
    ) -> Result<bool, PollError> {
        let tagged = crate::fhir::identifiers(resource)
            .iter()
            .any(|(s, _)| *s == SOURCE_ID_SYSTEM);
        if tagged {
            return Ok(true);
        }
        let mut tx = self.gateway.store().begin_read().await?;
        Ok(
            match tx.delivered_by_target_id(&sector.id, rtype, id).await? {
                Some(d) => d.target_version.is_none() || d.target_version.as_deref() == version,
                None => false,
            },
        )
    }

    async fn get(&self, sector: &SectorSettings, url: &str) -> Result<Value, PollError> {
        let auth = self
            .outbound
            .authorization(sector)
            .await
            .map_err(|e| PollError::Auth(e.0))?;
        let resp = self
            .outbound
            .fhir_get(url, auth)
            .send()
            .await
            .map_err(|e| PollError::Transport(kind(&e)))?;
        let status = resp.status().as_u16();
        if status == 401 {
            self.outbound.invalidate(&sector.id);
        }
        if status != 200 {
            return Err(PollError::Status(status));
        }
        let bundle: Value = resp
            .json()
            .await
            .map_err(|e| PollError::Transport(kind(&e)))?;
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(PollError::NotABundle);
        }
        Ok(bundle)
    }
}

/// What the cursor needs of a resource read: its id, version and `meta.lastUpdated`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Read {
    id: String,
    version: Option<String>,
    updated: String,
    /// `id|versionId`, as the cursor remembers it.
    key: String,
}

impl Read {
    /// `None` for a resource without an id (it is skipped).
    fn of(resource: &Value) -> Option<Read> {
        let id = resource.get("id").and_then(Value::as_str)?.to_owned();
        let version = resource
            .pointer("/meta/versionId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let updated = resource
            .pointer("/meta/lastUpdated")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let key = format!("{id}|{}", version.as_deref().unwrap_or(""));
        Some(Read {
            id,
            version,
            updated,
            key,
        })
    }

    /// Read in an earlier cycle: at the cursor's instant, among the versions it remembers.
    fn seen_at(&self, start: &PollCursor) -> bool {
        let at_start = !start.since.is_empty()
            && parse_instant(&self.updated).is_some()
            && parse_instant(&self.updated) == parse_instant(&start.since);
        at_start && start.seen.contains(&self.key)
    }

    /// Moves the cursor to this resource's instant (a later one starts a new list of versions
    /// seen; the same one adds to it). A resource without a valid instant leaves it alone.
    fn advance(&self, cursor: &mut PollCursor) {
        match (parse_instant(&self.updated), parse_instant(&cursor.since)) {
            (Some(u), Some(c)) if u > c => {
                cursor.since = self.updated.clone();
                cursor.seen = vec![self.key.clone()];
            }
            (Some(u), Some(c)) if u == c && !cursor.seen.contains(&self.key) => {
                cursor.seen.push(self.key.clone());
            }
            (Some(_), None) => {
                cursor.since = self.updated.clone();
                cursor.seen = vec![self.key.clone()];
            }
            _ => {}
        }
    }
}

/// The caller a pulled resource is stored as: the sector itself.
fn poller_caller(sector: &SectorSettings) -> Caller {
    Caller {
        client: Client::system(
            format!("poller:{}", sector.id),
            Role::Sector(sector.id.clone()),
        ),
        request_id: None,
    }
}

/// Why a pulled resource was refused, as an OperationOutcome (JSON text).
fn quarantine_issues(e: &GatewayError) -> String {
    match e {
        GatewayError::Invalid(i) | GatewayError::Unprocessable(i) => {
            crate::fhir::outcome::operation_outcome(i).to_string()
        }
        other => crate::fhir::outcome::operation_outcome(&[crate::fhir::outcome::Issue::error(
            "processing",
            other.to_string(),
        )])
        .to_string(),
    }
}

/// The first search of a type: oldest change first, from the cursor's instant on (inclusive).
fn search_url(base: &str, rtype: &str, page: u32, since: &str) -> String {
    let mut query = format!("{base}/{rtype}?_sort=_lastUpdated&_count={page}");
    if !since.is_empty() {
        query.push_str("&_lastUpdated=ge");
        query.push_str(
            &percent_encoding::utf8_percent_encode(since, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
        );
    }
    query
}

/// The resources of a searchset page that matched the search and are of the searched type.
fn matches_of(bundle: &Value, rtype: &str) -> Vec<Value> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|e| {
                    e.pointer("/search/mode")
                        .and_then(Value::as_str)
                        .unwrap_or("match")
                        == "match"
                })
                .filter_map(|e| e.get("resource").cloned())
                .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some(rtype))
                .collect()
        })
        .unwrap_or_default()
}

/// The `next` link of a searchset page.
fn next_link(bundle: &Value) -> Option<String> {
    bundle
        .get("link")
        .and_then(Value::as_array)
        .and_then(|links| {
            links
                .iter()
                .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))
        })
        .and_then(|l| l.get("url"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(id: &str, version: &str, updated: &str) -> Read {
        Read::of(&json!({ "resourceType": "Patient", "id": id, "meta": { "versionId": version, "lastUpdated": updated } }))
            .unwrap()
    }

    #[test]
    fn the_cursor_moves_to_the_latest_instant_and_remembers_its_versions() {
        let mut cursor = PollCursor::default();
        read("a", "1", "2024-01-01T00:00:00Z").advance(&mut cursor);
        assert_eq!(cursor.since, "2024-01-01T00:00:00Z");
        assert_eq!(cursor.seen, vec!["a|1".to_owned()]);
        read("b", "3", "2024-01-01T00:00:00.000Z").advance(&mut cursor);
        assert_eq!(cursor.seen, vec!["a|1".to_owned(), "b|3".to_owned()]);
        read("b", "3", "2024-01-01T00:00:00Z").advance(&mut cursor);
        assert_eq!(cursor.seen.len(), 2);
        read("c", "1", "2023-12-31T00:00:00Z").advance(&mut cursor);
        assert_eq!(cursor.since, "2024-01-01T00:00:00Z");
        read("d", "1", "not a time").advance(&mut cursor);
        assert_eq!(cursor.seen.len(), 2);
        read("c", "2", "2024-01-02T00:00:00Z").advance(&mut cursor);
        assert_eq!(cursor.since, "2024-01-02T00:00:00Z");
        assert_eq!(cursor.seen, vec!["c|2".to_owned()]);
    }

    #[test]
    fn versions_read_at_the_start_instant_are_skipped() {
        let start = PollCursor {
            since: "2024-01-01T00:00:00Z".into(),
            seen: vec!["a|1".into()],
        };
        assert!(read("a", "1", "2024-01-01T00:00:00Z").seen_at(&start));
        assert!(!read("a", "2", "2024-01-01T00:00:00Z").seen_at(&start));
        assert!(!read("a", "1", "2024-01-02T00:00:00Z").seen_at(&start));
        assert!(!read("a", "1", "2024-01-01T00:00:00Z").seen_at(&PollCursor::default()));
        assert_eq!(Read::of(&json!({ "resourceType": "Patient" })), None);
        let bare = Read::of(&json!({ "resourceType": "Patient", "id": "x" })).unwrap();
        assert_eq!((bare.key.as_str(), bare.updated.as_str()), ("x|", ""));
    }

    #[test]
    fn searchset_pages_are_read() {
        assert_eq!(
            search_url("http://s/fhir", "Condition", 50, ""),
            "http://s/fhir/Condition?_sort=_lastUpdated&_count=50"
        );
        assert_eq!(
            search_url(
                "http://s/fhir",
                "Condition",
                50,
                "2024-01-01T00:00:00+01:00"
            ),
            "http://s/fhir/Condition?_sort=_lastUpdated&_count=50&_lastUpdated=ge2024%2D01%2D01T00%3A00%3A00%2B01%3A00"
        );
        let page = json!({
            "resourceType": "Bundle",
            "link": [{ "relation": "self", "url": "s" }, { "relation": "next", "url": "n" }],
            "entry": [
                { "resource": { "resourceType": "Condition", "id": "1" } },
                { "resource": { "resourceType": "Condition", "id": "2" }, "search": { "mode": "match" } },
                { "resource": { "resourceType": "Patient", "id": "3" }, "search": { "mode": "include" } },
                { "resource": { "resourceType": "OperationOutcome" }, "search": { "mode": "outcome" } },
                { "resource": { "resourceType": "Patient", "id": "4" } }
            ]
        });
        let matched = matches_of(&page, "Condition");
        let ids: Vec<&str> = matched.iter().filter_map(|r| r["id"].as_str()).collect();
        assert_eq!(ids, ["1", "2"]);
        assert_eq!(next_link(&page), Some("n".into()));
        assert_eq!(next_link(&json!({ "resourceType": "Bundle" })), None);
    }
}
