//! The pipeline of one request: authorise, validate, resolve ids and references, link the
//! patient, store, audit — the same for the HTTP API and the demo loader.
//!
//! Invariant: what a request changes and its audit rows commit in one transaction; a request
//! that is rejected changes nothing and leaves one audit row saying why.

use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::audit::{self, Actor};
use crate::auth::{Client, Role};
use crate::config::{SectorSettings, Settings};
use crate::exchange::route::Routed;
use crate::fhir::outcome::Issue;
use crate::fhir::{self, for_each_reference_mut, identifiers, is_valid_id, patient_reference};
use crate::store::{
    AuditQuery, AuditRow, GatewayPatient, Prepared, PutOutcome, Store, StoreError, Stored,
    content_hash,
};
use crate::validate::Validator;

/// Why a request was not carried out. Each maps to one HTTP status and an OperationOutcome.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// 400: unparseable or structurally invalid, or a malformed request.
    #[error("invalid request ({} issues)", .0.len())]
    Invalid(Vec<Issue>),
    /// 422: valid FHIR that breaks a profile or business rule.
    #[error("unprocessable ({} issues)", .0.len())]
    Unprocessable(Vec<Issue>),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl GatewayError {
    pub fn invalid(issue: Issue) -> Self {
        GatewayError::Invalid(vec![issue])
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub client: Client,
    pub request_id: Option<String>,
}

impl Caller {
    pub fn actor(&self) -> Actor {
        Actor {
            client_id: Some(self.client.id.clone()),
            role: Some(self.client.role.label()),
            request_id: self.request_id.clone(),
        }
    }
}

/// One create or update to apply (a single request, or one Bundle entry).
#[derive(Debug, Clone)]
pub struct Entry {
    /// Where the entry sits, for error locations: `Bundle.entry[3]`, or `None` for a single resource.
    pub location: Option<String>,
    pub method: Method,
    pub rtype: String,
    /// The id from the URL (PUT).
    pub url_id: Option<String>,
    /// `identifier=system|value` from `If-None-Exist`.
    pub if_none_exist: Option<(String, String)>,
    pub full_url: Option<String>,
    pub resource: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Put,
}

/// The result of one applied entry.
#[derive(Debug, Clone)]
pub struct Applied {
    pub rtype: String,
    pub rid: String,
    pub outcome: PutOutcome,
    /// The resource as stored.
    pub body: Value,
}

pub struct Gateway {
    pub settings: Settings,
    pub validator: Validator,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Woken after a commit that wrote outbox entries (the delivery workers wait on it).
    pub outbox_signal: Arc<tokio::sync::Notify>,
    /// Fragmentation detection; `None` turns it off (the alerts stay as they are).
    pub detection: Option<Arc<crate::detect::lifecycle::Detection>>,
    /// Alert changes, after they committed (`GET /alerts/stream`).
    pub alert_events: tokio::sync::broadcast::Sender<crate::detect::lifecycle::AlertEvent>,
    /// Turns true when the server shuts down (long-lived responses such as the alert stream
    /// end then).
    pub shutting_down: tokio::sync::watch::Sender<bool>,
}

impl Gateway {
    pub fn new(settings: Settings, validator: Validator, store: Arc<dyn Store>) -> Self {
        Gateway {
            settings,
            validator,
            store,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            outbox_signal: Arc::new(tokio::sync::Notify::new()),
            detection: None,
            alert_events: tokio::sync::broadcast::channel(1024).0,
            shutting_down: tokio::sync::watch::channel(false).0,
        }
    }

    /// Re-evaluates the alerts of the patients touched, inside `tx`; writes their audit rows.
    async fn detect(
        &self,
        tx: &mut dyn crate::store::StoreTx,
        patients: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<crate::detect::lifecycle::AlertEvent>, GatewayError> {
        let Some(d) = self.detection.as_deref() else {
            return Ok(Vec::new());
        };
        if !self.settings.alerts.enabled {
            return Ok(Vec::new());
        }
        let now = audit::now_us();
        let sent = crate::store::sql::instant(now);
        let mut all = Vec::new();
        for p in patients {
            let events = crate::detect::lifecycle::evaluate(tx, d, p, now).await?;
            for e in &events {
                tx.audit(&alert_audit_row(e, None)).await?;
                // The care team hears of it through the outbox.
                crate::detect::notify::notify(tx, &self.settings, e, &sent).await?;
            }
            all.extend(events);
        }
        Ok(all)
    }

    /// Sends committed alert changes to the stream (nobody listening is fine).
    pub fn publish(&self, events: Vec<crate::detect::lifecycle::AlertEvent>) {
        for e in events {
            let _ = self.alert_events.send(e);
        }
    }

    pub fn sector(&self, id: &str) -> Option<&SectorSettings> {
        self.settings.sector(id)
    }

    fn writable_sector(
        &self,
        caller: &Caller,
        sector: &str,
    ) -> Result<&SectorSettings, GatewayError> {
        let s = self
            .sector(sector)
            .ok_or_else(|| GatewayError::NotFound(format!("no sector '{sector}'")))?;
        match &caller.client.role {
            Role::Sector(own) if own == sector => Ok(s),
            Role::Sector(_) => Err(GatewayError::Forbidden(format!(
                "this client may not write under sector '{sector}'"
            ))),
            _ => Err(GatewayError::Forbidden(
                "only a sector's own client writes under it".into(),
            )),
        }
    }

    /// Validates one resource for a sector: structure first (400), then profiles and the
    /// cross-sector reference rule (422). Locations are nested under `location` when given.
    pub fn check(
        &self,
        sector: &SectorSettings,
        resource: &Value,
        location: Option<&str>,
    ) -> Result<(), GatewayError> {
        let place = |i: Issue| match location {
            Some(l) => i.nested_under(l),
            None => i,
        };
        let issues = self.validator.structural(resource);
        if !issues.is_empty() {
            return Err(GatewayError::Invalid(
                issues.into_iter().map(place).collect(),
            ));
        }
        self.check_profile(sector, resource, location)
    }

    /// The second half of [`Gateway::check`], for a resource whose structure was already
    /// validated (a Bundle entry: `Validator::structural` on the Bundle validates every nested
    /// resource against its own type, so the entries are not validated a second time).
    fn check_profile(
        &self,
        sector: &SectorSettings,
        resource: &Value,
        location: Option<&str>,
    ) -> Result<(), GatewayError> {
        let place = |i: Issue| match location {
            Some(l) => i.nested_under(l),
            None => i,
        };
        let mut issues = self.validator.profile(sector.profile.as_deref(), resource);
        issues.extend(self.foreign_patient_references(sector, resource));
        if !issues.is_empty() {
            return Err(GatewayError::Unprocessable(
                issues.into_iter().map(place).collect(),
            ));
        }
        Ok(())
    }

    /// A sector may only name its own patients: an absolute reference into another configured
    /// sector's FHIR base is refused (use a conditional reference by CPR instead).
    fn foreign_patient_references(&self, sector: &SectorSettings, resource: &Value) -> Vec<Issue> {
        let Some((element, reference)) = patient_reference(resource) else {
            return Vec::new();
        };
        let rtype = fhir::resource_type(resource).unwrap_or("Resource");
        self.settings
            .sectors
            .iter()
            .filter(|s| s.id != sector.id)
            .filter_map(|s| s.base_url.as_deref())
            .filter(|base| reference.starts_with(&format!("{}/", base.trim_end_matches('/'))))
            .map(|_| {
                Issue::error(
                    "business-rule",
                    "the reference points to a Patient of another sector; reference your own Patient \
                     or use Patient?identifier=<system>|<value>",
                )
                .at(format!("{rtype}.{element}.reference"))
            })
            .collect()
    }

    /// POST/PUT of one resource under a sector.
    pub async fn put_one(
        &self,
        caller: &Caller,
        sector: &str,
        entry: Entry,
    ) -> Result<Applied, GatewayError> {
        let result = self.put_one_inner(caller, sector, entry.clone()).await;
        if let Err(e) = &result {
            let interaction = if entry.method == Method::Put {
                "update"
            } else {
                "create"
            };
            self.audit_rejection(caller, Some(sector), interaction, &entry.rtype, e)
                .await;
        }
        result
    }

    async fn put_one_inner(
        &self,
        caller: &Caller,
        sector: &str,
        entry: Entry,
    ) -> Result<Applied, GatewayError> {
        let s = self.writable_sector(caller, sector)?;
        check_entry_shape(&entry)?;
        self.check(s, &entry.resource, None)?;
        let interaction = if entry.method == Method::Put {
            "update"
        } else {
            "create"
        };
        let mut applied = self.apply(caller, s, vec![entry], interaction).await?;
        Ok(applied.remove(0))
    }

    /// A `transaction` (all or nothing) or `batch` (entry by entry) Bundle under a sector.
    /// Returns the response Bundle.
    pub async fn bundle(
        &self,
        caller: &Caller,
        sector: &str,
        bundle: Value,
    ) -> Result<Value, GatewayError> {
        let result = self.bundle_inner(caller, sector, bundle).await;
        if let Err(e) = &result {
            self.audit_rejection(caller, Some(sector), "transaction", "Bundle", e)
                .await;
        }
        result
    }

    async fn bundle_inner(
        &self,
        caller: &Caller,
        sector: &str,
        bundle: Value,
    ) -> Result<Value, GatewayError> {
        let s = self.writable_sector(caller, sector)?;
        if fhir::resource_type(&bundle) != Some("Bundle") {
            return Err(GatewayError::invalid(
                Issue::error(
                    "invalid",
                    "POST to a sector base takes a transaction or batch Bundle",
                )
                .at("Bundle.resourceType"),
            ));
        }
        let kind = bundle
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if kind != "transaction" && kind != "batch" {
            return Err(GatewayError::invalid(
                Issue::error("invalid", "Bundle.type must be transaction or batch")
                    .at("Bundle.type"),
            ));
        }
        let count = bundle
            .get("entry")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if count > self.settings.server.max_bundle_entries {
            return Err(GatewayError::invalid(
                Issue::error(
                    "too-costly",
                    format!(
                        "the Bundle has {count} entries; the limit is {}",
                        self.settings.server.max_bundle_entries
                    ),
                )
                .at("Bundle.entry"),
            ));
        }
        // The Bundle itself must be valid R4 in both modes (entries are checked with it).
        let structural = self.validator.structural(&bundle);
        let entries = bundle_entries(&bundle);
        if kind == "transaction" {
            if !structural.is_empty() {
                return Err(GatewayError::Invalid(structural));
            }
            let entries = entries
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(GatewayError::Invalid)?;
            let mut unprocessable = Vec::new();
            for e in &entries {
                match self.check_profile(
                    s,
                    &e.resource,
                    e.location
                        .as_deref()
                        .map(|l| format!("{l}.resource"))
                        .as_deref(),
                ) {
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
            let applied = self.apply(caller, s, entries, "transaction").await?;
            return Ok(response_bundle(
                "transaction-response",
                applied.into_iter().map(Ok).collect(),
            ));
        }
        // batch: each entry stands alone; a bad entry fails only itself.
        let mut results = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            let prefix = format!("Bundle.entry[{i}]");
            let entry_issues: Vec<Issue> = structural
                .iter()
                .filter(|x| {
                    x.expression
                        .as_deref()
                        .is_some_and(|p| p == prefix || p.starts_with(&format!("{prefix}.")))
                })
                .cloned()
                .collect();
            let result = match entry {
                Err(issues) => Err(GatewayError::Invalid(issues)),
                Ok(_) if !entry_issues.is_empty() => Err(GatewayError::Invalid(entry_issues)),
                Ok(e) => {
                    match self.check_profile(s, &e.resource, Some(&format!("{prefix}.resource"))) {
                        Ok(()) => self
                            .apply(caller, s, vec![e], "batch")
                            .await
                            .map(|mut a| a.remove(0)),
                        Err(err) => Err(err),
                    }
                }
            };
            if let Err(e) = &result {
                if let GatewayError::Store(_) = e {
                    return Err(GatewayError::Store(StoreError::Busy));
                }
                self.audit_rejection(caller, Some(sector), "batch", "Bundle", e)
                    .await;
            }
            results.push(result);
        }
        Ok(response_bundle("batch-response", results))
    }

    /// Applies entries in one transaction: ids, references, store, audit.
    async fn apply(
        &self,
        caller: &Caller,
        s: &SectorSettings,
        mut entries: Vec<Entry>,
        interaction: &str,
    ) -> Result<Vec<Applied>, GatewayError> {
        let mut tx = self.store.begin().await?;
        // 1. The sector-local id of every entry.
        let mut rids = Vec::with_capacity(entries.len());
        let mut existing = vec![false; entries.len()];
        for (i, e) in entries.iter().enumerate() {
            let rid = if let Some(id) = &e.url_id {
                id.clone()
            } else if let Some((sys, val)) = &e.if_none_exist {
                match tx.find_by_identifier(&s.id, &e.rtype, sys, val).await? {
                    Some(found) => {
                        existing[i] = true;
                        found
                    }
                    None => assign_id(e, &mut *tx, &s.id).await?,
                }
            } else {
                assign_id(e, &mut *tx, &s.id).await?
            };
            rids.push(rid);
        }
        // 2. References to other entries (by fullUrl) become Type/id.
        let map: HashMap<String, String> = entries
            .iter()
            .zip(&rids)
            .filter_map(|(e, rid)| Some((e.full_url.clone()?, format!("{}/{rid}", e.rtype))))
            .collect();
        let mut applied = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter_mut().enumerate() {
            let rid = rids[i].clone();
            if existing[i] {
                let stored = tx
                    .get_sector(&s.id, &e.rtype, &rid)
                    .await?
                    .ok_or_else(|| GatewayError::NotFound(format!("{}/{rid}", e.rtype)))?;
                applied.push(Applied {
                    rtype: e.rtype.clone(),
                    rid,
                    body: serde_json::from_str(&stored.body).unwrap_or(Value::Null),
                    outcome: PutOutcome {
                        gid: stored.gid,
                        version: stored.version,
                        last_updated: stored.last_updated,
                        changed: false,
                        created: false,
                        patient_id: stored.patient_id,
                    },
                });
                continue;
            }
            if !map.is_empty() {
                for_each_reference_mut(&mut e.resource, &mut |r: &mut String| {
                    if let Some(target) = map.get(r.as_str()) {
                        *r = target.clone();
                    }
                });
            }
            if let Some(obj) = e.resource.as_object_mut() {
                obj.insert("id".into(), Value::String(rid.clone()));
            }
            let prepared = prepare(s, &e.rtype, &rid, &e.resource);
            let outcome = tx.put(&prepared).await?;
            applied.push(Applied {
                rtype: e.rtype.clone(),
                rid,
                outcome,
                body: std::mem::take(&mut e.resource),
            });
        }
        // 3. Resources stored before their Patient in this request are linked by now.
        for a in applied.iter_mut() {
            if a.outcome.changed && a.outcome.patient_id.is_none() && a.rtype != "Patient" {
                a.outcome.patient_id = tx.get(&a.outcome.gid).await?.and_then(|s| s.patient_id);
            }
        }
        // 4. The outbox: what goes to the other sectors commits with what was accepted.
        let routed: Vec<Routed<'_>> = applied
            .iter()
            .map(|a| Routed {
                sector: &s.id,
                rtype: &a.rtype,
                gid: &a.outcome.gid,
                version: a.outcome.version,
                patient_id: a.outcome.patient_id.as_deref(),
                created: a.outcome.created,
                changed: a.outcome.changed,
                body: &a.body,
            })
            .collect();
        let targets = crate::exchange::route::enqueue(&mut *tx, &self.settings, &routed).await?;
        // 5. Alerts for the patients whose data changed, in the same transaction.
        let touched: std::collections::BTreeSet<String> = applied
            .iter()
            .filter(|a| a.outcome.changed)
            .filter_map(|a| a.outcome.patient_id.clone())
            .collect();
        let alert_events = self.detect(&mut *tx, &touched).await?;
        // 6. One audit row per patient touched.
        let actor = caller.actor();
        let mut groups: BTreeMap<Option<String>, Vec<&Applied>> = BTreeMap::new();
        for a in &applied {
            groups
                .entry(a.outcome.patient_id.clone())
                .or_default()
                .push(a);
        }
        for (patient, items) in groups {
            let created = items.iter().filter(|a| a.outcome.created).count();
            let changed = items
                .iter()
                .filter(|a| a.outcome.changed && !a.outcome.created)
                .count();
            let unchanged = items.len() - created - changed;
            let action = if created == items.len() { "C" } else { "U" };
            let mut row = audit::row(
                &actor,
                Some(&s.id),
                action,
                interaction,
                audit::outcome::SUCCESS,
            );
            row.patient_id = patient;
            row.entities = items
                .iter()
                .map(|a| format!("{}/{}", a.rtype, a.outcome.gid))
                .collect();
            row.detail = Some(format!(
                "accepted: {created} created, {changed} updated, {unchanged} unchanged"
            ));
            tx.audit(&row).await?;
        }
        tx.commit().await?;
        if !targets.is_empty() || !alert_events.is_empty() {
            self.outbox_signal.notify_waiters();
        }
        self.publish(alert_events);
        Ok(applied)
    }

    /// Records a rejected request (nothing else is stored).
    async fn audit_rejection(
        &self,
        caller: &Caller,
        sector: Option<&str>,
        interaction: &str,
        rtype: &str,
        e: &GatewayError,
    ) {
        let (outcome, detail) = match e {
            GatewayError::Invalid(i) => (
                audit::outcome::MINOR_FAILURE,
                format!("rejected {rtype}: invalid ({} issues)", i.len()),
            ),
            GatewayError::Unprocessable(i) => (
                audit::outcome::MINOR_FAILURE,
                format!(
                    "rejected {rtype}: profile or business rule ({} issues)",
                    i.len()
                ),
            ),
            GatewayError::NotFound(_) => (
                audit::outcome::MINOR_FAILURE,
                format!("rejected {rtype}: not found"),
            ),
            GatewayError::Forbidden(_) => (
                audit::outcome::MINOR_FAILURE,
                format!("rejected {rtype}: forbidden"),
            ),
            GatewayError::Store(_) => (
                audit::outcome::SERIOUS_FAILURE,
                format!("failed {rtype}: store unavailable"),
            ),
        };
        let mut row = audit::row(&caller.actor(), sector, "C", interaction, outcome);
        row.detail = Some(detail);
        self.write_audit(row).await;
    }

    /// Writes a standalone audit row; a failure is logged (without patient data), never hidden.
    pub async fn write_audit(&self, row: AuditRow) {
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

    fn can_read(&self, client: &Client, stored: &Stored) -> bool {
        match &client.role {
            Role::CareTeam => true,
            Role::Sector(own) => *own == stored.sector,
            Role::Auditor | Role::Admin => false,
        }
    }

    /// Reads one resource by gateway id (or, with `sector`, by the sector's own id); audited.
    pub async fn read(
        &self,
        caller: &Caller,
        sector: Option<&str>,
        rtype: &str,
        id: &str,
    ) -> Result<Stored, GatewayError> {
        if matches!(caller.client.role, Role::Auditor | Role::Admin) {
            return Err(GatewayError::Forbidden(
                "auditors read the audit log only; administrators read no patient data".into(),
            ));
        }
        let mut tx = self.store.begin().await?;
        let found = match sector {
            Some(s) => tx.get_sector(s, rtype, id).await?,
            None => tx.get(id).await?,
        };
        let stored = match found {
            Some(s) if s.rtype == rtype => s,
            _ => return Err(GatewayError::NotFound(format!("{rtype}/{id}"))),
        };
        if !self.can_read(&caller.client, &stored) {
            return Err(GatewayError::Forbidden(
                "this client may not read this sector's resources".into(),
            ));
        }
        let mut row = audit::row(
            &caller.actor(),
            Some(&stored.sector),
            "R",
            "read",
            audit::outcome::SUCCESS,
        );
        row.patient_id = stored.patient_id.clone();
        row.entities = vec![format!("{}/{}", stored.rtype, stored.gid)];
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// A gateway patient with its linked sector Patients; audited.
    pub async fn patient(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Option<GatewayPatient>, GatewayError> {
        if caller.client.role != Role::CareTeam {
            // Not a care-team member: the id is read as a sector Patient's gateway id instead.
            return Ok(None);
        }
        let mut tx = self.store.begin().await?;
        let Some(p) = tx.patient(id).await? else {
            return Ok(None);
        };
        let mut row = audit::row(&caller.actor(), None, "R", "read", audit::outcome::SUCCESS);
        row.patient_id = Some(p.id.clone());
        row.entities = vec![format!("Patient/{}", p.id)];
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(Some(p))
    }

    /// Gateway patients by identifier (`system|value`); audited like a read.
    pub async fn patients_by_identifier(
        &self,
        caller: &Caller,
        system: &str,
        value: &str,
    ) -> Result<Vec<GatewayPatient>, GatewayError> {
        if caller.client.role != Role::CareTeam {
            return Err(GatewayError::Forbidden(
                "only care-team members search gateway patients".into(),
            ));
        }
        let mut tx = self.store.begin().await?;
        let found = match tx.patient_by_identifier(system, value).await? {
            Some(id) => tx.patient(&id).await?,
            None => None,
        };
        let mut row = audit::row(
            &caller.actor(),
            None,
            "E",
            "search-type",
            audit::outcome::SUCCESS,
        );
        row.patient_id = found.as_ref().map(|p| p.id.clone());
        row.entities = found.iter().map(|p| format!("Patient/{}", p.id)).collect();
        row.query = Some(format!("Patient?identifier={system}|{value}"));
        row.detail = Some(format!(
            "search Patient by identifier: {} results",
            found.iter().count()
        ));
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(found.into_iter().collect())
    }

    /// Current resources of a gateway patient across sectors (a sector client sees its own).
    pub async fn search_by_patient(
        &self,
        caller: &Caller,
        rtype: &str,
        patient: &str,
        offset: i64,
        count: i64,
    ) -> Result<Vec<Stored>, GatewayError> {
        if matches!(caller.client.role, Role::Auditor | Role::Admin) {
            return Err(GatewayError::Forbidden(
                "auditors read the audit log only; administrators read no patient data".into(),
            ));
        }
        let mut tx = self.store.begin().await?;
        let found = tx.by_patient(patient, Some(rtype), offset, count).await?;
        let visible: Vec<Stored> = found
            .into_iter()
            .filter(|s| self.can_read(&caller.client, s))
            .collect();
        let mut row = audit::row(
            &caller.actor(),
            None,
            "E",
            "search-type",
            audit::outcome::SUCCESS,
        );
        row.patient_id = visible
            .first()
            .and_then(|s| s.patient_id.clone())
            .or_else(|| Some(patient.to_owned()));
        row.entities = visible
            .iter()
            .map(|s| format!("{}/{}", s.rtype, s.gid))
            .collect();
        row.query = Some(format!(
            "{rtype}?patient={patient}&_offset={offset}&_count={count}"
        ));
        row.detail = Some(format!(
            "search {rtype} by patient: {} results",
            visible.len()
        ));
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(visible)
    }

    /// The audit log, for auditors (and administrators); the search itself is audited.
    pub async fn audit_search(
        &self,
        caller: &Caller,
        query: &AuditQuery,
    ) -> Result<Vec<AuditRow>, GatewayError> {
        if caller.client.role != Role::Auditor {
            return Err(GatewayError::Forbidden(
                "only auditors read the audit log".into(),
            ));
        }
        let mut tx = self.store.begin().await?;
        let rows = tx.audit_search(query).await?;
        let mut row = audit::row(
            &caller.actor(),
            None,
            "E",
            "search-type",
            audit::outcome::SUCCESS,
        );
        row.patient_id = query.patient_id.clone();
        row.entities = vec!["AuditEvent".into()];
        row.query = Some(query.describe());
        row.detail = Some(format!("audit search: {} events", rows.len()));
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(rows)
    }
}

/// Checks that a single resource matches its URL (type, and id for PUT).
fn check_entry_shape(e: &Entry) -> Result<(), GatewayError> {
    let at = |p: &str| match &e.location {
        Some(l) => format!("{l}.{p}"),
        None => p.to_owned(),
    };
    if !e.resource.is_object() {
        return Err(GatewayError::invalid(
            Issue::error(
                "structure",
                "the body must be a JSON object holding one FHIR resource",
            )
            .at(at(&e.rtype)),
        ));
    }
    match fhir::resource_type(&e.resource) {
        Some(t) if t == e.rtype => {}
        Some(_) => {
            return Err(GatewayError::invalid(
                Issue::error(
                    "invalid",
                    format!("resourceType does not match the URL's type {}", e.rtype),
                )
                .at(at(&format!("{}.resourceType", e.rtype))),
            ));
        }
        None => {
            return Err(GatewayError::invalid(
                Issue::error("required", "missing resourceType")
                    .at(at(&format!("{}.resourceType", e.rtype))),
            ));
        }
    }
    if let Some(url_id) = &e.url_id {
        if !is_valid_id(url_id) {
            return Err(GatewayError::invalid(
                Issue::error("value", "the id in the URL is not a valid FHIR id")
                    .at(at(&format!("{}.id", e.rtype))),
            ));
        }
        match fhir::resource_id(&e.resource) {
            Some(id) if id == url_id => {}
            Some(_) => {
                return Err(GatewayError::invalid(
                    Issue::error("invalid", "the resource id differs from the id in the URL")
                        .at(at(&format!("{}.id", e.rtype))),
                ));
            }
            None => {
                return Err(GatewayError::invalid(
                    Issue::error("required", "an update must carry the resource id")
                        .at(at(&format!("{}.id", e.rtype))),
                ));
            }
        }
    }
    Ok(())
}

/// The audit row of an alert change (raised, updated, closed by detection; acknowledged by a
/// caller).
pub fn alert_audit_row(
    e: &crate::detect::lifecycle::AlertEvent,
    caller: Option<&Caller>,
) -> AuditRow {
    let actor = match caller {
        Some(c) => c.actor(),
        None => crate::exchange::deliver::actor(),
    };
    let action = match e.kind {
        "raised" => "C",
        _ => "U",
    };
    let mut row = audit::row(&actor, None, action, "alert", audit::outcome::SUCCESS);
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
/// sector's record), else the id already known for its business identifier, else an id derived
/// from the identifier or the content, so that a re-sent create is recognised.
async fn assign_id(
    e: &Entry,
    tx: &mut dyn crate::store::StoreTx,
    sector: &str,
) -> Result<String, GatewayError> {
    if let Some(id) = fhir::resource_id(&e.resource).filter(|id| is_valid_id(id)) {
        return Ok(id.to_owned());
    }
    if let Some((sys, val)) = identifiers(&e.resource).first() {
        if let Some(found) = tx.find_by_identifier(sector, &e.rtype, sys, val).await? {
            return Ok(found);
        }
        return Ok(format!(
            "i{}",
            &content_hash(format!("{sys}|{val}").as_bytes())[..40]
        ));
    }
    let bytes = serde_json::to_vec(&e.resource).unwrap_or_default();
    Ok(format!("h{}", &content_hash(&bytes)[..40]))
}

/// Builds what the store keeps for one resource.
pub fn prepare(s: &SectorSettings, rtype: &str, rid: &str, resource: &Value) -> Prepared {
    // Serialising a Value cannot fail: its keys are strings and its numbers are valid.
    let body = serde_json::to_string(resource).unwrap_or_default();
    let hash = content_hash(body.as_bytes());
    let idents: Vec<(String, String)> = identifiers(resource)
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    let (patient_ref, link_identifiers) = if rtype == "Patient" {
        let links = idents
            .iter()
            .filter(|(sys, _)| *sys == s.patient_identifier_system)
            .cloned()
            .collect();
        (None, links)
    } else {
        (
            patient_reference(resource).and_then(|(_, r)| normalise_patient_ref(s, r)),
            Vec::new(),
        )
    };
    Prepared {
        sector: s.id.clone(),
        rtype: rtype.to_owned(),
        rid: rid.to_owned(),
        body,
        hash,
        patient_ref,
        link_identifiers,
        identifiers: idents,
    }
}

/// `Patient/123`, `Patient/123/_history/2` and `<own base>/Patient/123` become `Patient/123`;
/// a conditional reference stays as it is; anything else names no patient of this sector.
fn normalise_patient_ref(s: &SectorSettings, r: &str) -> Option<String> {
    if r.starts_with("Patient?identifier=") {
        return Some(r.to_owned());
    }
    let local = match &s.base_url {
        Some(base) => r
            .strip_prefix(&format!("{}/", base.trim_end_matches('/')))
            .unwrap_or(r),
        None => r,
    };
    let id = local.strip_prefix("Patient/")?.split('/').next()?;
    is_valid_id(id).then(|| format!("Patient/{id}"))
}

/// Reads the entries of a transaction/batch Bundle; each is an `Entry` or its issues.
fn bundle_entries(bundle: &Value) -> Vec<Result<Entry, Vec<Issue>>> {
    let Some(entries) = bundle.get("entry").and_then(Value::as_array) else {
        return Vec::new();
    };
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let loc = format!("Bundle.entry[{i}]");
            let fail = |code: &'static str, msg: &str, at: &str| {
                vec![Issue::error(code, msg).at(format!("{loc}{at}"))]
            };
            let request = e
                .get("request")
                .ok_or_else(|| fail("required", "each entry needs a request", ".request"))?;
            let method = match request.get("method").and_then(Value::as_str) {
                Some("POST") => Method::Post,
                Some("PUT") => Method::Put,
                Some(m) => {
                    return Err(fail(
                        "not-supported",
                        &format!("{m} entries are not supported: the gateway accepts POST and PUT"),
                        ".request.method",
                    ));
                }
                None => {
                    return Err(fail(
                        "required",
                        "missing request method",
                        ".request.method",
                    ));
                }
            };
            let url = request.get("url").and_then(Value::as_str).unwrap_or("");
            let resource = e.get("resource").cloned().ok_or_else(|| {
                fail(
                    "required",
                    "a POST or PUT entry needs a resource",
                    ".resource",
                )
            })?;
            let rtype = fhir::resource_type(&resource).unwrap_or("").to_owned();
            let path = url.split('?').next().unwrap_or("");
            let mut parts = path.split('/');
            let url_type = parts.next().unwrap_or("");
            let url_id = parts.next().map(str::to_owned);
            if url_type != rtype {
                return Err(fail(
                    "invalid",
                    "request.url does not name the entry resource's type",
                    ".request.url",
                ));
            }
            if method == Method::Put && url_id.is_none() {
                return Err(fail(
                    "invalid",
                    "a PUT entry's url must be Type/id",
                    ".request.url",
                ));
            }
            if method == Method::Post && url_id.is_some() {
                return Err(fail(
                    "invalid",
                    "a POST entry's url must be the resource type only",
                    ".request.url",
                ));
            }
            let if_none_exist = match request.get("ifNoneExist").and_then(Value::as_str) {
                None => None,
                Some(q) => Some(parse_identifier_query(q).ok_or_else(|| {
                    fail(
                        "not-supported",
                        "ifNoneExist supports identifier=system|value only",
                        ".request.ifNoneExist",
                    )
                })?),
            };
            let entry = Entry {
                location: Some(loc.clone()),
                method,
                rtype,
                url_id,
                if_none_exist,
                full_url: e.get("fullUrl").and_then(Value::as_str).map(str::to_owned),
                resource,
            };
            check_entry_shape(&entry).map_err(|err| match err {
                GatewayError::Invalid(i) => i,
                other => vec![Issue::error("invalid", other.to_string()).at(loc.clone())],
            })?;
            Ok(entry)
        })
        .collect()
}

/// `identifier=system|value` → (system, value).
pub fn parse_identifier_query(q: &str) -> Option<(String, String)> {
    let v = q.strip_prefix("identifier=")?;
    let v = percent_decode(v);
    let (s, val) = v.split_once('|')?;
    (!s.is_empty() && !val.is_empty()).then(|| (s.to_owned(), val.to_owned()))
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The response Bundle of a transaction or batch.
fn response_bundle(kind: &str, results: Vec<Result<Applied, GatewayError>>) -> Value {
    let entries: Vec<Value> = results
        .into_iter()
        .map(|r| match r {
            Ok(a) => {
                let status = if a.outcome.created {
                    "201 Created"
                } else {
                    "200 OK"
                };
                json!({ "response": {
                    "status": status,
                    "location": format!("{}/{}/_history/{}", a.rtype, a.rid, a.outcome.version),
                    "etag": format!("W/\"{}\"", a.outcome.version),
                    "lastModified": a.outcome.last_updated,
                }})
            }
            Err(e) => {
                let (status, issues) = crate::api::error::status_and_issues(&e);
                json!({ "response": {
                    "status": status.as_u16().to_string(),
                    "outcome": crate::fhir::outcome::operation_outcome(&issues),
                }})
            }
        })
        .collect();
    json!({ "resourceType": "Bundle", "type": kind, "entry": entries })
}
