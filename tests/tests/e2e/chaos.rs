//! The chaos suite, part 1: scenarios that disturb only this test's own processes, so they
//! run in parallel with everything else. Each compares the result with the sequential
//! reference (or checks the job failed with the right reason) and prints a summary line.
//! Scenarios that close or restart the shared broker or Redis are in `tests/exclusive`.

use std::time::Duration;

use lapin::options::BasicPublishOptions;

use chunkflow_tests::cluster::*;
use chunkflow_tests::monitor::*;
use chunkflow_tests::reference::*;
use chunkflow_tests::scenario::*;
use chunkflow_tests::services::*;

const LONG: Duration = Duration::from_secs(120);

/// Scenario 1: SIGKILL random workers and reducers repeatedly, restarting them.
#[test]
fn scenario_01_random_sigkills_of_workers_and_reducers() {
    let mut cluster = Cluster::new("chaos-kill");
    let (file, data, expected) = text_input(&cluster, "a.txt", 21, 6000);
    let worker_env = [
        ("CHUNKFLOW_FAULT", "map-delay-ms=15"),
        ("CHUNKFLOW_PREFETCH", "1"),
        ("CHUNKFLOW_MAX_ATTEMPTS", "19"),
    ];
    let reducer_env = [
        ("CHUNKFLOW_FAULT", "reduce-delay-ms=150"),
        ("CHUNKFLOW_LEASE", "1s"),
    ];
    let mut workers: Vec<usize> = (0..3).map(|_| cluster.worker(&worker_env)).collect();
    let mut reducers: Vec<usize> = (0..2).map(|_| cluster.reducer(&reducer_env)).collect();
    let (producer, job) = cluster.submit_background(
        &["--chunk-size", "2KiB", "--partitions", "6", "-q"],
        &[&file],
    );
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    let progress = |cluster: &Cluster| {
        let status = cluster.status(&job);
        let done = status["chunks_committed"].as_u64().unwrap_or(0)
            + status["partitions_reduced"].as_u64().unwrap_or(0);
        (done, status["state"].as_str().unwrap_or("").to_string())
    };
    loop {
        let (before, state) = progress(&cluster);
        if state == "succeeded" || state == "failed" || kills >= 40 {
            break;
        }
        // Pace kills on progress: wait for a little more work, or the end of the job.
        wait_for("progress between kills", LONG, || {
            let (now, state) = progress(&cluster);
            (now >= before + 3 || state == "succeeded" || state == "failed").then_some(())
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kill_reducer = state == "reducing" || rng.is_multiple_of(4);
        let pool = if kill_reducer {
            &mut reducers
        } else {
            &mut workers
        };
        let slot = (rng % pool.len() as u64) as usize;
        cluster.service(pool[slot]).kill_hard();
        kills += 1;
        pool[slot] = if kill_reducer {
            cluster.reducer(&reducer_env)
        } else {
            cluster.worker(&worker_env)
        };
    }
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert!(status.success(), "job failed under kills: {stderr}");
    assert!(
        kills >= 3,
        "only {kills} kills happened; the scenario must disturb the job"
    );
    cluster.verify_scenario(
        &format!("01 random SIGKILLs ({kills} kills)"),
        &job,
        &expected,
    );
    assert_eq!(
        cluster.status(&job)["counters"]["bytes_read"],
        data.len() as u64
    );
}

/// Scenario 3: SIGTERM during processing: the chunk in hand is finished, exit 0.
#[test]
fn scenario_03_sigterm_during_processing() {
    let mut cluster = Cluster::new("chaos-term");
    let (file, _, expected) = text_input(&cluster, "a.txt", 22, 2000);
    let slow = [("CHUNKFLOW_FAULT", "map-delay-ms=300")];
    let victim = cluster.worker(&slow);
    cluster.reducer(&[]);
    let (producer, job) = cluster.submit_background(&["--chunk-size", "4KiB", "-q"], &[&file]);
    wait_for("the worker to commit", LONG, || {
        (cluster.committed(&job) >= 2).then_some(())
    });
    cluster.service(victim).signal("TERM");
    let exit = cluster.service(victim).wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "worker exited with {exit} on SIGTERM");
    let log = cluster.log("worker", victim);
    assert!(log.contains("shutdown requested"), "{log}");
    let at_stop = cluster.committed(&job);
    cluster.worker(&[]);
    cluster.finish_scenario(
        producer,
        LONG,
        &format!("03 SIGTERM mid-job (stopped at {at_stop} chunks)"),
        &job,
        &expected,
    );
}

/// Scenario 3b: a chunk that outlasts the grace period is given back, not lost.
#[test]
fn scenario_03b_grace_period_gives_the_chunk_back() {
    let mut cluster = Cluster::new("chaos-grace");
    let (file, _, expected) = text_input(&cluster, "a.txt", 23, 300);
    let victim = cluster.worker(&[
        ("CHUNKFLOW_FAULT", "map-delay-ms=20000"),
        ("CHUNKFLOW_GRACE_PERIOD", "300ms"),
    ]);
    cluster.reducer(&[]);
    let (producer, job) = cluster.submit_background(&["-q"], &[&file]);
    let map_queue = cluster.topology().map_queue();
    wait_for("the worker to take the chunk", LONG, || {
        (cluster.queue_depth(&map_queue) == 0).then_some(())
    });
    cluster.service(victim).signal("TERM");
    let exit = cluster.service(victim).wait_exit(Duration::from_secs(10));
    assert!(exit.success(), "{exit}");
    assert!(cluster.log("worker", victim).contains("grace period over"));
    assert_eq!(cluster.committed(&job), 0);
    cluster.worker(&[]);
    cluster.finish_scenario(
        producer,
        LONG,
        "03b grace period expires, chunk given back",
        &job,
        &expected,
    );
}

/// Scenario 5: an oversized task claiming a running job is dead-lettered; the job is fine.
#[test]
fn scenario_05_oversized_task_is_dead_lettered() {
    let mut cluster = Cluster::new("chaos-oversize");
    let (file, _, expected) = text_input(&cluster, "a.txt", 24, 1500);
    let worker = cluster.worker(&[("CHUNKFLOW_FAULT", "map-delay-ms=50")]);
    cluster.reducer(&[]);
    let (producer, job) = cluster.submit_background(
        &["--chunk-size", "2KiB", "--max-record-size", "4KiB", "-q"],
        &[&file],
    );
    let topology = cluster.topology();
    let task = chunkflow::protocol::messages::MapTask {
        job_id: chunkflow::job::JobId::parse(&job).expect("a valid job id"),
        chunk: 1_000_000,
        source: "forged".into(),
        offset: 0,
        first_line: 1,
    };
    let body = vec![b'a'; 64 * 1024];
    with_channel(async |channel| {
        channel
            .basic_publish(
                "".into(),
                topology.map_queue().as_str().into(),
                BasicPublishOptions::default(),
                &body,
                task.properties(),
            )
            .await
            .unwrap();
    });
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert!(status.success(), "{stderr}");
    wait_for("the oversized task in the dead-letter queue", LONG, || {
        (cluster.queue_depth(&topology.dead_letter_queue()) == 1).then_some(())
    });
    assert!(cluster
        .log("worker", worker)
        .contains("more than the job's limit"));
    cluster.verify_scenario("05 oversized task", &job, &expected);
}

/// Scenario 6: a task that fails every time ends dead-lettered, the job failed naming the
/// chunk, the workers alive.
#[test]
fn scenario_06_poison_task_fails_the_job_and_is_dead_lettered() {
    let mut cluster = Cluster::new("chaos-poison");
    let (file, _, _) = text_input(&cluster, "a.txt", 25, 1500);
    let poison = [
        ("CHUNKFLOW_FAULT", "panic-on-chunk=2"),
        ("CHUNKFLOW_MAX_ATTEMPTS", "3"),
    ];
    let first = cluster.worker(&poison);
    let second = cluster.worker(&poison);
    cluster.reducer(&[]);
    let (producer, job) = cluster.submit_background(&["--chunk-size", "2KiB", "-q"], &[&file]);
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert!(!status.success(), "the job must fail");
    assert!(
        stderr.contains("chunk 2") && stderr.contains("failed on all 3 attempts"),
        "{stderr}"
    );
    assert!(
        stderr.contains("poison chunk 2"),
        "the cause is named: {stderr}"
    );
    let status = cluster.status(&job);
    assert_eq!(status["state"], "failed");
    let topology = cluster.topology();
    wait_for("the poison chunk in the dead-letter queue", LONG, || {
        (cluster.queue_depth(&topology.dead_letter_queue()) == 1).then_some(())
    });
    wait_for("the remaining chunks to be dropped", LONG, || {
        (cluster.queue_depth(&topology.map_queue()) == 0).then_some(())
    });
    assert!(cluster.service(first).is_running() && cluster.service(second).is_running());
    cluster.report_failed_scenario("06 poison task", &job);
}

/// Scenario 12: a worker frozen with SIGSTOP past the broker's heartbeat, then resumed:
/// its late commit changes nothing.
#[test]
fn scenario_12_frozen_worker_resumed_late_changes_nothing() {
    let mut cluster = Cluster::new("chaos-stop");
    let (file, data, expected) = text_input(&cluster, "a.txt", 26, 400);
    let amqp = format!("{AMQP_URL}?heartbeat=1");
    let frozen = cluster.worker(&[
        ("AMQP_URL", amqp.as_str()),
        ("CHUNKFLOW_FAULT", "map-delay-ms=1500"),
        ("CHUNKFLOW_PREFETCH", "1"),
        METRICS_ON_FREE_PORT,
    ]);
    // Read before the freeze: a frozen process renews no heartbeat record.
    let frozen_metrics = cluster.metrics_addr(frozen);
    cluster.reducer(&[]);
    let (producer, job) = cluster.submit_background(&["-q"], &[&file]);
    // Frozen mid-map: once its attempt is recorded (start_attempt runs just before the
    // 1.5 s map delay), not merely while the delivery sits in its prefetch buffer, where a
    // freeze would let the broker requeue it before the handler ever saw it.
    let attempts = chunkflow::store::keys::Keys::new(&cluster.namespace)
        .job(&job)
        .chunk_attempts();
    wait_for("the worker to start mapping the chunk", LONG, || {
        let started: Option<u64> = redis::cmd("HGET")
            .arg(&attempts)
            .arg(0)
            .query(&mut redis())
            .unwrap();
        (started >= Some(1)).then_some(())
    });
    cluster.service(frozen).signal("STOP");
    let rescuer = cluster.worker(&[]);
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert!(status.success(), "{stderr}");
    assert_eq!(cluster.result(&job), expected);
    cluster.service(frozen).signal("CONT");
    // The chunk is committed by the rescuer, so the resumed worker's commit finds it done
    // (a duplicate, or a task of an ended job): it acks the task without writing anything.
    let acked = series(chunkflow::metrics::SUCCEEDED, "worker", None);
    wait_for("the resumed worker's late task to be dropped", LONG, || {
        (metric(&frozen_metrics, &acked) >= 1.0).then_some(())
    });
    cluster.verify_scenario("12 worker frozen past heartbeat, resumed", &job, &expected);
    assert_eq!(
        cluster.status(&job)["counters"]["bytes_read"],
        data.len() as u64
    );
    assert!(cluster.service(rescuer).is_running());
}

/// Scenario 13: two reducers race for one partition; the first is frozen past its lease.
/// The second takes the lease over; the first's late commit is refused (fenced).
#[test]
fn scenario_13_frozen_reducer_is_fenced() {
    let mut cluster = Cluster::new("chaos-lease");
    let (file, _, expected) = text_input(&cluster, "a.txt", 27, 500);
    cluster.worker(&[]);
    let amqp = format!("{AMQP_URL}?heartbeat=1");
    let FrozenReducer {
        index: first,
        metrics: first_metrics,
        producer,
        job,
        lease_key,
    } = cluster.freeze_reducer_holding_the_lease(&file, &[("AMQP_URL", amqp.as_str())], LONG);
    let second = cluster.reducer(&[
        ("CHUNKFLOW_FAULT", "reduce-delay-ms=3000"),
        ("CHUNKFLOW_LEASE", "1s"),
    ]);
    wait_for("the second reducer to take the lease over", LONG, || {
        (lease_token(&lease_key) >= Some(2)).then_some(())
    });
    cluster.service(first).signal("CONT");
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert!(status.success(), "{stderr}");
    // A fenced commit writes nothing and gives the task back: a requeue (`retry`).
    let requeued = series(chunkflow::metrics::FAILED, "reducer", Some("retry"));
    wait_for("the first reducer's commit to be refused", LONG, || {
        (metric(&first_metrics, &requeued) >= 1.0).then_some(())
    });
    cluster.verify_scenario("13 reducer frozen past its lease (fenced)", &job, &expected);
    assert_eq!(
        cluster.status(&job)["counters"]["output_records"],
        expected.lines().count() as u64,
        "reduced once"
    );
    assert!(cluster.service(second).is_running());
}

/// Scenario 14: a job cancelled mid-run: its tasks are dropped, `--wait` fails.
#[test]
fn scenario_14_cancel_mid_run() {
    let mut cluster = Cluster::new("chaos-cancel");
    let (file, _, _) = text_input(&cluster, "a.txt", 28, 3000);
    let worker = cluster.worker(&[("CHUNKFLOW_FAULT", "map-delay-ms=100")]);
    cluster.reducer(&[]);
    let (producer, job) = cluster.submit_background(&["--chunk-size", "2KiB", "-q"], &[&file]);
    wait_for("some progress", LONG, || {
        (cluster.committed(&job) >= 2).then_some(())
    });
    let cancel = cluster.producer(&["cancel", &job], &[], None);
    assert!(
        cancel.status.success(),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert!(!status.success());
    assert!(stderr.contains("cancelled"), "{stderr}");
    let map_queue = cluster.topology().map_queue();
    wait_for("queued chunks to be dropped", LONG, || {
        (cluster.queue_depth(&map_queue) == 0).then_some(())
    });
    let status = cluster.status(&job);
    assert_eq!(status["state"], "cancelled");
    let total = status["chunks_total"].as_u64().unwrap();
    assert!(
        status["chunks_committed"].as_u64().unwrap() < total,
        "cancelled before the end"
    );
    let result = cluster.producer(&["result", &job], &[], None);
    assert!(!result.status.success());
    let again = cluster.producer(&["cancel", &job], &[], None);
    assert!(
        !again.status.success(),
        "cancelling an ended job is an error"
    );
    assert!(cluster.service(worker).is_running());
    cluster.report_failed_scenario("14 cancelled mid-run", &job);
}

/// Scenario 15a: the producer killed mid-publish; the job never completes falsely and is
/// resumed by submitting again with the same job id.
#[test]
fn scenario_15a_producer_killed_mid_publish_then_resumed() {
    let mut cluster = Cluster::new("chaos-resume");
    let (file, data, expected) = text_input(&cluster, "a.txt", 29, 1500);
    let (mut producer, job) = cluster.stalled_submit(&[&file], &["--job-id", "resumable-1"], LONG);
    assert_eq!(job, "resumable-1");
    producer.kill().unwrap();
    producer.wait().unwrap();
    cluster.worker(&[]);
    cluster.reducer(&[]);
    let map_queue = cluster.topology().map_queue();
    wait_for("the published chunks to be consumed", LONG, || {
        (cluster.queue_depth(&map_queue) == 0).then_some(())
    });
    let status = cluster.status(&job);
    assert_eq!(
        status["state"], "running",
        "never complete without the producer's seal"
    );
    let resumed = cluster.submit_wait(
        &["--chunk-size", "1KiB", "--job-id", &job, "-q"],
        &[&file],
        &[],
    );
    assert_eq!(resumed, job);
    cluster.verify_scenario("15a producer killed mid-publish, resumed", &job, &expected);
    assert_eq!(
        cluster.status(&job)["counters"]["bytes_read"],
        data.len() as u64
    );
    let other = cluster.producer(
        &[
            "submit",
            "--job",
            "wordcount",
            "--job-id",
            &job,
            "--partitions",
            "3",
            &file,
        ],
        &[],
        None,
    );
    assert!(
        !other.status.success(),
        "a different job under the same id is refused"
    );
}

/// Scenario 15b: the producer killed mid-publish and never coming back: the job is failed
/// after the producer timeout, saying why.
#[test]
fn scenario_15b_vanished_producer_fails_the_job_after_a_deadline() {
    let mut cluster = Cluster::new("chaos-vanish");
    let (file, _, _) = text_input(&cluster, "a.txt", 30, 1500);
    let (mut producer, job) = cluster.stalled_submit(&[&file], &[], LONG);
    producer.kill().unwrap();
    producer.wait().unwrap();
    cluster.worker(&[]);
    cluster.reducer(&[("CHUNKFLOW_PRODUCER_TIMEOUT", "3s")]);
    let status = wait_for("the job to be failed", LONG, || {
        let status = cluster.status(&job);
        (status["state"] == "failed").then_some(status)
    });
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .contains("producer stopped publishing"),
        "{status}"
    );
    cluster.report_failed_scenario("15b producer vanished", &job);
}

/// Bad input: a FIFO or device, binary data, CR-only line ends, many distinct keys.
#[test]
fn bad_and_odd_inputs() {
    let mut cluster = Cluster::new("oddinput");
    let output = cluster.producer(&["submit", "--job", "wordcount", "/dev/null"], &[], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a regular file"));
    let dir = cluster.dir.to_string_lossy().into_owned();
    let output = cluster.producer(
        &["generate", "text", "--size", "1KiB", "--output", &dir],
        &[],
        None,
    );
    assert!(
        !output.status.success(),
        "a directory where a file is expected"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains(&dir));

    cluster.worker(&[]);
    cluster.worker(&[]);
    cluster.reducer(&[]);
    let mut binary = Vec::new();
    let mut state = 7u32;
    for _ in 0..20_000 {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        binary.push((state >> 16) as u8);
    }
    let cr_only = b"Old Mac\rline ends\rCR only\r".repeat(50);
    let mut distinct = Vec::new();
    for i in 0..1_000_000u32 {
        distinct.extend_from_slice(format!("key{i:x}z ").as_bytes());
        if i % 16 == 15 {
            distinct.push(b'\n');
        }
    }
    let files = [
        ("binary.bin", binary),
        ("cr.txt", cr_only),
        ("distinct.txt", distinct),
    ];
    let mut paths = Vec::new();
    for (name, data) in &files {
        paths.push(cluster.write_file(name, data));
    }
    for (index, (name, data)) in files.iter().enumerate() {
        let job = cluster.submit_wait(&["--chunk-size", "64KiB", "-q"], &[&paths[index]], &[]);
        assert_eq!(cluster.result(&job), reference_wordcount(&[data]), "{name}");
    }
}

/// Scenario 6b: a task that kills every worker that takes it: after `max-attempts`
/// deliveries (counted by the broker, deaths included) the job fails naming the chunk.
#[test]
fn scenario_06b_task_that_kills_every_worker() {
    let mut cluster = Cluster::new("chaos-killer");
    let (file, _, _) = text_input(&cluster, "a.txt", 31, 600);
    let deadly = [
        ("CHUNKFLOW_FAULT", "abort-on-chunk=1"),
        ("CHUNKFLOW_MAX_ATTEMPTS", "2"),
        ("CHUNKFLOW_PREFETCH", "1"),
    ];
    cluster.reducer(&[]);
    let (producer, job) = cluster.submit_background(&["--chunk-size", "2KiB", "-q"], &[&file]);
    let mut deaths = 0;
    let mut current = cluster.worker(&deadly);
    loop {
        let exited = wait_for("the worker to die or the job to fail", LONG, || {
            if !cluster.service(current).is_running() {
                return Some(true);
            }
            (cluster.status(&job)["state"] == "failed").then_some(false)
        });
        if !exited {
            break;
        }
        deaths += 1;
        assert!(deaths <= 3, "the chunk must be given up after 2 attempts");
        current = cluster.worker(&deadly);
    }
    assert_eq!(deaths, 2, "two workers died on the chunk");
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert!(!status.success());
    assert!(
        stderr.contains("chunk 1") && stderr.contains("died or stalled"),
        "{stderr}"
    );
    assert!(
        cluster.service(current).is_running(),
        "the third worker survives"
    );
    cluster.report_failed_scenario("06b task that kills every worker", &job);
}

/// Scenario 11: Redis restarts without persistence under a running job (a private Redis,
/// not the shared one): the job fails and the reason says the state was lost.
#[test]
fn scenario_11_redis_restart_without_persistence() {
    let mut private = PrivateRedis::start();
    let mut cluster = Cluster::new("chaos-redis-restart");
    cluster.use_redis(&private.url());
    let (file, _, _) = text_input(&cluster, "a.txt", 32, 3000);
    let worker = cluster.worker(&[("CHUNKFLOW_FAULT", "map-delay-ms=100")]);
    cluster.reducer(&[]);
    let (producer, job) = cluster.submit_background(&["--chunk-size", "2KiB", "-q"], &[&file]);
    wait_for("some chunks to commit", LONG, || {
        (cluster.committed(&job) >= 3).then_some(())
    });
    private.restart_empty();
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert!(!status.success(), "the job must not succeed");
    assert!(stderr.contains("Redis lost"), "{stderr}");
    let status = cluster.status(&job);
    assert_eq!(status["state"], "failed");
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .contains("lost this job's state"),
        "{status}"
    );
    let map_queue = cluster.topology().map_queue();
    wait_for("the remaining chunks to be dropped", LONG, || {
        (cluster.queue_depth(&map_queue) == 0).then_some(())
    });
    assert!(cluster.service(worker).is_running());
    let result = cluster.producer(&["result", &job], &[], None);
    assert!(!result.status.success(), "no result is ever reported");
    cluster.report_failed_scenario("11 Redis restarted without persistence", &job);
}

/// Lost state, key by key (what an eviction does): a partition's intermediate hash or the
/// set of committed chunks disappears; the job fails saying Redis lost data instead of
/// producing a silently wrong result.
#[test]
fn evicted_keys_fail_the_job_instead_of_a_wrong_result() {
    let mut cluster = Cluster::new("evicted");
    let (file, _, _) = text_input(&cluster, "a.txt", 33, 800);
    cluster.worker(&[]);
    // No reducer yet: the job stops at `reducing` with every chunk committed.
    let (producer, job) = cluster.submit_background(
        &["--chunk-size", "2KiB", "--partitions", "3", "-q"],
        &[&file],
    );
    wait_for("the map phase to complete", LONG, || {
        (cluster.status(&job)["state"] == "reducing").then_some(())
    });
    let keys = chunkflow::store::keys::Keys::new(&cluster.namespace).job(&job);
    let _: i64 = redis::cmd("DEL")
        .arg(keys.partition(1, 3).data())
        .query(&mut redis())
        .unwrap();
    cluster.reducer(&[]);
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert!(!status.success());
    assert!(
        stderr.contains("Redis lost part of this job's state") && stderr.contains("partition 1"),
        "{stderr}"
    );

    // The set of committed chunks evicted while the job runs.
    let (file, _, _) = text_input(&cluster, "b.txt", 34, 3000);
    let slow = cluster.worker(&[("CHUNKFLOW_FAULT", "map-delay-ms=50")]);
    let (producer, job) = cluster.submit_background(&["--chunk-size", "2KiB", "-q"], &[&file]);
    wait_for("some chunks to commit", LONG, || {
        (cluster.committed(&job) >= 3).then_some(())
    });
    let keys = chunkflow::store::keys::Keys::new(&cluster.namespace).job(&job);
    let _: i64 = redis::cmd("DEL")
        .arg(keys.chunks_done())
        .query(&mut redis())
        .unwrap();
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert!(!status.success());
    assert!(
        stderr.contains("Redis lost part of this job's state"),
        "{stderr}"
    );
    assert!(cluster.service(slow).is_running());
}
