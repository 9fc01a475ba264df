//! The FHIR REST routes. `/fhir/{sector}/…` is a sector's ingress base (create, update,
//! transaction, batch, read by the sector's own id); `/fhir/{Type}/…` reads across sectors by
//! gateway id. A first segment is a sector when it is configured, a type when it names an R4
//! resource type (sector ids are lowercase, type names are not, so the two never collide).

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use serde_json::Value;

use super::AppState;
use super::auth::Authed;
use super::error::ApiError;
use super::response::fhir_response;
use super::views;
use crate::access::{Caller, Request, authorize};
use crate::audit::{Action, Interaction, Outcome};
use crate::fhir::FHIR_JSON;
use crate::fhir::json::parse_strict;
use crate::fhir::outcome::{Issue, PathRef, fhirpath};
use crate::gateway::views::{gateway_view, patient_view, sector_view};
use crate::gateway::{Entry, GatewayError, Method, parse_identifier_query};
use crate::store::AuditQuery;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/fhir/metadata", get(metadata))
        .route("/fhir/{base}", get(search).post(post_bundle))
        .route("/fhir/{base}/{segment}", get(get_two).post(post_create))
        .route(
            "/fhir/{base}/{segment}/{leaf}",
            get(get_three).put(put_update).post(post_operation),
        )
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
                "this method is not supported on this path",
            )
        })
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}/fhir")
}

async fn metadata(
    State(state): State<AppState>,
    Authed(caller): Authed,
) -> Result<Response, ApiError> {
    authorize(&caller, Request::Capabilities).map_err(GatewayError::from)?;
    Ok(fhir_response(StatusCode::OK, &state.capability))
}

fn is_type(state: &AppState, name: &str) -> bool {
    state.gateway.validator().schema.is_resource_type(name)
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

fn unknown_first_segment(base: &str) -> ApiError {
    ApiError::not_found(format!(
        "'{base}' is neither a configured sector nor an R4 resource type"
    ))
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
    parse_strict(&bytes, state.gateway.settings().server.max_json_depth).map_err(|e| {
        let path = fhirpath(root, e.path.iter().map(PathRef::from));
        ApiError {
            status: StatusCode::BAD_REQUEST,
            issues: vec![Issue::error("structure", e.to_string()).at(path)],
        }
    })
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
    let value = read_body(
        &state,
        &caller,
        &sector,
        "Bundle",
        Interaction::Transaction,
        &headers,
        body,
    )
    .await?;
    let response = state.gateway.bundle(&caller, &sector, value).await?;
    Ok(fhir_response(StatusCode::OK, &response))
}

async fn post_create(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path((sector, rtype)): Path<(String, String)>,
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
    let if_none_exist = match headers.get("if-none-exist").and_then(|v| v.to_str().ok()) {
        None => None,
        Some(q) => Some(parse_identifier_query(q).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "not-supported",
                "If-None-Exist supports identifier=system|value only",
            )
        })?),
    };
    let entry = Entry {
        location: None,
        method: Method::Post,
        rtype,
        url_id: None,
        if_none_exist,
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
    let mut resp = fhir_response(status, &sector_view(&state.gateway, &stored)?);
    let location = format!(
        "{}/{sector}/{}/{}/_history/{}",
        base_url(headers),
        applied.rtype,
        applied.rid,
        applied.outcome.version
    );
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v.clone());
        h.insert(header::CONTENT_LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", applied.outcome.version)) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}

async fn get_two(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path((base, segment)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if state.gateway.sector(&base).is_some() {
        if segment == "metadata" {
            authorize(&caller, Request::Capabilities).map_err(GatewayError::from)?;
            return Ok(fhir_response(
                StatusCode::OK,
                &views::sector_capability(&state.gateway, &base),
            ));
        }
        return Err(ApiError::not_found(format!(
            "read under a sector needs /fhir/{base}/{{type}}/{{id}}"
        )));
    }
    if !is_type(&state, &base) {
        return Err(unknown_first_segment(&base));
    }
    if base == "DetectedIssue" {
        return super::alert_routes::read(&state, &caller, &segment).await;
    }
    if base == "Patient"
        && let Some(p) = state.gateway.patient(&caller, &segment).await?
    {
        return Ok(fhir_response(StatusCode::OK, &patient_view(&p)));
    }
    let stored = state.gateway.read(&caller, None, &base, &segment).await?;
    Ok(with_version(
        fhir_response(StatusCode::OK, &gateway_view(&state.gateway, &stored)?),
        stored.version,
    ))
}

async fn get_three(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path((base, segment, leaf)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    if base == "Patient" && leaf == "$total-plan" {
        return super::alert_routes::total_plan(&state, &caller, &segment).await;
    }
    if state.gateway.sector(&base).is_none() {
        return Err(unknown_first_segment(&base));
    }
    if !is_type(&state, &segment) {
        return Err(ApiError::not_found(format!(
            "'{segment}' is not an R4 resource type"
        )));
    }
    let stored = state
        .gateway
        .read(&caller, Some(&base), &segment, &leaf)
        .await?;
    Ok(with_version(
        fhir_response(StatusCode::OK, &sector_view(&state.gateway, &stored)?),
        stored.version,
    ))
}

/// `POST /fhir/DetectedIssue/{id}/$acknowledge` and `POST /fhir/Patient/{id}/$break-glass`;
/// other instance operations are not supported.
async fn post_operation(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path((rtype, id, operation)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let known = (rtype == "DetectedIssue" && operation == "$acknowledge")
        || (rtype == "Patient" && operation == "$break-glass");
    if !known {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            "POST here is $acknowledge on a DetectedIssue or $break-glass on a Patient",
        ));
    }
    let value = parse_body(&state, "Parameters", &headers, body)?;
    if rtype == "Patient" {
        return super::access_routes::break_glass(&state, &caller, &id, &value).await;
    }
    super::alert_routes::acknowledge(&state, &caller, &id, &value).await
}

fn with_version(mut resp: Response, version: i64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

const DEFAULT_COUNT: i64 = 100;
const MAX_COUNT: i64 = 1000;

fn paging(params: &[(String, String)]) -> Result<(i64, i64), ApiError> {
    let get = |name: &str, default: i64| -> Result<i64, ApiError> {
        match params.iter().find(|(k, _)| k == name) {
            None => Ok(default),
            Some((_, v)) => v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "value",
                    format!("{name} must be a non-negative integer"),
                )
                .at(name)
            }),
        }
    };
    Ok((
        get("_offset", 0)?,
        get("_count", DEFAULT_COUNT)?.clamp(1, MAX_COUNT),
    ))
}

fn next_link(
    base: &str,
    path: &str,
    params: &[(String, String)],
    offset: i64,
    count: i64,
    got: usize,
) -> Option<String> {
    if (got as i64) < count {
        return None;
    }
    let mut query: Vec<String> = params
        .iter()
        .filter(|(k, _)| k != "_offset" && k != "_count")
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect();
    query.push(format!("_count={count}"));
    query.push(format!("_offset={}", offset + count));
    Some(format!("{base}/{path}?{}", query.join("&")))
}

async fn search(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    params: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    if state.gateway.sector(&rtype).is_some() {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            "a sector base takes POST of a Bundle",
        ));
    }
    if !is_type(&state, &rtype) {
        return Err(unknown_first_segment(&rtype));
    }
    let Query(params) = params.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "structure",
            "the query string cannot be parsed",
        )
    })?;
    let (offset, count) = paging(&params)?;
    let base = base_url(&headers);
    if rtype == "AuditEvent" {
        return audit_search(&state, &caller, &base, &params, offset, count).await;
    }
    if rtype == "DetectedIssue" {
        return super::alert_routes::search(&state, &caller, &params, offset, count).await;
    }
    if rtype == "Patient" {
        return patient_search(&state, &caller, &base, &params).await;
    }
    for (k, _) in &params {
        if !["patient", "_count", "_offset", "_format"].contains(&k.as_str()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "not-supported",
                format!("unsupported search parameter '{k}'; use patient"),
            )
            .at(k.clone()));
        }
    }
    let Some((_, patient)) = params.iter().find(|(k, _)| k == "patient") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "required",
            "search needs patient=<gateway patient id>",
        )
        .at("patient"));
    };
    let patient = patient.strip_prefix("Patient/").unwrap_or(patient);
    let found = state
        .gateway
        .search_by_patient(&caller, &rtype, patient, offset, count)
        .await?;
    let got = found.len();
    let resources = found
        .iter()
        .map(|s| gateway_view(&state.gateway, s))
        .collect::<Result<Vec<_>, _>>()?;
    let self_url = format!("{base}/{rtype}");
    let bundle = views::searchset(
        &base,
        &self_url,
        next_link(&base, &rtype, &params, offset, count, got),
        resources,
    );
    Ok(fhir_response(StatusCode::OK, &bundle))
}

async fn patient_search(
    state: &AppState,
    caller: &Caller,
    base: &str,
    params: &[(String, String)],
) -> Result<Response, ApiError> {
    for (k, _) in params {
        if !["identifier", "_count", "_offset", "_format"].contains(&k.as_str()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "not-supported",
                format!("unsupported search parameter '{k}'; use identifier"),
            )
            .at(k.clone()));
        }
    }
    let Some((_, ident)) = params.iter().find(|(k, _)| k == "identifier") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "required",
            "Patient search needs identifier=<system>|<value>",
        )
        .at("identifier"));
    };
    let Some((system, value)) = ident
        .split_once('|')
        .filter(|(s, v)| !s.is_empty() && !v.is_empty())
    else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "value",
            "identifier takes <system>|<value>",
        )
        .at("identifier"));
    };
    let found = state
        .gateway
        .patients_by_identifier(caller, system, value)
        .await?;
    let resources = found.iter().map(patient_view).collect();
    Ok(fhir_response(
        StatusCode::OK,
        &views::searchset(base, &format!("{base}/Patient"), None, resources),
    ))
}

async fn audit_search(
    state: &AppState,
    caller: &Caller,
    base: &str,
    params: &[(String, String)],
    offset: i64,
    count: i64,
) -> Result<Response, ApiError> {
    let q = audit_query(state, params, offset, count)?;
    let rows = state.gateway.audit_search(caller, &q).await?;
    let got = rows.len();
    let events = rows.iter().map(crate::audit::audit_event).collect();
    let bundle = views::searchset(
        base,
        &format!("{base}/AuditEvent"),
        next_link(base, "AuditEvent", params, offset, count, got),
        events,
    );
    Ok(fhir_response(StatusCode::OK, &bundle))
}

/// The audit search of AuditEvent search parameters.
fn audit_query(
    state: &AppState,
    params: &[(String, String)],
    offset: i64,
    count: i64,
) -> Result<AuditQuery, ApiError> {
    let mut q = AuditQuery {
        offset,
        count,
        ..AuditQuery::default()
    };
    for (k, v) in params {
        match k.as_str() {
            "patient" => q.patient_id = Some(v.strip_prefix("Patient/").unwrap_or(v).to_owned()),
            "outcome" => {
                q.outcome = Some(Outcome::parse(v).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "value",
                        format!("outcome is one of {}", Outcome::codes()),
                    )
                    .at("outcome")
                })?);
            }
            "date" => {
                let (from, to) = date_bounds(v).ok_or_else(|| {
                    ApiError::new(StatusCode::BAD_REQUEST, "value", "date takes an optional prefix (eq, ge, gt, le, lt) and a FHIR date or dateTime")
                        .at("date")
                })?;
                if let Some(f) = from {
                    q.from_us = Some(q.from_us.map_or(f, |x| x.max(f)));
                }
                if let Some(t) = to {
                    q.to_us = Some(q.to_us.map_or(t, |x| x.min(t)));
                }
            }
            "agent" | "agent-name" => q.agent = Some(v.clone()),
            "sector" => q.sector = Some(v.clone()),
            "action" => {
                q.action = Some(Action::parse(v).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "value",
                        format!("action is one of {}", Action::codes()),
                    )
                    .at("action")
                })?);
            }
            "entity-type" => {
                if !is_type(state, v) {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "value",
                        "entity-type takes an R4 resource type name, e.g. Condition",
                    )
                    .at("entity-type"));
                }
                q.entity_type = Some(v.clone());
            }
            "_count" | "_offset" | "_format" => {}
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "not-supported",
                    format!("unsupported search parameter '{other}'; use patient, date, outcome, agent, sector, action or entity-type"),
                )
                .at(other.to_owned()));
            }
        }
    }
    Ok(q)
}

/// A FHIR date search value → inclusive bounds in microseconds since the epoch.
fn date_bounds(v: &str) -> Option<(Option<i64>, Option<i64>)> {
    let (prefix, value) = match v.get(..2) {
        Some(p @ ("eq" | "ge" | "gt" | "le" | "lt")) => (p, &v[2..]),
        _ => ("eq", v),
    };
    let (start, end) = crate::fhir::time::period(value)?;
    Some(match prefix {
        "ge" => (Some(start), None),
        "gt" => (Some(end + 1), None),
        "le" => (None, Some(end)),
        "lt" => (None, Some(start - 1)),
        _ => (Some(start), Some(end)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_prefixes() {
        let (from, to) = date_bounds("2024-03").unwrap();
        assert!(from.unwrap() < to.unwrap());
        let (from, to) = date_bounds("ge2024-01-01").unwrap();
        assert!(from.is_some() && to.is_none());
        let (from, to) = date_bounds("lt2024-01-01T10:00:00Z").unwrap();
        assert!(from.is_none() && to.is_some());
        assert!(date_bounds("yesterday").is_none());
        assert!(date_bounds("2023-02-30").is_none());
    }
}
