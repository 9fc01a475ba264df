//! Search over the stored resources, on the cross-sector base (gateway ids) and on a sector's
//! base (the sector's own ids): the store narrows by type, sector, patient, `_id`,
//! `identifier` and `_lastUpdated`; the registry ([`super::params`]) matches the rest on the
//! resources themselves; then [`Gateway::visible`] keeps what the caller may see, and the
//! result is sorted, counted, paged and its `_include`s and `_revinclude`s are added. Also
//! history (instance and type) and vread. Every search and read is audited.

use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};

use super::params::{self, Criteria, SortKey};
use super::relation::{mark_all, merge_bases};
use super::{Gateway, GatewayError};
use crate::access::{Basis, Caller, Request, authorize};
use crate::audit::{self, Action, AuditRow, Interaction, Outcome};
use crate::fhir::outcome::Issue;
use crate::fhir::parse_relative;
use crate::ids::gateway_id;
use crate::store::{GatewayPatient, SearchFilter, StoreTx, Stored};

/// More candidates than this and the search is refused as too costly (narrow it by patient,
/// identifier or `_lastUpdated`).
pub const MAX_CANDIDATES: i64 = 10_000;

/// Searches answer at most this many entries per page, 100 when `_count` is not given.
pub const DEFAULT_COUNT: i64 = 100;
pub const MAX_COUNT: i64 = 1000;

/// What an `_include` or `_revinclude` added.
#[derive(Debug, Clone)]
pub enum Included {
    Record(Stored),
    Patient(GatewayPatient),
    Alert(Value),
}

/// One page of a search.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Every match the caller may see (before paging).
    pub total: usize,
    pub page: Vec<Stored>,
    pub included: Vec<Included>,
    pub offset: i64,
    pub count: i64,
}

impl Gateway {
    /// The records of `found` the caller may see: the one place where a search, a history or an
    /// `_include` decides record by record — the record's sector (`authorize(Record)`), and for
    /// a care-team member the treatment relationship with the record's patient (decided once
    /// per patient) and the record's private marking. Returns the records kept and the bases
    /// they were kept on (for the audit row).
    pub(crate) async fn visible(
        &self,
        tx: &mut dyn StoreTx,
        caller: &Caller,
        found: Vec<Stored>,
    ) -> Result<(Vec<Stored>, Vec<Basis>), GatewayError> {
        let found: Vec<Stored> = found
            .into_iter()
            .filter(|s| authorize(caller, Request::Record { sector: &s.sector }).is_ok())
            .collect();
        let patients: Vec<String> = found.iter().filter_map(|s| s.patient_id.clone()).collect();
        let decided = self.decide_each(tx, caller, patients).await?;
        let mut kept = Vec::with_capacity(found.len());
        let mut bases: Vec<Basis> = Vec::new();
        for s in found {
            let access = match &s.patient_id {
                None => None,
                Some(pid) => match decided.get(pid) {
                    Some(Some(access)) => Some(access),
                    _ => continue,
                },
            };
            if let Some(access) = access {
                if !self.record_shown(caller, &s, access) {
                    continue;
                }
                merge_bases(&mut bases, vec![access.basis.clone()]);
            }
            kept.push(s);
        }
        Ok((kept, bases))
    }

    /// A search of `rtype` on the cross-sector base (`sector` `None`) or a sector's base.
    pub async fn search(
        &self,
        caller: &Caller,
        sector: Option<&str>,
        rtype: &str,
        c: &Criteria,
    ) -> Result<Found, GatewayError> {
        self.gate(caller, Request::PatientData, Interaction::SearchType)
            .await?;
        let mut tx = self.store.begin_audited().await?;
        let filter = self.filter(&mut *tx, sector, rtype, c).await?;
        // A search for one patient is refused (and audited) when that patient is not readable.
        if let Some(pid) = filter.as_ref().and_then(|f| f.patient_id.clone()) {
            tx = self
                .admit(tx, caller, &pid, Interaction::SearchType)
                .await?
                .0;
        }
        let candidates = match &filter {
            Some(f) => tx.search(f).await?,
            None => Vec::new(),
        };
        if candidates.len() as i64 > MAX_CANDIDATES {
            return Err(GatewayError::invalid(
                Issue::error(
                    "too-costly",
                    format!("the search reads more than {MAX_CANDIDATES} {rtype} resources; narrow it by patient, identifier or _lastUpdated"),
                )
                .at(rtype.to_owned()),
            ));
        }
        let mut matched = Vec::with_capacity(candidates.len());
        for s in candidates {
            if params::matches(&s.json()?, &s.sector, &c.matched) {
                matched.push(s);
            }
        }
        let (mut matched, mut bases) = self.visible(&mut *tx, caller, matched).await?;
        sort(&mut matched, &c.sort)?;
        let count = c.count.unwrap_or(DEFAULT_COUNT).min(MAX_COUNT);
        let total = matched.len();
        let page: Vec<Stored> = if c.summary_count {
            Vec::new()
        } else {
            matched
                .into_iter()
                .skip(usize::try_from(c.offset).unwrap_or(usize::MAX))
                .take(usize::try_from(count).unwrap_or(0))
                .collect()
        };
        let mut included = self
            .includes(caller, &mut *tx, sector, &page, c, &mut bases)
            .await?;
        included.extend(
            self.revincludes(caller, &mut *tx, &page, c, &mut bases)
                .await?,
        );
        let row = search_row(caller, sector, rtype, c, (&page, &included, total), &bases);
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(Found {
            total,
            page,
            included,
            offset: c.offset,
            count,
        })
    }

    /// What the store narrows by; `None` when nothing can match (a sector Patient that is not
    /// known).
    async fn filter(
        &self,
        tx: &mut dyn StoreTx,
        sector: Option<&str>,
        rtype: &str,
        c: &Criteria,
    ) -> Result<Option<SearchFilter>, GatewayError> {
        let patient_id = match (&c.patient, sector) {
            (None, _) => None,
            (Some(p), None) => Some(p.clone()),
            // On a sector's base, `patient` names the sector's own Patient.
            (Some(p), Some(s)) => match tx
                .get_sector(s, "Patient", p)
                .await?
                .and_then(|x| x.patient_id)
            {
                Some(id) => Some(id),
                None => return Ok(None),
            },
        };
        let (gids, rids) = match sector {
            None => (c.ids.clone(), None),
            Some(_) => (None, c.ids.clone()),
        };
        Ok(Some(SearchFilter {
            rtype: rtype.to_owned(),
            sector: sector.map(str::to_owned),
            patient_id,
            gids,
            rids,
            identifier: c.identifier.clone(),
            updated_from: c.updated_from.clone(),
            updated_to: c.updated_to.clone(),
            limit: MAX_CANDIDATES + 1,
        }))
    }

    /// The resources the page's `_include`s name: records (by the sector's own reference),
    /// the gateway patient (cross-sector `patient`/`subject`), alerts (`Communication:about`).
    async fn includes(
        &self,
        caller: &Caller,
        tx: &mut dyn StoreTx,
        sector: Option<&str>,
        page: &[Stored],
        c: &Criteria,
        bases: &mut Vec<Basis>,
    ) -> Result<Vec<Included>, GatewayError> {
        let mut gids = BTreeSet::new();
        let mut patients = BTreeSet::new();
        let mut alerts = BTreeSet::new();
        for include in &c.includes {
            let Some((_, name)) = include.split_once(':') else {
                continue;
            };
            for s in page {
                let Some(param) = params::params_of(&s.rtype)
                    .into_iter()
                    .flatten()
                    .find(|p| p.name == name)
                else {
                    continue;
                };
                let body = s.json()?;
                for v in param.paths.iter().flat_map(|p| params::values_at(&body, p)) {
                    let Some(reference) = v.get("reference").and_then(Value::as_str) else {
                        continue;
                    };
                    match parse_relative(reference) {
                        Some(("Patient", _))
                            if sector.is_none() && matches!(name, "patient" | "subject") =>
                        {
                            if let Some(p) = &s.patient_id {
                                patients.insert(p.clone());
                            }
                        }
                        Some(("DetectedIssue", id))
                            if s.sector == crate::config::GATEWAY_SECTOR =>
                        {
                            alerts.insert(id.to_owned());
                        }
                        Some((t, id)) => {
                            gids.insert(gateway_id(&s.sector, t, id));
                        }
                        None => {}
                    }
                }
            }
        }
        let mut out = Vec::new();
        let gids: Vec<String> = gids.into_iter().collect();
        let fetched = tx.get_many(&gids).await?;
        let (records, more) = self.visible(tx, caller, fetched).await?;
        merge_bases(bases, more);
        out.extend(records.into_iter().map(Included::Record));
        if authorize(caller, Request::GatewayPatient).is_ok() {
            for p in patients {
                if let Some(gp) = tx.patient(&p).await?
                    && let Ok(a) = self.patient_access(tx, caller, &gp.id).await?
                {
                    merge_bases(bases, vec![a.basis]);
                    out.push(Included::Patient(gp));
                }
            }
        }
        if authorize(caller, Request::Alerts).is_ok() {
            for id in alerts {
                if let Some(a) = tx.alert_get(&id).await?
                    && let Ok(access) = self.patient_access(tx, caller, &a.patient_id).await?
                {
                    merge_bases(bases, vec![access.basis]);
                    out.push(Included::Alert(a.json()?));
                }
            }
        }
        Ok(out)
    }

    /// Resources of the page's patients whose reference parameter points at a page resource.
    async fn revincludes(
        &self,
        caller: &Caller,
        tx: &mut dyn StoreTx,
        page: &[Stored],
        c: &Criteria,
        bases: &mut Vec<Basis>,
    ) -> Result<Vec<Included>, GatewayError> {
        let patients: BTreeSet<&str> = page
            .iter()
            .filter_map(|s| s.patient_id.as_deref())
            .collect();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for rev in &c.revincludes {
            let Some((rtype, name)) = rev.split_once(':') else {
                continue;
            };
            let Some(param) = params::params_of(rtype)
                .into_iter()
                .flatten()
                .find(|p| p.name == name)
            else {
                continue;
            };
            let criteria: Vec<params::Criterion> = vec![params::Criterion {
                param: *param,
                modifier: None,
                values: page
                    .iter()
                    .map(|s| format!("{}/{}", s.rtype, s.gid))
                    .collect(),
            }];
            for p in &patients {
                let filter = SearchFilter {
                    rtype: rtype.to_owned(),
                    patient_id: Some((*p).to_owned()),
                    limit: MAX_CANDIDATES,
                    ..SearchFilter::default()
                };
                for s in tx.search(&filter).await? {
                    if params::matches(&s.json()?, &s.sector, &criteria)
                        && seen.insert(s.gid.clone())
                    {
                        out.push(s);
                    }
                }
            }
        }
        let (kept, more) = self.visible(tx, caller, out).await?;
        merge_bases(bases, more);
        Ok(kept.into_iter().map(Included::Record).collect())
    }

    /// Every version of one resource, newest first (`sector` `None`: by gateway id); audited.
    pub async fn history(
        &self,
        caller: &Caller,
        sector: Option<&str>,
        rtype: &str,
        id: &str,
    ) -> Result<Vec<Stored>, GatewayError> {
        self.gate(caller, Request::PatientData, Interaction::Read)
            .await?;
        let gid = match sector {
            Some(s) => gateway_id(s, rtype, id),
            None => id.to_owned(),
        };
        let mut tx = self.store.begin_audited().await?;
        let versions: Vec<Stored> = tx.versions(&gid).await?;
        let Some(newest) = versions.first().filter(|v| v.rtype == rtype).cloned() else {
            return Err(GatewayError::NotFound(format!("{rtype}/{id}")));
        };
        authorize(
            caller,
            Request::Record {
                sector: &newest.sector,
            },
        )?;
        let (tx2, basis) = self.admit_record(tx, caller, &newest).await?;
        tx = tx2;
        let (versions, _) = self.visible(&mut *tx, caller, versions).await?;
        self.audit_history(
            &mut *tx,
            caller,
            sector,
            (&versions, &basis),
            Interaction::Read,
            format!("{rtype}/{id}/_history"),
        )
        .await?;
        tx.commit().await?;
        Ok(versions)
    }

    /// One version of one resource (`vread`); audited.
    pub async fn vread(
        &self,
        caller: &Caller,
        sector: Option<&str>,
        rtype: &str,
        id: &str,
        version: i64,
    ) -> Result<Stored, GatewayError> {
        authorize(caller, Request::PatientData)?;
        let gid = match sector {
            Some(s) => gateway_id(s, rtype, id),
            None => id.to_owned(),
        };
        let mut tx = self.store.begin_audited().await?;
        let stored = match tx.version(&gid, version).await? {
            Some(s) if s.rtype == rtype => s,
            _ => {
                return Err(GatewayError::NotFound(format!(
                    "{rtype}/{id}/_history/{version}"
                )));
            }
        };
        authorize(
            caller,
            Request::Record {
                sector: &stored.sector,
            },
        )?;
        let (tx2, basis) = self.admit_record(tx, caller, &stored).await?;
        tx = tx2;
        self.audit_history(
            &mut *tx,
            caller,
            sector,
            (std::slice::from_ref(&stored), &basis),
            Interaction::Read,
            format!("{rtype}/{id}/_history/{version}"),
        )
        .await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// Versions of every resource of a type the caller may see, newest first; audited.
    pub async fn type_history(
        &self,
        caller: &Caller,
        sector: Option<&str>,
        rtype: &str,
        offset: i64,
        count: i64,
    ) -> Result<Vec<Stored>, GatewayError> {
        self.gate(caller, Request::PatientData, Interaction::SearchType)
            .await?;
        let mut tx = self.store.begin_audited().await?;
        let found = tx.type_history(rtype, sector, offset, count).await?;
        let (versions, bases) = self.visible(&mut *tx, caller, found).await?;
        self.audit_history(
            &mut *tx,
            caller,
            sector,
            (&versions, &bases),
            Interaction::SearchType,
            format!("{rtype}/_history?_offset={offset}&_count={count}"),
        )
        .await?;
        tx.commit().await?;
        Ok(versions)
    }

    async fn audit_history(
        &self,
        tx: &mut dyn StoreTx,
        caller: &Caller,
        sector: Option<&str>,
        (versions, bases): (&[Stored], &[Basis]),
        interaction: Interaction,
        query: String,
    ) -> Result<(), GatewayError> {
        let mut row = audit::row(
            &caller.actor(),
            sector,
            Action::Read,
            interaction,
            Outcome::Success,
        );
        row.patient_id = versions.first().and_then(|s| s.patient_id.clone());
        let mut entities: Vec<String> = versions
            .iter()
            .map(|s| format!("{}/{}", s.rtype, s.gid))
            .collect();
        entities.dedup();
        row.entities = entities;
        mark_all(&mut row, bases);
        row.query = Some(query);
        row.detail = Some(format!("{} versions returned", versions.len()));
        tx.audit(&row).await?;
        Ok(())
    }
}

/// The audit row of one search: what it returned and included, on which bases.
fn search_row(
    caller: &Caller,
    sector: Option<&str>,
    rtype: &str,
    c: &Criteria,
    (page, included, total): (&[Stored], &[Included], usize),
    bases: &[Basis],
) -> AuditRow {
    let mut row = audit::row(
        &caller.actor(),
        sector,
        Action::Execute,
        Interaction::SearchType,
        Outcome::Success,
    );
    row.patient_id = page
        .first()
        .and_then(|s| s.patient_id.clone())
        .or_else(|| c.patient.clone());
    row.entities = page
        .iter()
        .map(|s| format!("{}/{}", s.rtype, s.gid))
        .chain(included.iter().filter_map(|i| match i {
            Included::Record(s) => Some(format!("{}/{}", s.rtype, s.gid)),
            _ => None,
        }))
        .collect();
    mark_all(&mut row, bases);
    row.query = Some(format!("{rtype}?{}", query_text(&c.executed)));
    row.detail = Some(format!(
        "search {rtype}: {total} matches, {} returned, {} included",
        page.len(),
        included.len()
    ));
    row
}

/// Sorts by the `_sort` keys (none: the store's gateway id order stays).
fn sort(items: &mut [Stored], keys: &[(SortKey, bool)]) -> Result<(), GatewayError> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut dates = HashMap::new();
    for s in items.iter() {
        for (k, _) in keys {
            if let SortKey::Date(p) = k {
                dates.insert((s.gid.clone(), p.name), params::sort_date(&s.json()?, p));
            }
        }
    }
    items.sort_by(|a, b| {
        for (k, desc) in keys {
            let ord = match k {
                SortKey::LastUpdated => a.last_updated.cmp(&b.last_updated),
                SortKey::Id => a.gid.cmp(&b.gid),
                SortKey::Date(p) => dates
                    .get(&(a.gid.clone(), p.name))
                    .cmp(&dates.get(&(b.gid.clone(), p.name))),
            };
            let ord = if *desc { ord.reverse() } else { ord };
            if ord != std::cmp::Ordering::Equal {
                return ord;
            }
        }
        a.gid.cmp(&b.gid)
    });
    Ok(())
}

/// `k=v&k=v`, values percent-encoded.
pub fn query_text(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, QUERY_VALUE)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// What is escaped in a query value (`|`, `,` and `:` are kept readable).
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'|')
    .remove(b',')
    .remove(b':')
    .remove(b'/');
