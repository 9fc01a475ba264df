//! The HTTP API: the FHIR REST surface under `/fhir` and the operations endpoints.
//! Only this module knows HTTP; everything it does goes through [`crate::gateway::Gateway`].

mod access_routes;
mod admin_routes;
mod alert_routes;
mod audit_routes;
pub mod auth;
pub mod error;
mod fhir_reads;
mod fhir_routes;
mod negotiate;
pub mod ops;
pub mod response;
mod transparency_routes;
pub mod ui;
mod views;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::Clients;
use crate::gateway::Gateway;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub gateway: Arc<Gateway>,
    pub clients: Arc<Clients>,
    pub metrics: Arc<ops::Metrics>,
    pub rate_limit: Arc<ops::RateLimit>,
    /// The per-address rate limit, checked before authentication.
    pub address_limit: Arc<ops::RateLimit>,
    /// The console's sessions and sign-in links.
    pub sessions: Arc<ui::Sessions>,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the application router with the console's sessions of its own.
pub fn router(gateway: Arc<Gateway>, clients: Clients) -> Router {
    let sessions = Arc::new(ui::Sessions::new(
        &gateway.settings().ui,
        gateway.store().clone(),
    ));
    router_with(gateway, clients, sessions)
}

/// Builds the application router (tests and `serve` both use this); `sessions` is shared with
/// whoever mints sign-in links (the demo).
pub fn router_with(gateway: Arc<Gateway>, clients: Clients, sessions: Arc<ui::Sessions>) -> Router {
    let console = gateway.settings().ui.enabled;
    let server = gateway.settings().server.clone();
    let state = AppState {
        metrics: gateway.metrics().clone(),
        gateway,
        clients: Arc::new(clients),
        rate_limit: Arc::new(ops::RateLimit::new(
            server.rate_limit_per_second,
            server.rate_limit_burst,
        )),
        address_limit: Arc::new(ops::RateLimit::new(
            server.address_rate_limit_per_second,
            server.address_rate_limit_burst,
        )),
        sessions,
    };
    let console = if console { ui::routes() } else { Router::new() };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(ops::metrics))
        .route("/.well-known/smart-configuration", get(smart_configuration))
        .route("/fhir/.well-known/smart-configuration", get(smart_configuration))
        .merge(fhir_routes::routes())
        .merge(audit_routes::routes())
        .merge(access_routes::routes())
        .merge(transparency_routes::routes())
        .merge(admin_routes::routes())
        .merge(alert_routes::routes())
        .merge(console)
        .fallback(|| async { error::ApiError::not_found("no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), ops::track))
        .with_state(state)
        // Bodies over the limit are refused while being read (413 with an OperationOutcome).
        .layer(DefaultBodyLimit::max(server.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(server.request_timeout_secs),
        ))
        .layer(axum::middleware::from_fn(negotiate::acceptable))
        .layer(axum::middleware::from_fn(negotiate::forbidden_characters))
        .layer(axum::middleware::from_fn(ops::outcome_for_bare_errors))
        .layer(cors(&server.cors_origins))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            // Spans carry the method, the path and the request id: never bodies or query strings,
            // which may hold patient identifiers.
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        // A client's request id is kept only when it is short and plain; else the gateway's own
        // replaces it (it is logged and audited).
        .layer(axum::middleware::from_fn(ops::plain_request_id))
}

/// CORS for the configured origins only (none: no CORS headers, browsers refuse cross-origin
/// calls). Preflights are answered here, before authentication.
fn cors(origins: &[String]) -> CorsLayer {
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_methods([Method::GET, Method::POST, Method::PUT])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            HeaderName::from_static("if-none-exist"),
            HeaderName::from_static("prefer"),
        ])
        .expose_headers([
            header::LOCATION,
            header::CONTENT_LOCATION,
            header::ETAG,
            header::LAST_MODIFIED,
        ])
}

/// `/.well-known/smart-configuration` (and under `/fhir`): SMART discovery, without a token;
/// 404 when no authorisation server is configured.
async fn smart_configuration(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::response::Response {
    match views::smart_configuration(&state.gateway) {
        Some(v) => {
            let mut resp = axum::response::IntoResponse::into_response(axum::Json(v));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        None => axum::response::IntoResponse::into_response(error::ApiError::not_found(
            "no authorisation server is configured (auth.token_endpoint)",
        )),
    }
}

async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> (StatusCode, &'static str) {
    if state.gateway.ready().await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
    }
}
