//! The worker: consumes map tasks, runs the job's map and combine on a blocking thread,
//! commits the chunk's output (all partitions, plus its `done` mark) in one atomic step,
//! and acks only after that commit. The commit that completes the map phase publishes the
//! reduce tasks, with confirms, before its delivery is acked.
//!
//! What it must not do: ack before the commit, count a chunk twice (the commit script
//! refuses a second commit of a chunk), run job code on the async reactor, or die on a bad
//! message (undecodable tasks go to the dead-letter queue and the loop carries on).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ConnectionArgs;
use crate::fault::Faults;
use crate::jobs::{ChunkContext, Job, JobRegistry, JobSpec};
use crate::messages::{MapTask, ReduceTask};
use crate::publisher::{PublishError, Publisher};
use crate::service::{self, ConsumerSettings, Disposition, ServiceError, Task, TaskHandler};
use crate::store::{CommitOutcome, JobState, Store, StoreError};
use crate::topology::Topology;

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub connection: ConnectionArgs,
    /// Deliveries the broker may hand this worker ahead of the one in progress.
    pub prefetch: u16,
    pub registry: JobRegistry,
}

/// Runs a worker until `shutdown` is cancelled.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), ServiceError> {
    let Some(store) = service::connect_store(&config.connection, &shutdown).await? else {
        return Ok(());
    };
    let topology = Topology::new(&config.connection.namespace);
    let settings = ConsumerSettings {
        role: "worker",
        queue: topology.map_queue(),
        prefetch: config.prefetch,
        retry_pause: Duration::from_secs(1),
    };
    let mut handler = MapHandler {
        store,
        registry: config.registry,
        topology,
        jobs: HashMap::new(),
        faults: Faults::from_env(),
        commits: 0,
    };
    service::run_consumer(&config.connection, &settings, &mut handler, &shutdown).await
}

/// A job's spec and code, loaded once per job.
#[derive(Clone)]
struct LoadedJob {
    spec: Arc<JobSpec>,
    code: Arc<dyn Job>,
}

struct MapHandler {
    store: Store,
    registry: JobRegistry,
    topology: Topology,
    jobs: HashMap<String, LoadedJob>,
    faults: Faults,
    commits: u64,
}

/// Publishes one reduce task per partition, and waits for every confirm.
pub async fn publish_reduce_tasks(
    publisher: &mut Publisher,
    topology: &Topology,
    job_id: &str,
    partitions: u32,
) -> Result<(), PublishError> {
    for partition in 0..partitions {
        let task = ReduceTask {
            job_id: job_id.to_string(),
            partition,
        };
        publisher
            .publish(
                &topology.reduce_queue(),
                &task.body(),
                task.properties(),
                format!("reduce task {}", task.message_id()),
            )
            .await?;
    }
    publisher.flush().await
}

fn store_disposition(error: StoreError) -> Disposition {
    if error.is_transient() {
        Disposition::Retry(error.to_string())
    } else {
        Disposition::DeadLetter(error.to_string())
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

impl MapHandler {
    async fn load_job(&mut self, job_id: &str) -> Result<Option<LoadedJob>, Disposition> {
        if let Some(job) = self.jobs.get(job_id) {
            return Ok(Some(job.clone()));
        }
        let Some(spec) = self
            .store
            .load_spec(job_id)
            .await
            .map_err(store_disposition)?
        else {
            return Ok(None);
        };
        let spec = Arc::new(spec);
        let code = match self.registry.build(&spec.kind, &spec.params) {
            Ok(code) => code,
            Err(error) => {
                let reason = format!("job code cannot be built: {error}");
                self.fail_job(&spec, &reason).await?;
                return Err(Disposition::Ack);
            }
        };
        if self.jobs.len() >= 256 {
            self.jobs.clear();
        }
        let job = LoadedJob { spec, code };
        self.jobs.insert(job_id.to_string(), job.clone());
        Ok(Some(job))
    }

    async fn fail_job(&self, spec: &JobSpec, reason: &str) -> Result<(), Disposition> {
        tracing::error!(job_id = %spec.id, reason, "failing job");
        self.store
            .end_job(spec, JobState::Failed, reason)
            .await
            .map(|_| ())
            .map_err(store_disposition)
    }

    async fn process(
        &mut self,
        task: MapTask,
        body: Vec<u8>,
        publisher: &mut Publisher,
    ) -> Disposition {
        let job = match self.load_job(&task.job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                return Disposition::DeadLetter(format!(
                "job `{}` does not exist in this namespace (expired, deleted, or never created)",
                task.job_id
            ))
            }
            Err(disposition) => return disposition,
        };
        if self.faults.map_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.faults.map_delay_ms)).await;
        }
        let code = job.code.clone();
        let partitions = job.spec.partitions;
        let source = task.source.clone();
        let (offset, first_line) = (task.offset, task.first_line);
        let mapped = tokio::task::spawn_blocking(move || {
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
            Ok(Ok(output)) => output,
            Ok(Err(error)) => {
                let reason = format!(
                    "map failed on chunk {} (`{}`, line {}): {error}",
                    task.chunk, task.source, task.first_line
                );
                return self
                    .fail_job(&job.spec, &reason)
                    .await
                    .err()
                    .unwrap_or(Disposition::Ack);
            }
            Err(join_error) => {
                let cause = if join_error.is_panic() {
                    panic_message(&*join_error.into_panic())
                } else {
                    "map task was cancelled".to_string()
                };
                let reason = format!(
                    "map panicked on chunk {} (`{}`, line {}): {cause}",
                    task.chunk, task.source, task.first_line
                );
                return self
                    .fail_job(&job.spec, &reason)
                    .await
                    .err()
                    .unwrap_or(Disposition::Ack);
            }
        };
        let outcome = match self
            .store
            .commit_chunk(&job.spec, task.chunk, &output)
            .await
        {
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
                tracing::info!("chunk already committed; dropping duplicate delivery");
                Disposition::Ack
            }
            CommitOutcome::Completed | CommitOutcome::NotRunning(JobState::Reducing) => {
                if outcome == CommitOutcome::Completed {
                    tracing::info!(partitions, "map phase complete; publishing reduce tasks");
                }
                match publish_reduce_tasks(publisher, &self.topology, &job.spec.id, partitions)
                    .await
                {
                    Ok(()) => Disposition::Ack,
                    // Not acked: the redelivery finds the job reducing and publishes again.
                    Err(error) => Disposition::Retry(format!("publishing reduce tasks: {error}")),
                }
            }
            CommitOutcome::NotRunning(state) => {
                tracing::info!(%state, "task of an ended job; dropping");
                Disposition::Ack
            }
            CommitOutcome::Missing => Disposition::DeadLetter(format!(
                "job `{}` vanished from Redis while its tasks were queued",
                task.job_id
            )),
            CommitOutcome::OutOfRange { total } => Disposition::DeadLetter(format!(
                "chunk {} is beyond the job's {total} chunks",
                task.chunk
            )),
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
            redelivered = task.redelivered
        );
        self.process(map_task, task.body, publisher)
            .instrument(span)
            .await
    }
}
