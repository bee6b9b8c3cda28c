//! The reducer: consumes reduce tasks, merges one partition's chunk outputs on a blocking
//! thread, and stores the partition's result and its `reduced` mark in one atomic step.
//! The step that reduces the last partition marks the job succeeded, deletes the
//! intermediate data and puts a time to live on the job's keys.
//!
//! A reducer holds a lease on its partition, with a fencing token that grows with every
//! grant, and renews it while it works. Its commit succeeds only if its token still holds
//! the lease: a reducer frozen past its lease (SIGSTOP, a long GC-like stall, a network
//! partition) finds its lease taken over and writes nothing. Two reducers given the same
//! partition store one result.
//!
//! Before reducing, it checks that the partition holds exactly one output per chunk of the
//! job: if Redis lost intermediate data, the job fails saying so, rather than producing a
//! silently wrong result.
//!
//! Reducers also run the janitor: a job whose producer stopped publishing (it died before
//! sealing the job) and has not been heard from for `producer_timeout` is failed, with a
//! reason that says how to resume it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::broker::consumer::{self as service, ConsumerSettings, ServiceError, Task, TaskHandler};
use crate::broker::publisher::Publisher;
use crate::broker::topology::Topology;
use crate::config::ConnectionConfig;
use crate::fault::Faults;
use crate::job::{now_ms, JobState};
use crate::jobs::{JobRegistry, JobSpec};
use crate::protocol::messages::ReduceTask;
use crate::protocol::Disposition;
use crate::protocol::{lost_state_reason, panic_message, store_disposition};
use crate::store::{LeaseOutcome, ReduceCommitOutcome, Store, StoreError};

/// Reducer settings.
#[derive(Debug, Clone)]
pub struct ReducerConfig {
    pub connection: ConnectionConfig,
    pub prefetch: u16,
    /// How long a partition's lease lasts without renewal.
    pub lease: Duration,
    /// After SIGTERM, how long the partition in hand may take before it is given back.
    pub grace_period: Duration,
    /// A running job whose producer has not been heard from for this long, and has not
    /// sealed the job, is failed.
    pub producer_timeout: Duration,
    /// Partitions reduced at once (one consume loop each).
    pub concurrency: usize,
    pub registry: JobRegistry,
    /// This reducer's health, shared with its monitor.
    pub health: std::sync::Arc<crate::health::ServiceHealth>,
}

/// Runs a reducer until `shutdown` is cancelled.
pub async fn run(config: ReducerConfig, shutdown: CancellationToken) -> Result<(), ServiceError> {
    let Some(store) = service::connect_store(&config.connection, &shutdown).await? else {
        return Ok(());
    };
    store.warn_if_evicting().await;
    let topology = Topology::for_connection(&config.connection);
    let settings = ConsumerSettings {
        role: "reducer",
        queue: topology.reduce_queue(),
        prefetch: config.prefetch,
        retry_pause: Duration::from_millis(500),
        grace_period: config.grace_period,
        health: config.health.clone(),
    };
    let janitor = tokio::spawn(run_janitor(
        store.clone(),
        config.producer_timeout,
        shutdown.clone(),
    ));
    let faults = Faults::from_env();
    let handlers = (0..config.concurrency.max(1))
        .map(|_| ReduceHandler {
            store: store.clone(),
            registry: config.registry.clone(),
            lease: config.lease,
            faults: faults.clone(),
        })
        .collect();
    let result = service::run_consumers(&config.connection, &settings, handlers, &shutdown).await;
    janitor.abort();
    result
}

/// Fails running jobs whose producer vanished before sealing them.
async fn run_janitor(store: Store, producer_timeout: Duration, shutdown: CancellationToken) {
    let period = (producer_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(15));
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
        let silent_ms = now.saturating_sub(last_seen_ms);
        if state != JobState::Running
            || total.is_some()
            || silent_ms < producer_timeout.as_millis() as u64
        {
            continue;
        }
        let Some(status) = store.status(&job_id).await? else {
            continue;
        };
        let reason = format!(
            "the producer stopped publishing before all chunks were sent (silent for {:.0}s, \
             past the {:?} producer timeout); re-submit the job",
            silent_ms as f64 / 1000.0,
            producer_timeout
        );
        if store
            .end_job(&status.spec, JobState::Failed, &reason)
            .await?
        {
            tracing::warn!(job_id = %job_id, "failed a job whose producer vanished");
        }
    }
    Ok(())
}

struct ReduceHandler {
    store: Store,
    registry: JobRegistry,
    lease: Duration,
    faults: Faults,
}

impl ReduceHandler {
    async fn fail_job(&self, spec: &JobSpec, reason: String) -> Disposition {
        tracing::error!(job_id = %spec.id, reason = %reason, "failing job");
        match self.store.end_job(spec, JobState::Failed, &reason).await {
            Ok(_) => Disposition::Ack,
            Err(error) => store_disposition(error),
        }
    }

    async fn process(&mut self, task: ReduceTask) -> Result<Disposition, StoreError> {
        let Some(status) = self.store.status(&task.job_id).await? else {
            return Ok(Disposition::DeadLetter(format!(
                "job `{}` does not exist in this namespace (expired, or lost by Redis)",
                task.job_id
            )));
        };
        let spec = status.spec;
        if task.partition >= spec.partitions {
            return Ok(Disposition::DeadLetter(format!(
                "partition {} is beyond the job's {} partitions",
                task.partition, spec.partitions
            )));
        }
        if status.state != JobState::Reducing {
            tracing::info!(state = %status.state, "reduce task for a job that is not reducing; dropping");
            return Ok(Disposition::Ack);
        }
        if self.store.is_reduced(&spec.id, task.partition).await? {
            crate::metrics::duplicate("reducer");
            tracing::info!("partition already reduced; dropping duplicate task");
            return Ok(Disposition::Ack);
        }
        let code = match self.registry.build(&spec.kind, &spec.params) {
            Ok(code) => code,
            Err(error) => {
                return Ok(self
                    .fail_job(
                        &spec,
                        format!("job code cannot be built by this reducer: {error}"),
                    )
                    .await)
            }
        };
        let partition = task.partition;
        let token = match self
            .store
            .acquire_lease(&spec.id, partition, self.lease)
            .await?
        {
            LeaseOutcome::Acquired(token) => token,
            LeaseOutcome::Busy(remaining) => {
                return Ok(Disposition::Retry(format!(
                    "partition {partition} is leased by another reducer for {remaining:?} more"
                )))
            }
            LeaseOutcome::Missing => return Ok(Disposition::Ack),
        };
        tracing::debug!(token, "lease acquired");
        // Keep the lease while working; a stalled process stops renewing and loses it.
        let renewer = {
            let store = self.store.clone();
            let job_id = spec.id.clone();
            let lease = self.lease;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    match store.renew_lease(&job_id, partition, token, lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(token, "lease lost; the commit will be refused");
                            return;
                        }
                        Err(error) => tracing::warn!(error = %error, "lease renewal failed"),
                    }
                }
            })
        };
        let result = self
            .reduce_and_commit(
                &spec,
                status.total_chunks.unwrap_or(0),
                partition,
                token,
                code,
            )
            .await;
        renewer.abort();
        result
    }

    async fn reduce_and_commit(
        &self,
        spec: &JobSpec,
        total: u64,
        partition: u32,
        token: u64,
        code: std::sync::Arc<dyn crate::jobs::Job>,
    ) -> Result<Disposition, StoreError> {
        let (partials, committed) = self.store.partition_partials(&spec.id, partition).await?;
        let complete =
            partials.len() as u64 == committed && partials.iter().all(|(chunk, _)| *chunk < total);
        if !complete {
            // A concurrent reducer may have finished this partition and deleted its data.
            if self.store.is_reduced(&spec.id, partition).await? {
                return Ok(Disposition::Ack);
            }
            let detail = format!(
                "partition {partition} holds {} of the {committed} chunk outputs committed to it",
                partials.len()
            );
            return Ok(self.fail_job(spec, lost_state_reason(&detail)).await);
        }
        if self.faults.reduce_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.faults.reduce_delay_ms)).await;
        }
        let reduce_started = std::time::Instant::now();
        let reduced = tokio::task::spawn_blocking(move || {
            let data = partials.into_iter().map(|(_, data)| data).collect();
            code.reduce_partition(data)
        })
        .await;
        crate::metrics::partition_reduced(reduce_started.elapsed());
        let output = match reduced {
            Ok(Ok(output)) => output,
            Ok(Err(error)) => {
                return Ok(self
                    .fail_job(
                        spec,
                        format!("reduce failed on partition {partition}: {error}"),
                    )
                    .await)
            }
            Err(join_error) => {
                let cause = if join_error.is_panic() {
                    panic_message(&*join_error.into_panic())
                } else {
                    "cancelled".to_string()
                };
                return Ok(self
                    .fail_job(
                        spec,
                        format!("reduce panicked on partition {partition}: {cause}"),
                    )
                    .await);
            }
        };
        let commit_started = std::time::Instant::now();
        let outcome = self
            .store
            .commit_partition(spec, partition, token, &output)
            .await;
        crate::metrics::committed("reducer", commit_started.elapsed());
        let outcome = outcome?;
        Ok(match outcome {
            ReduceCommitOutcome::Reduced => Disposition::Ack,
            ReduceCommitOutcome::Succeeded => {
                tracing::info!("last partition reduced; job succeeded");
                Disposition::Ack
            }
            ReduceCommitOutcome::Duplicate => {
                crate::metrics::duplicate("reducer");
                Disposition::Ack
            }
            ReduceCommitOutcome::Fenced => {
                // Requeue rather than ack: the redelivery finds the partition reduced by the
                // lease's new holder, or, if that one died too, reduces it again.
                Disposition::Retry(format!(
                    "lease token {token} on partition {partition} was taken over while reducing; result discarded"
                ))
            }
            ReduceCommitOutcome::NotReducing(state) => {
                tracing::info!(%state, "job ended while reducing; dropping result");
                Disposition::Ack
            }
            ReduceCommitOutcome::Missing => Disposition::DeadLetter(format!(
                "job `{}` vanished from Redis while reducing",
                spec.id
            )),
        })
    }
}

impl TaskHandler for ReduceHandler {
    async fn handle(&mut self, task: Task, _publisher: &mut Publisher) -> Disposition {
        let reduce_task = match ReduceTask::decode(&task.properties, &task.body) {
            Ok(reduce_task) => reduce_task,
            Err(error) => {
                return Disposition::DeadLetter(format!("undecodable reduce task: {error}"))
            }
        };
        let span = tracing::info_span!(
            "reduce",
            job_id = %reduce_task.job_id,
            partition = reduce_task.partition,
            redelivered = task.redelivered
        );
        self.process(reduce_task)
            .instrument(span)
            .await
            .unwrap_or_else(store_disposition)
    }
}
