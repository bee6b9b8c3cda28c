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
//! with a reason that says how to resume it; a partition whose lease expired mid-reduce
//! (its holder froze or died) gets its reduce task republished, so another reducer takes
//! it over. And they run the `dead_watch`: a task of a live job that RabbitMQ dead-lettered
//! (delivery limit, a reject) fails the job, naming the task and the reason, instead of
//! leaving it waiting forever.
//!
//! This file is the I/O shell: it reads the job, takes the lease, runs the job code,
//! commits, and carries out what [`crate::protocol::reduce`] decides at each step; every
//! decision and every failure text lives there.

mod dead_watch;
mod janitor;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::broker::consumer::{self as service, ConsumerSettings, ServiceError, Task, TaskHandler};
use crate::broker::publisher::Publisher;
use crate::broker::topology::{BrokerNodes, Topology};
use crate::config::ConnectionConfig;
use crate::fault::Faults;
use crate::job::JobState;
use crate::jobs::{Job, JobRegistry, JobSpec};
use crate::protocol::messages::ReduceTask;
use crate::protocol::reduce::{self, ReduceAction};
use crate::protocol::{store_disposition, Disposition};
use crate::store::{ReduceStart, Store, StoreError};

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
    // Every broker URL is checked before anything is connected to.
    let nodes =
        BrokerNodes::for_connection(&config.connection).map_err(ServiceError::InvalidAmqpUrl)?;
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
    let janitor = tokio::spawn(
        janitor::Janitor {
            store: store.clone(),
            connection: config.connection.clone(),
            nodes,
            producer_timeout: config.producer_timeout,
            lease: config.lease,
        }
        .run(shutdown.clone()),
    );
    let dead_watch = {
        let settings = ConsumerSettings {
            role: "dead-watch",
            queue: topology.dead_watch_queue(),
            prefetch: 1,
            retry_pause: Duration::from_secs(1),
            grace_period: config.grace_period,
            // Its own health: the watch's broker session does not decide the reducer's.
            health: Arc::new(crate::health::ServiceHealth::new()),
        };
        let mut watch = dead_watch::DeadLetterWatch {
            store: store.clone(),
            dead_letter_queue: topology.dead_letter_queue(),
        };
        let (connection, shutdown) = (config.connection.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(error) =
                service::run_consumer(&connection, &settings, &mut watch, &shutdown).await
            {
                tracing::error!(error = %error, "the dead-letter watch stopped");
            }
        })
    };
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
    // The watch stops on the same shutdown; a task in hand runs to its ack.
    let _ = tokio::time::timeout(config.grace_period, dead_watch).await;
    result
}

struct ReduceHandler {
    store: Store,
    registry: JobRegistry,
    lease: Duration,
    faults: Faults,
}

impl ReduceHandler {
    /// Begins the partition's reduce (job state, `reduced` mark, lease and outputs in one
    /// round trip), decides the delivery step by step, and carries the decision out.
    async fn process(&mut self, task: ReduceTask) -> Result<Disposition, StoreError> {
        let partition = task.partition;
        let begun = self
            .store
            .begin_reduce(&task.job_id, partition, self.lease)
            .await?;
        let known = begun.spec().cloned();
        let start = match reduce::on_begin(begun, &task.job_id, partition) {
            ControlFlow::Continue(start) => start,
            ControlFlow::Break(action) => return Ok(self.carry_out(action, known.as_ref()).await),
        };
        tracing::debug!(token = start.token, "lease acquired");
        let spec = start.spec.clone();
        let token = start.token;
        // Keep the lease while working; a stalled process stops renewing and loses it.
        let renewer = {
            let store = self.store.clone();
            let spec = spec.clone();
            let lease = self.lease;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    match store.renew_lease(&spec, partition, token, lease).await {
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
        let action = self.reduce_and_commit(partition, start).await;
        renewer.abort();
        Ok(self.carry_out(action?, Some(&spec)).await)
    }

    /// Reduces a partition under its lease and commits the result; ends in what to do with
    /// the delivery.
    async fn reduce_and_commit(
        &self,
        partition: u32,
        start: ReduceStart,
    ) -> Result<ReduceAction, StoreError> {
        let ReduceStart {
            spec,
            total_chunks,
            token,
            partials,
            committed_outputs,
        } = start;
        let total = total_chunks.unwrap_or(0);
        let partials = reduce::in_range(partials, total);
        let held = partials.iter().map(|(chunk, _)| *chunk);
        if !reduce::partition_is_complete(held, committed_outputs, total) {
            return Ok(reduce::on_incomplete(
                partition,
                partials.len(),
                committed_outputs,
            ));
        }
        let code: Arc<dyn Job> = match self.registry.build(&spec.kind, &spec.params) {
            Ok(code) => code,
            Err(error) => return Ok(reduce::unbuildable(&error)),
        };
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
            .commit_partition(&spec, partition, token, &output)
            .await;
        crate::metrics::committed("reducer", commit_started.elapsed());
        Ok(reduce::after_commit(outcome?, &spec.id, partition, token))
    }

    /// Carries out a decision: the only place a reduce task fails its job.
    async fn carry_out(&self, action: ReduceAction, spec: Option<&JobSpec>) -> Disposition {
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
                let Some(spec) = spec else {
                    // Only a task whose job was read can fail it; without one, reject it.
                    return Disposition::DeadLetter(reason);
                };
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
