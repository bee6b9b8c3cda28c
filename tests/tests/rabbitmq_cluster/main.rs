//! Running on a 3-node RabbitMQ cluster (`scripts/rabbitmq-cluster.sh`, started by
//! `scripts/test.sh`; a test fails, saying so, without it): every queue is a quorum queue
//! with a replica on every node, and a job goes on to the sequential reference's result
//! while the node leading its map queue is stopped, its producer is killed mid-publish and
//! resumed, and a worker is killed. Redis is the machine's shared one, in each test's own
//! namespace.
//!
//! These tests stop nodes of that cluster (never the machine's own broker): they run one at
//! a time (a process-wide lock), and start again every node they stopped, even when an
//! assertion fails.

// Test and benchmark code: a failed unwrap is a failed run, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use chunkflow_tests::cluster::*;
use chunkflow_tests::monitor::*;
use chunkflow_tests::rabbitmq_cluster::*;
use chunkflow_tests::scenario::*;
use chunkflow_tests::services::*;

static ALONE: Mutex<()> = Mutex::new(());
const LONG: Duration = Duration::from_secs(180);

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A fresh namespace whose processes use every node of the RabbitMQ cluster, once the
/// cluster is whole.
fn on_the_cluster(rmq: &RabbitCluster, test: &str) -> Cluster {
    rmq.wait_until_whole(LONG);
    let mut cluster = Cluster::new(test);
    cluster.use_amqp(&rmq.url_list());
    cluster
}

/// Broker sessions a worker lost and re-established.
fn reconnects(addr: &str) -> f64 {
    metric(
        addr,
        &series(chunkflow::metrics::RECONNECTS, "worker", None),
    )
}

/// How many connections each of `pids` has, and through which nodes.
fn placement(rmq: &RabbitCluster, pids: &[u32]) -> BTreeMap<u32, (usize, BTreeSet<usize>)> {
    let connections = rmq.connections();
    pids.iter()
        .map(|pid| {
            let suffix = format!("@{pid}");
            let count = connections
                .iter()
                .filter(|connection| connection.name.ends_with(&suffix))
                .count();
            (
                *pid,
                (count, RabbitCluster::nodes_of_process(&connections, *pid)),
            )
        })
        .collect()
}

#[test]
fn every_queue_is_a_quorum_queue_with_a_replica_on_every_node() {
    let _alone = alone();
    let rmq = RabbitCluster::from_env();
    let cluster = on_the_cluster(&rmq, "rmq-members");
    let topology = cluster.topology();
    // Declared the way every binary declares it, through whichever node answers.
    with_connection_at(cluster.amqp_url(), async |connection| {
        topology.declare(connection).await.unwrap()
    });
    let every_node = BTreeSet::from(NODES);
    for queue in topology.queues() {
        let info = rmq
            .queue(&queue)
            .unwrap_or_else(|| panic!("{queue} is declared"));
        assert_eq!(info.kind, "quorum", "{queue}: {info:?}");
        assert_eq!(
            info.members, every_node,
            "{queue} has a replica on every node: {info:?}"
        );
        assert_eq!(info.online, every_node, "{queue}: {info:?}");
        assert!(NODES.contains(&info.leader), "{queue}: {info:?}");
    }
}

#[test]
fn a_job_survives_its_leader_node_stopping_its_producer_and_a_worker_killed() {
    let _alone = alone();
    let rmq = RabbitCluster::from_env();
    let mut cluster = on_the_cluster(&rmq, "rmq-failover");
    let (file, data, reference) = text_input(&cluster, "a.txt", 61, 30_000);
    let job_args = ["--job", "wordcount", "--chunk-size", "1KiB", file.as_str()];
    let expected = local(&cluster, &job_args, &[]);
    assert_eq!(
        expected, reference,
        "the local runner agrees with the sequential reference"
    );

    // Two slow workers and a reducer, each beginning its rotation at another node.
    let lists: Vec<String> = NODES.iter().map(|node| rmq.list_from(*node)).collect();
    let slow = ("CHUNKFLOW_FAULT", "map-delay-ms=40,amqp-in-order");
    let in_order = ("CHUNKFLOW_FAULT", "amqp-in-order");
    let workers = [
        cluster.worker(&[slow, METRICS_ON_FREE_PORT, ("AMQP_URL", &lists[0])]),
        cluster.worker(&[slow, METRICS_ON_FREE_PORT, ("AMQP_URL", &lists[1])]),
    ];
    let reducer = cluster.reducer(&[in_order, ("AMQP_URL", &lists[2])]);
    let services = [workers[0], workers[1], reducer];
    let pids = services.map(|index| cluster.pid(index));
    wait_for(
        "each worker and the reducer to connect through a node of its own",
        LONG,
        || {
            let placed = placement(&rmq, &pids);
            pids.iter()
                .zip(NODES)
                .all(|(pid, node)| placed[pid].1 == BTreeSet::from([node]))
                .then_some(())
        },
    );
    let worker_metrics = workers.map(|worker| cluster.metrics_addr(worker));

    // The producer begins at the node leading the map queue, like whatever else is there.
    let map_queue = cluster.topology().map_queue();
    let leader = rmq.leader(&map_queue, LONG);
    let producer_env = [in_order, ("AMQP_URL", lists[leader - 1].as_str())];
    let (mut producer, job) = cluster.submit_background_with(
        &[
            "--chunk-size",
            "1KiB",
            "--max-queued-bytes",
            "16KiB",
            "--job-id",
            "rmq-failover-1",
            "-q",
        ],
        &[&file],
        &producer_env,
    );
    wait_for("the job to make progress", LONG, || {
        (cluster.committed(&job) >= 10).then_some(())
    });
    let clients: Vec<u32> = pids.iter().copied().chain([producer.id()]).collect();
    let before = placement(&rmq, &clients);
    println!("map queue leader: node {leader}; connections (count, nodes) by pid: {before:?}");
    assert_eq!(
        before[&producer.id()].1,
        BTreeSet::from([leader]),
        "the producer publishes through the leader's node: {before:?}"
    );

    // Stop the leader's node mid-job: every client connected through it fails over.
    let committed_before = cluster.committed(&job);
    let stopped = rmq.stop_node(leader);
    wait_for(
        "every process to be connected again, through the running nodes",
        LONG,
        || {
            let now = placement(&rmq, &clients);
            clients
                .iter()
                .all(|pid| now[pid].0 >= before[pid].0 && !now[pid].1.contains(&leader))
                .then_some(())
        },
    );
    for (index, (pid, node)) in pids.iter().zip(NODES).enumerate().take(2) {
        if node == leader {
            assert!(
                reconnects(&worker_metrics[index]) >= 1.0,
                "worker {pid} on the stopped node reconnected"
            );
        }
    }
    let new_leader = rmq.leader(&map_queue, LONG);
    assert_ne!(new_leader, leader, "the map queue elected another leader");
    println!(
        "node {leader} stopped; new leader: node {new_leader}; connections: {:?}",
        placement(&rmq, &clients)
    );
    wait_for("the job to go on without the node", LONG, || {
        (cluster.committed(&job) >= committed_before + 20).then_some(())
    });

    // Kill the producer mid-publish, and resume the job; its list begins with the stopped
    // node, which it skips.
    assert!(
        cluster.status(&job)["chunks_total"].is_null(),
        "the producer is still publishing when it is killed"
    );
    producer.kill().unwrap();
    producer.wait().unwrap();
    let committed = cluster.committed(&job);
    let (resumed, resumed_job) = cluster.submit_background_with(
        &["--chunk-size", "1KiB", "--job-id", &job, "-q"],
        &[&file],
        &producer_env,
    );
    assert_eq!(resumed_job, job);

    // Kill a worker mid-job, and start one at full speed in its place.
    wait_for("the resumed job to make progress", LONG, || {
        (cluster.committed(&job) >= committed + 10).then_some(())
    });
    assert_eq!(
        cluster.status(&job)["state"],
        "running",
        "a worker is killed mid-job"
    );
    cluster.service(workers[0]).kill_hard();
    cluster.worker(&[]);
    cluster.finish_scenario(
        resumed,
        LONG,
        "rabbitmq cluster: leader node stopped, producer killed and resumed, worker killed",
        &job,
        &expected,
    );
    assert_eq!(
        cluster.status(&job)["counters"]["bytes_read"],
        data.len() as u64
    );

    // The node comes back and rejoins its queues: the cluster is whole again.
    stopped.start(LONG);
    wait_for("the map queue to be online on every node", LONG, || {
        (rmq.queue(&map_queue)?.online == BTreeSet::from(NODES)).then_some(())
    });
}
