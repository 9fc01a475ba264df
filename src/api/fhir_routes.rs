//! The FHIR REST routes. `/fhir/{sector}/…` is a sector's ingress base (create, update,
//! transaction, batch, read by the sector's own id); `/fhir/{Type}/…` reads across sectors by
//! gateway id. A first segment is a sector when it is configured, a type when it names an R4
//! resource type (sector ids are lowercase, type names are not, so the two never collide).

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use super::AppState;
use super::auth::Authed;
use super::error::ApiError;
use super::fhir_reads::{
    get_five, get_four, get_three, get_two, is_type, search, unknown_first_segment,
};
use super::negotiate::{self, Return};
use super::response::{fhir_response, fhir_text_response};
use super::views;
use crate::access::Caller;
use crate::audit::Interaction;
use crate::fhir::FHIR_JSON;
use crate::fhir::json::{Arena, parse_strict};
use crate::fhir::outcome::{Issue, PathRef, fhirpath, information};
use crate::gateway::entry::parse_query;
use crate::gateway::views::sector_view;
use crate::gateway::{Entry, Method};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/fhir/metadata", get(metadata))
        .route("/fhir/{base}", get(search).post(post_bundle))
        // A client that joins paths adds a slash to a sector's base.
        .route("/fhir/{base}/", post(post_bundle))
        .route("/fhir/{base}/{segment}", get(get_two).post(post_create))
        .route(
            "/fhir/{base}/{segment}/{leaf}",
            get(get_three).put(put_update).post(post_operation),
        )
        .route("/fhir/{base}/{segment}/{leaf}/{more}", get(get_four))
        .route("/fhir/{base}/{segment}/{leaf}/{more}/{last}", get(get_five))
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
                "this method is not supported on this path",
            )
        })
}

/// `GET /fhir/metadata`: the CapabilityStatement, without a token (clients discover the
/// server and its security before they hold one).
async fn metadata(State(state): State<AppState>) -> Response {
    fhir_response(StatusCode::OK, &views::capability_statement(&state.gateway))
}

/// A write under `/fhir/{sector}/{type}`: the sector is configured and the type is R4's.
fn sector_and_type(state: &AppState, sector: &str, rtype: &str) -> Result<(), ApiError> {
    if state.gateway.sector(sector).is_none() {
        return Err(unknown_first_segment(sector));
    }
    if !is_type(state, rtype) {
        return Err(ApiError::not_found(format!(
            "'{rtype}' is not an R4 resource type"
        )));
    }
    Ok(())
}

/// Checks the media type and parses the body strictly; every failure names its reason.
async fn read_body(
    state: &AppState,
    caller: &Caller,
    sector: &str,
    root: &str,
    interaction: Interaction,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, ApiError> {
    let result = parse_body(state, root, headers, body);
    audit_refused(state, caller, sector, interaction, result).await
}

/// A body refused before it was read as FHIR leaves an audit row with the HTTP status.
async fn audit_refused<T>(
    state: &AppState,
    caller: &Caller,
    sector: &str,
    interaction: Interaction,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    if let Err(e) = &result {
        state
            .gateway
            .rejected_body(&caller.actor(), sector, interaction, e.status.as_u16())
            .await;
    }
    result
}

fn parse_body(
    state: &AppState,
    root: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, ApiError> {
    let bytes = body_bytes(state, headers, body)?;
    parse_strict(&bytes, state.gateway.settings().server.max_json_depth)
        .map_err(|e| json_error(root, &e))
}

/// The body's bytes, once its media type is FHIR JSON and it is neither too large nor empty.
fn body_bytes(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ctype
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != FHIR_JSON && mime != "application/json" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "send the resource as application/fhir+json (or application/json)",
        ));
    }
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-costly",
                format!(
                    "the body exceeds the limit of {} bytes",
                    state.gateway.settings().server.max_body_bytes
                ),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "structure",
                "the body could not be read",
            )
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "required",
            "the request has no body",
        ));
    }
    Ok(bytes)
}

/// A body that is not JSON the strict parser accepts, as a 400 naming where and why.
fn json_error(root: &str, e: &crate::fhir::json::JsonError) -> ApiError {
    let path = fhirpath(root, e.path.iter().map(PathRef::from));
    ApiError {
        status: StatusCode::BAD_REQUEST,
        issues: vec![Issue::error("structure", e.to_string()).at(path)],
    }
}

async fn post_bundle(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(sector): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if state.gateway.sector(&sector).is_none() {
        return Err(unknown_first_segment(&sector));
    }
    let interaction = Interaction::Transaction;
    let bytes = body_bytes(&state, &headers, body);
    let bytes = audit_refused(&state, &caller, &sector, interaction, bytes).await?;
    // Parsed and validated once into a tree borrowed from the bytes, its containers in `arena`
    // (freed at once with the request); the runtime's worker hands its other tasks to another
    // thread meanwhile (`cpu_bound`), so the store's round trips go on while a large Bundle
    // is read.
    let arena = Arena::new();
    let read = crate::gateway::cpu_bound(|| state.gateway.read_document(&bytes, &arena))
        .map_err(|e| json_error("Bundle", &e));
    let document = audit_refused(&state, &caller, &sector, interaction, read).await?;
    let response = state
        .gateway
        .bundle_document(&caller, &sector, document)
        .await?;
    Ok(fhir_text_response(StatusCode::OK, response.to_json()))
}

async fn post_create(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path((sector, rtype)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    sector_and_type(&state, &sector, &rtype)?;
    let value = read_body(
        &state,
        &caller,
        &sector,
        &rtype,
        Interaction::Create,
        &headers,
        body,
    )
    .await?;
    // `If-None-Exist`, or (as clients such as fhirpy send it) the search as the POST's query.
    let from_query = uri
        .query()
        .map(parse_query)
        .map(|q| {
            q.into_iter()
                .filter(|(k, _)| k != "_format")
                .collect::<Vec<_>>()
        })
        .filter(|q| !q.is_empty());
    let if_none_exist = headers
        .get("if-none-exist")
        .map(|v| {
            v.to_str().map(parse_query).map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "value",
                    "If-None-Exist is not readable",
                )
                .at("If-None-Exist")
            })
        })
        .transpose()?
        .or(from_query);
    let entry = Entry {
        location: None,
        method: Method::Post,
        rtype,
        url_id: None,
        if_none_exist,
        if_match: None,
        full_url: None,
        resource: value,
    };
    write_response(&state, &headers, &caller, &sector, entry).await
}

async fn put_update(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path((sector, rtype, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    sector_and_type(&state, &sector, &rtype)?;
    let value = read_body(
        &state,
        &caller,
        &sector,
        &rtype,
        Interaction::Update,
        &headers,
        body,
    )
    .await?;
    let entry = Entry {
        location: None,
        method: Method::Put,
        rtype,
        url_id: Some(id),
        if_none_exist: None,
        if_match: negotiate::if_match(&headers)?,
        full_url: None,
        resource: value,
    };
    write_response(&state, &headers, &caller, &sector, entry).await
}

async fn write_response(
    state: &AppState,
    headers: &HeaderMap,
    caller: &Caller,
    sector: &str,
    entry: Entry,
) -> Result<Response, ApiError> {
    let applied = state.gateway.put_one(caller, sector, entry).await?;
    let stored = crate::store::Stored {
        gid: applied.outcome.gid.clone(),
        sector: sector.to_owned(),
        rtype: applied.rtype.clone(),
        rid: applied.rid.clone(),
        version: applied.outcome.version,
        last_updated: applied.outcome.last_updated.clone(),
        patient_id: applied.outcome.patient_id.clone(),
        body: applied.body.to_string(),
    };
    let status = if applied.outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut resp = match negotiate::prefer_return(headers) {
        Return::Representation => fhir_response(status, &sector_view(&state.gateway, &stored)?),
        Return::Minimal => status.into_response(),
        Return::OperationOutcome => fhir_response(
            status,
            &information(if applied.outcome.created {
                "created"
            } else if applied.outcome.changed {
                "updated"
            } else {
                "unchanged: the content is the current version's"
            }),
        ),
    };
    let location = format!(
        "{}/{}/{}/_history/{}",
        state.gateway.sector_base(sector),
        applied.rtype,
        applied.rid,
        applied.outcome.version
    );
    negotiate::set_version(&mut resp, stored.version, Some(&stored.last_updated));
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v.clone());
        h.insert(header::CONTENT_LOCATION, v);
    }
    Ok(resp)
}

/// `POST /fhir/DetectedIssue/{id}/$acknowledge`, `POST /fhir/DetectedIssue/{id}/$snooze` and
/// `POST /fhir/Patient/{id}/$break-glass`;
/// other instance operations are not supported.
async fn post_operation(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path((rtype, id, operation)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let known = (rtype == "DetectedIssue"
        && ["$acknowledge", "$snooze"].contains(&operation.as_str()))
        || (rtype == "Patient" && operation == "$break-glass");
    if !known {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            "POST here is $acknowledge or $snooze on a DetectedIssue, or $break-glass on a Patient",
        ));
    }
    let value = parse_body(&state, "Parameters", &headers, body)?;
    if rtype == "Patient" {
        return super::access_routes::break_glass(&state, &caller, &id, &value).await;
    }
    if operation == "$snooze" {
        return super::alert_routes::snooze(&state, &caller, &id, &value).await;
    }
    super::alert_routes::acknowledge(&state, &caller, &id, &value).await
}
