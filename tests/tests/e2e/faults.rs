//! Exactness under redelivery, duplicates and crashes of real processes.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;

use chunkflow_tests::cluster::*;
use chunkflow_tests::reference::*;
use chunkflow_tests::services::*;

/// How long a scenario's job may take.
const LONG: Duration = Duration::from_secs(120);

#[test]
fn every_task_delivered_twice_gives_identical_result() {
    let mut cluster = Cluster::new("twice");
    let data = generate_text(11, 1500);
    let file = cluster.write_file("a.txt", &data);
    cluster.worker(&[]);
    cluster.worker(&[]);
    cluster.reducer(&[]);
    let job = cluster.submit_wait(
        &["--chunk-size", "2KiB"],
        &[&file],
        &[("CHUNKFLOW_FAULT", "publish-twice")],
    );
    let expected = reference_wordcount(&[&data]);
    assert_eq!(cluster.result(&job), expected);
    let status = cluster.status(&job);
    assert_eq!(
        status["counters"]["bytes_read"],
        data.len() as u64,
        "each chunk counted once"
    );
    assert_eq!(status["counters"]["records_read"], line_count(&data));
    // Every duplicate was consumed and dropped, none dead-lettered.
    let map_queue = cluster.topology().map_queue();
    wait_for("duplicates to drain", Duration::from_secs(30), || {
        (cluster.queue_depth(&map_queue) == 0).then_some(())
    });
    assert_eq!(
        cluster.queue_depth(&cluster.topology().dead_letter_queue()),
        0
    );
    let worker_logs = cluster.log("worker", 0) + &cluster.log("worker", 1);
    assert!(
        worker_logs.contains("dropping duplicate"),
        "duplicates were detected"
    );

    // Late duplicates after the job ended: every reduce task again, and a map task.
    let topology = cluster.topology();
    let job_id = job.clone();
    with_channel(async |channel| {
        for partition in 0..8 {
            let task = chunkflow::protocol::messages::ReduceTask {
                job_id: chunkflow::job::JobId::parse(&job_id).expect("a valid job id"),
                partition,
            };
            channel
                .basic_publish(
                    "".into(),
                    topology.reduce_queue().as_str().into(),
                    BasicPublishOptions::default(),
                    &task.body(),
                    task.properties(),
                )
                .await
                .unwrap();
        }
        let map = chunkflow::protocol::messages::MapTask {
            job_id: chunkflow::job::JobId::parse(&job_id).expect("a valid job id"),
            chunk: 0,
            source: "late".into(),
            offset: 0,
            first_line: 1,
        };
        channel
            .basic_publish(
                "".into(),
                topology.map_queue().as_str().into(),
                BasicPublishOptions::default(),
                b"late late late\n",
                map.properties(),
            )
            .await
            .unwrap();
    });
    wait_for(
        "late duplicates to be consumed",
        Duration::from_secs(30),
        || {
            (cluster.queue_depth(&topology.reduce_queue()) == 0
                && cluster.queue_depth(&topology.map_queue()) == 0)
                .then_some(())
        },
    );
    // Late duplicates change nothing.
    cluster.verify_scenario(
        "04 every task delivered twice, and late duplicates after the end",
        &job,
        &expected,
    );
    assert_eq!(cluster.queue_depth(&topology.dead_letter_queue()), 0);
    assert!(cluster.service(0).is_running() && cluster.service(2).is_running());
}

#[test]
fn worker_killed_mid_job_and_restarted_gives_identical_result() {
    let mut cluster = Cluster::new("sigkill");
    let data = generate_text(12, 3000);
    let file = cluster.write_file("a.txt", &data);
    let slow = [("CHUNKFLOW_FAULT", "map-delay-ms=40")];
    let victim = cluster.worker(&slow);
    cluster.worker(&slow);
    cluster.reducer(&[]);
    let (producer, job) = cluster.submit_background(&["--chunk-size", "2KiB", "-q"], &[&file]);
    let total = wait_for("the job to be sealed", Duration::from_secs(60), || {
        cluster.status(&job)["chunks_total"].as_u64()
    });
    wait_for("some chunks to commit", Duration::from_secs(60), || {
        (cluster.committed(&job) >= 5).then_some(())
    });
    cluster.service(victim).kill_hard();
    let at_kill = cluster.committed(&job);
    assert!(
        at_kill < total,
        "the kill must land mid-job ({at_kill}/{total})"
    );
    cluster.worker(&slow);
    cluster.finish_scenario(
        producer,
        LONG,
        "01b one worker SIGKILLed mid-job, restarted",
        &job,
        &reference_wordcount(&[&data]),
    );
    let status = cluster.status(&job);
    assert_eq!(status["counters"]["bytes_read"], data.len() as u64);
}

#[test]
fn crash_between_commit_and_ack_counts_the_chunk_once() {
    let mut cluster = Cluster::new("commitack");
    let data = generate_text(13, 1200);
    let file = cluster.write_file("a.txt", &data);
    let crasher = cluster.worker(&[("CHUNKFLOW_FAULT", "crash-after-commit=3")]);
    cluster.reducer(&[]);
    let (producer, job) = cluster.submit_background(&["--chunk-size", "2KiB", "-q"], &[&file]);
    let status = cluster.service(crasher).wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "the worker must have aborted");
    assert_eq!(
        cluster.committed(&job),
        3,
        "three commits landed before the crash"
    );
    assert!(cluster
        .log("worker", crasher)
        .contains("aborting after commit"));
    let replacement = cluster.worker(&[]);
    cluster.finish_scenario(
        producer,
        LONG,
        "02 crash between the Redis commit and the ack",
        &job,
        &reference_wordcount(&[&data]),
    );
    let status = cluster.status(&job);
    assert_eq!(
        status["counters"]["records_read"],
        line_count(&data),
        "no chunk counted twice"
    );
    assert_eq!(status["counters"]["bytes_read"], data.len() as u64);
    assert!(
        cluster
            .log("worker", replacement)
            .contains("dropping duplicate"),
        "the redelivered third chunk was recognised as a duplicate"
    );
}

#[test]
fn garbage_on_the_task_queue_is_dead_lettered_while_a_job_completes() {
    let mut cluster = Cluster::new("garbage");
    let topology = cluster.topology();
    let data = generate_text(14, 800);
    let file = cluster.write_file("a.txt", &data);
    let worker = cluster.worker(&[]);
    let reducer = cluster.reducer(&[]);
    // Wait until the worker has declared the queues and consumes.
    wait_for(
        "the worker to declare its queues",
        Duration::from_secs(30),
        || {
            with_channel(async |channel| {
                topology
                    .ready_messages(channel, &topology.map_queue())
                    .await
                    .ok()
            })
        },
    );
    let garbage: Vec<(BasicProperties, &[u8])> = vec![
        (BasicProperties::default(), b"\x00\x01 not a task"),
        (
            BasicProperties::default().with_type("chunkflow.map.v99".into()),
            b"future version",
        ),
        (
            BasicProperties::default()
                .with_type(chunkflow::protocol::messages::MAP_TASK_TYPE.into()),
            b"no headers",
        ),
    ];
    let reduce_garbage = (
        BasicProperties::default()
            .with_type(chunkflow::protocol::messages::REDUCE_TASK_TYPE.into()),
        &b"{\"job\": 5}"[..],
    );
    with_channel(async |channel| {
        for (properties, body) in garbage.iter().cloned() {
            channel
                .basic_publish(
                    "".into(),
                    topology.map_queue().as_str().into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await
                .unwrap();
        }
        channel
            .basic_publish(
                "".into(),
                topology.reduce_queue().as_str().into(),
                BasicPublishOptions::default(),
                reduce_garbage.1,
                reduce_garbage.0.clone(),
            )
            .await
            .unwrap();
    });
    let job = cluster.submit_wait(&["--chunk-size", "4KiB"], &[&file], &[]);
    assert_eq!(cluster.result(&job), reference_wordcount(&[&data]));
    wait_for(
        "garbage in the dead-letter queue",
        Duration::from_secs(30),
        || (cluster.queue_depth(&topology.dead_letter_queue()) == 4).then_some(()),
    );
    assert!(
        cluster.service(worker).is_running(),
        "the worker survived the garbage"
    );
    assert!(
        cluster.service(reducer).is_running(),
        "the reducer survived the garbage"
    );
    assert!(cluster
        .log("worker", worker)
        .contains("undecodable map task"));
}
