//! The janitor reducers run beside their consume loops: it fails a running job whose
//! producer stopped publishing before sealing it (it died) and has not been heard from for
//! `producer_timeout`, with a reason that says how to resume it (invariant 12).
//!
//! Must not: touch a job that is sealed, not running, or whose producer is still
//! heartbeating; the decision is [`crate::protocol::reduce::is_abandoned`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::consumer as service;
use crate::job::{now_ms, JobState};
use crate::protocol::reduce;
use crate::store::{Store, StoreError};

/// Fails running jobs whose producer vanished before sealing them, until shutdown.
pub async fn run(store: Store, producer_timeout: Duration, shutdown: CancellationToken) {
    let period = reduce::janitor_period(producer_timeout);
    while service::pause(period, &shutdown).await {
        if let Err(error) = sweep_abandoned_jobs(&store, producer_timeout).await {
            tracing::warn!(error = %error, "janitor sweep failed; will retry");
        }
    }
}

async fn sweep_abandoned_jobs(store: &Store, producer_timeout: Duration) -> Result<(), StoreError> {
    let now = now_ms();
    for job_id in store.job_ids().await? {
        let Some((state, total, last_seen_ms)) = store.job_progress(&job_id).await? else {
            continue;
        };
        let silent = Duration::from_millis(now.saturating_sub(last_seen_ms));
        if !reduce::is_abandoned(state, total.is_some(), silent, producer_timeout) {
            continue;
        }
        let Some(status) = store.status(&job_id).await? else {
            continue;
        };
        let reason = reduce::abandoned_reason(silent, producer_timeout);
        if store
            .end_job(&status.spec, JobState::Failed, &reason)
            .await?
        {
            tracing::warn!(job_id = %job_id, "failed a job whose producer vanished");
        }
    }
    Ok(())
}
