//! The console's request handlers: each reads its input, calls the gateway core as the
//! signed-in person, and renders a page ([`super::pages`]).

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde_json::json;
use std::convert::Infallible;

use super::i18n::{Lang, Msg};
use super::pages::{self, Filter, Frame, Listing};
use super::session::{LANG_COOKIE, same_token};
use super::view::{self, AlertLine, Knowledge, Plan, Record};
use super::{Language, SignedIn, html, see_other};
use crate::api::AppState;
use crate::gateway::GatewayError;
use crate::gateway::inbox::InboxFilter;

/// Rows on one page of the inbox.
pub const PAGE_ROWS: usize = 50;

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

fn frame<'a>(s: &'a SignedIn, title: &'a str, path: &'a str) -> Frame<'a> {
    Frame {
        lang: s.lang,
        title,
        who: Some((&s.name, &s.csrf)),
        path,
    }
}

/// A page with one message and its status.
pub(super) fn message_page(
    lang: Lang,
    status: StatusCode,
    title: Msg,
    text: Msg,
    s: Option<&SignedIn>,
) -> Response {
    let f = Frame {
        lang,
        title: lang.t(title),
        who: s.map(|s| (s.name.as_str(), s.csrf.as_str())),
        path: "/ui/inbox",
    };
    html(
        status,
        pages::page(&f, pages::message(lang, title, lang.t(text), s.is_some())),
    )
}

/// The store could not keep or read sign-in state: 503 when it was busy, else 500 (logged by
/// kind only).
pub(super) fn session_failure(lang: Lang, e: &crate::store::StoreError) -> Response {
    let status = match e {
        crate::store::StoreError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::warn!(
        status = status.as_u16(),
        "console: sign-in state unavailable"
    );
    message_page(lang, status, Msg::SignInTitle, Msg::ServerError, None)
}

/// A gateway refusal or failure as a page (a 500 is logged by its kind only).
fn failure(s: &SignedIn, e: &GatewayError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let text = match e.status() {
        403 => Msg::Forbidden,
        404 => Msg::NotFound,
        400 | 422 => Msg::BadForm,
        _ => {
            tracing::warn!(status = e.status(), "console: the gateway failed a request");
            Msg::ServerError
        }
    };
    message_page(s.lang, status, Msg::AlertTitle, text, Some(s))
}

fn sectors(state: &AppState) -> Vec<(String, String)> {
    state
        .gateway
        .settings()
        .sectors
        .iter()
        .map(|s| (s.id.clone(), s.name.clone()))
        .collect()
}

pub async fn home(s: SignedIn) -> Response {
    see_other(super::landing(&s.caller))
}

#[derive(serde::Deserialize)]
pub struct SignInQuery {
    #[serde(default)]
    ended: Option<String>,
}

pub async fn sign_in_page(
    State(state): State<AppState>,
    Language(lang): Language,
    Query(q): Query<SignInQuery>,
) -> Response {
    let notice = q.ended.map(|_| Msg::SessionEnded);
    let oidc = state.gateway.settings().ui.oidc.is_some();
    let f = Frame {
        lang,
        title: lang.t(Msg::SignInTitle),
        who: None,
        path: "/ui/sign-in",
    };
    html(
        StatusCode::OK,
        pages::page(&f, pages::sign_in(lang, notice, oidc)),
    )
}

/// A one-time sign-in link: a session and the inbox, or 403 when used or expired.
pub async fn sign_in_link(
    State(state): State<AppState>,
    Language(lang): Language,
    Path(token): Path<String>,
) -> Response {
    match state.sessions.redeem(&token).await {
        Ok(Some(cookie)) => {
            let to = match state.sessions.get(&cookie).await {
                Ok(Some(session)) => super::landing(&crate::access::Caller {
                    client: session.client,
                    request_id: None,
                }),
                _ => "/ui/inbox",
            };
            with_cookie(see_other(to), &state.sessions.cookie(&cookie))
        }
        Err(e) => session_failure(lang, &e),
        Ok(None) => message_page(
            lang,
            StatusCode::FORBIDDEN,
            Msg::SignInTitle,
            Msg::LinkRefused,
            None,
        ),
    }
}

pub(super) fn with_cookie(mut r: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// The form's CSRF token matches the session's.
pub(super) fn csrf_ok(s: &SignedIn, form: &[(String, String)]) -> bool {
    form.iter()
        .any(|(k, v)| k == "csrf" && same_token(v, &s.csrf))
}

pub(super) fn field<'a>(form: &'a [(String, String)], name: &str) -> &'a str {
    form.iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

pub async fn sign_out(
    State(state): State<AppState>,
    s: SignedIn,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if !csrf_ok(&s, &form) {
        return message_page(
            s.lang,
            StatusCode::FORBIDDEN,
            Msg::SignOut,
            Msg::CsrfRefused,
            Some(&s),
        );
    }
    if let Err(e) = state.sessions.end(&s.cookie).await {
        return session_failure(s.lang, &e);
    }
    with_cookie(see_other("/ui/sign-in"), &state.sessions.clear_cookie())
}

#[derive(serde::Deserialize)]
pub struct Back {
    #[serde(default)]
    back: String,
}

/// Switches the language and returns to the console page it was chosen on.
pub async fn language(Path(code): Path<String>, Query(b): Query<Back>) -> Response {
    let Some(lang) = Lang::parse(&code) else {
        return message_page(
            Lang::Da,
            StatusCode::NOT_FOUND,
            Msg::NotFound,
            Msg::NotFound,
            None,
        );
    };
    // Only a path of the console: never another site, never a query string.
    let back = if b.back.starts_with("/ui/")
        && !b.back.contains(['?', '\\', ':'])
        && !b.back.starts_with("//")
    {
        b.back
    } else {
        "/ui/inbox".to_owned()
    };
    let cookie = format!(
        "{LANG_COOKIE}={}; Path=/ui; HttpOnly; SameSite=Lax; Max-Age=31536000",
        lang.code()
    );
    with_cookie(see_other(&back), &cookie)
}

#[derive(serde::Deserialize, Default)]
pub struct InboxQuery {
    #[serde(flatten)]
    filter: Filter,
    /// The last alert of the previous page (an alert id).
    #[serde(default)]
    after: String,
}

/// The signed-in person's open alerts, filtered, by severity then age: one page of them from
/// the core's inbox (which decides, and audits, only what the page shows).
pub async fn inbox(
    State(state): State<AppState>,
    s: SignedIn,
    Query(q): Query<InboxQuery>,
) -> Response {
    let f = &q.filter;
    let filter = InboxFilter {
        code: f.code.clone(),
        status: f.status.clone(),
        sector: f.sector.clone(),
        severity: f.severity.clone(),
        owner: f.owner.clone(),
    };
    let after = (!q.after.is_empty()).then_some(q.after.as_str());
    let page = match state
        .gateway
        .inbox(&s.caller, &filter, after, PAGE_ROWS)
        .await
    {
        Ok(p) => p,
        Err(e) => return failure(&s, &e),
    };
    let lines: Vec<AlertLine> = page.alerts.iter().map(AlertLine::from_issue).collect();
    let listing = Listing {
        alerts: &lines,
        cards: &page.cards,
        next: page.next.as_deref(),
    };
    let title = s.lang.t(Msg::InboxTitle);
    let reasons = &state.gateway.settings().ui.acknowledge_reasons;
    let body = pages::inbox(s.lang, f, &sectors(&state), &listing, &s.csrf, reasons);
    html(
        StatusCode::OK,
        pages::page(&frame(&s, title, "/ui/inbox"), body),
    )
}

/// The coordinator test of detection and the gateway's ConceptMaps, for the pages.
fn knowledge(state: &AppState) -> Knowledge<'_> {
    Knowledge {
        coordinator_roles: &state.gateway.settings().alerts.coordinator_roles,
        mapping: state.gateway.mapping(),
    }
}

/// One alert: its records side by side, the rule, the history, what to do.
pub async fn alert_page(
    State(state): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
) -> Response {
    let (di, history) = match state.gateway.alert_with_history(&s.caller, &id).await {
        Ok(Some(found)) => found,
        Ok(None) => return failure(&s, &GatewayError::NotFound(format!("DetectedIssue/{id}"))),
        Err(e) => return failure(&s, &e),
    };
    let a = AlertLine::from_issue(&di);
    let mut records = Vec::new();
    for (reference, _, _) in &a.implicated {
        let Some((rtype, gid)) = reference.split_once('/') else {
            continue;
        };
        let stored = match state.gateway.read(&s.caller, None, rtype, gid).await {
            Ok(stored) => stored,
            // A record closed or hidden since (a private marking) is left out.
            Err(GatewayError::NotFound(_) | GatewayError::Forbidden(_)) => continue,
            Err(e) => return failure(&s, &e),
        };
        match state
            .gateway
            .show(None, std::slice::from_ref(&stored))
            .await
        {
            Ok(views) => records.extend(
                views
                    .iter()
                    .map(|v| Record::from_view(v, &knowledge(&state))),
            ),
            Err(e) => return failure(&s, &GatewayError::from(e)),
        }
    }
    let lines = view::history(&history);
    let reasons = &state.gateway.settings().ui.acknowledge_reasons;
    let title = pages::code_name(s.lang, &a.code, &a.code_text);
    let path = format!("/ui/alerts/{id}");
    let body = pages::alert(s.lang, &a, &records, &lines, &s.csrf, reasons);
    html(StatusCode::OK, pages::page(&frame(&s, &title, &path), body))
}

/// Acknowledges an alert with a configured reason and an optional comment.
pub async fn acknowledge(
    State(state): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if !csrf_ok(&s, &form) {
        return message_page(
            s.lang,
            StatusCode::FORBIDDEN,
            Msg::Acknowledge,
            Msg::CsrfRefused,
            Some(&s),
        );
    }
    let Some(reason) = state.gateway.settings().ui.reason(field(&form, "reason")) else {
        return message_page(
            s.lang,
            StatusCode::BAD_REQUEST,
            Msg::Acknowledge,
            Msg::UnknownReason,
            Some(&s),
        );
    };
    let comment = field(&form, "comment").trim();
    let note = if comment.is_empty() {
        format!("{} ({})", reason.en, reason.code)
    } else {
        format!("{} ({}): {comment}", reason.en, reason.code)
    };
    let parameters = json!({ "resourceType": "Parameters", "parameter": [
        { "name": "author", "valueString": s.who },
        { "name": "note", "valueString": note } ] });
    match state.gateway.acknowledge(&s.caller, &id, &parameters).await {
        Ok(Some(_)) => see_other(&format!("/ui/alerts/{id}")),
        Ok(None) => failure(&s, &GatewayError::NotFound(format!("DetectedIssue/{id}"))),
        Err(e) => failure(&s, &e),
    }
}

/// Snoozes an alert until a date (`until`, `YYYY-MM-DD`) with an optional comment, as the
/// signed-in person.
pub async fn snooze(
    State(state): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if !csrf_ok(&s, &form) {
        return message_page(
            s.lang,
            StatusCode::FORBIDDEN,
            Msg::Snooze,
            Msg::CsrfRefused,
            Some(&s),
        );
    }
    let until = field(&form, "until").trim();
    let mut parameters = vec![
        json!({ "name": "until", "valueDate": until }),
        json!({ "name": "author", "valueString": s.who }),
    ];
    let comment = field(&form, "comment").trim();
    if !comment.is_empty() {
        parameters.push(json!({ "name": "note", "valueString": comment }));
    }
    let parameters = json!({ "resourceType": "Parameters", "parameter": parameters });
    match state.gateway.snooze(&s.caller, &id, &parameters).await {
        Ok(Some(_)) => see_other(&format!("/ui/alerts/{id}")),
        Ok(None) => failure(&s, &GatewayError::NotFound(format!("DetectedIssue/{id}"))),
        Err(e) if e.status() == 400 => message_page(
            s.lang,
            StatusCode::BAD_REQUEST,
            Msg::Snooze,
            Msg::SnoozeBadDate,
            Some(&s),
        ),
        Err(e) => failure(&s, &e),
    }
}

/// The patient's total healthcare plan, by sector side by side.
pub async fn patient_page(
    State(state): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
) -> Response {
    let bundle = match state.gateway.total_plan(&s.caller, &id).await {
        Ok(Some(b)) => b,
        Ok(None) => return failure(&s, &GatewayError::NotFound(format!("Patient/{id}"))),
        Err(e) => return failure(&s, &e),
    };
    let plan = Plan::from_bundle(&bundle, &knowledge(&state));
    let card = match state
        .gateway
        .patient_cards(&s.caller, std::slice::from_ref(&id))
        .await
    {
        Ok(mut c) => c.remove(&id).unwrap_or_default(),
        Err(e) => return failure(&s, &e),
    };
    let title = s.lang.t(Msg::PatientTitle);
    let path = format!("/ui/patients/{id}");
    let body = pages::patient(s.lang, &plan, &card, &sectors(&state));
    html(StatusCode::OK, pages::page(&frame(&s, title, &path), body))
}

/// The console's stylesheet and script (compiled in; nothing is fetched).
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => {
            return (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain")],
                "not found",
            )
                .into_response();
        }
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, kind)], body).into_response()
}

/// The alert changes the signed-in person may see, as Server-Sent Events (what changed, never
/// the DetectedIssue itself: the script reloads the inbox through the same gateway search).
pub async fn events(
    State(state): State<AppState>,
    s: SignedIn,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Response> {
    let mut subscription = state
        .gateway
        .alert_stream(&s.caller)
        .await
        .map_err(|e| failure(&s, &e))?;
    let mut closing = state.gateway.watch_shutdown();
    let gateway = state.gateway.clone();
    let stream = crate::api::alert_routes::async_stream(move |tx| async move {
        loop {
            let next = tokio::select! {
                e = gateway.next_alert(&mut subscription) => e,
                _ = closing.wait_for(|c| *c) => return,
                () = tx.closed() => return,
            };
            let ev = match next {
                Ok(e) => Event::default()
                    .event("alert")
                    .data(json!({ "kind": e.kind, "id": e.id, "status": e.status }).to_string()),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Event::default()
                    .event("alert")
                    .data("{\"kind\":\"lagged\"}"),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(Ok(ev)).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
