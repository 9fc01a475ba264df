//! The auditor's pages under `/ui/audit/`: each handler calls the core's auditor operations
//! (`audit_search`, `audit_verify`, `audit_checkpoint`, `access_report`,
//! `break_glass_grants`, `review_break_glass`) as the signed-in person, so `authorize` decides
//! and every view of the log is itself audited there. A CPR number arrives in a POST body
//! only, and is resolved to the gateway patient by the core (never written to the log).

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::audit_pages::{self, AccessResult, AuditForm, NAV};
use super::handlers::{csrf_ok, field, message_page};
use super::i18n::Msg;
use super::pages::{self, Frame};
use super::{SignedIn, html};
use crate::api::AppState;
use crate::audit::{Action, Outcome};
use crate::config::CPR_SYSTEM;
use crate::fhir::time::period;
use crate::gateway::GatewayError;
use crate::gateway::break_glass::ReviewStatus;
use crate::store::AuditQuery;

/// Rows on one page of the audit search.
pub const PAGE_ROWS: i64 = 50;
/// The most rows one export of a search holds (`X-Total-Count` tells a longer result).
pub const EXPORT_MAX: i64 = 10_000;
/// The last page a search form may ask for.
const MAX_PAGE: i64 = 1_000_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui/audit", get(home))
        .route("/ui/audit/search", get(search_page).post(search))
        .route("/ui/audit/export", axum::routing::post(export))
        .route("/ui/audit/verify", get(verify))
        .route("/ui/audit/access", get(access_page).post(access))
        .route("/ui/audit/break-glass", get(break_glass))
        .route(
            "/ui/audit/break-glass/{id}/review",
            axum::routing::post(review),
        )
}

/// A page of the auditor's console.
pub(super) fn audit_page(s: &SignedIn, title: Msg, path: &str, body: maud::Markup) -> Response {
    let f = Frame {
        lang: s.lang,
        title: s.lang.t(title),
        who: Some((&s.name, &s.csrf)),
        path,
    };
    html(StatusCode::OK, pages::page_with(&f, &NAV, body))
}

/// A refusal or failure as a page (a 500 is logged by its kind only).
pub(super) fn refused(s: &SignedIn, title: Msg, e: &GatewayError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let text = match e.status() {
        403 => Msg::Forbidden,
        404 => Msg::NotFound,
        400 | 409 | 422 => Msg::BadForm,
        _ => {
            tracing::warn!(
                status = e.status(),
                "console: the gateway failed an operations request"
            );
            Msg::ServerError
        }
    };
    message_page(s.lang, status, title, text, Some(s))
}

/// The CSRF refusal page.
pub(super) fn csrf_refused(s: &SignedIn, title: Msg) -> Response {
    message_page(
        s.lang,
        StatusCode::FORBIDDEN,
        title,
        Msg::CsrfRefused,
        Some(s),
    )
}

async fn home(_: SignedIn) -> Response {
    super::see_other("/ui/audit/search")
}

fn sector_ids(state: &AppState) -> Vec<&str> {
    state
        .gateway
        .settings()
        .sectors
        .iter()
        .map(|s| s.id.as_str())
        .collect()
}

/// A CPR number as typed (`010203-1234`, spaces) as the identifier `system|value`.
pub(super) fn cpr_identifier(cpr: &str) -> Option<String> {
    let digits: String = cpr.chars().filter(|c| !matches!(c, '-' | ' ')).collect();
    (!digits.is_empty()).then(|| format!("{CPR_SYSTEM}|{digits}"))
}

fn bad(at: &str) -> GatewayError {
    GatewayError::invalid(crate::fhir::outcome::Issue::error("value", "not usable").at(at))
}

fn text(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_owned())
}

/// The core's audit query of the posted form.
fn audit_query(f: &AuditForm, offset: i64, count: i64) -> Result<AuditQuery, GatewayError> {
    let bound = |v: &str, at: &str, end: bool| -> Result<Option<i64>, GatewayError> {
        match text(v) {
            None => Ok(None),
            Some(v) => period(&v)
                .map(|(s, e)| Some(if end { e } else { s }))
                .ok_or_else(|| bad(at)),
        }
    };
    Ok(AuditQuery {
        patient_identifier: cpr_identifier(f.cpr.trim()),
        from_us: bound(&f.from, "from", false)?,
        to_us: bound(&f.to, "to", true)?,
        agent: text(&f.client),
        person: text(&f.person),
        sector: text(&f.sector),
        action: match text(&f.action) {
            Some(a) => Some(Action::parse(&a).ok_or_else(|| bad("action"))?),
            None => None,
        },
        outcome: match text(&f.outcome) {
            Some(o) => Some(Outcome::parse(&o).ok_or_else(|| bad("outcome"))?),
            None => None,
        },
        basis: text(&f.basis),
        offset,
        count,
        ..AuditQuery::default()
    })
}

async fn search_page(State(state): State<AppState>, s: SignedIn) -> Response {
    // Nothing is read before a search is made; the page itself is refused to non-auditors.
    if let Err(e) = crate::access::authorize(&s.caller, crate::access::Request::AuditLog) {
        return refused(&s, Msg::AuditSearchTitle, &GatewayError::from(e));
    }
    let body = audit_pages::search(
        s.lang,
        &AuditForm::default(),
        &sector_ids(&state),
        None,
        PAGE_ROWS,
        &s.csrf,
    );
    audit_page(&s, Msg::AuditSearchTitle, "/ui/audit/search", body)
}

async fn search(
    State(state): State<AppState>,
    s: SignedIn,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if !csrf_ok(&s, &form) {
        return csrf_refused(&s, Msg::AuditSearchTitle);
    }
    let f = posted(&form);
    let q = match audit_query(&f, f.page * PAGE_ROWS, PAGE_ROWS) {
        Ok(q) => q,
        Err(e) => return refused(&s, Msg::AuditSearchTitle, &e),
    };
    let (rows, total) = match state.gateway.audit_search(&s.caller, &q, true).await {
        Ok(found) => found,
        Err(e) => return refused(&s, Msg::AuditSearchTitle, &e),
    };
    let found = Some((rows.as_slice(), total.unwrap_or(0)));
    let body = audit_pages::search(s.lang, &f, &sector_ids(&state), found, PAGE_ROWS, &s.csrf);
    audit_page(&s, Msg::AuditSearchTitle, "/ui/audit/search", body)
}

/// The form's fields as posted (unknown ones ignored).
fn posted(form: &[(String, String)]) -> AuditForm {
    let get = |k: &str| field(form, k).to_owned();
    AuditForm {
        cpr: get("cpr"),
        from: get("from"),
        to: get("to"),
        client: get("client"),
        person: get("person"),
        sector: get("sector"),
        action: get("action"),
        outcome: get("outcome"),
        basis: get("basis"),
        // Any page number a form may carry, within what the arithmetic of paging can hold.
        page: field(form, "page")
            .parse::<i64>()
            .unwrap_or(0)
            .clamp(0, MAX_PAGE),
    }
}

/// The search's result (up to [`EXPORT_MAX`] rows) as NDJSON AuditEvents, a download.
async fn export(
    State(state): State<AppState>,
    s: SignedIn,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if !csrf_ok(&s, &form) {
        return csrf_refused(&s, Msg::AuditSearchTitle);
    }
    let q = match audit_query(&posted(&form), 0, EXPORT_MAX) {
        Ok(q) => q,
        Err(e) => return refused(&s, Msg::AuditSearchTitle, &e),
    };
    let (rows, total) = match state.gateway.audit_search(&s.caller, &q, true).await {
        Ok(found) => found,
        Err(e) => return refused(&s, Msg::AuditSearchTitle, &e),
    };
    let mut body = Vec::with_capacity(rows.len() * 1024);
    for r in &rows {
        // A serde_json::Value always serialises into a Vec.
        let _ = serde_json::to_writer(&mut body, &crate::audit::audit_event(r));
        body.push(b'\n');
    }
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+ndjson"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"audit-search.ndjson\""),
    );
    // The whole result's size: more than the file holds when it was cut at EXPORT_MAX.
    if let Ok(v) = HeaderValue::from_str(&total.unwrap_or(0).to_string()) {
        h.insert("x-total-count", v);
    }
    resp
}

async fn verify(State(state): State<AppState>, s: SignedIn) -> Response {
    let report = match state.gateway.audit_verify(&s.caller).await {
        Ok(r) => r,
        Err(e) => return refused(&s, Msg::VerifyTitle, &e),
    };
    let checkpoint = match state.gateway.audit_checkpoint(&s.caller).await {
        Ok(note) => Some(note),
        Err(GatewayError::NotFound(_)) => None,
        Err(e) => return refused(&s, Msg::VerifyTitle, &e),
    };
    let body = audit_pages::verify(s.lang, &report, checkpoint.as_deref());
    audit_page(&s, Msg::VerifyTitle, "/ui/audit/verify", body)
}

async fn access_page(s: SignedIn) -> Response {
    if let Err(e) = crate::access::authorize(&s.caller, crate::access::Request::AccessReview) {
        return refused(&s, Msg::AccessTitle, &GatewayError::from(e));
    }
    let body = audit_pages::access(s.lang, "", "", AccessResult::None, &s.csrf);
    audit_page(&s, Msg::AccessTitle, "/ui/audit/access", body)
}

/// The access report of a patient (by CPR) or of a person.
async fn access(
    State(state): State<AppState>,
    s: SignedIn,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if !csrf_ok(&s, &form) {
        return csrf_refused(&s, Msg::AccessTitle);
    }
    let (cpr, person) = (field(&form, "cpr").trim(), field(&form, "person").trim());
    let g = &state.gateway;
    let body = if let Some(ident) = cpr_identifier(cpr) {
        match g.access_report(&s.caller, &ident, 0, 500).await {
            Ok(lines) => {
                audit_pages::access(s.lang, cpr, "", AccessResult::Patient(&lines), &s.csrf)
            }
            Err(e) => return refused(&s, Msg::AccessTitle, &e),
        }
    } else if !person.is_empty() {
        let q = AuditQuery {
            person: Some(person.to_owned()),
            count: 500,
            ..AuditQuery::default()
        };
        match g.audit_search(&s.caller, &q, false).await {
            Ok((rows, _)) => {
                audit_pages::access(s.lang, "", person, AccessResult::Person(&rows), &s.csrf)
            }
            Err(e) => return refused(&s, Msg::AccessTitle, &e),
        }
    } else {
        audit_pages::access(s.lang, "", "", AccessResult::None, &s.csrf)
    };
    audit_page(&s, Msg::AccessTitle, "/ui/audit/access", body)
}

#[derive(serde::Deserialize, Default)]
struct StatusQuery {
    #[serde(default)]
    status: String,
}

async fn break_glass(
    State(state): State<AppState>,
    s: SignedIn,
    Query(q): Query<StatusQuery>,
) -> Response {
    let status = ReviewStatus::parse(&q.status).unwrap_or(ReviewStatus::Unreviewed);
    let code = match status {
        ReviewStatus::Unreviewed => "unreviewed",
        ReviewStatus::Reviewed => "reviewed",
        ReviewStatus::All => "all",
    };
    let grants = match state
        .gateway
        .break_glass_grants(&s.caller, status, 0, 500)
        .await
    {
        Ok(g) => g,
        Err(e) => return refused(&s, Msg::BreakGlassTitle, &e),
    };
    let body = audit_pages::break_glass(s.lang, code, &grants, &s.csrf);
    audit_page(&s, Msg::BreakGlassTitle, "/ui/audit/break-glass", body)
}

async fn review(
    State(state): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if !csrf_ok(&s, &form) {
        return csrf_refused(&s, Msg::BreakGlassTitle);
    }
    match state
        .gateway
        .review_break_glass(&s.caller, &id, field(&form, "note"))
        .await
    {
        Ok(Some(_)) => super::see_other("/ui/audit/break-glass?status=reviewed"),
        Ok(None) => refused(
            &s,
            Msg::BreakGlassTitle,
            &GatewayError::NotFound(format!("break-glass/{id}")),
        ),
        Err(e) => refused(&s, Msg::BreakGlassTitle, &e),
    }
}
