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
//! Layout, one file per protocol phase: `lifecycle` (create, seal, end, tombstone, producer
//! heartbeat), `map_commit` (a chunk's attempts, its commit and its error notes), `reduce` (leases,
//! partials, a partition's commit, [`Store::begin_reduce`]), `views` (read-only: status, job
//! lists, failures, partition progress, results); [`keys`] is the key schema and
//! [`presence`] the heartbeat records. The Lua scripts live in `lua/`, one per file. This
//! file holds what they share: the one Redis connection factory ([`RedisEndpoint`]), the
//! pool, the one function every request goes through (`Store::invoke`), script loading and
//! reply parsing.
//!
//! Scripts never count key positions: the Rust side names every key it passes by role
//! (`ScriptKeys`, sent as `ARGV[1]`), and `lua/_key_layout.lua` binds them by name and
//! refuses a layout that disagrees with `KEYS`, before any write.
//!
//! Connections come from a deadpool pool with connect, response, wait and recycle timeouts.
//! A connection whose request failed with a timeout or I/O error, or whose request was
//! cancelled before its reply arrived, is detached from the pool and dropped, never reused:
//! a reply may still be in flight on it (redis-rs issue 489).
//!
//! Must not: format a key (that is [`keys`]), decide what an outcome means for a delivery
//! (that is the worker, the reducer and `protocol`), or recreate part of a job's state.

use std::time::Duration;

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{
    self, AsyncConnectionConfig, ConnectionInfo, FromRedisValue, IntoConnectionInfo, RedisError,
    Script, ScriptInvocation,
};
use deadpool_redis::{Manager, Pool, Runtime};
use tokio_util::sync::CancellationToken;

pub mod keys;
mod lifecycle;
mod map_commit;
pub mod presence;
mod reduce;
#[cfg(test)]
mod test_support;
mod views;

pub use lifecycle::{DeadTaskFacts, DeadTaskRef, SealOutcome};
pub use map_commit::{AttemptStart, CommitOutcome};
pub use reduce::{BeginReduce, LeaseFacts, LeaseOutcome, ReduceCommitOutcome, ReduceStart};
pub use views::{Failure, JobProgress, PartitionProgress};

use crate::config::{redact_url, ConnectionConfig};
use crate::job::JobState;
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
    /// Whether this is an outage of Redis rather than a problem of the task: Redis
    /// unreachable, not answering in time, still loading its data, or out of memory. Such
    /// an error is waited out (the consume loop stops consuming until Redis answers) and
    /// costs no attempt.
    pub fn is_outage(&self) -> bool {
        match self {
            StoreError::Connect { .. } | StoreError::Pool(_) => true,
            StoreError::Redis(error) => {
                error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_refusal()
                    || error.is_connection_dropped()
                    || matches!(error.code(), Some("OOM" | "LOADING" | "MASTERDOWN"))
            }
            _ => false,
        }
    }

    /// Whether Redis refused a write because it is out of memory (`maxmemory` reached
    /// under `noeviction`).
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, StoreError::Redis(error) if error.code() == Some("OOM"))
    }

    /// Whether retrying later may succeed (Redis down, timeout) as opposed to a job whose
    /// record is broken.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Connect { .. } | StoreError::Redis(_) | StoreError::Pool(_)
        )
    }
}

/// How long to wait for a TCP connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in the pool.
const POOL_SIZE: usize = 16;
/// The longest pause between attempts of [`Store::connect_retrying`].
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(5);

/// Where Redis is and how long to wait for it: the one place a Redis connection is
/// configured, for the pool and for dedicated connections alike. Its errors carry the URL
/// with the password redacted.
#[derive(Clone)]
pub struct RedisEndpoint {
    info: ConnectionInfo,
    redacted_url: String,
    response_timeout: Duration,
}

impl std::fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEndpoint")
            .field("url", &self.redacted_url)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

impl RedisEndpoint {
    /// Parses `url`; every request on its connections waits at most `response_timeout`.
    pub fn parse(url: &str, response_timeout: Duration) -> Result<Self, StoreError> {
        let redacted_url = redact_url(url);
        let info = url
            .into_connection_info()
            .map_err(|source| StoreError::InvalidUrl {
                url: redacted_url.clone(),
                source,
            })?;
        Ok(RedisEndpoint {
            info,
            redacted_url,
            response_timeout,
        })
    }

    fn connection_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.response_timeout))
    }

    fn connect_error(&self, source: RedisError) -> StoreError {
        StoreError::Connect {
            url: self.redacted_url.clone(),
            source,
        }
    }

    /// A dedicated (unpooled) connection, for heartbeats and listings.
    pub async fn connect(&self) -> Result<MultiplexedConnection, StoreError> {
        let client =
            redis::Client::open(self.info.clone()).map_err(|source| StoreError::InvalidUrl {
                url: self.redacted_url.clone(),
                source,
            })?;
        client
            .get_multiplexed_async_connection_with_config(&self.connection_config())
            .await
            .map_err(|source| self.connect_error(source))
    }

    fn pool(&self) -> Result<Pool, StoreError> {
        let manager = Manager::new_with_config(self.info.clone(), self.connection_config())
            .map_err(|source| StoreError::InvalidUrl {
                url: self.redacted_url.clone(),
                source,
            })?;
        Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(self.response_timeout))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))
    }
}

/// A dedicated Redis connection for heartbeats and listings (see [`RedisEndpoint`]).
pub async fn connect_dedicated(
    url: &str,
    response_timeout: Duration,
) -> Result<MultiplexedConnection, StoreError> {
    RedisEndpoint::parse(url, response_timeout)?.connect().await
}

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

/// One request to Redis, as [`Store::invoke`] sends it.
enum Request<'a> {
    Command(&'a redis::Cmd),
    Pipeline(&'a redis::Pipeline),
    Script(&'a ScriptInvocation<'a>),
}

impl<'a> From<&'a redis::Cmd> for Request<'a> {
    fn from(command: &'a redis::Cmd) -> Self {
        Request::Command(command)
    }
}

impl<'a> From<&'a mut redis::Cmd> for Request<'a> {
    fn from(command: &'a mut redis::Cmd) -> Self {
        Request::Command(command)
    }
}

impl<'a> From<&'a redis::Pipeline> for Request<'a> {
    fn from(pipeline: &'a redis::Pipeline) -> Self {
        Request::Pipeline(pipeline)
    }
}

impl<'a> From<&'a ScriptInvocation<'a>> for Request<'a> {
    fn from(invocation: &'a ScriptInvocation<'a>) -> Self {
        Request::Script(invocation)
    }
}

/// A pooled connection with a request on it. It goes back to the pool only through
/// [`Borrowed::give_back`]; dropped otherwise (the request timed out, failed with an I/O
/// error, or the caller's future was cancelled while waiting for the reply), it is detached
/// from the pool and closed, because a reply may still be in flight on it.
struct Borrowed {
    conn: Option<deadpool_redis::Connection>,
}

impl Borrowed {
    #[allow(clippy::expect_used)]
    fn get(&mut self) -> &mut deadpool_redis::Connection {
        // Invariant: `conn` is `Some` from construction until `give_back` or drop.
        self.conn
            .as_mut()
            .expect("a borrowed connection is held until given back")
    }

    fn give_back(mut self) {
        drop(self.conn.take());
    }
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(deadpool_redis::Connection::take(conn));
        }
    }
}

/// Whether the error leaves the connection's state unknown (a reply may still come).
fn poisons_connection(error: &RedisError) -> bool {
    error.is_timeout() || error.is_io_error() || error.is_connection_dropped()
}

impl Store {
    /// Opens a pool to Redis and checks that it answers.
    pub async fn connect(
        url: &str,
        namespace: &str,
        timeout: Duration,
    ) -> Result<Store, StoreError> {
        let endpoint = RedisEndpoint::parse(url, timeout)?;
        let store = Store {
            pool: endpoint.pool()?,
            keys: Keys::new(namespace),
        };
        let pong: Result<String, StoreError> = store.invoke(&redis::cmd("PING")).await;
        pong.map_err(|e| match e {
            StoreError::Redis(source) => endpoint.connect_error(source),
            StoreError::Pool(text) => endpoint.connect_error(RedisError::from((
                redis::ErrorKind::Io,
                "connect failed",
                text,
            ))),
            other => other,
        })?;
        Ok(store)
    }

    /// Connects to Redis, retrying with capped exponential backoff until it answers;
    /// `Ok(None)` if `shutdown` comes first. An invalid URL is an error at once.
    pub async fn connect_retrying(
        config: &ConnectionConfig,
        shutdown: &CancellationToken,
    ) -> Result<Option<Store>, StoreError> {
        let mut backoff = Duration::from_millis(250);
        loop {
            match Store::connect(&config.redis_url, &config.namespace, config.redis_timeout).await {
                Ok(store) => return Ok(Some(store)),
                Err(error @ StoreError::InvalidUrl { .. }) => return Err(error),
                Err(error) => {
                    tracing::error!(error = %error, retry_in = ?backoff, "Redis unavailable");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_CONNECT_BACKOFF);
                }
            }
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Sends one request on a pooled connection and reads its reply: the only place a
    /// connection is taken from the pool. The connection goes back to the pool only after a
    /// reply (or an error reply) was read; see [`Borrowed`].
    async fn invoke<'a, T: FromRedisValue>(
        &self,
        request: impl Into<Request<'a>>,
    ) -> Result<T, StoreError> {
        let conn = self.pool.get().await.map_err(|e| match e {
            deadpool_redis::PoolError::Backend(e) => StoreError::Redis(e),
            other => StoreError::Pool(other.to_string()),
        })?;
        let mut borrowed = Borrowed { conn: Some(conn) };
        let reply: Result<T, RedisError> = match request.into() {
            Request::Command(command) => command.query_async(borrowed.get()).await,
            Request::Pipeline(pipeline) => pipeline.query_async(borrowed.get()).await,
            Request::Script(invocation) => invocation.invoke_async(borrowed.get()).await,
        };
        match reply {
            Ok(value) => {
                borrowed.give_back();
                Ok(value)
            }
            Err(error) => {
                if !poisons_connection(&error) {
                    borrowed.give_back();
                }
                Err(StoreError::Redis(error))
            }
        }
    }

    /// Sends a write that must not be lost (a commit step, a seal, a job's end).
    // TODO(redis-cluster branch): WAIT for `--redis-min-replicas` on the node of
    // `written_key`; this placeholder is replaced by that branch's version at the merge.
    async fn invoke_replicated<'a, T: FromRedisValue>(
        &self,
        request: impl Into<Request<'a>>,
        written_key: &str,
    ) -> Result<T, StoreError> {
        let _ = written_key;
        self.invoke(request).await
    }

    /// The keys a script that ends a job needs, by role (see `lua/_end_job.lua`): the job's
    /// own keys, all in its slot.
    fn job_keys(job: &JobKeys) -> ScriptKeys {
        ScriptKeys::new()
            .key("meta", job.meta())
            .key("done", job.chunks_done())
            .key("counters", job.counters())
            .key("reduced", job.partitions_reduced())
            .key("stats", job.stats())
            .key("errors", job.chunk_errors())
            .key("attempts", job.chunk_attempts())
    }

    /// Warns when Redis may evict keys of running jobs (`allkeys-*` eviction policies):
    /// jobs would then fail with lost state instead of completing.
    pub async fn warn_if_evicting(&self) {
        let mut command = redis::cmd("CONFIG");
        command.arg("GET").arg("maxmemory-policy");
        let Ok(values) = self.invoke::<Vec<String>>(&command).await else {
            return;
        };
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

/// The keys of one script invocation, each named by its role, and their layout: a script
/// gets the layout as `ARGV[1]` and binds `KEYS` by role (`lua/_key_layout.lua`), so the key
/// list is written once, here, and a script cannot silently read the wrong position.
#[derive(Debug, Default)]
struct ScriptKeys {
    keys: Vec<String>,
    layout: Vec<String>,
}

impl ScriptKeys {
    fn new() -> Self {
        ScriptKeys::default()
    }

    /// One key, `K.<role>` in the script.
    fn key(mut self, role: &'static str, key: String) -> Self {
        self.layout.push(role.to_string());
        self.keys.push(key);
        self
    }

    /// An invocation of `script` with these keys and the layout as its first argument; the
    /// caller adds the script's own arguments.
    fn invocation(self, script: &Script) -> ScriptInvocation<'_> {
        let mut invocation = script.prepare_invoke();
        for key in self.keys {
            invocation.key(key);
        }
        invocation.arg(self.layout.join(" "));
        invocation
    }
}

/// Shared by every script: binds `KEYS` by the roles named in `ARGV[1]`.
const KEY_LAYOUT_LUA: &str = include_str!("lua/_key_layout.lua");
/// Shared by the scripts that end a job.
const END_JOB_LUA: &str = include_str!("lua/_end_job.lua");

/// Builds a script from its file: the `#!lua` shebang line first (Redis 7 then treats it as
/// strict: every key declared in KEYS, cluster-safe, and the script refused before its first
/// write when Redis is out of memory instead of failing halfway), then the shared
/// fragments, then the script's body.
fn load_script(source: &str, fragments: &[&str]) -> Script {
    Script::new(&assemble_script(source, fragments))
}

fn assemble_script(source: &str, fragments: &[&str]) -> String {
    let (shebang, body) = source.split_once('\n').unwrap_or((source, ""));
    debug_assert!(
        shebang == "#!lua" || shebang.starts_with("#!lua flags="),
        "every script starts with `#!lua` (and its flags, if any)"
    );
    let mut text = format!("{shebang}\n{KEY_LAYOUT_LUA}");
    for fragment in fragments {
        text.push_str(fragment);
    }
    text.push_str(body);
    text
}

/// The first element of a script's tagged reply (`{'committed'}`, `{'busy', '1500'}`).
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

fn parse_spec(job: &str, json: &str) -> Result<crate::job::JobSpec, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        job: job.to_string(),
        what: format!("spec is not valid JSON: {e}"),
    })
}

fn unexpected_reply(job: &str, script: &str, tag: &str) -> StoreError {
    StoreError::Corrupt {
        job: job.to_string(),
        what: format!("unexpected {script} reply `{tag}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::TestStore;
    use super::*;

    #[test]
    fn layouts_name_every_key_once() {
        let job = Keys::new("ns").job("j");
        let keys = Store::job_keys(&job);
        assert_eq!(keys.keys.len(), 7);
        assert_eq!(
            keys.layout.join(" "),
            "meta done counters reduced stats errors attempts"
        );
    }

    #[test]
    fn scripts_keep_their_shebang_first() {
        let text = assemble_script("#!lua\nreturn 1\n", &[END_JOB_LUA]);
        assert!(text.starts_with("#!lua\n"));
        assert!(text.ends_with("return 1\n"));
        assert!(text.contains("local function end_job"));
    }

    #[test]
    fn endpoints_redact_passwords_in_errors() {
        let error = RedisEndpoint::parse("nonsense://:secret@h/0", Duration::from_secs(1))
            .expect_err("an unknown scheme is refused");
        assert!(matches!(error, StoreError::InvalidUrl { .. }), "{error}");
        assert!(!error.to_string().contains("secret"), "{error}");
        let endpoint =
            RedisEndpoint::parse("redis://:secret@127.0.0.1:1/0", Duration::from_secs(1))
                .expect("a valid URL");
        assert!(!format!("{endpoint:?}").contains("secret"));
    }

    #[tokio::test]
    async fn unreachable_redis_is_a_transient_connect_error() {
        let error = Store::connect("redis://127.0.0.1:1/0", "x", Duration::from_secs(1))
            .await
            .expect_err("nothing listens on port 1");
        assert!(matches!(error, StoreError::Connect { .. }), "{error}");
        assert!(error.is_transient());
        let error = connect_dedicated("redis://:pw@127.0.0.1:1/0", Duration::from_secs(1))
            .await
            .expect_err("nothing listens on port 1");
        assert!(matches!(error, StoreError::Connect { .. }), "{error}");
        assert!(!error.to_string().contains(":pw@"), "{error}");
    }

    #[tokio::test]
    async fn connect_retrying_stops_at_shutdown_and_refuses_bad_urls() {
        let mut config = ConnectionConfig::local("x");
        config.redis_url = "redis://127.0.0.1:1/0".into();
        config.redis_timeout = Duration::from_millis(200);
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let store = Store::connect_retrying(&config, &shutdown).await;
        assert!(matches!(store, Ok(None)));
        config.redis_url = "nonsense://h".into();
        let store = Store::connect_retrying(&config, &CancellationToken::new()).await;
        assert!(matches!(store, Err(StoreError::InvalidUrl { .. })));
    }

    #[tokio::test]
    async fn a_layout_that_disagrees_with_keys_is_refused_before_any_write() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let script = load_script("#!lua\nredis.call('SET', K.target, '1')\nreturn 1\n", &[]);
        let target = store.keys.job("j").meta();
        // Two keys passed, one named.
        let mut invocation = script.prepare_invoke();
        invocation.key(&target).key(&target).arg("target");
        let error = store.invoke::<i64>(&invocation).await.unwrap_err();
        assert!(error.to_string().contains("names 1 keys but 2"), "{error}");
        // A role the script needs but the caller did not name.
        let invocation = ScriptKeys::new()
            .key("other", target.clone())
            .invocation(&script);
        let error = store.invoke::<i64>(&invocation).await.unwrap_err();
        assert!(error.to_string().contains("`target`"), "{error}");
        let exists: bool = store
            .invoke(redis::cmd("EXISTS").arg(&target))
            .await
            .unwrap();
        assert!(!exists, "a refused script wrote nothing");
        // Script errors are replies: the connection stays usable and pooled.
        let invocation = ScriptKeys::new()
            .key("target", target.clone())
            .invocation(&script);
        assert_eq!(store.invoke::<i64>(&invocation).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_timed_out_connection_is_detached_not_reused() {
        let Some(test) = TestStore::open_with_timeout(Duration::from_millis(200)).await else {
            return;
        };
        let store = &test.store;
        // A blocking pop on an empty list outlasts the response timeout.
        let key = store.keys.job("j").meta();
        let pong: String = store.invoke(&redis::cmd("PING")).await.unwrap();
        assert_eq!(pong, "PONG");
        assert_eq!(store.pool.status().size, 1, "a good connection is pooled");
        let reply: Result<Option<Vec<String>>, _> =
            store.invoke(redis::cmd("BLPOP").arg(&key).arg(1)).await;
        let error = reply.expect_err("the reply comes after the timeout");
        assert!(error.is_transient(), "{error}");
        assert_eq!(store.pool.status().size, 0, "the timed-out one is detached");
        // The next request gets a fresh connection and its own reply.
        let pong: String = store.invoke(&redis::cmd("PING")).await.unwrap();
        assert_eq!(pong, "PONG");
    }

    #[tokio::test]
    async fn a_cancelled_request_detaches_its_connection() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let key = store.keys.job("j").meta();
        let pong: String = store.invoke(&redis::cmd("PING")).await.unwrap();
        assert_eq!(pong, "PONG");
        assert_eq!(store.pool.status().size, 1);
        let mut blocking = redis::cmd("BLPOP");
        blocking.arg(&key).arg(2);
        let cancelled = tokio::time::timeout(
            Duration::from_millis(100),
            store.invoke::<Option<Vec<String>>>(&blocking),
        )
        .await;
        assert!(cancelled.is_err(), "the request was still waiting");
        assert_eq!(store.pool.status().size, 0, "its connection left the pool");
        let pong: String = store.invoke(&redis::cmd("PING")).await.unwrap();
        assert_eq!(pong, "PONG");
    }
}
