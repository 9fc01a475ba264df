//! The auditor's access review beside the audit log: `GET /audit/break-glass?status=`
//! (the break-the-glass review queue), `POST /audit/break-glass/{id}/review` (a review with a
//! note), `GET /audit/access-report?patient=` (who read a patient's data, when, on what basis);
//! and the care team's `POST /fhir/Patient/{id}/$break-glass` (dispatched from `fhir_routes`).
//! Adapters over `gateway::break_glass`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Authed;
use super::error::ApiError;
use super::response::fhir_response;
use crate::access::Caller;
use crate::gateway::break_glass::ReviewStatus;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/audit/break-glass", get(queue))
        .route("/audit/break-glass/{id}/review", post(review))
        .route("/audit/access-report", get(report))
}

const DEFAULT_COUNT: i64 = 100;
const MAX_COUNT: i64 = 1000;

#[derive(Deserialize)]
struct Page {
    status: Option<String>,
    patient: Option<String>,
    #[serde(rename = "_count")]
    count: Option<i64>,
    #[serde(rename = "_offset")]
    offset: Option<i64>,
}

type Params = Result<Query<Page>, axum::extract::rejection::QueryRejection>;

fn page(params: Params) -> Result<(Page, i64, i64), ApiError> {
    let Query(p) = params.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "structure",
            "takes status or patient, and _count and _offset as non-negative integers",
        )
    })?;
    let count = p.count.unwrap_or(DEFAULT_COUNT);
    let offset = p.offset.unwrap_or(0);
    if !(0..=MAX_COUNT).contains(&count) || offset < 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "value",
            format!("_count must be 0..={MAX_COUNT} and _offset non-negative"),
        ));
    }
    Ok((p, offset, count))
}

async fn queue(
    State(state): State<AppState>,
    Authed(caller): Authed,
    params: Params,
) -> Result<Response, ApiError> {
    let (p, offset, count) = page(params)?;
    let status = match p.status.as_deref() {
        None => ReviewStatus::Unreviewed,
        Some(s) => ReviewStatus::parse(s).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "value",
                "status is unreviewed (the default), reviewed or all",
            )
            .at("status")
        })?,
    };
    let grants = state
        .gateway
        .break_glass_grants(&caller, status, offset, count)
        .await?;
    Ok((StatusCode::OK, Json(json!({ "grants": grants }))).into_response())
}

#[derive(Deserialize)]
struct ReviewBody {
    note: String,
}

async fn review(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    body: Result<Json<ReviewBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "structure",
            "send JSON {\"note\": \"…\"} with Content-Type: application/json",
        )
    })?;
    match state
        .gateway
        .review_break_glass(&caller, &id, &body.note)
        .await?
    {
        Some(grant) => Ok((StatusCode::OK, Json(json!({ "grant": grant }))).into_response()),
        None => Err(ApiError::not_found(format!(
            "no break-the-glass grant {id}"
        ))),
    }
}

async fn report(
    State(state): State<AppState>,
    Authed(caller): Authed,
    params: Params,
) -> Result<Response, ApiError> {
    let (p, offset, count) = page(params)?;
    let Some(patient) = p.patient.filter(|s| !s.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "required",
            "name the gateway patient: ?patient=<id>",
        )
        .at("patient"));
    };
    let lines = state
        .gateway
        .access_report(&caller, &patient, offset, count)
        .await?;
    Ok((
        StatusCode::OK,
        Json(json!({ "patient": patient, "accesses": lines })),
    )
        .into_response())
}

/// `POST /fhir/Patient/{id}/$break-glass` with a Parameters resource: `reason` (valueCode,
/// one of `[access] break_glass_reasons`) and `text` (valueString).
pub async fn break_glass(
    state: &AppState,
    caller: &Caller,
    patient: &str,
    body: &Value,
) -> Result<Response, ApiError> {
    match state.gateway.break_glass(caller, patient, body).await? {
        Some(granted) => Ok(fhir_response(StatusCode::OK, &granted)),
        None => Err(ApiError::not_found(format!("no gateway patient {patient}"))),
    }
}
