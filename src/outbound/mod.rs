//! Outbound HTTP to the sectors' FHIR endpoints: one client, and the credentials of each
//! sector — a static bearer token (from the environment or a file, read on use so that a
//! rotated file takes effect) or an OAuth2 client-credentials token, cached until shortly before
//! it expires. Secrets never reach the log.

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{OutboundAuth, SectorSettings};

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

impl Outbound {
    pub fn new(timeout: Duration) -> reqwest::Result<Outbound> {
        let http = reqwest::Client::builder()
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
                let mut form = vec![("grant_type", "client_credentials")];
                if let Some(s) = scope {
                    form.push(("scope", s.as_str()));
                }
                let resp = self
                    .http
                    .post(token_url)
                    // RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
                    .basic_auth(form_encode(client_id), Some(form_encode(&secret)))
                    .form(&form)
                    .send()
                    .await
                    .map_err(|e| {
                        AuthError(format!("the token endpoint did not answer: {}", kind(&e)))
                    })?;
                let status = resp.status();
                if !status.is_success() {
                    return Err(AuthError(format!(
                        "the token endpoint refused the client credentials ({})",
                        status.as_u16()
                    )));
                }
                let token: TokenResponse = resp
                    .json()
                    .await
                    .map_err(|_| AuthError("the token endpoint answered no access_token".into()))?;
                if token
                    .token_type
                    .as_deref()
                    .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
                {
                    return Err(AuthError(
                        "the token endpoint issued a token that is not a bearer token".into(),
                    ));
                }
                // At most a day: a token endpoint's `expires_in` is not trusted to be sane.
                let lifetime = Duration::from_secs(token.expires_in.unwrap_or(300).min(86_400));
                // Renew a little before expiry: 30 s early, or at 90 % of a short lifetime.
                let margin = Duration::from_secs(30).min(lifetime / 10);
                let header = format!("Bearer {}", token.access_token);
                if let Ok(mut tokens) = self.tokens.lock() {
                    tokens.insert(
                        sector.id.clone(),
                        Cached {
                            header: header.clone(),
                            until: Instant::now() + lifetime.saturating_sub(margin),
                        },
                    );
                }
                Ok(Some(header))
            }
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
