//! The OpenID Connect calls of the console's sign-in: the issuer's discovery document
//! (`/.well-known/openid-configuration`) and the code-for-token exchange at its token endpoint
//! (authorization code with PKCE, a public client). Timeouts, at most three redirects and a
//! limit on the bytes read, as for the key set; failures are described without the body.

use serde_json::Value;
use std::time::Duration;

use super::jwks::{JwksClient, describe_reqwest};

/// The most a discovery document or a token response may be.
const MAX_BYTES: usize = 256 * 1024;

/// The endpoints the sign-in uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub authorization: String,
    pub token: String,
}

/// The console's OpenID Connect client.
pub struct OidcClient {
    documents: JwksClient,
    http: reqwest::Client,
}

impl OidcClient {
    pub fn new(timeout: Duration) -> anyhow::Result<OidcClient> {
        Ok(OidcClient {
            documents: JwksClient::new(timeout)?,
            http: super::client_builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        })
    }

    /// The issuer's authorization and token endpoints, from its discovery document (whose
    /// `issuer` must be `issuer`).
    pub async fn discover(&self, issuer: &str) -> Result<Endpoints, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let doc = self
            .documents
            .fetch_json(&url, MAX_BYTES, "the discovery document")
            .await?;
        if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
            return Err("the discovery document names another issuer".into());
        }
        let endpoint = |k: &str| {
            doc.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("the discovery document has no {k}"))
        };
        Ok(Endpoints {
            authorization: endpoint("authorization_endpoint")?,
            token: endpoint("token_endpoint")?,
        })
    }

    /// Exchanges an authorization code (with its PKCE verifier) for the token response.
    pub async fn redeem(
        &self,
        token_endpoint: &str,
        form: &[(&str, &str)],
    ) -> Result<Value, String> {
        let mut resp = self
            .http
            .post(token_endpoint)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| describe_reqwest(&e))?;
        if !resp.status().is_success() {
            return Err(format!(
                "the token endpoint answered HTTP {}",
                resp.status().as_u16()
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| describe_reqwest(&e))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BYTES {
                return Err(format!("the token response exceeds {MAX_BYTES} bytes"));
            }
        }
        serde_json::from_slice(&body).map_err(|_| "the token response is not JSON".to_owned())
    }
}
