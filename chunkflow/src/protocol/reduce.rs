//! What a reduce task's delivery means at each step, as plain functions over plain values:
//! the reducer fetches the state (the job's record, the lease, the partition's outputs, the
//! commit's outcome), asks here, and carries out the [`ReduceAction`] it gets back.
//!
//! The steps, in order: the task against its job, the partition and its lease, read in one
//! round trip ([`on_begin`]); the partition's completeness ([`partition_is_complete`],
//! [`on_incomplete`]); the job code's answer ([`reduce_refused`], [`reduce_crashed`]); the
//! commit's outcome ([`after_commit`]). The janitor's decision about jobs whose producer
//! vanished ([`is_abandoned`], [`abandoned_reason`]) and about partitions whose lease
//! expired mid-reduce ([`expired_grants`]) are here too.
//!
//! Must not: touch Redis or the broker, sleep, or log.

use std::fmt::Display;
use std::ops::ControlFlow;
use std::time::Duration;

use crate::job::JobState;
use crate::protocol::{lost_state_reason, panic_message};
use crate::store::{BeginReduce, LeaseFacts, ReduceCommitOutcome, ReduceStart};

/// What the reducer does with a reduce task's delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReduceAction {
    /// Done, or nothing left to do (the lease's job is gone, another reducer finished the
    /// partition): ack.
    Ack,
    /// This commit reduced the job's last partition: the job succeeded; ack.
    Succeeded,
    /// The partition was reduced before (a duplicate task): count a duplicate and ack.
    DropDuplicate,
    /// The job is not (or no longer) reducing: ack and drop the task.
    DropNotReducing(JobState),
    /// Mark the job failed with this reason, then ack. If the job cannot be marked failed
    /// (Redis), the store error decides the delivery instead.
    FailJob(String),
    /// May succeed later (the lease is busy, or was taken over): requeue.
    Retry(String),
    /// The task can never succeed: reject it to the dead-letter queue.
    DeadLetter(String),
}

/// Why a reduce task's job cannot be found: its delivery is dead-lettered.
pub fn missing_job_reason(job_id: &str) -> String {
    format!("job `{job_id}` does not exist in this namespace (expired, or lost by Redis)")
}

/// What beginning a partition's reduce found (one round trip: the job's state, whether
/// the partition is reduced, the lease, the partition's outputs): `Continue` with what to
/// reduce under the lease, or what to do with the delivery instead.
pub fn on_begin(
    begun: BeginReduce,
    job_id: &str,
    partition: u32,
) -> ControlFlow<ReduceAction, ReduceStart> {
    match begun {
        BeginReduce::Acquired(start) => ControlFlow::Continue(start),
        BeginReduce::Missing => {
            ControlFlow::Break(ReduceAction::DeadLetter(missing_job_reason(job_id)))
        }
        BeginReduce::OutOfRange { partitions } => ControlFlow::Break(ReduceAction::DeadLetter(
            format!("partition {partition} is beyond the job's {partitions} partitions"),
        )),
        BeginReduce::NotReducing(state) => ControlFlow::Break(ReduceAction::DropNotReducing(state)),
        BeginReduce::AlreadyReduced => ControlFlow::Break(ReduceAction::DropDuplicate),
        // An earlier attempt stored the result; its job step ran now.
        BeginReduce::Finished(outcome) => {
            ControlFlow::Break(after_commit(outcome, job_id, partition, 0))
        }
        BeginReduce::Lost { what, .. } => {
            ControlFlow::Break(ReduceAction::FailJob(lost_state_reason(&what)))
        }
        BeginReduce::Busy(remaining) => ControlFlow::Break(ReduceAction::Retry(format!(
            "partition {partition} is leased by another reducer for {remaining:?} more"
        ))),
    }
}

/// The job's code cannot be built by this reducer: the job fails.
pub fn unbuildable(error: &dyn Display) -> ReduceAction {
    ReduceAction::FailJob(format!("job code cannot be built by this reducer: {error}"))
}

/// Whether a partition holds every chunk output committed to it: exactly `committed`
/// outputs (the job record's count) from chunks below the sealed `total`. Fields of chunk
/// ids beyond the total (a forged task's partition step) are not counted, and not merged
/// ([`in_range`]).
pub fn partition_is_complete(
    held: impl IntoIterator<Item = u64>,
    committed: u64,
    total: u64,
) -> bool {
    held.into_iter().filter(|chunk| *chunk < total).count() as u64 == committed
}

/// The partials a reducer merges: those of chunks below the sealed `total`, the only ones
/// a job step can have counted (ARCHITECTURE.md, invariant 3).
pub fn in_range(partials: Vec<(u64, Vec<u8>)>, total: u64) -> Vec<(u64, Vec<u8>)> {
    partials
        .into_iter()
        .filter(|(chunk, _)| *chunk < total)
        .collect()
}

/// A partition that does not hold exactly its committed outputs (read atomically with its
/// lease, so no other reducer can have finished it meanwhile): fewer means Redis lost data,
/// more means a map that is not deterministic; the job fails saying which.
pub fn on_incomplete(partition: u32, held: usize, committed: u64) -> ReduceAction {
    if held as u64 > committed {
        // More than committed: partition steps of two attempts at a chunk wrote different
        // partitions, which only a map whose output differs between runs does.
        return ReduceAction::FailJob(format!(
            "partition {partition} holds {held} chunk outputs but {committed} were committed \
             to it: the job's map is not deterministic (two attempts at a chunk wrote \
             different partitions); make its output depend on the chunk alone"
        ));
    }
    ReduceAction::FailJob(lost_state_reason(&format!(
        "partition {partition} holds {held} of the {committed} chunk outputs committed to it"
    )))
}

/// Job code refused to reduce: the job fails.
pub fn reduce_refused(partition: u32, error: &dyn Display) -> ReduceAction {
    ReduceAction::FailJob(format!("reduce failed on partition {partition}: {error}"))
}

/// Job code panicked (`Some` payload) or was cancelled (`None`): the job fails.
pub fn reduce_crashed(partition: u32, panic: Option<&(dyn std::any::Any + Send)>) -> ReduceAction {
    let cause = match panic {
        Some(payload) => panic_message(payload),
        None => "cancelled".to_string(),
    };
    ReduceAction::FailJob(format!("reduce panicked on partition {partition}: {cause}"))
}

/// What a partition commit's outcome means for the delivery.
pub fn after_commit(
    outcome: ReduceCommitOutcome,
    job_id: &str,
    partition: u32,
    token: u64,
) -> ReduceAction {
    match outcome {
        ReduceCommitOutcome::Reduced => ReduceAction::Ack,
        ReduceCommitOutcome::Succeeded => ReduceAction::Succeeded,
        ReduceCommitOutcome::Duplicate => ReduceAction::DropDuplicate,
        // Requeue rather than ack: the redelivery finds the partition reduced by the lease's
        // new holder, or, if that one died too, reduces it again.
        ReduceCommitOutcome::Fenced => ReduceAction::Retry(format!(
            "lease token {token} on partition {partition} was taken over while reducing; result discarded"
        )),
        ReduceCommitOutcome::NotReducing(state) => ReduceAction::DropNotReducing(state),
        ReduceCommitOutcome::Missing => {
            ReduceAction::DeadLetter(format!("job `{job_id}` vanished from Redis while reducing"))
        }
        ReduceCommitOutcome::Lost(what) => ReduceAction::FailJob(lost_state_reason(&what)),
    }
}

/// How often the janitor looks for abandoned jobs: a quarter of the producer timeout,
/// between 200 ms and 15 s.
pub fn janitor_period(producer_timeout: Duration) -> Duration {
    (producer_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(15))
}

/// Whether a job was abandoned by its producer: still running, never sealed, and its
/// producer silent for `producer_timeout` or longer.
pub fn is_abandoned(
    state: JobState,
    sealed: bool,
    silent: Duration,
    producer_timeout: Duration,
) -> bool {
    state == JobState::Running && !sealed && silent.as_millis() >= producer_timeout.as_millis()
}

/// Whether an ended job's partitions still need closing: it failed or was cancelled and its
/// record lacks the note that its partitions were closed (its ender died in between). A
/// succeeded job's partitions closed themselves, each in its reduce commit.
pub fn needs_closing(state: JobState, partitions_closed: bool) -> bool {
    matches!(state, JobState::Failed | JobState::Cancelled) && !partitions_closed
}

/// The reason an abandoned job fails with.
pub fn abandoned_reason(silent: Duration, producer_timeout: Duration) -> String {
    format!(
        "the producer stopped publishing before all chunks were sent (silent for {:.0}s, \
         past the {:?} producer timeout); re-submit the job",
        silent.as_millis() as f64 / 1000.0,
        producer_timeout
    )
}

/// How often the janitor sweeps: often enough for both of its duties, abandoned jobs
/// ([`janitor_period`]) and expired leases (half a lease), never more than 5 times a second.
pub fn janitor_sweep_period(producer_timeout: Duration, lease: Duration) -> Duration {
    janitor_period(producer_timeout).min((lease / 2).max(Duration::from_millis(200)))
}

/// How long after republishing an expired grant's reduce task the janitor republishes it
/// again if still no reducer took the partition (no new grant): the republished message
/// may have been prefetched by the frozen reducer itself. Three leases, at least 2 s.
pub fn republish_again_after(lease: Duration) -> Duration {
    (lease * 3).max(Duration::from_secs(2))
}

/// The grants `(partition, token)` whose reduce task the janitor republishes: a lease was
/// granted on the partition, it is no longer held, the partition is not reduced, and this
/// grant was not republished before, or was republished `again_after` ago or longer and
/// nobody took the partition since. A task merely waiting in the queue has no grant; a
/// holder still renewing holds its lease; so only a holder that froze or died mid-reduce
/// (whose delivery may stay unacked) gets its partition handed to another reducer.
pub fn expired_grants(
    leases: &[LeaseFacts],
    now_ms: u64,
    again_after: Duration,
) -> Vec<(u32, u64)> {
    let again_after_ms = again_after.as_millis() as u64;
    leases
        .iter()
        .filter(|lease| !lease.reduced && !lease.held)
        .filter_map(|lease| {
            let token = lease.granted?;
            let first_time = lease.republished != Some(token);
            let again = now_ms.saturating_sub(lease.republished_ms) >= again_after_ms;
            (first_time || again).then_some((lease.partition, token))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> ReduceStart {
        ReduceStart {
            spec: serde_json::from_value(serde_json::json!({
                "version": crate::job::SPEC_VERSION, "id": "j", "kind": "wordcount",
                "partitions": 4, "chunk_size": 1, "max_record_size": 1,
                "created_ms": 1, "ttl_secs": 1,
            }))
            .expect("a valid spec"),
            total_chunks: Some(2),
            token: 9,
            partials: vec![(0, b"a".to_vec())],
            committed_outputs: 1,
        }
    }

    #[test]
    fn every_begin_outcome_has_an_action() {
        assert_eq!(
            on_begin(BeginReduce::Acquired(start()), "j", 2),
            ControlFlow::Continue(start())
        );
        assert_eq!(
            on_begin(BeginReduce::OutOfRange { partitions: 4 }, "j", 4),
            ControlFlow::Break(ReduceAction::DeadLetter(
                "partition 4 is beyond the job's 4 partitions".into()
            ))
        );
        for state in [
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ] {
            assert_eq!(
                on_begin(BeginReduce::NotReducing(state), "j", 0),
                ControlFlow::Break(ReduceAction::DropNotReducing(state))
            );
        }
        assert_eq!(
            on_begin(BeginReduce::AlreadyReduced, "j", 0),
            ControlFlow::Break(ReduceAction::DropDuplicate)
        );
        assert_eq!(
            on_begin(BeginReduce::Busy(Duration::from_secs(3)), "j", 2),
            ControlFlow::Break(ReduceAction::Retry(
                "partition 2 is leased by another reducer for 3s more".into()
            ))
        );
        let ControlFlow::Break(ReduceAction::DeadLetter(reason)) =
            on_begin(BeginReduce::Missing, "j1", 0)
        else {
            panic!("a missing job dead-letters its task");
        };
        assert!(reason.starts_with("job `j1` does not exist"), "{reason}");
    }

    #[test]
    fn completeness_compares_held_outputs_with_committed_and_total() {
        assert!(partition_is_complete([0, 2, 5], 3, 6));
        assert!(
            partition_is_complete([], 0, 6),
            "a partition no chunk wrote to"
        );
        assert!(!partition_is_complete([0, 2], 3, 6), "an output lost");
        assert!(
            !partition_is_complete([0, 2, 6], 3, 6),
            "a chunk beyond the total"
        );
        assert!(
            !partition_is_complete([0, 2, 5], 2, 6),
            "more than committed"
        );
    }

    #[test]
    fn an_incomplete_partition_fails_the_job() {
        assert_eq!(
            on_incomplete(1, 2, 3),
            ReduceAction::FailJob(lost_state_reason(
                "partition 1 holds 2 of the 3 chunk outputs committed to it"
            ))
        );
    }

    #[test]
    fn job_code_failures_fail_the_job() {
        assert_eq!(
            unbuildable(&"unknown job kind `x`"),
            ReduceAction::FailJob(
                "job code cannot be built by this reducer: unknown job kind `x`".into()
            )
        );
        assert_eq!(
            reduce_refused(3, &"overflow"),
            ReduceAction::FailJob("reduce failed on partition 3: overflow".into())
        );
        let payload: Box<dyn std::any::Any + Send> = Box::new(String::from("boom"));
        assert_eq!(
            reduce_crashed(3, Some(&*payload)),
            ReduceAction::FailJob("reduce panicked on partition 3: boom".into())
        );
        assert_eq!(
            reduce_crashed(3, None),
            ReduceAction::FailJob("reduce panicked on partition 3: cancelled".into())
        );
    }

    #[test]
    fn every_commit_outcome_has_an_action() {
        let cases = [
            (ReduceCommitOutcome::Reduced, ReduceAction::Ack),
            (ReduceCommitOutcome::Succeeded, ReduceAction::Succeeded),
            (ReduceCommitOutcome::Duplicate, ReduceAction::DropDuplicate),
            (
                ReduceCommitOutcome::Fenced,
                ReduceAction::Retry(
                    "lease token 5 on partition 1 was taken over while reducing; result discarded"
                        .into(),
                ),
            ),
            (
                ReduceCommitOutcome::NotReducing(JobState::Cancelled),
                ReduceAction::DropNotReducing(JobState::Cancelled),
            ),
            (
                ReduceCommitOutcome::Missing,
                ReduceAction::DeadLetter("job `j1` vanished from Redis while reducing".into()),
            ),
        ];
        for (outcome, action) in cases {
            assert_eq!(
                after_commit(outcome.clone(), "j1", 1, 5),
                action,
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn abandoned_means_running_unsealed_and_silent_too_long() {
        let timeout = Duration::from_secs(60);
        let long = Duration::from_secs(61);
        assert!(is_abandoned(JobState::Running, false, long, timeout));
        assert!(is_abandoned(JobState::Running, false, timeout, timeout));
        assert!(!is_abandoned(
            JobState::Running,
            false,
            Duration::from_secs(59),
            timeout
        ));
        assert!(
            !is_abandoned(JobState::Running, true, long, timeout),
            "sealed"
        );
        assert!(!is_abandoned(JobState::Reducing, false, long, timeout));
        assert!(!is_abandoned(JobState::Cancelled, false, long, timeout));
        let reason = abandoned_reason(Duration::from_millis(61_400), timeout);
        assert_eq!(
            reason,
            "the producer stopped publishing before all chunks were sent (silent for 61s, \
             past the 60s producer timeout); re-submit the job"
        );
    }

    #[test]
    fn the_janitor_sweeps_often_but_not_too_often() {
        assert_eq!(
            janitor_period(Duration::from_secs(60)),
            Duration::from_secs(15)
        );
        assert_eq!(
            janitor_period(Duration::from_secs(8)),
            Duration::from_secs(2)
        );
        assert_eq!(
            janitor_period(Duration::from_millis(100)),
            Duration::from_millis(200)
        );
        assert_eq!(
            janitor_period(Duration::from_secs(3600)),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn only_expired_grants_of_unreduced_partitions_are_republished() {
        let lease = |partition, reduced, granted, held, republished, republished_ms| LeaseFacts {
            partition,
            reduced,
            granted,
            held,
            republished,
            republished_ms,
        };
        let again = Duration::from_secs(3);
        let leases = [
            lease(0, false, None, false, None, 0),   // waiting in the queue
            lease(1, false, Some(4), true, None, 0), // held, being reduced
            lease(2, true, Some(5), false, None, 0), // reduced
            lease(3, false, Some(6), false, None, 0), // expired: republish
            lease(4, false, Some(7), false, Some(7), 9_000), // republished 1 s ago
            lease(5, false, Some(9), false, Some(8), 9_000), // a newer grant expired
            lease(6, false, Some(9), false, Some(9), 7_000), // republished 3 s ago, untaken
        ];
        assert_eq!(
            expired_grants(&leases, 10_000, again),
            vec![(3, 6), (5, 9), (6, 9)]
        );
        assert!(expired_grants(&[], 10_000, again).is_empty());
        assert_eq!(
            republish_again_after(Duration::from_secs(1)),
            Duration::from_secs(3)
        );
        assert_eq!(
            republish_again_after(Duration::from_millis(100)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn the_janitor_sweeps_for_the_shorter_of_its_duties() {
        let minute = Duration::from_secs(60);
        assert_eq!(
            janitor_sweep_period(minute, Duration::from_secs(1)),
            Duration::from_millis(500)
        );
        assert_eq!(
            janitor_sweep_period(minute, Duration::from_secs(60)),
            Duration::from_secs(15)
        );
        assert_eq!(
            janitor_sweep_period(minute, Duration::from_millis(100)),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn more_outputs_than_committed_name_a_nondeterministic_map_not_lost_data() {
        let ReduceAction::FailJob(fewer) = on_incomplete(2, 3, 4) else {
            panic!("an incomplete partition fails the job");
        };
        assert!(
            fewer.contains("lost") && fewer.contains("partition 2"),
            "{fewer}"
        );
        let ReduceAction::FailJob(more) = on_incomplete(2, 5, 4) else {
            panic!("an overfull partition fails the job");
        };
        assert!(more.contains("not deterministic"), "{more}");
    }

    #[test]
    fn forged_chunk_ids_are_neither_counted_nor_merged() {
        assert!(partition_is_complete([0, 1, 7], 2, 2));
        assert!(!partition_is_complete([0], 2, 2));
        let merged = in_range(vec![(0, b"a".to_vec()), (9, b"x".to_vec())], 2);
        assert_eq!(merged, vec![(0, b"a".to_vec())]);
    }

    #[test]
    fn only_failed_or_cancelled_jobs_without_the_note_need_closing() {
        assert!(needs_closing(JobState::Failed, false));
        assert!(needs_closing(JobState::Cancelled, false));
        assert!(!needs_closing(JobState::Failed, true));
        assert!(!needs_closing(JobState::Succeeded, false));
        assert!(!needs_closing(JobState::Running, false));
    }
}
