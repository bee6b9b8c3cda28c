//! Outages of Redis and requeues that ran no job code (issue "no false failures, no
//! hangs"): a job survives Redis stopping for a while mid-job, with its exact result and
//! nothing dead-lettered, and a message peeked at (taken and given back) more often than
//! `--max-attempts` costs no attempt. Each test runs against a private Redis, stopped and
//! started with its data, never the shared one.

use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, BasicNackOptions};

use chunkflow_tests::cluster::*;
use chunkflow_tests::scenario::*;
use chunkflow_tests::services::*;

const LONG: Duration = Duration::from_secs(240);

/// Stops the private Redis (data saved) for `outage` while a job is mid-way through its
/// map phase on 2 workers and 1 reducer, starts it again, and checks the job succeeds with
/// the sequential reference's result, nothing dead-lettered, every service still running.
fn job_survives_a_redis_outage(test: &str, outage: Duration) {
    let mut private = PrivateRedis::start();
    let mut cluster = Cluster::new(test);
    cluster.use_redis(&private.url());
    let (file, _, expected) = text_input(&cluster, "a.txt", 51, 60_000);
    let worker_env = [
        ("CHUNKFLOW_FAULT", "map-delay-ms=150"),
        ("CHUNKFLOW_MAX_ATTEMPTS", "5"),
    ];
    let workers = [cluster.worker(&worker_env), cluster.worker(&worker_env)];
    let reducer = cluster.reducer(&[]);
    let (producer, job) = cluster.submit_background(&["--chunk-size", "64KiB", "-q"], &[&file]);
    wait_for("a few chunks to commit", LONG, || {
        (cluster.committed(&job) >= 4).then_some(())
    });
    let status = cluster.status(&job);
    assert_eq!(status["state"], "running", "the job is mid-way: {status}");
    private.stop_saving();
    let stopped = Instant::now();
    // The outage itself: Redis stays down this long, whatever the services do.
    std::thread::sleep(outage);
    private.start_again();
    eprintln!("Redis was down for {:?}", stopped.elapsed());
    cluster.finish_scenario(
        producer,
        LONG,
        &format!("outage of Redis for {outage:?}"),
        &job,
        &expected,
    );
    let dead = cluster.topology().dead_letter_queue();
    assert_eq!(cluster.queue_depth(&dead), 0, "nothing was dead-lettered");
    for index in workers.into_iter().chain([reducer]) {
        assert!(
            cluster.service(index).is_running(),
            "service {index} waited the outage out"
        );
    }
    let waited = (0..2).any(|index| {
        cluster
            .log("worker", index)
            .contains("Redis is unavailable")
    });
    assert!(waited, "a worker met the outage and waited for Redis");
}

/// A Redis outage of ~8 s used to fail the job: every refused Redis call requeued the
/// chunk, and every requeue counted as an attempt.
#[test]
fn a_short_redis_outage_mid_job_is_waited_out() {
    job_survives_a_redis_outage("outage-short", Duration::from_secs(8));
}

/// A Redis outage of ~27 s used to push chunks past the queue's delivery limit (20), to be
/// dead-lettered by RabbitMQ, and the job hung.
#[test]
fn a_long_redis_outage_mid_job_dead_letters_nothing() {
    job_survives_a_redis_outage("outage-long", Duration::from_secs(27));
}

/// Peeking at a chunk's message (as the management UI's "Get messages" does: get, then
/// nack with requeue) more times than `--max-attempts` used to fail the job: the peeks
/// counted as deliveries.
#[test]
fn peeking_at_a_task_costs_no_attempt() {
    const PEEKS: u32 = 8;
    let private = PrivateRedis::start();
    let mut cluster = Cluster::new("outage-peek");
    cluster.use_redis(&private.url());
    let (file, _, expected) = text_input(&cluster, "a.txt", 52, 3000);
    let (producer, job) = cluster.submit_background(&["--chunk-size", "16KiB", "-q"], &[&file]);
    let map_queue = cluster.topology().map_queue();
    wait_for("chunks in the map queue", LONG, || {
        (cluster.queue_depth(&map_queue) >= 2).then_some(())
    });
    let peeked = with_channel(async |channel| {
        let mut target: Option<String> = None;
        let mut peeks = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while peeks < PEEKS {
            assert!(Instant::now() < deadline, "peeked {peeks} times in 60 s");
            let got = tokio::time::timeout(
                Duration::from_secs(10),
                channel.basic_get(map_queue.as_str().into(), BasicGetOptions::default()),
            )
            .await
            .expect("basic.get answered")
            .expect("basic.get");
            let Some(message) = got else {
                continue;
            };
            let id = message
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string());
            if target.is_none() {
                target = id.clone();
            }
            if id == target {
                peeks += 1;
            }
            tokio::time::timeout(
                Duration::from_secs(10),
                message.delivery.acker.nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                }),
            )
            .await
            .expect("nack answered")
            .expect("nack");
        }
        target.expect("a peeked message id")
    });
    eprintln!("peeked at {peeked} {PEEKS} times");
    cluster.worker(&[("CHUNKFLOW_MAX_ATTEMPTS", "5")]);
    cluster.worker(&[("CHUNKFLOW_MAX_ATTEMPTS", "5")]);
    cluster.reducer(&[]);
    cluster.finish_scenario(producer, LONG, "peeks at a task", &job, &expected);
    let dead = cluster.topology().dead_letter_queue();
    assert_eq!(cluster.queue_depth(&dead), 0, "nothing was dead-lettered");
}

/// Redis out of memory (`maxmemory` under `noeviction`) used to be reported as "the process
/// handling it died or stalled each time". It is waited out like an outage; past
/// `--outage-timeout` the job fails saying Redis is out of memory and what to do, and the
/// workers exit non-zero naming Redis.
#[test]
fn redis_out_of_memory_past_the_outage_timeout_fails_the_job_saying_so() {
    let private = PrivateRedis::start();
    let mut cluster = Cluster::new("outage-oom");
    cluster.use_redis(&private.url());
    let (file, _, _) = text_input(&cluster, "a.txt", 53, 20_000);
    let worker_env = [
        ("CHUNKFLOW_FAULT", "map-delay-ms=200"),
        ("CHUNKFLOW_OUTAGE_TIMEOUT", "5s"),
    ];
    let worker = cluster.worker(&worker_env);
    cluster.reducer(&[("CHUNKFLOW_OUTAGE_TIMEOUT", "5s")]);
    let (producer, job) = cluster.submit_background(&["--chunk-size", "16KiB", "-q"], &[&file]);
    wait_for("the job to be sealed with chunks left", LONG, || {
        let status = cluster.status(&job);
        (status["chunks_total"].as_u64().is_some() && cluster.committed(&job) >= 1).then_some(())
    });
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query(&mut private.connection())
        .unwrap();
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert!(!status.success(), "the job must fail: {stderr}");
    assert!(stderr.contains("Redis is out of memory"), "{stderr}");
    let exit = cluster.service(worker).wait_exit(LONG);
    assert!(!exit.success(), "the worker gave up on Redis");
    let log = cluster.log("worker", worker);
    assert!(
        log.contains("longer than --outage-timeout") && log.contains("out of memory"),
        "{log}"
    );
}
