//! The auditor's endpoints beside the FHIR search: `GET /audit/verify` walks the hash chain,
//! `GET /audit/export?from=&to=` streams the log as NDJSON AuditEvents. Adapters over
//! `gateway::ledger` (auditors only; both are themselves audited).

use axum::Router;
use axum::body::Body;
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
        .route("/audit/verify", get(verify))
        .route("/audit/export", get(export))
}

async fn verify(
    State(state): State<AppState>,
    Authed(caller): Authed,
) -> Result<Response, ApiError> {
    let report = state.gateway.audit_verify(&caller).await?;
    Ok((StatusCode::OK, axum::Json(report)).into_response())
}

#[derive(Deserialize)]
struct ExportParams {
    from: Option<String>,
    to: Option<String>,
}

async fn export(
    State(state): State<AppState>,
    Authed(caller): Authed,
    params: Result<Query<ExportParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "structure",
            "export takes from and to (FHIR dates or dateTimes)",
        )
    })?;
    // Pages are rendered as they are read and streamed as they come; the client sees progress
    // as lines arrive, and the total up front in X-Total-Count.
    let (total, mut receiver) = state
        .gateway
        .audit_export(&caller, params.from.as_deref(), params.to.as_deref())
        .await?;
    let stream = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx));
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+ndjson"),
    );
    if let Ok(v) = HeaderValue::from_str(&total.to_string()) {
        resp.headers_mut().insert("x-total-count", v);
    }
    Ok(resp)
}
