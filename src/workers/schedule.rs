//! Time-driven alert evaluation: every `[alerts] schedule_interval_ms` each replica claims the
//! patients whose scheduled time has come ([`Gateway::run_schedule`]) and re-evaluates them, in
//! batches, until none is due. Claiming is safe on every replica: PostgreSQL skips rows another
//! replica holds (`FOR UPDATE SKIP LOCKED`), SQLite admits one writer.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use crate::gateway::Gateway;

/// Patients re-evaluated per transaction.
const BATCH: i64 = 50;

/// Runs until shutdown.
pub async fn run(gw: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let every = Duration::from_millis(gw.settings().alerts.schedule_interval_ms);
    loop {
        loop {
            match gw.run_schedule(BATCH).await {
                Ok(n) if n as i64 >= BATCH && !*shutdown.borrow() => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, "time-driven alert evaluation failed; retrying");
                    break;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}
