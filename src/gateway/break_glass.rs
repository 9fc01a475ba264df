//! Break-the-glass ("værdispring"): a care-team member's explicit, coded and time-limited
//! access to one patient without a treatment relationship, audited as a Security Alert; the
//! auditor's review queue; and the access report of a patient ("who looked at my record").

use serde::Serialize;
use serde_json::{Value, json};

use super::{Gateway, GatewayError};
use crate::access::{Caller, Request};
use crate::audit::{self, Action, AuditRow, Interaction, Outcome};
use crate::fhir::outcome::Issue;
use crate::fhir::time::{instant, now_us};
use crate::store::Grant;

/// Longest free-text reason accepted.
const MAX_TEXT: usize = 2_000;

/// A grant as the review queue shows it.
#[derive(Debug, Clone, Serialize)]
pub struct GrantView {
    pub id: String,
    pub grantee: String,
    pub client: String,
    pub patient: String,
    pub reason: String,
    pub reason_display: String,
    pub text: String,
    pub granted: String,
    pub expires: String,
    pub overrides_blocks: bool,
    pub reviewed: Option<String>,
    pub reviewer: Option<String>,
    pub review_note: Option<String>,
}

/// One line of a patient's access report.
#[derive(Debug, Clone, Serialize)]
pub struct AccessLine {
    pub recorded: String,
    pub client: Option<String>,
    pub person: Option<String>,
    pub role: Option<String>,
    pub interaction: String,
    /// Granted (`true`) or refused.
    pub granted: bool,
    pub basis: Option<String>,
    pub purpose: Option<String>,
    pub records: usize,
    pub seq: i64,
}

/// Which grants the review queue lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewStatus {
    Unreviewed,
    Reviewed,
    All,
}

impl ReviewStatus {
    pub fn parse(s: &str) -> Option<ReviewStatus> {
        match s {
            "unreviewed" => Some(ReviewStatus::Unreviewed),
            "reviewed" => Some(ReviewStatus::Reviewed),
            "all" => Some(ReviewStatus::All),
            _ => None,
        }
    }
}

/// The `reason` (valueCode, or valueCoding's code) and `text` (valueString) of a Parameters.
fn request_parts(body: &Value) -> Result<(String, String), GatewayError> {
    let bad = |what: &str, at: &str| {
        GatewayError::invalid(Issue::error("required", what.to_owned()).at(at.to_owned()))
    };
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad(
            "$break-glass takes a Parameters resource with reason and text",
            "Parameters",
        ));
    }
    let param = |name: &str| crate::fhir::parameter(body, name);
    let reason = param("reason").and_then(|p| {
        p.get("valueCode")
            .or_else(|| p.get("valueCoding").and_then(|c| c.get("code")))
            .and_then(Value::as_str)
    });
    let text = param("text")
        .and_then(|p| p.get("valueString"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(reason) = reason else {
        return Err(bad(
            "name the reason: a parameter 'reason' (valueCode)",
            "Parameters.parameter",
        ));
    };
    let Some(text) = text else {
        return Err(bad(
            "explain the emergency: a parameter 'text' (valueString)",
            "Parameters.parameter",
        ));
    };
    if text.chars().count() > MAX_TEXT {
        return Err(bad(
            "the text is longer than 2000 characters",
            "Parameters.parameter",
        ));
    }
    Ok((reason.to_owned(), text.to_owned()))
}

impl Gateway {
    /// Grants the caller access to one gateway patient for `[access] break_glass_minutes`,
    /// for a configured reason and a free text; audited as a Security Alert with purposeOfUse
    /// ETREAT and queued for review. `None` when there is no such patient.
    pub async fn break_glass(
        &self,
        caller: &Caller,
        patient: &str,
        parameters: &Value,
    ) -> Result<Option<Value>, GatewayError> {
        self.gate(caller, Request::BreakGlass, Interaction::BreakGlass)
            .await?;
        let (reason, text) = request_parts(parameters)?;
        let access = &self.settings.access;
        if access.reason(&reason).is_none() {
            let known: Vec<&str> = access
                .break_glass_reasons
                .iter()
                .map(|r| r.code.as_str())
                .collect();
            return Err(GatewayError::invalid(
                Issue::error(
                    "code-invalid",
                    format!(
                        "'{reason}' is not a reason; use one of: {}",
                        known.join(", ")
                    ),
                )
                .at("Parameters.parameter"),
            ));
        }
        let mut tx = self.store.begin().await?;
        let Some(p) = tx.patient(patient).await? else {
            return Ok(None);
        };
        let now = now_us();
        let grant = Grant {
            id: uuid::Uuid::new_v4().to_string(),
            grantee: caller.client.grantee(),
            client_id: caller.client.id.clone(),
            patient_id: p.id.clone(),
            reason,
            reason_text: text,
            granted_us: now,
            expires_us: now + i64::from(access.break_glass_minutes) * 60_000_000,
            overrides_block: i64::from(access.break_glass_overrides_blocks),
            reviewed_us: None,
            reviewer: None,
            review_note: None,
        };
        tx.grant_put(&grant).await?;
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Execute,
            Interaction::BreakGlass,
            Outcome::Success,
        );
        row.patient_id = Some(p.id.clone());
        row.entities = vec![format!("Patient/{}", p.id)];
        row.purpose = Some("ETREAT".into());
        row.basis = Some(format!("break-glass {}", grant.id));
        row.detail = Some(format!(
            "break-the-glass granted until {} (reason {})",
            instant(grant.expires_us),
            grant.reason
        ));
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(Some(json!({
            "resourceType": "Parameters",
            "parameter": [
                { "name": "grant", "valueString": grant.id },
                { "name": "patient", "valueReference": { "reference": format!("Patient/{}", p.id) } },
                { "name": "expires", "valueInstant": instant(grant.expires_us) },
                { "name": "overridesBlocks", "valueBoolean": grant.overrides_block != 0 },
            ]
        })))
    }

    /// The review queue of break-the-glass grants, newest first; audited.
    pub async fn break_glass_grants(
        &self,
        caller: &Caller,
        status: ReviewStatus,
        offset: i64,
        count: i64,
    ) -> Result<Vec<GrantView>, GatewayError> {
        self.gate(caller, Request::AccessReview, Interaction::SearchType)
            .await?;
        let mut tx = self.store.begin().await?;
        let reviewed = match status {
            ReviewStatus::Unreviewed => Some(false),
            ReviewStatus::Reviewed => Some(true),
            ReviewStatus::All => None,
        };
        let grants = tx.grants(reviewed, offset, count).await?;
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Execute,
            Interaction::SearchType,
            Outcome::Success,
        );
        row.entities = vec!["break-glass".into()];
        row.basis = Some("auditor".into());
        row.detail = Some(format!(
            "break-the-glass review queue: {} grants",
            grants.len()
        ));
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(grants.into_iter().map(|g| self.grant_view(g)).collect())
    }

    fn grant_view(&self, g: Grant) -> GrantView {
        let display = self
            .settings
            .access
            .reason(&g.reason)
            .map_or_else(|| g.reason.clone(), |r| r.display.clone());
        GrantView {
            id: g.id,
            grantee: g.grantee,
            client: g.client_id,
            patient: g.patient_id,
            reason: g.reason,
            reason_display: display,
            text: g.reason_text,
            granted: instant(g.granted_us),
            expires: instant(g.expires_us),
            overrides_blocks: g.overrides_block != 0,
            reviewed: g.reviewed_us.map(instant),
            reviewer: g.reviewer,
            review_note: g.review_note,
        }
    }

    /// Records an auditor's review of a grant (once); `None` when there is no such grant,
    /// a conflict when it was already reviewed.
    pub async fn review_break_glass(
        &self,
        caller: &Caller,
        id: &str,
        note: &str,
    ) -> Result<Option<GrantView>, GatewayError> {
        self.gate(caller, Request::AccessReview, Interaction::ReviewBreakGlass)
            .await?;
        let note = note.trim();
        if note.is_empty() || note.chars().count() > MAX_TEXT {
            return Err(GatewayError::invalid(
                Issue::error("required", "a review needs a note of 1 to 2000 characters")
                    .at("note"),
            ));
        }
        let mut tx = self.store.begin().await?;
        let Some(grant) = tx.grant_get(id).await? else {
            return Ok(None);
        };
        let reviewer = caller
            .client
            .person
            .as_ref()
            .and_then(crate::access::Person::label)
            .unwrap_or_else(|| caller.client.id.clone());
        if !tx.grant_review(id, &reviewer, note, now_us()).await? {
            return Err(GatewayError::Conflict(format!(
                "break-the-glass grant {id} was already reviewed"
            )));
        }
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Update,
            Interaction::ReviewBreakGlass,
            Outcome::Success,
        );
        row.patient_id = Some(grant.patient_id.clone());
        row.entities = vec![format!("break-glass/{id}")];
        row.basis = Some("auditor".into());
        row.detail = Some("break-the-glass grant reviewed".into());
        tx.audit(&row).await?;
        let reviewed = tx.grant_get(id).await?;
        tx.commit().await?;
        Ok(reviewed.map(|g| self.grant_view(g)))
    }

    /// Who read the patient's data, when, on what basis (granted and refused), newest first;
    /// the report itself is audited.
    pub async fn access_report(
        &self,
        caller: &Caller,
        patient: &str,
        offset: i64,
        count: i64,
    ) -> Result<Vec<AccessLine>, GatewayError> {
        self.gate(caller, Request::AccessReview, Interaction::SearchType)
            .await?;
        let mut tx = self.store.begin().await?;
        // A sector identifier (`system|value`, e.g. a CPR number) names the patient it links to.
        let resolved = match crate::config::split_system_value(patient) {
            Some((system, value)) => tx.patient_by_identifier(system, value).await?,
            None => Some(patient.to_owned()),
        };
        // An identifier no patient holds reports nothing (and the look-up is audited as well).
        let patient = resolved.unwrap_or_default();
        let rows = match patient.is_empty() {
            true => Vec::new(),
            false => tx.access_report(&patient, offset, count).await?,
        };
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Execute,
            Interaction::SearchType,
            Outcome::Success,
        );
        row.patient_id = Some(patient).filter(|p| !p.is_empty());
        row.entities = vec!["access-report".into()];
        row.basis = Some("auditor".into());
        row.detail = Some(format!("access report: {} lines", rows.len()));
        tx.audit(&row).await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(access_line).collect())
    }
}

fn access_line(a: AuditRow) -> AccessLine {
    AccessLine {
        recorded: a.recorded,
        client: a.client_id,
        person: a.person,
        role: a.role,
        interaction: a.interaction,
        granted: a.outcome == Outcome::Success.code(),
        basis: a.basis,
        purpose: a.purpose,
        records: a.entities.len(),
        seq: a.seq,
    }
}
