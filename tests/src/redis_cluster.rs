//! The Redis Clusters the `redis_cluster` tests run on, and what those tests do to them:
//! their seed lists, a connection to each node, which master serves a key's slot (and its
//! pid), killing a node and restarting it with the same command line, waiting until the
//! cluster is whole again, and listing or deleting a namespace's keys on every master.
//!
//! The clusters are started outside the tests by `scripts/redis-cluster.sh up` (which
//! `scripts/test.sh` runs): three masters on ports 7001-7003, and three masters with a
//! replica each on 7011-7016. Their seed lists come from the environment
//! (`scripts/redis-cluster.sh env`); a test whose cluster is not announced there fails,
//! saying how to start it, rather than passing without having run.
//!
//! (Not to be confused with [`crate::cluster`], one test's *pipeline*: a namespace and the
//! processes of producer, workers and reducers.)
//!
//! Must not: touch the shared Redis on 6379 (nothing here connects to it), or leave a node
//! down: a test that kills one restarts it and waits for [`RedisCluster::wait_whole`]
//! before it ends, holding [`disturbing`] meanwhile.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use chunkflow::config::{split_url_list, ConnectionConfig};
use chunkflow::store::Store;

use crate::services::{block_on, wait_for};

/// The seed list of the three-master cluster (no replicas).
pub const CLUSTER_ENV: &str = "CHUNKFLOW_TEST_REDIS_CLUSTER";
/// The seed list of the six-node cluster (three masters, a replica each).
pub const REPLICATED_ENV: &str = "CHUNKFLOW_TEST_REDIS_REPLICATED";
/// Where `scripts/redis-cluster.sh` keeps the nodes' directories.
const DIR_ENV: &str = "CHUNKFLOW_CLUSTERS_DIR";

/// How long a cluster may take to be whole again after a restart or a failover.
pub const WHOLE_WITHIN: Duration = Duration::from_secs(60);

static CLUSTERS: RwLock<()> = RwLock::new(());

/// Taken by every test that disturbs a cluster (kills or restarts a node), so that no other
/// test of the process runs on a cluster that is changing under it.
pub fn disturbing() -> RwLockWriteGuard<'static, ()> {
    CLUSTERS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Taken by every test that runs on a cluster without disturbing it: such tests run
/// together, but never while one is [`disturbing`] a cluster.
pub fn sharing() -> RwLockReadGuard<'static, ()> {
    CLUSTERS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One of the test clusters, as the environment announces it.
#[derive(Debug, Clone)]
pub struct RedisCluster {
    seeds: String,
    ports: Vec<u16>,
    /// The nodes' directories (`<dir>/<port>/cmdline`, `redis.pid`, ...).
    dir: PathBuf,
    replicated: bool,
}

impl RedisCluster {
    /// The three-master cluster (ports 7001-7003).
    pub fn three_masters() -> RedisCluster {
        Self::from_env(CLUSTER_ENV, "redis3", false)
    }

    /// The cluster of three masters with a replica each (ports 7011-7016).
    pub fn replicated() -> RedisCluster {
        Self::from_env(REPLICATED_ENV, "redis6", true)
    }

    fn from_env(var: &str, name: &str, replicated: bool) -> RedisCluster {
        let seeds = std::env::var(var).unwrap_or_else(|_| {
            panic!(
                "{var} is not set: these tests need the test Redis Clusters. Start them with \
                 `scripts/redis-cluster.sh up && eval \"$(scripts/redis-cluster.sh env)\"`, \
                 or run everything with `scripts/test.sh`"
            )
        });
        let ports = split_url_list(&seeds)
            .into_iter()
            .map(|url| {
                url.rsplit(':')
                    .next()
                    .and_then(|port| port.trim_end_matches('/').parse().ok())
                    .unwrap_or_else(|| panic!("{var}: no port in {url}"))
            })
            .collect();
        let base = std::env::var(DIR_ENV).unwrap_or_else(|_| "/tmp/chunkflow-clusters".into());
        let cluster = RedisCluster {
            seeds,
            ports,
            dir: PathBuf::from(base).join(name),
            replicated,
        };
        let _ = cluster.masters();
        cluster
    }

    /// Every seed, comma-separated (the `REDIS_URL` of the processes).
    pub fn seeds(&self) -> &str {
        &self.seeds
    }

    /// One seed only (auto mode finds the rest).
    pub fn one_seed(&self, port: u16) -> String {
        format!("redis://127.0.0.1:{port}")
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// A connection to one node (not a cluster client: it answers for itself only).
    pub fn node(&self, port: u16) -> redis::Connection {
        let conn = redis::Client::open(self.one_seed(port))
            .expect("a valid node URL")
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| {
                panic!(
                    "connect to the Redis Cluster node on port {port}: {e}; is it up \
                     (`scripts/redis-cluster.sh up`)?"
                )
            });
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set a read timeout");
        conn
    }

    /// Whether a node answers `PING`.
    pub fn answers(&self, port: u16) -> bool {
        redis::Client::open(self.one_seed(port))
            .ok()
            .and_then(|client| {
                client
                    .get_connection_with_timeout(Duration::from_secs(1))
                    .ok()
            })
            .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn).ok())
            .is_some()
    }

    /// The ports of the masters serving slots, and the slot ranges each serves, as the
    /// first node that answers sees them.
    fn slot_table(&self) -> Vec<(u16, u16, u16)> {
        let port = *self
            .ports
            .iter()
            .find(|port| self.answers(**port))
            .unwrap_or_else(|| panic!("no node of {} answers", self.seeds));
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut self.node(port))
            .expect("CLUSTER SLOTS");
        slots
            .into_iter()
            .filter_map(|range| {
                let redis::Value::Array(fields) = range else {
                    return None;
                };
                let number = |value: Option<&redis::Value>| match value {
                    Some(redis::Value::Int(n)) => u16::try_from(*n).ok(),
                    _ => None,
                };
                let master = match fields.get(2) {
                    Some(redis::Value::Array(node)) => number(node.get(1)),
                    _ => None,
                };
                Some((number(fields.first())?, number(fields.get(1))?, master?))
            })
            .collect()
    }

    /// The ports of the masters that serve slots, sorted.
    pub fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<u16> = self
            .slot_table()
            .into_iter()
            .map(|(_, _, port)| port)
            .collect();
        masters.sort_unstable();
        masters.dedup();
        masters
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        let port = self.masters()[0];
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.node(port))
            .expect("CLUSTER KEYSLOT");
        self.slot_table()
            .into_iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, port)| port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// The replica ports of the master on `port` (online ones).
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut self.node(port))
            .expect("INFO replication");
        replica_ports(&info)
    }

    /// The process id of the node on `port`.
    pub fn pid(&self, port: u16) -> u32 {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut self.node(port))
            .expect("INFO server");
        info_field(&info, "process_id")
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no process_id in INFO of port {port}"))
    }

    /// Kills the node on `port` with SIGKILL (no shutdown, no goodbye to the cluster) and
    /// waits until its process is gone.
    pub fn kill(&self, port: u16) {
        let pid = self.pid(port).to_string();
        let status = Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL {pid} (port {port})");
        wait_for(
            &format!("the node on port {port} to die"),
            Duration::from_secs(20),
            || {
                let alive = Command::new("kill")
                    .args(["-0", &pid])
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success());
                (!alive).then_some(())
            },
        );
    }

    /// Kills the node on `port` ([`RedisCluster::kill`]); the node is restarted and the
    /// cluster waited whole when the guard is restored or dropped (a failed test too).
    pub fn kill_for_a_while(&self, port: u16) -> KilledNode {
        self.kill(port);
        KilledNode {
            cluster: self.clone(),
            port,
            restored: false,
        }
    }

    /// Starts the node on `port` again with the command line `scripts/redis-cluster.sh`
    /// started it with (it rejoins with its `nodes-PORT.conf`, empty: no persistence).
    pub fn restart(&self, port: u16) {
        let cmdline = self.dir.join(port.to_string()).join("cmdline");
        let args: Vec<String> = std::fs::read_to_string(&cmdline)
            .unwrap_or_else(|e| panic!("read {}: {e}", cmdline.display()))
            .lines()
            .map(str::to_string)
            .collect();
        let status = Command::new("redis-server")
            .args(&args)
            .status()
            .expect("run redis-server");
        assert!(status.success(), "redis-server {args:?}");
        wait_for(
            &format!("the node on port {port} to answer"),
            Duration::from_secs(20),
            || self.answers(port).then_some(()),
        );
    }

    /// Waits until every node answers and says `cluster_state:ok`, the masters serve every
    /// slot, and (for the replicated cluster) every master has an online replica.
    pub fn wait_whole(&self) {
        wait_for("the Redis Cluster to be whole", WHOLE_WITHIN, || {
            self.is_whole().then_some(())
        });
    }

    fn is_whole(&self) -> bool {
        let all_ok = self.ports.iter().all(|port| {
            self.answers(*port)
                && redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(&mut self.node(*port))
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
        });
        if !all_ok {
            return false;
        }
        let table = self.slot_table();
        let served: u32 = table
            .iter()
            .map(|(first, last, _)| u32::from(*last) - u32::from(*first) + 1)
            .sum();
        served == 16384
            && (!self.replicated
                || self
                    .masters()
                    .into_iter()
                    .all(|master| !self.replicas_of(master).is_empty()))
    }

    /// The settings of a process on this cluster, in `namespace`.
    pub fn config(&self, namespace: &str) -> ConnectionConfig {
        ConnectionConfig {
            redis_url: self.seeds.clone(),
            redis_timeout: Duration::from_secs(10),
            ..ConnectionConfig::local(namespace)
        }
    }

    /// The namespace's keys found on each master, by master port.
    pub fn keys_by_master(&self, namespace: &str) -> Vec<(u16, Vec<String>)> {
        let pattern = chunkflow::store::keys::Keys::new(namespace).namespace_pattern();
        self.masters()
            .into_iter()
            .map(|port| {
                let mut conn = self.node(port);
                let keys: Vec<String> = redis::cmd("SCAN")
                    .cursor_arg(0)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .clone()
                    .iter(&mut conn)
                    .expect("SCAN a master")
                    .map(|key| key.expect("a key name"))
                    .collect();
                (port, keys)
            })
            .collect()
    }
}

/// Every key of `namespace` in the Redis (one server, or every master of a cluster) that
/// `redis_url` names, sorted: the store's own listing.
pub fn namespace_keys(redis_url: &str, namespace: &str) -> Vec<String> {
    let config = settings(redis_url, namespace);
    block_on(async {
        let store = Store::connect(&config)
            .await
            .unwrap_or_else(|e| panic!("connect to Redis: {e}"));
        store
            .namespace_keys()
            .await
            .unwrap_or_else(|e| panic!("list the keys of {namespace}: {e}"))
    })
}

/// Deletes every key of `namespace` in the Redis that `redis_url` names (on every master
/// of a cluster), one key per request (a cluster refuses keys of several slots in one).
/// Best effort: a Redis that is gone has nothing left to delete.
pub fn delete_namespace(redis_url: &str, namespace: &str) {
    let config = settings(redis_url, namespace);
    let deleted: Result<(), String> = block_on(async {
        let store = Store::connect(&config).await.map_err(|e| e.to_string())?;
        let keys = store.namespace_keys().await.map_err(|e| e.to_string())?;
        let mut conn = chunkflow::store::connect_dedicated(&config, config.redis_timeout)
            .await
            .map_err(|e| e.to_string())?;
        for key in keys {
            let _: i64 = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    if let Err(error) = deleted {
        eprintln!("could not delete the keys of {namespace}: {error}");
    }
}

fn settings(redis_url: &str, namespace: &str) -> ConnectionConfig {
    ConnectionConfig {
        redis_url: redis_url.to_string(),
        redis_timeout: Duration::from_secs(10),
        ..ConnectionConfig::local(namespace)
    }
}

/// The value of `name` in an `INFO` reply.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .find(|(field, _)| *field == name)
        .map(|(_, value)| value.trim())
}

/// The ports of the online replicas in an `INFO replication` reply
/// (`slave0:ip=127.0.0.1,port=7014,state=online,...`).
fn replica_ports(info: &str) -> Vec<u16> {
    info.lines()
        .filter(|line| line.starts_with("slave") && line.contains("state=online"))
        .filter_map(|line| {
            line.split(',')
                .find_map(|part| part.split_once("port=").map(|(_, port)| port))
                .and_then(|port| port.trim().parse().ok())
        })
        .collect()
}

/// A node killed by [`RedisCluster::kill_for_a_while`], restarted when restored or dropped.
pub struct KilledNode {
    cluster: RedisCluster,
    port: u16,
    restored: bool,
}

impl KilledNode {
    /// Restarts the node and waits until the cluster is whole (panics if it is not).
    pub fn restore(mut self) {
        self.restored = true;
        self.cluster.restart(self.port);
        self.cluster.wait_whole();
    }
}

impl Drop for KilledNode {
    fn drop(&mut self) {
        if self.restored {
            return;
        }
        let (cluster, port) = (&self.cluster, self.port);
        let restored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if !cluster.answers(port) {
                cluster.restart(port);
            }
            cluster.wait_whole();
        }));
        if restored.is_err() {
            eprintln!(
                "the Redis Cluster node on port {port} could not be restored: run \
                 `scripts/redis-cluster.sh down && scripts/redis-cluster.sh up`"
            );
        }
    }
}
