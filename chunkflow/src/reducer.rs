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
//! Reducers also run the `janitor`: a job whose producer stopped publishing (it died
//! before sealing the job) and has not been heard from for `producer_timeout` is failed,
//! with a reason that says how to resume it.
//!
//! This file is the I/O shell: it reads the job, takes the lease, runs the job code,
//! commits, and carries out what [`crate::protocol::reduce`] decides at each step; every
//! decision and every failure text lives there.

mod janitor;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::broker::consumer::{self as service, ConsumerSettings, ServiceError, Task, TaskHandler};
use crate::broker::publisher::Publisher;
use crate::broker::topology::Topology;
use crate::config::ConnectionConfig;
use crate::fault::Faults;
use crate::job::JobState;
use crate::jobs::{Job, JobRegistry, JobSpec};
use crate::protocol::messages::ReduceTask;
use crate::protocol::reduce::{self, ReduceAction};
use crate::protocol::{store_disposition, Disposition};
use crate::store::{Store, StoreError};

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
    let Some(store) = Store::connect_retrying(&config.connection, &shutdown).await? else {
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
    let janitor = tokio::spawn(janitor::run(
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

struct ReduceHandler {
    store: Store,
    registry: JobRegistry,
    lease: Duration,
    faults: Faults,
}

impl ReduceHandler {
    /// Loads the task's job, decides the delivery step by step, and carries the decision
    /// out.
    async fn process(&mut self, task: ReduceTask) -> Result<Disposition, StoreError> {
        let Some(status) = self.store.status(&task.job_id).await? else {
            return Ok(Disposition::DeadLetter(reduce::missing_job_reason(
                &task.job_id,
            )));
        };
        let total = status.total_chunks.unwrap_or(0);
        let action = self
            .lease_and_reduce(task.partition, &status.spec, status.state, total)
            .await?;
        Ok(self.carry_out(action, &status.spec).await)
    }

    /// Checks the task, takes the partition's lease, and reduces under it (renewing it);
    /// ends in what to do with the delivery.
    async fn lease_and_reduce(
        &mut self,
        partition: u32,
        spec: &JobSpec,
        state: JobState,
        total: u64,
    ) -> Result<ReduceAction, StoreError> {
        if let ControlFlow::Break(action) = reduce::on_task(partition, spec.partitions, state) {
            return Ok(action);
        }
        let reduced = self.store.is_reduced(&spec.id, partition).await?;
        if let ControlFlow::Break(action) = reduce::on_reduced(reduced) {
            return Ok(action);
        }
        let code = match self.registry.build(&spec.kind, &spec.params) {
            Ok(code) => code,
            Err(error) => return Ok(reduce::unbuildable(&error)),
        };
        let leased = self
            .store
            .acquire_lease(&spec.id, partition, self.lease)
            .await?;
        let token = match reduce::after_lease(leased, partition) {
            ControlFlow::Continue(token) => token,
            ControlFlow::Break(action) => return Ok(action),
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
            .reduce_and_commit(spec, total, partition, token, code)
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
        code: Arc<dyn Job>,
    ) -> Result<ReduceAction, StoreError> {
        let (partials, committed) = self.store.partition_partials(&spec.id, partition).await?;
        let held = partials.iter().map(|(chunk, _)| *chunk);
        if !reduce::partition_is_complete(held, committed, total) {
            // A concurrent reducer may have finished this partition and deleted its data.
            let reduced = self.store.is_reduced(&spec.id, partition).await?;
            return Ok(reduce::on_incomplete(
                partition,
                partials.len(),
                committed,
                reduced,
            ));
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
            Ok(Err(error)) => return Ok(reduce::reduce_refused(partition, &error)),
            Err(join_error) if join_error.is_panic() => {
                let payload = join_error.into_panic();
                return Ok(reduce::reduce_crashed(partition, Some(&*payload)));
            }
            Err(_cancelled) => return Ok(reduce::reduce_crashed(partition, None)),
        };
        let commit_started = std::time::Instant::now();
        let outcome = self
            .store
            .commit_partition(spec, partition, token, &output)
            .await;
        crate::metrics::committed("reducer", commit_started.elapsed());
        Ok(reduce::after_commit(outcome?, &spec.id, partition, token))
    }

    /// Carries out a decision: the only place a reduce task fails its job.
    async fn carry_out(&self, action: ReduceAction, spec: &JobSpec) -> Disposition {
        match action {
            ReduceAction::Ack => Disposition::Ack,
            ReduceAction::Succeeded => {
                tracing::info!("last partition reduced; job succeeded");
                Disposition::Ack
            }
            ReduceAction::DropDuplicate => {
                crate::metrics::duplicate("reducer");
                tracing::info!("partition already reduced; dropping duplicate task");
                Disposition::Ack
            }
            ReduceAction::DropNotReducing(state) => {
                tracing::info!(%state, "reduce task for a job that is not reducing; dropping");
                Disposition::Ack
            }
            ReduceAction::FailJob(reason) => {
                tracing::error!(job_id = %spec.id, reason = %reason, "failing job");
                match self.store.end_job(spec, JobState::Failed, &reason).await {
                    Ok(_) => Disposition::Ack,
                    Err(error) => store_disposition(error),
                }
            }
            ReduceAction::Retry(reason) => Disposition::Retry(reason),
            ReduceAction::DeadLetter(reason) => Disposition::DeadLetter(reason),
        }
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
