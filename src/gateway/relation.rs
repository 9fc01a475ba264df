//! Treatment relationships (Sundhedsloven § 42 a): the evidence [`crate::access`] decides on,
//! gathered from the stored records for one caller and one patient, and the refusals audited.
//!
//! - **CareTeam**: an active CareTeam of the patient (any sector) whose participant (`member`
//!   or `onBehalfOf`) or `managingOrganization` names the person or their organisation — by a
//!   reference to a Practitioner/Organization record carrying their identifier (the sector's
//!   own record, its gateway id, or the copy the gateway delivered to another sector), or by
//!   the identifier itself.
//! - **Exchange**: the person's sector sent a record about the patient, or had one delivered,
//!   within `[access] exchange_window_days`.
//! - **Launch**: the token's launch context names the patient (by gateway id or identifier).
//! - **Blocks**: an active Consent of the patient with `provision.type = deny` in force now,
//!   whose `provision.actor`s name the person or their organisation, or name nobody (a block
//!   for everyone).
//! - **Break-the-glass**: a grant of this person for this patient that has not expired.

use serde_json::Value;
use std::collections::{HashMap, HashSet};

use super::{Gateway, GatewayError};
use crate::access::{
    Basis, Caller, Denied, Evidence, GrantInForce, Person, Policy, Request, authorize,
    authorize_patient, needs_evidence,
};
use crate::audit::{self, Action, AuditRow, Interaction, Outcome};
use crate::fhir::time::{instant, now_us, parse_instant};
use crate::store::{StoreTx, Stored};

/// The record types that stand for a person or an organisation.
const PERSON_TYPES: [&str; 3] = ["Practitioner", "PractitionerRole", "Organization"];
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The access granted to one patient's data, and the evidence it was decided on.
#[derive(Debug, Clone)]
pub struct Access {
    pub basis: Basis,
    pub evidence: Evidence,
}

/// The person's own records, as references may name them.
#[derive(Debug, Default)]
struct Me {
    person: Person,
    /// `(sector, Type/id)` of their records in each sector (own ids and delivered copies).
    local: HashSet<(String, String)>,
    /// `Type/gid` of their records (the cross-sector view's references).
    gids: HashSet<String>,
}

impl Me {
    /// Whether a Reference names the person or their organisation (read in `sector`).
    fn named_by(&self, reference: &Value, sector: &str) -> bool {
        if let Some(r) = reference.get("reference").and_then(Value::as_str) {
            let r = r.rsplit('/').take(2).collect::<Vec<_>>();
            if let [id, rtype] = r.as_slice() {
                let key = format!("{rtype}/{id}");
                if self.local.contains(&(sector.to_owned(), key.clone()))
                    || self.gids.contains(&key)
                {
                    return true;
                }
            }
        }
        let Some(id) = reference.get("identifier") else {
            return false;
        };
        let (system, value) = (
            id.get("system").and_then(Value::as_str),
            id.get("value").and_then(Value::as_str),
        );
        [&self.person.practitioner, &self.person.organization]
            .into_iter()
            .flatten()
            .any(|i| Some(i.system.as_str()) == system && Some(i.value.as_str()) == value)
    }
}

/// Whether a period (`start`, `end`) holds `now`; a missing bound is open.
fn in_period(period: Option<&Value>, now: i64) -> bool {
    let bound = |k: &str| {
        period
            .and_then(|p| p.get(k))
            .and_then(Value::as_str)
            .and_then(|s| parse_instant(s).or_else(|| parse_instant(&format!("{s}T00:00:00Z"))))
            .map(|t| (t.unix_timestamp_nanos() / 1_000) as i64)
    };
    bound("start").is_none_or(|s| s <= now) && bound("end").is_none_or(|e| e > now)
}

/// An active CareTeam naming the person among its participants or managing organisations.
fn care_team_names(me: &Me, team: &Value, sector: &str, now: i64) -> bool {
    let status = team.get("status").and_then(Value::as_str);
    if !matches!(status, None | Some("active")) || !in_period(team.get("period"), now) {
        return false;
    }
    let participants = team.get("participant").and_then(Value::as_array);
    let named = participants.into_iter().flatten().any(|p| {
        in_period(p.get("period"), now)
            && ["member", "onBehalfOf"]
                .iter()
                .filter_map(|k| p.get(*k))
                .any(|r| me.named_by(r, sector))
    });
    named
        || team
            .get("managingOrganization")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|r| me.named_by(r, sector))
}

/// An active, denying Consent in force now that names the person (or nobody: everyone).
fn consent_blocks(me: &Me, consent: &Value, sector: &str, now: i64) -> bool {
    let provision = consent.get("provision");
    let denies = provision
        .and_then(|p| p.get("type"))
        .and_then(Value::as_str)
        == Some("deny");
    let active = consent.get("status").and_then(Value::as_str) == Some("active");
    if !denies || !active || !in_period(provision.and_then(|p| p.get("period")), now) {
        return false;
    }
    let actors: Vec<&Value> = provision
        .and_then(|p| p.get("actor"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.get("reference")).collect())
        .unwrap_or_default();
    actors.is_empty() || actors.iter().any(|r| me.named_by(r, sector))
}

/// The audit row of a refused read: outcome 4, basis `refused`, the reason as detail.
fn refusal_row(
    caller: &Caller,
    patient_id: Option<&str>,
    interaction: Interaction,
    denied: &Denied,
) -> AuditRow {
    let mut row = audit::row(
        &caller.actor(),
        None,
        Action::Read,
        interaction,
        Outcome::MinorFailure,
    );
    row.patient_id = patient_id.map(str::to_owned);
    row.basis = Some("refused".into());
    row.detail = Some(format!("access refused: {denied}"));
    row
}

/// Records the basis of a granted read in its audit row; a break-the-glass read is marked
/// with purposeOfUse ETREAT.
pub(crate) fn mark(row: &mut AuditRow, basis: &Basis) {
    row.basis = Some(basis.code());
    if basis.is_break_glass() {
        row.purpose = Some("ETREAT".into());
    }
}

/// Records the bases of a read of several records (`; `-separated); ETREAT when any is a
/// break-the-glass grant.
pub(crate) fn mark_all(row: &mut AuditRow, bases: &[Basis]) {
    if bases.is_empty() {
        return;
    }
    let codes: Vec<String> = bases.iter().map(Basis::code).collect();
    row.basis = Some(codes.join("; "));
    if bases.iter().any(Basis::is_break_glass) {
        row.purpose = Some("ETREAT".into());
    }
}

/// Adds the bases not yet in `bases`.
pub(crate) fn merge_bases(bases: &mut Vec<Basis>, more: Vec<Basis>) {
    for b in more {
        if !bases.contains(&b) {
            bases.push(b);
        }
    }
}

impl Gateway {
    /// The person's records by their identifiers, in every sector and as delivered copies.
    async fn me(&self, tx: &mut dyn StoreTx, person: &Person) -> Result<Me, GatewayError> {
        let mut me = Me {
            person: person.clone(),
            ..Me::default()
        };
        let ids = [&person.practitioner, &person.organization];
        for ident in ids.into_iter().flatten() {
            for r in tx
                .with_identifier(&ident.system, &ident.value, &PERSON_TYPES)
                .await?
            {
                me.local
                    .insert((r.sector.clone(), format!("{}/{}", r.rtype, r.rid)));
                me.gids.insert(format!("{}/{}", r.rtype, r.gid));
                for s in &self.settings.sectors {
                    if let Some(d) = tx.delivered_get(&s.id, &r.gid).await? {
                        me.local
                            .insert((s.id.clone(), format!("{}/{}", r.rtype, d.target_id)));
                    }
                }
            }
        }
        Ok(me)
    }

    /// What the records say about `caller` and the patient.
    async fn evidence(
        &self,
        tx: &mut dyn StoreTx,
        caller: &Caller,
        patient_id: &str,
        policy: Policy,
    ) -> Result<Evidence, GatewayError> {
        let now = now_us();
        let mut ev = Evidence::default();
        let person = caller.client.person.clone().unwrap_or_default();
        let me = self.me(tx, &person).await?;
        for s in tx
            .by_patient_types(patient_id, &["CareTeam", "Consent"])
            .await?
        {
            let Ok(body) = s.json() else { continue };
            if s.rtype == "Consent" && consent_blocks(&me, &body, &s.sector, now) {
                ev.blocks.push(format!("Consent/{}", s.gid));
            } else if s.rtype == "CareTeam"
                && ev.care_team.is_none()
                && policy.care_team
                && care_team_names(&me, &body, &s.sector, now)
            {
                ev.care_team = Some(format!("CareTeam/{}", s.gid));
            }
        }
        if policy.exchange
            && let Some(sector) = &person.sector
        {
            let since = now - i64::from(self.settings.access.exchange_window_days) * MICROS_PER_DAY;
            ev.exchange = match tx.last_sent(patient_id, sector, &instant(since)).await? {
                Some(r) => Some(format!("{sector} sent {r}")),
                None => tx
                    .last_received(patient_id, sector, since)
                    .await?
                    .map(|r| format!("{sector} received {r}")),
            };
        }
        ev.launch = self.launch_names(tx, caller, patient_id).await?;
        ev.grant = tx
            .grant_in_force(&caller.client.grantee(), patient_id, now)
            .await?
            .map(|g| GrantInForce {
                id: g.id,
                overrides_block: g.overrides_block != 0,
            });
        Ok(ev)
    }

    /// Whether the caller's launch context is this patient (by gateway id or identifier).
    async fn launch_names(
        &self,
        tx: &mut dyn StoreTx,
        caller: &Caller,
        patient_id: &str,
    ) -> Result<bool, GatewayError> {
        let Some(launch) = &caller.client.launch_patient else {
            return Ok(false);
        };
        let launched = match crate::config::split_system_value(launch) {
            Some((system, value)) => tx.patient_by_identifier(system, value).await?,
            None => tx.patient(launch).await?.map(|p| p.id),
        };
        let wanted = tx.patient(patient_id).await?.map(|p| p.id);
        Ok(launched.is_some() && launched == wanted)
    }

    /// Decides the caller's access to one patient's data inside `tx`. Systems and the roles
    /// that read no patient data are decided without reading anything.
    pub(crate) async fn patient_access(
        &self,
        tx: &mut dyn StoreTx,
        caller: &Caller,
        patient_id: &str,
    ) -> Result<Result<Access, Denied>, GatewayError> {
        let policy = Policy::from(&self.settings.access);
        let evidence = if needs_evidence(caller) {
            self.evidence(tx, caller, patient_id, policy).await?
        } else {
            Evidence::default()
        };
        Ok(authorize_patient(caller, policy, &evidence).map(|basis| Access { basis, evidence }))
    }

    /// The caller's access to the patient inside `tx`; a refusal is audited and committed in
    /// `tx` (so nothing else of the request is), and answered with its reason.
    pub(crate) async fn admit(
        &self,
        mut tx: Box<dyn StoreTx>,
        caller: &Caller,
        patient_id: &str,
        interaction: Interaction,
    ) -> Result<(Box<dyn StoreTx>, Access), GatewayError> {
        match self.patient_access(&mut *tx, caller, patient_id).await? {
            Ok(access) => Ok((tx, access)),
            Err(denied) => {
                tx.audit(&refusal_row(caller, Some(patient_id), interaction, &denied))
                    .await?;
                tx.commit().await?;
                Err(GatewayError::from(denied))
            }
        }
    }

    /// Audits a refusal (in its own transaction) and returns the error to answer with.
    pub(crate) async fn gate_refused(
        &self,
        caller: &Caller,
        patient_id: Option<&str>,
        interaction: Interaction,
        denied: Denied,
    ) -> GatewayError {
        self.write_audit(refusal_row(caller, patient_id, interaction, &denied))
            .await;
        GatewayError::from(denied)
    }

    /// The caller's access to one record's patient (none needed for a record without one),
    /// and its private marking; a refusal is audited and committed in `tx`.
    pub(crate) async fn admit_record(
        &self,
        tx: Box<dyn StoreTx>,
        caller: &Caller,
        record: &Stored,
    ) -> Result<(Box<dyn StoreTx>, Vec<Basis>), GatewayError> {
        let Some(pid) = record.patient_id.clone() else {
            return Ok((tx, Vec::new()));
        };
        let (mut tx, access) = self.admit(tx, caller, &pid, Interaction::Read).await?;
        if !self.record_shown(caller, record, &access) {
            let denied = Denied(crate::access::BLOCKED.into());
            tx.audit(&refusal_row(caller, Some(&pid), Interaction::Read, &denied))
                .await?;
            tx.commit().await?;
            return Err(GatewayError::from(denied));
        }
        Ok((tx, vec![access.basis]))
    }

    /// [`authorize`] for an operation on patient data: a refusal is audited (in its own
    /// transaction: call it before opening one).
    pub(crate) async fn gate(
        &self,
        caller: &Caller,
        request: Request<'_>,
        interaction: Interaction,
    ) -> Result<Basis, GatewayError> {
        match authorize(caller, request) {
            Ok(basis) => Ok(basis),
            Err(denied) => Err(self.gate_refused(caller, None, interaction, denied).await),
        }
    }

    /// Which of the patients named by identifiers (`system`, `value`) the caller may read
    /// now: for each, whether the identifier names a patient and the caller may read them.
    /// Nothing is read or audited beyond the decision (the demo prints it beside each token).
    pub async fn caseload(
        &self,
        caller: &Caller,
        patients: &[(String, String)],
    ) -> Result<Vec<bool>, GatewayError> {
        authorize(caller, Request::PatientData)?;
        let mut tx = self.store.begin_read().await?;
        let mut out = Vec::with_capacity(patients.len());
        for (system, value) in patients {
            let readable = match tx.patient_by_identifier(system, value).await? {
                Some(pid) => self.patient_access(&mut *tx, caller, &pid).await?.is_ok(),
                None => false,
            };
            out.push(readable);
        }
        Ok(out)
    }

    /// Whether a record is marked private by its sector (`[access] private_labels`).
    pub(crate) fn privately_marked(&self, body: &Value) -> bool {
        let labels = body
            .get("meta")
            .and_then(|m| m.get("security"))
            .and_then(Value::as_array);
        labels.into_iter().flatten().any(|l| {
            let (system, code) = (
                l.get("system").and_then(Value::as_str).unwrap_or(""),
                l.get("code").and_then(Value::as_str).unwrap_or(""),
            );
            self.settings
                .access
                .private_labels
                .iter()
                .any(|p| p.split_once('|') == Some((system, code)))
        })
    }

    /// Each patient's access, decided once per patient: `None` where the caller may not read.
    pub(crate) async fn decide_each(
        &self,
        tx: &mut dyn StoreTx,
        caller: &Caller,
        patients: Vec<String>,
    ) -> Result<HashMap<String, Option<Access>>, GatewayError> {
        let mut decided = HashMap::new();
        for pid in patients {
            if let std::collections::hash_map::Entry::Vacant(slot) = decided.entry(pid) {
                let a = self.patient_access(tx, caller, slot.key()).await?.ok();
                slot.insert(a);
            }
        }
        Ok(decided)
    }

    /// Whether one record of a patient the caller may read is shown (private marking).
    pub(crate) fn record_shown(&self, caller: &Caller, s: &Stored, access: &Access) -> bool {
        // Most records carry no security label at all: only those are parsed.
        let private =
            s.body.contains("\"security\"") && s.json().is_ok_and(|b| self.privately_marked(&b));
        !private
            || crate::access::private_record_visible(
                caller,
                &s.sector,
                &access.basis,
                &access.evidence,
            )
    }
}
