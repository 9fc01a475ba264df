//! The console's inbox: one page of the signed-in person's open alerts, in inbox order
//! (severity, then the oldest first). The store returns the open alerts in that order with the
//! column filters (code, status, sector, severity, snoozed) applied, a chunk at a time
//! (`alert_inbox`, keyset paging); the treatment relationship is decided once per distinct
//! patient of the rows read (decisions kept for the request), rows of patients the person may
//! not read are skipped, and reading stops when the page is full. The owner filter needs each
//! patient's coordinator, so it is applied with the relationship, per patient. One audit row
//! names exactly what was shown: the alerts of the page and the patients whose names and owners
//! it shows.

use serde_json::Value;
use std::collections::HashMap;

use super::console::PatientCard;
use super::history::served;
use super::relation::{Access, mark_all, merge_bases};
use super::{Gateway, GatewayError};
use crate::access::{Basis, Caller, Request};
use crate::audit::{self, Action, Interaction, Outcome};
use crate::fhir::time::now_us;
use crate::store::alerts::severity_rank;
use crate::store::{InboxQuery, InboxRow, Snoozed, StoreTx};

/// Rows read from the store at a time while filling a page.
const CHUNK: i64 = 200;

/// What the inbox is asked for (empty strings: no filter).
#[derive(Debug, Clone, Default)]
pub struct InboxFilter {
    pub code: String,
    /// A DetectedIssue status (`preliminary`, `amended`, `final`), or `snoozed` for the
    /// snoozed alerts (which the other views leave out).
    pub status: String,
    pub sector: String,
    /// `high`, `moderate` or `low`.
    pub severity: String,
    /// `coordinator` (a coordinator owns the alert) or `nobody`.
    pub owner: String,
}

/// One page of the inbox.
#[derive(Debug, Default)]
pub struct InboxPage {
    /// The alerts shown, as served DetectedIssues, in inbox order.
    pub alerts: Vec<Value>,
    /// Names and owners of their patients.
    pub cards: HashMap<String, PatientCard>,
    /// When more alerts follow: the id of the page's last alert (the next page starts after it).
    pub next: Option<String>,
}

/// A patient's decision within one request: `None` when the person may not read them.
type Decided = HashMap<String, Option<(Access, PatientCard)>>;

impl InboxFilter {
    fn query(&self, now: i64) -> InboxQuery {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let snoozed = self.status == "snoozed";
        InboxQuery {
            code: some(&self.code),
            status: if snoozed { None } else { some(&self.status) },
            sector: some(&self.sector),
            severity_rank: match self.severity.as_str() {
                "high" => Some(0),
                "moderate" => Some(1),
                "low" => Some(2),
                _ => None,
            },
            snoozed: if snoozed {
                Snoozed::Only
            } else {
                Snoozed::Awake
            },
            now_us: now,
            after: None,
            limit: CHUNK,
        }
    }

    /// Whether an alert of a patient with this card passes the owner filter.
    fn owner_matches(&self, card: &PatientCard) -> bool {
        match self.owner.as_str() {
            "coordinator" => card.coordinator.is_some(),
            "nobody" => card.coordinator.is_none(),
            _ => true,
        }
    }
}

impl Gateway {
    /// One page of at most `rows` open alerts the caller may read, after the alert `after`
    /// (an id from [`InboxPage::next`]); audited in one row naming what was shown.
    pub async fn inbox(
        &self,
        caller: &Caller,
        filter: &InboxFilter,
        after: Option<&str>,
        rows: usize,
    ) -> Result<InboxPage, GatewayError> {
        self.gate(caller, Request::Alerts, Interaction::SearchType)
            .await?;
        let now = now_us();
        let mut q = filter.query(now);
        let mut tx = self.store.begin().await?;
        if let Some(id) = after {
            let Some(a) = tx.alert_get(id).await? else {
                return Err(GatewayError::NotFound(format!("DetectedIssue/{id}")));
            };
            q.after = Some((severity_rank(&a.body), a.created_us, a.id));
        }
        let mut decided = Decided::new();
        // One row more than the page: whether another page follows.
        let mut shown = self
            .fill_page(&mut *tx, caller, filter, &mut q, &mut decided, rows + 1)
            .await?;
        let more = shown.len() > rows;
        shown.truncate(rows);
        let mut page = InboxPage::default();
        let mut bases: Vec<Basis> = Vec::new();
        for r in &shown {
            if let Some(Some((access, card))) = decided.get(&r.alert.patient_id) {
                merge_bases(&mut bases, vec![access.basis.clone()]);
                page.cards.insert(r.alert.patient_id.clone(), card.clone());
            }
            page.alerts.push(served(&r.alert, &r.snooze, now)?);
        }
        if more {
            page.next = shown.last().map(|r| r.alert.id.clone());
        }
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Read,
            Interaction::SearchType,
            Outcome::Success,
        );
        row.entities = shown
            .iter()
            .map(|r| format!("DetectedIssue/{}", r.alert.id))
            .collect();
        let mut patients: Vec<&String> = page.cards.keys().collect();
        patients.sort();
        row.entities
            .extend(patients.iter().map(|p| format!("Patient/{p}")));
        if let [one] = patients.as_slice() {
            row.patient_id = Some((*one).clone());
        }
        row.purpose = Some("TREAT".into());
        mark_all(&mut row, &bases);
        row.detail = Some(format!(
            "console inbox: {} alerts of {} patients shown, with names and owners",
            shown.len(),
            patients.len()
        ));
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(page)
    }

    /// Reads open alerts in order, a chunk at a time, until `rows` of them are of patients the
    /// caller may read (and pass the owner filter) or none are left.
    async fn fill_page(
        &self,
        tx: &mut dyn StoreTx,
        caller: &Caller,
        filter: &InboxFilter,
        q: &mut InboxQuery,
        decided: &mut Decided,
        rows: usize,
    ) -> Result<Vec<InboxRow>, GatewayError> {
        let mut shown = Vec::new();
        while shown.len() < rows {
            let chunk = tx.alert_inbox(q).await?;
            let exhausted = chunk.len() < usize::try_from(q.limit).unwrap_or(0);
            for r in chunk {
                q.after = Some(r.sort_key());
                let pid = r.alert.patient_id.clone();
                if !decided.contains_key(&pid) {
                    let d = match self.patient_access(tx, caller, &pid).await? {
                        Ok(access) => {
                            let card = self.card(tx, caller, &pid, &access).await?;
                            Some((access, card))
                        }
                        Err(_) => None,
                    };
                    decided.insert(pid.clone(), d);
                }
                if matches!(decided.get(&pid), Some(Some((_, card))) if filter.owner_matches(card))
                {
                    shown.push(r);
                    if shown.len() == rows {
                        break;
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        Ok(shown)
    }
}
