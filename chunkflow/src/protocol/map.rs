//! What a map task's delivery means at each step, as plain functions over plain values: the
//! worker fetches the state (the job's record, the delivery count, the commit's outcome),
//! asks here, and carries out the [`MapAction`] it gets back.
//!
//! The steps, in order: the job's state ([`on_job_state`]); the body's size
//! ([`check_body`]); the attempts started at the chunk, counted in Redis as the attempt
//! starts ([`attempt`], [`attempts_exhausted`]; requeues that ran no job code are not
//! attempts, see ARCHITECTURE.md invariant 10); the job
//! code's answer ([`map_refused`], [`map_crashed`]); the commit's outcome
//! ([`after_commit`]). Every failure text a job or an operator sees is written here.
//!
//! Must not: touch Redis or the broker, sleep, or log.

use std::fmt::Display;
use std::ops::ControlFlow;

use crate::job::JobState;
use crate::protocol::messages::MapTask;
use crate::protocol::{lost_state_reason, panic_message, Disposition};
use crate::store::CommitOutcome;

/// What the worker does with a map task's delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapAction {
    /// The chunk is committed: ack.
    Ack,
    /// The chunk was committed before (a redelivery): count a duplicate and ack.
    DropDuplicate,
    /// The job has ended (succeeded, failed or cancelled): ack and drop the task.
    DropEnded(JobState),
    /// The map phase is complete: (re)publish the job's reduce tasks, with confirms, and ack
    /// only once they are confirmed (requeue otherwise, see [`reduce_publish_failed`]).
    PublishReduceThenAck,
    /// Mark the job failed with `reason`, then settle the delivery with `then`. If the job
    /// cannot be marked failed (Redis), the store error decides the delivery instead.
    FailJob { reason: String, then: Disposition },
    /// The job code crashed on the chunk: note `error` as the chunk's last error (for the
    /// failure reason once attempts run out), then requeue with `reason`.
    RecordErrorThenRetry { error: String, reason: String },
    /// The task can never succeed: reject it to the dead-letter queue.
    DeadLetter(String),
}

/// Why a map task's job cannot be found: its delivery is dead-lettered.
pub fn missing_job_reason(job_id: &str) -> String {
    format!(
        "job `{job_id}` does not exist in this namespace (expired, deleted, never created, or lost by Redis)"
    )
}

/// The job's code cannot be built by this worker (an unknown kind, parameters it refuses):
/// the job fails, and the task is dropped.
pub fn unbuildable(error: &dyn Display) -> MapAction {
    MapAction::FailJob {
        reason: format!("job code cannot be built by this worker: {error}"),
        then: Disposition::Ack,
    }
}

/// What the job's state (as loaded) means for one of its chunks: `Continue` to map it.
pub fn on_job_state(state: JobState) -> ControlFlow<MapAction> {
    match state {
        JobState::Running => ControlFlow::Continue(()),
        // Every chunk is committed; only the reduce tasks may be missing.
        JobState::Reducing => ControlFlow::Break(MapAction::PublishReduceThenAck),
        ended => ControlFlow::Break(MapAction::DropEnded(ended)),
    }
}

/// The largest body a chunk of this job may have: a chunk, or one record that outgrew it
/// (plus its line end).
pub fn body_limit(chunk_size: u64, max_record_size: u64) -> u64 {
    chunk_size.max(max_record_size + 2)
}

/// Refuses a body larger than the job's producer could have sent.
pub fn check_body(
    chunk: u64,
    body_len: u64,
    chunk_size: u64,
    max_record_size: u64,
) -> ControlFlow<MapAction> {
    let limit = body_limit(chunk_size, max_record_size);
    if body_len > limit {
        return ControlFlow::Break(MapAction::DeadLetter(format!(
            "chunk {chunk} is {body_len} bytes, more than the job's limit of {limit}: not a task this job's producer sent"
        )));
    }
    ControlFlow::Continue(())
}

/// Which attempt at a chunk a delivery is, against the allowed number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The n-th attempt (from 1), within `max_attempts`: map it.
    Within(u64),
    /// No attempt was started: the chunk is committed already (its commit will be a
    /// duplicate) or the job stopped running in the meantime.
    Uncounted,
    /// Past `max_attempts`: the job fails (see [`attempts_exhausted`]).
    Exhausted,
}

/// The attempt a delivery is, from the attempts started at its chunk, this one included
/// (counted in Redis as the attempt starts, less those an outage cut short; 0: none
/// started). A redelivery that ran no job code (a peek, a prefetched delivery given back,
/// an outage) started no attempt and costs none.
pub fn attempt(started: u64, max_attempts: u32) -> Attempt {
    match started {
        0 => Attempt::Uncounted,
        n if n > u64::from(max_attempts) => Attempt::Exhausted,
        n => Attempt::Within(n),
    }
}

/// A chunk that failed every allowed attempt fails its job, naming the chunk and the last
/// recorded error (none recorded: the process died or stalled each time), and goes to the
/// dead-letter queue.
pub fn attempts_exhausted(
    task: &MapTask,
    max_attempts: u32,
    last_error: Option<String>,
) -> MapAction {
    let last_error = last_error
        .unwrap_or_else(|| "the process handling it died or stalled each time".to_string());
    let reason = format!(
        "chunk {} (`{}`, line {}) failed on all {max_attempts} attempts; last error: {last_error}",
        task.chunk, task.source, task.first_line
    );
    fail_and_dead_letter(reason)
}

/// The job fails with `reason`, and the chunk goes to the dead-letter queue with the same
/// reason, for inspection.
fn fail_and_dead_letter(reason: String) -> MapAction {
    MapAction::FailJob {
        then: Disposition::DeadLetter(reason.clone()),
        reason,
    }
}

/// Why a job is failed when Redis stayed out of memory past `--outage-timeout` while its
/// chunks waited: what happened and what to do.
pub fn out_of_memory_reason(waited_secs: u64) -> String {
    format!(
        "Redis is out of memory (maxmemory reached under noeviction) and refused this job's \
         writes for {waited_secs} s, longer than --outage-timeout: raise Redis's maxmemory or \
         free memory (delete old jobs, shorten --ttl), then re-submit the job"
    )
}

/// Job code refused its input (bad input under a fail policy): retrying cannot help. The
/// job fails and the chunk goes to the dead-letter queue for inspection.
pub fn map_refused(task: &MapTask, error: &dyn Display) -> MapAction {
    let reason = format!(
        "map failed on chunk {} (`{}`, line {}): {error}",
        task.chunk, task.source, task.first_line
    );
    fail_and_dead_letter(reason)
}

/// What stopped the job code: its panic's message, or `None` for a cancelled task.
pub fn crash_cause(panic: Option<&(dyn std::any::Any + Send)>) -> String {
    match panic {
        Some(payload) => format!("panic: {}", panic_message(payload)),
        None => "map task was cancelled".to_string(),
    }
}

/// Job code crashed on attempt `attempt`: record why and requeue (the attempts bound it).
pub fn map_crashed(attempt: u64, cause: String) -> MapAction {
    MapAction::RecordErrorThenRetry {
        reason: format!("attempt {attempt} failed: {cause}"),
        error: cause,
    }
}

/// Whether a commit wrote the chunk (the first commit of it).
pub fn is_first_commit(outcome: &CommitOutcome) -> bool {
    matches!(outcome, CommitOutcome::Committed | CommitOutcome::Completed)
}

/// What a commit's outcome means for the delivery.
pub fn after_commit(outcome: CommitOutcome, task: &MapTask) -> MapAction {
    match outcome {
        CommitOutcome::Committed => MapAction::Ack,
        CommitOutcome::Duplicate => MapAction::DropDuplicate,
        // This commit completed the map phase; or it had been completed and the completing
        // worker may have died before publishing: (re)publish, duplicates are harmless.
        CommitOutcome::Completed | CommitOutcome::NotRunning(JobState::Reducing) => {
            MapAction::PublishReduceThenAck
        }
        CommitOutcome::NotRunning(state) => MapAction::DropEnded(state),
        CommitOutcome::Missing => MapAction::DeadLetter(format!(
            "job `{}` vanished from Redis while its tasks were queued (Redis lost its data?)",
            task.job_id
        )),
        CommitOutcome::OutOfRange { total } => MapAction::DeadLetter(format!(
            "chunk {} is beyond the job's {total} chunks",
            task.chunk
        )),
        CommitOutcome::Lost(detail) => MapAction::FailJob {
            reason: lost_state_reason(&detail),
            then: Disposition::Ack,
        },
    }
}

/// Reduce tasks that were not confirmed: requeue the delivery, whose redelivery finds the
/// job reducing and publishes them again.
pub fn reduce_publish_failed(error: &dyn Display) -> Disposition {
    Disposition::Retry(format!("publishing reduce tasks: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobId;

    fn task() -> MapTask {
        MapTask {
            job_id: JobId::parse("j1").unwrap(),
            chunk: 7,
            source: "in.txt".into(),
            offset: 700,
            first_line: 42,
        }
    }

    #[test]
    fn only_running_jobs_are_mapped() {
        assert_eq!(on_job_state(JobState::Running), ControlFlow::Continue(()));
        assert_eq!(
            on_job_state(JobState::Reducing),
            ControlFlow::Break(MapAction::PublishReduceThenAck)
        );
        for ended in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
            assert_eq!(
                on_job_state(ended),
                ControlFlow::Break(MapAction::DropEnded(ended))
            );
        }
    }

    #[test]
    fn a_missing_or_unbuildable_job_is_explained() {
        assert!(missing_job_reason("j1").contains("job `j1` does not exist in this namespace"));
        assert_eq!(
            unbuildable(&"unknown job kind `x`"),
            MapAction::FailJob {
                reason: "job code cannot be built by this worker: unknown job kind `x`".into(),
                then: Disposition::Ack,
            }
        );
    }

    #[test]
    fn bodies_up_to_a_chunk_or_a_record_pass() {
        assert_eq!(body_limit(1000, 100), 1000);
        assert_eq!(body_limit(100, 1000), 1002);
        assert_eq!(check_body(7, 1000, 1000, 100), ControlFlow::Continue(()));
        assert_eq!(check_body(7, 1002, 100, 1000), ControlFlow::Continue(()));
        let ControlFlow::Break(MapAction::DeadLetter(reason)) = check_body(7, 1001, 1000, 100)
        else {
            panic!("an oversized body is dead-lettered");
        };
        assert_eq!(
            reason,
            "chunk 7 is 1001 bytes, more than the job's limit of 1000: not a task this job's producer sent"
        );
    }

    #[test]
    fn attempts_count_from_one_up_to_the_limit() {
        assert_eq!(attempt(1, 3), Attempt::Within(1));
        assert_eq!(attempt(3, 3), Attempt::Within(3));
        assert_eq!(attempt(4, 3), Attempt::Exhausted);
        assert_eq!(attempt(u64::MAX, 19), Attempt::Exhausted);
        // A committed chunk (or a job no longer running) starts no attempt.
        assert_eq!(attempt(0, 1), Attempt::Uncounted);
    }

    #[test]
    fn exhausted_attempts_fail_the_job_naming_the_chunk_and_last_error() {
        let expected =
            "chunk 7 (`in.txt`, line 42) failed on all 3 attempts; last error: panic: boom";
        assert_eq!(
            attempts_exhausted(&task(), 3, Some("panic: boom".into())),
            MapAction::FailJob {
                reason: expected.into(),
                then: Disposition::DeadLetter(expected.into()),
            }
        );
        let MapAction::FailJob { reason, .. } = attempts_exhausted(&task(), 3, None) else {
            panic!("fails the job");
        };
        assert!(reason.ends_with("last error: the process handling it died or stalled each time"));
    }

    #[test]
    fn a_job_failed_for_lack_of_memory_says_what_to_do() {
        let reason = out_of_memory_reason(600);
        assert!(reason.starts_with("Redis is out of memory"), "{reason}");
        assert!(
            reason.contains("600 s") && reason.contains("raise Redis's maxmemory"),
            "{reason}"
        );
    }

    #[test]
    fn refused_input_fails_the_job_and_dead_letters_the_chunk() {
        let expected = "map failed on chunk 7 (`in.txt`, line 42): bad decimal";
        assert_eq!(
            map_refused(&task(), &"bad decimal"),
            MapAction::FailJob {
                reason: expected.into(),
                then: Disposition::DeadLetter(expected.into()),
            }
        );
    }

    #[test]
    fn a_crash_is_recorded_and_retried() {
        let payload: Box<dyn std::any::Any + Send> = Box::new("poison chunk 7");
        let cause = crash_cause(Some(&*payload));
        assert_eq!(cause, "panic: poison chunk 7");
        assert_eq!(crash_cause(None), "map task was cancelled");
        assert_eq!(
            map_crashed(2, cause),
            MapAction::RecordErrorThenRetry {
                error: "panic: poison chunk 7".into(),
                reason: "attempt 2 failed: panic: poison chunk 7".into(),
            }
        );
    }

    #[test]
    fn every_commit_outcome_has_an_action() {
        let task = task();
        let cases = [
            (CommitOutcome::Committed, MapAction::Ack),
            (CommitOutcome::Duplicate, MapAction::DropDuplicate),
            (CommitOutcome::Completed, MapAction::PublishReduceThenAck),
            (
                CommitOutcome::NotRunning(JobState::Reducing),
                MapAction::PublishReduceThenAck,
            ),
            (
                CommitOutcome::NotRunning(JobState::Cancelled),
                MapAction::DropEnded(JobState::Cancelled),
            ),
            (
                CommitOutcome::NotRunning(JobState::Succeeded),
                MapAction::DropEnded(JobState::Succeeded),
            ),
            (
                CommitOutcome::Missing,
                MapAction::DeadLetter(
                    "job `j1` vanished from Redis while its tasks were queued (Redis lost its data?)"
                        .into(),
                ),
            ),
            (
                CommitOutcome::OutOfRange { total: 5 },
                MapAction::DeadLetter("chunk 7 is beyond the job's 5 chunks".into()),
            ),
            (
                CommitOutcome::Lost("done holds 3 of 4".into()),
                MapAction::FailJob {
                    reason: lost_state_reason("done holds 3 of 4"),
                    then: Disposition::Ack,
                },
            ),
        ];
        for (outcome, action) in cases {
            assert_eq!(after_commit(outcome.clone(), &task), action, "{outcome:?}");
        }
    }

    #[test]
    fn only_first_commits_count() {
        assert!(is_first_commit(&CommitOutcome::Committed));
        assert!(is_first_commit(&CommitOutcome::Completed));
        for other in [
            CommitOutcome::Duplicate,
            CommitOutcome::Missing,
            CommitOutcome::NotRunning(JobState::Reducing),
            CommitOutcome::OutOfRange { total: 1 },
            CommitOutcome::Lost(String::new()),
        ] {
            assert!(!is_first_commit(&other), "{other:?}");
        }
    }

    #[test]
    fn unconfirmed_reduce_tasks_requeue() {
        assert_eq!(
            reduce_publish_failed(&"no confirm within 30s"),
            Disposition::Retry("publishing reduce tasks: no confirm within 30s".into())
        );
    }
}
