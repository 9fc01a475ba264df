//! Sign-in with OpenID Connect: the authorization code flow with PKCE (S256) against
//! `[ui.oidc]`'s issuer, a public client. `/ui/oidc/start` sends the browser to the issuer with
//! a one-time `state` and the code challenge; `/ui/oidc/callback` takes the `state` back once,
//! exchanges the code (with the verifier) for tokens, and authenticates the access token as the
//! API authenticates a bearer token (`[auth]`: signature by the issuer's key set, `iss`, `aud`,
//! `exp`, scope → role, person claims). The session is that client. A refusal is audited like a
//! refused bearer token.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::Duration;

use super::handlers::{message_page, with_cookie};
use super::i18n::{Lang, Msg};
use super::{Language, html, pages};
use crate::api::AppState;
use crate::config::OidcSettings;
use crate::outbound::oidc::{Endpoints, OidcClient};

/// The issuer's client and endpoints, discovered at the first sign-in (kept by the sessions).
async fn issuer<'a>(
    sessions: &'a super::Sessions,
    o: &OidcSettings,
) -> Result<&'a (OidcClient, Endpoints), String> {
    sessions
        .issuer
        .get_or_try_init(|| async {
            let client = OidcClient::new(Duration::from_secs(10)).map_err(|e| e.to_string())?;
            let endpoints = client.discover(&o.issuer).await?;
            Ok::<_, String>((client, endpoints))
        })
        .await
}

fn failed(lang: Lang, why: &str) -> Response {
    tracing::warn!(reason = why, "console: OpenID Connect sign-in failed");
    message_page(
        lang,
        StatusCode::FORBIDDEN,
        Msg::SignInTitle,
        Msg::SignInFailed,
        None,
    )
}

/// The S256 code challenge of a verifier (RFC 7636).
pub fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Sends the browser to the issuer's authorization endpoint.
pub async fn start(State(state): State<AppState>, Language(lang): Language) -> Response {
    let Some(o) = state.gateway.settings().ui.oidc.clone() else {
        return message_page(
            lang,
            StatusCode::NOT_FOUND,
            Msg::NotFound,
            Msg::NotFound,
            None,
        );
    };
    let (client_state, verifier) = match state.sessions.begin_sign_in().await {
        Ok(v) => v,
        Err(e) => return super::handlers::session_failure(lang, &e),
    };
    let (_, endpoints) = match issuer(&state.sessions, &o).await {
        Ok(i) => i,
        Err(e) => return failed(lang, &e),
    };
    let enc = |v: &str| utf8_percent_encode(v, NON_ALPHANUMERIC).to_string();
    let mut url = format!(
        "{}?response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&code_challenge={}&code_challenge_method=S256",
        endpoints.authorization,
        enc(&o.client_id),
        enc(&o.redirect_url),
        enc(&o.scope),
        enc(&client_state),
        enc(&challenge(&verifier)),
    );
    if let Some(r) = &o.resource {
        url.push_str(&format!("&resource={}", enc(r)));
    }
    super::see_other(&url)
}

#[derive(serde::Deserialize)]
pub struct Callback {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

/// The issuer's answer: a session for the token's client, or 403.
pub async fn callback(
    State(state): State<AppState>,
    Language(lang): Language,
    Query(cb): Query<Callback>,
) -> Response {
    let Some(o) = state.gateway.settings().ui.oidc.clone() else {
        return message_page(
            lang,
            StatusCode::NOT_FOUND,
            Msg::NotFound,
            Msg::NotFound,
            None,
        );
    };
    let found = match cb.state.as_deref() {
        Some(s) => state.sessions.finish_sign_in(s).await,
        None => Ok(None),
    };
    let verifier = match found {
        Ok(Some(v)) => v,
        Ok(None) => return failed(lang, "unknown, used or expired state"),
        Err(e) => return super::handlers::session_failure(lang, &e),
    };
    let Some(code) = cb.code else {
        return failed(lang, "the issuer returned no code");
    };
    let (client, endpoints) = match issuer(&state.sessions, &o).await {
        Ok(i) => i,
        Err(e) => return failed(lang, &e),
    };
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", o.redirect_url.as_str()),
        ("client_id", o.client_id.as_str()),
        ("code_verifier", verifier.as_str()),
    ];
    if let Some(r) = &o.resource {
        form.push(("resource", r.as_str()));
    }
    let tokens = match client.redeem(&endpoints.token, &form).await {
        Ok(t) => t,
        Err(e) => return failed(lang, &e),
    };
    let Some(access) = tokens.get("access_token").and_then(Value::as_str) else {
        return failed(lang, "the token response has no access_token");
    };
    match state.clients.authenticate_bearer(access).await {
        Ok(client) => {
            let to = super::landing(&crate::access::Caller {
                client: client.clone(),
                request_id: None,
            });
            let cookie = match state.sessions.start(client).await {
                Ok(c) => c,
                Err(e) => return super::handlers::session_failure(lang, &e),
            };
            with_cookie(
                html(StatusCode::OK, pages::signed_in(lang, to)),
                &state.sessions.cookie(&cookie),
            )
        }
        Err(refusal) => {
            let detail = format!(
                "console sign-in: the issuer's token was refused ({})",
                refusal.describe()
            );
            state.gateway.refused_authentication(None, &detail).await;
            failed(lang, refusal.describe())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_s256_challenge_of_rfc_7636() {
        // RFC 7636, appendix B.
        assert_eq!(
            super::challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
