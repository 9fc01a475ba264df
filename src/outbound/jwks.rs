//! Fetching an issuer's JSON Web Key Set: one GET of a JSON document over HTTP(S) (TLS through
//! rustls), with a timeout, at most three redirects and a limit on the bytes read. What the keys
//! mean is [`crate::auth`]'s business; failures are described without the response body.

use serde_json::Value;
use std::time::Duration;

/// The HTTP client of the key-set fetches.
pub struct JwksClient {
    http: reqwest::Client,
}

impl JwksClient {
    /// A client whose requests give up after `timeout` and follow at most three redirects.
    pub fn new(timeout: Duration) -> anyhow::Result<JwksClient> {
        let http = super::client_builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()?;
        Ok(JwksClient { http })
    }

    /// GETs `url` and parses the answer as JSON, reading at most `max_bytes`. `what` names the
    /// document in the descriptions of a failure ("the key set exceeds … bytes").
    pub async fn fetch_json(
        &self,
        url: &str,
        max_bytes: usize,
        what: &str,
    ) -> Result<Value, String> {
        let mut resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| describe_reqwest(&e))?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| describe_reqwest(&e))? {
            body.extend_from_slice(&chunk);
            if body.len() > max_bytes {
                return Err(format!("{what} exceeds {max_bytes} bytes"));
            }
        }
        serde_json::from_slice(&body).map_err(|_| format!("{what} is not JSON"))
    }
}

/// A fetch failure in words, without the response body.
pub(super) fn describe_reqwest(e: &reqwest::Error) -> String {
    // reqwest built without TLS refuses https URLs at connect time with this message.
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if s.to_string().contains("scheme is not http") {
            return "https is not supported by this build (reqwest has no TLS feature)".into();
        }
        source = s.source();
    }
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else if e.is_body() || e.is_decode() {
        "the answer could not be read".into()
    } else {
        "the request failed".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server on 127.0.0.1 that answers `response` verbatim; returns its URL.
    async fn answer_once(response: String) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let _ = socket.read(&mut request).await;
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
        url
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// https works: the client is built with the ring provider installed from the crate
    /// feature, and speaks TLS — the first bytes on the wire are a TLS handshake record carrying
    /// a ClientHello.
    #[tokio::test]
    async fn https_speaks_tls_through_the_ring_provider() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/jwks.json", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut hello = vec![0u8; 6];
            socket.read_exact(&mut hello).await.unwrap();
            hello
        });
        let client = JwksClient::new(Duration::from_secs(5)).unwrap();
        let failed = client.fetch_json(&url, 1024, "the key set").await;
        let hello = server.await.unwrap();
        assert_eq!(hello[0], 0x16, "a TLS handshake record");
        assert_eq!(hello[5], 0x01, "a ClientHello");
        assert!(failed.is_err(), "nothing valid was answered");
        assert_ne!(
            failed,
            Err("https is not supported by this build (reqwest has no TLS feature)".into())
        );
    }

    #[tokio::test]
    async fn a_document_is_read_within_its_limit_and_failures_are_described() {
        let client = JwksClient::new(Duration::from_secs(5)).unwrap();
        let url = answer_once(ok(r#"{"keys":[]}"#)).await;
        let doc = client.fetch_json(&url, 1024, "the key set").await.unwrap();
        assert_eq!(doc["keys"], serde_json::json!([]));

        let url = answer_once(ok(r#"{"keys":[1,2,3,4,5,6,7,8,9]}"#)).await;
        assert_eq!(
            client.fetch_json(&url, 10, "the key set").await,
            Err("the key set exceeds 10 bytes".into())
        );

        let url = answer_once(ok("<html>")).await;
        assert_eq!(
            client.fetch_json(&url, 1024, "the key set").await,
            Err("the key set is not JSON".into())
        );

        let url = answer_once(
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
        )
        .await;
        assert_eq!(
            client.fetch_json(&url, 1024, "the key set").await,
            Err("HTTP 404".into())
        );
    }

    #[tokio::test]
    async fn an_unreachable_issuer_is_a_connection_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        drop(listener);
        let client = JwksClient::new(Duration::from_secs(5)).unwrap();
        assert_eq!(
            client.fetch_json(&url, 1024, "the key set").await,
            Err("could not connect".into())
        );
    }
}
