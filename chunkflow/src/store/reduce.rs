//! The reduce phase in Redis: partition leases with fencing tokens, reading a partition's
//! partials, storing its result, and [`Store::begin_reduce`], which gathers everything a
//! reducer needs to start on a partition in one round trip.
//!
//! Invariants upheld here (ARCHITECTURE.md 6, 9, 11):
//! - a lease's token comes from a per-job counter that only grows; renewing and committing
//!   check that the token still holds the lease, so a reducer that stalled past its lease
//!   commits nothing ([`ReduceCommitOutcome::Fenced`]);
//! - one script stores a partition's result, deletes its intermediate hash and marks it
//!   reduced, unless it already is; the script that reduces the last partition marks the
//!   job succeeded, deletes the rest of the intermediate data and puts the TTL on the rest;
//! - the partials come with the count of outputs the commits recorded for the partition,
//!   so a reducer can tell lost data from an empty partition;
//! - every grant is recorded in the job's record (`lease_granted:P`), and a grant that
//!   expired on an unreduced partition is claimed for republishing once
//!   (`lease_republished:P`), by one janitor among all reducers.
//!
//! Must not: merge data or decide what to do with a delivery (the reducer does), or take a
//! lease for a job that does not exist.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis::{self, Script, Value};

use super::{load_script, parse_spec, parse_state, parse_u64, reply_tag, unexpected_reply};
use super::{ScriptKeys, Store, StoreError, END_JOB_LUA};
use crate::job::{now_ms, JobSpec, JobState};
use crate::jobs::ReduceOutput;

/// What committing a partition's result did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReduceCommitOutcome {
    Reduced,
    /// This was the last partition: the job succeeded.
    Succeeded,
    Duplicate,
    NotReducing(JobState),
    Missing,
    /// This reducer's lease was taken over (it stalled past its lease); nothing written.
    Fenced,
}

/// The outcome of asking for a partition's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// Held with this fencing token until it expires or is renewed.
    Acquired(u64),
    /// Another reducer holds it for this much longer.
    Busy(Duration),
    Missing,
}

/// What [`Store::begin_reduce`] found, in the order it checks: only the last outcome holds
/// the lease.
#[derive(Debug, Clone, PartialEq)]
pub enum BeginReduce {
    /// The job's record is gone (expired, deleted, or lost by Redis).
    Missing,
    /// The partition is beyond the job's partitions: a foreign or corrupt task.
    OutOfRange { partitions: u32 },
    /// The job is not reducing: still mapping, or ended. Nothing to do.
    NotReducing(JobState),
    /// The partition's result is already stored: a duplicate task.
    AlreadyReduced,
    /// Another reducer holds the partition's lease for this much longer.
    Busy(Duration),
    /// The lease is held: everything needed to reduce the partition.
    Acquired(ReduceStart),
}

/// A partition ready to be reduced under a lease, as read atomically with the lease.
#[derive(Debug, Clone, PartialEq)]
pub struct ReduceStart {
    pub spec: JobSpec,
    /// The sealed total of chunks (`None` only if the record lost it).
    pub total_chunks: Option<u64>,
    /// The fencing token the commit must present.
    pub token: u64,
    /// The partition's (non-empty) chunk outputs, by chunk id.
    pub partials: Vec<(u64, Vec<u8>)>,
    /// How many outputs the commits recorded for this partition.
    pub committed_outputs: u64,
}

static COMMIT_PARTITION: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/commit_partition.lua"), &[END_JOB_LUA]));
static ACQUIRE_LEASE: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/acquire_lease.lua"), &[]));
static RENEW_LEASE: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/renew_lease.lua"), &[]));
static BEGIN_REDUCE: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/begin_reduce.lua"), &[]));
static CLAIM_LEASE_REPUBLISH: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/claim_lease_republish.lua"), &[]));

/// One partition's lease as the janitor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseFacts {
    pub partition: u32,
    pub reduced: bool,
    /// The token of the last lease granted on the partition, if any was.
    pub granted: Option<u64>,
    /// Whether a lease is held now.
    pub held: bool,
    /// The expired grant whose reduce task was already republished, if any.
    pub republished: Option<u64>,
    /// When it was republished (ms since the epoch; 0 if never).
    pub republished_ms: u64,
}

/// Chunk ids of a partition's hash, parsed.
fn chunk_entries(
    job_id: &str,
    partition: u32,
    entries: Vec<(String, Vec<u8>)>,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    entries
        .into_iter()
        .map(|(chunk, data)| {
            chunk
                .parse::<u64>()
                .map(|chunk| (chunk, data))
                .map_err(|_| StoreError::Corrupt {
                    job: job_id.to_string(),
                    what: format!(
                        "partition {partition} has a field `{chunk}` that is not a chunk id"
                    ),
                })
        })
        .collect()
}

/// One element of a script's reply, converted.
fn reply_item<T: redis::FromRedisValue>(
    job_id: &str,
    item: Option<Value>,
) -> Result<T, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt {
        job: job_id.to_string(),
        what,
    };
    let item = item.ok_or_else(|| corrupt("a script's reply is too short".into()))?;
    redis::from_redis_value(item).map_err(|e| corrupt(format!("unexpected script reply: {e}")))
}

impl Store {
    /// Whether a partition's result is already stored.
    pub async fn is_reduced(&self, job_id: &str, partition: u32) -> Result<bool, StoreError> {
        self.invoke(
            redis::cmd("SISMEMBER")
                .arg(self.keys.job(job_id).partitions_reduced())
                .arg(partition),
        )
        .await
    }

    /// Asks for the lease on a partition, valid for `ttl`.
    pub async fn acquire_lease(
        &self,
        job_id: &str,
        partition: u32,
        ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        let job = self.keys.job(job_id);
        let mut invocation = ScriptKeys::new()
            .key("meta", job.meta())
            .key("lease", job.partition_lease(partition))
            .invocation(&ACQUIRE_LEASE);
        invocation.arg(ttl.as_millis() as u64);
        let reply: Vec<String> = self.invoke(&invocation).await?;
        Ok(match reply_tag(&reply) {
            "acquired" => LeaseOutcome::Acquired(parse_u64(job_id, reply.get(1))?),
            "busy" => LeaseOutcome::Busy(Duration::from_millis(parse_u64(job_id, reply.get(1))?)),
            _ => LeaseOutcome::Missing,
        })
    }

    /// Extends a held lease; `false` if it was lost (expired and perhaps taken over).
    pub async fn renew_lease(
        &self,
        job_id: &str,
        partition: u32,
        token: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut invocation = ScriptKeys::new()
            .key("lease", self.keys.job(job_id).partition_lease(partition))
            .invocation(&RENEW_LEASE);
        invocation.arg(token).arg(ttl.as_millis() as u64);
        let renewed: i64 = self.invoke(&invocation).await?;
        Ok(renewed == 1)
    }

    /// The (non-empty) chunk outputs of one partition, keyed by chunk id, and how many the
    /// job's record says were committed: fewer present than committed means lost data.
    pub async fn partition_partials(
        &self,
        job_id: &str,
        partition: u32,
    ) -> Result<(Vec<(u64, Vec<u8>)>, u64), StoreError> {
        let job = self.keys.job(job_id);
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL")
            .arg(job.partition_data(partition))
            .cmd("HGET")
            .arg(job.meta())
            .arg(format!("outputs:{partition}"));
        type Reply = (Vec<(String, Vec<u8>)>, Option<u64>);
        let (entries, committed): Reply = self.invoke(&pipe).await?;
        Ok((
            chunk_entries(job_id, partition, entries)?,
            committed.unwrap_or(0),
        ))
    }

    /// Stores a partition's result and marks it reduced, atomically; the last partition
    /// ends the job.
    pub async fn commit_partition(
        &self,
        spec: &JobSpec,
        partition: u32,
        token: u64,
        output: &ReduceOutput,
    ) -> Result<ReduceCommitOutcome, StoreError> {
        let job = self.keys.job(&spec.id);
        let mut invocation = Store::job_keys(&job, spec.partitions)
            .key("lease", job.partition_lease(partition))
            .invocation(&COMMIT_PARTITION);
        invocation
            .arg(partition)
            .arg(output.lines.as_slice())
            .arg(output.records)
            .arg(spec.ttl_secs)
            .arg(now_ms())
            .arg(token);
        let reply: Vec<String> = self.invoke_replicated(&invocation, &job.meta()).await?;
        Ok(match reply_tag(&reply) {
            "reduced" => ReduceCommitOutcome::Reduced,
            "succeeded" => ReduceCommitOutcome::Succeeded,
            "duplicate" => ReduceCommitOutcome::Duplicate,
            "missing" => ReduceCommitOutcome::Missing,
            "fenced" => ReduceCommitOutcome::Fenced,
            "not_reducing" => {
                ReduceCommitOutcome::NotReducing(parse_state(&spec.id, reply.get(1))?)
            }
            other => return Err(unexpected_reply(&spec.id, "reduce", other)),
        })
    }

    /// The lease facts of every partition of a reducing job (the janitor's read; the claim
    /// checks them again atomically).
    pub async fn lease_facts(
        &self,
        job_id: &str,
        partitions: u32,
    ) -> Result<Vec<LeaseFacts>, StoreError> {
        if partitions == 0 {
            return Ok(Vec::new());
        }
        let job = self.keys.job(job_id);
        let mut granted = redis::cmd("HMGET");
        let mut republished = redis::cmd("HMGET");
        let mut republished_ms = redis::cmd("HMGET");
        granted.arg(job.meta());
        republished.arg(job.meta());
        republished_ms.arg(job.meta());
        for partition in 0..partitions {
            granted.arg(format!("lease_granted:{partition}"));
            republished.arg(format!("lease_republished:{partition}"));
            republished_ms.arg(format!("lease_republished_ms:{partition}"));
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SMEMBERS")
            .arg(job.partitions_reduced())
            .add_command(granted)
            .add_command(republished)
            .add_command(republished_ms);
        for partition in 0..partitions {
            pipe.cmd("PTTL").arg(job.partition_lease(partition));
        }
        let reply: Vec<Value> = self.invoke(&pipe).await?;
        let mut items = reply.into_iter();
        let reduced: Vec<u32> = reply_item(job_id, items.next())?;
        let granted: Vec<Option<u64>> = reply_item(job_id, items.next())?;
        let republished: Vec<Option<u64>> = reply_item(job_id, items.next())?;
        let republished_ms: Vec<Option<u64>> = reply_item(job_id, items.next())?;
        (0..partitions)
            .map(|partition| {
                let remaining: i64 = reply_item(job_id, items.next())?;
                let at = partition as usize;
                Ok(LeaseFacts {
                    partition,
                    reduced: reduced.contains(&partition),
                    granted: granted.get(at).copied().flatten(),
                    held: remaining > 0,
                    republished: republished.get(at).copied().flatten(),
                    republished_ms: republished_ms.get(at).copied().flatten().unwrap_or(0),
                })
            })
            .collect()
    }

    /// Claims the republishing of the reduce tasks of expired grants `(partition, token)`
    /// (checked again atomically, see `claim_lease_republish.lua`; a grant republished
    /// before is claimed again only `again_after` later); returns the partitions claimed,
    /// whose tasks the caller must publish.
    pub async fn claim_lease_republish(
        &self,
        job_id: &str,
        expired: &[(u32, u64)],
        again_after: Duration,
    ) -> Result<Vec<u32>, StoreError> {
        if expired.is_empty() {
            return Ok(Vec::new());
        }
        let job = self.keys.job(job_id);
        let leases = expired
            .iter()
            .map(|(partition, _)| job.partition_lease(*partition));
        let mut invocation = ScriptKeys::new()
            .key("meta", job.meta())
            .key("reduced", job.partitions_reduced())
            .group("lease", leases)
            .invocation(&CLAIM_LEASE_REPUBLISH);
        invocation.arg(now_ms()).arg(again_after.as_millis() as u64);
        for (partition, token) in expired {
            invocation.arg(*partition).arg(*token);
        }
        self.invoke(&invocation).await
    }

    /// Gives a claim back (its publish failed), so a later sweep claims it again. Deleting
    /// a field never recreates a job.
    pub async fn release_lease_republish(
        &self,
        job_id: &str,
        partition: u32,
    ) -> Result<(), StoreError> {
        let _removed: i64 = self
            .invoke(
                redis::cmd("HDEL")
                    .arg(self.keys.job(job_id).meta())
                    .arg(format!("lease_republished:{partition}"))
                    .arg(format!("lease_republished_ms:{partition}")),
            )
            .await?;
        Ok(())
    }

    /// Everything a reducer needs to start on `partition` of `job_id`, in one round trip
    /// (one script): the job's state, whether the partition is already reduced, the lease
    /// for `lease_ttl` (or who holds it), and, once the lease is held, the job's spec and
    /// total, the partition's partials and the count of outputs committed to it.
    pub async fn begin_reduce(
        &self,
        job_id: &str,
        partition: u32,
        lease_ttl: Duration,
    ) -> Result<BeginReduce, StoreError> {
        let job = self.keys.job(job_id);
        let mut invocation = ScriptKeys::new()
            .key("meta", job.meta())
            .key("reduced", job.partitions_reduced())
            .key("lease", job.partition_lease(partition))
            .key("map", job.partition_data(partition))
            .invocation(&BEGIN_REDUCE);
        invocation.arg(partition).arg(lease_ttl.as_millis() as u64);
        let reply: Vec<Value> = self.invoke(&invocation).await?;
        let mut items = reply.into_iter();
        let tag: String = reply_item(job_id, items.next())?;
        let mut text = || reply_item::<String>(job_id, items.next());
        Ok(match tag.as_str() {
            "missing" => BeginReduce::Missing,
            "out_of_range" => BeginReduce::OutOfRange {
                partitions: text()?.parse().map_err(|_| StoreError::Corrupt {
                    job: job_id.to_string(),
                    what: "the partition count is not a number".into(),
                })?,
            },
            "not_reducing" => BeginReduce::NotReducing(parse_state(job_id, Some(&text()?))?),
            "reduced" => BeginReduce::AlreadyReduced,
            "busy" => BeginReduce::Busy(Duration::from_millis(parse_u64(job_id, Some(&text()?))?)),
            "acquired" => {
                let spec = parse_spec(job_id, &text()?)?;
                let total = text()?;
                let total_chunks = match total.as_str() {
                    "" => None,
                    total => Some(parse_u64(job_id, Some(&total.to_string()))?),
                };
                let token = parse_u64(job_id, Some(&text()?))?;
                let committed_outputs = parse_u64(job_id, Some(&text()?))?;
                let entries: Vec<(String, Vec<u8>)> = reply_item(job_id, items.next())?;
                BeginReduce::Acquired(ReduceStart {
                    spec,
                    total_chunks,
                    token,
                    partials: chunk_entries(job_id, partition, entries)?,
                    committed_outputs,
                })
            }
            other => return Err(unexpected_reply(job_id, "begin-reduce", other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{map_output, reduce_output, spec, TestStore};
    use super::super::{CommitOutcome, SealOutcome};
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);
    const AGAIN: Duration = Duration::from_secs(3600);

    /// A job with `partitions` partitions and two committed chunks, sealed: reducing.
    async fn reducing_job(store: &Store, id: &str, partitions: u32) -> JobSpec {
        let spec = spec(id, partitions);
        store.create_job(&spec).await.unwrap();
        let partials: Vec<Vec<u8>> = (0..partitions)
            .map(|p| format!("p{p}").into_bytes())
            .collect();
        let partials: Vec<&[u8]> = partials.iter().map(Vec::as_slice).collect();
        for chunk in 0..2 {
            let outcome = store
                .commit_chunk(&spec, chunk, false, &map_output(&partials))
                .await
                .unwrap();
            assert_eq!(outcome, CommitOutcome::Committed);
        }
        assert_eq!(store.seal_job(id, 2).await.unwrap(), SealOutcome::Completed);
        spec
    }

    #[tokio::test]
    async fn leases_fence_and_tokens_only_grow() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        assert_eq!(
            store.acquire_lease("gone", 0, LEASE).await.unwrap(),
            LeaseOutcome::Missing
        );
        store.create_job(&spec("j", 1)).await.unwrap();
        let LeaseOutcome::Acquired(first) = store.acquire_lease("j", 0, LEASE).await.unwrap()
        else {
            panic!("a free lease is granted");
        };
        assert!(matches!(
            store.acquire_lease("j", 0, LEASE).await.unwrap(),
            LeaseOutcome::Busy(remaining) if remaining > Duration::ZERO && remaining <= LEASE
        ));
        assert!(store.renew_lease("j", 0, first, LEASE).await.unwrap());
        assert!(!store.renew_lease("j", 0, first + 1, LEASE).await.unwrap());
        // Once the lease is gone (expired), a new holder gets a larger token.
        let lease = store.keys.job("j").partition_lease(0);
        let _: i64 = test.raw(redis::cmd("DEL").arg(&lease)).await;
        assert!(!store.renew_lease("j", 0, first, LEASE).await.unwrap());
        let LeaseOutcome::Acquired(second) = store.acquire_lease("j", 0, LEASE).await.unwrap()
        else {
            panic!("an expired lease is granted again");
        };
        assert!(second > first);
    }

    #[tokio::test]
    async fn partitions_commit_under_their_lease_and_the_last_one_ends_the_job() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let output = reduce_output("a\t1\nb\t2\n");
        let running = spec("r", 2);
        assert_eq!(
            store
                .commit_partition(&running, 0, 1, &output)
                .await
                .unwrap(),
            ReduceCommitOutcome::Missing
        );
        store.create_job(&running).await.unwrap();
        assert_eq!(
            store
                .commit_partition(&running, 0, 1, &output)
                .await
                .unwrap(),
            ReduceCommitOutcome::NotReducing(JobState::Running)
        );

        let spec = reducing_job(store, "j", 2).await;
        let LeaseOutcome::Acquired(token) = store.acquire_lease("j", 0, LEASE).await.unwrap()
        else {
            panic!("a free lease is granted");
        };
        // A stale holder (an older token) is fenced off and writes nothing.
        assert_eq!(
            store
                .commit_partition(&spec, 0, token - 1, &output)
                .await
                .unwrap(),
            ReduceCommitOutcome::Fenced
        );
        assert!(!store.is_reduced("j", 0).await.unwrap());
        assert_eq!(
            store
                .commit_partition(&spec, 0, token, &output)
                .await
                .unwrap(),
            ReduceCommitOutcome::Reduced
        );
        assert!(store.is_reduced("j", 0).await.unwrap());
        assert_eq!(
            store
                .commit_partition(&spec, 0, token, &output)
                .await
                .unwrap(),
            ReduceCommitOutcome::Duplicate
        );
        let job = store.keys.job("j");
        assert!(
            !test.exists(&job.partition_data(0)).await,
            "partials deleted"
        );
        assert!(
            !test.exists(&job.partition_lease(0)).await,
            "lease released"
        );
        assert_eq!(
            store.status("j").await.unwrap().unwrap().state,
            JobState::Reducing
        );

        let LeaseOutcome::Acquired(token) = store.acquire_lease("j", 1, LEASE).await.unwrap()
        else {
            panic!("a free lease is granted");
        };
        let last = reduce_output("c\t3\n");
        assert_eq!(
            store
                .commit_partition(&spec, 1, token, &last)
                .await
                .unwrap(),
            ReduceCommitOutcome::Succeeded
        );
        let status = store.status("j").await.unwrap().unwrap();
        assert_eq!(status.state, JobState::Succeeded);
        assert_eq!(status.partitions_reduced, 2);
        assert_eq!(
            status.chunks_committed, 2,
            "the total, once the done set is gone"
        );
        assert_eq!(status.counters.get("output_records"), Some(&3));
        assert_eq!(
            store.partition_results("j", 2).await.unwrap(),
            vec![Some(output.lines.clone()), Some(last.lines.clone())]
        );
        assert!(!test.exists(&job.chunks_done()).await);
        assert!(!test.exists(&job.partition_data(1)).await);
        for kept in [
            job.meta(),
            job.counters(),
            job.partitions_reduced(),
            job.stats(),
            job.partition_result(0),
            job.partition_result(1),
        ] {
            let ttl = test.ttl(&kept).await;
            assert!((1..=60).contains(&ttl), "{kept} has TTL {ttl}");
        }
    }

    #[tokio::test]
    async fn begin_reduce_reports_each_outcome_in_one_visit() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        assert_eq!(
            store.begin_reduce("gone", 0, LEASE).await.unwrap(),
            BeginReduce::Missing
        );
        let running = spec("r", 2);
        store.create_job(&running).await.unwrap();
        assert_eq!(
            store.begin_reduce("r", 0, LEASE).await.unwrap(),
            BeginReduce::NotReducing(JobState::Running)
        );
        assert_eq!(
            store.begin_reduce("r", 2, LEASE).await.unwrap(),
            BeginReduce::OutOfRange { partitions: 2 }
        );

        let spec = reducing_job(store, "j", 2).await;
        let BeginReduce::Acquired(start) = store.begin_reduce("j", 1, LEASE).await.unwrap() else {
            panic!("a reducing job's free partition is granted");
        };
        assert_eq!(start.spec, spec);
        assert_eq!(start.total_chunks, Some(2));
        assert_eq!(start.committed_outputs, 2);
        assert_eq!(
            start.partials,
            vec![(0, b"p1".to_vec()), (1, b"p1".to_vec())]
        );
        let lease = store.keys.job("j").partition_lease(1);
        let held: String = test.raw(redis::cmd("GET").arg(&lease)).await;
        assert_eq!(held, start.token.to_string());
        assert!(matches!(
            store.begin_reduce("j", 1, LEASE).await.unwrap(),
            BeginReduce::Busy(remaining) if remaining > Duration::ZERO && remaining <= LEASE
        ));

        let output = reduce_output("x\t1\n");
        assert_eq!(
            store
                .commit_partition(&spec, 1, start.token, &output)
                .await
                .unwrap(),
            ReduceCommitOutcome::Reduced
        );
        assert_eq!(
            store.begin_reduce("j", 1, LEASE).await.unwrap(),
            BeginReduce::AlreadyReduced
        );

        // Partials Redis lost are visible in the reply, read atomically with the lease.
        let data = store.keys.job("j").partition_data(0);
        let _: i64 = test.raw(redis::cmd("HDEL").arg(&data).arg("1")).await;
        let BeginReduce::Acquired(start) = store.begin_reduce("j", 0, LEASE).await.unwrap() else {
            panic!("a reducing job's free partition is granted");
        };
        assert_eq!(start.partials, vec![(0, b"p0".to_vec())]);
        assert_eq!(start.committed_outputs, 2);
        assert!(start.token > 0);

        assert_eq!(
            store
                .commit_partition(&spec, 0, start.token, &output)
                .await
                .unwrap(),
            ReduceCommitOutcome::Succeeded
        );
        assert_eq!(
            store.begin_reduce("j", 0, LEASE).await.unwrap(),
            BeginReduce::NotReducing(JobState::Succeeded)
        );
    }

    #[tokio::test]
    async fn an_expired_grant_is_claimed_for_republishing_once() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = reducing_job(store, "j", 3).await;
        let no_lease = |partition| LeaseFacts {
            partition,
            reduced: false,
            granted: None,
            held: false,
            republished: None,
            republished_ms: 0,
        };
        assert_eq!(
            store.lease_facts("j", 3).await.unwrap(),
            vec![no_lease(0), no_lease(1), no_lease(2)],
            "tasks waiting in the queue have no grant"
        );
        // Partition 0 is held, 1 was granted and expired, 2 is reduced.
        let begin = |partition| store.begin_reduce("j", partition, LEASE);
        let BeginReduce::Acquired(held) = begin(0).await.unwrap() else {
            panic!("a free lease is granted");
        };
        let BeginReduce::Acquired(expired) = begin(1).await.unwrap() else {
            panic!("a free lease is granted");
        };
        let BeginReduce::Acquired(reduced) = begin(2).await.unwrap() else {
            panic!("a free lease is granted");
        };
        let output = reduce_output("a\t1\n");
        assert_eq!(
            store
                .commit_partition(&spec, 2, reduced.token, &output)
                .await
                .unwrap(),
            ReduceCommitOutcome::Reduced
        );
        let job = store.keys.job("j");
        let _: i64 = test
            .raw(redis::cmd("DEL").arg(job.partition_lease(1)))
            .await;
        let facts = store.lease_facts("j", 3).await.unwrap();
        assert_eq!(
            facts,
            vec![
                LeaseFacts {
                    partition: 0,
                    reduced: false,
                    granted: Some(held.token),
                    held: true,
                    republished: None,
                    republished_ms: 0,
                },
                LeaseFacts {
                    partition: 1,
                    reduced: false,
                    granted: Some(expired.token),
                    held: false,
                    republished: None,
                    republished_ms: 0,
                },
                LeaseFacts {
                    partition: 2,
                    reduced: true,
                    granted: Some(reduced.token),
                    held: false,
                    republished: None,
                    republished_ms: 0,
                },
            ]
        );
        // The claim checks again: only the expired grant is claimed, and only once.
        let candidates = [(0, held.token), (1, expired.token), (2, reduced.token)];
        assert_eq!(
            store
                .claim_lease_republish("j", &candidates, AGAIN)
                .await
                .unwrap(),
            vec![1]
        );
        assert!(store
            .claim_lease_republish("j", &candidates, AGAIN)
            .await
            .unwrap()
            .is_empty());
        let facts = &store.lease_facts("j", 3).await.unwrap()[1];
        assert_eq!(facts.republished, Some(expired.token));
        assert!(facts.republished_ms > 0);
        // No new grant came for a while: claimed again.
        assert_eq!(
            store
                .claim_lease_republish("j", &[(1, expired.token)], Duration::ZERO)
                .await
                .unwrap(),
            vec![1]
        );
        // A claim given back (its publish failed) is claimed again.
        store.release_lease_republish("j", 1).await.unwrap();
        assert_eq!(
            store
                .claim_lease_republish("j", &[(1, expired.token)], AGAIN)
                .await
                .unwrap(),
            vec![1]
        );
        // A stale token (a newer grant exists) is not claimed.
        assert!(store
            .claim_lease_republish("j", &[(1, expired.token - 1)], Duration::ZERO)
            .await
            .unwrap()
            .is_empty());
        // Nothing is claimed for a job that is not reducing, nor for a missing one.
        store
            .end_job(&spec, JobState::Failed, "stop")
            .await
            .unwrap();
        store.release_lease_republish("j", 1).await.unwrap();
        assert!(store
            .claim_lease_republish("j", &[(1, expired.token)], AGAIN)
            .await
            .unwrap()
            .is_empty());
        assert!(store
            .claim_lease_republish("gone", &[(0, 1)], Duration::ZERO)
            .await
            .unwrap()
            .is_empty());
        store.release_lease_republish("gone", 0).await.unwrap();
        assert!(!test.exists(&store.keys.job("gone").meta()).await);
    }
}
