//! Flags shared by every binary, each with its environment twin and a doc comment that is
//! its `--help` text: where the broker and Redis are ([`ConnectionArgs`]), what the `exec`
//! job may run ([`ExecArgs`]), how a service shows itself ([`MonitorArgs`]), and how a
//! worker or reducer consumes ([`ConsumerArgs`], whose defaults depend on the role). Each
//! turns into the library's plain settings; nothing below this crate parses a command line.
//!
//! Passwords in URLs are never printed: `--help` hides env values and shows the default
//! redacted.

use std::collections::BTreeMap;
use std::time::Duration;

use chunkflow::config::{
    parse_duration, parse_namespace, parse_redis_mode, ConnectionConfig, RedisMode,
    DEFAULT_AMQP_URL, DEFAULT_NAMESPACE, DEFAULT_REDIS_URL,
};
use chunkflow::jobs::exec::{ExecRole, ExecSettings, Program};
use chunkflow::size::ByteSize;

/// Where the broker and Redis are, and which namespace of them this deployment uses.
// The `[default: ...]` in the help texts below is what `--help` shows, not a doc link.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(clap::Args, Clone)]
pub struct ConnectionArgs {
    /// RabbitMQ URL, or the URLs of the nodes of one RabbitMQ cluster separated by commas
    /// (`amqp://u:pw@rmq1:5672/%2f,amqp://u:pw@rmq2:5672/%2f,...`; write a comma in a
    /// password as %2C). Each process connects to the first node that answers, beginning
    /// at a node picked at random so processes spread over the cluster, and on losing its
    /// connection reconnects through the next node. The task queues are quorum queues,
    /// replicated on the cluster's nodes: work goes on while a majority of them runs
    /// [default: amqp://guest:***@127.0.0.1:5672/%2f]
    #[arg(long, global = true, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_default_value = true, hide_env_values = true)]
    pub amqp_url: String,

    /// Redis URL, or several separated by commas: the seed nodes of one Redis Cluster
    /// (any reachable one is enough to find the others; list a few in case one is down),
    /// e.g. redis://10.0.0.1:7001,redis://10.0.0.2:7001 [default: redis://127.0.0.1:6379/0]
    #[arg(long, global = true, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_default_value = true, hide_env_values = true)]
    pub redis_url: String,

    /// How to talk to Redis: `auto` asks the first URL that answers (`INFO cluster`) and
    /// uses a cluster client on a Redis Cluster node; `standalone` or `cluster` say so, and
    /// are checked against the server (a mismatch stops the process with exit code 2).
    #[arg(long, global = true, env = "CHUNKFLOW_REDIS_MODE", default_value = "auto", value_parser = parse_redis_mode)]
    pub redis_mode: RedisMode,

    /// Replicas that must hold every commit (a chunk's, a partition's, a seal, a job's end)
    /// before its task is acked: after the write, `WAIT N` for up to half of
    /// --redis-timeout; fewer replicas in time is treated as a Redis outage (the task is
    /// given back and retried, never acked). 0: do not wait (a failover may then lose the
    /// last commits, and the job fails saying Redis lost its state).
    #[arg(
        long,
        global = true,
        env = "CHUNKFLOW_REDIS_MIN_REPLICAS",
        default_value_t = 0
    )]
    pub redis_min_replicas: u32,

    /// Prefix of every queue name and Redis key: deployments (and tests) with different
    /// namespaces share one broker and one Redis without touching each other.
    /// Letters, digits, `-` and `_`.
    #[arg(long, global = true, env = "CHUNKFLOW_NAMESPACE", default_value = DEFAULT_NAMESPACE, value_parser = parse_namespace)]
    pub namespace: String,

    /// How long to wait for one Redis reply before giving up (e.g. 500ms, 30s).
    #[arg(long, global = true, env = "CHUNKFLOW_REDIS_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// How long to wait for RabbitMQ to answer one operation (connect, declare, consume,
    /// a publisher confirm) before giving up on it (e.g. 10s, 2m).
    #[arg(long, global = true, env = "CHUNKFLOW_BROKER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub broker_timeout: Duration,

    /// How long to wait out a Redis outage (Redis stopped, unreachable, or out of memory)
    /// before giving up: a worker or reducer stops taking tasks meanwhile and exits with an
    /// error past it; the producer's Redis retries fail past it (e.g. 30s, 10m, 1h).
    #[arg(long, global = true, env = "CHUNKFLOW_OUTAGE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub outage_timeout: Duration,
}

/// Shown as the settings it becomes, whose `Debug` redacts the URLs.
impl std::fmt::Debug for ConnectionArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.config().fmt(f)
    }
}

impl ConnectionArgs {
    /// The library's connection settings.
    pub fn config(&self) -> ConnectionConfig {
        ConnectionConfig {
            amqp_url: self.amqp_url.clone(),
            redis_url: self.redis_url.clone(),
            redis_mode: self.redis_mode,
            redis_min_replicas: self.redis_min_replicas,
            namespace: self.namespace.clone(),
            redis_timeout: self.redis_timeout,
            broker_timeout: self.broker_timeout,
            outage_timeout: self.outage_timeout,
        }
    }
}

/// Flags of the `exec` job, shared by every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// Allow the `exec` job to run PROGRAM with ARGS under NAME (repeatable; the
    /// environment twin separates entries with `;`). Tasks name a NAME, never a command.
    /// Arguments are split at spaces, without shell quoting.
    #[arg(long = "allow-exec", value_name = "NAME=PROGRAM [ARGS]", env = "CHUNKFLOW_ALLOW_EXEC", value_delimiter = ';', value_parser = Program::parse)]
    pub allow_exec: Vec<Program>,

    /// Time limit of one run of an exec mapper or reducer (e.g. 30s, 10m).
    #[arg(long, env = "CHUNKFLOW_EXEC_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub exec_timeout: Duration,

    /// Largest standard output of one run of an exec mapper or reducer.
    #[arg(long, env = "CHUNKFLOW_EXEC_MAX_OUTPUT", default_value = "1GiB")]
    pub exec_max_output: ByteSize,
}

impl ExecArgs {
    /// The settings of a process in `role`.
    pub fn settings(&self, role: ExecRole) -> ExecSettings {
        ExecSettings {
            allowed: self
                .allow_exec
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect::<BTreeMap<_, _>>(),
            role,
            timeout: self.exec_timeout,
            max_output: self.exec_max_output.bytes(),
        }
    }
}

/// Flags of the monitoring endpoints and the heartbeat (flattened into worker and reducer).
#[derive(Debug, Clone, clap::Args)]
pub struct MonitorArgs {
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address, e.g.
    /// 0.0.0.0:9090 (port 0 picks a free port; the heartbeat record shows which). Not
    /// served when unset.
    #[arg(long, env = "CHUNKFLOW_METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    /// Time to live of this process's heartbeat record in Redis (renewed every third of
    /// it): a process that dies vanishes from `producer workers` after this long.
    #[arg(long, env = "CHUNKFLOW_HEARTBEAT_TTL", default_value = "15s", value_parser = parse_duration)]
    pub heartbeat_ttl: Duration,
}

/// How a worker or reducer consumes its queue (flattened into both). Prefetch and
/// concurrency default by role ([`ConsumerDefaults`]), applied by [`ConsumerArgs::settings`].
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumerArgs {
    /// Deliveries the broker may hand this process ahead of the one in progress (per
    /// consume loop) [default: 1 for a worker, which keeps its memory to about three
    /// chunks; 2 for a reducer]
    #[arg(long, env = "CHUNKFLOW_PREFETCH")]
    pub prefetch: Option<u16>,

    /// Tasks processed at once by this process, each with its own channel: chunks for a
    /// worker, partitions for a reducer (1 to 64) [default: 1 for a worker, 2 for a reducer]
    #[arg(long, env = "CHUNKFLOW_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: Option<u16>,

    /// After SIGTERM, how long the task in hand (a worker's chunk, a reducer's partition)
    /// may take before it is given back to the queue (match the container's stop grace
    /// period).
    #[arg(long, env = "CHUNKFLOW_GRACE_PERIOD", default_value = "25s", value_parser = parse_duration)]
    pub grace_period: Duration,
}

/// A role's prefetch and concurrency when their flags are not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerDefaults {
    pub prefetch: u16,
    pub concurrency: u16,
}

impl ConsumerDefaults {
    /// A worker holds one chunk and one ahead: chunks are large.
    pub const WORKER: ConsumerDefaults = ConsumerDefaults {
        prefetch: 1,
        concurrency: 1,
    };
    /// A reducer spends much of a task waiting on Redis: two at once, two ahead.
    pub const REDUCER: ConsumerDefaults = ConsumerDefaults {
        prefetch: 2,
        concurrency: 2,
    };
}

/// [`ConsumerArgs`] with the role's defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerSettings {
    pub prefetch: u16,
    pub concurrency: usize,
    pub grace_period: Duration,
}

impl ConsumerArgs {
    /// The flags given, the role's `defaults` for those that were not.
    pub fn settings(&self, defaults: ConsumerDefaults) -> ConsumerSettings {
        ConsumerSettings {
            prefetch: self.prefetch.unwrap_or(defaults.prefetch),
            concurrency: usize::from(self.concurrency.unwrap_or(defaults.concurrency)),
            grace_period: self.grace_period,
        }
    }
}
