//! The FHIR reads: read, vread, instance and type history, search (on the cross-sector base by
//! gateway id, and on a sector's base by the sector's own ids), the gateway patient, alerts and
//! the audit log. Searchsets carry `total`, a self link with the query as executed and
//! `next`/`previous` links; every `fullUrl` and link starts at the gateway's public base.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::AppState;
use super::auth::Authed;
use super::error::ApiError;
use super::negotiate;
use super::response::fhir_response;
use super::views::{self, Page};
use crate::access::{Caller, Request, authorize};
use crate::audit::{Action, Outcome};
use crate::gateway::GatewayError;
use crate::gateway::params::{self, Criteria, date_bounds};
use crate::gateway::search::{DEFAULT_COUNT, Included, MAX_COUNT};
use crate::gateway::views::patient_view;
use crate::store::{AuditQuery, Stored};

pub(super) fn is_type(state: &AppState, name: &str) -> bool {
    state.gateway.validator().schema.is_resource_type(name)
}

pub(super) fn unknown_first_segment(base: &str) -> ApiError {
    ApiError::not_found(format!(
        "'{base}' is neither a configured sector nor an R4 resource type"
    ))
}

type Params = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

fn query(params: Params) -> Result<Vec<(String, String)>, ApiError> {
    params.map(|Query(p)| p).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "structure",
            "the query string cannot be parsed",
        )
    })
}

fn version_of(v: &str) -> Result<i64, ApiError> {
    v.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::not_found(format!("no version '{v}'")))
}

/// One resource with its `ETag` and `Last-Modified`; 304 when `If-None-Match` names it.
async fn one(
    state: &AppState,
    headers: &HeaderMap,
    sector: Option<&str>,
    stored: Stored,
) -> Result<Response, ApiError> {
    if negotiate::not_modified(headers, stored.version) {
        return Ok(negotiate::not_modified_response(stored.version));
    }
    let shown = state
        .gateway
        .show(sector, std::slice::from_ref(&stored))
        .await
        .map_err(GatewayError::from)?;
    let mut resp = match shown.first() {
        Some(body) => fhir_response(StatusCode::OK, body),
        None => {
            return Err(ApiError::not_found(format!(
                "{}/{}",
                stored.rtype, stored.gid
            )));
        }
    };
    negotiate::set_version(&mut resp, stored.version, Some(&stored.last_updated));
    Ok(resp)
}

/// The base a view's links start at: the cross-sector base or a sector's.
fn view_base(state: &AppState, sector: Option<&str>) -> String {
    match sector {
        Some(s) => state.gateway.sector_base(s),
        None => state.gateway.fhir_base(),
    }
}

/// A `history` Bundle of versions.
async fn history_bundle(
    state: &AppState,
    sector: Option<&str>,
    versions: &[Stored],
    self_url: String,
    next: Option<String>,
) -> Result<Response, ApiError> {
    let shown = state
        .gateway
        .show(sector, versions)
        .await
        .map_err(GatewayError::from)?;
    let base = view_base(state, sector);
    Ok(fhir_response(
        StatusCode::OK,
        &views::history(&base, self_url, next, versions, shown),
    ))
}

/// `GET /fhir/{base}/{segment}`: a sector's metadata or search; a type's history; a read.
pub async fn get_two(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path((base, segment)): Path<(String, String)>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    if state.gateway.sector(&base).is_some() {
        if segment == "metadata" {
            authorize(&caller, Request::Capabilities).map_err(GatewayError::from)?;
            return Ok(fhir_response(
                StatusCode::OK,
                &views::sector_capability(&state.gateway, &base),
            ));
        }
        if !is_type(&state, &segment) {
            return Err(ApiError::not_found(format!(
                "'{segment}' is not an R4 resource type"
            )));
        }
        let params = query(params)?;
        return resources_search(&state, &caller, &headers, Some(&base), &segment, &params).await;
    }
    if !is_type(&state, &base) {
        return Err(unknown_first_segment(&base));
    }
    if segment == "_history" {
        let params = query(params)?;
        return type_history(&state, &caller, None, &base, &params).await;
    }
    if base == "DetectedIssue" {
        return super::alert_routes::read(&state, &caller, &segment).await;
    }
    if base == "OperationDefinition"
        && let Some(d) = views::operation_definition(&state.gateway, &segment)
    {
        return Ok(fhir_response(StatusCode::OK, &d));
    }
    if base == "Patient"
        && let Some(p) = state.gateway.patient(&caller, &segment).await?
    {
        return Ok(fhir_response(StatusCode::OK, &patient_view(&p)));
    }
    let stored = state.gateway.read(&caller, None, &base, &segment).await?;
    one(&state, &headers, None, stored).await
}

/// `GET /fhir/{base}/{segment}/{leaf}`: `$total-plan`, a read on a sector's base, an
/// instance's history, a sector's type history.
pub async fn get_three(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path((base, segment, leaf)): Path<(String, String, String)>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    if base == "Patient" && leaf == "$total-plan" {
        return super::alert_routes::total_plan(&state, &caller, &segment).await;
    }
    if state.gateway.sector(&base).is_none() {
        if is_type(&state, &base) && leaf == "_history" {
            let versions = state
                .gateway
                .history(&caller, None, &base, &segment)
                .await?;
            let url = format!("{}/{base}/{segment}/_history", state.gateway.fhir_base());
            return history_bundle(&state, None, &versions, url, None).await;
        }
        return Err(unknown_first_segment(&base));
    }
    if !is_type(&state, &segment) {
        return Err(ApiError::not_found(format!(
            "'{segment}' is not an R4 resource type"
        )));
    }
    if leaf == "_history" {
        let params = query(params)?;
        return type_history(&state, &caller, Some(&base), &segment, &params).await;
    }
    let stored = state
        .gateway
        .read(&caller, Some(&base), &segment, &leaf)
        .await?;
    one(&state, &headers, Some(&base), stored).await
}

/// `GET /fhir/{Type}/{id}/_history/{v}` (vread across sectors) and
/// `GET /fhir/{sector}/{Type}/{id}/_history` (an instance's history on a sector's base).
pub async fn get_four(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path((base, segment, leaf, more)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if state.gateway.sector(&base).is_some() && is_type(&state, &segment) && more == "_history" {
        let versions = state
            .gateway
            .history(&caller, Some(&base), &segment, &leaf)
            .await?;
        let url = format!(
            "{}/{segment}/{leaf}/_history",
            state.gateway.sector_base(&base)
        );
        return history_bundle(&state, Some(&base), &versions, url, None).await;
    }
    if is_type(&state, &base) && leaf == "_history" {
        let stored = state
            .gateway
            .vread(&caller, None, &base, &segment, version_of(&more)?)
            .await?;
        return one(&state, &headers, None, stored).await;
    }
    Err(ApiError::not_found("no such endpoint"))
}

/// `GET /fhir/{sector}/{Type}/{id}/_history/{v}`: vread on a sector's base.
pub async fn get_five(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path((base, segment, leaf, more, last)): Path<(String, String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if state.gateway.sector(&base).is_none() || !is_type(&state, &segment) || more != "_history" {
        return Err(ApiError::not_found("no such endpoint"));
    }
    let stored = state
        .gateway
        .vread(&caller, Some(&base), &segment, &leaf, version_of(&last)?)
        .await?;
    one(&state, &headers, Some(&base), stored).await
}

/// `_count` and `_offset` of a history or an alert or audit search.
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
        get("_count", DEFAULT_COUNT)?.min(MAX_COUNT),
    ))
}

async fn type_history(
    state: &AppState,
    caller: &Caller,
    sector: Option<&str>,
    rtype: &str,
    params: &[(String, String)],
) -> Result<Response, ApiError> {
    let (offset, count) = paging(params)?;
    let count = count.max(1);
    let versions = state
        .gateway
        .type_history(caller, sector, rtype, offset, count)
        .await?;
    let base = view_base(state, sector);
    let url = |o: i64| format!("{base}/{rtype}/_history?_count={count}&_offset={o}");
    let next = (versions.len() as i64 >= count).then(|| url(offset + count));
    history_bundle(state, sector, &versions, url(offset), next).await
}

/// `GET /fhir/{base}`: a search on the cross-sector base.
pub async fn search(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    params: Params,
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
    let params = query(params)?;
    match rtype.as_str() {
        "AuditEvent" => audit_search(&state, &caller, &headers, &params).await,
        "DetectedIssue" => alert_search(&state, &caller, &headers, &params).await,
        "Patient" if params.iter().all(|(k, _)| k != "_lastUpdated") => {
            patient_search(&state, &caller, &headers, &params).await
        }
        _ => resources_search(&state, &caller, &headers, None, &rtype, &params).await,
    }
}

/// Parameters outside `known` are ignored (lenient, the default) or refused (strict).
fn unknown(headers: &HeaderMap, ignored: &[String], known: &str) -> Result<(), ApiError> {
    if let Some(k) = ignored.first()
        && negotiate::strict(headers)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not-supported",
            format!("unknown search parameter '{k}' (Prefer: handling=strict); this search takes {known}"),
        )
        .at(k.clone()));
    }
    Ok(())
}

/// A search of stored resources (any type but the gateway patient, alerts and the audit log).
async fn resources_search(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    sector: Option<&str>,
    rtype: &str,
    params: &[(String, String)],
) -> Result<Response, ApiError> {
    let c: Criteria = params::criteria(rtype, params).map_err(|i| ApiError {
        status: StatusCode::BAD_REQUEST,
        issues: vec![i],
    })?;
    unknown(headers, &c.ignored, &views::param_names(rtype).join(", "))?;
    let found = state.gateway.search(caller, sector, rtype, &c).await?;
    let mut shown = state
        .gateway
        .show(sector, &found.page)
        .await
        .map_err(GatewayError::from)?;
    if let Some(elements) = &c.elements {
        for r in &mut shown {
            subset(r, elements);
        }
    }
    let mut include_values = Vec::new();
    let records: Vec<Stored> = found
        .included
        .iter()
        .filter_map(|i| match i {
            Included::Record(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    include_values.extend(
        state
            .gateway
            .show(sector, &records)
            .await
            .map_err(GatewayError::from)?,
    );
    for i in &found.included {
        match i {
            Included::Patient(p) => include_values.push(patient_view(p)),
            Included::Alert(a) => include_values.push(a.clone()),
            Included::Record(_) => {}
        }
    }
    let base = view_base(state, sector);
    let page = Page {
        base: &base,
        rtype,
        executed: &c.executed,
        offset: found.offset,
        count: found.count,
        total: found.total,
        show_total: !c.no_total,
    };
    Ok(fhir_response(
        StatusCode::OK,
        &views::searchset(&page, shown, include_values),
    ))
}

async fn patient_search(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Result<Response, ApiError> {
    let ignored: Vec<String> = params
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| {
            ![
                "identifier",
                "_id",
                "_count",
                "_offset",
                "_total",
                "_format",
            ]
            .contains(&k.as_str())
        })
        .collect();
    unknown(headers, &ignored, "identifier, _id, _lastUpdated")?;
    let executed: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !ignored.contains(k))
        .cloned()
        .collect();
    let (offset, count) = paging(params)?;
    let found = gateway_patients(state, caller, params).await?;
    let total = found.len();
    let resources = found
        .iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(count).unwrap_or(0))
        .map(patient_view)
        .collect();
    let base = state.gateway.fhir_base();
    let page = Page {
        base: &base,
        rtype: "Patient",
        executed: &executed,
        offset,
        count,
        total,
        show_total: true,
    };
    Ok(fhir_response(
        StatusCode::OK,
        &views::searchset(&page, resources, Vec::new()),
    ))
}

/// The gateway patients a Patient search names (by `_id` or `identifier`).
async fn gateway_patients(
    state: &AppState,
    caller: &Caller,
    params: &[(String, String)],
) -> Result<Vec<crate::store::GatewayPatient>, ApiError> {
    if let Some((_, id)) = params.iter().find(|(k, _)| k == "_id") {
        return Ok(state
            .gateway
            .patient(caller, id)
            .await?
            .into_iter()
            .collect());
    }
    let Some((_, ident)) = params.iter().find(|(k, _)| k == "identifier") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "required",
            "Patient search needs identifier=<system>|<value>, _id or _lastUpdated",
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
    Ok(state
        .gateway
        .patients_by_identifier(caller, system, value)
        .await?)
}

const ALERT_PARAMS: [&str; 7] = [
    "patient", "status", "code", "_count", "_offset", "_total", "_format",
];

async fn alert_search(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Result<Response, ApiError> {
    let ignored: Vec<String> = params
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| !ALERT_PARAMS.contains(&k.as_str()))
        .collect();
    unknown(headers, &ignored, "patient, status, code")?;
    let executed: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| ALERT_PARAMS.contains(&k.as_str()) && !k.starts_with('_'))
        .cloned()
        .collect();
    let (offset, count) = paging(params)?;
    let (total, found) = state
        .gateway
        .alert_search(caller, &executed, offset, count)
        .await?;
    let base = state.gateway.fhir_base();
    let page = Page {
        base: &base,
        rtype: "DetectedIssue",
        executed: &executed,
        offset,
        count,
        total,
        show_total: true,
    };
    Ok(fhir_response(
        StatusCode::OK,
        &views::searchset(&page, found, Vec::new()),
    ))
}

const AUDIT_PARAMS: [&str; 12] = [
    "patient",
    "date",
    "outcome",
    "agent",
    "agent-name",
    "sector",
    "action",
    "entity-type",
    "_count",
    "_offset",
    "_total",
    "_format",
];

async fn audit_search(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Result<Response, ApiError> {
    let ignored: Vec<String> = params
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| !AUDIT_PARAMS.contains(&k.as_str()))
        .collect();
    unknown(
        headers,
        &ignored,
        "patient, date, outcome, agent, sector, action, entity-type",
    )?;
    let executed: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| AUDIT_PARAMS.contains(&k.as_str()) && !k.starts_with('_'))
        .cloned()
        .collect();
    let (offset, count) = paging(params)?;
    // `_total=none` skips the count (a COUNT over the matching rows).
    let want_total = !params.iter().any(|(k, v)| k == "_total" && v == "none");
    let q = audit_query(state, &executed, offset, count)?;
    let (rows, total) = state.gateway.audit_search(caller, &q, want_total).await?;
    let events = rows.iter().map(crate::audit::audit_event).collect();
    let base = state.gateway.fhir_base();
    let page = Page {
        base: &base,
        rtype: "AuditEvent",
        executed: &executed,
        offset,
        count,
        total: total.map_or(0, |t| usize::try_from(t).unwrap_or(usize::MAX)),
        show_total: total.is_some(),
    };
    let mut bundle = views::searchset(&page, events, Vec::new());
    // Without a total the next link is known from a full page.
    if total.is_none()
        && rows.len() as i64 == count
        && count > 0
        && let Some(links) = bundle["link"].as_array_mut()
    {
        links.push(serde_json::json!({ "relation": "next", "url": views::page_url(&page, offset + count) }));
    }
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
    let value = |name: &str, msg: String| {
        ApiError::new(StatusCode::BAD_REQUEST, "value", msg).at(name.to_owned())
    };
    for (k, v) in params {
        match k.as_str() {
            "patient" => q.patient_id = Some(v.strip_prefix("Patient/").unwrap_or(v).to_owned()),
            "outcome" => {
                q.outcome = Some(Outcome::parse(v).ok_or_else(|| {
                    value("outcome", format!("outcome is one of {}", Outcome::codes()))
                })?);
            }
            "date" => {
                let (from, to) = date_bounds(v).ok_or_else(|| {
                    value("date", "date takes an optional prefix (eq, ge, gt, le, lt) and a FHIR date or dateTime".into())
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
                    value("action", format!("action is one of {}", Action::codes()))
                })?);
            }
            "entity-type" => {
                if !is_type(state, v) {
                    return Err(value(
                        "entity-type",
                        "entity-type takes an R4 resource type name, e.g. Condition".into(),
                    ));
                }
                q.entity_type = Some(v.clone());
            }
            _ => {}
        }
    }
    Ok(q)
}

/// `_elements`: only the listed top-level elements (and `resourceType`, `id`, `meta`), the
/// resource tagged SUBSETTED.
fn subset(resource: &mut Value, elements: &[String]) {
    if let Some(obj) = resource.as_object_mut() {
        obj.retain(|k, _| {
            matches!(k.as_str(), "resourceType" | "id" | "meta") || elements.iter().any(|e| e == k)
        });
        let meta = obj.entry("meta").or_insert_with(|| serde_json::json!({}));
        let tag = serde_json::json!({ "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED" });
        match meta.get_mut("tag").and_then(Value::as_array_mut) {
            Some(tags) => tags.push(tag),
            None => meta["tag"] = serde_json::json!([tag]),
        }
    }
}
