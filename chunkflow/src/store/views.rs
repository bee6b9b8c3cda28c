//! Read-only views of job state: a job's spec and status, the job list, a job's progress
//! for the janitor and the workers, per-partition progress, recorded failures and the
//! stored results. The command lines, the dashboard and the roles read through these and
//! render or decide on plain values.
//!
//! Must not: write job state. The one exception is tidying the namespace's job index
//! (`ns:jobs`), which is not job state: ids whose job has expired are dropped from it.

use std::collections::BTreeMap;

use deadpool_redis::redis;
use serde::Serialize;

use super::{parse_spec, parse_state, parse_u64, Store, StoreError};
use crate::job::{JobSpec, JobState, JobStatus};

/// One failed attempt recorded for a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub chunk: u64,
    pub error: String,
}

/// Progress of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionProgress {
    pub partition: u32,
    /// Chunk outputs committed to this partition (all of them once reduced).
    pub chunks_committed: u64,
    pub reduced: bool,
}

/// What [`Store::job_progress`] reads of a job's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobProgress {
    pub state: JobState,
    /// The sealed total of chunks, once sealed.
    pub total: Option<u64>,
    /// The producer's last heartbeat, or the job's creation (ms since the epoch).
    pub last_seen_ms: u64,
    /// The partitions of an ended job were closed (`Store::close_partitions`).
    pub partitions_closed: bool,
}

impl Store {
    /// The job's spec, or `None` if the job does not exist.
    pub async fn load_spec(&self, job_id: &str) -> Result<Option<JobSpec>, StoreError> {
        let spec: Option<String> = self
            .invoke(
                redis::cmd("HGET")
                    .arg(self.keys.job(job_id).meta())
                    .arg("spec"),
            )
            .await?;
        spec.map(|json| parse_spec(job_id, &json)).transpose()
    }

    /// Ids of the jobs in the namespace's index, oldest first; drops index entries whose
    /// job has expired. Each job's record is in its own slot: one request each,
    /// concurrently.
    pub async fn job_ids(&self) -> Result<Vec<String>, StoreError> {
        let index = self.keys.jobs_index();
        let ids: Vec<String> = self
            .invoke(redis::cmd("ZRANGE").arg(&index).arg(0).arg(-1))
            .await?;
        if ids.is_empty() {
            return Ok(ids);
        }
        let exists: Vec<bool> = futures_util::future::try_join_all(ids.iter().map(|id| {
            let meta = self.keys.job(id).meta();
            async move { self.invoke(redis::cmd("EXISTS").arg(meta)).await }
        }))
        .await?;
        let (live, expired): (Vec<_>, Vec<_>) =
            ids.into_iter().zip(exists).partition(|(_, exists)| *exists);
        if !expired.is_empty() {
            let mut remove = redis::cmd("ZREM");
            remove.arg(&index);
            for (id, _) in &expired {
                remove.arg(id);
            }
            let _removed: i64 = self.invoke(&remove).await?;
        }
        Ok(live.into_iter().map(|(id, _)| id).collect())
    }

    /// A job's state, sealed total, last producer heartbeat (its creation time before the
    /// first heartbeat) and whether its partitions were closed after it ended, in one round
    /// trip.
    pub async fn job_progress(&self, job_id: &str) -> Result<Option<JobProgress>, StoreError> {
        type Fields = (
            Option<String>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
            Option<String>,
        );
        let (state, total, seen, created, closed): Fields = self
            .invoke(
                redis::cmd("HMGET")
                    .arg(self.keys.job(job_id).meta())
                    .arg("state")
                    .arg("total")
                    .arg("producer_seen_ms")
                    .arg("created_ms")
                    .arg("partitions_closed"),
            )
            .await?;
        let Some(state) = state else {
            return Ok(None);
        };
        Ok(Some(JobProgress {
            state: parse_state(job_id, Some(&state))?,
            total,
            last_seen_ms: seen.or(created).unwrap_or(0),
            partitions_closed: closed.is_some(),
        }))
    }

    /// The job's state and progress, or `None` if it does not exist.
    pub async fn status(&self, job_id: &str) -> Result<Option<JobStatus>, StoreError> {
        let job = self.keys.job(job_id);
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL")
            .arg(job.meta())
            .cmd("SCARD")
            .arg(job.chunks_done())
            .cmd("SCARD")
            .arg(job.partitions_reduced())
            .cmd("HGETALL")
            .arg(job.counters())
            .cmd("HGETALL")
            .arg(job.stats());
        type Reply = (
            BTreeMap<String, String>,
            u64,
            u64,
            BTreeMap<String, u64>,
            BTreeMap<String, u64>,
        );
        let (meta, committed, reduced, counters, stats): Reply = self.invoke(&pipe).await?;
        let Some(spec_json) = meta.get("spec") else {
            return Ok(None);
        };
        let spec = parse_spec(job_id, spec_json)?;
        let state = parse_state(job_id, meta.get("state"))?;
        let total_chunks = meta
            .get("total")
            .map(|t| parse_u64(job_id, Some(t)))
            .transpose()?;
        // After success the done set is deleted with the intermediate data.
        let chunks_committed = match (state, total_chunks) {
            (JobState::Succeeded, Some(total)) => total,
            _ => committed,
        };
        Ok(Some(JobStatus {
            state,
            total_chunks,
            chunks_committed,
            partitions_reduced: reduced,
            reason: meta.get("reason").cloned(),
            counters,
            stats,
            created_ms: spec.created_ms,
            finished_ms: meta.get("finished_ms").and_then(|t| t.parse().ok()),
            spec,
        }))
    }

    /// Every job of the namespace still in Redis, newest first.
    pub async fn jobs(&self) -> Result<Vec<JobStatus>, StoreError> {
        let mut jobs = Vec::new();
        for id in self.job_ids().await? {
            if let Some(status) = self.status(&id).await? {
                jobs.push(status);
            }
        }
        jobs.sort_by(|a, b| (b.created_ms, &b.spec.id).cmp(&(a.created_ms, &a.spec.id)));
        Ok(jobs)
    }

    /// The last recorded error of every chunk that failed an attempt, by chunk.
    pub async fn failures(&self, job_id: &str) -> Result<Vec<Failure>, StoreError> {
        let errors: BTreeMap<String, String> = self
            .invoke(redis::cmd("HGETALL").arg(self.keys.job(job_id).chunk_errors()))
            .await?;
        let mut failures: Vec<Failure> = errors
            .into_iter()
            .map(|(chunk, error)| Failure {
                chunk: chunk.parse().unwrap_or(u64::MAX),
                error,
            })
            .collect();
        failures.sort_by_key(|f| f.chunk);
        Ok(failures)
    }

    /// Per-partition progress of a job whose status was just read: chunk outputs held, and
    /// whether it is reduced.
    pub async fn partition_progress(
        &self,
        status: &JobStatus,
    ) -> Result<Vec<PartitionProgress>, StoreError> {
        let job = self.keys.job(&status.spec.id);
        let partitions = status.spec.partitions;
        let reduced: Vec<String> = self
            .invoke(redis::cmd("SMEMBERS").arg(job.partitions_reduced()))
            .await?;
        // Each partition is in its own slot: one request each, concurrently.
        let lengths = futures_util::future::try_join_all((0..partitions).map(|partition| {
            let data = job.partition(partition, partitions).data();
            async move { self.invoke::<u64>(redis::cmd("HLEN").arg(data)).await }
        }))
        .await?;
        let total = status.total_chunks.unwrap_or(status.chunks_committed);
        Ok((0..partitions)
            .map(|partition| {
                let is_reduced = status.state == JobState::Succeeded
                    || reduced.iter().any(|p| p == &partition.to_string());
                PartitionProgress {
                    partition,
                    chunks_committed: if is_reduced {
                        total
                    } else {
                        lengths.get(partition as usize).copied().unwrap_or(0)
                    },
                    reduced: is_reduced,
                }
            })
            .collect())
    }

    /// The stored result of every partition, in partition order; `None` where missing.
    pub async fn partition_results(
        &self,
        job_id: &str,
        partitions: u32,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if partitions == 0 {
            return Ok(Vec::new());
        }
        let job = self.keys.job(job_id);
        // Each partition is in its own slot: one request each, concurrently.
        futures_util::future::try_join_all((0..partitions).map(|partition| {
            let result = job.partition(partition, partitions).result();
            async move { self.invoke(redis::cmd("GET").arg(result)).await }
        }))
        .await
    }

    /// A job's state, or `None` if its record does not exist.
    pub async fn job_state(&self, job_id: &str) -> Result<Option<JobState>, StoreError> {
        let state: Option<String> = self
            .invoke(
                redis::cmd("HGET")
                    .arg(self.keys.job(job_id).meta())
                    .arg("state"),
            )
            .await?;
        state.map(|s| parse_state(job_id, Some(&s))).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{map_output, reduce_output, spec, TestStore};
    use super::super::LeaseOutcome;
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_job_list_is_newest_first_and_forgets_expired_jobs() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        assert!(store.jobs().await.unwrap().is_empty());
        let mut older = spec("older", 1);
        older.created_ms -= 1_000;
        store.create_job(&older).await.unwrap();
        store.create_job(&spec("newer", 1)).await.unwrap();
        store.create_job(&spec("expired", 1)).await.unwrap();
        let meta = store.keys.job("expired").meta();
        let _: i64 = test.raw(redis::cmd("DEL").arg(&meta)).await;
        let ids: Vec<String> = store
            .jobs()
            .await
            .unwrap()
            .into_iter()
            .map(|status| status.spec.id.to_string())
            .collect();
        assert_eq!(ids, vec!["newer", "older"]);
        let index: Vec<String> = test
            .raw(
                redis::cmd("ZRANGE")
                    .arg(store.keys.jobs_index())
                    .arg(0)
                    .arg(-1),
            )
            .await;
        assert_eq!(
            index,
            vec!["older", "newer"],
            "the expired id left the index"
        );
        assert_eq!(
            store.status("expired").await.unwrap().map(|s| s.state),
            None
        );
        assert_eq!(store.load_spec("expired").await.unwrap(), None);
        assert_eq!(store.job_progress("expired").await.unwrap(), None);
    }

    #[tokio::test]
    async fn partition_progress_counts_outputs_until_reduced() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = spec("j", 3);
        store.create_job(&spec).await.unwrap();
        store
            .commit_chunk(&spec, 0, false, &map_output(&[b"a", b"", b"c"]))
            .await
            .unwrap();
        store
            .commit_chunk(&spec, 1, false, &map_output(&[b"a", b"b", b""]))
            .await
            .unwrap();
        store.seal_job("j", 2).await.unwrap();
        let LeaseOutcome::Acquired(token) = store
            .acquire_lease(&spec, 1, Duration::from_secs(30))
            .await
            .unwrap()
        else {
            panic!("a free lease is granted");
        };
        store
            .commit_partition(&spec, 1, token, &reduce_output("b\t1\n"))
            .await
            .unwrap();
        let status = store.status("j").await.unwrap().unwrap();
        let progress = store.partition_progress(&status).await.unwrap();
        let summary: Vec<(u64, bool)> = progress
            .iter()
            .map(|p| (p.chunks_committed, p.reduced))
            .collect();
        assert_eq!(summary, vec![(2, false), (2, true), (1, false)]);
        assert_eq!(
            store.partition_results("j", 3).await.unwrap(),
            vec![None, Some(b"b\t1\n".to_vec()), None]
        );
        assert!(store.failures("j").await.unwrap().is_empty());
    }
}
