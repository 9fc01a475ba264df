//! What the care team's console asks of the core besides the API's operations: who the
//! patients of a page of alerts are (a name from a sector's Patient) and who owns their alerts
//! (the coordinator of an active CareTeam, else nobody). Decided per patient like every read
//! ([`Gateway::decide_each`], private markings honoured) and audited in one row.

use serde_json::Value;
use std::collections::HashMap;

use super::relation::Access;
use super::{Gateway, GatewayError};
use crate::access::{Caller, Request};
use crate::audit::{self, Action, Interaction, Outcome};
use crate::detect::team::coordinator_role;
use crate::store::StoreTx;

/// What the console shows of a patient beside their alerts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatientCard {
    /// The name a sector's Patient gives (the first one found, in sector order).
    pub name: Option<String>,
    /// The coordinator of an active CareTeam (member display), if any.
    pub coordinator: Option<String>,
}

impl Gateway {
    /// The cards of gateway patients the caller may read (others are left out); one audit row.
    pub async fn patient_cards(
        &self,
        caller: &Caller,
        patients: &[String],
    ) -> Result<HashMap<String, PatientCard>, GatewayError> {
        self.gate(caller, Request::Alerts, Interaction::Read)
            .await?;
        let mut tx = self.store.begin_audited().await?;
        let decided = self
            .decide_each(&mut *tx, caller, patients.to_vec())
            .await?;
        let mut cards = HashMap::new();
        let mut bases: Vec<String> = Vec::new();
        for (pid, access) in decided {
            let Some(access) = access else {
                continue;
            };
            let card = self.card(&mut *tx, caller, &pid, &access).await?;
            let code = access.basis.code();
            if !bases.contains(&code) {
                bases.push(code);
            }
            cards.insert(pid, card);
        }
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Read,
            Interaction::Read,
            Outcome::Success,
        );
        let mut ids: Vec<&String> = cards.keys().collect();
        ids.sort();
        row.entities = ids.iter().map(|p| format!("Patient/{p}")).collect();
        row.purpose = Some("TREAT".into());
        if let [one] = ids.as_slice() {
            row.patient_id = Some((*one).clone());
        }
        if !bases.is_empty() {
            row.basis = Some(bases.join("; "));
        }
        if bases.iter().any(|b| b.starts_with("break-glass ")) {
            row.purpose = Some("ETREAT".into());
        }
        row.detail = Some(format!("console: {} patient names and owners", cards.len()));
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(cards)
    }
}

impl Gateway {
    /// What the console shows of one patient the caller may read (on `access`).
    pub(crate) async fn card(
        &self,
        tx: &mut dyn StoreTx,
        caller: &Caller,
        pid: &str,
        access: &Access,
    ) -> Result<PatientCard, GatewayError> {
        let roles = &self.settings.alerts.coordinator_roles;
        let mut card = PatientCard::default();
        if let Some(p) = tx.patient(pid).await? {
            card.name = p
                .sector_patients
                .iter()
                .filter(|s| self.record_shown(caller, s, access))
                .find_map(|s| s.json().ok().as_ref().and_then(human_name));
        }
        for team in tx.by_patient_types(pid, &["CareTeam"]).await? {
            if card.coordinator.is_some() || !self.record_shown(caller, &team, access) {
                continue;
            }
            let body = team.json()?;
            if matches!(
                body.get("status").and_then(Value::as_str),
                None | Some("active")
            ) {
                card.coordinator = coordinator_of(&body, roles);
            }
        }
        Ok(card)
    }
}

/// `name[0]`: its text, else given names and family.
fn human_name(patient: &Value) -> Option<String> {
    let n = patient.get("name")?.get(0)?;
    if let Some(t) = n.get("text").and_then(Value::as_str) {
        return Some(t.to_owned());
    }
    let mut parts: Vec<&str> = n
        .get("given")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    parts.extend(n.get("family").and_then(Value::as_str));
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// The first participant of a CareTeam in a coordinator role: its member's display or reference.
fn coordinator_of(team: &Value, roles: &[String]) -> Option<String> {
    team.get("participant")?
        .as_array()?
        .iter()
        .find(|p| {
            p.get("role")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|r| coordinator_role(r, roles))
        })
        .and_then(|p| {
            let m = p.get("member")?;
            m.get("display")
                .or_else(|| m.get("reference"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_coordinators() {
        assert_eq!(
            human_name(&json!({ "name": [{ "given": ["Karen", "M."], "family": "Holm" }] })),
            Some("Karen M. Holm".into())
        );
        assert_eq!(
            human_name(&json!({ "name": [{ "text": "K. Holm" }] })),
            Some("K. Holm".into())
        );
        assert_eq!(human_name(&json!({})), None);
        let team = json!({ "participant": [
            { "role": [{ "text": "nurse" }], "member": { "display": "A" } },
            { "role": [{ "text": "Forløbskoordinator" }], "member": { "display": "B" } } ] });
        assert_eq!(coordinator_of(&team, &[]), Some("B".into()));
        assert_eq!(coordinator_of(&json!({ "participant": [] }), &[]), None);
    }
}
