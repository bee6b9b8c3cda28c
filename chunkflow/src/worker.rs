//! The worker: consumes map tasks, runs the job's map and combine on a blocking thread,
//! commits the chunk's output (all partitions, plus its `done` mark) in one atomic step,
//! and acks only after that commit. The commit that completes the map phase publishes the
//! reduce tasks, with confirms, before its delivery is acked.
//!
//! This file is the I/O shell: it loads the job (through its `job_cache`), runs the job
//! code, commits, and carries out what [`crate::protocol::map`] decides at each step; every
//! decision and every failure text lives there.
//!
//! What it must not do: ack before the commit, count a chunk twice (the commit script
//! refuses a second commit of a chunk), run job code on the async reactor, or die on a bad
//! message (undecodable tasks go to the dead-letter queue and the loop carries on).
//!
//! Failures are classified: Redis out (unreachable, not answering, out of memory) → the
//! delivery is given back and the consume loop waits for Redis; an attempt the outage cut
//! short is given back (its count decremented) as soon as Redis answers, before the next
//! task; a panic in job code → requeue, up to `max_attempts` attempts at the chunk (counted
//! in Redis when an attempt starts, so a worker that dies on the chunk counts too, and a
//! requeue that ran no job code does not), then the job fails naming the chunk and the
//! last error, and the task is dead-lettered; an error returned by job code (bad input under
//! a fail policy) → the job fails at once and the task is dead-lettered; job code this
//! worker cannot build → the job fails; Redis lost part of the job's state → the job fails;
//! a body larger than the job's chunks, a chunk beyond the job's total, or a job that does
//! not exist → dead-lettered; reduce tasks not confirmed (a nack, a lost channel, or no
//! confirm within the broker deadline) → requeue, and the redelivery publishes them again;
//! a task of an ended job → acked and dropped.

mod job_cache;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::broker::consumer::{self as service, ConsumerSettings, ServiceError, Task, TaskHandler};
use crate::broker::publisher::{publish_reduce_tasks, Publisher};
use crate::broker::topology::{BrokerNodes, Topology};
use crate::config::ConnectionConfig;
use crate::fault::Faults;
use crate::health::ServiceHealth;
use crate::job::JobState;
use crate::jobs::{ChunkContext, JobRegistry, JobSpec};
use crate::protocol::map::{self, Attempt, MapAction};
use crate::protocol::messages::MapTask;
use crate::protocol::{store_disposition, Disposition};
use crate::store::{CommitOutcome, Store, StoreError};
use job_cache::{JobCache, Loaded, LoadedJob};

/// Largest accepted `max_attempts`. The queue's own delivery limit stays a backstop far
/// above it (an outage gives deliveries back without costing attempts).
pub const MAX_ATTEMPTS_LIMIT: u32 = 19;

const _: () = assert!(crate::broker::topology::DELIVERY_LIMIT > 10 * MAX_ATTEMPTS_LIMIT as i64);

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub connection: ConnectionConfig,
    /// Deliveries the broker may hand this worker ahead of the one in progress.
    pub prefetch: u16,
    /// Attempts at one chunk before its job is failed (1 to 19).
    pub max_attempts: u32,
    /// After SIGTERM, how long the chunk in hand may take before it is given back.
    pub grace_period: Duration,
    /// Chunks processed at once (one consume loop each).
    pub concurrency: usize,
    pub registry: JobRegistry,
    /// This worker's health, shared with its monitor.
    pub health: Arc<ServiceHealth>,
}

/// Runs a worker until `shutdown` is cancelled.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), ServiceError> {
    // Every broker URL is checked before anything is connected to (each consume loop keeps
    // its own rotation over the nodes).
    BrokerNodes::for_connection(&config.connection).map_err(ServiceError::InvalidAmqpUrl)?;
    let Some(store) = Store::connect_retrying(&config.connection, &shutdown).await? else {
        return Ok(());
    };
    store.warn_if_evicting().await;
    let topology = Topology::for_connection(&config.connection);
    let settings = ConsumerSettings {
        role: "worker",
        queue: topology.map_queue(),
        prefetch: config.prefetch,
        retry_pause: Duration::from_secs(1),
        grace_period: config.grace_period,
        health: config.health.clone(),
    };
    let faults = Faults::from_env();
    let max_attempts = config.max_attempts.clamp(1, MAX_ATTEMPTS_LIMIT);
    let handlers = (0..config.concurrency.max(1))
        .map(|_| MapHandler {
            store: store.clone(),
            registry: config.registry.clone(),
            topology: topology.clone(),
            jobs: JobCache::default(),
            faults: faults.clone(),
            max_attempts,
            commits: 0,
            open_attempt: None,
            cut_short: Vec::new(),
            refused_for_memory: Vec::new(),
        })
        .collect();
    service::run_consumers(&config.connection, &settings, handlers, &shutdown).await
}

struct MapHandler {
    store: Store,
    registry: JobRegistry,
    topology: Topology,
    jobs: JobCache,
    faults: Faults,
    max_attempts: u32,
    commits: u64,
    /// The attempt started by the task in hand (job, chunk), until it ends.
    open_attempt: Option<(String, u64)>,
    /// Attempts an outage cut short, to give back once Redis answers (before the next task).
    cut_short: Vec<(String, u64)>,
    /// Jobs whose writes Redis refused for lack of memory in the current outage: failed
    /// (saying so) if it outlasts the outage timeout.
    refused_for_memory: Vec<Arc<JobSpec>>,
}

impl MapHandler {
    /// Gives back the attempts an outage cut short; stops at the first that Redis refuses
    /// (the rest stay remembered).
    async fn give_back_cut_short(&mut self) -> Result<(), StoreError> {
        while let Some((job_id, chunk)) = self.cut_short.last() {
            self.store.give_back_attempt(job_id, *chunk).await?;
            tracing::info!(job_id = %job_id, chunk, "gave back an attempt an outage of Redis cut short");
            self.cut_short.pop();
        }
        Ok(())
    }

    /// Loads the task's job, decides the delivery step by step, and carries the decision
    /// out.
    async fn process(
        &mut self,
        task: MapTask,
        delivery: Task,
        publisher: &mut Publisher,
    ) -> Disposition {
        if let Err(error) = self.give_back_cut_short().await {
            return store_disposition(error);
        }
        let job = match self
            .jobs
            .load(&self.store, &self.registry, &task.job_id)
            .await
        {
            Ok(Loaded::Job(job)) => job,
            Ok(Loaded::Missing) => {
                return Disposition::DeadLetter(map::missing_job_reason(&task.job_id))
            }
            Ok(Loaded::Unbuildable { spec, error }) => {
                return self
                    .carry_out(map::unbuildable(&error), &task, &spec, publisher)
                    .await
            }
            Err(error) => return store_disposition(error),
        };
        let mapped = self.map_and_commit(&task, delivery, &job).await;
        let open_attempt = self.open_attempt.take();
        let action = match mapped {
            Ok(action) => action,
            Err(error) => {
                if let (true, Some(attempt)) = (error.is_outage(), open_attempt) {
                    // Redis failed the attempt, not the job code: it costs nothing.
                    self.cut_short.push(attempt);
                }
                if error.is_out_of_memory()
                    && !self.refused_for_memory.iter().any(|s| s.id == job.spec.id)
                {
                    self.refused_for_memory.push(job.spec.clone());
                }
                return store_disposition(error);
            }
        };
        self.carry_out(action, &task, &job.spec, publisher).await
    }

    /// Checks the delivery, maps the chunk off the reactor and commits its output; ends in
    /// what to do with the delivery.
    async fn map_and_commit(
        &mut self,
        task: &MapTask,
        delivery: Task,
        job: &LoadedJob,
    ) -> Result<MapAction, StoreError> {
        let spec = &job.spec;
        if let ControlFlow::Break(action) = map::on_job_state(job.state) {
            return Ok(action);
        }
        let body_len = delivery.body.len() as u64;
        let checked = map::check_body(task.chunk, body_len, spec.chunk_size, spec.max_record_size);
        if let ControlFlow::Break(action) = checked {
            return Ok(action);
        }
        // One round trip: the job's fresh state, and the attempt counted if it runs.
        let Some(start) = self.store.start_attempt(&spec.id, task.chunk).await? else {
            return Ok(map::after_commit(CommitOutcome::Missing, task));
        };
        self.jobs.refreshed(&spec.id, start.state);
        if let ControlFlow::Break(action) = map::on_job_state(start.state) {
            return Ok(action);
        }
        let attempt = match map::attempt(start.started, self.max_attempts) {
            Attempt::Within(attempt) => {
                self.open_attempt = Some((spec.id.to_string(), task.chunk));
                attempt
            }
            Attempt::Uncounted => 0,
            Attempt::Exhausted => {
                let last_error = self.store.chunk_error(&spec.id, task.chunk).await?;
                return Ok(map::attempts_exhausted(task, self.max_attempts, last_error));
            }
        };
        if self.faults.abort_on_chunk == Some(task.chunk) {
            tracing::error!("fault injection: aborting on this chunk");
            std::process::abort();
        }
        if self.faults.map_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.faults.map_delay_ms)).await;
        }
        let code = job.code.clone();
        let partitions = spec.partitions;
        let source = task.source.clone();
        let (offset, first_line, chunk) = (task.offset, task.first_line, task.chunk);
        let panic_on = self.faults.panic_on_chunk;
        let body = delivery.body;
        let map_started = Instant::now();
        let mapped = tokio::task::spawn_blocking(move || {
            if panic_on == Some(chunk) {
                panic!("fault injection: poison chunk {chunk}");
            }
            let ctx = ChunkContext {
                source: &source,
                offset,
                first_line,
                partitions,
            };
            code.map_chunk(&ctx, &body)
        })
        .await;
        let output = match mapped {
            Ok(Ok(output)) => {
                let records = output.counters.get("records_read").copied().unwrap_or(0);
                crate::metrics::chunk_mapped(map_started.elapsed(), body_len as usize, records);
                output
            }
            Ok(Err(error)) => return Ok(map::map_refused(task, &error)),
            Err(join_error) => {
                let cause = if join_error.is_panic() {
                    map::crash_cause(Some(&*join_error.into_panic()))
                } else {
                    map::crash_cause(None)
                };
                tracing::error!(attempt, cause = %cause, "map failed; the chunk will be retried");
                return Ok(map::map_crashed(attempt, cause));
            }
        };
        let commit_started = Instant::now();
        let committed = self
            .store
            .commit_chunk(spec, task.chunk, delivery.redelivered, &output)
            .await;
        crate::metrics::committed("worker", commit_started.elapsed());
        let outcome = committed?;
        if map::is_first_commit(&outcome) {
            self.commits += 1;
            if self.faults.crash_after_commit == Some(self.commits) {
                tracing::error!("fault injection: aborting after commit, before ack");
                std::process::abort();
            }
        }
        tracing::debug!(?outcome, "commit");
        if outcome == CommitOutcome::Completed {
            tracing::info!(partitions, "map phase complete; publishing reduce tasks");
        }
        Ok(map::after_commit(outcome, task))
    }

    /// Carries out a decision: the only place a map task's Redis writes (failing the job,
    /// noting an error) and reduce-task publishes happen.
    async fn carry_out(
        &mut self,
        action: MapAction,
        task: &MapTask,
        spec: &JobSpec,
        publisher: &mut Publisher,
    ) -> Disposition {
        match action {
            MapAction::Ack => Disposition::Ack,
            MapAction::DropDuplicate => {
                crate::metrics::duplicate("worker");
                tracing::info!("chunk already committed; dropping duplicate delivery");
                Disposition::Ack
            }
            MapAction::DropEnded(state) => {
                tracing::info!(%state, "task of an ended job; dropping");
                Disposition::Ack
            }
            MapAction::PublishReduceThenAck => self.publish_reduce(publisher, spec).await,
            MapAction::FailJob { reason, then } => {
                tracing::error!(job_id = %spec.id, reason, "failing job");
                self.jobs.mark_failed(&spec.id);
                match self.store.end_job(spec, JobState::Failed, &reason).await {
                    Ok(_) => then,
                    Err(error) => store_disposition(error),
                }
            }
            MapAction::RecordErrorThenRetry { error, reason } => {
                match self
                    .store
                    .record_chunk_error(&spec.id, task.chunk, &error)
                    .await
                {
                    Ok(()) => Disposition::Retry(reason),
                    Err(error) => store_disposition(error),
                }
            }
            MapAction::DeadLetter(reason) => Disposition::DeadLetter(reason),
        }
    }

    /// Publishes the job's reduce tasks; the delivery is acked only once they are confirmed,
    /// each confirm within the broker deadline.
    async fn publish_reduce(&self, publisher: &mut Publisher, spec: &JobSpec) -> Disposition {
        match publish_reduce_tasks(publisher, &self.topology, &spec.id, spec.partitions).await {
            Ok(()) => Disposition::Ack,
            // Not acked: the redelivery finds the job reducing and publishes again.
            Err(error) => map::reduce_publish_failed(&error),
        }
    }
}

impl TaskHandler for MapHandler {
    async fn recover(&mut self) -> Result<(), StoreError> {
        self.give_back_cut_short().await?;
        self.refused_for_memory.clear();
        Ok(())
    }

    async fn outage_outlasted(&mut self, waited: Duration) {
        let reason = map::out_of_memory_reason(waited.as_secs());
        for spec in std::mem::take(&mut self.refused_for_memory) {
            match self.store.fail_job_out_of_memory(&spec, &reason).await {
                Ok(_) => tracing::error!(job_id = %spec.id, reason, "failed the job"),
                Err(error) => {
                    tracing::error!(job_id = %spec.id, error = %error, "could not fail the job")
                }
            }
        }
    }

    async fn handle(&mut self, task: Task, publisher: &mut Publisher) -> Disposition {
        let map_task = match MapTask::decode(&task.properties) {
            Ok(map_task) => map_task,
            Err(error) => return Disposition::DeadLetter(format!("undecodable map task: {error}")),
        };
        let span = tracing::info_span!(
            "map",
            job_id = %map_task.job_id,
            chunk = map_task.chunk,
            bytes = task.body.len(),
            redelivered = task.redelivered,
            previous_deliveries = task.previous_deliveries,
        );
        self.process(map_task, task, publisher)
            .instrument(span)
            .await
    }
}
