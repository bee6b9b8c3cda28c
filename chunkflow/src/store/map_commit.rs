//! The map phase's commit: one chunk's output to every partition, first commit wins, in
//! one-slot steps; the count of attempts started at a chunk (and given back after an
//! outage); and the notes of failed attempts at a chunk (for the failure reason).
//!
//! Invariants upheld here (ARCHITECTURE.md 3, 5, 10, 11):
//! - the partition steps (one script per partition with a non-empty partial, in the
//!   partition's slot) write the partial only if the chunk's field is absent and only while
//!   the partition's record exists and is open; they all return before the job step runs;
//! - the job step checks the job is running, adds the chunk to the done set and, only if it
//!   was not there, adds its counters and counts its non-empty outputs per partition
//!   (`outputs:P`); a second commit writes nothing, and a crash between steps is repaired by
//!   the redelivery redoing them all;
//! - a partition step that finds the partition's record missing while the job runs is lost
//!   state ([`CommitOutcome::Lost`]), never a commit without that partial;
//! - the commit of the last chunk of a sealed job moves it to `reducing` and is the one
//!   caller that sees [`CommitOutcome::Completed`];
//! - the commit count in the record and the done set's size move together: a mismatch is
//!   reported as [`CommitOutcome::Lost`], never papered over;
//! - an attempt is started (counted) only while the job runs and the chunk is not committed,
//!   in the same script that reads the job's state, and given back never below zero;
//! - an error note or a given-back attempt is written only while the job's record exists.
//!
//! Must not: decide what an outcome means for the delivery (ack, publish reduce tasks,
//! fail the job): the worker does.

use std::sync::LazyLock;

use deadpool_redis::redis::{self, Script};

use super::{load_script, parse_state, parse_u64, reply_tag, unexpected_reply, END_JOB_LUA};
use super::{ScriptKeys, Store, StoreError};
use crate::job::{now_ms, JobSpec, JobState};
use crate::jobs::MapOutput;

/// What committing a chunk did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// First commit of this chunk; the job is not complete yet.
    Committed,
    /// First commit of this chunk, and it completed the map phase: publish reduce tasks.
    Completed,
    /// The chunk was already committed; nothing written.
    Duplicate,
    /// The job is past the map phase; nothing written. `Reducing` means the map phase is
    /// complete, so reduce tasks are (re)published in case the completing commit's
    /// publisher died before publishing them.
    NotRunning(JobState),
    /// The job's record is gone (expired, deleted, or Redis lost its data).
    Missing,
    /// The chunk id is beyond the job's sealed total: a foreign or corrupt message.
    OutOfRange { total: u64 },
    /// Redis lost part of the job's state (restart without persistence, eviction).
    Lost(String),
}

/// What starting an attempt at a chunk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptStart {
    /// The job's state, read in the same step.
    pub state: JobState,
    /// Attempts started at the chunk, this one included; 0 when none was started (the job
    /// is not running, or the chunk is committed already).
    pub started: u64,
}

static START_ATTEMPT: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/start_attempt.lua"), &[]));
static GIVE_BACK_ATTEMPT: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/give_back_attempt.lua"), &[]));

/// `end_job.lua` flagged `allow-oom`: Redis runs it even when out of memory (it frees the
/// job's intermediate data), where the plain script is refused before it starts.
static END_JOB_UNDER_OOM: LazyLock<Script> = LazyLock::new(|| {
    let source = include_str!("lua/end_job.lua");
    let body = source.split_once('\n').map_or("", |(_, body)| body);
    load_script(&format!("#!lua flags=allow-oom\n{body}"), &[END_JOB_LUA])
});

static COMMIT_CHUNK: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/commit_chunk.lua"), &[]));
static COMMIT_PARTIAL: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/commit_partial.lua"), &[]));

/// What a chunk's partition step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartialStep {
    /// Written now, or by an earlier attempt: the partition holds the chunk's partial.
    Held,
    /// The partition is past its map phase (`reduced` or `closed`): nothing written.
    Closed,
    /// The partition's record is gone.
    Missing,
}

impl Store {
    /// Commits one chunk: its partition steps (concurrently, one per non-empty partial),
    /// then, once they all returned, its job step (ARCHITECTURE.md, invariant 3).
    pub async fn commit_chunk(
        &self,
        spec: &JobSpec,
        chunk: u64,
        redelivered: bool,
        output: &MapOutput,
    ) -> Result<CommitOutcome, StoreError> {
        let non_empty: Vec<u32> = (0..spec.partitions)
            .filter(|p| {
                output
                    .partials
                    .get(*p as usize)
                    .is_some_and(|b| !b.is_empty())
            })
            .collect();
        let steps = non_empty.iter().map(|partition| {
            let partial = &output.partials[*partition as usize];
            self.commit_partial(spec, *partition, chunk, partial)
        });
        let found = futures_util::future::try_join_all(steps).await?;
        if let Some(at) = found.iter().position(|step| *step == PartialStep::Missing) {
            // Gone with the job (expired, ended and cleaned up), lost by a node alone, or
            // looked for under another partition count than the job's.
            let job = self.keys.job(&spec.id);
            let (state, partitions): (Option<String>, Option<u32>) = self
                .invoke(
                    redis::cmd("HMGET")
                        .arg(job.meta())
                        .arg("state")
                        .arg("partitions"),
                )
                .await?;
            if partitions.is_some_and(|partitions| partitions != spec.partitions) {
                return Err(StoreError::Corrupt {
                    job: spec.id.to_string(),
                    what: format!(
                        "a commit named {} partitions but the job has {} partitions",
                        spec.partitions,
                        partitions.unwrap_or(0)
                    ),
                });
            }
            let state = state.map(|s| parse_state(&spec.id, Some(&s))).transpose()?;
            return Ok(match state {
                None => CommitOutcome::Missing,
                Some(state) if state.is_final() => CommitOutcome::NotRunning(state),
                Some(_) => CommitOutcome::Lost(format!(
                    "partition {} of the running job has no record (the Redis node holding \
                     it restarted empty?)",
                    non_empty[at]
                )),
            });
        }
        let job = self.keys.job(&spec.id);
        let mut invocation = ScriptKeys::new()
            .key("meta", job.meta())
            .key("done", job.chunks_done())
            .key("counters", job.counters())
            .key("stats", job.stats())
            .invocation(&COMMIT_CHUNK);
        invocation
            .arg(chunk)
            .arg(now_ms())
            .arg(u8::from(redelivered))
            .arg(output.counters.len());
        for (name, value) in &output.counters {
            invocation.arg(*name).arg(*value);
        }
        for partition in &non_empty {
            invocation.arg(*partition);
        }
        let reply: Vec<String> = self.invoke_replicated(&invocation, &job.meta()).await?;
        Ok(match reply_tag(&reply) {
            "committed" => CommitOutcome::Committed,
            "completed" => CommitOutcome::Completed,
            "duplicate" => CommitOutcome::Duplicate,
            "missing" => CommitOutcome::Missing,
            "not_running" => CommitOutcome::NotRunning(parse_state(&spec.id, reply.get(1))?),
            "out_of_range" => CommitOutcome::OutOfRange {
                total: parse_u64(&spec.id, reply.get(1))?,
            },
            "lost" => CommitOutcome::Lost(reply.get(1).cloned().unwrap_or_default()),
            other => return Err(unexpected_reply(&spec.id, "commit", other)),
        })
    }

    /// One partition step of a chunk's commit, in the partition's slot.
    async fn commit_partial(
        &self,
        spec: &JobSpec,
        partition: u32,
        chunk: u64,
        partial: &[u8],
    ) -> Result<PartialStep, StoreError> {
        let keys = self
            .keys
            .job(&spec.id)
            .partition(partition, spec.partitions);
        let mut invocation = ScriptKeys::new()
            .key("part", keys.record())
            .key("map", keys.data())
            .invocation(&COMMIT_PARTIAL);
        invocation.arg(chunk).arg(partial);
        let reply: String = self.invoke_replicated(&invocation, &keys.data()).await?;
        Ok(match reply.as_str() {
            "written" | "duplicate" => PartialStep::Held,
            "reduced" | "closed" => PartialStep::Closed,
            "missing" => PartialStep::Missing,
            other => return Err(unexpected_reply(&spec.id, "partition commit", other)),
        })
    }

    /// Reads the job's state and, while it runs and the chunk is not committed, counts one
    /// more attempt at the chunk: one round trip. `None` if the job does not exist.
    pub async fn start_attempt(
        &self,
        job_id: &str,
        chunk: u64,
    ) -> Result<Option<AttemptStart>, StoreError> {
        let job = self.keys.job(job_id);
        let mut invocation = ScriptKeys::new()
            .key("meta", job.meta())
            .key("done", job.chunks_done())
            .key("attempts", job.chunk_attempts())
            .invocation(&START_ATTEMPT);
        invocation.arg(chunk);
        let reply: Vec<String> = self.invoke(&invocation).await?;
        if reply_tag(&reply) == "missing" {
            return Ok(None);
        }
        Ok(Some(AttemptStart {
            state: parse_state(job_id, reply.first())?,
            started: parse_u64(job_id, reply.get(1))?,
        }))
    }

    /// Gives back an attempt at a chunk that an outage cut short (never below zero; nothing
    /// if the job is gone).
    pub async fn give_back_attempt(&self, job_id: &str, chunk: u64) -> Result<(), StoreError> {
        let job = self.keys.job(job_id);
        let mut invocation = ScriptKeys::new()
            .key("meta", job.meta())
            .key("attempts", job.chunk_attempts())
            .invocation(&GIVE_BACK_ATTEMPT);
        invocation.arg(chunk);
        let _left: i64 = self.invoke(&invocation).await?;
        Ok(())
    }

    /// Fails a running or reducing job even while Redis is out of memory (the script may
    /// write under OOM, and deletes the job's intermediate data); `false` if it had ended.
    pub async fn fail_job_out_of_memory(
        &self,
        spec: &JobSpec,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let job = self.keys.job(&spec.id);
        let mut invocation = Store::job_keys(&job).invocation(&END_JOB_UNDER_OOM);
        invocation
            .arg(reason)
            .arg(spec.ttl_secs)
            .arg(now_ms())
            .arg(JobState::Failed.as_str());
        let reply: String = self.invoke_replicated(&invocation, &job.meta()).await?;
        let ended = reply == "ended";
        if ended {
            self.close_partitions(spec, true).await?;
        }
        Ok(ended)
    }

    /// Records the last error of a failed attempt at a chunk (for the failure reason).
    pub async fn record_chunk_error(
        &self,
        job_id: &str,
        chunk: u64,
        error: &str,
    ) -> Result<(), StoreError> {
        let job = self.keys.job(job_id);
        self.hset_if_job_exists(&job, job.chunk_errors(), &chunk.to_string(), error)
            .await
    }

    /// The last recorded error of a chunk, if any.
    pub async fn chunk_error(
        &self,
        job_id: &str,
        chunk: u64,
    ) -> Result<Option<String>, StoreError> {
        self.invoke(
            redis::cmd("HGET")
                .arg(self.keys.job(job_id).chunk_errors())
                .arg(chunk),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{map_output, spec, TestStore};
    use super::super::SealOutcome;
    use super::*;

    #[tokio::test]
    async fn the_first_commit_wins_and_a_duplicate_writes_nothing() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = spec("j", 3);
        assert_eq!(
            store
                .commit_chunk(&spec, 0, false, &map_output(&[b"a"]))
                .await
                .unwrap(),
            CommitOutcome::Missing
        );
        store.create_job(&spec).await.unwrap();
        let first = map_output(&[b"a0", b"", b"c0"]);
        assert_eq!(
            store.commit_chunk(&spec, 0, false, &first).await.unwrap(),
            CommitOutcome::Committed
        );
        // A redelivery's partition steps find their fields: the first attempt's partials
        // stay (a map is deterministic, so a redelivery writes the same partitions).
        let second = map_output(&[b"OTHER", b"", b"OTHER"]);
        assert_eq!(
            store.commit_chunk(&spec, 0, true, &second).await.unwrap(),
            CommitOutcome::Duplicate
        );
        // Only non-empty partials are stored, and counted per partition.
        assert_chunk_0_committed_once(&test, &spec).await;
        let status = store.status("j").await.unwrap().unwrap();
        assert_eq!(status.stats.get("deliveries"), Some(&2));
        assert_eq!(status.stats.get("redeliveries"), Some(&1));
        assert_eq!(status.stats.get("duplicates"), Some(&1));
    }

    #[tokio::test]
    async fn the_last_commit_of_a_sealed_job_completes_it_exactly_once() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = spec("j", 2);
        store.create_job(&spec).await.unwrap();
        let output = map_output(&[b"a", b"b"]);
        assert_eq!(
            store.commit_chunk(&spec, 1, false, &output).await.unwrap(),
            CommitOutcome::Committed
        );
        assert_eq!(
            store.seal_job("j", 3).await.unwrap(),
            SealOutcome::Sealed { committed: 1 }
        );
        assert_eq!(
            store.commit_chunk(&spec, 0, false, &output).await.unwrap(),
            CommitOutcome::Committed
        );
        assert_eq!(
            store.commit_chunk(&spec, 2, false, &output).await.unwrap(),
            CommitOutcome::Completed
        );
        // A redelivery after completion writes nothing and says the job is reducing.
        assert_eq!(
            store.commit_chunk(&spec, 2, true, &output).await.unwrap(),
            CommitOutcome::NotRunning(JobState::Reducing)
        );
        let status = store.status("j").await.unwrap().unwrap();
        assert_eq!(status.state, JobState::Reducing);
        assert_eq!(status.chunks_committed, 3);
    }

    #[tokio::test]
    async fn a_chunk_beyond_the_sealed_total_is_out_of_range() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = spec("j", 1);
        store.create_job(&spec).await.unwrap();
        store.seal_job("j", 2).await.unwrap();
        assert_eq!(
            store
                .commit_chunk(&spec, 2, false, &map_output(&[b"a"]))
                .await
                .unwrap(),
            CommitOutcome::OutOfRange { total: 2 }
        );
        assert_eq!(
            store.status("j").await.unwrap().unwrap().chunks_committed,
            0
        );
    }

    #[tokio::test]
    async fn a_lost_done_set_is_detected() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = spec("j", 1);
        store.create_job(&spec).await.unwrap();
        let output = map_output(&[b"a"]);
        store.commit_chunk(&spec, 0, false, &output).await.unwrap();
        let done = store.keys.job("j").chunks_done();
        let _: i64 = test.raw(redis::cmd("DEL").arg(&done)).await;
        assert!(matches!(
            store.commit_chunk(&spec, 1, false, &output).await.unwrap(),
            CommitOutcome::Lost(reason) if reason.contains("1 members but 2 commits")
        ));
    }

    #[tokio::test]
    async fn partition_keys_that_disagree_with_the_job_are_refused() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = spec("j", 2);
        store.create_job(&spec).await.unwrap();
        let mut wrong = spec.clone();
        wrong.partitions = 3;
        let error = store
            .commit_chunk(&wrong, 0, false, &map_output(&[b"a", b"b", b"c"]))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("has 2 partitions"), "{error}");
        let status = store.status("j").await.unwrap().unwrap();
        assert_eq!(status.chunks_committed, 0);
        assert!(status.stats.is_empty(), "refused before the first write");
    }

    #[tokio::test]
    async fn attempts_are_counted_while_running_and_given_back_never_below_zero() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        assert_eq!(store.start_attempt("j", 0).await.unwrap(), None);
        store.give_back_attempt("j", 0).await.unwrap();
        let attempts = store.keys.job("j").chunk_attempts();
        assert!(!test.exists(&attempts).await, "nothing recreated");
        let spec = spec("j", 1);
        store.create_job(&spec).await.unwrap();
        let running = |started| AttemptStart {
            state: JobState::Running,
            started,
        };
        assert_eq!(store.start_attempt("j", 0).await.unwrap(), Some(running(1)));
        assert_eq!(store.start_attempt("j", 0).await.unwrap(), Some(running(2)));
        assert_eq!(store.start_attempt("j", 1).await.unwrap(), Some(running(1)));
        // An outage cut the second attempt short: given back.
        store.give_back_attempt("j", 0).await.unwrap();
        assert_eq!(store.start_attempt("j", 0).await.unwrap(), Some(running(2)));
        for _ in 0..3 {
            store.give_back_attempt("j", 0).await.unwrap();
        }
        assert_eq!(
            store.start_attempt("j", 0).await.unwrap(),
            Some(running(1)),
            "never below zero"
        );
        // A committed chunk starts no attempt.
        store
            .commit_chunk(&spec, 0, false, &map_output(&[b"a"]))
            .await
            .unwrap();
        assert_eq!(store.start_attempt("j", 0).await.unwrap(), Some(running(0)));
        // Nor does a job that is not running; ending it deletes the counts.
        store
            .end_job(&spec, JobState::Cancelled, "stop")
            .await
            .unwrap();
        assert_eq!(
            store.start_attempt("j", 1).await.unwrap(),
            Some(AttemptStart {
                state: JobState::Cancelled,
                started: 0
            })
        );
        assert!(!test.exists(&attempts).await, "deleted with the job's data");
    }

    #[tokio::test]
    async fn a_job_failed_for_lack_of_memory_ends_once_and_frees_its_data() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = spec("j", 2);
        store.create_job(&spec).await.unwrap();
        store
            .commit_chunk(&spec, 0, false, &map_output(&[b"a", b"b"]))
            .await
            .unwrap();
        assert!(store
            .fail_job_out_of_memory(&spec, "Redis is out of memory")
            .await
            .unwrap());
        let status = store.status("j").await.unwrap().unwrap();
        assert_eq!(status.state, JobState::Failed);
        assert!(
            !test
                .exists(&store.keys.job("j").partition(0, spec.partitions).data())
                .await
        );
        assert!(
            !store.fail_job_out_of_memory(&spec, "again").await.unwrap(),
            "a job ends once"
        );
    }

    #[tokio::test]
    async fn error_notes_are_kept_only_for_existing_jobs() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        store.record_chunk_error("gone", 3, "boom").await.unwrap();
        assert_eq!(store.chunk_error("gone", 3).await.unwrap(), None);
        store.create_job(&spec("j", 1)).await.unwrap();
        store.record_chunk_error("j", 3, "boom").await.unwrap();
        store.record_chunk_error("j", 3, "bang").await.unwrap();
        store.record_chunk_error("j", 1, "first").await.unwrap();
        assert_eq!(
            store.chunk_error("j", 3).await.unwrap().as_deref(),
            Some("bang")
        );
        let failures = store.failures("j").await.unwrap();
        assert_eq!(
            failures,
            vec![
                super::super::Failure {
                    chunk: 1,
                    error: "first".into()
                },
                super::super::Failure {
                    chunk: 3,
                    error: "bang".into()
                },
            ]
        );
    }

    /// Chunk 0 of a 3-partition job, output `a0`, nothing, `c0`, committed and counted
    /// once: its partials in partitions 0 and 2, its counters added once.
    async fn assert_chunk_0_committed_once(test: &TestStore, spec: &JobSpec) {
        assert_eq!(test.partials(spec, 0).await, (vec![(0, b"a0".to_vec())], 1));
        assert_eq!(test.partials(spec, 1).await, (vec![], 0));
        assert_eq!(test.partials(spec, 2).await, (vec![(0, b"c0".to_vec())], 1));
        let status = test.store.status(&spec.id).await.unwrap().unwrap();
        assert_eq!(status.chunks_committed, 1);
        assert_eq!(
            status.counters.get("records_read"),
            Some(&2),
            "counted once"
        );
    }

    #[tokio::test]
    async fn a_crash_between_the_partition_steps_and_the_job_step_is_repaired_by_the_redelivery() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = spec("j", 3);
        store.create_job(&spec).await.unwrap();
        // The first attempt wrote one partition step, then its process died.
        assert_eq!(
            store.commit_partial(&spec, 2, 0, b"c0").await.unwrap(),
            PartialStep::Held
        );
        assert_eq!(
            test.partials(&spec, 2).await,
            (vec![(0, b"c0".to_vec())], 0)
        );
        assert_eq!(
            store.status("j").await.unwrap().unwrap().chunks_committed,
            0
        );
        // The redelivery redoes every step: nothing is written twice, all is counted once.
        let output = map_output(&[b"a0", b"", b"c0"]);
        assert_eq!(
            store.commit_chunk(&spec, 0, true, &output).await.unwrap(),
            CommitOutcome::Committed
        );
        assert_chunk_0_committed_once(&test, &spec).await;
    }

    #[tokio::test]
    async fn a_partition_record_that_vanished_is_lost_state_never_a_commit_without_it() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = spec("j", 2);
        store.create_job(&spec).await.unwrap();
        // The node holding partition 1's slot restarted empty.
        let record = store.keys.job("j").partition(1, 2).record();
        let _: i64 = test.raw(redis::cmd("DEL").arg(&record)).await;
        let outcome = store
            .commit_chunk(&spec, 0, false, &map_output(&[b"a", b"b"]))
            .await
            .unwrap();
        assert!(
            matches!(&outcome, CommitOutcome::Lost(what) if what.contains("partition 1")),
            "{outcome:?}"
        );
        assert!(!test.exists(&record).await, "never recreated");
        assert_eq!(
            store.status("j").await.unwrap().unwrap().chunks_committed,
            0
        );
        // Nor by a resumed producer: the job's record notes that its partitions exist.
        store.ensure_partitions(&spec).await.unwrap();
        assert!(!test.exists(&record).await, "never recreated");
    }

    #[tokio::test]
    async fn a_partition_of_an_ended_job_takes_no_partial() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = spec("j", 2);
        store.create_job(&spec).await.unwrap();
        assert!(store
            .end_job(&spec, JobState::Cancelled, "stop")
            .await
            .unwrap());
        // A worker that mapped before the end commits late: nothing is written anywhere.
        assert_eq!(
            store.commit_partial(&spec, 0, 0, b"late").await.unwrap(),
            PartialStep::Closed
        );
        assert_eq!(
            store
                .commit_chunk(&spec, 0, false, &map_output(&[b"late", b"late"]))
                .await
                .unwrap(),
            CommitOutcome::NotRunning(JobState::Cancelled)
        );
        for partition in 0..2 {
            let keys = store.keys.job("j").partition(partition, 2);
            assert!(!test.exists(&keys.data()).await);
            let ttl = test.ttl(&keys.record()).await;
            assert!((1..=60).contains(&ttl), "the record expires: {ttl}");
        }
        let progress = store.job_progress("j").await.unwrap().unwrap();
        assert!(progress.partitions_closed);
    }
}
