//! Operations: Prometheus metrics (`/metrics`, from [`crate::metrics`]), the per-client rate limit, and the layer that
//! gives every bare error response (a timeout, a method the router refuses) an
//! OperationOutcome.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use super::AppState;
use super::error::ApiError;

pub use crate::metrics::{Metrics, RequestLabels};

pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

/// Counts and times every request (method and status only: no paths, which carry ids).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// An error response without a body (from a layer rather than a handler) gets an
/// OperationOutcome that says what happened.
pub async fn outcome_for_bare_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error())
        || resp.headers().contains_key(header::CONTENT_TYPE)
    {
        return resp;
    }
    let (code, text) = match status {
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => (
            "timeout",
            "the request took longer than the configured limit (server.request_timeout_secs)",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("too-costly", "the request body is too large"),
        StatusCode::METHOD_NOT_ALLOWED => ("not-supported", "this method is not supported here"),
        _ => ("exception", "the request could not be processed"),
    };
    let mut out = ApiError::new(status, code, text).into_response();
    for (k, v) in resp.headers() {
        if k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// Removes an `x-request-id` that is longer than 64 characters or holds anything but
/// `[A-Za-z0-9._-]`, so that the gateway's own id replaces it.
pub async fn plain_request_id(mut req: Request, next: Next) -> Response {
    let plain = |v: &HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= 64
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    };
    let headers = req.headers_mut();
    let values: Vec<&HeaderValue> = headers.get_all("x-request-id").iter().collect();
    if values.len() > 1 || values.first().is_some_and(|v| !plain(v)) {
        headers.remove("x-request-id");
    }
    next.run(req).await
}

/// The client's address, when the server was started with it (`App::serve`).
pub fn client_address(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// A token bucket per client id (or per client address).
pub struct RateLimit {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl RateLimit {
    /// `per_second == 0` turns the limit off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        RateLimit { limiter }
    }

    /// `Err(wait)` when the client has used up its allowance.
    pub fn check(&self, client_id: &str) -> Result<(), Duration> {
        let Some(l) = &self.limiter else {
            return Ok(());
        };
        if l.len() > 100_000 {
            // Many keys (addresses): forget those whose buckets are full again.
            l.retain_recent();
        }
        l.check_key(&client_id.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The 429 answer with `Retry-After` (whole seconds, at least 1).
pub fn too_many_requests(wait: Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "throttled",
        format!("too many requests from this client; retry after {secs} s"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}
