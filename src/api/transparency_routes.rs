//! The audit log's transparency endpoints for auditors: `GET /audit/checkpoint` (the latest
//! signed checkpoint note, `text/plain`), `GET /audit/proof/inclusion?seq=&size=`,
//! `GET /audit/proof/consistency?from=&to=` (JSON, hashes in base64) and
//! `GET /audit/rows?from=&to=` (NDJSON: per sequence number its leaf and canonical row).
//! Adapters over `gateway::transparency`.

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::AppState;
use super::auth::Authed;
use super::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/audit/checkpoint", get(checkpoint))
        .route("/audit/proof/inclusion", get(inclusion))
        .route("/audit/proof/consistency", get(consistency))
        .route("/audit/rows", get(rows))
}

fn text(content_type: &'static str, body: String) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

async fn checkpoint(
    State(state): State<AppState>,
    Authed(caller): Authed,
) -> Result<Response, ApiError> {
    let note = state.gateway.audit_checkpoint(&caller).await?;
    Ok(text("text/plain; charset=utf-8", note))
}

/// Two integer parameters, or a 400 naming what they must be.
fn pair<T>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
    what: &str,
) -> Result<T, ApiError> {
    q.map(|Query(p)| p)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "structure", what))
}

#[derive(Deserialize)]
struct InclusionParams {
    seq: i64,
    size: i64,
}

async fn inclusion(
    State(state): State<AppState>,
    Authed(caller): Authed,
    q: Result<Query<InclusionParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let p = pair(q, "inclusion takes seq and size (integers)")?;
    let proof = state
        .gateway
        .audit_inclusion(&caller, p.seq, p.size)
        .await?;
    Ok((StatusCode::OK, axum::Json(proof)).into_response())
}

#[derive(Deserialize)]
struct RangeParams {
    from: i64,
    to: i64,
}

async fn consistency(
    State(state): State<AppState>,
    Authed(caller): Authed,
    q: Result<Query<RangeParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let p = pair(q, "consistency takes from and to (tree sizes, integers)")?;
    let proof = state
        .gateway
        .audit_consistency(&caller, p.from, p.to)
        .await?;
    Ok((StatusCode::OK, axum::Json(proof)).into_response())
}

async fn rows(
    State(state): State<AppState>,
    Authed(caller): Authed,
    q: Result<Query<RangeParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let p = pair(q, "rows takes from and to (sequence numbers, integers)")?;
    let entries = state.gateway.audit_rows(&caller, p.from, p.to).await?;
    let mut body = String::with_capacity(entries.len() * 700);
    for e in &entries {
        // A LogEntry (strings and integers) always serialises.
        body.push_str(&serde_json::to_string(e).unwrap_or_default());
        body.push('\n');
    }
    Ok(text("application/x-ndjson", body))
}
