//! The bearer-token extractor: every route that reaches the gateway core takes an
//! [`Authed`] caller; what the caller may then do is decided by the core
//! ([`crate::access::authorize`]).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::access::Caller;

/// The authenticated caller: a static token or a JWT of the configured issuer
/// ([`crate::auth::Clients::authenticate_bearer`]). Anything else answers 401 with
/// `WWW-Authenticate: Bearer` (plus `error="invalid_token"` when a token was presented) and an
/// OperationOutcome, and is counted for the audit log: one row per client address and minute
/// with the count of each kind of refusal, never the token or its claims. Before any of that,
/// a client address over `server.address_rate_limit_per_second` is answered 429.
pub struct Authed(pub Caller);

impl FromRequestParts<AppState> for Authed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let address = super::ops::client_address(&parts.extensions);
        if let Some(ip) = address
            && let Err(wait) = state.address_limit.check(&ip.to_string())
        {
            state.metrics.rate_limited.inc();
            state
                .gateway
                .refused_authentication(address, "throttled before authentication")
                .await;
            return Err(super::ops::too_many_requests(wait));
        }
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let result = match token {
            Some(t) => state.clients.authenticate_bearer(t).await,
            None => Err(crate::auth::Refusal::Missing),
        };
        match result {
            Ok(client) => {
                if let Err(wait) = state.rate_limit.check(&client.id) {
                    state.metrics.rate_limited.inc();
                    return Err(super::ops::too_many_requests(wait));
                }
                Ok(Authed(Caller { client, request_id }))
            }
            Err(refusal) => {
                state
                    .gateway
                    .refused_authentication(address, refusal.describe())
                    .await;
                if refusal == crate::auth::Refusal::Missing {
                    return Err(ApiError::unauthorized().into_response());
                }
                // RFC 6750: a token was presented and refused.
                let mut resp = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "login",
                    format!(
                        "a valid bearer token is required (Authorization: Bearer <token>): {}",
                        refusal.describe()
                    ),
                )
                .into_response();
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
                Err(resp)
            }
        }
    }
}
