//! Nothing hangs: a task of a live job that RabbitMQ dead-letters fails the job, naming the
//! task and the reason, instead of leaving it running forever; and a reducer frozen past its
//! lease has its partition taken over by another reducer while it is still frozen.
//! Both run in their own namespace against the shared services and stop none of them.

use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicRejectOptions};

use chunkflow_tests::cluster::*;
use chunkflow_tests::monitor::*;
use chunkflow_tests::scenario::*;
use chunkflow_tests::services::*;

const LONG: Duration = Duration::from_secs(120);

/// A chunk of a sealed, running job rejected without requeue (as a worker that gives up, or
/// a person in the management UI, would): RabbitMQ dead-letters it with reason `rejected`,
/// and the job fails naming the chunk and the reason; `submit --wait` returns non-zero.
#[test]
fn a_dead_lettered_chunk_fails_its_live_job() {
    let mut cluster = Cluster::new("dead-chunk");
    let (file, _, _) = text_input(&cluster, "input.txt", 41, 3000);
    // No workers yet: every chunk waits in the queue.
    let (producer, job) = cluster.submit_background(&["--chunk-size", "4KiB", "-q"], &[&file]);
    let total = wait_for("the job to be sealed", LONG, || {
        cluster.status(&job)["chunks_total"].as_u64()
    });
    assert!(total > 1, "{total} chunks");
    let topology = cluster.topology();
    let map_queue = topology.map_queue();
    let rejected = with_channel(async |channel| {
        let message = tokio::time::timeout(
            Duration::from_secs(10),
            channel.basic_get(map_queue.as_str().into(), BasicGetOptions::default()),
        )
        .await
        .expect("basic.get answered in time")
        .expect("basic.get")
        .expect("a chunk waiting in the queue");
        let task = chunkflow::protocol::messages::MapTask::decode(&message.delivery.properties)
            .expect("a map task");
        let settled = tokio::time::timeout(
            Duration::from_secs(10),
            message
                .delivery
                .acker
                .reject(BasicRejectOptions { requeue: false }),
        )
        .await
        .expect("basic.reject answered in time")
        .expect("basic.reject");
        assert!(settled, "the reject reached the broker");
        task
    });
    cluster.reducer(&[]);
    cluster.worker(&[]);
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert!(!status.success(), "submit --wait must fail: {stderr}");
    let status = cluster.status(&job);
    assert_eq!(status["state"], "failed", "{status}");
    let reason = status["reason"].as_str().unwrap_or_default();
    let chunk = format!(
        "chunk {} (`{}`, line {})",
        rejected.chunk, rejected.source, rejected.first_line
    );
    assert!(
        reason.contains(&chunk) && reason.contains("rejected"),
        "the reason names the chunk and why: {reason}"
    );
    assert!(
        stderr.contains(&format!("chunk {}", rejected.chunk)),
        "submit --wait says why: {stderr}"
    );
    // `ns.dead` keeps its copy for people to inspect; the watch copy was consumed.
    wait_for("the watch copy to be consumed", LONG, || {
        (cluster.queue_depth(&topology.dead_watch_queue()) == 0).then_some(())
    });
    assert_eq!(cluster.queue_depth(&topology.dead_letter_queue()), 1);
    cluster.report_failed_scenario("dead-lettered chunk of a live job", &job);
}

/// A reducer frozen (SIGSTOP) mid-reduce keeps its delivery unacked; its lease expires and
/// another reducer's janitor republishes the partition's task, so the job succeeds while
/// the first is still frozen. Resumed, the first's late commit changes nothing.
#[test]
fn a_frozen_reducers_partition_is_taken_over() {
    let mut cluster = Cluster::new("dead-lease");
    let (file, _, expected) = text_input(&cluster, "a.txt", 42, 500);
    cluster.worker(&[]);
    let FrozenReducer {
        index: first,
        metrics: first_metrics,
        producer,
        job,
        ..
    } = cluster.freeze_reducer_holding_the_lease(&file, &[], LONG);
    let second = cluster.reducer(&[("CHUNKFLOW_LEASE", "1s")]);
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert!(status.success(), "{stderr}");
    assert_eq!(cluster.result(&job), expected);
    assert!(
        cluster.service(first).is_running(),
        "the first reducer is still there (stopped)"
    );
    cluster.service(first).signal("CONT");
    // Its late commit finds the job ended and writes nothing; it acks the task.
    let acked = series(chunkflow::metrics::SUCCEEDED, "reducer", None);
    wait_for(
        "the resumed reducer's late task to be dropped",
        LONG,
        || (metric(&first_metrics, &acked) >= 1.0).then_some(()),
    );
    cluster.verify_scenario("reducer frozen mid-reduce, taken over", &job, &expected);
    assert_eq!(
        cluster.status(&job)["counters"]["output_records"],
        expected.lines().count() as u64,
        "reduced once"
    );
    assert!(cluster
        .log("reducer", second)
        .contains("leases expired mid-reduce"));
    assert!(cluster.service(second).is_running());
}
