//! Running it like a service: metrics that move as a job runs, health endpoints, heartbeat
//! records that list exactly the live processes, and the `--json` views scripts rely on.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::time::Duration;

use chunkflow_tests::cluster::*;
use chunkflow_tests::monitor::*;
use chunkflow_tests::reference::*;
use chunkflow_tests::scenario::*;
use chunkflow_tests::services::*;

#[test]
fn metrics_move_as_a_job_runs_and_health_endpoints_answer() {
    let mut cluster = Cluster::new("metrics");
    let worker = cluster.worker(MONITORED);
    let reducer = cluster.reducer(MONITORED);
    let pids: BTreeSet<u64> = [worker, reducer]
        .iter()
        .map(|&i| u64::from(cluster.service(i).pid()))
        .collect();
    let records = wait_for_live(&cluster, &pids, Duration::from_secs(30));
    let addr_of = |role: &str| -> String {
        records
            .iter()
            .find(|r| r["role"] == role)
            .and_then(|r| r["metrics_addr"].as_str())
            .unwrap_or_else(|| panic!("{role} announces its metrics address"))
            .to_string()
    };
    let (worker_addr, reducer_addr) = (addr_of("worker"), addr_of("reducer"));
    for addr in [&worker_addr, &reducer_addr] {
        assert_eq!(http_get(addr, "/healthz"), (200, "ok\n".to_string()));
        wait_for("readiness", Duration::from_secs(20), || {
            (http_get(addr, "/readyz").0 == 200).then_some(())
        });
        assert_eq!(http_get(addr, "/nope").0, 404);
    }

    let before = http_get(&worker_addr, "/metrics").1;
    for series in [
        "chunkflow_deliveries_received_total{role=\"worker\"}",
        "chunkflow_tasks_succeeded_total{role=\"worker\"}",
        "chunkflow_tasks_failed_total{role=\"worker\",outcome=\"dead_letter\"}",
        "chunkflow_tasks_redelivered_total{role=\"worker\"}",
        "chunkflow_duplicates_dropped_total{role=\"worker\"}",
        "chunkflow_bytes_mapped_total",
        "chunkflow_records_total",
        "chunkflow_tasks_in_flight{role=\"worker\"}",
        "chunkflow_reconnects_total{role=\"worker\"}",
    ] {
        assert!(
            before.contains(&format!("{series} 0")),
            "{series} starts at 0:\n{before}"
        );
    }
    assert_eq!(
        sample(&before, "chunkflow_broker_connected{role=\"worker\"}"),
        1.0
    );

    let (path, data, expected) = text_input(&cluster, "in.txt", 11, 2_000);
    let job = cluster.submit_wait(
        &["--chunk-size", "4KiB", "--partitions", "3"],
        &[&path],
        &[],
    );
    assert_eq!(cluster.result(&job), expected);
    let chunks = cluster.status(&job)["chunks_total"].as_u64().unwrap() as f64;
    assert!(chunks > 5.0, "the job must have several chunks");

    let after = http_get(&worker_addr, "/metrics").1;
    let value = |series: &str| sample(&after, series);
    assert_eq!(
        value("chunkflow_deliveries_received_total{role=\"worker\"}"),
        chunks
    );
    assert_eq!(
        value("chunkflow_tasks_succeeded_total{role=\"worker\"}"),
        chunks
    );
    assert_eq!(value("chunkflow_bytes_mapped_total"), data.len() as f64);
    assert_eq!(value("chunkflow_records_total"), line_count(&data) as f64);
    assert_eq!(value("chunkflow_map_duration_seconds_count"), chunks);
    assert_eq!(
        value("chunkflow_commit_duration_seconds_count{role=\"worker\"}"),
        chunks
    );
    assert!(
        after.contains("chunkflow_map_duration_seconds_bucket{le=\"+Inf\"}"),
        "durations are histograms"
    );
    assert_eq!(value("chunkflow_tasks_in_flight{role=\"worker\"}"), 0.0);
    assert!(
        !after.contains(&job),
        "no per-job labels: cardinality stays bounded"
    );

    let reduced = http_get(&reducer_addr, "/metrics").1;
    assert_eq!(
        sample(
            &reduced,
            "chunkflow_tasks_succeeded_total{role=\"reducer\"}"
        ),
        3.0
    );
    assert_eq!(
        sample(&reduced, "chunkflow_reduce_duration_seconds_count"),
        3.0
    );

    // The heartbeat reports the work done.
    let records = wait_for(
        "tasks done in the heartbeat",
        Duration::from_secs(10),
        || {
            let records = producer_json(&cluster, &["workers"]);
            let done: u64 = records
                .as_array()?
                .iter()
                .filter_map(|r| r["tasks_done"].as_u64())
                .sum();
            (done as f64 == chunks + 3.0).then_some(records)
        },
    );
    for record in records.as_array().unwrap() {
        for field in [
            "id",
            "role",
            "host",
            "pid",
            "version",
            "started_ms",
            "current_task",
            "tasks_done",
            "last_seen_ms",
            "metrics_addr",
        ] {
            assert!(record.get(field).is_some(), "workers --json lacks {field}");
        }
    }

    // A stopped worker is no longer ready, and says why.
    cluster.service(worker).signal("TERM");
    cluster.service(worker).wait_exit(Duration::from_secs(20));
    assert!(TcpStream::connect(&worker_addr).is_err(), "endpoint closed");
}

#[test]
fn workers_lists_exactly_the_live_processes_and_drops_a_killed_one() {
    let mut cluster = Cluster::new("heartbeats");
    let services: Vec<usize> = vec![
        cluster.worker(MONITORED),
        cluster.worker(MONITORED),
        cluster.reducer(MONITORED),
    ];
    let pid = |cluster: &mut Cluster, i: usize| u64::from(cluster.service(i).pid());
    let mut pids: BTreeSet<u64> = services.iter().map(|&i| pid(&mut cluster, i)).collect();
    wait_for_live(&cluster, &pids, Duration::from_secs(30));

    // SIGKILL: no goodbye; the record expires after its time to live (1.5 s).
    let killed = pid(&mut cluster, services[0]);
    cluster.service(services[0]).kill_hard();
    pids.remove(&killed);
    wait_for_live(&cluster, &pids, Duration::from_secs(10));

    // SIGTERM: the record is deleted on the way out.
    let stopped = pid(&mut cluster, services[2]);
    cluster.service(services[2]).signal("TERM");
    cluster
        .service(services[2])
        .wait_exit(Duration::from_secs(20));
    pids.remove(&stopped);
    assert_eq!(
        live_pids(&cluster),
        pids,
        "a stopped reducer leaves at once"
    );

    let text = cluster.producer(&["workers"], &[], None);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("ROLE") && text.contains("worker"), "{text}");
    assert!(!text.contains(&format!(" {killed} ")), "{text}");
}

#[test]
fn json_views_have_the_documented_fields() {
    let mut cluster = Cluster::new("jsonviews");
    cluster.worker(&[]);
    cluster.reducer(&[]);
    let (path, _, _) = text_input(&cluster, "in.txt", 12, 500);
    // Not a terminal: submit --wait prints plain progress lines, no bar.
    let output = cluster.producer(
        &[
            "submit",
            "--job",
            "wordcount",
            "--wait",
            "--chunk-size",
            "2KiB",
            &path,
        ],
        &[],
        None,
    );
    assert!(output.status.success());
    let job = job_id_from(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("succeeded"), "{stderr}");
    assert!(
        !stderr.contains('\r') && !stderr.contains('\u{1b}'),
        "no terminal control characters off a terminal: {stderr:?}"
    );

    let status = producer_json(&cluster, &["status", &job]);
    for field in [
        "job",
        "kind",
        "state",
        "chunks_committed",
        "chunks_total",
        "partitions_reduced",
        "partitions_total",
        "reason",
        "counters",
        "deliveries",
        "created_ms",
        "finished_ms",
        "progress",
        "elapsed_seconds",
        "throughput_bytes_per_second",
        "eta_seconds",
        "failures",
    ] {
        assert!(status.get(field).is_some(), "status --json lacks {field}");
    }
    assert_eq!(status["progress"], 1.0);
    assert!(status["failures"].as_array().unwrap().is_empty());
    assert!(status["throughput_bytes_per_second"].as_f64().unwrap() > 0.0);

    let jobs = producer_json(&cluster, &["jobs"]);
    let listed = jobs.as_array().expect("jobs --json is an array");
    assert_eq!(listed.len(), 1);
    for field in [
        "job",
        "kind",
        "state",
        "progress",
        "chunks_committed",
        "chunks_total",
        "partitions_reduced",
        "partitions_total",
        "created_ms",
        "finished_ms",
        "age_seconds",
        "reason",
    ] {
        assert!(listed[0].get(field).is_some(), "jobs --json lacks {field}");
    }
    assert_eq!(listed[0]["job"], job.as_str());
    assert_eq!(listed[0]["state"], "succeeded");

    let queues = producer_json(&cluster, &["queues"]);
    let topology = cluster.topology();
    let names: Vec<&str> = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    let expected = topology.queues();
    assert_eq!(
        names,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for queue in queues["queues"].as_array().unwrap() {
        for field in ["queue", "exists", "ready", "unacked", "consumers"] {
            assert!(queue.get(field).is_some(), "queues --json lacks {field}");
        }
    }
    let map = &queues["queues"][0];
    assert_eq!(map["consumers"], 1);
    assert_eq!(map["ready"], 0);
    match queues["management_error"].as_str() {
        None => assert!(map["unacked"].is_u64(), "{queues}"),
        Some(why) => {
            println!("management API unreachable here: {why}");
            assert!(map["unacked"].is_null());
        }
    }
    // Unreachable management API: said clearly, no made-up numbers.
    let output = cluster.producer(
        &[
            "queues",
            "--management-url",
            "http://guest:secret@127.0.0.1:1",
        ],
        &[],
        None,
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(text.contains("unacked counts unavailable"), "{text}");
    assert!(!text.contains("secret"), "password leaked: {text}");

    // watch on an ended job: its final line, exit 0 for success.
    let output = cluster.producer(&["watch", &job], &[], None);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("succeeded"));
}
