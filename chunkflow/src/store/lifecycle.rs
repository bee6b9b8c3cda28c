//! A job's lifecycle in Redis: created with its spec (before any task is published), sealed
//! with its total once every chunk is confirmed, ended once (failed or cancelled), a
//! tombstone for a job whose whole record Redis lost, and the producer's heartbeat.
//!
//! Invariants upheld here (ARCHITECTURE.md 2, 5, 11, 12):
//! - spec first, total last: `create_job` refuses a taken id; `seal_job` refuses a second,
//!   different total and a done set holding chunk ids beyond the total;
//! - the seal that finds every chunk already committed is the one caller that sees
//!   [`SealOutcome::Completed`] (the `running → reducing` transition is in the script);
//! - a job ends once: `end_job` changes only a running or reducing job; the first ending
//!   wins, deletes the intermediate data and puts the TTL on the rest;
//! - a dead-lettered task's facts (state, total, whether it is done, its last error) are
//!   read in one round trip, for the reducers' dead-letter watch to decide on;
//! - nothing recreates part of a job: the heartbeat and error notes write only while the
//!   job's record exists, and the tombstone writes only where nothing is.
//!
//! Must not: decide when a job should end (the roles do), or write a job's data keys
//! outside a script.

use std::sync::LazyLock;

use deadpool_redis::redis::{self, Script};

use super::keys::JobKeys;
use super::{load_script, parse_spec, parse_state, parse_u64, reply_tag, unexpected_reply};
use super::{ScriptKeys, Store, StoreError, END_JOB_LUA};
use crate::job::{now_ms, JobSpec, JobState};

/// What Redis holds about a dead-lettered task's job (see [`Store::dead_task_facts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DeadTaskFacts {
    pub spec: JobSpec,
    pub state: JobState,
    pub total_chunks: Option<u64>,
    /// The chunk is committed (a map task) or the partition reduced (a reduce task).
    pub done: bool,
    /// The last error a worker recorded for the chunk (map tasks only).
    pub last_error: Option<String>,
    /// A lease was ever granted on the partition (reduce tasks only).
    pub partition_leased: bool,
}

/// Which task a dead letter was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadTaskRef {
    Chunk(u64),
    Partition(u32),
}

/// What sealing a job (recording its total number of chunks) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealOutcome {
    /// Total recorded; chunks still outstanding.
    Sealed {
        committed: u64,
    },
    /// Total recorded and every chunk already committed: publish reduce tasks.
    Completed,
    NotRunning(JobState),
    Missing,
    /// A different total was recorded before (a resumed submit over different input).
    Mismatch {
        recorded: u64,
    },
    /// The done set holds chunk ids beyond the total.
    Corrupt(String),
    /// Redis lost part of the job's state.
    Lost(String),
}

static CREATE_JOB: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/create_job.lua"), &[]));
static SEAL_JOB: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/seal_job.lua"), &[]));
static END_JOB: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/end_job.lua"), &[END_JOB_LUA]));
static TOMBSTONE: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/tombstone.lua"), &[]));
static HSET_IF_JOB_EXISTS: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/hset_if_job_exists.lua"), &[]));

fn spec_json(spec: &JobSpec) -> Result<String, StoreError> {
    serde_json::to_string(spec).map_err(|e| StoreError::Corrupt {
        job: spec.id.to_string(),
        what: e.to_string(),
    })
}

impl Store {
    /// Stores a new job's spec; fails if the id is taken.
    pub async fn create_job(&self, spec: &JobSpec) -> Result<(), StoreError> {
        let job = self.keys.job(&spec.id);
        let mut invocation = ScriptKeys::new()
            .key("meta", job.meta())
            .invocation(&CREATE_JOB);
        invocation
            .arg(spec_json(spec)?)
            .arg(spec.partitions)
            .arg(spec.created_ms);
        let created: i64 = self.invoke(&invocation).await?;
        if created == 0 {
            return Err(StoreError::JobExists(spec.id.to_string()));
        }
        // The index is not in the job's slot, so it is written apart from the record.
        let _added: i64 = self
            .invoke(
                redis::cmd("ZADD")
                    .arg(self.keys.jobs_index())
                    .arg(spec.created_ms)
                    .arg(spec.id.as_str()),
            )
            .await?;
        Ok(())
    }

    /// Records the total number of chunks once all are published; detects completion if
    /// every chunk was already committed.
    pub async fn seal_job(&self, job_id: &str, total: u64) -> Result<SealOutcome, StoreError> {
        let job = self.keys.job(job_id);
        let mut invocation = ScriptKeys::new()
            .key("meta", job.meta())
            .key("done", job.chunks_done())
            .invocation(&SEAL_JOB);
        invocation.arg(total).arg(now_ms());
        let reply: Vec<String> = self.invoke_replicated(&invocation, &job.meta()).await?;
        Ok(match reply_tag(&reply) {
            "sealed" => SealOutcome::Sealed {
                committed: parse_u64(job_id, reply.get(1))?,
            },
            "completed" => SealOutcome::Completed,
            "missing" => SealOutcome::Missing,
            "corrupt" => SealOutcome::Corrupt(reply.get(1).cloned().unwrap_or_default()),
            "lost" => SealOutcome::Lost(reply.get(1).cloned().unwrap_or_default()),
            "not_running" => SealOutcome::NotRunning(parse_state(job_id, reply.get(1))?),
            "mismatch" => SealOutcome::Mismatch {
                recorded: parse_u64(job_id, reply.get(1))?,
            },
            other => return Err(unexpected_reply(job_id, "seal", other)),
        })
    }

    /// Ends a running or reducing job as `failed` (or `cancelled`) with a reason; returns
    /// `false` if it had already ended (the first ending wins).
    pub async fn end_job(
        &self,
        spec: &JobSpec,
        state: JobState,
        reason: &str,
    ) -> Result<bool, StoreError> {
        debug_assert!(matches!(state, JobState::Failed | JobState::Cancelled));
        let job = self.keys.job(&spec.id);
        let mut invocation = Store::job_keys(&job, spec.partitions).invocation(&END_JOB);
        invocation
            .arg(reason)
            .arg(spec.ttl_secs)
            .arg(now_ms())
            .arg(state.as_str());
        let reply: String = self.invoke_replicated(&invocation, &job.meta()).await?;
        Ok(reply == "ended")
    }

    /// What a dead-lettered task's job looks like, in one round trip: its spec, state and
    /// sealed total, whether the task's chunk is committed or partition reduced, the
    /// chunk's last recorded error, and whether a lease was ever granted on the partition. `None` if the job's record does not exist.
    pub async fn dead_task_facts(
        &self,
        job_id: &str,
        task: DeadTaskRef,
    ) -> Result<Option<DeadTaskFacts>, StoreError> {
        let job = self.keys.job(job_id);
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(job.meta())
            .arg("state")
            .arg("total")
            .arg("spec");
        match task {
            DeadTaskRef::Chunk(chunk) => {
                pipe.cmd("SISMEMBER").arg(job.chunks_done()).arg(chunk);
                pipe.cmd("HGET").arg(job.chunk_errors()).arg(chunk);
            }
            DeadTaskRef::Partition(partition) => {
                pipe.cmd("SISMEMBER")
                    .arg(job.partitions_reduced())
                    .arg(partition);
                pipe.cmd("HGET")
                    .arg(job.meta())
                    .arg(format!("lease_granted:{partition}"));
            }
        }
        type Reply = (
            (Option<String>, Option<u64>, Option<String>),
            bool,
            Option<String>,
        );
        let ((state, total_chunks, spec), done, last): Reply = self.invoke(&pipe).await?;
        let (Some(state), Some(spec)) = (state, spec) else {
            return Ok(None);
        };
        let (last_error, partition_leased) = match task {
            DeadTaskRef::Chunk(_) => (last, false),
            DeadTaskRef::Partition(_) => (None, last.is_some()),
        };
        Ok(Some(DeadTaskFacts {
            spec: parse_spec(job_id, &spec)?,
            state: parse_state(job_id, Some(&state))?,
            total_chunks,
            done,
            last_error,
            partition_leased,
        }))
    }

    /// Records a failed job whose whole record Redis lost (it restarted empty, or evicted
    /// it), so that `status` shows why and workers drop its remaining tasks. Does nothing if
    /// any record of the job exists.
    pub async fn tombstone_lost_job(
        &self,
        spec: &JobSpec,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut invocation = ScriptKeys::new()
            .key("meta", self.keys.job(&spec.id).meta())
            .invocation(&TOMBSTONE);
        invocation
            .arg(spec_json(spec)?)
            .arg(spec.partitions)
            .arg(reason)
            .arg(now_ms())
            .arg(spec.ttl_secs);
        let written: i64 = self.invoke(&invocation).await?;
        Ok(written == 1)
    }

    /// Records that the producer of a job is alive and publishing.
    pub async fn producer_heartbeat(&self, job_id: &str) -> Result<(), StoreError> {
        let job = self.keys.job(job_id);
        self.hset_if_job_exists(&job, job.meta(), "producer_seen_ms", &now_ms().to_string())
            .await
    }

    /// Sets `field` of `hash` (a hash of the job) only while the job's record exists.
    pub(super) async fn hset_if_job_exists(
        &self,
        job: &JobKeys,
        hash: String,
        field: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        let mut invocation = ScriptKeys::new()
            .key("meta", job.meta())
            .key("target", hash)
            .invocation(&HSET_IF_JOB_EXISTS);
        invocation.arg(field).arg(value);
        let _written: i64 = self.invoke(&invocation).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{map_output, spec, TestStore};
    use super::super::CommitOutcome;
    use super::*;

    #[tokio::test]
    async fn create_refuses_a_taken_id_and_indexes_the_job() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = spec("j1", 2);
        store.create_job(&spec).await.unwrap();
        let again = store.create_job(&spec).await.unwrap_err();
        assert!(
            matches!(again, StoreError::JobExists(ref id) if id == "j1"),
            "{again}"
        );
        assert_eq!(store.job_ids().await.unwrap(), vec!["j1".to_string()]);
        assert_eq!(store.load_spec("j1").await.unwrap(), Some(spec));
        let status = store.status("j1").await.unwrap().unwrap();
        assert_eq!(status.state, JobState::Running);
        assert_eq!(status.total_chunks, None);
    }

    #[tokio::test]
    async fn seal_records_the_total_once_and_checks_the_done_set() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        assert_eq!(
            store.seal_job("nope", 3).await.unwrap(),
            SealOutcome::Missing
        );
        let spec = spec("j", 1);
        store.create_job(&spec).await.unwrap();
        let output = map_output(&[b"x"]);
        store.commit_chunk(&spec, 0, false, &output).await.unwrap();
        assert_eq!(
            store.seal_job("j", 3).await.unwrap(),
            SealOutcome::Sealed { committed: 1 }
        );
        // Sealing again with the same total is harmless; a different total is refused.
        assert_eq!(
            store.seal_job("j", 3).await.unwrap(),
            SealOutcome::Sealed { committed: 1 }
        );
        assert_eq!(
            store.seal_job("j", 4).await.unwrap(),
            SealOutcome::Mismatch { recorded: 3 }
        );

        // A committed chunk beyond the total is a foreign task.
        let other = super::super::test_support::spec("k", 1);
        store.create_job(&other).await.unwrap();
        store.commit_chunk(&other, 5, false, &output).await.unwrap();
        assert!(matches!(
            store.seal_job("k", 2).await.unwrap(),
            SealOutcome::Corrupt(reason) if reason.contains("chunk 5")
        ));
    }

    #[tokio::test]
    async fn a_seal_after_every_commit_completes_the_job_once() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = spec("j", 2);
        store.create_job(&spec).await.unwrap();
        for chunk in 0..2 {
            let outcome = store
                .commit_chunk(&spec, chunk, false, &map_output(&[b"a", b""]))
                .await
                .unwrap();
            assert_eq!(outcome, CommitOutcome::Committed);
        }
        assert_eq!(
            store.seal_job("j", 2).await.unwrap(),
            SealOutcome::Completed
        );
        assert_eq!(
            store.seal_job("j", 2).await.unwrap(),
            SealOutcome::NotRunning(JobState::Reducing)
        );
        let status = store.status("j").await.unwrap().unwrap();
        assert_eq!(status.state, JobState::Reducing);
        assert_eq!(status.total_chunks, Some(2));
    }

    #[tokio::test]
    async fn seal_detects_a_lost_done_set() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = spec("j", 1);
        store.create_job(&spec).await.unwrap();
        store
            .commit_chunk(&spec, 0, false, &map_output(&[b"a"]))
            .await
            .unwrap();
        let done = store.keys.job("j").chunks_done();
        let _: i64 = test.raw(redis::cmd("DEL").arg(&done)).await;
        assert!(matches!(
            store.seal_job("j", 4).await.unwrap(),
            SealOutcome::Lost(reason) if reason.contains("0 members but 1 commits")
        ));
    }

    #[tokio::test]
    async fn the_first_ending_wins_and_puts_a_ttl_on_what_is_left() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = spec("j", 2);
        assert!(!store.end_job(&spec, JobState::Failed, "x").await.unwrap());
        store.create_job(&spec).await.unwrap();
        store
            .commit_chunk(&spec, 0, false, &map_output(&[b"a", b"b"]))
            .await
            .unwrap();
        store.record_chunk_error("j", 1, "boom").await.unwrap();
        assert!(store
            .end_job(&spec, JobState::Cancelled, "stopped by the user")
            .await
            .unwrap());
        assert!(!store
            .end_job(&spec, JobState::Failed, "too late")
            .await
            .unwrap());
        let status = store.status("j").await.unwrap().unwrap();
        assert_eq!(status.state, JobState::Cancelled);
        assert_eq!(status.reason.as_deref(), Some("stopped by the user"));
        assert!(status.finished_ms.is_some());
        let job = store.keys.job("j");
        for deleted in [
            job.chunks_done(),
            job.partition_data(0),
            job.partition_data(1),
        ] {
            assert!(!test.exists(&deleted).await, "{deleted} is deleted");
        }
        for kept in [job.meta(), job.counters(), job.stats(), job.chunk_errors()] {
            let ttl = test.ttl(&kept).await;
            assert!((1..=60).contains(&ttl), "{kept} has TTL {ttl}");
        }
    }

    #[tokio::test]
    async fn a_tombstone_never_overwrites_a_record() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = spec("j", 1);
        assert!(store.tombstone_lost_job(&spec, "lost").await.unwrap());
        assert!(!store.tombstone_lost_job(&spec, "again").await.unwrap());
        let status = store.status("j").await.unwrap().unwrap();
        assert_eq!(status.state, JobState::Failed);
        assert_eq!(status.reason.as_deref(), Some("lost"));
        let ttl = test.ttl(&store.keys.job("j").meta()).await;
        assert!((1..=60).contains(&ttl), "TTL {ttl}");
        // Late commits of its tasks are dropped.
        assert_eq!(
            store
                .commit_chunk(&spec, 0, false, &map_output(&[b"a"]))
                .await
                .unwrap(),
            CommitOutcome::NotRunning(JobState::Failed)
        );

        let live = super::super::test_support::spec("k", 1);
        store.create_job(&live).await.unwrap();
        assert!(!store.tombstone_lost_job(&live, "lost").await.unwrap());
        assert_eq!(
            store.status("k").await.unwrap().unwrap().state,
            JobState::Running
        );
    }

    #[tokio::test]
    async fn the_producer_heartbeat_never_recreates_a_job() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        store.producer_heartbeat("gone").await.unwrap();
        assert!(!test.exists(&store.keys.job("gone").meta()).await);
        let spec = spec("j", 1);
        store.create_job(&spec).await.unwrap();
        store.producer_heartbeat("j").await.unwrap();
        let (state, total, seen) = store.job_progress("j").await.unwrap().unwrap();
        assert_eq!((state, total), (JobState::Running, None));
        assert!(seen >= spec.created_ms, "{seen}");
    }

    #[tokio::test]
    async fn a_dead_tasks_facts_come_in_one_visit() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        assert_eq!(
            store
                .dead_task_facts("gone", DeadTaskRef::Chunk(0))
                .await
                .unwrap(),
            None
        );
        let spec = spec("j", 2);
        store.create_job(&spec).await.unwrap();
        store
            .commit_chunk(&spec, 0, false, &map_output(&[b"a", b""]))
            .await
            .unwrap();
        store
            .record_chunk_error("j", 1, "panic: boom")
            .await
            .unwrap();
        assert_eq!(
            store.seal_job("j", 3).await.unwrap(),
            SealOutcome::Sealed { committed: 1 }
        );
        let facts = |task| store.dead_task_facts("j", task);
        let committed = facts(DeadTaskRef::Chunk(0)).await.unwrap().unwrap();
        assert_eq!(
            committed,
            DeadTaskFacts {
                spec: spec.clone(),
                state: JobState::Running,
                total_chunks: Some(3),
                done: true,
                last_error: None,
                partition_leased: false,
            }
        );
        let failing = facts(DeadTaskRef::Chunk(1)).await.unwrap().unwrap();
        assert!(!failing.done);
        assert_eq!(failing.last_error.as_deref(), Some("panic: boom"));
        let partition = facts(DeadTaskRef::Partition(1)).await.unwrap().unwrap();
        assert!(!partition.done && !partition.partition_leased);
        assert_eq!(partition.last_error, None);
        for chunk in 1..3 {
            store
                .commit_chunk(&spec, chunk, false, &map_output(&[b"a", b""]))
                .await
                .unwrap();
        }
        let _begun = store
            .begin_reduce("j", 1, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        let partition = facts(DeadTaskRef::Partition(1)).await.unwrap().unwrap();
        assert_eq!(partition.state, JobState::Reducing);
        assert!(!partition.done && partition.partition_leased);
    }
}
