//! The reducer: consumes reduce tasks, merges one partition's chunk outputs on a blocking
//! thread, and stores the partition's result and its `reduced` mark in one atomic step.
//! The step that reduces the last partition marks the job succeeded, deletes the
//! intermediate data and puts a time to live on the job's keys.
//!
//! Before reducing, it checks that the partition holds exactly one output per chunk of the
//! job: if Redis lost intermediate data, the job fails saying so, rather than producing a
//! silently wrong result. Two reducers given the same partition store one result.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ConnectionArgs;
use crate::jobs::{JobRegistry, JobSpec};
use crate::messages::ReduceTask;
use crate::publisher::Publisher;
use crate::service::{self, ConsumerSettings, Disposition, ServiceError, Task, TaskHandler};
use crate::store::{JobState, ReduceCommitOutcome, Store, StoreError};
use crate::topology::Topology;

/// Reducer settings.
#[derive(Debug, Clone)]
pub struct ReducerConfig {
    pub connection: ConnectionArgs,
    pub prefetch: u16,
    pub registry: JobRegistry,
}

/// Runs a reducer until `shutdown` is cancelled.
pub async fn run(config: ReducerConfig, shutdown: CancellationToken) -> Result<(), ServiceError> {
    let Some(store) = service::connect_store(&config.connection, &shutdown).await? else {
        return Ok(());
    };
    let topology = Topology::new(&config.connection.namespace);
    let settings = ConsumerSettings {
        role: "reducer",
        queue: topology.reduce_queue(),
        prefetch: config.prefetch,
        retry_pause: Duration::from_secs(1),
    };
    let mut handler = ReduceHandler {
        store,
        registry: config.registry,
    };
    service::run_consumer(&config.connection, &settings, &mut handler, &shutdown).await
}

struct ReduceHandler {
    store: Store,
    registry: JobRegistry,
}

fn store_disposition(error: StoreError) -> Disposition {
    if error.is_transient() {
        Disposition::Retry(error.to_string())
    } else {
        Disposition::DeadLetter(error.to_string())
    }
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
                "job `{}` does not exist in this namespace",
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
            tracing::info!("partition already reduced; dropping duplicate task");
            return Ok(Disposition::Ack);
        }
        let code = match self.registry.build(&spec.kind, &spec.params) {
            Ok(code) => code,
            Err(error) => {
                return Ok(self
                    .fail_job(&spec, format!("job code cannot be built: {error}"))
                    .await)
            }
        };
        let total = status.total_chunks.unwrap_or(0);
        let partials = self
            .store
            .partition_partials(&spec.id, task.partition)
            .await?;
        let complete =
            partials.len() as u64 == total && partials.iter().all(|(chunk, _)| *chunk < total);
        if !complete {
            // A concurrent reducer may have finished this partition and deleted its data.
            if self.store.is_reduced(&spec.id, task.partition).await? {
                return Ok(Disposition::Ack);
            }
            let reason = format!(
                "intermediate data of partition {} is incomplete: {} of {} chunk outputs present; \
                 Redis lost data (a restart without persistence, or eviction under maxmemory)",
                task.partition,
                partials.len(),
                total
            );
            return Ok(self.fail_job(&spec, reason).await);
        }
        let partition = task.partition;
        let reduced = tokio::task::spawn_blocking(move || {
            let data = partials.into_iter().map(|(_, data)| data).collect();
            code.reduce_partition(data)
        })
        .await;
        let output = match reduced {
            Ok(Ok(output)) => output,
            Ok(Err(error)) => {
                return Ok(self
                    .fail_job(
                        &spec,
                        format!("reduce failed on partition {partition}: {error}"),
                    )
                    .await)
            }
            Err(join_error) => {
                return Ok(self
                    .fail_job(
                        &spec,
                        format!("reduce panicked on partition {partition}: {join_error}"),
                    )
                    .await)
            }
        };
        let outcome = self
            .store
            .commit_partition(&spec, partition, &output)
            .await?;
        Ok(match outcome {
            ReduceCommitOutcome::Reduced => Disposition::Ack,
            ReduceCommitOutcome::Succeeded => {
                tracing::info!("last partition reduced; job succeeded");
                Disposition::Ack
            }
            ReduceCommitOutcome::Duplicate => Disposition::Ack,
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
