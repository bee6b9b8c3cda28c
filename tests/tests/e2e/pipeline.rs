//! The happy path: results equal the sequential reference, whatever the chunking.

use std::time::Duration;

use chunkflow_tests::cluster::*;
use chunkflow_tests::reference::*;
use chunkflow_tests::services::*;

fn corpus(cluster: &Cluster) -> (Vec<String>, Vec<Vec<u8>>) {
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("in/a.txt", generate_text(1, 600)),
        ("in/sub/b.txt", generate_text(2, 300)),
        (
            "in/sub/c-no-final-newline.txt",
            b"Tail WORD without newline".to_vec(),
        ),
        ("in/empty.txt", Vec::new()),
        ("extra.txt", generate_text(3, 200)),
    ];
    let mut paths = Vec::new();
    for (name, data) in &files {
        paths.push(cluster.write_file(name, data));
    }
    (paths, files.into_iter().map(|(_, data)| data).collect())
}

#[test]
fn wordcount_with_two_workers_matches_sequential_reference() {
    let mut cluster = Cluster::new("reference");
    let (_, datas) = corpus(&cluster);
    cluster.worker(&[]);
    cluster.worker(&[]);
    cluster.reducer(&[]);
    let dir = cluster.dir.join("in").to_string_lossy().into_owned();
    let extra = cluster.dir.join("extra.txt").to_string_lossy().into_owned();
    let job = cluster.submit_wait(
        &["--chunk-size", "4KiB", "--partitions", "5"],
        &[&dir, &extra],
        &[],
    );
    let refs: Vec<&[u8]> = datas.iter().map(Vec::as_slice).collect();
    let expected = reference_wordcount(&refs);
    assert!(
        expected.lines().count() > 20,
        "the corpus must be non-trivial"
    );
    assert_eq!(cluster.result(&job), expected);

    let status = cluster.status(&job);
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["partitions_reduced"], 5);
    assert_eq!(status["chunks_committed"], status["chunks_total"]);
    let bytes: u64 = datas.iter().map(|d| d.len() as u64).sum();
    let lines: u64 = datas.iter().map(|d| line_count(d)).sum();
    assert_eq!(status["counters"]["bytes_read"], bytes);
    assert_eq!(status["counters"]["records_read"], lines);
    assert_eq!(
        status["counters"]["output_records"],
        expected.lines().count() as u64
    );
}

#[test]
fn result_does_not_depend_on_chunk_size_or_partitions() {
    let mut cluster = Cluster::new("chunksizes");
    let (paths, datas) = corpus(&cluster);
    let refs: Vec<&[u8]> = datas.iter().map(Vec::as_slice).collect();
    let expected = reference_wordcount(&refs);
    let total: usize = datas.iter().map(Vec::len).sum();
    cluster.worker(&[]);
    cluster.worker(&[]);
    cluster.reducer(&[]);
    let inputs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let too_big = (total * 2).to_string();
    for (chunk_size, partitions) in [
        ("1", "3"),
        ("7", "1"),
        ("100", "8"),
        ("1000", "2"),
        ("64KiB", "16"),
        (too_big.as_str(), "4"),
    ] {
        let job = cluster.submit_wait(
            &["--chunk-size", chunk_size, "--partitions", partitions, "-q"],
            &inputs,
            &[],
        );
        assert_eq!(
            cluster.result(&job),
            expected,
            "chunk size {chunk_size}, partitions {partitions}"
        );
    }
}

#[test]
fn standard_input_streams_through() {
    let mut cluster = Cluster::new("stdin");
    cluster.worker(&[]);
    cluster.reducer(&[]);
    let data = generate_text(9, 2000);
    let output = cluster.producer(
        &[
            "submit",
            "--job",
            "wordcount",
            "--wait",
            "--chunk-size",
            "8KiB",
            "-",
        ],
        &[],
        Some(&data),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let job = job_id_from(&output);
    assert_eq!(cluster.result(&job), reference_wordcount(&[&data]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("succeeded"), "progress on stderr: {stderr}");
}

#[test]
fn empty_input_succeeds_with_empty_result() {
    let mut cluster = Cluster::new("empty");
    cluster.worker(&[]);
    cluster.reducer(&[]);
    let empty = cluster.write_file("empty.txt", b"");
    let job = cluster.submit_wait(&[], &[&empty], &[]);
    assert_eq!(cluster.result(&job), "");
    let status = cluster.status(&job);
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["chunks_total"], 0);
}

#[test]
fn status_shows_progress_and_result_refuses_unfinished_job() {
    let cluster = Cluster::new("status");
    // No workers: the job stays running with every chunk queued.
    let file = cluster.write_file("a.txt", &generate_text(4, 500));
    let output = cluster.producer(
        &[
            "submit",
            "--job",
            "wordcount",
            "--chunk-size",
            "1KiB",
            &file,
        ],
        &[],
        None,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let job = job_id_from(&output);
    let status = cluster.status(&job);
    assert_eq!(status["state"], "running");
    assert_eq!(status["chunks_committed"], 0);
    let total = status["chunks_total"].as_u64().unwrap();
    assert!(total > 1);
    assert_eq!(
        cluster.queue_depth(&cluster.topology().map_queue()) as u64,
        total
    );

    let text = cluster.producer(&["status", &job], &[], None);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("state:      running"), "{text}");
    assert!(text.contains(&format!("0/{total} committed")), "{text}");

    let result = cluster.producer(&["result", &job], &[], None);
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("no result yet") && stderr.contains("running"),
        "{stderr}"
    );

    let missing = cluster.producer(&["status", "no-such-job"], &[], None);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no job `no-such-job`"));
}

#[test]
fn workers_exit_zero_on_sigterm_and_nothing_is_left_behind() {
    let namespace;
    {
        let mut cluster = Cluster::new("sigterm");
        namespace = cluster.namespace.clone();
        let worker = cluster.worker(&[]);
        let reducer = cluster.reducer(&[]);
        let file = cluster.write_file("a.txt", &generate_text(5, 300));
        let job = cluster.submit_wait(&["--chunk-size", "2KiB"], &[&file], &[]);
        assert_eq!(cluster.status(&job)["state"], "succeeded");
        for index in [worker, reducer] {
            let service = cluster.service(index);
            service.signal("TERM");
            let status = service.wait_exit(Duration::from_secs(20));
            assert!(status.success(), "{} exited with {status}", service.role);
        }
        assert!(!cluster.redis_keys().is_empty());
    }
    // The cluster's drop removed the namespace: no key, no queue.
    let keys = chunkflow::store::keys::Keys::new(&namespace).namespace_pattern();
    let left: Vec<String> = redis::cmd("KEYS").arg(keys).query(&mut redis()).unwrap();
    assert!(left.is_empty(), "keys left behind: {left:?}");
    let topology = chunkflow::broker::topology::Topology::new(&namespace);
    let queue_exists = with_channel(async |channel| {
        topology
            .ready_messages(channel, &topology.map_queue())
            .await
            .is_ok()
    });
    assert!(!queue_exists, "queue left behind");
}
