//! The dead-letter watch reducers run beside their consume loops: it consumes
//! `ns.dead-watch`, the copy of every dead letter, and fails the live job a dead task
//! belongs to, naming the chunk or partition and the reason RabbitMQ recorded (its delivery
//! limit, a reject by a worker or by hand...), so no job waits forever for a task that will
//! never come back (invariant 1). `ns.dead` keeps its own copy for people to inspect.
//!
//! Failing a job is first-ending-wins (`end_job`): a job a worker already failed (with its
//! own reason, before rejecting the task) keeps that reason, and duplicates are harmless.
//!
//! Must not: fail a job for a task that is not one of its own or that was completed anyway
//! (the decision is [`crate::protocol::dead_letter::decide`]), or reject a dead letter
//! (this queue has no dead-letter exchange: a reject would lose it silently); it acks what
//! it decided on and requeues what it cannot decide yet.

use tracing::Instrument;

use crate::broker::consumer::{Task, TaskHandler};
use crate::broker::publisher::Publisher;
use crate::job::JobState;
use crate::protocol::dead_letter::{self, DeadTask, JobFacts, WatchAction};
use crate::protocol::Disposition;
use crate::store::{DeadTaskRef, Store, StoreError};

/// Fails the live jobs of dead-lettered tasks.
pub struct DeadLetterWatch {
    pub store: Store,
    /// The queue the dead letters are kept in, named in failure reasons.
    pub dead_letter_queue: String,
}

impl DeadLetterWatch {
    async fn process(
        &self,
        task: &DeadTask,
        death: &dead_letter::DeathRecord,
    ) -> Result<Disposition, StoreError> {
        let reference = match task {
            DeadTask::Map { task, .. } => DeadTaskRef::Chunk(task.chunk),
            DeadTask::Reduce(task) => DeadTaskRef::Partition(task.partition),
        };
        let found = self
            .store
            .dead_task_facts(task.job_id().as_str(), reference)
            .await?;
        let facts = found.as_ref().map(|found| JobFacts {
            state: found.state,
            total_chunks: found.total_chunks,
            partitions: found.spec.partitions,
            chunk_size: found.spec.chunk_size,
            max_record_size: found.spec.max_record_size,
            task_done: found.done,
            last_error: found.last_error.clone(),
            partition_leased: found.partition_leased,
        });
        match dead_letter::decide(task, facts.as_ref(), death, &self.dead_letter_queue) {
            WatchAction::Drop(why) => {
                tracing::info!(why = %why, "dead letter needs nothing done");
                Ok(Disposition::Ack)
            }
            WatchAction::Wait(why) => Ok(Disposition::Retry(why)),
            WatchAction::FailJob(reason) => {
                let Some(found) = found else {
                    return Ok(Disposition::Ack);
                };
                if self
                    .store
                    .end_job(&found.spec, JobState::Failed, &reason)
                    .await?
                {
                    tracing::error!(reason = %reason, "failed a job whose task was dead-lettered");
                } else {
                    tracing::info!("the job had ended already; its reason is kept");
                }
                Ok(Disposition::Ack)
            }
        }
    }
}

impl TaskHandler for DeadLetterWatch {
    async fn handle(&mut self, task: Task, _publisher: &mut Publisher) -> Disposition {
        let Some(dead) = DeadTask::decode(&task.properties, &task.body) else {
            tracing::info!("dead letter is not a task of any job; dropping its watch copy");
            return Disposition::Ack;
        };
        let death = dead_letter::death_record(task.properties.headers().as_ref());
        let span = tracing::info_span!(
            "dead_letter",
            job_id = %dead.job_id(),
            death = %death,
        );
        match self.process(&dead, &death).instrument(span).await {
            Ok(disposition) => disposition,
            Err(error) if error.is_transient() => Disposition::Retry(error.to_string()),
            Err(error) => {
                // A reject would lose the watch copy silently: keep it visible in the log.
                tracing::error!(error = %error, "cannot decide on a dead letter; dropping its watch copy (`ns.dead` keeps the message)");
                Disposition::Ack
            }
        }
    }
}
