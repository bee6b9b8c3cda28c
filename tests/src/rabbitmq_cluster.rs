//! The 3-node RabbitMQ cluster the `rabbitmq_cluster` tests run on, as they reach it: its
//! nodes' URLs, `rabbitmqctl` aimed at one node, where a queue's leader and members are,
//! which node each process is connected through, and stopping and starting a node.
//!
//! The cluster is started outside the tests, once per run, because it takes about 20 s to
//! boot: `scripts/rabbitmq-cluster.sh up` (nodes `rmq1..3@localhost`, AMQP on
//! 127.0.0.1:5681-5683), whose `env` command prints the
//! `CHUNKFLOW_TEST_RABBITMQ_CLUSTER` line read here; `scripts/test.sh` does both. A test
//! without it fails, saying so: a test that skips silently proves nothing.
//!
//! Nodes are numbered 1 to 3, as the script numbers them (node N listens on port 5680 + N).
//! Stopping a node is `rabbitmqctl stop_app`: its Erlang VM stays up, so `start_app`
//! brings it back with its data, and it rejoins its queues. Must not: touch the machine's
//! own RabbitMQ node (`rabbit@<hostname>`, port 5672); every command here goes through the
//! script, which carries the cluster's own Erlang cookie.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::binaries::workspace;
use crate::services::wait_for;

/// The environment variable listing the cluster's nodes (`scripts/rabbitmq-cluster.sh env`).
pub const CLUSTER_ENV: &str = "CHUNKFLOW_TEST_RABBITMQ_CLUSTER";

/// The nodes of the cluster, numbered as the script numbers them.
pub const NODES: [usize; 3] = [1, 2, 3];

/// The test cluster.
pub struct RabbitCluster {
    /// The URL of node N at index N - 1.
    urls: Vec<String>,
    /// Nodes this value stopped and has not started again (queries avoid them).
    stopped: RefCell<BTreeSet<usize>>,
}

/// Where a queue lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// `quorum`, `classic`...
    pub kind: String,
    /// The node of its leader (0 when it has none, or is not a quorum queue).
    pub leader: usize,
    /// The nodes holding a replica.
    pub members: BTreeSet<usize>,
    /// The members that are running.
    pub online: BTreeSet<usize>,
}

/// One client connection, as the cluster lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConnection {
    /// The node it is connected through.
    pub node: usize,
    /// The name the client gave it (`chunkflow-worker@PID`...).
    pub name: String,
}

/// The node number of a node name (`rmq2@localhost` → 2).
fn node_of_name(name: &str) -> Option<usize> {
    let number = name.strip_prefix("rmq")?.split('@').next()?;
    number.parse().ok().filter(|n| NODES.contains(n))
}

/// The node number of an AMQP port (5682 → 2).
fn node_of_port(port: u64) -> Option<usize> {
    usize::try_from(port.checked_sub(5680)?)
        .ok()
        .filter(|n| NODES.contains(n))
}

fn nodes_of(names: &Value) -> BTreeSet<usize> {
    names
        .as_array()
        .map(|names| {
            names
                .iter()
                .filter_map(|name| name.as_str().and_then(node_of_name))
                .collect()
        })
        .unwrap_or_default()
}

impl RabbitCluster {
    /// The cluster named by [`CLUSTER_ENV`]; fails the test, saying how to start it, when
    /// the variable is unset or does not list the three nodes.
    pub fn from_env() -> RabbitCluster {
        let list = std::env::var(CLUSTER_ENV).unwrap_or_default();
        let how = "start the 3-node RabbitMQ cluster with `scripts/rabbitmq-cluster.sh up` and \
                   `eval \"$(scripts/rabbitmq-cluster.sh env)\"` before `cargo test`, or run the \
                   tests with `scripts/test.sh`, which does both";
        assert!(!list.trim().is_empty(), "{CLUSTER_ENV} is not set: {how}");
        let mut urls = vec![String::new(); NODES.len()];
        for url in chunkflow::config::split_url_list(&list) {
            let uri: lapin::uri::AMQPUri = url
                .parse()
                .unwrap_or_else(|e| panic!("{CLUSTER_ENV} holds an invalid URL ({e}): {how}"));
            let node = node_of_port(u64::from(uri.authority.port)).unwrap_or_else(|| {
                panic!(
                    "{CLUSTER_ENV} names port {}, not one of the cluster's 5681-5683: {how}",
                    uri.authority.port
                )
            });
            urls[node - 1] = url.to_string();
        }
        assert!(
            urls.iter().all(|url| !url.is_empty()),
            "{CLUSTER_ENV} does not name all three nodes: {how}"
        );
        RabbitCluster {
            urls,
            stopped: RefCell::new(BTreeSet::new()),
        }
    }

    /// The URL of node `node`.
    pub fn url(&self, node: usize) -> &str {
        &self.urls[node - 1]
    }

    /// Every node's URL, node 1 first: `AMQP_URL` for a process on the cluster.
    pub fn url_list(&self) -> String {
        self.list_from(1)
    }

    /// Every node's URL beginning with `node` (then the next ones, wrapping around): with
    /// `CHUNKFLOW_FAULT=amqp-in-order`, a process given this list connects through `node`.
    pub fn list_from(&self, node: usize) -> String {
        (0..NODES.len())
            .map(|step| self.urls[(node - 1 + step) % NODES.len()].as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs `rabbitmqctl -n rmqN@localhost ARGS` through `scripts/rabbitmq-cluster.sh`.
    pub fn ctl(&self, node: usize, args: &[&str]) -> Output {
        Command::new(workspace().join("scripts").join("rabbitmq-cluster.sh"))
            .arg("ctl")
            .arg(node.to_string())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run scripts/rabbitmq-cluster.sh ctl {node}: {e}"))
    }

    /// [`RabbitCluster::ctl`], asserting success; its standard output.
    pub fn ctl_ok(&self, node: usize, args: &[&str]) -> String {
        let output = self.ctl(node, args);
        assert!(
            output.status.success(),
            "rabbitmqctl -n rmq{node}@localhost {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A listing (`-q ARGS --formatter json`) from the first running node that answers.
    fn query(&self, args: &[&str]) -> Value {
        let mut all = vec!["-q"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--formatter", "json"]);
        let mut errors = Vec::new();
        let stopped = self.stopped.borrow().clone();
        for node in NODES.iter().filter(|node| !stopped.contains(node)) {
            let output = self.ctl(*node, &all);
            if output.status.success() {
                return serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
                    panic!(
                        "rabbitmqctl {all:?} printed no JSON ({e}): {}",
                        String::from_utf8_lossy(&output.stdout)
                    )
                });
            }
            errors.push(format!(
                "rmq{node}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        panic!("no running node answered rabbitmqctl {all:?}: {errors:?}");
    }

    /// Where queue `name` lives; `None` if it is not declared.
    pub fn queue(&self, name: &str) -> Option<QueueInfo> {
        let queues = self.query(&["list_queues", "name", "type", "leader", "members", "online"]);
        let queue = queues
            .as_array()?
            .iter()
            .find(|queue| queue["name"].as_str() == Some(name))?;
        Some(QueueInfo {
            kind: queue["type"].as_str().unwrap_or_default().to_string(),
            leader: queue["leader"].as_str().and_then(node_of_name).unwrap_or(0),
            members: nodes_of(&queue["members"]),
            online: nodes_of(&queue["online"]),
        })
    }

    /// The node of queue `name`'s leader, waiting (at most `timeout`) for it to have one.
    pub fn leader(&self, name: &str, timeout: Duration) -> usize {
        wait_for(&format!("queue {name} to have a leader"), timeout, || {
            self.queue(name)
                .map(|queue| queue.leader)
                .filter(|leader| *leader != 0)
        })
    }

    /// Every client connection to the cluster.
    pub fn connections(&self) -> Vec<ClientConnection> {
        let listed = self.query(&["list_connections", "port", "client_properties"]);
        listed
            .as_array()
            .map(|connections| {
                connections
                    .iter()
                    .filter_map(|connection| {
                        let node = node_of_port(connection["port"].as_u64()?)?;
                        let name = connection["client_properties"]
                            .as_array()?
                            .iter()
                            .find(|property| property[0].as_str() == Some("connection_name"))?[2]
                            .as_str()?
                            .to_string();
                        Some(ClientConnection { node, name })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The nodes process `pid` is connected through (its connections are named
    /// `chunkflow-ROLE@PID`).
    pub fn nodes_of_process(connections: &[ClientConnection], pid: u32) -> BTreeSet<usize> {
        let suffix = format!("@{pid}");
        connections
            .iter()
            .filter(|connection| {
                connection.name.starts_with("chunkflow-") && connection.name.ends_with(&suffix)
            })
            .map(|connection| connection.node)
            .collect()
    }

    /// Whether node `node` accepts AMQP connections (its port is open).
    pub fn accepts_connections(&self, node: usize) -> bool {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], (5680 + node) as u16));
        std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_ok()
    }

    /// Stops node `node`'s RabbitMQ application (`stop_app`; its clients lose their
    /// connections), and waits until its port refuses connections. The returned guard
    /// starts it again when dropped, so a failed test leaves the cluster whole.
    pub fn stop_node(&self, node: usize) -> StoppedNode<'_> {
        self.ctl_ok(node, &["stop_app"]);
        self.stopped.borrow_mut().insert(node);
        wait_for(
            &format!("node {node} to refuse connections"),
            Duration::from_secs(60),
            || (!self.accepts_connections(node)).then_some(()),
        );
        StoppedNode {
            cluster: self,
            node: Some(node),
        }
    }

    /// Starts node `node`'s application again (`start_app`).
    fn start_node(&self, node: usize) -> Output {
        let output = self.ctl(node, &["start_app"]);
        if output.status.success() {
            self.stopped.borrow_mut().remove(&node);
        }
        output
    }

    /// Waits (at most `timeout`) until every node runs and accepts connections, and the
    /// cluster sees all three online.
    pub fn wait_until_whole(&self, timeout: Duration) {
        wait_for(
            "every node of the RabbitMQ cluster to accept connections",
            timeout,
            || {
                NODES
                    .iter()
                    .all(|node| self.accepts_connections(*node))
                    .then_some(())
            },
        );
        let seconds = timeout.as_secs().max(1).to_string();
        self.ctl_ok(1, &["await_online_nodes", "3", "--timeout", &seconds]);
    }
}

/// A node stopped by [`RabbitCluster::stop_node`]; started again by
/// [`StoppedNode::start`], or on drop.
pub struct StoppedNode<'a> {
    cluster: &'a RabbitCluster,
    node: Option<usize>,
}

impl StoppedNode<'_> {
    /// The stopped node's number.
    pub fn node(&self) -> usize {
        self.node.unwrap_or(0)
    }

    /// Starts the node again and waits (at most `timeout`) until the cluster is whole.
    pub fn start(mut self, timeout: Duration) {
        if let Some(node) = self.node.take() {
            let output = self.cluster.start_node(node);
            assert!(
                output.status.success(),
                "start node {node} again: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            self.cluster.wait_until_whole(timeout);
        }
    }
}

impl Drop for StoppedNode<'_> {
    fn drop(&mut self) {
        // Best effort, without panicking (this may run while a failed test unwinds).
        if let Some(node) = self.node.take() {
            let output = self.cluster.start_node(node);
            if !output.status.success() {
                eprintln!(
                    "could not start node rmq{node}@localhost again: {}; \
                     run `scripts/rabbitmq-cluster.sh ctl {node} start_app`",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
}
