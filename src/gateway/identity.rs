//! Patient identity and care membership. Identity that one message cannot merge: a write that would join two gateway
//! patients without the sector's authority is held (422, kept in `held_writes`, an operational
//! alert: a warning in the log and `carebridge_held_writes_total`); every merge is audited with
//! both patients; an operator releases or rejects a held write, and undoes a merge
//! (`carebridge patients held …`, `carebridge patients unmerge`), each audited. Care
//! membership: every backfill to a sector that joined a patient's care is audited as a
//! disclosure, and a sector joining the care of many new patients raises an operational alert.

use super::entry::Entry;
use super::{Gateway, GatewayError};
use crate::access::{Caller, Request, authorize};
use crate::audit::{self, Action, Actor, AuditRow, Interaction, Outcome};
use crate::config::SectorSettings;
use crate::exchange::route::Join;
use crate::fhir::json::Node;
use crate::fhir::outcome::Issue;
use crate::metrics::SectorLabels;
use crate::store::{HeldNew, HeldWrite, RoutedEntry, StoreTx, Unmerged};

/// What undoing a merge did and what was routed for the two patients while they were one.
#[derive(Debug, Clone)]
pub struct UnmergeReport {
    pub unmerged: Unmerged,
    pub routed: Vec<RoutedEntry>,
}

impl Gateway {
    /// Keeps a write that would have joined `patients` for review, with its audit row, and
    /// answers the 422 that says why.
    pub(super) async fn hold(
        &self,
        caller: &Caller,
        s: &SectorSettings,
        entries: &[Entry<Node<'_>>],
        interaction: Interaction,
        reason: String,
        patients: Vec<String>,
    ) -> GatewayError {
        let held = HeldNew {
            sector: s.id.clone(),
            interaction: interaction.code().to_owned(),
            client_id: Some(caller.client.id.clone()),
            // Entries are plain data (strings, JSON values whose numbers the strict parser
            // read): they always convert and serialise.
            entries: entries
                .iter()
                .map(Entry::to_owned_entry)
                .collect::<Result<Vec<_>, _>>()
                .and_then(|owned| serde_json::to_string(&owned))
                .unwrap_or_else(|_| "[]".into()),
            reason: reason.clone(),
            patients: patients.clone(),
        };
        let mut row = audit::row(
            &caller.actor(),
            Some(&s.id),
            Action::Create,
            Interaction::HoldWrite,
            Outcome::MinorFailure,
        );
        row.patient_id = patients.first().cloned();
        row.entities = patients.iter().map(|p| format!("Patient/{p}")).collect();
        let stored = async {
            let mut tx = self.store.begin().await?;
            let id = tx.held_add(&held).await?;
            row.detail = Some(format!(
                "write held for review as held write {id}: {reason}"
            ));
            tx.audit(&row).await?;
            tx.commit().await?;
            Ok::<i64, crate::store::StoreError>(id)
        }
        .await;
        let id = match stored {
            Ok(id) => id,
            Err(e) => return GatewayError::Store(e),
        };
        self.metrics
            .held_writes
            .get_or_create(&SectorLabels {
                sector: s.id.clone(),
            })
            .inc();
        tracing::warn!(
            sector = %s.id,
            held_write = id,
            patients = patients.len(),
            "a write that would join gateway patients was held for review (carebridge patients held list)"
        );
        GatewayError::Unprocessable(vec![Issue::error(
            "business-rule",
            format!(
                "{reason}; nothing was stored and the write is held for review as held write {id} \
                 (an operator releases or rejects it)"
            ),
        )])
    }

    /// Held writes, newest first (only those in `state` when given).
    pub async fn held_writes(
        &self,
        caller: &Caller,
        state: Option<&str>,
    ) -> Result<Vec<HeldWrite>, GatewayError> {
        authorize(caller, Request::PatientIdentity)?;
        let mut tx = self.store.begin_read().await?;
        Ok(tx.held_list(state).await?)
    }

    /// Applies a held write as its sector, joining the patients it names; audited.
    pub async fn release_held(&self, caller: &Caller, id: i64) -> Result<usize, GatewayError> {
        authorize(caller, Request::PatientIdentity)?;
        let held = self.held_pending(id).await?;
        let s = self
            .sector(&held.sector)
            .ok_or_else(|| GatewayError::NotFound(format!("no sector '{}'", held.sector)))?;
        let entries: Vec<Entry> = serde_json::from_str(&held.entries)
            .map_err(|_| GatewayError::Conflict(format!("held write {id} cannot be read back")))?;
        let interaction = Interaction::parse(&held.interaction).unwrap_or(Interaction::Transaction);
        // Stored as the sector's write; the audit rows name the operator who released it.
        let arena = crate::fhir::json::Arena::new();
        let views = entries.iter().map(|e| e.view(&arena)).collect();
        let applied = self.apply_with(caller, s, views, interaction, true).await?;
        self.decide_held(caller, &held, "released", applied.len())
            .await?;
        Ok(applied.len())
    }

    /// Marks a held write rejected (nothing of it is stored); audited.
    pub async fn reject_held(&self, caller: &Caller, id: i64) -> Result<(), GatewayError> {
        authorize(caller, Request::PatientIdentity)?;
        let held = self.held_pending(id).await?;
        self.decide_held(caller, &held, "rejected", 0).await
    }

    async fn held_pending(&self, id: i64) -> Result<HeldWrite, GatewayError> {
        let mut tx = self.store.begin_read().await?;
        match tx.held_get(id).await? {
            Some(h) if h.state == "held" => Ok(h),
            Some(h) => Err(GatewayError::Conflict(format!(
                "held write {id} was already {}",
                h.state
            ))),
            None => Err(GatewayError::NotFound(format!("no held write {id}"))),
        }
    }

    async fn decide_held(
        &self,
        caller: &Caller,
        held: &HeldWrite,
        state: &str,
        applied: usize,
    ) -> Result<(), GatewayError> {
        let mut tx = self.store.begin().await?;
        let by = caller.client.id.clone();
        if !tx.held_decide(held.id, state, &by).await? {
            return Err(GatewayError::Conflict(format!(
                "held write {} is no longer held",
                held.id
            )));
        }
        let mut row = audit::row(
            &caller.actor(),
            Some(&held.sector),
            Action::Update,
            Interaction::ReviewHeldWrite,
            Outcome::Success,
        );
        let patients: Vec<String> = serde_json::from_str(&held.patients).unwrap_or_default();
        row.patient_id = patients.first().cloned();
        row.entities = patients.iter().map(|p| format!("Patient/{p}")).collect();
        row.detail = Some(format!(
            "held write {} {state} ({applied} entries applied)",
            held.id
        ));
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Undoes the merge of gateway patient `from`: its identifiers and the records its sector
    /// Patients name are its own again, and both patients' alerts are decided again; lists what
    /// was routed for either patient since the merge (it may have reached a sector of the other
    /// person). Audited.
    pub async fn unmerge(
        &self,
        caller: &Caller,
        from: &str,
    ) -> Result<UnmergeReport, GatewayError> {
        authorize(caller, Request::PatientIdentity)?;
        let mut tx = self.store.begin().await?;
        let Some(unmerged) = tx.unmerge(from).await? else {
            return Err(GatewayError::NotFound(format!(
                "gateway patient {from} is not merged into another"
            )));
        };
        let patients = [unmerged.into.clone(), from.to_owned()];
        let routed = tx.routed_since(&patients, unmerged.merged_us).await?;
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Update,
            Interaction::Unmerge,
            Outcome::Success,
        );
        row.patient_id = Some(unmerged.into.clone());
        row.entities = vec![format!("Patient/{from}")];
        row.detail = Some(format!(
            "unmerged {from} from {}: {} identifiers and {} records back; {} outbox entries \
             routed for them since the merge",
            unmerged.into,
            unmerged.identifiers,
            unmerged.resources,
            routed.len()
        ));
        tx.audit(&row).await?;
        // Alerts drawn from both people's records while they were one are decided again, for
        // each of them.
        let patients: std::collections::BTreeSet<String> = patients.into_iter().collect();
        let events = self.detect(&mut *tx, &patients).await?;
        tx.commit().await?;
        if !events.is_empty() {
            self.outbox_signal.notify_waiters();
        }
        self.publish(events);
        Ok(UnmergeReport { unmerged, routed })
    }
}

impl Gateway {
    /// Audits each sector that joined a patient's care as a disclosure (what was queued for it
    /// and why), and raises an operational alert when a sector joins the care of more new
    /// patients within an hour than `exchange.max_new_patients_per_hour`.
    pub(super) async fn disclose(
        &self,
        tx: &mut dyn StoreTx,
        caller: &Caller,
        joins: &[Join],
    ) -> Result<(), GatewayError> {
        let limit = i64::from(self.settings.exchange.max_new_patients_per_hour);
        let mut counted: Vec<(&str, i64)> = Vec::new();
        for j in joins {
            let mut row = audit::row(
                &caller.actor(),
                None,
                Action::Execute,
                Interaction::Backfill,
                Outcome::Success,
            );
            row.target_sector = Some(j.sector.clone());
            row.patient_id = Some(j.patient.clone());
            row.entities = j.queued.clone();
            row.purpose = Some("TREAT".into());
            row.detail = Some(format!(
                "sector {} joined the patient's care ({}): {} records queued for it",
                j.sector,
                j.why,
                j.queued.len()
            ));
            tx.audit(&row).await?;
            if limit == 0 {
                continue;
            }
            let since = crate::fhir::time::now_us() - 3_600_000_000;
            let earlier = match counted.iter_mut().find(|(s, _)| *s == j.sector) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    let n = tx.backfills_since(&j.sector, since).await? + 1;
                    counted.push((&j.sector, n));
                    n
                }
            };
            if earlier > limit {
                self.metrics
                    .care_join_alerts
                    .get_or_create(&SectorLabels {
                        sector: j.sector.clone(),
                    })
                    .inc();
                tracing::warn!(
                    sector = %j.sector,
                    joined_last_hour = earlier,
                    limit,
                    "a sector joined the care of more new patients within an hour than exchange.max_new_patients_per_hour"
                );
            }
        }
        Ok(())
    }
}

/// The audit rows of the merges a write made: one per merged patient, naming both.
pub(super) fn merge_rows(
    actor: &Actor,
    sector: &str,
    interaction: Interaction,
    merges: &[(String, String)],
) -> Vec<AuditRow> {
    merges
        .iter()
        .map(|(from, into)| {
            let mut row = audit::row(actor, Some(sector), Action::Update, Interaction::Merge, {
                Outcome::Success
            });
            row.patient_id = Some(into.clone());
            row.entities = vec![format!("Patient/{from}")];
            row.detail = Some(format!(
                "gateway patient {from} merged into {into} by a {} of sector {sector} \
                 (carebridge patients unmerge {from} undoes it)",
                interaction.code()
            ));
            row
        })
        .collect()
}

/// Writes the merge rows of `applied` outcomes into `tx`.
pub(super) async fn audit_merges(
    tx: &mut dyn StoreTx,
    actor: &Actor,
    sector: &str,
    interaction: Interaction,
    merges: &[(String, String)],
) -> Result<(), GatewayError> {
    for row in merge_rows(actor, sector, interaction, merges) {
        tx.audit(&row).await?;
    }
    Ok(())
}
