//! Outbound HTTP to the sectors' FHIR endpoints: one client, and the credentials of each
//! sector — a static bearer token (from the environment or a file, read on use so that a
//! rotated file takes effect) or an OAuth2 client-credentials token, cached until shortly before
//! it expires. Secrets never reach the log. Also the fetch of an issuer's JSON Web Key Set
//! ([`jwks`]) for [`crate::auth`], and `check-config`'s endpoint probes ([`probe`]).

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{OutboundAuth, SectorSettings};

pub mod audit_log;
pub mod jwks;
pub mod oidc;
pub mod probe;

/// Why credentials could not be obtained (retryable: the identity provider may be down or the
/// secret about to be fixed).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

#[derive(Clone)]
struct Cached {
    header: String,
    until: Instant,
}

pub struct Outbound {
    pub http: reqwest::Client,
    tokens: Mutex<HashMap<String, Cached>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

fn read_secret(
    env: Option<&str>,
    file: Option<&std::path::Path>,
    what: &str,
) -> Result<String, AuthError> {
    if let Some(name) = env {
        return std::env::var(name)
            .map(|v| v.trim().to_owned())
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| AuthError(format!("the {what} variable {name} is not set")));
    }
    if let Some(path) = file {
        return std::fs::read_to_string(path)
            .map(|v| v.trim().to_owned())
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                AuthError(format!(
                    "the {what} file {} is unreadable or empty",
                    path.display()
                ))
            });
    }
    Err(AuthError(format!("no source for the {what}")))
}

/// A builder of HTTP clients whose TLS (rustls) uses the ring provider: it is installed as the
/// process default before the first client is built (reqwest asks for the default provider).
/// Every HTTP client of the process — the gateway's, and those of its tests and benchmarks —
/// starts here.
pub fn client_builder() -> reqwest::ClientBuilder {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        // Err only when another provider was installed first, which then serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

/// A client with reqwest's defaults (see [`client_builder`]).
pub fn client() -> reqwest::Result<reqwest::Client> {
    client_builder().build()
}

impl Outbound {
    /// A GET of FHIR JSON from a sector, with its `Authorization` header when it has one.
    pub fn fhir_get(&self, url: &str, authorization: Option<String>) -> reqwest::RequestBuilder {
        let req = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, crate::fhir::FHIR_JSON);
        match authorization {
            Some(a) => req.header(reqwest::header::AUTHORIZATION, a),
            None => req,
        }
    }

    pub fn new(timeout: Duration) -> reqwest::Result<Outbound> {
        let http = client_builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("carebridge/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Outbound {
            http,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The `Authorization` header value for a sector, if it needs one.
    pub async fn authorization(
        &self,
        sector: &SectorSettings,
    ) -> Result<Option<String>, AuthError> {
        match &sector.auth {
            OutboundAuth::None => Ok(None),
            OutboundAuth::Bearer {
                token_env,
                token_file,
            } => {
                let token =
                    read_secret(token_env.as_deref(), token_file.as_deref(), "bearer token")?;
                Ok(Some(format!("Bearer {token}")))
            }
            OutboundAuth::ClientCredentials {
                token_url,
                client_id,
                client_secret_env,
                client_secret_file,
                scope,
            } => {
                if let Some(c) = self.cached(&sector.id) {
                    return Ok(Some(c));
                }
                let secret = read_secret(
                    client_secret_env.as_deref(),
                    client_secret_file.as_deref(),
                    "client secret",
                )?;
                let token = self
                    .request_token(token_url, client_id, &secret, scope.as_deref())
                    .await?;
                let header = bearer_header(&token)?;
                self.remember(&sector.id, &header, token.expires_in);
                Ok(Some(header))
            }
        }
    }

    /// The client-credentials grant (RFC 6749 §4.4) at `token_url`.
    async fn request_token(
        &self,
        token_url: &str,
        client_id: &str,
        secret: &str,
        scope: Option<&str>,
    ) -> Result<TokenResponse, AuthError> {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        let resp = self
            .http
            .post(token_url)
            // RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
            .basic_auth(form_encode(client_id), Some(form_encode(secret)))
            .form(&form)
            .send()
            .await
            .map_err(|e| AuthError(format!("the token endpoint did not answer: {}", kind(&e))))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(AuthError(format!(
                "the token endpoint refused the client credentials ({})",
                status.as_u16()
            )));
        }
        resp.json()
            .await
            .map_err(|_| AuthError("the token endpoint answered no access_token".into()))
    }

    /// Keeps a sector's token header until shortly before the token expires.
    fn remember(&self, sector: &str, header: &str, expires_in: Option<u64>) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(
                sector.to_owned(),
                Cached {
                    header: header.to_owned(),
                    until: Instant::now() + reuse_for(expires_in),
                },
            );
        }
    }

    fn cached(&self, sector: &str) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        let c = tokens.get(sector)?;
        (Instant::now() < c.until).then(|| c.header.clone())
    }

    /// Forgets a sector's cached token (after the endpoint answered 401).
    pub fn invalidate(&self, sector: &str) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(sector);
        }
    }
}

/// The `Authorization` value of an issued token: only bearer tokens are used.
fn bearer_header(token: &TokenResponse) -> Result<String, AuthError> {
    if token
        .token_type
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
    {
        return Err(AuthError(
            "the token endpoint issued a token that is not a bearer token".into(),
        ));
    }
    Ok(format!("Bearer {}", token.access_token))
}

/// How long an issued token is reused: its `expires_in` (300 s when the endpoint does not say;
/// at most a day, since a token endpoint's `expires_in` is not trusted to be sane), renewed a
/// little before expiry: 30 s early, or at 90 % of a short lifetime.
fn reuse_for(expires_in: Option<u64>) -> Duration {
    let lifetime = Duration::from_secs(expires_in.unwrap_or(300).min(86_400));
    let margin = Duration::from_secs(30).min(lifetime / 10);
    lifetime.saturating_sub(margin)
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const FORM: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'*')
        .remove(b'-')
        .remove(b'.')
        .remove(b'_');
    utf8_percent_encode(s, FORM).to_string()
}

/// A transport error, described without URLs (which may carry ids).
pub fn kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection refused or unreachable"
    } else if e.is_body() || e.is_decode() {
        "the response could not be read"
    } else if e.is_request() {
        "the connection failed"
    } else {
        "transport error"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(token_type: Option<&str>) -> TokenResponse {
        TokenResponse {
            access_token: "abc".into(),
            token_type: token_type.map(str::to_owned),
            expires_in: None,
        }
    }

    #[test]
    fn only_bearer_tokens_are_used() {
        assert_eq!(bearer_header(&token(None)).unwrap(), "Bearer abc");
        assert_eq!(bearer_header(&token(Some("bearer"))).unwrap(), "Bearer abc");
        assert_eq!(
            bearer_header(&token(Some("mac"))).unwrap_err().0,
            "the token endpoint issued a token that is not a bearer token"
        );
    }

    #[test]
    fn tokens_are_renewed_shortly_before_they_expire() {
        assert_eq!(reuse_for(None), Duration::from_secs(270));
        assert_eq!(reuse_for(Some(3600)), Duration::from_secs(3570));
        assert_eq!(reuse_for(Some(100)), Duration::from_secs(90));
        assert_eq!(reuse_for(Some(0)), Duration::ZERO);
        assert_eq!(reuse_for(Some(u64::MAX)), Duration::from_secs(86_370));
    }

    #[test]
    fn client_credentials_are_form_encoded() {
        assert_eq!(form_encode("carebridge gw"), "carebridge%20gw");
        assert_eq!(form_encode("a-b_c.d*e"), "a-b_c.d*e");
        assert_eq!(form_encode("s3:cr/t"), "s3%3Acr%2Ft");
    }
}
