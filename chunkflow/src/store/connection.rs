//! Where Redis is and how to talk to it: the one place a Redis connection is configured,
//! for the store's requests and for dedicated connections (heartbeats, listings, the
//! consumer's probe) alike.
//!
//! It exists because chunkflow runs the same binaries on one Redis server and on a Redis
//! Cluster. `--redis-url` holds one URL or a comma-separated list of seed nodes;
//! `--redis-mode auto` asks the first seed that answers (`INFO cluster`:
//! `cluster_enabled:1`) whether it is a cluster node, and `standalone` or `cluster` say so
//! (and are checked against the server, so a mismatch is a clear error, not `MOVED` replies
//! halfway through a job). Standalone Redis is reached through a pool (see `Store`), a
//! cluster through one multiplexed cluster client that follows slots to their masters.
//! Either way a dedicated connection is one type, [`RedisConnection`], so code above the
//! store never asks which it is.
//!
//! What differs between the modes and cannot hide behind a connection lives here as pure
//! functions, unit-tested: which mode to use, which masters serve slots (`CLUSTER SLOTS`),
//! where a `WAIT` for a written key goes, and how long it may wait.
//!
//! Must not: print a URL unredacted (every error carries the redacted seed list), or wait on
//! Redis without a deadline (connect and response timeouts on every connection).

use std::time::Duration;

use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster::ClusterClientBuilder;
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use deadpool_redis::redis::{
    self, AsyncConnectionConfig, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, Value,
};
use deadpool_redis::{Manager, Pool, Runtime};

use super::StoreError;
use crate::config::{redact_url, split_url_list, ConnectionConfig, RedisMode};

/// How long to wait for a TCP connection to a Redis node.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in the standalone pool.
const POOL_SIZE: usize = 16;

/// Where Redis is (one URL, or the seed nodes of a cluster), which mode to talk to it in,
/// and how long to wait for it. Its errors and `Debug` carry the URLs with their passwords
/// redacted.
#[derive(Clone)]
pub struct RedisEndpoint {
    seeds: Vec<ConnectionInfo>,
    redacted: String,
    mode: RedisMode,
    response_timeout: Duration,
}

impl std::fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEndpoint")
            .field("urls", &self.redacted)
            .field("mode", &self.mode)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

/// What Redis turned out to be, once asked (or told).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolved {
    Standalone,
    Cluster,
}

/// The store's way to Redis: a pool of connections to one server, or one multiplexed
/// cluster client (cloned per request; it routes each request to its slot's master).
#[derive(Clone)]
pub(crate) enum Backend {
    Standalone(Pool),
    Cluster(ClusterConnection),
}

impl RedisEndpoint {
    /// Parses `urls` (one URL, or several separated by commas: seed nodes of one cluster);
    /// every request on its connections waits at most `response_timeout`. Several URLs with
    /// `RedisMode::Standalone` are refused here, before any connection.
    pub fn parse(
        urls: &str,
        mode: RedisMode,
        response_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let redacted = redact_url(urls);
        let seeds = split_url_list(urls)
            .into_iter()
            .map(|url| {
                url.into_connection_info()
                    .map_err(|source| StoreError::InvalidUrl {
                        url: redact_url(url),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if mode == RedisMode::Standalone && seeds.len() > 1 {
            return Err(StoreError::Mode {
                url: redacted,
                reason: format!(
                    "{} URLs were given with --redis-mode standalone; several URLs are the seed \
                     nodes of one Redis Cluster: give one URL, or use --redis-mode cluster (or auto)",
                    seeds.len()
                ),
            });
        }
        Ok(RedisEndpoint {
            seeds,
            redacted,
            mode,
            response_timeout,
        })
    }

    /// The endpoint of a deployment's settings (`--redis-url`, `--redis-mode`,
    /// `--redis-timeout`).
    pub fn from_config(config: &ConnectionConfig) -> Result<Self, StoreError> {
        RedisEndpoint::parse(&config.redis_url, config.redis_mode, config.redis_timeout)
    }

    /// The same endpoint with another response timeout (heartbeats wait less).
    pub fn with_response_timeout(mut self, response_timeout: Duration) -> Self {
        self.response_timeout = response_timeout;
        self
    }

    /// The seed list, passwords redacted.
    pub fn redacted_url(&self) -> &str {
        &self.redacted
    }

    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    fn connection_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.response_timeout))
    }

    pub(crate) fn connect_error(&self, source: RedisError) -> StoreError {
        StoreError::Connect {
            url: self.redacted.clone(),
            source,
        }
    }

    fn invalid(&self, source: RedisError) -> StoreError {
        StoreError::InvalidUrl {
            url: self.redacted.clone(),
            source,
        }
    }

    /// A connection to one server (a standalone Redis, or a seed while asking it).
    async fn connect_node(
        &self,
        seed: &ConnectionInfo,
    ) -> Result<MultiplexedConnection, StoreError> {
        let client = redis::Client::open(seed.clone()).map_err(|source| self.invalid(source))?;
        client
            .get_multiplexed_async_connection_with_config(&self.connection_config())
            .await
            .map_err(|source| self.connect_error(source))
    }

    /// Asks the seeds, in order, until one answers, whether it is a cluster node; decides
    /// the mode from that and the flag. Returns the connection to the seed that answered.
    async fn resolve(&self) -> Result<(Resolved, MultiplexedConnection), StoreError> {
        let mut last_error = None;
        for seed in &self.seeds {
            let mut conn = match self.connect_node(seed).await {
                Ok(conn) => conn,
                Err(error) => {
                    last_error = Some(error);
                    continue;
                }
            };
            let info: Result<String, RedisError> = redis::cmd("INFO")
                .arg("cluster")
                .query_async(&mut conn)
                .await;
            let cluster_enabled = match info {
                Ok(text) => Some(cluster_enabled(&text)),
                // The server answered with an error (INFO renamed or refused by an ACL): it
                // cannot tell, so the flag must.
                Err(error) if error.code().is_some() => None,
                Err(error) => {
                    last_error = Some(self.connect_error(error));
                    continue;
                }
            };
            let resolved =
                decide_mode(self.mode, self.seeds.len(), cluster_enabled).map_err(|reason| {
                    StoreError::Mode {
                        url: self.redacted.clone(),
                        reason,
                    }
                })?;
            return Ok((resolved, conn));
        }
        Err(last_error.unwrap_or_else(|| {
            self.connect_error(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "no Redis URL given",
            )))
        }))
    }

    async fn cluster_connection(&self) -> Result<ClusterConnection, StoreError> {
        let client = ClusterClientBuilder::new(self.seeds.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(self.response_timeout)
            .build()
            .map_err(|source| self.invalid(source))?;
        client
            .get_async_connection()
            .await
            .map_err(|source| self.connect_error(source))
    }

    /// A dedicated (unpooled) connection, for heartbeats, listings and probes: to the one
    /// server, or a cluster client over the seeds.
    pub async fn connect(&self) -> Result<RedisConnection, StoreError> {
        match self.resolve().await? {
            (Resolved::Standalone, conn) => Ok(RedisConnection::Standalone(conn)),
            (Resolved::Cluster, _) => {
                Ok(RedisConnection::Cluster(self.cluster_connection().await?))
            }
        }
    }

    /// The store's backend: a pool to the one server, or a cluster client.
    pub(crate) async fn backend(&self) -> Result<Backend, StoreError> {
        match self.resolve().await? {
            (Resolved::Standalone, conn) => {
                drop(conn);
                let seed = self.seeds.first().cloned().ok_or_else(|| {
                    self.invalid(RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "no Redis URL given",
                    )))
                })?;
                Ok(Backend::Standalone(self.pool(seed)?))
            }
            (Resolved::Cluster, _) => Ok(Backend::Cluster(self.cluster_connection().await?)),
        }
    }

    fn pool(&self, seed: ConnectionInfo) -> Result<Pool, StoreError> {
        let manager = Manager::new_with_config(seed, self.connection_config())
            .map_err(|source| self.invalid(source))?;
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

/// A dedicated Redis connection for heartbeats, listings and probes (see
/// [`RedisEndpoint::connect`]), waiting at most `response_timeout` for each reply.
pub async fn connect_dedicated(
    config: &ConnectionConfig,
    response_timeout: Duration,
) -> Result<RedisConnection, StoreError> {
    RedisEndpoint::from_config(config)?
        .with_response_timeout(response_timeout)
        .connect()
        .await
}

/// A dedicated connection to Redis, whichever its mode: commands, pipelines and scripts go
/// through it alike (it is a [`ConnectionLike`]). On a cluster, each request goes to the
/// master of its keys' slot, so a pipeline's commands must share one slot.
#[derive(Clone)]
pub enum RedisConnection {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// Shows the mode only: a connection has nothing else worth printing.
impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisConnection::Standalone(_) => f.write_str("RedisConnection::Standalone"),
            RedisConnection::Cluster(_) => f.write_str("RedisConnection::Cluster"),
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Standalone(conn) => conn.req_packed_command(cmd),
            RedisConnection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Standalone(conn) => conn.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Standalone(conn) => conn.get_db(),
            RedisConnection::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Whether `INFO cluster`'s reply says the server is a cluster node.
pub(crate) fn cluster_enabled(info: &str) -> bool {
    info.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .any(|(name, value)| name == "cluster_enabled" && value.trim() == "1")
}

/// The mode to talk in: the flag, checked against what the server said (`None`: it would
/// not say). `Err` is the reason, for a person.
pub(crate) fn decide_mode(
    requested: RedisMode,
    seeds: usize,
    cluster_enabled: Option<bool>,
) -> Result<Resolved, String> {
    match (requested, cluster_enabled) {
        (RedisMode::Standalone, _) if seeds > 1 => Err(format!(
            "{seeds} URLs were given with --redis-mode standalone; several URLs are the seed \
             nodes of one Redis Cluster: give one URL, or use --redis-mode cluster (or auto)"
        )),
        (RedisMode::Standalone, Some(true)) => Err(
            "this is a Redis Cluster node (INFO cluster: cluster_enabled:1) but --redis-mode \
             standalone was given: use --redis-mode cluster (or auto, the default)"
                .to_string(),
        ),
        (RedisMode::Standalone, _) => Ok(Resolved::Standalone),
        (RedisMode::Cluster, Some(false)) => Err(
            "--redis-mode cluster was given but this Redis is not a cluster node \
             (INFO cluster: cluster_enabled:0): use --redis-mode standalone (or auto)"
                .to_string(),
        ),
        (RedisMode::Cluster, _) => Ok(Resolved::Cluster),
        (RedisMode::Auto, Some(true)) => Ok(Resolved::Cluster),
        (RedisMode::Auto, Some(false)) if seeds > 1 => Err(format!(
            "{seeds} URLs were given, which are the seed nodes of one Redis Cluster, but this \
             Redis is not a cluster node (INFO cluster: cluster_enabled:0): give one URL"
        )),
        (RedisMode::Auto, Some(false)) => Ok(Resolved::Standalone),
        (RedisMode::Auto, None) if seeds > 1 => Ok(Resolved::Cluster),
        (RedisMode::Auto, None) => Err(
            "cannot tell whether this Redis is a cluster node (INFO cluster was refused): \
             set --redis-mode standalone or cluster"
                .to_string(),
        ),
    }
}

/// A master of a cluster, as `CLUSTER SLOTS` names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct MasterAddress {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for MasterAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The masters that serve slots, from a `CLUSTER SLOTS` reply (each entry: first slot,
/// last slot, the master `[host, port, id, ...]`, then its replicas), each once, sorted.
pub(crate) fn slot_masters(reply: &Value) -> Vec<MasterAddress> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    let mut masters: Vec<MasterAddress> = ranges
        .iter()
        .filter_map(|range| match range {
            Value::Array(fields) => match fields.get(2) {
                Some(Value::Array(node)) => {
                    let host = match node.first() {
                        Some(Value::BulkString(bytes)) => String::from_utf8(bytes.clone()).ok(),
                        Some(Value::SimpleString(text)) => Some(text.clone()),
                        _ => None,
                    }?;
                    let port = match node.get(1) {
                        Some(Value::Int(port)) => u16::try_from(*port).ok(),
                        _ => None,
                    }?;
                    Some(MasterAddress { host, port })
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    masters.sort();
    masters.dedup();
    masters
}

/// Where a request to one master goes on a cluster client.
pub(crate) fn route_to_address(master: &MasterAddress) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
        host: master.host.clone(),
        port: master.port,
    })
}

/// Where a `WAIT` for a write of `key` goes on a cluster client: the master of the key's
/// slot, whose connection carried the write.
pub(crate) fn route_to_master_of(key: &str) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
        key,
        SlotAddr::Master,
    )))
}

/// How long a `WAIT` may block, in milliseconds: half the response timeout, so its reply
/// (0 replicas, if so) comes before the connection gives up on it; never 0, which would
/// block forever.
pub(crate) fn wait_timeout_ms(response_timeout: Duration) -> u64 {
    u64::try_from(response_timeout.as_millis() / 2)
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The `WAIT` that asks for `replicas` replicas of the connection's writes so far.
pub(crate) fn wait_command(replicas: u32, response_timeout: Duration) -> Cmd {
    let mut command = redis::cmd("WAIT");
    command.arg(replicas).arg(wait_timeout_ms(response_timeout));
    command
}

/// Whether `acknowledged` replicas (a `WAIT` reply) are enough for `wanted`.
pub(crate) fn check_replicas(wanted: u32, acknowledged: i64) -> Result<(), StoreError> {
    if acknowledged >= i64::from(wanted) {
        Ok(())
    } else {
        Err(StoreError::NotReplicated {
            wanted,
            acknowledged: u32::try_from(acknowledged.max(0)).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_cluster_says_whether_a_node_is_in_a_cluster() {
        assert!(cluster_enabled("# Cluster\r\ncluster_enabled:1\r\n"));
        assert!(!cluster_enabled("# Cluster\r\ncluster_enabled:0\r\n"));
        assert!(!cluster_enabled(""));
    }

    #[test]
    fn the_mode_is_the_flag_checked_against_the_server() {
        use RedisMode::*;
        assert_eq!(decide_mode(Auto, 1, Some(true)), Ok(Resolved::Cluster));
        assert_eq!(decide_mode(Auto, 3, Some(true)), Ok(Resolved::Cluster));
        assert_eq!(decide_mode(Auto, 1, Some(false)), Ok(Resolved::Standalone));
        assert_eq!(decide_mode(Auto, 3, None), Ok(Resolved::Cluster));
        assert_eq!(decide_mode(Standalone, 1, None), Ok(Resolved::Standalone));
        assert_eq!(decide_mode(Cluster, 1, None), Ok(Resolved::Cluster));
        assert_eq!(decide_mode(Cluster, 2, Some(true)), Ok(Resolved::Cluster));
        for (mode, seeds, enabled, says) in [
            (Standalone, 1, Some(true), "--redis-mode cluster"),
            (Standalone, 2, Some(false), "give one URL"),
            (Cluster, 1, Some(false), "not a cluster node"),
            (Auto, 2, Some(false), "give one URL"),
            (Auto, 1, None, "set --redis-mode"),
        ] {
            let reason = decide_mode(mode, seeds, enabled).unwrap_err();
            assert!(
                reason.contains(says),
                "{mode} {seeds} {enabled:?}: {reason}"
            );
        }
    }

    #[test]
    fn several_urls_with_standalone_are_refused_before_connecting() {
        let error = RedisEndpoint::parse(
            "redis://:secret@127.0.0.1:1,redis://127.0.0.1:2",
            RedisMode::Standalone,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(error, StoreError::Mode { .. }), "{error}");
        assert!(error.is_configuration() && !error.is_transient());
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[test]
    fn endpoints_parse_every_seed_and_redact_them_all() {
        let endpoint = RedisEndpoint::parse(
            "redis://:one@127.0.0.1:7001, redis://:two@127.0.0.1:7002",
            RedisMode::Auto,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(endpoint.seeds.len(), 2);
        let shown = format!("{endpoint:?}");
        assert!(!shown.contains("one") && !shown.contains("two"), "{shown}");
        let error = RedisEndpoint::parse(
            "redis://:one@127.0.0.1:7001,nonsense://:two@h",
            RedisMode::Auto,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(error, StoreError::InvalidUrl { .. }), "{error}");
        assert!(!error.to_string().contains("two"), "{error}");
    }

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn node(port: i64) -> Value {
        Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk("id")])
    }

    #[test]
    fn cluster_slots_name_each_master_once() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(7001),
                node(7011),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node(7002)]),
            Value::Array(vec![Value::Int(10923), Value::Int(12000), node(7003)]),
            Value::Array(vec![Value::Int(12001), Value::Int(16383), node(7003)]),
            Value::Nil,
        ]);
        let masters = slot_masters(&reply);
        let ports: Vec<u16> = masters.iter().map(|m| m.port).collect();
        assert_eq!(ports, vec![7001, 7002, 7003]);
        assert_eq!(masters[0].to_string(), "127.0.0.1:7001");
        assert!(slot_masters(&Value::Nil).is_empty());
    }

    #[test]
    fn a_wait_goes_to_the_master_of_the_written_keys_slot() {
        // The hash tag decides: every key of the job waits on the master of the tag's slot.
        let expected = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
            Route::with_key("job", SlotAddr::Master),
        ));
        assert_eq!(route_to_master_of("ns:{job}:meta"), expected);
        assert_eq!(route_to_master_of("ns:{job}:done"), expected);
        assert_ne!(route_to_master_of("ns:{other}:meta"), expected);
    }

    #[test]
    fn waits_end_before_the_response_timeout_and_never_block_forever() {
        assert_eq!(wait_timeout_ms(Duration::from_secs(30)), 15_000);
        assert_eq!(wait_timeout_ms(Duration::from_millis(1)), 1);
        assert_eq!(wait_timeout_ms(Duration::ZERO), 1);
        let command = wait_command(2, Duration::from_secs(10));
        assert_eq!(
            command.get_packed_command(),
            redis::cmd("WAIT").arg(2).arg(5000).get_packed_command()
        );
    }

    #[test]
    fn too_few_replicas_is_an_outage() {
        assert!(check_replicas(0, 0).is_ok());
        assert!(check_replicas(1, 2).is_ok());
        let error = check_replicas(2, 1).unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::NotReplicated {
                    wanted: 2,
                    acknowledged: 1
                }
            ),
            "{error}"
        );
        assert!(error.is_outage() && error.is_transient() && !error.is_configuration());
        assert!(
            error.to_string().contains("--redis-min-replicas"),
            "{error}"
        );
    }
}
