//! The chaos suite, part 2: scenarios that disturb the shared RabbitMQ or Redis (closing
//! every connection, stopping the broker, pausing or killing Redis clients). They run one
//! at a time (a process-wide lock), in their own test binary, and leave the services as
//! they found them, even when an assertion fails.

// Test and benchmark code: a failed unwrap is a failed run, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::time::Duration;

use chunkflow_tests::cluster::*;
use chunkflow_tests::monitor::*;
use chunkflow_tests::scenario::*;
use chunkflow_tests::services::*;

static ALONE: Mutex<()> = Mutex::new(());
const LONG: Duration = Duration::from_secs(180);

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A job that is mid-publish and mid-processing when the fault hits.
struct Running {
    producer: std::process::Child,
    job: String,
    expected: String,
    bytes: u64,
    /// The two workers' monitor addresses, read before the fault.
    worker_metrics: [String; 2],
}

/// Broker sessions a worker lost and re-established (it logs "reconnecting" then).
fn reconnects(addr: &str) -> f64 {
    metric(
        addr,
        &series(chunkflow::metrics::RECONNECTS, "worker", None),
    )
}

fn start_busy_job(cluster: &mut Cluster, worker_env: &[(&str, &str)], seed: u64) -> Running {
    let (file, data, expected) = text_input(cluster, "a.txt", seed, 4000);
    let slow: Vec<(&str, &str)> = [("CHUNKFLOW_FAULT", "map-delay-ms=20"), METRICS_ON_FREE_PORT]
        .into_iter()
        .chain(worker_env.iter().copied())
        .collect();
    let workers = [cluster.worker(&slow), cluster.worker(&slow)];
    let worker_metrics = workers.map(|worker| cluster.metrics_addr(worker));
    cluster.reducer(worker_env);
    let (producer, job) = cluster.submit_background(
        &["--chunk-size", "1KiB", "--max-queued-bytes", "16KiB", "-q"],
        &[&file],
    );
    wait_for("the job to make progress", LONG, || {
        (cluster.committed(&job) >= 5).then_some(())
    });
    assert!(
        cluster.status(&job)["chunks_total"].is_null(),
        "the fault must hit mid-publish"
    );
    Running {
        producer,
        job,
        expected,
        bytes: data.len() as u64,
        worker_metrics,
    }
}

fn finish(cluster: &Cluster, running: Running, scenario: &str) {
    cluster.finish_scenario(
        running.producer,
        LONG,
        scenario,
        &running.job,
        &running.expected,
    );
    assert_eq!(
        cluster.status(&running.job)["counters"]["bytes_read"],
        running.bytes
    );
}

/// Scenario 7: every broker connection closed by force mid-job.
#[test]
fn scenario_07_all_broker_connections_closed() {
    let _alone = alone();
    let mut cluster = Cluster::new("x-close");
    let running = start_busy_job(&mut cluster, &[], 41);
    let worker_metrics = running.worker_metrics.clone();
    rabbitmqctl(&[
        "close_all_connections",
        "chaos test: closing every connection",
    ]);
    finish(&cluster, running, "07 all broker connections closed");
    // Every worker, busy or idle when its connection was closed, comes back and consumes.
    wait_for("both workers to reconnect", LONG, || {
        worker_metrics
            .iter()
            .all(|addr| reconnects(addr) >= 1.0)
            .then_some(())
    });
    let topology = cluster.topology();
    wait_for("both workers to consume again", LONG, || {
        let (_, consumers) = with_channel(async |channel| {
            topology
                .queue_counts(channel, &topology.map_queue())
                .await
                .unwrap()
        });
        (consumers == 2).then_some(())
    });
}

/// Restarts the broker's application on drop, whatever happened.
struct BrokerRestart;

impl Drop for BrokerRestart {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .output();
    }
}

/// Scenario 8: RabbitMQ stopped and started mid-job.
#[test]
fn scenario_08_broker_stopped_and_started() {
    let _alone = alone();
    let mut cluster = Cluster::new("x-restart");
    let running = start_busy_job(&mut cluster, &[], 42);
    let restart = BrokerRestart;
    rabbitmqctl(&["stop_app"]);
    wait_for("workers to notice the broker is gone", LONG, || {
        (reconnects(&running.worker_metrics[0]) >= 1.0).then_some(())
    });
    rabbitmqctl(&["start_app"]);
    drop(restart);
    finish(&cluster, running, "08 broker stopped and started");
}

/// Un-pauses Redis clients on drop.
struct RedisUnpause;

impl Drop for RedisUnpause {
    fn drop(&mut self) {
        let _: Result<(), _> = redis::cmd("CLIENT").arg("UNPAUSE").query(&mut redis());
    }
}

/// Scenario 9: Redis paused longer than the workers' command timeout.
#[test]
fn scenario_09_redis_paused_past_command_timeout() {
    let _alone = alone();
    let mut cluster = Cluster::new("x-pause");
    let running = start_busy_job(&mut cluster, &[("CHUNKFLOW_REDIS_TIMEOUT", "500ms")], 43);
    let unpause = RedisUnpause;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .query(&mut redis())
        .unwrap();
    // A Redis timeout is transient: the worker requeues the task (`retry`). The monitor
    // answers over HTTP, so reading it does not wait for the paused Redis.
    let requeued = series(chunkflow::metrics::FAILED, "worker", Some("retry"));
    wait_for("a worker to time out on Redis", LONG, || {
        running
            .worker_metrics
            .iter()
            .any(|addr| metric(addr, &requeued) >= 1.0)
            .then_some(())
    });
    drop(unpause);
    finish(
        &cluster,
        running,
        "09 Redis paused past the command timeout",
    );
}

/// Scenario 10: every Redis client connection killed mid-job.
#[test]
fn scenario_10_redis_client_connections_killed() {
    let _alone = alone();
    let mut cluster = Cluster::new("x-kill");
    let running = start_busy_job(&mut cluster, &[], 44);
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut redis())
        .unwrap();
    assert!(
        killed >= 3,
        "workers, reducer and producer were connected ({killed} killed)"
    );
    finish(&cluster, running, "10 Redis client connections killed");
}

/// Scenario 7b: an idle worker (no task in hand) whose connection is closed by force must
/// notice and come back; lapin does not always end an idle consumer's stream on its own.
#[test]
fn scenario_07b_idle_worker_reconnects_after_forced_close() {
    let _alone = alone();
    let mut cluster = Cluster::new("x-idle");
    let worker = cluster.worker(&[METRICS_ON_FREE_PORT]);
    let worker_metrics = cluster.metrics_addr(worker);
    let topology = cluster.topology();
    let consumers = || {
        with_channel(async |channel| {
            topology
                .queue_counts(channel, &topology.map_queue())
                .await
                .map(|(_, consumers)| consumers)
                .unwrap_or(0)
        })
    };
    wait_for("the worker to consume", LONG, || {
        (consumers() == 1).then_some(())
    });
    rabbitmqctl(&["close_all_connections", "chaos test: idle worker"]);
    wait_for("the idle worker to notice", LONG, || {
        (reconnects(&worker_metrics) >= 1.0).then_some(())
    });
    wait_for("the idle worker to consume again", LONG, || {
        (consumers() == 1).then_some(())
    });
    let (file, _, expected) = text_input(&cluster, "a.txt", 45, 200);
    cluster.reducer(&[]);
    let job = cluster.submit_wait(&["-q"], &[&file], &[]);
    assert_eq!(cluster.result(&job), expected);
}
