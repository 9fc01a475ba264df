//! IT staff's endpoints: the outbox (`GET /admin/deliveries?state=dead&target=&_count=&_offset=`)
//! and replaying a dead-lettered delivery (`POST /admin/deliveries/{id}/retry`). Administrators
//! only. Entries name resource types and gateway ids, never content.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::fhir_routes::Authed;
use crate::auth::Role;
use crate::ingest::{Caller, GatewayError};
use crate::store::{OutboxEntry, OutboxFilter};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/deliveries", get(list))
        .route("/admin/deliveries/{id}/retry", post(retry))
}

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.client.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only administrators manage deliveries",
        ))
    }
}

const STATES: [&str; 4] = ["pending", "delivered", "dead", "superseded"];

#[derive(Deserialize)]
struct ListParams {
    state: Option<String>,
    target: Option<String>,
    #[serde(rename = "_count")]
    count: Option<i64>,
    #[serde(rename = "_offset")]
    offset: Option<i64>,
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
        "state": e.state,
        "attempts": e.attempts,
        "created": crate::store::sql::instant(e.created_us),
        "next_attempt": crate::store::sql::instant(e.next_us),
        "updated": crate::store::sql::instant(e.updated_us),
        "last_status": e.last_status,
        "last_error": e.last_error,
        "target_id": e.target_id,
        "target_version": e.target_version,
    })
}

async fn list(
    State(state): State<AppState>,
    Authed(caller): Authed,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let Query(p) = params.map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.body_text()).at("query")
    })?;
    if let Some(s) = &p.state
        && !STATES.contains(&s.as_str())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("state must be one of {}", STATES.join(", ")),
        )
        .at("state"));
    }
    let count = p.count.unwrap_or(100).clamp(1, 1000);
    let filter = OutboxFilter {
        state: p.state,
        target: p.target,
        offset: p.offset.unwrap_or(0).max(0),
        count,
    };
    let entries = crate::exchange::list_deliveries(state.gateway.store.as_ref(), &filter)
        .await
        .map_err(GatewayError::from)?;
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
    require_admin(&caller)?;
    let id: i64 = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the delivery id is a number",
        )
        .at("id")
    })?;
    match crate::exchange::retry_delivery(state.gateway.store.as_ref(), &caller.actor(), id)
        .await
        .map_err(GatewayError::from)?
    {
        Some(e) => {
            state.gateway.outbox_signal.notify_waiters();
            Ok((StatusCode::OK, axum::Json(entry_json(&e))).into_response())
        }
        None => Err(ApiError::not_found(format!(
            "no dead-lettered delivery {id} (only dead entries can be retried)"
        ))),
    }
}
