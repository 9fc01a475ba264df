//! HTTP to another carebridge's audit endpoints and to witnesses: [`LogClient`] reads a log's
//! latest checkpoint, its canonical rows with their leaves and its consistency proofs (the
//! offline verifier's `--from-url` and a witness that mirrors the leaves use it);
//! [`add_checkpoint`] POSTs a checkpoint to a witness (C2SP tlog-witness).

use std::time::Duration;

use anyhow::{Context, bail};

use super::client_builder;
use crate::audit::merkle::Hash;
use crate::audit::note;
use crate::audit::verify::LogEntry;
use crate::gateway::transparency::MAX_ROWS;

/// A carebridge log's audit endpoints, read with an auditor's bearer token.
pub struct LogClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl LogClient {
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> anyhow::Result<LogClient> {
        Ok(LogClient {
            http: client_builder().timeout(timeout).build()?,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.get(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let text = resp.text().await.with_context(|| format!("GET {url}"))?;
        if !status.is_success() {
            let first = text
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect::<String>();
            bail!("GET {url}: {status}: {first}");
        }
        Ok(text)
    }

    /// The latest signed checkpoint note.
    pub async fn checkpoint(&self) -> anyhow::Result<String> {
        self.get("/audit/checkpoint").await
    }

    /// The entries `from..=to`, page by page.
    pub async fn entries(&self, from: i64, to: i64) -> anyhow::Result<Vec<LogEntry>> {
        let mut out = Vec::with_capacity((to - from + 1).max(0) as usize);
        let mut at = from;
        while at <= to {
            let end = (at + MAX_ROWS - 1).min(to);
            let text = self.get(&format!("/audit/rows?from={at}&to={end}")).await?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                out.push(serde_json::from_str(line).context("a line of /audit/rows")?);
            }
            at = end + 1;
        }
        Ok(out)
    }

    /// The consistency proof from the tree of `from` rows to that of `to`.
    pub async fn consistency(&self, from: i64, to: i64) -> anyhow::Result<Vec<Hash>> {
        let text = self
            .get(&format!("/audit/proof/consistency?from={from}&to={to}"))
            .await?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let proof = v["proof"].as_array().context("a proof array")?;
        proof
            .iter()
            .map(|p| p.as_str().and_then(note::unb64).context("a base64 hash"))
            .collect()
    }
}

/// POSTs an add-checkpoint request body to `<witness>/add-checkpoint`; returns the status and
/// the body of the answer.
pub async fn add_checkpoint(
    http: &reqwest::Client,
    witness: &str,
    body: String,
) -> Result<(u16, String), reqwest::Error> {
    let url = format!("{}/add-checkpoint", witness.trim_end_matches('/'));
    let resp = http.post(url).body(body).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}
