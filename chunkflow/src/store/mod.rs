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
//! [`presence`] the heartbeat records. The Lua scripts live in `lua/`, one per file.
//! [`connection`] is the one Redis connection factory ([`RedisEndpoint`]: one server or a
//! Redis Cluster, seeds, mode, timeouts). This file holds what the rest share: the one
//! function every request goes through (`Store::invoke`, and `Store::invoke_replicated` for
//! writes that must not be lost), requests to every master, script loading and reply
//! parsing.
//!
//! The same code runs on one Redis server and on a Redis Cluster: every request (command,
//! pipeline or script) touches the keys of one slot, and what must visit every master
//! (listing a namespace's keys, reading the eviction policy) goes through
//! `Store::master_nodes`. With `--redis-min-replicas N`, a write that must not be lost is
//! followed by `WAIT N` on the connection that carried it (on a cluster, the master of the
//! written key's slot); fewer replicas in time is [`StoreError::NotReplicated`], an outage.
//!
//! Scripts never count key positions: the Rust side names every key it passes by role
//! (`ScriptKeys`, sent as `ARGV[1]`), and `lua/_key_layout.lua` binds them by name and
//! refuses a layout that disagrees with `KEYS`, before any write.
//!
//! On one server, connections come from a deadpool pool with connect, response, wait and
//! recycle timeouts. A connection whose request failed with a timeout or I/O error, or whose request was
//! cancelled before its reply arrived, is detached from the pool and dropped, never reused:
//! a reply may still be in flight on it (redis-rs issue 489). On a cluster, the cluster
//! client multiplexes every request over its own connections to each node (with the same
//! timeouts) and matches replies to requests itself; it is cloned per request.
//!
//! Must not: format a key (that is [`keys`]), decide what an outcome means for a delivery
//! (that is the worker, the reducer and `protocol`), or recreate part of a job's state.

use std::time::Duration;

use deadpool_redis::redis::aio::ConnectionLike;
use deadpool_redis::redis::{self, FromRedisValue, RedisError, Script, ScriptInvocation, Value};
use tokio_util::sync::CancellationToken;

pub mod connection;
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

pub use connection::{connect_dedicated, RedisConnection, RedisEndpoint};

use crate::config::ConnectionConfig;
use crate::job::JobState;
use connection::{Backend, MasterAddress};
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
    /// The settings do not fit the Redis found (a cluster node with `--redis-mode
    /// standalone`, several URLs for one server...): retrying cannot help.
    #[error("Redis at {url}: {reason}")]
    Mode { url: String, reason: String },
    /// A write that must not be lost reached fewer replicas than `--redis-min-replicas` in
    /// time: the delivery is given back, not acked.
    #[error("a write reached {acknowledged} Redis replica(s) in time, fewer than the {wanted} of --redis-min-replicas; is a replica down or lagging?")]
    NotReplicated { wanted: u32, acknowledged: u32 },
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
    ///
    /// On a cluster, a cluster that is down (`CLUSTERDOWN`: a master without a replica to
    /// take over), a slot being moved or failed over (`TRYAGAIN`), no connection to the node
    /// of a slot, and a write that reached too few replicas are outages too.
    pub fn is_outage(&self) -> bool {
        match self {
            StoreError::Connect { .. } | StoreError::Pool(_) | StoreError::NotReplicated { .. } => {
                true
            }
            StoreError::Redis(error) => {
                error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_refusal()
                    || error.is_connection_dropped()
                    || error.kind() == redis::ErrorKind::ClusterConnectionNotFound
                    || matches!(
                        error.code(),
                        Some("OOM" | "LOADING" | "MASTERDOWN" | "CLUSTERDOWN" | "TRYAGAIN")
                    )
            }
            _ => false,
        }
    }

    /// Whether the settings do not fit the Redis found (an invalid URL, a mode that does
    /// not match the server): the process should stop and say so, not retry. The command
    /// lines exit with code 2 on it.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            StoreError::InvalidUrl { .. } | StoreError::Mode { .. }
        )
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
            StoreError::Connect { .. }
                | StoreError::Redis(_)
                | StoreError::Pool(_)
                | StoreError::NotReplicated { .. }
        )
    }
}

/// The longest pause between attempts of [`Store::connect_retrying`].
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(5);

/// Access to one namespace's job state in Redis (one server or a cluster).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    keys: Keys,
    /// `--redis-min-replicas`: replicas a write that must not be lost waits for.
    min_replicas: u32,
    /// The response timeout; a `WAIT` blocks at most half of it.
    response_timeout: Duration,
    /// Masters serving slots when the store connected (1 on one server).
    masters: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.backend {
            Backend::Standalone(_) => "standalone",
            Backend::Cluster(_) => "cluster",
        };
        f.debug_struct("Store")
            .field("keys", &self.keys)
            .field("mode", &mode)
            .field("masters", &self.masters)
            .field("min_replicas", &self.min_replicas)
            .finish()
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

impl Request<'_> {
    /// Sends the request on `conn` and reads its reply (a script by EVALSHA, loading it on
    /// `NOSCRIPT`).
    async fn send<T: FromRedisValue>(
        &self,
        conn: &mut (impl ConnectionLike + Send),
    ) -> Result<T, RedisError> {
        match self {
            Request::Command(command) => command.query_async(conn).await,
            Request::Pipeline(pipeline) => pipeline.query_async(conn).await,
            Request::Script(invocation) => invocation.invoke_async(conn).await,
        }
    }
}

/// One master of the store's Redis: the one server, or a master of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MasterNode {
    Standalone,
    Cluster(MasterAddress),
}

impl std::fmt::Display for MasterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MasterNode::Standalone => f.write_str("redis"),
            MasterNode::Cluster(address) => address.fmt(f),
        }
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
    /// Connects to the Redis of `config` (one server through a pool, or a cluster through
    /// a cluster client, per `--redis-mode`) and checks that it answers.
    pub async fn connect(config: &ConnectionConfig) -> Result<Store, StoreError> {
        let endpoint = RedisEndpoint::from_config(config)?;
        let backend = endpoint.backend().await?;
        let mut store = Store {
            backend,
            keys: Keys::new(&config.namespace),
            min_replicas: config.redis_min_replicas,
            response_timeout: endpoint.response_timeout(),
            masters: 1,
        };
        let as_connect_error = |e| match e {
            StoreError::Redis(source) => endpoint.connect_error(source),
            StoreError::Pool(text) => endpoint.connect_error(RedisError::from((
                redis::ErrorKind::Io,
                "connect failed",
                text,
            ))),
            other => other,
        };
        let _pong: String = store
            .invoke(&redis::cmd("PING"))
            .await
            .map_err(as_connect_error)?;
        store.masters = store
            .master_nodes()
            .await
            .map_err(as_connect_error)?
            .len()
            .max(1);
        Ok(store)
    }

    /// Connects to Redis, retrying with capped exponential backoff until it answers;
    /// `Ok(None)` if `shutdown` comes first. Settings that cannot work (an invalid URL, a
    /// mode that does not fit the server) are an error at once.
    pub async fn connect_retrying(
        config: &ConnectionConfig,
        shutdown: &CancellationToken,
    ) -> Result<Option<Store>, StoreError> {
        let mut backoff = Duration::from_millis(250);
        loop {
            match Store::connect(config).await {
                Ok(store) => return Ok(Some(store)),
                Err(error) if error.is_configuration() => return Err(error),
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

    /// How many masters serve the slots: 1 on one server, the number of masters of a
    /// cluster when the store connected (a job spreads its partitions over them).
    pub fn masters(&self) -> usize {
        self.masters
    }

    /// Sends one request and reads its reply: the only place a request reaches Redis. On
    /// one server, the connection goes back to the pool only after a reply (or an error
    /// reply) was read; see [`Borrowed`].
    async fn invoke<'a, T: FromRedisValue>(
        &self,
        request: impl Into<Request<'a>>,
    ) -> Result<T, StoreError> {
        self.send(request.into(), None).await
    }

    /// Sends a write that must not be lost (a commit step, a seal, a job's end) and, with
    /// `--redis-min-replicas N` (N > 0), `WAIT`s until N replicas hold it, on the
    /// connection that carried it: the same pooled connection on one server, the master of
    /// `written_key`'s slot on a cluster. Fewer replicas in time is
    /// [`StoreError::NotReplicated`], an outage: the caller must not ack.
    async fn invoke_replicated<'a, T: FromRedisValue>(
        &self,
        request: impl Into<Request<'a>>,
        written_key: &str,
    ) -> Result<T, StoreError> {
        self.send(request.into(), Some(written_key)).await
    }

    async fn send<T: FromRedisValue>(
        &self,
        request: Request<'_>,
        written_key: Option<&str>,
    ) -> Result<T, StoreError> {
        let wait = written_key.filter(|_| self.min_replicas > 0).map(|key| {
            (
                key,
                connection::wait_command(self.min_replicas, self.response_timeout),
            )
        });
        match &self.backend {
            Backend::Standalone(pool) => {
                let conn = pool.get().await.map_err(|e| match e {
                    deadpool_redis::PoolError::Backend(e) => StoreError::Redis(e),
                    other => StoreError::Pool(other.to_string()),
                })?;
                let mut borrowed = Borrowed { conn: Some(conn) };
                let mut reply: Result<T, RedisError> = request.send(borrowed.get()).await;
                let mut acknowledged = None;
                if let (Ok(_), Some((_, wait))) = (&reply, &wait) {
                    match wait.query_async::<i64>(borrowed.get()).await {
                        Ok(replicas) => acknowledged = Some(replicas),
                        Err(error) => reply = Err(error),
                    }
                }
                match reply {
                    Ok(value) => {
                        borrowed.give_back();
                        if let Some(replicas) = acknowledged {
                            connection::check_replicas(self.min_replicas, replicas)?;
                        }
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
            Backend::Cluster(conn) => {
                let mut conn = conn.clone();
                let value: T = request.send(&mut conn).await?;
                if let Some((key, wait)) = wait {
                    let reply = conn
                        .route_command(wait, connection::route_to_master_of(key))
                        .await?;
                    let replicas: i64 = redis::from_redis_value(reply).map_err(RedisError::from)?;
                    connection::check_replicas(self.min_replicas, replicas)?;
                }
                Ok(value)
            }
        }
    }

    /// Every master serving slots: the one server, or each master of the cluster (asked
    /// with `CLUSTER SLOTS`, so a failover since the store connected is seen).
    async fn master_nodes(&self) -> Result<Vec<MasterNode>, StoreError> {
        match &self.backend {
            Backend::Standalone(_) => Ok(vec![MasterNode::Standalone]),
            Backend::Cluster(conn) => {
                let reply: Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(&mut conn.clone())
                    .await?;
                Ok(connection::slot_masters(&reply)
                    .into_iter()
                    .map(MasterNode::Cluster)
                    .collect())
            }
        }
    }

    /// Sends a command without keys (SCAN, CONFIG GET) to one master.
    async fn invoke_on<T: FromRedisValue>(
        &self,
        master: &MasterNode,
        command: &redis::Cmd,
    ) -> Result<T, StoreError> {
        match (&self.backend, master) {
            (Backend::Cluster(conn), MasterNode::Cluster(address)) => {
                let reply = conn
                    .clone()
                    .route_command(command.clone(), connection::route_to_address(address))
                    .await?;
                Ok(redis::from_redis_value(reply).map_err(RedisError::from)?)
            }
            _ => self.invoke(command).await,
        }
    }

    /// Every key of the namespace, on every master (`SCAN`, never `KEYS`), sorted: for
    /// listings and for tests' cleanup. Keys may come and go during the scan.
    pub async fn namespace_keys(&self) -> Result<Vec<String>, StoreError> {
        let pattern = self.keys.namespace_pattern();
        let mut keys = Vec::new();
        for master in self.master_nodes().await? {
            let mut cursor = 0_u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000);
                let (next, batch): (u64, Vec<String>) = self.invoke_on(&master, &scan).await?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
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
    /// On a cluster every master is asked.
    pub async fn warn_if_evicting(&self) {
        let mut command = redis::cmd("CONFIG");
        command.arg("GET").arg("maxmemory-policy");
        let Ok(masters) = self.master_nodes().await else {
            return;
        };
        for master in masters {
            let Ok(values) = self.invoke_on::<Vec<String>>(&master, &command).await else {
                continue;
            };
            if let Some(policy) = values.get(1) {
                if policy.starts_with("allkeys") {
                    tracing::warn!(
                        policy = %policy,
                        node = %master,
                        "Redis maxmemory-policy may evict keys of running jobs; such jobs will fail \
                         with lost state. Use noeviction (or volatile-*) for chunkflow's Redis"
                    );
                }
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
    use super::test_support::{self, TestStore};
    use super::*;
    use crate::config::RedisMode;

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

    fn config(url: &str, timeout: Duration) -> ConnectionConfig {
        ConnectionConfig {
            redis_url: url.into(),
            redis_timeout: timeout,
            ..ConnectionConfig::local("x")
        }
    }

    #[test]
    fn endpoints_redact_passwords_in_errors() {
        let error = RedisEndpoint::parse(
            "nonsense://:secret@h/0",
            RedisMode::Auto,
            Duration::from_secs(1),
        )
        .expect_err("an unknown scheme is refused");
        assert!(matches!(error, StoreError::InvalidUrl { .. }), "{error}");
        assert!(error.is_configuration());
        assert!(!error.to_string().contains("secret"), "{error}");
        let endpoint = RedisEndpoint::parse(
            "redis://:secret@127.0.0.1:1/0",
            RedisMode::Auto,
            Duration::from_secs(1),
        )
        .expect("a valid URL");
        assert!(!format!("{endpoint:?}").contains("secret"));
    }

    #[tokio::test]
    async fn unreachable_redis_is_a_transient_connect_error() {
        let error = Store::connect(&config("redis://127.0.0.1:1/0", Duration::from_secs(1)))
            .await
            .expect_err("nothing listens on port 1");
        assert!(matches!(error, StoreError::Connect { .. }), "{error}");
        assert!(error.is_transient() && error.is_outage() && !error.is_configuration());
        let error = connect_dedicated(
            &config("redis://:pw@127.0.0.1:1/0", Duration::from_secs(1)),
            Duration::from_secs(1),
        )
        .await
        .expect_err("nothing listens on port 1");
        assert!(matches!(error, StoreError::Connect { .. }), "{error}");
        assert!(!error.to_string().contains(":pw@"), "{error}");
        // Several seeds: each is tried, none answers, and none is shown with its password.
        let error = connect_dedicated(
            &config(
                "redis://:pw1@127.0.0.1:1/0,redis://:pw2@127.0.0.1:2/0",
                Duration::from_secs(1),
            ),
            Duration::from_secs(1),
        )
        .await
        .expect_err("nothing listens on ports 1 and 2");
        assert!(matches!(error, StoreError::Connect { .. }), "{error}");
        let text = error.to_string();
        assert!(!text.contains("pw1") && !text.contains("pw2"), "{text}");
    }

    #[tokio::test]
    async fn connect_retrying_stops_at_shutdown_and_refuses_bad_settings() {
        let mut config = config("redis://127.0.0.1:1/0", Duration::from_millis(200));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let store = Store::connect_retrying(&config, &shutdown).await;
        assert!(matches!(store, Ok(None)));
        config.redis_url = "nonsense://h".into();
        let store = Store::connect_retrying(&config, &CancellationToken::new()).await;
        assert!(matches!(store, Err(StoreError::InvalidUrl { .. })));
        config.redis_url = "redis://127.0.0.1:1/0,redis://127.0.0.1:2/0".into();
        config.redis_mode = RedisMode::Standalone;
        let store = Store::connect_retrying(&config, &CancellationToken::new()).await;
        assert!(matches!(store, Err(StoreError::Mode { .. })));
    }

    #[tokio::test]
    async fn one_server_is_one_master_and_auto_finds_it_standalone() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        assert_eq!(store.masters(), 1);
        assert!(matches!(store.backend, Backend::Standalone(_)));
        assert!(format!("{store:?}").contains("standalone"));
        // A cluster-mode client on a server that is not a cluster node is refused, clearly.
        let mut settings = ConnectionConfig::local(&test.namespace);
        settings.redis_mode = RedisMode::Cluster;
        let error = Store::connect(&settings).await.unwrap_err();
        assert!(matches!(error, StoreError::Mode { .. }), "{error}");
        assert!(error.to_string().contains("not a cluster node"), "{error}");
    }

    #[tokio::test]
    async fn namespace_keys_lists_this_namespace_only() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        assert!(store.namespace_keys().await.unwrap().is_empty());
        let spec = test_support::spec("j", 2);
        store.create_job(&spec).await.unwrap();
        let keys = store.namespace_keys().await.unwrap();
        assert!(keys.contains(&store.keys.job("j").meta()), "{keys:?}");
        assert!(keys.contains(&store.keys.jobs_index()), "{keys:?}");
        let prefix = format!("{}:", test.namespace);
        assert!(keys.iter().all(|key| key.starts_with(&prefix)), "{keys:?}");
    }

    #[tokio::test]
    async fn with_no_replica_a_replicated_write_is_written_then_refused() {
        // The shared Redis has no replica: `WAIT 1` answers 0 after its timeout.
        let Some(test) = TestStore::open_with(|config| {
            config.redis_min_replicas = 1;
            config.redis_timeout = Duration::from_millis(400);
        })
        .await
        else {
            return;
        };
        let store = &test.store;
        let key = store.keys.job("j").meta();
        let started = std::time::Instant::now();
        let error = store
            .invoke_replicated::<i64>(redis::cmd("HSET").arg(&key).arg("f").arg(1), &key)
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::NotReplicated {
                    wanted: 1,
                    acknowledged: 0
                }
            ),
            "{error}"
        );
        assert!(error.is_outage());
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "WAIT waited"
        );
        assert!(test.exists(&key).await, "the write itself went through");
        let Backend::Standalone(pool) = &store.backend else {
            panic!("standalone");
        };
        assert_eq!(pool.status().size, 1, "the connection stays pooled");
        // Plain requests do not wait.
        let pong: String = store.invoke(&redis::cmd("PING")).await.unwrap();
        assert_eq!(pong, "PONG");
    }

    #[tokio::test]
    async fn without_min_replicas_a_replicated_write_does_not_wait() {
        let Some(test) = TestStore::open().await else {
            return;
        };
        let store = &test.store;
        let key = store.keys.job("j").meta();
        let written: i64 = store
            .invoke_replicated(redis::cmd("HSET").arg(&key).arg("f").arg(1), &key)
            .await
            .unwrap();
        assert_eq!(written, 1);
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
        let Backend::Standalone(pool) = &store.backend else {
            panic!("the shared Redis is one server");
        };
        assert_eq!(pool.status().size, 1, "a good connection is pooled");
        let reply: Result<Option<Vec<String>>, _> =
            store.invoke(redis::cmd("BLPOP").arg(&key).arg(1)).await;
        let error = reply.expect_err("the reply comes after the timeout");
        assert!(error.is_transient(), "{error}");
        assert_eq!(pool.status().size, 0, "the timed-out one is detached");
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
        let Backend::Standalone(pool) = &store.backend else {
            panic!("the shared Redis is one server");
        };
        assert_eq!(pool.status().size, 1);
        let mut blocking = redis::cmd("BLPOP");
        blocking.arg(&key).arg(2);
        let cancelled = tokio::time::timeout(
            Duration::from_millis(100),
            store.invoke::<Option<Vec<String>>>(&blocking),
        )
        .await;
        assert!(cancelled.is_err(), "the request was still waiting");
        assert_eq!(pool.status().size, 0, "its connection left the pool");
        let pong: String = store.invoke(&redis::cmd("PING")).await.unwrap();
        assert_eq!(pong, "PONG");
    }
}
