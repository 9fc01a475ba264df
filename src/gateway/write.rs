//! The write pipeline of one request: authorise, validate, resolve ids and references, link
//! the patient, store, route to the outbox, detect, audit — the same for the HTTP API, the
//! poller and the demo loader.
//!
//! Invariant: what a request changes, its outbox entries, its alert changes and its audit rows
//! commit in one transaction; a request that is rejected changes nothing and leaves one audit
//! row saying why.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::alerts::AlertEvent;
use super::entry::{
    Applied, Entry, Method, ResponseBundle, bundle_entries, bundle_links, check_entry_shape,
    edited_patient_reference, prepare_stored, response_bundle,
};
use super::params;
use super::{Gateway, GatewayError};
use crate::access::{Caller, Request, authorize};
use crate::audit::{self, Action, Actor, AuditRow, Interaction, Outcome};
use crate::config::{SectorSettings, Settings};
use crate::exchange::resolve::locate;
use crate::exchange::route::Routed;
use crate::fhir::json::Node;
use crate::fhir::outcome::Issue;
use crate::fhir::time::{instant, now_us};
use crate::fhir::tree::{Edits, write_stored};
use crate::fhir::{self, identifiers, is_valid_id};
use crate::ids::content_hash;
use crate::store::{PutOutcome, SearchFilter, StoreError, StoreTx};

/// How many times a write transaction runs before a busy database is answered with 503.
const BUSY_ATTEMPTS: u32 = 6;

/// The pause before attempt `attempt + 1`: a random share of 10 ms doubling per attempt, so
/// that transactions that collided do not collide again in step.
fn busy_pause(attempt: u32) -> std::time::Duration {
    use rand::RngExt;
    let ceiling = 10u64 << attempt.min(6);
    std::time::Duration::from_millis(rand::rng().random_range(1..=ceiling))
}

/// The entries of a Bundle, each an entry or the issues that make it unusable.
type ParsedEntries<'a> = Vec<Result<Entry<Node<'a>>, Vec<Issue>>>;

/// A request body parsed once into a tree borrowed from its bytes and validated: the write
/// pipeline reads its entries from that tree and writes their stored forms from it.
#[derive(Debug)]
pub struct Document<'a> {
    pub resource: Node<'a>,
    /// What structural validation found (empty: valid R4).
    pub structural: Vec<Issue>,
}

impl Gateway {
    /// The sector a caller writes under: it must exist, and be the caller's own.
    fn writable_sector(
        &self,
        caller: &Caller,
        sector: &str,
    ) -> Result<&SectorSettings, GatewayError> {
        let s = self
            .sector(sector)
            .ok_or_else(|| GatewayError::NotFound(format!("no sector '{sector}'")))?;
        authorize(caller, Request::WriteSector(sector))?;
        Ok(s)
    }

    /// A sector's FHIR base as clients reach it.
    pub fn sector_base(&self, sector: &str) -> String {
        format!("{}/{sector}", self.fhir_base())
    }

    /// Validates one resource for a sector: structure first (400), then profiles and the
    /// cross-sector reference rule (422). Locations are nested under `location` when given.
    pub fn check(
        &self,
        sector: &SectorSettings,
        resource: &Node<'_>,
        location: Option<&str>,
    ) -> Result<(), GatewayError> {
        let issues = self.validator.structural_node(resource);
        if !issues.is_empty() {
            return Err(GatewayError::Invalid(placed(issues, location)));
        }
        self.check_profile(sector, resource, location)
    }

    /// The second half of [`Gateway::check`], for a resource whose structure was already
    /// validated (a Bundle entry: `Validator::structural` on the Bundle validates every nested
    /// resource against its own type, so the entries are not validated a second time).
    fn check_profile(
        &self,
        sector: &SectorSettings,
        resource: &Node<'_>,
        location: Option<&str>,
    ) -> Result<(), GatewayError> {
        let set = sector.profile.as_deref();
        let rtype = fhir::resource_type(resource).unwrap_or("");
        let rules = self.validator.profile_applies(set, rtype);
        // Only an absolute URL can lie under a configured base ([`locate`]): without one, the
        // walk by type (most of a Bundle's profile checks in P2) finds nothing to refuse.
        let absolute = fhir::any_reference_member(resource, &mut |r| r.contains("://"));
        // The profile rules (JSON Schemas) and the walk by type read an owned tree: one is
        // built when either applies, and only then.
        let mut issues = Vec::new();
        if rules || absolute {
            match resource.to_value() {
                Ok(owned) if rules => {
                    issues.extend(self.validator.profile(set, &owned));
                    if absolute {
                        issues.extend(self.foreign_references(sector, &owned));
                    }
                }
                Ok(owned) => issues.extend(self.foreign_references(sector, &owned)),
                Err(e) => issues.push(unkept_number(&e)),
            }
        }
        issues.extend(spoofed_tags(&sector.id, resource));
        if !issues.is_empty() {
            return Err(GatewayError::Unprocessable(placed(issues, location)));
        }
        Ok(())
    }

    /// The reference policy, the same for every spelling ([`locate`] normalises each absolute
    /// reference of every Reference element, found by type): a sector names only its own
    /// patients, so a reference to another sector's Patient (by any URL under its base, the
    /// gateway's own bases included, literal or conditional) is refused; a reference under a
    /// configured base must name `Type/id` or `Type?identifier=…`. Other references into a
    /// configured sector are that sector's resources (mapped on delivery).
    fn foreign_references(&self, sector: &SectorSettings, resource: &Value) -> Vec<Issue> {
        let mut issues = Vec::new();
        for (path, element) in self.validator.references(resource) {
            let Some(r) = element.get("reference").and_then(Value::as_str) else {
                continue;
            };
            let Some(at) = locate(&self.settings, r) else {
                continue;
            };
            let why = match at.rtype() {
                None => {
                    "the reference lies under a configured sector's FHIR base but names no \
                         Type/id or Type?identifier=<system>|<value>"
                }
                Some("Patient") if at.sector != sector.id => {
                    "the reference points to a Patient of another sector; reference your own \
                     Patient or use Patient?identifier=<system>|<value>"
                }
                Some(_) => continue,
            };
            issues.push(Issue::error("business-rule", why).at(format!("{path}.reference")));
        }
        issues
    }

    /// POST/PUT of one resource under a sector.
    pub async fn put_one(
        &self,
        caller: &Caller,
        sector: &str,
        entry: Entry,
    ) -> Result<Applied, GatewayError> {
        let interaction = match entry.method {
            Method::Put => Interaction::Update,
            Method::Post => Interaction::Create,
        };
        let rtype = entry.rtype.clone();
        let result = self.put_one_inner(caller, sector, entry, interaction).await;
        if let Err(e) = &result {
            self.audit_rejection(caller, Some(sector), interaction, &rtype, e)
                .await;
        }
        result
    }

    async fn put_one_inner(
        &self,
        caller: &Caller,
        sector: &str,
        entry: Entry,
        interaction: Interaction,
    ) -> Result<Applied, GatewayError> {
        let s = self.writable_sector(caller, sector)?;
        check_entry_shape(&entry)?;
        let arena = fhir::json::Arena::new();
        let entry = entry.view(&arena);
        self.check(s, &entry.resource, None)?;
        let mut applied = self.apply(caller, s, vec![entry], interaction).await?;
        Ok(applied.remove(0))
    }

    /// Parses a request body strictly ([`fhir::json`]) into a tree borrowed from `bytes` and
    /// validates it structurally: CPU work, kept off the runtime's workers by the caller.
    pub fn read_document<'a>(
        &self,
        bytes: &'a [u8],
        arena: &'a fhir::json::Arena,
    ) -> Result<Document<'a>, fhir::json::JsonError> {
        let depth = self.settings.server.max_json_depth;
        let resource = fhir::json::parse_borrowed(bytes, arena, depth)?;
        let structural = self.validator.structural_parsed(&resource);
        Ok(Document {
            resource,
            structural,
        })
    }

    /// A `transaction` (all or nothing) or `batch` (entry by entry) Bundle under a sector.
    /// Returns the response Bundle.
    pub async fn bundle(
        &self,
        caller: &Caller,
        sector: &str,
        bundle: Value,
    ) -> Result<Value, GatewayError> {
        let arena = fhir::json::Arena::new();
        let resource = Node::from_value(&bundle, &arena);
        let document = Document {
            structural: self.validator.structural_node(&resource),
            resource,
        };
        let response = self.bundle_document(caller, sector, document).await?;
        Ok(response.to_value())
    }

    /// [`Gateway::bundle`] of a body [`Gateway::read_document`] read.
    pub async fn bundle_document(
        &self,
        caller: &Caller,
        sector: &str,
        document: Document<'_>,
    ) -> Result<ResponseBundle, GatewayError> {
        let result = self.bundle_inner(caller, sector, document).await;
        if let Err(e) = &result {
            self.audit_rejection(caller, Some(sector), Interaction::Transaction, "Bundle", e)
                .await;
        }
        result
    }

    async fn bundle_inner(
        &self,
        caller: &Caller,
        sector: &str,
        document: Document<'_>,
    ) -> Result<ResponseBundle, GatewayError> {
        let Document {
            resource: bundle,
            structural,
        } = document;
        let s = self.writable_sector(caller, sector)?;
        let (kind, entries) = super::cpu_bound(|| {
            let kind = self.bundle_kind(&bundle)?;
            let links = bundle_links(&bundle);
            if !links.is_empty() {
                return Err(GatewayError::Invalid(links));
            }
            // The Bundle itself must be valid R4 in both modes (entries are checked with it).
            Ok((kind, bundle_entries(&bundle)))
        })?;
        if kind == Interaction::Transaction {
            return self.transaction(caller, s, structural, entries).await;
        }
        self.batch(caller, s, structural, entries).await
    }

    /// A Bundle's type (transaction or batch), after the checks that refuse it whole.
    fn bundle_kind(&self, bundle: &Node<'_>) -> Result<Interaction, GatewayError> {
        if fhir::resource_type(bundle) != Some("Bundle") {
            return Err(GatewayError::invalid(
                Issue::error(
                    "invalid",
                    "POST to a sector base takes a transaction or batch Bundle",
                )
                .at("Bundle.resourceType"),
            ));
        }
        let kind = match bundle.get("type").and_then(Node::as_str) {
            Some("transaction") => Interaction::Transaction,
            Some("batch") => Interaction::Batch,
            _ => {
                return Err(GatewayError::invalid(
                    Issue::error("invalid", "Bundle.type must be transaction or batch")
                        .at("Bundle.type"),
                ));
            }
        };
        let count = bundle
            .get("entry")
            .and_then(Node::as_array)
            .map_or(0, <[_]>::len);
        let limit = self.settings.server.max_bundle_entries;
        if count > limit {
            return Err(GatewayError::invalid(
                Issue::error(
                    "too-costly",
                    format!("the Bundle has {count} entries; the limit is {limit}"),
                )
                .at("Bundle.entry"),
            ));
        }
        Ok(kind)
    }

    /// A transaction: every entry valid, or nothing is stored.
    async fn transaction(
        &self,
        caller: &Caller,
        s: &SectorSettings,
        structural: Vec<Issue>,
        entries: ParsedEntries<'_>,
    ) -> Result<ResponseBundle, GatewayError> {
        if !structural.is_empty() {
            return Err(GatewayError::Invalid(structural));
        }
        let entries = entries
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(GatewayError::Invalid)?;
        super::cpu_bound(|| self.check_profiles(s, &entries))?;
        let applied = self
            .apply(caller, s, entries, Interaction::Transaction)
            .await?;
        Ok(super::cpu_bound(|| {
            response_bundle(
                "transaction-response",
                &self.sector_base(&s.id),
                applied.into_iter().map(Ok).collect(),
            )
        }))
    }

    /// Every entry of a transaction against its sector's profile and reference rules; all the
    /// issues found, or none.
    fn check_profiles(
        &self,
        s: &SectorSettings,
        entries: &[Entry<Node<'_>>],
    ) -> Result<(), GatewayError> {
        let mut unprocessable = Vec::new();
        for e in entries {
            let at = e.location.as_deref().map(|l| format!("{l}.resource"));
            match self.check_profile(s, &e.resource, at.as_deref()) {
                Ok(()) => {}
                Err(GatewayError::Unprocessable(i) | GatewayError::Invalid(i)) => {
                    unprocessable.extend(i)
                }
                Err(other) => return Err(other),
            }
        }
        if !unprocessable.is_empty() {
            return Err(GatewayError::Unprocessable(unprocessable));
        }
        Ok(())
    }

    /// A batch: each entry stands alone; a bad entry fails only itself.
    async fn batch(
        &self,
        caller: &Caller,
        s: &SectorSettings,
        structural: Vec<Issue>,
        entries: ParsedEntries<'_>,
    ) -> Result<ResponseBundle, GatewayError> {
        let mut results = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            let prefix = format!("Bundle.entry[{i}]");
            let result = match entry {
                Err(issues) => Err(GatewayError::Invalid(issues)),
                Ok(e) => self.batch_entry(caller, s, &structural, &prefix, e).await,
            };
            if let Err(e) = &result {
                if let GatewayError::Store(_) = e {
                    return Err(GatewayError::Store(StoreError::Busy));
                }
                self.audit_rejection(caller, Some(&s.id), Interaction::Batch, "Bundle", e)
                    .await;
            }
            results.push(result);
        }
        Ok(response_bundle(
            "batch-response",
            &self.sector_base(&s.id),
            results,
        ))
    }

    /// One entry of a batch: its share of the Bundle's structural issues, its profile, then
    /// its own transaction.
    async fn batch_entry(
        &self,
        caller: &Caller,
        s: &SectorSettings,
        structural: &[Issue],
        prefix: &str,
        e: Entry<Node<'_>>,
    ) -> Result<Applied, GatewayError> {
        let nested = format!("{prefix}.");
        let entry_issues: Vec<Issue> = structural
            .iter()
            .filter(|x| {
                x.expression
                    .as_deref()
                    .is_some_and(|p| p == prefix || p.starts_with(&nested))
            })
            .cloned()
            .collect();
        if !entry_issues.is_empty() {
            return Err(GatewayError::Invalid(entry_issues));
        }
        self.check_profile(s, &e.resource, Some(&format!("{prefix}.resource")))?;
        let mut applied = self.apply(caller, s, vec![e], Interaction::Batch).await?;
        Ok(applied.remove(0))
    }

    /// Applies entries in one transaction ([`Gateway::apply_once`]); a transaction the database
    /// rolled back as busy (a PostgreSQL serialisation failure or deadlock, SQLite busy, an
    /// exhausted pool) stored nothing and is run again, a bounded number of times with a short
    /// random pause, before the caller hears 503.
    async fn apply(
        &self,
        caller: &Caller,
        s: &SectorSettings,
        entries: Vec<Entry<Node<'_>>>,
        interaction: Interaction,
    ) -> Result<Vec<Applied>, GatewayError> {
        self.apply_with(caller, s, entries, interaction, false)
            .await
    }

    /// [`Gateway::apply`]; `allow_merge` (a held write an operator released) lets the write
    /// join gateway patients, else such a write is held for review (422).
    ///
    /// Ids, references and the bodies to store are worked out once, before the transaction
    /// ([`Gateway::stage_early`]): a transaction run again after `Busy` reuses them (the
    /// writer then only writes). Where a conditional create needs the store, they are worked
    /// out with the ids the entries get if no conditional create matches, and the transaction
    /// checks that guess first; if one matched (or no guess can be made), each run works them
    /// out inside its transaction. The entries themselves are never edited: every stored form
    /// is written from them with its edits ([`prepare_entries`]).
    pub(super) async fn apply_with(
        &self,
        caller: &Caller,
        s: &SectorSettings,
        entries: Vec<Entry<Node<'_>>>,
        interaction: Interaction,
        allow_merge: bool,
    ) -> Result<Vec<Applied>, GatewayError> {
        let mut early =
            super::cpu_bound(|| self.stage_early(s, &entries, interaction, allow_merge))?;
        let mut attempt = 1;
        loop {
            // The stored forms move into the answer only once a run committed.
            let result = match &mut early {
                Some(Early::Known(stage)) => {
                    let r = self.apply_once(caller, s, &entries, Staged::Early(stage), interaction);
                    r.await.map(|a| a.map(|a| with_bodies(a, &mut stage.1)))
                }
                Some(Early::Guessed(stage)) => {
                    let staged = Staged::Guessed(stage);
                    let r = self.apply_once(caller, s, &entries, staged, interaction);
                    r.await.map(|a| a.map(|a| with_bodies(a, &mut stage.1)))
                }
                None => {
                    let staged = Staged::Late(allow_merge);
                    self.apply_once(caller, s, &entries, staged, interaction)
                        .await
                }
            };
            match result {
                Ok(Some(applied)) => return Ok(applied),
                // The guess missed (a conditional create matched): late, in a new transaction.
                Ok(None) => early = None,
                Err(GatewayError::Store(StoreError::MergeHeld { reason, patients })) => {
                    return Err(self
                        .hold(caller, s, &entries, interaction, reason, patients)
                        .await);
                }
                Err(GatewayError::Store(StoreError::Busy)) if attempt < BUSY_ATTEMPTS => {
                    self.metrics.busy_retries.inc();
                    tracing::debug!(attempt, "a write transaction was busy; running it again");
                    tokio::time::sleep(busy_pause(attempt)).await;
                    attempt += 1;
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// The early stage of [`Gateway::apply_with`]: every id known without the store, the
    /// entries prepared; else, when every id can be guessed as if no conditional create
    /// matched, the entries prepared with the guessed ids; else nothing.
    fn stage_early(
        &self,
        s: &SectorSettings,
        entries: &[Entry<Node<'_>>],
        interaction: Interaction,
        allow_merge: bool,
    ) -> Result<Option<Early>, GatewayError> {
        if let Some(ids) = known_ids(s, entries) {
            let prepared = self.prepare_all(s, entries, &ids, interaction, allow_merge)?;
            return Ok(Some(Early::Known((ids, prepared))));
        }
        let Some(ids) = guessed_ids(s, entries) else {
            return Ok(None);
        };
        // A refusal here is left to the late stage, which decides with the ids it finds.
        let prepared = self.prepare_all(s, entries, &ids, interaction, allow_merge);
        Ok(prepared.ok().map(|p| Early::Guessed((ids, p))))
    }

    /// Applies entries in one transaction: ids, references, store, outbox, alerts, audit. The
    /// [`Applied`] it returns carry no stored bodies from an early stage yet ([`with_bodies`]
    /// moves them in once the run committed); a late stage's are moved in here.
    async fn apply_once(
        &self,
        caller: &Caller,
        s: &SectorSettings,
        entries: &[Entry<Node<'_>>],
        staged: Staged<'_>,
        interaction: Interaction,
    ) -> Result<Option<Vec<Applied>>, GatewayError> {
        let mut tx = self.store.begin().await?;
        let mut late: Option<Stage> = None;
        let (ids, prepared) = match staged {
            Staged::Early((ids, prepared)) => (ids, prepared),
            Staged::Guessed((ids, prepared)) => {
                if !no_conditional_match(&mut *tx, s, entries).await? {
                    return Ok(None);
                }
                (ids, prepared)
            }
            Staged::Late(allow_merge) => {
                let ids = assign_ids(&mut *tx, s, entries).await?;
                let prepared = self.prepare_all(s, entries, &ids, interaction, allow_merge)?;
                let (ids, prepared) = late.insert((ids, prepared));
                (&*ids, &*prepared)
            }
        };
        let applied = write_entries(&mut *tx, s, entries, ids, prepared).await?;
        let merges: Vec<(String, String)> = applied
            .iter()
            .flat_map(|a| {
                let into = a.outcome.patient_id.clone().unwrap_or_default();
                a.outcome
                    .merged
                    .iter()
                    .map(move |m| (m.clone(), into.clone()))
            })
            .collect();
        super::identity::audit_merges(&mut *tx, &caller.actor(), &s.id, interaction, &merges)
            .await?;
        // The outbox: what goes to the other sectors commits with what was accepted.
        let routed: Vec<Routed<'_>> = applied
            .iter()
            .zip(prepared)
            .map(|(a, p)| {
                // A conditional create that matched carries the stored body already.
                let body = p.as_ref().map_or(a.body.as_str(), |p| p.body.as_str());
                routed(&s.id, a, body)
            })
            .collect();
        let routed = crate::exchange::route::enqueue(&mut *tx, &self.settings, &routed).await?;
        self.disclose(&mut *tx, caller, &routed.joins).await?;
        let targets = routed.targets;
        // Alerts for the patients whose data changed, in the same transaction.
        let touched: BTreeSet<String> = applied
            .iter()
            .filter(|a| a.outcome.changed)
            .filter_map(|a| a.outcome.patient_id.clone())
            .collect();
        let alert_events = self.detect(&mut *tx, &touched).await?;
        for row in accepted_rows(&caller.actor(), &s.id, interaction, &applied) {
            tx.audit(&row).await?;
        }
        tx.commit().await?;
        if !targets.is_empty() || !alert_events.is_empty() {
            self.outbox_signal.notify_waiters();
        }
        self.publish(alert_events);
        Ok(Some(match late.as_mut() {
            Some(stage) => with_bodies(applied, &mut stage.1),
            None => applied,
        }))
    }

    /// The stored form of every entry under its id ([`prepare_entries`]); a transaction that
    /// writes one resource twice is refused first.
    fn prepare_all(
        &self,
        s: &SectorSettings,
        entries: &[Entry<Node<'_>>],
        ids: &[(String, bool)],
        interaction: Interaction,
        allow_merge: bool,
    ) -> Result<Vec<Option<crate::store::Prepared>>, GatewayError> {
        if interaction == Interaction::Transaction {
            let twice = duplicate_entries(entries, ids);
            if !twice.is_empty() {
                return Err(GatewayError::Invalid(twice));
            }
        }
        Ok(prepare_entries(
            s,
            entries,
            ids,
            allow_merge,
            &self.settings,
        ))
    }

    /// Re-evaluates the alerts of the patients touched, inside `tx`; writes their audit rows
    /// and queues the care team's messages.
    pub(super) async fn detect(
        &self,
        tx: &mut dyn StoreTx,
        patients: &BTreeSet<String>,
    ) -> Result<Vec<AlertEvent>, GatewayError> {
        let Some(d) = self.detection.as_ref() else {
            return Ok(Vec::new());
        };
        if !self.settings.alerts.enabled {
            return Ok(Vec::new());
        }
        let now = now_us();
        let sent = instant(now);
        let mut all = Vec::new();
        for p in patients {
            let events = super::alerts::evaluate(tx, d, p, now).await?;
            for e in &events {
                tx.audit(&alert_audit_row(e, None)).await?;
                super::history::record(tx, e, "", "", now).await?;
                // The care team hears of it through the outbox.
                super::notify::notify(tx, &self.settings, e, &sent).await?;
            }
            all.extend(events);
        }
        Ok(all)
    }

    async fn audit_rejection(
        &self,
        caller: &Caller,
        sector: Option<&str>,
        interaction: Interaction,
        rtype: &str,
        e: &GatewayError,
    ) {
        let (outcome, detail) = match e {
            GatewayError::Invalid(i) => (
                Outcome::MinorFailure,
                format!("rejected {rtype}: invalid ({} issues)", i.len()),
            ),
            GatewayError::Unprocessable(i) => (
                Outcome::MinorFailure,
                format!(
                    "rejected {rtype}: profile or business rule ({} issues)",
                    i.len()
                ),
            ),
            GatewayError::NotFound(_) => (
                Outcome::MinorFailure,
                format!("rejected {rtype}: not found"),
            ),
            GatewayError::Forbidden(_) => (
                Outcome::MinorFailure,
                format!("rejected {rtype}: forbidden"),
            ),
            GatewayError::Conflict(_) => {
                (Outcome::MinorFailure, format!("rejected {rtype}: conflict"))
            }
            GatewayError::PreconditionFailed(_) => (
                Outcome::MinorFailure,
                format!("rejected {rtype}: precondition failed"),
            ),
            GatewayError::Store(_) => (
                Outcome::SeriousFailure,
                format!("failed {rtype}: store unavailable"),
            ),
        };
        let mut row = audit::row(
            &caller.actor(),
            sector,
            Action::Create,
            interaction,
            outcome,
        );
        row.detail = Some(detail);
        self.write_audit(row).await;
    }

    /// Records a write whose body was refused before it was read as FHIR (media type, size,
    /// JSON): the HTTP status says why.
    pub async fn rejected_body(
        &self,
        actor: &Actor,
        sector: &str,
        interaction: Interaction,
        status: u16,
    ) {
        let mut row = audit::row(
            actor,
            Some(sector),
            Action::Create,
            interaction,
            Outcome::MinorFailure,
        );
        row.detail = Some(format!("rejected body: HTTP {status}"));
        self.write_audit(row).await;
    }

    /// Writes a standalone audit row; a failure is logged (without patient data), never hidden.
    pub(crate) async fn write_audit(&self, row: AuditRow) {
        let result = async {
            let mut tx = self.store.begin().await?;
            tx.audit(&row).await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, interaction = %row.interaction, "could not write an audit row");
        }
    }
}

/// The sector tag is the gateway's: a resource that carries a `meta.tag` in the gateway's tag
/// system naming another sector than the one writing it is refused, never stored or delivered
/// as that sector's. The writer's own tag (what the gateway put on the resource it served, sent
/// back in a read-modify-write) is accepted and, like every tag in that system, replaced by the
/// gateway's wherever the resource is shown or delivered.
fn spoofed_tags(sector: &str, resource: &Node<'_>) -> Vec<Issue> {
    let rtype = fhir::resource_type(resource).unwrap_or("Resource");
    let Some(tags) = resource
        .get("meta")
        .and_then(|m| m.get("tag"))
        .and_then(Node::as_array)
    else {
        return Vec::new();
    };
    tags.iter()
        .enumerate()
        .filter(|(_, t)| {
            t.get("system").and_then(Node::as_str) == Some(fhir::SECTOR_TAG_SYSTEM)
                && t.get("code").and_then(Node::as_str) != Some(sector)
        })
        .map(|(i, _)| {
            Issue::error(
                "business-rule",
                "the sector tag names the sector that sends, set by the gateway; remove this tag",
            )
            .at(format!("{rtype}.meta.tag[{i}]"))
        })
        .collect()
}

/// A number of a borrowed tree that an owned one cannot hold (never one the strict parser
/// accepted: its lexemes are JSON numbers).
fn unkept_number(e: &serde_json::Error) -> Issue {
    Issue::error("value", format!("a number could not be kept: {e}"))
}

/// Issues located under `location` (a Bundle entry's resource), when given.
fn placed(issues: Vec<Issue>, location: Option<&str>) -> Vec<Issue> {
    match location {
        Some(l) => issues.into_iter().map(|i| i.nested_under(l)).collect(),
        None => issues,
    }
}

/// Entries of one transaction that write the same resource (type and id, however the id was
/// given: the URL, the body, a conditional create's match or the content): the second would be
/// stored as another version in the same transaction, so both are named and nothing is stored.
fn duplicate_entries(entries: &[Entry<Node<'_>>], ids: &[(String, bool)]) -> Vec<Issue> {
    let mut first: HashMap<(&str, &str), usize> = HashMap::new();
    let mut issues = Vec::new();
    let at = |i: usize| {
        entries[i]
            .location
            .clone()
            .unwrap_or_else(|| format!("Bundle.entry[{i}]"))
    };
    for (i, (e, (rid, _))) in entries.iter().zip(ids).enumerate() {
        match first.get(&(e.rtype.as_str(), rid.as_str())) {
            None => {
                first.insert((e.rtype.as_str(), rid.as_str()), i);
            }
            Some(&j) => {
                let message = |other: usize| {
                    format!(
                        "{}/{rid} is written by {} and {}; a transaction writes each resource once",
                        e.rtype,
                        at(j),
                        at(other)
                    )
                };
                issues.push(Issue::error("invalid", message(i)).at(at(j)));
                issues.push(Issue::error("invalid", message(i)).at(at(i)));
            }
        }
    }
    issues
}

/// The sector-local id of every entry, and whether it names a resource already stored (a
/// conditional create that matched).
async fn assign_ids(
    tx: &mut dyn StoreTx,
    s: &SectorSettings,
    entries: &[Entry<Node<'_>>],
) -> Result<Vec<(String, bool)>, GatewayError> {
    let mut ids = Vec::with_capacity(entries.len());
    for e in entries {
        let id = if let Some(id) = &e.url_id {
            (id.clone(), false)
        } else if let Some(query) = &e.if_none_exist {
            match conditional_matches(tx, &s.id, e, query).await?.as_slice() {
                [] => (assign_id(e, tx, s).await?, false),
                [one] => (one.clone(), true),
                many => {
                    return Err(GatewayError::PreconditionFailed(format!(
                        "If-None-Exist matches {} {} resources of this sector; make the search select one",
                        many.len(),
                        e.rtype
                    )));
                }
            }
        } else {
            (assign_id(e, tx, s).await?, false)
        };
        ids.push(id);
    }
    Ok(ids)
}

/// The sector-local ids of the sector's resources that the `If-None-Exist` search selects (any
/// search the registry supports; a parameter it does not know is an error here, since ignoring
/// it would select more).
async fn conditional_matches(
    tx: &mut dyn StoreTx,
    sector: &str,
    e: &Entry<Node<'_>>,
    query: &[(String, String)],
) -> Result<Vec<String>, GatewayError> {
    let at = match &e.location {
        Some(l) => format!("{l}.request.ifNoneExist"),
        None => "If-None-Exist".to_owned(),
    };
    let c = params::criteria(&e.rtype, query)
        .map_err(|i| GatewayError::invalid(i.nested_under(&at)))?;
    if query.is_empty() || !c.ignored.is_empty() {
        return Err(GatewayError::invalid(
            Issue::error(
                "not-supported",
                format!(
                    "If-None-Exist needs search parameters {} supports (unknown: {})",
                    e.rtype,
                    c.ignored.join(", ")
                ),
            )
            .at(at),
        ));
    }
    let patient_id = match &c.patient {
        None => None,
        Some(p) => match tx
            .get_sector(sector, "Patient", p)
            .await?
            .and_then(|x| x.patient_id)
        {
            Some(id) => Some(id),
            None => return Ok(Vec::new()),
        },
    };
    let filter = SearchFilter {
        rtype: e.rtype.clone(),
        sector: Some(sector.to_owned()),
        patient_id,
        rids: c.ids.clone(),
        identifier: c.identifier.clone(),
        updated_from: c.updated_from.clone(),
        updated_to: c.updated_to.clone(),
        limit: super::search::MAX_CANDIDATES,
        ..SearchFilter::default()
    };
    let mut out = Vec::new();
    for stored in tx.search(&filter).await? {
        if params::matches(&stored.json()?, sector, &c.matched) {
            out.push(stored.rid);
        }
    }
    Ok(out)
}

/// What the store keeps for each entry under its id, references to other entries (by fullUrl)
/// rewritten to `Type/id`; `None` for an entry whose conditional create matched. Each stored
/// form is written from the entry's tree with those edits ([`write_stored`]). Pure: runs
/// before the write transaction where the ids are known without the store.
fn prepare_entries(
    s: &SectorSettings,
    entries: &[Entry<Node<'_>>],
    ids: &[(String, bool)],
    allow_merge: bool,
    settings: &Settings,
) -> Vec<Option<crate::store::Prepared>> {
    let map: HashMap<String, String> = entries
        .iter()
        .zip(ids)
        .filter_map(|(e, (rid, _))| Some((e.full_url.clone()?, format!("{}/{rid}", e.rtype))))
        .collect();
    let mut prepared = Vec::with_capacity(entries.len());
    for (e, (rid, existing)) in entries.iter().zip(ids) {
        if *existing {
            prepared.push(None);
            continue;
        }
        let edits = Edits {
            id: Some(rid),
            references: (!map.is_empty()).then_some(&map),
        };
        let body = write_stored(&e.resource, &edits);
        let mut p = prepare_stored(s, &e.rtype, rid, &e.resource, &edits, body);
        if p.patient_ref.is_none() && e.rtype != "Patient" {
            p.patient_ref = own_patient_ref(settings, s, &e.resource, &edits);
        }
        p.expected_version = e.if_match;
        p.allow_merge = allow_merge;
        prepared.push(Some(p));
    }
    prepared
}

/// Stores the prepared entries ([`StoreTx::put_many`]: locks in one sorted order, Patients
/// linked first, the rest in multi-row statements); an entry whose conditional create matched
/// is answered with what is stored.
async fn write_entries(
    tx: &mut dyn StoreTx,
    s: &SectorSettings,
    entries: &[Entry<Node<'_>>],
    ids: &[(String, bool)],
    prepared: &[Option<crate::store::Prepared>],
) -> Result<Vec<Applied>, GatewayError> {
    let writes: Vec<&crate::store::Prepared> = prepared.iter().flatten().collect();
    let mut outcomes = tx.put_many(&writes).await?.into_iter();
    let mut applied = Vec::with_capacity(entries.len());
    for ((e, (rid, _)), p) in entries.iter().zip(ids).zip(prepared) {
        if p.is_none() {
            applied.push(already_stored(tx, s, &e.rtype, rid.clone()).await?);
            continue;
        }
        let Some(outcome) = outcomes.next() else {
            return Err(GatewayError::Store(StoreError::Corrupt {
                what: "the outcomes of a bulk write".into(),
                error: "fewer outcomes than resources".into(),
            }));
        };
        applied.push(Applied {
            rtype: e.rtype.clone(),
            rid: rid.clone(),
            outcome,
            body: String::new(),
        });
    }
    Ok(applied)
}

/// Every entry's id (and whether it names a stored resource) and stored form.
type Stage = (Vec<(String, bool)>, Vec<Option<crate::store::Prepared>>);

/// What [`Gateway::stage_early`] worked out before the transaction.
enum Early {
    /// Every id known without the store; the entries prepared with them.
    Known(Stage),
    /// The ids as if no conditional create matched, and the entries prepared with them.
    Guessed(Stage),
}

/// Ids and stored forms of a write's entries, worked out before its transaction
/// ([`known_ids`], [`Gateway::prepare_all`]; `Guessed`: to be checked inside it first) or,
/// `Late(allow_merge)`, inside it.
enum Staged<'a> {
    Early(&'a Stage),
    Guessed(&'a Stage),
    Late(bool),
}

/// Moves each entry's stored form into its [`Applied`] (one per entry, in order), except where
/// one already holds the body the store answered with (a conditional create that matched).
fn with_bodies(
    mut applied: Vec<Applied>,
    prepared: &mut [Option<crate::store::Prepared>],
) -> Vec<Applied> {
    for (a, p) in applied.iter_mut().zip(prepared) {
        if let Some(p) = p {
            a.body = std::mem::take(&mut p.body);
        }
    }
    applied
}

/// The patient reference of a resource that names its own sector's Patient by an absolute URL
/// in any spelling ([`locate`]): `Patient/<id>` or `Patient?identifier=…`, for linking.
fn own_patient_ref(
    settings: &Settings,
    s: &SectorSettings,
    resource: &Node<'_>,
    edits: &Edits<'_>,
) -> Option<String> {
    let r = edited_patient_reference(resource, edits)?;
    let at = locate(settings, r).filter(|at| at.sector == s.id)?;
    if let Some((_, id)) = at.relative() {
        return Some(format!("Patient/{id}"));
    }
    let (_, system, value) = fhir::parse_conditional(&at.rest)?;
    Some(format!("Patient?identifier={system}|{value}"))
}

/// The stored resource a conditional create matched, as an unchanged outcome.
async fn already_stored(
    tx: &mut dyn StoreTx,
    s: &SectorSettings,
    rtype: &str,
    rid: String,
) -> Result<Applied, GatewayError> {
    let stored = tx
        .get_sector(&s.id, rtype, &rid)
        .await?
        .ok_or_else(|| GatewayError::NotFound(format!("{rtype}/{rid}")))?;
    Ok(Applied {
        rtype: rtype.to_owned(),
        rid,
        body: stored.body,
        outcome: PutOutcome {
            gid: stored.gid,
            version: stored.version,
            last_updated: stored.last_updated,
            changed: false,
            created: false,
            patient_id: stored.patient_id,
            merged: Vec::new(),
        },
    })
}

/// What routing needs of one applied entry.
fn routed<'a>(sector: &'a str, a: &'a Applied, body: &'a str) -> Routed<'a> {
    Routed {
        sector,
        rtype: &a.rtype,
        gid: &a.outcome.gid,
        version: a.outcome.version,
        patient_id: a.outcome.patient_id.as_deref(),
        created: a.outcome.created,
        changed: a.outcome.changed,
        body,
    }
}

/// One audit row per patient touched by an accepted request.
fn accepted_rows(
    actor: &Actor,
    sector: &str,
    interaction: Interaction,
    applied: &[Applied],
) -> Vec<AuditRow> {
    let mut groups: BTreeMap<Option<String>, Vec<&Applied>> = BTreeMap::new();
    for a in applied {
        groups
            .entry(a.outcome.patient_id.clone())
            .or_default()
            .push(a);
    }
    groups
        .into_iter()
        .map(|(patient, items)| {
            let created = items.iter().filter(|a| a.outcome.created).count();
            let changed = items
                .iter()
                .filter(|a| a.outcome.changed && !a.outcome.created)
                .count();
            let unchanged = items.len() - created - changed;
            let action = if created == items.len() {
                Action::Create
            } else {
                Action::Update
            };
            let mut row = audit::row(actor, Some(sector), action, interaction, Outcome::Success);
            row.patient_id = patient;
            row.entities = items
                .iter()
                .map(|a| format!("{}/{}", a.rtype, a.outcome.gid))
                .collect();
            row.detail = Some(format!(
                "accepted: {created} created, {changed} updated, {unchanged} unchanged"
            ));
            row
        })
        .collect()
}

/// The audit row of an alert change (raised, updated, closed by detection; acknowledged by a
/// caller).
pub fn alert_audit_row(e: &AlertEvent, caller: Option<&Caller>) -> AuditRow {
    let actor = match caller {
        Some(c) => c.actor(),
        None => Actor::gateway(),
    };
    let action = match e.kind {
        "raised" => Action::Create,
        _ => Action::Update,
    };
    let mut row = audit::row(&actor, None, action, Interaction::Alert, Outcome::Success);
    row.patient_id = Some(e.patient.clone());
    let mut entities = vec![format!("DetectedIssue/{}", e.id)];
    if let Some(list) = e.resource.get("implicated").and_then(Value::as_array) {
        entities.extend(
            list.iter()
                .filter_map(|r| r.get("reference")?.as_str().map(str::to_owned)),
        );
    }
    row.entities = entities;
    row.purpose = Some("TREAT".into());
    row.detail = Some(format!(
        "alert {} {} (version {}, status {})",
        e.code, e.kind, e.version, e.status
    ));
    row
}

/// The sector-local id of a created resource: the sender's own id (the gateway mirrors the
/// sector's record); else, where the sector is set to `resend_by_identifier`, the id already
/// known for its first business identifier; else an id derived from the content, so that the
/// same content re-sent is recognised (and anything else is a new resource).
async fn assign_id(
    e: &Entry<Node<'_>>,
    tx: &mut dyn StoreTx,
    s: &SectorSettings,
) -> Result<String, GatewayError> {
    if let Some(id) = id_without_store(e, s) {
        return Ok(id);
    }
    if let Some((sys, val)) = identifiers(&e.resource).first() {
        if let Some(found) = tx.find_by_identifier(&s.id, &e.rtype, sys, val).await? {
            return Ok(found);
        }
        return Ok(format!(
            "i{}",
            &content_hash(format!("{sys}|{val}").as_bytes())[..40]
        ));
    }
    Ok(content_id(e))
}

/// The id [`assign_id`] gives when it needs no store: the sender's own, or one derived from
/// the content where the sector does not resend by identifier (or the resource has none).
fn id_without_store(e: &Entry<Node<'_>>, s: &SectorSettings) -> Option<String> {
    if let Some(id) = fhir::resource_id(&e.resource).filter(|id| is_valid_id(id)) {
        return Some(id.to_owned());
    }
    if s.resend_by_identifier && !identifiers(&e.resource).is_empty() {
        return None;
    }
    Some(content_id(e))
}

/// An id derived from the content, so that the same content re-sent is recognised.
fn content_id(e: &Entry<Node<'_>>) -> String {
    let text = write_stored(&e.resource, &Edits::default());
    format!("h{}", &content_hash(text.as_bytes())[..40])
}

/// The ids [`assign_ids`] gives if no conditional create matches (a conditional create that
/// matches none gets the id any create gets); `None` where an id needs the store anyway.
fn guessed_ids(s: &SectorSettings, entries: &[Entry<Node<'_>>]) -> Option<Vec<(String, bool)>> {
    entries
        .iter()
        .map(|e| match &e.url_id {
            Some(id) => Some((id.clone(), false)),
            None => id_without_store(e, s).map(|id| (id, false)),
        })
        .collect()
}

/// Whether no conditional create of `entries` matches a stored resource (inside the write
/// transaction): then the ids [`guessed_ids`] gave are the ids [`assign_ids`] gives. A search
/// the registry refuses is the same error either way.
async fn no_conditional_match(
    tx: &mut dyn StoreTx,
    s: &SectorSettings,
    entries: &[Entry<Node<'_>>],
) -> Result<bool, GatewayError> {
    for e in entries.iter().filter(|e| e.url_id.is_none()) {
        if let Some(query) = &e.if_none_exist
            && !conditional_matches(tx, &s.id, e, query).await?.is_empty()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Every entry's id when none needs the store (no conditional create, no id found by
/// identifier): the ids [`assign_ids`] would give, worked out before the transaction.
fn known_ids(s: &SectorSettings, entries: &[Entry<Node<'_>>]) -> Option<Vec<(String, bool)>> {
    entries
        .iter()
        .map(|e| match (&e.url_id, &e.if_none_exist) {
            (Some(id), _) => Some((id.clone(), false)),
            (None, Some(_)) => None,
            (None, None) => id_without_store(e, s).map(|id| (id, false)),
        })
        .collect()
}
