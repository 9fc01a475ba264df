//! The audit log as a whole: walking the chain ([`verify`]), exporting a period as NDJSON
//! AuditEvents ([`export`], and [`Gateway::audit_export`] for auditors over HTTP) and pruning
//! old rows under a permit with a checkpoint ([`prune`]). The command line calls the free
//! functions as the operator of the machine; callers over HTTP go through the auditor's
//! methods on [`Gateway`], which decide access and leave audit rows.

use std::io::Write;

use super::{Gateway, GatewayError};
use crate::access::{Caller, Request, authorize};
use crate::audit::chain::{Report, Walk};
use crate::audit::{self, Action, Actor, AuditRow, Checkpoint, Interaction, Outcome, RowKind};
use crate::fhir::outcome::Issue;
use crate::fhir::time::period;
use crate::store::{Store, StoreError, StoreTx};

const PAGE: i64 = 2_000;

/// Walks the whole chain in `seq` order, `page` rows at a time, and reports the first broken
/// link (see [`Walk`]).
pub async fn verify(tx: &mut dyn StoreTx, page: i64) -> crate::store::Result<Report> {
    let head = tx.audit_head().await?;
    let mut walk = Walk::new();
    let mut after = i64::MIN;
    'pages: loop {
        let batch = tx.audit_chain_page(after, page.max(1)).await?;
        if batch.is_empty() {
            break;
        }
        for r in &batch {
            after = r.seq;
            if !walk.row(r) {
                break 'pages;
            }
        }
    }
    Ok(walk.finish(head))
}

/// Writes the rows recorded in `[from_us, to_us]` with `seq <= max_seq` as NDJSON
/// AuditEvents (one per line, the chain extension included), in chain order, calling
/// `progress(done, total)` after each page. Reads in one snapshot; writers are not blocked.
pub async fn export(
    store: &dyn Store,
    from_us: i64,
    to_us: i64,
    max_seq: i64,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(i64, i64),
) -> anyhow::Result<i64> {
    let mut tx = store.begin_read().await?;
    let total = tx.audit_range_count(from_us, to_us).await?;
    let mut done = 0;
    let mut after = i64::MIN;
    'pages: loop {
        let rows = tx.audit_range_page(after, from_us, to_us, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        for r in &rows {
            if r.seq > max_seq {
                break 'pages;
            }
            serde_json::to_writer(&mut *out, &audit::audit_event(r))?;
            out.write_all(b"\n")?;
            done += 1;
        }
        progress(done, total);
    }
    progress(done, done);
    out.flush()?;
    Ok(done)
}

/// What a prune did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub through_seq: i64,
    pub exported: i64,
    pub deleted: i64,
}

/// Exports every row recorded before `before_us` to `out_path` (synced to disk), then
/// deletes them and appends a checkpoint row that records the hash the remaining chain
/// continues from. Returns `None` when nothing is old enough.
pub async fn prune(
    store: &dyn Store,
    before_us: i64,
    out_path: &std::path::Path,
    actor: &Actor,
    progress: &mut dyn FnMut(i64, i64),
) -> anyhow::Result<Option<Pruned>> {
    let Some((upto, upto_hash)) = last_row_before(store, before_us).await? else {
        return Ok(None);
    };
    let file = std::fs::File::create(out_path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", out_path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let exported = export(store, i64::MIN, i64::MAX, upto, &mut w, progress).await?;
    let file = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    // The segment is on disk before a single row is deleted.
    file.sync_all()?;
    let mut checkpoint = audit::row(
        actor,
        None,
        Action::Delete,
        Interaction::Prune,
        Outcome::Success,
    );
    checkpoint.kind = RowKind::Checkpoint.code().into();
    checkpoint.detail = Some(serde_json::to_string(&Checkpoint {
        pruned_through: upto,
        continues_from: upto_hash,
    })?);
    let mut tx = store.begin().await?;
    let deleted = tx.audit_prune(upto, checkpoint).await?;
    tx.commit().await?;
    Ok(Some(Pruned {
        through_seq: upto,
        exported,
        deleted,
    }))
}

/// The seq and hash of the last row recorded before `before_us`, if any.
async fn last_row_before(
    store: &dyn Store,
    before_us: i64,
) -> anyhow::Result<Option<(i64, String)>> {
    let mut tx = store.begin_read().await?;
    let Some(upto) = tx.audit_last_seq_before(before_us).await? else {
        return Ok(None);
    };
    let row: Vec<AuditRow> = tx.audit_chain_page(upto - 1, 1).await?;
    match row.into_iter().next() {
        Some(r) if r.seq == upto => Ok(Some((upto, r.hash))),
        _ => anyhow::bail!("audit row {upto} cannot be read; run `carebridge audit verify`"),
    }
}

/// One chunk of an export stream: NDJSON lines, or the failure that ended it.
pub type ExportChunk = Result<Vec<u8>, std::io::Error>;

impl Gateway {
    /// `GET /audit/verify`: the chain walked for an auditor; the walk itself is audited.
    pub async fn audit_verify(&self, caller: &Caller) -> Result<Report, GatewayError> {
        authorize(caller, Request::AuditLog)?;
        let report = async {
            let mut tx = self.store.begin_read().await?;
            verify(tx.as_mut(), 5_000).await
        }
        .await?;
        let outcome = if report.ok {
            Outcome::Success
        } else {
            Outcome::MinorFailure
        };
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Execute,
            Interaction::Verify,
            outcome,
        );
        row.entities = vec!["AuditEvent".into()];
        row.detail = Some(match &report.broken {
            None => format!("audit chain verified: {} rows", report.rows),
            Some(b) => format!("audit chain broken at seq {}", b.seq),
        });
        self.write_audit(row).await;
        Ok(report)
    }

    /// `GET /audit/export`: the rows recorded from `from` to `to` (FHIR dates or dateTimes;
    /// open-ended when absent) for an auditor, as NDJSON AuditEvents sent page by page on the
    /// returned channel, with the total up front.
    pub async fn audit_export(
        &self,
        caller: &Caller,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<(i64, tokio::sync::mpsc::Receiver<ExportChunk>), GatewayError> {
        authorize(caller, Request::AuditLog)?;
        let from_us = bound("from", from, false)?;
        let to_us = bound("to", to, true)?;
        let mut row = audit::row(
            &caller.actor(),
            None,
            Action::Execute,
            Interaction::Export,
            Outcome::Success,
        );
        row.entities = vec!["AuditEvent".into()];
        row.query = Some(format!(
            "from={}&to={}",
            from.unwrap_or(""),
            to.unwrap_or("")
        ));
        self.write_audit(row).await;
        let total = async {
            let mut tx = self.store.begin_read().await?;
            tx.audit_range_count(from_us, to_us).await
        }
        .await?;
        let (sender, receiver) = tokio::sync::mpsc::channel::<ExportChunk>(4);
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = export_pages(store.as_ref(), from_us, to_us, &sender).await {
                tracing::error!(error = %e, "audit export failed");
                let _ = sender
                    .send(Err(std::io::Error::other(
                        "the store failed during the export",
                    )))
                    .await;
            }
        });
        Ok((total, receiver))
    }
}

/// One end of an export period: the first (or, for `end`, the last) microsecond of a FHIR
/// date or dateTime; unbounded when absent.
fn bound(name: &str, value: Option<&str>, end: bool) -> Result<i64, GatewayError> {
    match value {
        None => Ok(if end { i64::MAX } else { i64::MIN }),
        Some(v) => period(v)
            .map(|(s, e)| if end { e } else { s })
            .ok_or_else(|| {
                GatewayError::invalid(Issue::error("value", "not a FHIR date or dateTime").at(name))
            }),
    }
}

/// Sends the rows of `[from_us, to_us]` as NDJSON chunks of a page each, until the receiver
/// goes away.
async fn export_pages(
    store: &dyn Store,
    from_us: i64,
    to_us: i64,
    sender: &tokio::sync::mpsc::Sender<ExportChunk>,
) -> Result<(), StoreError> {
    let mut tx = store.begin_read().await?;
    let mut after = i64::MIN;
    loop {
        let rows = tx.audit_range_page(after, from_us, to_us, 1_000).await?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        let mut chunk = Vec::with_capacity(rows.len() * 1024);
        for r in &rows {
            // A serde_json::Value always serialises into a Vec.
            let _ = serde_json::to_writer(&mut chunk, &audit::audit_event(r));
            chunk.push(b'\n');
        }
        if sender.send(Ok(chunk)).await.is_err() {
            break;
        }
    }
    Ok(())
}
