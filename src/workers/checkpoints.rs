//! The audit log's checkpoints, above the core: [`run_signer`] signs one every
//! `checkpoint_every_rows` rows or `checkpoint_every_secs` seconds (whichever comes first, and
//! only when rows were appended), and [`run_witness`] pushes the latest one to a witness
//! (C2SP tlog-witness `add-checkpoint`, with the consistency proof from the size that witness
//! holds), keeping what it countersigned in `audit_witnesses`. A failed push is retried with
//! the delivery workers' back-off (`[exchange]` retry_initial_ms doubling up to retry_max_ms,
//! with jitter); a witness that answers 409 names the size it holds, and the push is rebuilt
//! from there at once.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::deliver::backoff;
use crate::audit::note;
use crate::fhir::time::now_us;
use crate::gateway::Gateway;
use crate::gateway::transparency::consistency_proof;
use crate::outbound::audit_log::add_checkpoint;
use crate::store::{StoreError, WitnessState};

const TICK: Duration = Duration::from_millis(250);

/// Waits a tick or until shutdown; false when shutting down.
async fn tick(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => !*shutdown.borrow(),
        _ = shutdown.changed() => false,
    }
}

/// Signs checkpoints while the process runs.
pub async fn run_signer(gw: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let rows = gw.settings().audit.checkpoint_every_rows as i64;
    let every = Duration::from_secs(gw.settings().audit.checkpoint_every_secs);
    let mut last = Instant::now();
    loop {
        if let Ok(Some((due, head, signed))) = due(&gw, rows, last.elapsed() >= every).await
            && due
        {
            match gw.sign_checkpoint().await {
                Ok(Some(c)) => tracing::info!(size = c.size, "audit checkpoint signed"),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, head, signed, "could not sign an audit checkpoint")
                }
            }
            last = Instant::now();
        }
        if !tick(&mut shutdown, TICK).await {
            return;
        }
    }
}

/// Whether a checkpoint is due: (due, head, latest signed size).
async fn due(gw: &Gateway, rows: i64, timed: bool) -> Result<Option<(bool, i64, i64)>, StoreError> {
    let mut tx = gw.store().begin_read().await?;
    let Some((head, _)) = tx.audit_head().await? else {
        return Ok(None);
    };
    let signed = tx.checkpoint_latest().await?.map_or(0, |c| c.size);
    Ok(Some((
        head - signed >= rows || (timed && head > signed),
        head,
        signed,
    )))
}

/// Pushes the latest checkpoint to the witness at `url` whenever it holds an older one.
pub async fn run_witness(gw: Arc<Gateway>, url: String, mut shutdown: watch::Receiver<bool>) {
    let timeout = Duration::from_millis(gw.settings().exchange.request_timeout_ms);
    let http = match crate::outbound::client_builder().timeout(timeout).build() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client for the audit witnesses");
            return;
        }
    };
    loop {
        if let Err(e) = push(&gw, &http, &url).await {
            tracing::warn!(witness = %url, error = %e, "audit witness push not recorded");
        }
        if !tick(&mut shutdown, TICK).await {
            return;
        }
    }
}

/// One step: if the witness is due and behind, push and record the answer.
async fn push(gw: &Gateway, http: &reqwest::Client, url: &str) -> Result<(), StoreError> {
    let mut tx = gw.store().begin_read().await?;
    let Some(latest) = tx.checkpoint_latest().await? else {
        return Ok(());
    };
    let mut state = tx.witness_get(url).await?.unwrap_or(WitnessState {
        url: url.to_owned(),
        ..WitnessState::default()
    });
    if (state.size == latest.size && state.cosigned.is_some()) || now_us() < state.next_us {
        return Ok(());
    }
    // A witness holding more than the log has is told anyway: it reports the rollback.
    let proof = if state.size < latest.size {
        consistency_proof(tx.as_mut(), state.size as u64, latest.size as u64)
            .await?
            .0
    } else {
        Vec::new()
    };
    drop(tx);
    let body = note::add_checkpoint_body(state.size as u64, &proof, &latest.note);
    let answer = add_checkpoint(http, url, body).await;
    record(gw, &mut state, latest.size, answer).await
}

/// Records a witness's answer: a cosignature, the size it holds (409), or a failure.
async fn record(
    gw: &Gateway,
    state: &mut WitnessState,
    size: i64,
    answer: Result<(u16, String), reqwest::Error>,
) -> Result<(), StoreError> {
    let x = &gw.settings().exchange;
    let fail = |state: &mut WitnessState, why: String| {
        state.failures += 1;
        let wait = backoff(
            x.retry_initial_ms,
            x.retry_max_ms,
            state.failures as u32,
            None,
        );
        state.next_us = now_us() + wait.as_micros() as i64;
        tracing::warn!(witness = %state.url, failures = state.failures, problem = %why, "audit witness refused or unreachable");
        state.last_error = Some(why);
    };
    match answer {
        Ok((200, cosignature)) => {
            state.size = size;
            state.cosigned = Some(cosignature);
            state.failures = 0;
            state.next_us = 0;
            state.last_error = None;
        }
        Ok((409, held)) => match held.trim().parse::<i64>() {
            Ok(n) if n != state.size => state.size = n,
            _ => fail(state, format!("409: {}", first_line(&held))),
        },
        Ok((status, text)) => fail(state, format!("{status}: {}", first_line(&text))),
        Err(e) => fail(state, crate::outbound::kind(&e).to_string()),
    }
    let mut tx = gw.store().begin().await?;
    tx.witness_put(state).await?;
    tx.commit().await
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(300).collect()
}
