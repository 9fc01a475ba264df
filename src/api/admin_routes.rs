//! IT staff's endpoints: the outbox (`GET /admin/deliveries?state=dead&target=&_count=&_offset=`)
//! and replaying a dead-lettered delivery (`POST /admin/deliveries/{id}/retry`): adapters over
//! `gateway::admin` (administrators only). Entries name resource types and gateway ids, never content.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::AppState;
use super::auth::Authed;
use super::error::ApiError;
use crate::fhir::time::instant;
use crate::store::OutboxEntry;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/deliveries", get(list))
        .route("/admin/deliveries/{id}/retry", post(retry))
}

/// An entry as IT staff see it (no patient id).
pub fn entry_json(e: &OutboxEntry) -> serde_json::Value {
    json!({
        "id": e.id,
        "target": e.target,
        "source": e.source,
        "resource": format!("{}/{}", e.rtype, e.gid),
        "version": e.version,
        "route": e.route,
        "state": e.state.code(),
        "attempts": e.attempts,
        "created": instant(e.created_us),
        "next_attempt": instant(e.next_us),
        "updated": instant(e.updated_us),
        "last_status": e.last_status,
        "last_error": e.last_error,
        "target_id": e.target_id,
        "target_version": e.target_version,
    })
}

async fn list(
    State(state): State<AppState>,
    Authed(caller): Authed,
    params: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.body_text()).at("query")
    })?;
    let (filter, entries) = state.gateway.deliveries(&caller, &params).await?;
    let body = json!({
        "offset": filter.offset,
        "count": entries.len(),
        "entries": entries.iter().map(entry_json).collect::<Vec<_>>(),
    });
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

async fn retry(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.gateway.retry_delivery(&caller, &id).await? {
        Some(e) => Ok((StatusCode::OK, axum::Json(entry_json(&e))).into_response()),
        None => Err(ApiError::not_found(format!(
            "no dead-lettered delivery {id} (only dead entries can be retried)"
        ))),
    }
}
