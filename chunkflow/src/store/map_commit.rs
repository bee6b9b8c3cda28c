//! The map phase's commit: one chunk's output to every partition, atomically, first commit
//! wins; the count of attempts started at a chunk (and given back after an outage); and the
//! notes of failed attempts at a chunk (for the failure reason).
//!
//! Invariants upheld here (ARCHITECTURE.md 3, 5, 10, 11):
//! - one script checks the job is running, adds the chunk to the done set and, only if it
//!   was not there, writes its non-empty partials (counted per partition in the record as
//!   `outputs:P`) and its counters; a second commit writes nothing;
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

impl Store {
    /// Commits one chunk's output to every partition and marks it done, atomically.
    pub async fn commit_chunk(
        &self,
        spec: &JobSpec,
        chunk: u64,
        redelivered: bool,
        output: &MapOutput,
    ) -> Result<CommitOutcome, StoreError> {
        let job = self.keys.job(&spec.id);
        let mut invocation = ScriptKeys::new()
            .key("meta", job.meta())
            .key("done", job.chunks_done())
            .key("counters", job.counters())
            .key("stats", job.stats())
            .group("map", (0..spec.partitions).map(|p| job.partition_data(p)))
            .invocation(&COMMIT_CHUNK);
        invocation
            .arg(chunk)
            .arg(now_ms())
            .arg(u8::from(redelivered))
            .arg(output.counters.len());
        for (name, value) in &output.counters {
            invocation.arg(*name).arg(*value);
        }
        for partition in 0..spec.partitions as usize {
            let partial: &[u8] = output.partials.get(partition).map_or(&[], Vec::as_slice);
            invocation.arg(partial);
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
        let mut invocation = Store::job_keys(&job, spec.partitions).invocation(&END_JOB_UNDER_OOM);
        invocation
            .arg(reason)
            .arg(spec.ttl_secs)
            .arg(now_ms())
            .arg(JobState::Failed.as_str());
        let reply: String = self.invoke_replicated(&invocation, &job.meta()).await?;
        Ok(reply == "ended")
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
        let second = map_output(&[b"OTHER", b"OTHER", b"OTHER"]);
        assert_eq!(
            store.commit_chunk(&spec, 0, true, &second).await.unwrap(),
            CommitOutcome::Duplicate
        );
        // Only non-empty partials are stored, and counted per partition.
        assert_eq!(
            store.partition_partials("j", 0).await.unwrap(),
            (vec![(0, b"a0".to_vec())], 1)
        );
        assert_eq!(store.partition_partials("j", 1).await.unwrap(), (vec![], 0));
        assert_eq!(
            store.partition_partials("j", 2).await.unwrap(),
            (vec![(0, b"c0".to_vec())], 1)
        );
        let status = store.status("j").await.unwrap().unwrap();
        assert_eq!(status.chunks_committed, 1);
        assert_eq!(
            status.counters.get("records_read"),
            Some(&2),
            "counted once"
        );
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
        assert!(!test.exists(&store.keys.job("j").partition_data(0)).await);
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
}
