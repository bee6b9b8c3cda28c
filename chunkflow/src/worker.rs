//! The worker: consumes map tasks, runs the job's map and combine on a blocking thread,
//! commits the chunk's output (all partitions, plus its `done` mark) in one atomic step,
//! and acks only after that commit. The commit that completes the map phase publishes the
//! reduce tasks, with confirms, before its delivery is acked.
//!
//! What it must not do: ack before the commit, count a chunk twice (the commit script
//! refuses a second commit of a chunk), run job code on the async reactor, or die on a bad
//! message (undecodable tasks go to the dead-letter queue and the loop carries on).
//!
//! Failures are classified: Redis unreachable → requeue and retry; a panic in job code →
//! requeue, up to `max_attempts` deliveries of the chunk (counted by the quorum queue, so
//! a worker that dies on the chunk counts too), then the job fails naming the chunk and the
//! last error, and the task is dead-lettered; an error returned by job code (bad input under
//! a fail policy) → the job fails at once; a task of an ended job → acked and dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::broker::consumer::{self as service, ConsumerSettings, ServiceError, Task, TaskHandler};
use crate::broker::publisher::{publish_reduce_tasks, Publisher};
use crate::broker::topology::Topology;
use crate::config::ConnectionConfig;
use crate::fault::Faults;
use crate::health::ServiceHealth;
use crate::job::JobState;
use crate::jobs::{ChunkContext, Job, JobRegistry, JobSpec};
use crate::protocol::messages::MapTask;
use crate::protocol::Disposition;
use crate::protocol::{lost_state_reason, panic_message, store_disposition};
use crate::store::{CommitOutcome, Store};

/// Largest accepted `max_attempts`: the queue's own delivery limit must stay a backstop.
pub const MAX_ATTEMPTS_LIMIT: u32 = crate::broker::topology::DELIVERY_LIMIT as u32 - 1;

/// How stale a job's cached state may be before a task re-reads it (cancel latency).
const STATE_REFRESH: Duration = Duration::from_millis(250);

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub connection: ConnectionConfig,
    /// Deliveries the broker may hand this worker ahead of the one in progress.
    pub prefetch: u16,
    /// Deliveries of one chunk before its job is failed (1 to 19).
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
    let Some(store) = service::connect_store(&config.connection, &shutdown).await? else {
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
            jobs: HashMap::new(),
            faults: faults.clone(),
            max_attempts,
            commits: 0,
        })
        .collect();
    service::run_consumers(&config.connection, &settings, handlers, &shutdown).await
}

/// A job's spec and code, loaded once per job, and its state as last read.
#[derive(Clone)]
struct LoadedJob {
    spec: Arc<JobSpec>,
    code: Arc<dyn Job>,
    state: JobState,
    checked: Instant,
}

struct MapHandler {
    store: Store,
    registry: JobRegistry,
    topology: Topology,
    jobs: HashMap<String, LoadedJob>,
    faults: Faults,
    max_attempts: u32,
    commits: u64,
}

impl MapHandler {
    /// The job's spec, code and fresh-enough state; `Ok(None)` if the job does not exist.
    async fn load_job(&mut self, job_id: &str) -> Result<Option<LoadedJob>, Disposition> {
        if let Some(job) = self.jobs.get_mut(job_id) {
            if job.state.is_final() || job.checked.elapsed() < STATE_REFRESH {
                return Ok(Some(job.clone()));
            }
            match self
                .store
                .job_progress(job_id)
                .await
                .map_err(store_disposition)?
            {
                Some((state, _, _)) => {
                    job.state = state;
                    job.checked = Instant::now();
                    return Ok(Some(job.clone()));
                }
                None => {
                    self.jobs.remove(job_id);
                    return Ok(None);
                }
            }
        }
        let Some(status) = self.store.status(job_id).await.map_err(store_disposition)? else {
            return Ok(None);
        };
        let spec = Arc::new(status.spec);
        let code = match self.registry.build(&spec.kind, &spec.params) {
            Ok(code) => code,
            Err(error) => {
                let reason = format!("job code cannot be built by this worker: {error}");
                self.fail_job(&spec, &reason).await?;
                return Err(Disposition::Ack);
            }
        };
        if self.jobs.len() >= 256 {
            self.jobs.clear();
        }
        let job = LoadedJob {
            spec,
            code,
            state: status.state,
            checked: Instant::now(),
        };
        self.jobs.insert(job_id.to_string(), job.clone());
        Ok(Some(job))
    }

    async fn fail_job(&mut self, spec: &JobSpec, reason: &str) -> Result<(), Disposition> {
        tracing::error!(job_id = %spec.id, reason, "failing job");
        if let Some(job) = self.jobs.get_mut(spec.id.as_str()) {
            job.state = JobState::Failed;
        }
        self.store
            .end_job(spec, JobState::Failed, reason)
            .await
            .map(|_| ())
            .map_err(store_disposition)
    }

    async fn process(
        &mut self,
        task: MapTask,
        delivery: Task,
        publisher: &mut Publisher,
    ) -> Disposition {
        let job = match self.load_job(&task.job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                return Disposition::DeadLetter(format!(
                    "job `{}` does not exist in this namespace (expired, deleted, never created, or lost by Redis)",
                    task.job_id
                ))
            }
            Err(disposition) => return disposition,
        };
        match job.state {
            JobState::Running => {}
            JobState::Reducing => {
                // Every chunk is committed; only the reduce tasks may be missing.
                return self.publish_reduce(publisher, &job.spec).await;
            }
            state => {
                tracing::info!(%state, "task of an ended job; dropping");
                return Disposition::Ack;
            }
        }
        let body_limit = job.spec.chunk_size.max(job.spec.max_record_size + 2);
        if delivery.body.len() as u64 > body_limit {
            return Disposition::DeadLetter(format!(
                "chunk {} is {} bytes, more than the job's limit of {body_limit}: not a task this job's producer sent",
                task.chunk,
                delivery.body.len()
            ));
        }
        let attempt = delivery.previous_deliveries + 1;
        if attempt > u64::from(self.max_attempts) {
            let last_error = match self.store.chunk_error(&job.spec.id, task.chunk).await {
                Ok(Some(error)) => error,
                Ok(None) => "the process handling it died or stalled each time".to_string(),
                Err(error) => return store_disposition(error),
            };
            let reason = format!(
                "chunk {} (`{}`, line {}) failed on all {} attempts; last error: {last_error}",
                task.chunk, task.source, task.first_line, self.max_attempts
            );
            return match self.fail_job(&job.spec, &reason).await {
                Ok(()) => Disposition::DeadLetter(reason),
                Err(disposition) => disposition,
            };
        }
        if self.faults.abort_on_chunk == Some(task.chunk) {
            tracing::error!("fault injection: aborting on this chunk");
            std::process::abort();
        }
        if self.faults.map_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.faults.map_delay_ms)).await;
        }
        let code = job.code.clone();
        let partitions = job.spec.partitions;
        let source = task.source.clone();
        let (offset, first_line, chunk) = (task.offset, task.first_line, task.chunk);
        let panic_on = self.faults.panic_on_chunk;
        let body = delivery.body;
        let (map_started, body_len) = (Instant::now(), body.len());
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
                crate::metrics::chunk_mapped(map_started.elapsed(), body_len, records);
                output
            }
            Ok(Err(error)) => {
                // Job code refused its input: retrying cannot help. The job fails and the
                // chunk goes to the dead-letter queue for inspection.
                let reason = format!(
                    "map failed on chunk {} (`{}`, line {}): {error}",
                    task.chunk, task.source, task.first_line
                );
                return match self.fail_job(&job.spec, &reason).await {
                    Ok(()) => Disposition::DeadLetter(reason),
                    Err(disposition) => disposition,
                };
            }
            Err(join_error) => {
                let cause = if join_error.is_panic() {
                    format!("panic: {}", panic_message(&*join_error.into_panic()))
                } else {
                    "map task was cancelled".to_string()
                };
                tracing::error!(attempt, cause = %cause, "map failed; the chunk will be retried");
                if let Err(error) = self
                    .store
                    .record_chunk_error(&job.spec.id, task.chunk, &cause)
                    .await
                {
                    return store_disposition(error);
                }
                return Disposition::Retry(format!("attempt {attempt} failed: {cause}"));
            }
        };
        let commit_started = Instant::now();
        let committed = self
            .store
            .commit_chunk(&job.spec, task.chunk, delivery.redelivered, &output)
            .await;
        crate::metrics::committed("worker", commit_started.elapsed());
        let outcome = match committed {
            Ok(outcome) => outcome,
            Err(error) => return store_disposition(error),
        };
        if matches!(outcome, CommitOutcome::Committed | CommitOutcome::Completed) {
            self.commits += 1;
            if self.faults.crash_after_commit == Some(self.commits) {
                tracing::error!("fault injection: aborting after commit, before ack");
                std::process::abort();
            }
        }
        tracing::debug!(?outcome, "commit");
        match outcome {
            CommitOutcome::Committed => Disposition::Ack,
            CommitOutcome::Duplicate => {
                crate::metrics::duplicate("worker");
                tracing::info!("chunk already committed; dropping duplicate delivery");
                Disposition::Ack
            }
            CommitOutcome::Completed => {
                tracing::info!(partitions, "map phase complete; publishing reduce tasks");
                self.publish_reduce(publisher, &job.spec).await
            }
            CommitOutcome::NotRunning(JobState::Reducing) => {
                self.publish_reduce(publisher, &job.spec).await
            }
            CommitOutcome::NotRunning(state) => {
                tracing::info!(%state, "task of an ended job; dropping");
                Disposition::Ack
            }
            CommitOutcome::Missing => Disposition::DeadLetter(format!(
                "job `{}` vanished from Redis while its tasks were queued (Redis lost its data?)",
                task.job_id
            )),
            CommitOutcome::OutOfRange { total } => Disposition::DeadLetter(format!(
                "chunk {} is beyond the job's {total} chunks",
                task.chunk
            )),
            CommitOutcome::Lost(detail) => {
                let reason = lost_state_reason(&detail);
                self.fail_job(&job.spec, &reason)
                    .await
                    .err()
                    .unwrap_or(Disposition::Ack)
            }
        }
    }

    /// Publishes the job's reduce tasks; the delivery is acked only once they are confirmed.
    async fn publish_reduce(&self, publisher: &mut Publisher, spec: &JobSpec) -> Disposition {
        match publish_reduce_tasks(publisher, &self.topology, &spec.id, spec.partitions).await {
            Ok(()) => Disposition::Ack,
            // Not acked: the redelivery finds the job reducing and publishes again.
            Err(error) => Disposition::Retry(format!("publishing reduce tasks: {error}")),
        }
    }
}

impl TaskHandler for MapHandler {
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
