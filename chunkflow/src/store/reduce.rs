//! The reduce phase in Redis: partition leases with fencing tokens, reading a partition's
//! partials, storing its result, and [`Store::begin_reduce`], which gathers everything a
//! reducer needs to start on a partition: the job's facts in the job's slot, then the lease
//! and the partials in one step in the partition's slot.
//!
//! Invariants upheld here (ARCHITECTURE.md 6, 9, 11):
//! - a lease's token comes from a counter in the partition's record that only grows;
//!   renewing and committing check that the token still holds the lease, so a reducer that
//!   stalled past its lease commits nothing ([`ReduceCommitOutcome::Fenced`]);
//! - a partition's commit is a partition step (store the result, delete the intermediate
//!   hash, mark the partition reduced, unless it already is) then a job step (add it to the
//!   reduced set, first wins; the last one marks the job succeeded and ends its data); a
//!   partition found reduced whose job step is missing gets its job step, with the record
//!   count the partition step stored;
//! - the partials come with the count of outputs the commits recorded for the partition,
//!   so a reducer can tell lost data from an empty partition; a partition whose record is
//!   gone while its job reduces is lost state ([`BeginReduce::Lost`]);
//! - every grant is recorded in the partition's record (`lease_granted`), and a grant that
//!   expired on an open partition is claimed for republishing once (`lease_republished`),
//!   by one janitor among all reducers.
//!
//! Must not: merge data or decide what to do with a delivery (the reducer does), or take a
//! lease for a partition that has no record.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis::{self, Script, Value};

use super::keys::PartitionKeys;
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
    /// The partition's record is gone while its job reduces: Redis lost it.
    Lost(String),
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

/// What [`Store::begin_reduce`] found, in the order it checks: only `Acquired` holds the
/// lease.
#[derive(Debug, Clone, PartialEq)]
pub enum BeginReduce {
    /// The job's record is gone (expired, deleted, or lost by Redis).
    Missing,
    /// The partition is beyond the job's partitions: a foreign or corrupt task.
    OutOfRange { partitions: u32 },
    /// The job is not reducing: still mapping, or ended. Nothing to do.
    NotReducing(JobState),
    /// The partition's result is already stored and counted: a duplicate task.
    AlreadyReduced,
    /// The partition's result was stored by an earlier attempt whose job step a crash cut
    /// off; the job step ran now, with this outcome.
    Finished(ReduceCommitOutcome),
    /// Another reducer holds the partition's lease for this much longer.
    Busy(Duration),
    /// The partition's record is gone while its job reduces: Redis lost it.
    Lost { spec: JobSpec, what: String },
    /// The lease is held: everything needed to reduce the partition.
    Acquired(ReduceStart),
}

impl BeginReduce {
    /// The job's spec, where one was read (to fail the job with).
    pub fn spec(&self) -> Option<&JobSpec> {
        match self {
            BeginReduce::Lost { spec, .. } => Some(spec),
            BeginReduce::Acquired(start) => Some(&start.spec),
            _ => None,
        }
    }
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
    LazyLock::new(|| load_script(include_str!("lua/commit_partition.lua"), &[]));
static MARK_REDUCED: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/mark_reduced.lua"), &[END_JOB_LUA]));
static ACQUIRE_LEASE: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/acquire_lease.lua"), &[]));
static RENEW_LEASE: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/renew_lease.lua"), &[]));
static BEGIN_REDUCE: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/begin_reduce.lua"), &[]));
static LEASE_PARTITION: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/lease_partition.lua"), &[]));
static CLAIM_LEASE_REPUBLISH: LazyLock<Script> =
    LazyLock::new(|| load_script(include_str!("lua/claim_lease_republish.lua"), &[]));

/// One partition's lease as the janitor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseFacts {
    pub partition: u32,
    /// The partition is past reducing (reduced, or closed with its job).
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

/// Why a partition's missing record is lost state.
fn lost_partition(partition: u32) -> String {
    format!(
        "partition {partition} of the reducing job has no record (the Redis node holding it \
         restarted empty?)"
    )
}

impl Store {
    fn partition_keys(&self, job_id: &str, partition: u32, partitions: u32) -> PartitionKeys {
        self.keys.job(job_id).partition(partition, partitions)
    }

    /// Whether a partition's result is stored and counted.
    pub async fn is_reduced(&self, job_id: &str, partition: u32) -> Result<bool, StoreError> {
        self.invoke(
            redis::cmd("SISMEMBER")
                .arg(self.keys.job(job_id).partitions_reduced())
                .arg(partition),
        )
        .await
    }

    /// Asks for the lease on a partition of `spec`'s job, valid for `ttl`.
    pub async fn acquire_lease(
        &self,
        spec: &JobSpec,
        partition: u32,
        ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        let keys = self.partition_keys(&spec.id, partition, spec.partitions);
        let mut invocation = ScriptKeys::new()
            .key("part", keys.record())
            .key("lease", keys.lease())
            .invocation(&ACQUIRE_LEASE);
        invocation.arg(ttl.as_millis() as u64);
        let reply: Vec<String> = self.invoke(&invocation).await?;
        Ok(match reply_tag(&reply) {
            "acquired" => LeaseOutcome::Acquired(parse_u64(&spec.id, reply.get(1))?),
            "busy" => LeaseOutcome::Busy(Duration::from_millis(parse_u64(&spec.id, reply.get(1))?)),
            _ => LeaseOutcome::Missing,
        })
    }

    /// Extends a held lease; `false` if it was lost (expired and perhaps taken over).
    pub async fn renew_lease(
        &self,
        spec: &JobSpec,
        partition: u32,
        token: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let keys = self.partition_keys(&spec.id, partition, spec.partitions);
        let mut invocation = ScriptKeys::new()
            .key("lease", keys.lease())
            .invocation(&RENEW_LEASE);
        invocation.arg(token).arg(ttl.as_millis() as u64);
        let renewed: i64 = self.invoke(&invocation).await?;
        Ok(renewed == 1)
    }

    /// Stores a partition's result under the lease `token` (the partition step), then
    /// counts it in the job (the job step); the job step of the last partition ends the job.
    pub async fn commit_partition(
        &self,
        spec: &JobSpec,
        partition: u32,
        token: u64,
        output: &ReduceOutput,
    ) -> Result<ReduceCommitOutcome, StoreError> {
        let keys = self.partition_keys(&spec.id, partition, spec.partitions);
        let mut invocation = ScriptKeys::new()
            .key("part", keys.record())
            .key("lease", keys.lease())
            .key("map", keys.data())
            .key("result", keys.result())
            .invocation(&COMMIT_PARTITION);
        invocation
            .arg(output.lines.as_slice())
            .arg(output.records)
            .arg(spec.ttl_secs)
            .arg(now_ms())
            .arg(token);
        let reply: Vec<String> = self.invoke_replicated(&invocation, &keys.result()).await?;
        let records = match reply_tag(&reply) {
            "reduced" => output.records,
            // Reduced by another holder: its job step may still be missing.
            "duplicate" => parse_u64(&spec.id, reply.get(1))?,
            "fenced" => return Ok(ReduceCommitOutcome::Fenced),
            "closed" => {
                let state = self.job_state(&spec.id).await?;
                return Ok(state.map_or(ReduceCommitOutcome::Missing, |state| {
                    ReduceCommitOutcome::NotReducing(state)
                }));
            }
            "missing" => {
                return Ok(match self.job_state(&spec.id).await? {
                    None => ReduceCommitOutcome::Missing,
                    Some(JobState::Reducing) => {
                        ReduceCommitOutcome::Lost(lost_partition(partition))
                    }
                    Some(state) => ReduceCommitOutcome::NotReducing(state),
                })
            }
            other => return Err(unexpected_reply(&spec.id, "reduce", other)),
        };
        let outcome = self.mark_reduced(spec, partition, records).await?;
        Ok(match (reply_tag(&reply), outcome) {
            ("duplicate", ReduceCommitOutcome::Reduced)
            | ("duplicate", ReduceCommitOutcome::Succeeded) => {
                // This reducer's own result was discarded; the other holder's is counted.
                ReduceCommitOutcome::Duplicate
            }
            (_, outcome) => outcome,
        })
    }

    /// A partition's job step: adds it to the job's reduced set (first wins) with its
    /// result's record count; the last one marks the job succeeded.
    async fn mark_reduced(
        &self,
        spec: &JobSpec,
        partition: u32,
        records: u64,
    ) -> Result<ReduceCommitOutcome, StoreError> {
        let job = self.keys.job(&spec.id);
        let mut invocation = Store::job_keys(&job).invocation(&MARK_REDUCED);
        invocation
            .arg(partition)
            .arg(records)
            .arg(spec.ttl_secs)
            .arg(now_ms());
        let reply: Vec<String> = self.invoke_replicated(&invocation, &job.meta()).await?;
        Ok(match reply_tag(&reply) {
            "reduced" => ReduceCommitOutcome::Reduced,
            "succeeded" => ReduceCommitOutcome::Succeeded,
            "duplicate" => ReduceCommitOutcome::Duplicate,
            "missing" => ReduceCommitOutcome::Missing,
            "not_reducing" => {
                ReduceCommitOutcome::NotReducing(parse_state(&spec.id, reply.get(1))?)
            }
            other => return Err(unexpected_reply(&spec.id, "reduce", other)),
        })
    }

    /// The lease facts of every partition of a reducing job (the janitor's read, one
    /// request per partition since each is in its own slot; the claim checks them again
    /// atomically).
    pub async fn lease_facts(&self, spec: &JobSpec) -> Result<Vec<LeaseFacts>, StoreError> {
        futures_util::future::try_join_all((0..spec.partitions).map(|partition| {
            let keys = self.partition_keys(&spec.id, partition, spec.partitions);
            async move {
                let mut pipe = redis::pipe();
                pipe.cmd("HMGET")
                    .arg(keys.record())
                    .arg("state")
                    .arg("lease_granted")
                    .arg("lease_republished")
                    .arg("lease_republished_ms")
                    .cmd("PTTL")
                    .arg(keys.lease());
                type Record = (Option<String>, Option<u64>, Option<u64>, Option<u64>);
                let ((state, granted, republished, republished_ms), remaining): (Record, i64) =
                    self.invoke(&pipe).await?;
                Ok::<_, StoreError>(LeaseFacts {
                    partition,
                    reduced: state.as_deref() != Some("open"),
                    granted,
                    held: remaining > 0,
                    republished,
                    republished_ms: republished_ms.unwrap_or(0),
                })
            }
        }))
        .await
    }

    /// Claims the republishing of the reduce tasks of expired grants `(partition, token)`
    /// (checked again atomically in each partition's slot, see `claim_lease_republish.lua`;
    /// a grant republished before is claimed again only `again_after` later); returns the
    /// partitions claimed, whose tasks the caller must publish.
    pub async fn claim_lease_republish(
        &self,
        spec: &JobSpec,
        expired: &[(u32, u64)],
        again_after: Duration,
    ) -> Result<Vec<u32>, StoreError> {
        let now = now_ms();
        let claims =
            futures_util::future::try_join_all(expired.iter().map(|(partition, token)| {
                let keys = self.partition_keys(&spec.id, *partition, spec.partitions);
                async move {
                    let mut invocation = ScriptKeys::new()
                        .key("part", keys.record())
                        .key("lease", keys.lease())
                        .invocation(&CLAIM_LEASE_REPUBLISH);
                    invocation
                        .arg(*token)
                        .arg(now)
                        .arg(again_after.as_millis() as u64);
                    let claimed: i64 = self.invoke(&invocation).await?;
                    Ok::<_, StoreError>((claimed == 1).then_some(*partition))
                }
            }))
            .await?;
        Ok(claims.into_iter().flatten().collect())
    }

    /// Gives a claim back (its publish failed), so a later sweep claims it again. Deleting
    /// a field never recreates a record.
    pub async fn release_lease_republish(
        &self,
        spec: &JobSpec,
        partition: u32,
    ) -> Result<(), StoreError> {
        let keys = self.partition_keys(&spec.id, partition, spec.partitions);
        let _removed: i64 = self
            .invoke(
                redis::cmd("HDEL")
                    .arg(keys.record())
                    .arg("lease_republished")
                    .arg("lease_republished_ms"),
            )
            .await?;
        Ok(())
    }

    /// Everything a reducer needs to start on `partition` of `job_id`: the job's facts
    /// (state, whether the partition is counted reduced, spec, total, outputs committed to
    /// the partition) in the job's slot, then the lease for `lease_ttl` (or who holds it)
    /// and the partition's partials in one step in the partition's slot.
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
            .invocation(&BEGIN_REDUCE);
        invocation.arg(partition);
        let reply: Vec<String> = self.invoke(&invocation).await?;
        let (spec, total_chunks, committed_outputs) = match reply_tag(&reply) {
            "missing" => return Ok(BeginReduce::Missing),
            "out_of_range" => {
                return Ok(BeginReduce::OutOfRange {
                    partitions: parse_u64(job_id, reply.get(1))? as u32,
                })
            }
            "not_reducing" => {
                return Ok(BeginReduce::NotReducing(parse_state(job_id, reply.get(1))?))
            }
            "reduced" => return Ok(BeginReduce::AlreadyReduced),
            "reducing" => {
                let spec = parse_spec(job_id, reply.get(1).map_or("", String::as_str))?;
                let total_chunks = match reply.get(2).map_or("", String::as_str) {
                    "" => None,
                    total => Some(parse_u64(job_id, Some(&total.to_string()))?),
                };
                (spec, total_chunks, parse_u64(job_id, reply.get(3))?)
            }
            other => return Err(unexpected_reply(job_id, "begin-reduce", other)),
        };
        let keys = self.partition_keys(job_id, partition, spec.partitions);
        let mut invocation = ScriptKeys::new()
            .key("part", keys.record())
            .key("lease", keys.lease())
            .key("map", keys.data())
            .invocation(&LEASE_PARTITION);
        invocation.arg(lease_ttl.as_millis() as u64);
        // Replicated: a partition found reduced is about to be counted by its job step.
        let reply: Vec<Value> = self.invoke_replicated(&invocation, &keys.record()).await?;
        let mut items = reply.into_iter();
        let tag: String = reply_item(job_id, items.next())?;
        let mut text = || reply_item::<String>(job_id, items.next());
        Ok(match tag.as_str() {
            "missing" => BeginReduce::Lost {
                what: lost_partition(partition),
                spec,
            },
            "closed" => match self.job_state(job_id).await? {
                None => BeginReduce::Missing,
                Some(state) => BeginReduce::NotReducing(state),
            },
            "reduced" => {
                let records = parse_u64(job_id, Some(&text()?))?;
                BeginReduce::Finished(self.mark_reduced(&spec, partition, records).await?)
            }
            "busy" => BeginReduce::Busy(Duration::from_millis(parse_u64(job_id, Some(&text()?))?)),
            "acquired" => {
                let token = parse_u64(job_id, Some(&text()?))?;
                let entries: Vec<(String, Vec<u8>)> = reply_item(job_id, items.next())?;
                BeginReduce::Acquired(ReduceStart {
                    spec,
                    total_chunks,
                    token,
                    partials: chunk_entries(job_id, partition, entries)?,
                    committed_outputs,
                })
            }
            other => return Err(unexpected_reply(job_id, "lease", other)),
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
        let spec = spec("j", 1);
        assert_eq!(
            store.acquire_lease(&spec, 0, LEASE).await.unwrap(),
            LeaseOutcome::Missing
        );
        store.create_job(&spec).await.unwrap();
        let LeaseOutcome::Acquired(first) = store.acquire_lease(&spec, 0, LEASE).await.unwrap()
        else {
            panic!("a free lease is granted");
        };
        assert!(matches!(
            store.acquire_lease(&spec, 0, LEASE).await.unwrap(),
            LeaseOutcome::Busy(remaining) if remaining > Duration::ZERO && remaining <= LEASE
        ));
        assert!(store.renew_lease(&spec, 0, first, LEASE).await.unwrap());
        assert!(!store.renew_lease(&spec, 0, first + 1, LEASE).await.unwrap());
        // Once the lease is gone (expired), a new holder gets a larger token.
        let lease = store.keys.job("j").partition(0, spec.partitions).lease();
        let _: i64 = test.raw(redis::cmd("DEL").arg(&lease)).await;
        assert!(!store.renew_lease(&spec, 0, first, LEASE).await.unwrap());
        let LeaseOutcome::Acquired(second) = store.acquire_lease(&spec, 0, LEASE).await.unwrap()
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
        // No lease is ever granted on a running job's partition: a commit is fenced.
        assert_eq!(
            store
                .commit_partition(&running, 0, 1, &output)
                .await
                .unwrap(),
            ReduceCommitOutcome::Fenced
        );

        let spec = reducing_job(store, "j", 2).await;
        let LeaseOutcome::Acquired(token) = store.acquire_lease(&spec, 0, LEASE).await.unwrap()
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
            !test.exists(&job.partition(0, spec.partitions).data()).await,
            "partials deleted"
        );
        assert!(
            !test
                .exists(&job.partition(0, spec.partitions).lease())
                .await,
            "lease released"
        );
        assert_eq!(
            store.status("j").await.unwrap().unwrap().state,
            JobState::Reducing
        );

        let LeaseOutcome::Acquired(token) = store.acquire_lease(&spec, 1, LEASE).await.unwrap()
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
        assert!(!test.exists(&job.partition(1, spec.partitions).data()).await);
        for kept in [
            job.meta(),
            job.counters(),
            job.partitions_reduced(),
            job.stats(),
            job.partition(0, spec.partitions).result(),
            job.partition(1, spec.partitions).result(),
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
        let lease = store.keys.job("j").partition(1, spec.partitions).lease();
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
        let data = store.keys.job("j").partition(0, spec.partitions).data();
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
            store.lease_facts(&spec).await.unwrap(),
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
            .raw(redis::cmd("DEL").arg(job.partition(1, spec.partitions).lease()))
            .await;
        let facts = store.lease_facts(&spec).await.unwrap();
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
                .claim_lease_republish(&spec, &candidates, AGAIN)
                .await
                .unwrap(),
            vec![1]
        );
        assert!(store
            .claim_lease_republish(&spec, &candidates, AGAIN)
            .await
            .unwrap()
            .is_empty());
        let facts = &store.lease_facts(&spec).await.unwrap()[1];
        assert_eq!(facts.republished, Some(expired.token));
        assert!(facts.republished_ms > 0);
        // No new grant came for a while: claimed again.
        assert_eq!(
            store
                .claim_lease_republish(&spec, &[(1, expired.token)], Duration::ZERO)
                .await
                .unwrap(),
            vec![1]
        );
        // A claim given back (its publish failed) is claimed again.
        store.release_lease_republish(&spec, 1).await.unwrap();
        assert_eq!(
            store
                .claim_lease_republish(&spec, &[(1, expired.token)], AGAIN)
                .await
                .unwrap(),
            vec![1]
        );
        // A stale token (a newer grant exists) is not claimed.
        assert!(store
            .claim_lease_republish(&spec, &[(1, expired.token - 1)], Duration::ZERO)
            .await
            .unwrap()
            .is_empty());
        // Nothing is claimed for a job that is not reducing, nor for a missing one.
        store
            .end_job(&spec, JobState::Failed, "stop")
            .await
            .unwrap();
        store.release_lease_republish(&spec, 1).await.unwrap();
        assert!(store
            .claim_lease_republish(&spec, &[(1, expired.token)], AGAIN)
            .await
            .unwrap()
            .is_empty());
        let gone = super::super::test_support::spec("gone", 3);
        assert!(store
            .claim_lease_republish(&gone, &[(0, 1)], Duration::ZERO)
            .await
            .unwrap()
            .is_empty());
        store.release_lease_republish(&gone, 0).await.unwrap();
        assert!(!test.exists(&store.keys.job("gone").meta()).await);
    }

    #[tokio::test]
    async fn a_crash_between_the_partition_step_and_the_job_step_is_finished_by_the_redelivery() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = reducing_job(store, "j", 2).await;
        let BeginReduce::Acquired(start) = store.begin_reduce("j", 0, LEASE).await.unwrap() else {
            panic!("a free lease is granted");
        };
        let output = reduce_output("a\t1\nb\t2\n");
        assert_eq!(
            store
                .commit_partition(&spec, 0, start.token, &output)
                .await
                .unwrap(),
            ReduceCommitOutcome::Reduced
        );
        // Undo the job step, as if the reducer died between the two steps.
        let job = store.keys.job("j");
        let _: i64 = test
            .raw(redis::cmd("SREM").arg(job.partitions_reduced()).arg(0))
            .await;
        let _: i64 = test
            .raw(
                redis::cmd("HINCRBY")
                    .arg(job.counters())
                    .arg("output_records")
                    .arg(-2),
            )
            .await;
        // The redelivery finds the result stored and runs the job step alone, with the
        // record count the partition step kept.
        assert_eq!(
            store.begin_reduce("j", 0, LEASE).await.unwrap(),
            BeginReduce::Finished(ReduceCommitOutcome::Reduced)
        );
        assert!(store.is_reduced("j", 0).await.unwrap());
        let status = store.status("j").await.unwrap().unwrap();
        assert_eq!(status.counters.get("output_records"), Some(&2));
        assert_eq!(
            store.begin_reduce("j", 0, LEASE).await.unwrap(),
            BeginReduce::AlreadyReduced
        );
    }

    #[tokio::test]
    async fn a_reducing_partition_whose_record_vanished_is_lost() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let spec = reducing_job(store, "j", 2).await;
        let keys = store.keys.job("j").partition(1, spec.partitions);
        let _: i64 = test
            .raw(redis::cmd("DEL").arg(keys.record()).arg(keys.data()))
            .await;
        let begun = store.begin_reduce("j", 1, LEASE).await.unwrap();
        assert!(
            matches!(&begun, BeginReduce::Lost { what, spec: lost } if what.contains("partition 1") && *lost == spec),
            "{begun:?}"
        );
        assert!(
            !test.exists(&keys.lease()).await,
            "no lease on a lost partition"
        );
        assert_eq!(
            store
                .commit_partition(&spec, 1, 1, &reduce_output("x\t1\n"))
                .await
                .unwrap(),
            ReduceCommitOutcome::Lost(lost_partition(1))
        );
        assert!(!test.exists(&keys.result()).await, "nothing stored");
    }
}
