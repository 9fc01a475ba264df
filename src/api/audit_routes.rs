//! The auditor's endpoints beside the FHIR search: `GET /audit/verify` walks the hash chain,
//! `GET /audit/export?from=&to=` streams the log as NDJSON AuditEvents. Auditors only; both
//! are themselves audited.

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::fhir_routes::Authed;
use crate::audit::{self, chain};
use crate::auth::Role;
use crate::ingest::Caller;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/audit/verify", get(verify))
        .route("/audit/export", get(export))
}

fn require_auditor(caller: &Caller) -> Result<(), ApiError> {
    if caller.client.role == Role::Auditor {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only auditors read the audit log",
        ))
    }
}

async fn verify(
    State(state): State<AppState>,
    Authed(caller): Authed,
) -> Result<Response, ApiError> {
    require_auditor(&caller)?;
    let store = &state.gateway.store;
    let report = async {
        let mut tx = store.begin_read().await?;
        chain::verify(tx.as_mut(), 5_000).await
    }
    .await
    .map_err(crate::ingest::GatewayError::from)?;
    let mut row = audit::row(
        &caller.actor(),
        None,
        "E",
        "verify",
        if report.ok {
            audit::outcome::SUCCESS
        } else {
            audit::outcome::MINOR_FAILURE
        },
    );
    row.entities = vec!["AuditEvent".into()];
    row.detail = Some(match &report.broken {
        None => format!("audit chain verified: {} rows", report.rows),
        Some(b) => format!("audit chain broken at seq {}", b.seq),
    });
    state.gateway.write_audit(row).await;
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
    require_auditor(&caller)?;
    let Query(params) = params.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "structure",
            "export takes from and to (FHIR dates or dateTimes)",
        )
    })?;
    let bound = |name: &'static str, v: &Option<String>, end: bool| -> Result<i64, ApiError> {
        match v {
            None => Ok(if end { i64::MAX } else { i64::MIN }),
            Some(v) => crate::fhir::period(v)
                .map(|(s, e)| if end { e } else { s })
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "value",
                        "not a FHIR date or dateTime",
                    )
                    .at(name)
                }),
        }
    };
    let from_us = bound("from", &params.from, false)?;
    let to_us = bound("to", &params.to, true)?;
    let mut row = audit::row(
        &caller.actor(),
        None,
        "E",
        "export",
        audit::outcome::SUCCESS,
    );
    row.entities = vec!["AuditEvent".into()];
    row.query = Some(format!(
        "from={}&to={}",
        params.from.as_deref().unwrap_or(""),
        params.to.as_deref().unwrap_or("")
    ));
    state.gateway.write_audit(row).await;

    // Pages are rendered on a blocking-free task and streamed as they come; the client sees
    // progress as lines arrive, and the total up front in X-Total-Count.
    let store = state.gateway.store.clone();
    let total = async {
        let mut tx = store.begin_read().await?;
        tx.audit_range_count(from_us, to_us).await
    }
    .await
    .map_err(crate::ingest::GatewayError::from)?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tokio::spawn(async move {
        let result = async {
            let mut tx = store.begin_read().await?;
            let mut after = i64::MIN;
            loop {
                let rows = tx.audit_range_page(after, from_us, to_us, 1_000).await?;
                let Some(last) = rows.last() else { break };
                after = last.seq;
                let mut chunk = Vec::with_capacity(rows.len() * 1024);
                for r in &rows {
                    // A serde_json::Value always serialises.
                    let _ = serde_json::to_writer(&mut chunk, &audit::audit_event(r));
                    chunk.push(b'\n');
                }
                if sender.send(Ok(chunk)).await.is_err() {
                    break;
                }
            }
            Ok::<(), crate::store::StoreError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "audit export failed");
            let _ = sender
                .send(Err(std::io::Error::other(
                    "the store failed during the export",
                )))
                .await;
        }
    });
    let stream = tokio_stream_from(receiver);
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

fn tokio_stream_from(
    mut receiver: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}
