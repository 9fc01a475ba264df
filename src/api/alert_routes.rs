//! The care team's alert endpoints (the DetectedIssue search is in `fhir_reads`):
//! `GET /fhir/DetectedIssue/{id}`, `POST /fhir/DetectedIssue/{id}/$acknowledge` and `$snooze`,
//! `GET /fhir/Patient/{id}/$total-plan` (dispatched from `fhir_routes`), and the live stream
//! `GET /alerts/stream` (Server-Sent Events). Adapters over `gateway::alert_service`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures_util::Stream;
use serde_json::Value;
use std::convert::Infallible;

use super::AppState;
use super::auth::Authed;
use super::error::ApiError;
use super::response::fhir_response;
use crate::access::Caller;

pub fn routes() -> Router<AppState> {
    Router::new().route("/alerts/stream", get(stream))
}

/// `GET /fhir/DetectedIssue/{id}`.
pub async fn read(state: &AppState, caller: &Caller, id: &str) -> Result<Response, ApiError> {
    match state.gateway.alert(caller, id).await? {
        Some(body) => Ok(fhir_response(StatusCode::OK, &body)),
        None => Err(ApiError::not_found(format!("no DetectedIssue/{id}"))),
    }
}

/// `POST /fhir/DetectedIssue/{id}/$acknowledge` with a Parameters resource: `author`
/// (valueString, or valueReference with a display or reference) and `note` (valueString).
pub async fn acknowledge(
    state: &AppState,
    caller: &Caller,
    id: &str,
    body: &Value,
) -> Result<Response, ApiError> {
    match state.gateway.acknowledge(caller, id, body).await? {
        Some(resource) => Ok(fhir_response(StatusCode::OK, &resource)),
        None => Err(ApiError::not_found(format!("no DetectedIssue/{id}"))),
    }
}

/// `POST /fhir/DetectedIssue/{id}/$snooze` with a Parameters resource: `until` (valueDate or
/// valueDateTime), `author` and `note`, as for `$acknowledge`.
pub async fn snooze(
    state: &AppState,
    caller: &Caller,
    id: &str,
    body: &Value,
) -> Result<Response, ApiError> {
    match state.gateway.snooze(caller, id, body).await? {
        Some(resource) => Ok(fhir_response(StatusCode::OK, &resource)),
        None => Err(ApiError::not_found(format!("no DetectedIssue/{id}"))),
    }
}

/// `GET /fhir/Patient/{id}/$total-plan`: one Bundle with every sector's active CarePlans,
/// Goals, Conditions, CareTeams and medications (each tagged with its sector, as the
/// cross-sector view shows them) and the patient's open alerts.
pub async fn total_plan(
    state: &AppState,
    caller: &Caller,
    patient: &str,
) -> Result<Response, ApiError> {
    match state.gateway.total_plan(caller, patient).await? {
        Some(bundle) => Ok(fhir_response(StatusCode::OK, &bundle)),
        None => Err(ApiError::not_found(format!("no gateway patient {patient}"))),
    }
}

/// `GET /alerts/stream`: one SSE event per alert change (`raised`, `updated`, `closed`,
/// `acknowledged`), data = `{id, patient, code, status, version, resource}`.
async fn stream(
    State(state): State<AppState>,
    Authed(caller): Authed,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let mut subscription = state.gateway.alert_stream(&caller).await?;
    let mut closing = state.gateway.watch_shutdown();
    let gateway = state.gateway.clone();
    let s = async_stream(move |tx| async move {
        loop {
            let next = tokio::select! {
                e = gateway.next_alert(&mut subscription) => e,
                _ = closing.wait_for(|c| *c) => return,
                () = tx.closed() => return,
            };
            match next {
                Ok(e) => {
                    let data = serde_json::to_string(&e).unwrap_or_else(|_| "{}".into());
                    if tx
                        .send(Ok(Event::default().event(e.kind).data(data)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let ev = Event::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{n}}}"));
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::default()))
}

/// A stream fed by a task through a channel (closed when the client goes away).
pub(super) fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Infallible>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
}
