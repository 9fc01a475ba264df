//! The care team's alert endpoints: `GET /fhir/DetectedIssue?patient=&status=&code=`,
//! `GET /fhir/DetectedIssue/{id}`, `POST /fhir/DetectedIssue/{id}/$acknowledge`,
//! `GET /fhir/Patient/{id}/$total-plan` (dispatched from `fhir_routes`), and the live stream
//! `GET /alerts/stream` (Server-Sent Events). Care-team members only; every read is audited.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures_util::Stream;
use serde_json::{Value, json};
use std::convert::Infallible;

use super::AppState;
use super::error::ApiError;
use super::fhir_routes::{Authed, fhir_response};
use crate::audit;
use crate::auth::Role;
use crate::ingest::{Caller, GatewayError, alert_audit_row};
use crate::store::{AlertQuery, StoreError};

pub fn routes() -> Router<AppState> {
    Router::new().route("/alerts/stream", get(stream))
}

fn require_careteam(caller: &Caller) -> Result<(), ApiError> {
    if caller.client.role == Role::CareTeam {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "alerts and total plans are for care-team members",
        ))
    }
}

fn store_err(e: StoreError) -> ApiError {
    GatewayError::from(e).into()
}

/// `GET /fhir/DetectedIssue?patient=&status=&code=&_count=&_offset=`.
pub async fn search(
    state: &AppState,
    caller: &Caller,
    params: &[(String, String)],
    offset: i64,
    count: i64,
) -> Result<Response, ApiError> {
    require_careteam(caller)?;
    let mut q = AlertQuery {
        offset,
        count,
        ..AlertQuery::default()
    };
    for (k, v) in params {
        match k.as_str() {
            "patient" => {
                let id = v.strip_prefix("Patient/").unwrap_or(v);
                q.patient_id = Some(id.to_owned());
            }
            "status" => q.status = Some(v.clone()),
            "code" => q.code = Some(v.rsplit('|').next().unwrap_or(v).to_owned()),
            "_count" | "_offset" => {}
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "not-supported",
                    format!("DetectedIssue search takes patient, status, code, _count and _offset, not '{other}'"),
                )
                .at(other));
            }
        }
    }
    let store = &state.gateway.store;
    let mut tx = store.begin().await.map_err(store_err)?;
    if let Some(p) = &q.patient_id {
        // A merged gateway patient's alerts live under the survivor.
        if let Some(gp) = tx.patient(p).await.map_err(store_err)? {
            q.patient_id = Some(gp.id);
        }
    }
    let rows = tx.alert_search(&q).await.map_err(store_err)?;
    let mut row = audit::row(
        &caller.actor(),
        None,
        "E",
        "search-type",
        audit::outcome::SUCCESS,
    );
    row.patient_id = q.patient_id.clone();
    row.entities = rows
        .iter()
        .map(|a| format!("DetectedIssue/{}", a.id))
        .collect();
    row.query = Some(format!(
        "DetectedIssue?{}",
        params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    ));
    row.purpose = Some("TREAT".into());
    row.detail = Some(format!("{} alerts returned", rows.len()));
    tx.audit(&row).await.map_err(store_err)?;
    tx.commit().await.map_err(store_err)?;
    let entries: Vec<Value> = rows
        .iter()
        .map(|a| {
            let r: Value = serde_json::from_str(&a.body).unwrap_or(Value::Null);
            json!({ "fullUrl": format!("DetectedIssue/{}", a.id), "resource": r, "search": { "mode": "match" } })
        })
        .collect();
    Ok(fhir_response(
        StatusCode::OK,
        &json!({ "resourceType": "Bundle", "type": "searchset", "entry": entries }),
    ))
}

/// `GET /fhir/DetectedIssue/{id}`.
pub async fn read(state: &AppState, caller: &Caller, id: &str) -> Result<Response, ApiError> {
    require_careteam(caller)?;
    let mut tx = state.gateway.store.begin().await.map_err(store_err)?;
    let Some(a) = tx.alert_get(id).await.map_err(store_err)? else {
        return Err(ApiError::not_found(format!("no DetectedIssue/{id}")));
    };
    let mut row = audit::row(&caller.actor(), None, "R", "read", audit::outcome::SUCCESS);
    row.patient_id = Some(a.patient_id.clone());
    row.entities = vec![format!("DetectedIssue/{}", a.id)];
    row.purpose = Some("TREAT".into());
    tx.audit(&row).await.map_err(store_err)?;
    tx.commit().await.map_err(store_err)?;
    let body: Value = serde_json::from_str(&a.body).unwrap_or(Value::Null);
    Ok(fhir_response(StatusCode::OK, &body))
}

/// `POST /fhir/DetectedIssue/{id}/$acknowledge` with a Parameters resource: `author`
/// (valueString, or valueReference with a display or reference) and `note` (valueString).
pub async fn acknowledge(
    state: &AppState,
    caller: &Caller,
    id: &str,
    body: &Value,
) -> Result<Response, ApiError> {
    require_careteam(caller)?;
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "$acknowledge takes a Parameters resource with author and note",
        )
        .at("Parameters"));
    }
    let param = |name: &str| {
        body.get("parameter")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
    };
    let author = param("author").and_then(|p| {
        p.get("valueString")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| {
                let r = p.get("valueReference")?;
                r.get("display")
                    .or_else(|| r.get("reference"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
    });
    let Some(author) = author.filter(|a| !a.trim().is_empty()) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "required",
            "name who acknowledges: a parameter 'author' (valueString or valueReference)",
        )
        .at("Parameters.parameter"));
    };
    let note = param("note")
        .and_then(|p| p.get("valueString"))
        .and_then(Value::as_str);
    let mut tx = state.gateway.store.begin().await.map_err(store_err)?;
    let now = audit::now_us();
    let Some(event) = crate::detect::lifecycle::acknowledge(&mut *tx, id, &author, note, now)
        .await
        .map_err(store_err)?
    else {
        return Err(ApiError::not_found(format!("no DetectedIssue/{id}")));
    };
    tx.audit(&alert_audit_row(&event, Some(caller)))
        .await
        .map_err(store_err)?;
    tx.commit().await.map_err(store_err)?;
    let resource = event.resource.clone();
    state.gateway.publish(vec![event]);
    Ok(fhir_response(StatusCode::OK, &resource))
}

/// `GET /fhir/Patient/{id}/$total-plan`: one Bundle with every sector's active CarePlans,
/// Goals, Conditions, CareTeams and medications (each tagged with its sector, as the
/// cross-sector view shows them) and the patient's open alerts.
pub async fn total_plan(
    state: &AppState,
    caller: &Caller,
    patient: &str,
) -> Result<Response, ApiError> {
    require_careteam(caller)?;
    let gw = &state.gateway;
    let mut tx = gw.store.begin().await.map_err(store_err)?;
    let Some(p) = tx.patient(patient).await.map_err(store_err)? else {
        return Err(ApiError::not_found(format!("no gateway patient {patient}")));
    };
    let snap = crate::detect::lifecycle::snapshot(&mut *tx, &p.id, audit::now_us())
        .await
        .map_err(store_err)?;
    let mut entries = vec![json!({
        "fullUrl": format!("Patient/{}", p.id),
        "resource": super::views::patient_view(&p),
    })];
    let mut gids = Vec::new();
    for item in &snap.items {
        let current = match item.rtype.as_str() {
            "CarePlan" => crate::detect::active_plan(item),
            "Condition" => crate::detect::active_condition(item),
            "CareTeam" => crate::detect::active_team(item),
            "MedicationRequest" | "MedicationStatement" => crate::detect::active_medication(item),
            "Goal" => !matches!(
                item.body.get("lifecycleStatus").and_then(Value::as_str),
                Some("completed" | "cancelled" | "entered-in-error" | "rejected")
            ),
            _ => false,
        };
        if !current {
            continue;
        }
        if let Some(stored) = tx.get(&item.gid).await.map_err(store_err)? {
            entries.push(json!({
                "fullUrl": format!("{}/{}", item.rtype, item.gid),
                "resource": super::views::gateway_view(gw, &stored),
            }));
            gids.push(format!("{}/{}", item.rtype, item.gid));
        }
    }
    let open = tx
        .alert_search(&AlertQuery {
            patient_id: Some(p.id.clone()),
            count: 1000,
            ..AlertQuery::default()
        })
        .await
        .map_err(store_err)?;
    for a in open.iter().filter(|a| a.open) {
        let r: Value = serde_json::from_str(&a.body).unwrap_or(Value::Null);
        entries.push(json!({ "fullUrl": format!("DetectedIssue/{}", a.id), "resource": r }));
        gids.push(format!("DetectedIssue/{}", a.id));
    }
    let mut row = audit::row(
        &caller.actor(),
        None,
        "R",
        "operation",
        audit::outcome::SUCCESS,
    );
    row.patient_id = Some(p.id.clone());
    row.entities = gids;
    row.purpose = Some("TREAT".into());
    row.detail = Some(format!("$total-plan: {} entries", entries.len()));
    tx.audit(&row).await.map_err(store_err)?;
    tx.commit().await.map_err(store_err)?;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": crate::store::sql::instant(audit::now_us()),
        "entry": entries,
    });
    Ok(fhir_response(StatusCode::OK, &bundle))
}

/// `GET /alerts/stream`: one SSE event per alert change (`raised`, `updated`, `closed`,
/// `acknowledged`), data = `{id, patient, code, status, version, resource}`.
async fn stream(
    State(state): State<AppState>,
    Authed(caller): Authed,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    require_careteam(&caller)?;
    let mut row = audit::row(
        &caller.actor(),
        None,
        "R",
        "stream",
        audit::outcome::SUCCESS,
    );
    row.entities = vec!["DetectedIssue".into()];
    row.purpose = Some("TREAT".into());
    row.detail = Some("alert stream opened".into());
    state.gateway.write_audit(row).await;
    let mut rx = state.gateway.alert_events.subscribe();
    let mut closing = state.gateway.shutting_down.subscribe();
    let s = async_stream(move |tx| async move {
        loop {
            let next = tokio::select! {
                e = rx.recv() => e,
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
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
}
