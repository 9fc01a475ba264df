//! The care team's console under `/ui/`: server-rendered pages (maud) over the same gateway
//! core as the FHIR API — `alert_search`, `alert`, `acknowledge`, `alert_stream`/`next_alert`,
//! `total_plan`, `read` — so every page is decided by `authorize` and the treatment
//! relationship, and audited, exactly as the API's requests are. No page needs JavaScript;
//! `console.js` only refreshes the inbox when the alert stream reports a change.
//!
//! Sign-in: OpenID Connect with PKCE against `[ui.oidc]`'s issuer ([`oidc`]), or the demo's
//! one-time links (`Sessions::mint_link`). A session is a server-side
//! record behind an `HttpOnly`, `SameSite=Strict` cookie ([`session`]); every form carries
//! the session's CSRF token. URLs carry gateway ids only, never a national identifier.

mod audit_handlers;
mod audit_pages;
mod handlers;
mod i18n;
mod it_handlers;
mod it_pages;
mod oidc;
mod pages;
pub mod session;
mod view;

pub use i18n::{Lang, Msg};
pub use session::Sessions;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::Markup;

use super::AppState;
use crate::access::Caller;
use session::{LANG_COOKIE, SESSION_COOKIE, cookie_value};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(handlers::home))
        .route("/ui/", get(handlers::home))
        .route("/ui/sign-in", get(handlers::sign_in_page))
        .route("/ui/sign-in/{token}", get(handlers::sign_in_link))
        .route("/ui/sign-out", post(handlers::sign_out))
        .route("/ui/oidc/start", get(oidc::start))
        .route("/ui/oidc/callback", get(oidc::callback))
        .route("/ui/language/{lang}", get(handlers::language))
        .route("/ui/inbox", get(handlers::inbox))
        .route("/ui/events", get(handlers::events))
        .route("/ui/alerts/{id}", get(handlers::alert_page))
        .route("/ui/alerts/{id}/acknowledge", post(handlers::acknowledge))
        .route("/ui/alerts/{id}/snooze", post(handlers::snooze))
        .route("/ui/patients/{id}", get(handlers::patient_page))
        .route("/ui/assets/{file}", get(handlers::asset))
        .merge(audit_handlers::routes())
        .merge(it_handlers::routes())
        .layer(axum::middleware::map_response(security_headers))
}

/// Pages are never cached, never framed, and run only the console's own script and styles.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: &'static str, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    set(h, "cache-control", "no-store");
    resp
}

/// The language of a request: the switch's cookie, else `Accept-Language`, else Danish.
pub struct Language(pub Lang);

impl FromRequestParts<AppState> for Language {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Language(lang_of(parts)))
    }
}

fn header_str(parts: &Parts, name: header::HeaderName) -> Option<&str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

fn lang_of(parts: &Parts) -> Lang {
    header_str(parts, header::COOKIE)
        .and_then(|c| cookie_value(c, LANG_COOKIE))
        .and_then(Lang::parse)
        .or_else(|| header_str(parts, header::ACCEPT_LANGUAGE).and_then(Lang::from_accept_language))
        .unwrap_or(Lang::Da)
}

/// A signed-in person: the caller every gateway call of the request is made as. Without a live
/// session the request is sent to the sign-in page (303).
pub struct SignedIn {
    pub caller: Caller,
    pub csrf: String,
    /// Who an acknowledgement records: the practitioner, else the client.
    pub who: String,
    /// Who the pages say is signed in: the client (the person's account).
    pub name: String,
    pub lang: Lang,
    pub cookie: String,
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let cookie = header_str(parts, header::COOKIE)
            .and_then(|c| cookie_value(c, SESSION_COOKIE))
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        let Some(cookie) = cookie else {
            return Err(see_other("/ui/sign-in"));
        };
        let session = match state.sessions.get(&cookie).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(see_other("/ui/sign-in?ended=1")),
            Err(e) => return Err(handlers::session_failure(lang_of(parts), &e)),
        };
        if let Err(wait) = state.rate_limit.check(&session.client.id) {
            state.metrics.rate_limited.inc();
            return Err(super::ops::too_many_requests(wait));
        }
        let who = session
            .client
            .person
            .as_ref()
            .and_then(crate::access::Person::label)
            .unwrap_or_else(|| session.client.id.clone());
        let request_id =
            header_str(parts, header::HeaderName::from_static("x-request-id")).map(str::to_owned);
        Ok(SignedIn {
            who,
            name: session.client.id.clone(),
            lang: lang_of(parts),
            csrf: session.csrf,
            caller: Caller {
                client: session.client,
                request_id,
            },
            cookie,
        })
    }
}

/// Where a signed-in person starts: the inbox (care-team persons), the audit search
/// (auditors) or the board of sector endpoints (IT staff), as `authorize` decides.
pub fn landing(caller: &Caller) -> &'static str {
    use crate::access::{Request, authorize};
    if authorize(caller, Request::Alerts).is_ok() {
        "/ui/inbox"
    } else if authorize(caller, Request::AuditLog).is_ok() {
        "/ui/audit/search"
    } else if authorize(caller, Request::Operations).is_ok() {
        "/ui/it/board"
    } else {
        "/ui/inbox"
    }
}

/// A 303 to a path of the console.
pub fn see_other(path: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(path) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// An HTML response.
pub fn html(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}
