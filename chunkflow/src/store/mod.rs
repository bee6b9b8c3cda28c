//! The commit protocol's Redis side: every read and write of job state goes through
//! [`Store`], and every state change that must be exact is one Lua script, atomic.
//!
//! Invariants (see ARCHITECTURE.md):
//! - a chunk's output for every partition and its membership in the `done` set are written
//!   in one script; the first commit of a chunk wins, a later one writes nothing;
//! - completion is set membership compared with the sealed total, never a counter, and the
//!   `running → reducing` transition happens inside a script, so exactly one caller (the
//!   last chunk's commit, or the producer's seal) observes `completed`;
//! - a partition's result is stored and the partition marked reduced in one script; the
//!   `reducing → succeeded` transition, the deletion of intermediate data and the TTL on
//!   the job's keys happen in the script that reduces the last partition.
//!
//! Connections come from a deadpool pool with connect, response, wait and recycle timeouts.
//! A connection whose command failed with a timeout or I/O error is detached from the pool
//! and dropped, never reused: a reply may still be in flight on it.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis::{self, AsyncConnectionConfig, RedisError, Script};
use deadpool_redis::{Manager, Pool, Runtime};

pub mod keys;
pub mod presence;

use crate::config::redact_url;
use crate::job::{now_ms, JobSpec, JobState, JobStatus};
use crate::jobs::{MapOutput, ReduceOutput};
use keys::{JobKeys, Keys};

/// A failure talking to Redis or a job record that makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach Redis at {url}: {source}; is it running? (start it with `redis-server --daemonize yes`, or set --redis-url / REDIS_URL)")]
    Connect { url: String, source: RedisError },
    #[error("invalid Redis URL {url}: {source}")]
    InvalidUrl { url: String, source: RedisError },
    #[error("Redis command failed: {0}")]
    Redis(#[from] RedisError),
    #[error("no Redis connection available: {0}")]
    Pool(String),
    #[error("a job with id `{0}` already exists in this namespace; choose another --job-id")]
    JobExists(String),
    #[error("job `{job}` has a corrupt record in Redis: {what}")]
    Corrupt { job: String, what: String },
}

impl StoreError {
    /// Whether retrying later may succeed (Redis down, timeout) as opposed to a job whose
    /// record is broken.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Connect { .. } | StoreError::Redis(_) | StoreError::Pool(_)
        )
    }
}

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

// Scripts start with a shebang so Redis 7 treats them as strict: every key is declared in
// KEYS (cluster-safe) and a script is refused before its first write when Redis is out of
// memory, instead of failing halfway.

static CREATE_JOB: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua
-- KEYS: meta. ARGV: spec json, partitions, now_ms
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'state', 'running', 'partitions', ARGV[2],
  'created_ms', ARGV[3], 'updated_ms', ARGV[3])
return 1
"#,
    )
});

static COMMIT_CHUNK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua
-- KEYS: meta, done, counters, stats, map:0 .. map:P-1
-- ARGV: chunk, now_ms, redelivered (0/1), n_counters, (name, value) * n_counters,
--       partial_0 .. partial_P-1
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
if state == 'running' or state == 'reducing' then
  redis.call('HINCRBY', KEYS[4], 'deliveries', 1)
  if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[4], 'redeliveries', 1) end
end
if state ~= 'running' then return {'not_running', state} end
local chunk = ARGV[1]
local total = redis.call('HGET', KEYS[1], 'total')
if total and tonumber(chunk) >= tonumber(total) then return {'out_of_range', total} end
if redis.call('SADD', KEYS[2], chunk) == 0 then
  redis.call('HINCRBY', KEYS[4], 'duplicates', 1)
  return {'duplicate'}
end
-- The done set and the commit count move together; if they disagree, Redis lost keys.
local committed = redis.call('HINCRBY', KEYS[1], 'committed', 1)
local members = redis.call('SCARD', KEYS[2])
if members ~= committed then
  return {'lost', 'the set of committed chunks has ' .. members .. ' members but ' .. committed .. ' commits were recorded'}
end
local n_counters = tonumber(ARGV[4])
for i = 1, n_counters do
  redis.call('HINCRBY', KEYS[3], ARGV[3 + 2 * i], ARGV[4 + 2 * i])
end
-- Only non-empty partials are stored (tiny chunks touch few partitions); the job record
-- counts them per partition so a reducer can tell a lost hash from an empty one.
local first_partial = 5 + 2 * n_counters
for k = 5, #KEYS do
  local partial = ARGV[first_partial + k - 5]
  if partial ~= '' then
    redis.call('HSET', KEYS[k], chunk, partial)
    redis.call('HINCRBY', KEYS[1], 'outputs:' .. (k - 5), 1)
  end
end
redis.call('HSET', KEYS[1], 'updated_ms', ARGV[2])
if total and members == tonumber(total) then
  redis.call('HSET', KEYS[1], 'state', 'reducing', 'reducing_ms', ARGV[2])
  return {'completed'}
end
return {'committed'}
"#,
    )
});

static SEAL_JOB: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua
-- KEYS: meta, done. ARGV: total, now_ms
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
local recorded = redis.call('HGET', KEYS[1], 'total')
if recorded and recorded ~= ARGV[1] then return {'mismatch', recorded} end
if state ~= 'running' then return {'not_running', state} end
local total = tonumber(ARGV[1])
local committed = redis.call('SCARD', KEYS[2])
local recorded_commits = tonumber(redis.call('HGET', KEYS[1], 'committed') or '0')
if committed ~= recorded_commits then
  return {'lost', 'the set of committed chunks has ' .. committed .. ' members but ' .. recorded_commits .. ' commits were recorded'}
end
if committed > 0 then
  for _, chunk in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if tonumber(chunk) >= total then
      return {'corrupt', 'chunk ' .. chunk .. ' was committed but the producer published only ' .. total .. ' chunks (a foreign or corrupt task)'}
    end
  end
end
redis.call('HSET', KEYS[1], 'total', ARGV[1], 'sealed_ms', ARGV[2], 'updated_ms', ARGV[2])
if committed == total then
  redis.call('HSET', KEYS[1], 'state', 'reducing', 'reducing_ms', ARGV[2])
  return {'completed'}
end
return {'sealed', tostring(committed)}
"#,
    )
});

/// Number of fixed keys before the per-partition ones in [`Store::all_job_keys`].
const FIXED_JOB_KEYS: usize = 6;

/// Shared by the scripts that end a job: delete intermediate data, put a TTL on the rest.
/// KEYS: meta, done, counters, reduced, stats, errors, map:0..P-1, result:0..P-1.
const END_JOB_LUA: &str = r#"
local function end_job(partitions, ttl)
  redis.call('UNLINK', KEYS[2])
  for k = 7, 6 + partitions do redis.call('UNLINK', KEYS[k]) end
  for _, k in ipairs({1, 3, 4, 5, 6}) do redis.call('EXPIRE', KEYS[k], ttl) end
  for k = 7 + partitions, 6 + 2 * partitions do redis.call('EXPIRE', KEYS[k], ttl) end
end
"#;

static COMMIT_PARTITION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"#!lua
{END_JOB_LUA}
-- KEYS: as end_job, then lease:P. ARGV: partition, result, records, ttl_secs, now_ms, token
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {{'missing'}} end
if state ~= 'reducing' then return {{'not_reducing', state}} end
local partition = tonumber(ARGV[1])
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then return {{'duplicate'}} end
local lease = KEYS[#KEYS]
if redis.call('GET', lease) ~= ARGV[6] then return {{'fenced'}} end
local partitions = tonumber(redis.call('HGET', KEYS[1], 'partitions'))
redis.call('SET', KEYS[7 + partitions + partition], ARGV[2])
redis.call('UNLINK', KEYS[7 + partition])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('DEL', lease)
redis.call('HINCRBY', KEYS[3], 'output_records', ARGV[3])
redis.call('HSET', KEYS[1], 'updated_ms', ARGV[5])
if redis.call('SCARD', KEYS[4]) == partitions then
  redis.call('HSET', KEYS[1], 'state', 'succeeded', 'finished_ms', ARGV[5])
  end_job(partitions, tonumber(ARGV[4]))
  return {{'succeeded'}}
end
return {{'reduced'}}
"#
    ))
});

static END_JOB: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"#!lua
{END_JOB_LUA}
-- ARGV: reason, ttl_secs, now_ms, new state ('failed' or 'cancelled')
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state ~= 'running' and state ~= 'reducing' then return state end
local partitions = tonumber(redis.call('HGET', KEYS[1], 'partitions'))
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'reason', ARGV[1], 'finished_ms', ARGV[3],
  'updated_ms', ARGV[3])
end_job(partitions, tonumber(ARGV[2]))
return 'ended'
"#
    ))
});

static HSET_IF_JOB_EXISTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua
-- KEYS: meta, target hash. ARGV: field, value. Never recreates an ended or lost job.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"#,
    )
});

static TOMBSTONE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua
-- KEYS: meta. ARGV: spec json, partitions, reason, now_ms, ttl_secs
-- Records that a job whose state Redis lost has failed. Only if nothing is there: it
-- never mixes with (or revives) a job's real state.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'state', 'failed', 'partitions', ARGV[2],
  'reason', ARGV[3], 'created_ms', ARGV[4], 'finished_ms', ARGV[4], 'updated_ms', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"#,
    )
});

static ACQUIRE_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua
-- KEYS: meta, lease:P. ARGV: ttl_ms. A new token is larger than every earlier one.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local remaining = redis.call('PTTL', KEYS[2])
if remaining > 0 then return {'busy', tostring(remaining)} end
local token = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('SET', KEYS[2], token, 'PX', ARGV[1])
return {'acquired', tostring(token)}
"#,
    )
});

static RENEW_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua
-- KEYS: lease:P. ARGV: token, ttl_ms
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// Access to one namespace's job state in Redis.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    keys: Keys,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("keys", &self.keys).finish()
    }
}

fn reply_tag(reply: &[String]) -> &str {
    reply.first().map(String::as_str).unwrap_or("")
}

fn parse_state(job: &str, text: Option<&String>) -> Result<JobState, StoreError> {
    let text = text.map(String::as_str).unwrap_or("");
    JobState::parse(text).ok_or_else(|| StoreError::Corrupt {
        job: job.to_string(),
        what: format!("unknown state `{text}`"),
    })
}

fn parse_u64(job: &str, text: Option<&String>) -> Result<u64, StoreError> {
    let text = text.map(String::as_str).unwrap_or("");
    text.parse().map_err(|_| StoreError::Corrupt {
        job: job.to_string(),
        what: format!("`{text}` is not a number"),
    })
}

impl Store {
    /// Opens a pool to Redis and checks that it answers.
    pub async fn connect(
        url: &str,
        namespace: &str,
        timeout: Duration,
    ) -> Result<Store, StoreError> {
        let connect_error = |source| StoreError::Connect {
            url: redact_url(url),
            source,
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(timeout));
        let manager =
            Manager::new_with_config(url, config).map_err(|source| StoreError::InvalidUrl {
                url: redact_url(url),
                source,
            })?;
        let pool = Pool::builder(manager)
            .max_size(16)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let store = Store {
            pool,
            keys: Keys::new(namespace),
        };
        let mut conn = store.conn().await.map_err(|e| match e {
            StoreError::Redis(source) => connect_error(source),
            StoreError::Pool(text) => connect_error(RedisError::from((
                redis::ErrorKind::Io,
                "connect failed",
                text,
            ))),
            other => other,
        })?;
        let pong: RedisResult<String> = redis::cmd("PING").query_async(&mut *conn).await;
        Self::finish(conn, pong).map_err(|e| match e {
            StoreError::Redis(source) => connect_error(source),
            other => other,
        })?;
        Ok(store)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_redis::PoolError::Backend(e) => StoreError::Redis(e),
            other => StoreError::Pool(other.to_string()),
        })
    }

    /// Returns the connection to the pool, unless the command failed in a way that leaves
    /// the connection's state unknown (timeout, I/O): then it is dropped.
    fn finish<T>(
        conn: deadpool_redis::Connection,
        result: RedisResult<T>,
    ) -> Result<T, StoreError> {
        match result {
            Ok(value) => Ok(value),
            Err(error) => {
                if error.is_timeout() || error.is_io_error() || error.is_connection_dropped() {
                    drop(deadpool_redis::Connection::take(conn));
                }
                Err(StoreError::Redis(error))
            }
        }
    }

    fn all_job_keys(job: &JobKeys, partitions: u32) -> Vec<String> {
        let mut keys = vec![
            job.meta(),
            job.chunks_done(),
            job.counters(),
            job.partitions_reduced(),
            job.stats(),
            job.chunk_errors(),
        ];
        debug_assert_eq!(keys.len(), FIXED_JOB_KEYS);
        keys.extend((0..partitions).map(|p| job.partition_data(p)));
        keys.extend((0..partitions).map(|p| job.partition_result(p)));
        keys
    }

    /// Stores a new job's spec; fails if the id is taken.
    pub async fn create_job(&self, spec: &JobSpec) -> Result<(), StoreError> {
        let job = self.keys.job(&spec.id);
        let spec_json = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt {
            job: spec.id.to_string(),
            what: e.to_string(),
        })?;
        let mut invocation = CREATE_JOB.prepare_invoke();
        invocation
            .key(job.meta())
            .arg(spec_json)
            .arg(spec.partitions)
            .arg(spec.created_ms);
        let mut conn = self.conn().await?;
        let created: RedisResult<i64> = invocation.invoke_async(&mut *conn).await;
        if Self::finish(conn, created)? == 0 {
            return Err(StoreError::JobExists(spec.id.to_string()));
        }
        let mut conn = self.conn().await?;
        let indexed: RedisResult<i64> = redis::cmd("ZADD")
            .arg(self.keys.jobs_index())
            .arg(spec.created_ms)
            .arg(spec.id.as_str())
            .query_async(&mut *conn)
            .await;
        Self::finish(conn, indexed)?;
        Ok(())
    }

    /// The job's spec, or `None` if the job does not exist.
    pub async fn load_spec(&self, job_id: &str) -> Result<Option<JobSpec>, StoreError> {
        let mut conn = self.conn().await?;
        let spec: RedisResult<Option<String>> = redis::cmd("HGET")
            .arg(self.keys.job(job_id).meta())
            .arg("spec")
            .query_async(&mut *conn)
            .await;
        match Self::finish(conn, spec)? {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    job: job_id.to_string(),
                    what: format!("spec is not valid JSON: {e}"),
                }),
        }
    }

    /// Commits one chunk's output to every partition and marks it done, atomically.
    pub async fn commit_chunk(
        &self,
        spec: &JobSpec,
        chunk: u64,
        redelivered: bool,
        output: &MapOutput,
    ) -> Result<CommitOutcome, StoreError> {
        let job = self.keys.job(&spec.id);
        let mut invocation = COMMIT_CHUNK.prepare_invoke();
        invocation
            .key(job.meta())
            .key(job.chunks_done())
            .key(job.counters())
            .key(job.stats());
        for partition in 0..spec.partitions {
            invocation.key(job.partition_data(partition));
        }
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
        let mut conn = self.conn().await?;
        let reply: RedisResult<Vec<String>> = invocation.invoke_async(&mut *conn).await;
        let reply = Self::finish(conn, reply)?;
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
            other => {
                return Err(StoreError::Corrupt {
                    job: spec.id.to_string(),
                    what: format!("unexpected commit reply `{other}`"),
                })
            }
        })
    }

    /// Records the total number of chunks once all are published; detects completion if
    /// every chunk was already committed.
    pub async fn seal_job(&self, job_id: &str, total: u64) -> Result<SealOutcome, StoreError> {
        let job = self.keys.job(job_id);
        let mut invocation = SEAL_JOB.prepare_invoke();
        invocation
            .key(job.meta())
            .key(job.chunks_done())
            .arg(total)
            .arg(now_ms());
        let mut conn = self.conn().await?;
        let reply: RedisResult<Vec<String>> = invocation.invoke_async(&mut *conn).await;
        let reply = Self::finish(conn, reply)?;
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
            other => {
                return Err(StoreError::Corrupt {
                    job: job_id.to_string(),
                    what: format!("unexpected seal reply `{other}`"),
                })
            }
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
        let mut invocation = END_JOB.prepare_invoke();
        for key in Self::all_job_keys(&job, spec.partitions) {
            invocation.key(key);
        }
        invocation
            .arg(reason)
            .arg(spec.ttl_secs)
            .arg(now_ms())
            .arg(state.as_str());
        let mut conn = self.conn().await?;
        let reply: RedisResult<String> = invocation.invoke_async(&mut *conn).await;
        Ok(Self::finish(conn, reply)? == "ended")
    }

    /// Whether a partition's result is already stored.
    pub async fn is_reduced(&self, job_id: &str, partition: u32) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let reply: RedisResult<bool> = redis::cmd("SISMEMBER")
            .arg(self.keys.job(job_id).partitions_reduced())
            .arg(partition)
            .query_async(&mut *conn)
            .await;
        Self::finish(conn, reply)
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
        let mut conn = self.conn().await?;
        type Reply = (Vec<(String, Vec<u8>)>, Option<u64>);
        let reply: RedisResult<Reply> = pipe.query_async(&mut *conn).await;
        let (entries, committed) = Self::finish(conn, reply)?;
        let entries = entries
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
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((entries, committed.unwrap_or(0)))
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
        let mut invocation = COMMIT_PARTITION.prepare_invoke();
        for key in Self::all_job_keys(&job, spec.partitions) {
            invocation.key(key);
        }
        invocation.key(job.partition_lease(partition));
        invocation
            .arg(partition)
            .arg(output.lines.as_slice())
            .arg(output.records)
            .arg(spec.ttl_secs)
            .arg(now_ms())
            .arg(token);
        let mut conn = self.conn().await?;
        let reply: RedisResult<Vec<String>> = invocation.invoke_async(&mut *conn).await;
        let reply = Self::finish(conn, reply)?;
        Ok(match reply_tag(&reply) {
            "reduced" => ReduceCommitOutcome::Reduced,
            "succeeded" => ReduceCommitOutcome::Succeeded,
            "duplicate" => ReduceCommitOutcome::Duplicate,
            "missing" => ReduceCommitOutcome::Missing,
            "fenced" => ReduceCommitOutcome::Fenced,
            "not_reducing" => {
                ReduceCommitOutcome::NotReducing(parse_state(&spec.id, reply.get(1))?)
            }
            other => {
                return Err(StoreError::Corrupt {
                    job: spec.id.to_string(),
                    what: format!("unexpected reduce reply `{other}`"),
                })
            }
        })
    }

    /// Records a failed job whose whole record Redis lost (it restarted empty, or evicted
    /// it), so that `status` shows why and workers drop its remaining tasks. Does nothing if
    /// any record of the job exists.
    pub async fn tombstone_lost_job(
        &self,
        spec: &JobSpec,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let spec_json = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt {
            job: spec.id.to_string(),
            what: e.to_string(),
        })?;
        let mut invocation = TOMBSTONE.prepare_invoke();
        invocation
            .key(self.keys.job(&spec.id).meta())
            .arg(spec_json)
            .arg(spec.partitions)
            .arg(reason)
            .arg(now_ms())
            .arg(spec.ttl_secs);
        let mut conn = self.conn().await?;
        let reply: RedisResult<i64> = invocation.invoke_async(&mut *conn).await;
        Ok(Self::finish(conn, reply)? == 1)
    }

    /// Asks for the lease on a partition, valid for `ttl`.
    pub async fn acquire_lease(
        &self,
        job_id: &str,
        partition: u32,
        ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        let job = self.keys.job(job_id);
        let mut invocation = ACQUIRE_LEASE.prepare_invoke();
        invocation
            .key(job.meta())
            .key(job.partition_lease(partition))
            .arg(ttl.as_millis() as u64);
        let mut conn = self.conn().await?;
        let reply: RedisResult<Vec<String>> = invocation.invoke_async(&mut *conn).await;
        let reply = Self::finish(conn, reply)?;
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
        let mut invocation = RENEW_LEASE.prepare_invoke();
        invocation
            .key(self.keys.job(job_id).partition_lease(partition))
            .arg(token)
            .arg(ttl.as_millis() as u64);
        let mut conn = self.conn().await?;
        let reply: RedisResult<i64> = invocation.invoke_async(&mut *conn).await;
        Ok(Self::finish(conn, reply)? == 1)
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

    async fn hset_if_job_exists(
        &self,
        job: &JobKeys,
        hash: String,
        field: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        let mut invocation = HSET_IF_JOB_EXISTS.prepare_invoke();
        invocation.key(job.meta()).key(hash).arg(field).arg(value);
        let mut conn = self.conn().await?;
        let reply: RedisResult<i64> = invocation.invoke_async(&mut *conn).await;
        Self::finish(conn, reply).map(|_| ())
    }

    /// The last recorded error of a chunk, if any.
    pub async fn chunk_error(
        &self,
        job_id: &str,
        chunk: u64,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn().await?;
        let reply: RedisResult<Option<String>> = redis::cmd("HGET")
            .arg(self.keys.job(job_id).chunk_errors())
            .arg(chunk)
            .query_async(&mut *conn)
            .await;
        Self::finish(conn, reply)
    }

    /// Records that the producer of a job is alive and publishing.
    pub async fn producer_heartbeat(&self, job_id: &str) -> Result<(), StoreError> {
        let job = self.keys.job(job_id);
        self.hset_if_job_exists(&job, job.meta(), "producer_seen_ms", &now_ms().to_string())
            .await
    }

    /// Ids of the jobs in the namespace's index, oldest first; drops index entries whose
    /// job has expired.
    pub async fn job_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn().await?;
        let reply: RedisResult<Vec<String>> = redis::cmd("ZRANGE")
            .arg(self.keys.jobs_index())
            .arg(0)
            .arg(-1)
            .query_async(&mut *conn)
            .await;
        let ids = Self::finish(conn, reply)?;
        let mut live = Vec::with_capacity(ids.len());
        for id in ids {
            let mut conn = self.conn().await?;
            let exists: RedisResult<bool> = redis::cmd("EXISTS")
                .arg(self.keys.job(&id).meta())
                .query_async(&mut *conn)
                .await;
            if Self::finish(conn, exists)? {
                live.push(id);
            } else {
                let mut conn = self.conn().await?;
                let removed: RedisResult<i64> = redis::cmd("ZREM")
                    .arg(self.keys.jobs_index())
                    .arg(&id)
                    .query_async(&mut *conn)
                    .await;
                Self::finish(conn, removed)?;
            }
        }
        Ok(live)
    }

    /// A job's state, sealed total and last producer heartbeat, in one round trip.
    pub async fn job_progress(
        &self,
        job_id: &str,
    ) -> Result<Option<(JobState, Option<u64>, u64)>, StoreError> {
        let mut conn = self.conn().await?;
        type Fields = (Option<String>, Option<u64>, Option<u64>, Option<u64>);
        let reply: RedisResult<Fields> = redis::cmd("HMGET")
            .arg(self.keys.job(job_id).meta())
            .arg("state")
            .arg("total")
            .arg("producer_seen_ms")
            .arg("created_ms")
            .query_async(&mut *conn)
            .await;
        let (state, total, seen, created) = Self::finish(conn, reply)?;
        let Some(state) = state else {
            return Ok(None);
        };
        let state = parse_state(job_id, Some(&state))?;
        Ok(Some((state, total, seen.or(created).unwrap_or(0))))
    }

    /// Warns when Redis may evict keys of running jobs (`allkeys-*` eviction policies):
    /// jobs would then fail with lost state instead of completing.
    pub async fn warn_if_evicting(&self) {
        let Ok(mut conn) = self.conn().await else {
            return;
        };
        let reply: RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut *conn)
            .await;
        if let Ok(values) = Self::finish(conn, reply) {
            if let Some(policy) = values.get(1) {
                if policy.starts_with("allkeys") {
                    tracing::warn!(
                        policy = %policy,
                        "Redis maxmemory-policy may evict keys of running jobs; such jobs will fail \
                         with lost state. Use noeviction (or volatile-*) for chunkflow's Redis"
                    );
                }
            }
        }
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
        let mut conn = self.conn().await?;
        type Reply = (
            BTreeMap<String, String>,
            u64,
            u64,
            BTreeMap<String, u64>,
            BTreeMap<String, u64>,
        );
        let reply: RedisResult<Reply> = pipe.query_async(&mut *conn).await;
        let (meta, committed, reduced, counters, stats) = Self::finish(conn, reply)?;
        let Some(spec_json) = meta.get("spec") else {
            return Ok(None);
        };
        let spec: JobSpec = serde_json::from_str(spec_json).map_err(|e| StoreError::Corrupt {
            job: job_id.to_string(),
            what: format!("spec is not valid JSON: {e}"),
        })?;
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

    /// The stored result of every partition, in partition order; `None` where missing.
    pub async fn partition_results(
        &self,
        job_id: &str,
        partitions: u32,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let job = self.keys.job(job_id);
        let mut results = Vec::with_capacity(partitions as usize);
        for partition in 0..partitions {
            let mut conn = self.conn().await?;
            let reply: RedisResult<Option<Vec<u8>>> = redis::cmd("GET")
                .arg(job.partition_result(partition))
                .query_async(&mut *conn)
                .await;
            results.push(Self::finish(conn, reply)?);
        }
        Ok(results)
    }
}

type RedisResult<T> = Result<T, RedisError>;
