//! Inputs are what the job says they are: a `--job-id` resume over other inputs is refused
//! before anything is published, two producers racing on one job id over different files
//! cannot both succeed, and an input that changes or disappears while the producer reads
//! it fails the job, naming the file and saying how many chunks were published.
//!
//! To change a file while it is read, the producer is stalled first: no workers yet and a
//! tiny `--max-queued-bytes`, so it blocks mid-publish with most of a large file unread.

use std::process::Child;
use std::time::{Duration, SystemTime};

use chunkflow_tests::cluster::*;
use chunkflow_tests::reference::*;
use chunkflow_tests::scenario::*;

const LONG: Duration = Duration::from_secs(120);

/// The same bytes with `e` and `o` swapped: other words, but the same line lengths, so the
/// same size and the same chunks.
fn same_shape(data: &[u8]) -> Vec<u8> {
    data.iter()
        .map(|&byte| match byte {
            b'e' => b'o',
            b'o' => b'e',
            other => other,
        })
        .collect()
}

/// Moves a file's modification time well away from now, so that a rewrite is told apart
/// even on a file system with coarse timestamps.
fn touch_later(path: &str) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The number in "after N chunks were published".
fn published_count(stderr: &str) -> u64 {
    let (before, _) = stderr
        .rsplit_once(" chunks were published")
        .unwrap_or_else(|| panic!("no published count in {stderr}"));
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no published count in {stderr}"))
}

/// Asserts a stalled-then-released submit failed naming `path` and `what`, said how many
/// chunks it had published, and left the job failed saying so.
fn assert_failed_naming(cluster: &Cluster, producer: Child, job: &str, path: &str, what: &str) {
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(path) && stderr.contains(what),
        "expected `{path}` and `{what}` in: {stderr}"
    );
    assert!(!stderr.contains("nothing was published"), "{stderr}");
    assert!(stderr.contains("the job was marked failed"), "{stderr}");
    assert!(published_count(&stderr) >= 4, "{stderr}");
    let status = cluster.status(job);
    assert_eq!(status["state"], "failed", "{status}");
    let reason = status["reason"].as_str().unwrap();
    assert!(reason.contains(path) && reason.contains(what), "{reason}");
}

#[test]
fn resume_over_other_inputs_is_refused_naming_the_difference() {
    let cluster = Cluster::new("inputs-resume");
    let (file, data, _) = text_input(&cluster, "a.txt", 41, 1500);
    let (mut producer, job) =
        cluster.stalled_submit(&[&file], &["--job-id", "fingerprinted"], LONG);
    producer.kill().unwrap();
    producer.wait().unwrap();
    let map_queue = cluster.topology().map_queue();
    let queued = cluster.queue_depth(&map_queue);
    let resume = |inputs: &[&str]| {
        let mut args = vec![
            "submit",
            "--job",
            "wordcount",
            "--chunk-size",
            "1KiB",
            "--job-id",
            &job,
        ];
        args.extend_from_slice(inputs);
        cluster.producer(&args, &[], None)
    };

    // Another file of the same size and chunks under the job's id.
    let other = cluster.write_file("b.txt", &same_shape(&data));
    let output = resume(&[&other]);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("input `{file}` removed"))
            && stderr.contains(&format!("input `{other}` added")),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was published"), "{stderr}");

    // The same path rewritten with other bytes of the same size.
    std::fs::write(&file, same_shape(&data)).unwrap();
    touch_later(&file);
    let output = resume(&[&file]);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "input `{file}` changed (modification time changed)"
        )),
        "{stderr}"
    );

    // Standard input is never resumed.
    let mut args = vec!["submit", "--job", "wordcount", "--chunk-size", "1KiB"];
    args.extend_from_slice(&["--job-id", &job, "-"]);
    let output = cluster.producer(&args, &[], Some(&data));
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("input `-` added"), "{stderr}");

    assert!(
        output.stdout.is_empty(),
        "a refused submit prints no job id"
    );
    assert_eq!(
        cluster.queue_depth(&map_queue),
        queued,
        "a refused submit publishes nothing"
    );
    let status = cluster.status(&job);
    assert_eq!(status["state"], "running", "a refused submit fails nothing");
    assert!(status["chunks_total"].is_null());
    let inputs = &status["inputs"];
    assert_eq!(inputs[0]["path"], file.as_str(), "{status}");
    assert_eq!(inputs[0]["size"], data.len() as u64, "{status}");
}

#[test]
fn concurrent_submits_over_different_files_do_not_both_succeed() {
    let mut cluster = Cluster::new("inputs-race");
    cluster.worker(&[]);
    cluster.worker(&[]);
    cluster.reducer(&[]);
    let (first, data, _) = text_input(&cluster, "first.txt", 43, 1200);
    let second = cluster.write_file("second.txt", &same_shape(&data));
    let files = [first.as_str(), second.as_str()];
    for round in 0..3 {
        let job = format!("race-{round}");
        let submit = |file: &str| {
            cluster.producer(
                &[
                    "submit",
                    "--job",
                    "wordcount",
                    "--wait",
                    "-q",
                    "--chunk-size",
                    "1KiB",
                    "--job-id",
                    &job,
                    file,
                ],
                &[],
                None,
            )
        };
        let outputs = std::thread::scope(|scope| {
            let racers: Vec<_> = files
                .iter()
                .map(|file| scope.spawn(move || submit(file)))
                .collect();
            racers
                .into_iter()
                .map(|racer| racer.join().unwrap())
                .collect::<Vec<_>>()
        });
        let winners: Vec<usize> = (0..2).filter(|&i| outputs[i].status.success()).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one submit succeeds: {:?}",
            outputs.iter().map(stderr_of).collect::<Vec<_>>()
        );
        let (winner, loser) = (winners[0], 1 - winners[0]);
        let stderr = stderr_of(&outputs[loser]);
        assert!(
            stderr.contains("already exists with other inputs")
                && stderr.contains(&format!("input `{}` added", files[loser]))
                && stderr.contains(&format!("input `{}` removed", files[winner])),
            "round {round}: {stderr}"
        );
        let expected = local(
            &cluster,
            &["--job", "wordcount", "--chunk-size", "1KiB", files[winner]],
            &[],
        );
        assert_eq!(
            cluster.result(&job),
            expected,
            "round {round}: the result is the winner's file's"
        );
    }
}

#[test]
fn an_input_appended_to_while_read_fails_the_job() {
    let mut cluster = Cluster::new("inputs-append");
    let (file, _, _) = text_input(&cluster, "big.txt", 47, 8000);
    let (producer, job) = cluster.stalled_submit(&[&file], &[], LONG);
    let mut appender = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(&mut appender, &generate_text(48, 100)).unwrap();
    cluster.worker(&[]);
    cluster.reducer(&[]);
    assert_failed_naming(&cluster, producer, &job, &file, "size went from");
}

#[test]
fn an_input_truncated_while_read_fails_the_job() {
    let mut cluster = Cluster::new("inputs-truncate");
    let (file, data, _) = text_input(&cluster, "big.txt", 49, 8000);
    let (producer, job) = cluster.stalled_submit(&[&file], &[], LONG);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(data.len() as u64 / 2)
        .unwrap();
    cluster.worker(&[]);
    cluster.reducer(&[]);
    assert_failed_naming(&cluster, producer, &job, &file, "size went from");
}

#[test]
fn an_input_deleted_while_read_says_how_much_was_published() {
    let mut cluster = Cluster::new("inputs-delete");
    let (file, _, _) = text_input(&cluster, "big.txt", 51, 8000);
    let (producer, job) = cluster.stalled_submit(&[&file], &[], LONG);
    std::fs::remove_file(&file).unwrap();
    cluster.worker(&[]);
    cluster.reducer(&[]);
    assert_failed_naming(
        &cluster,
        producer,
        &job,
        &file,
        "was deleted while being read",
    );
}

#[test]
fn a_later_input_deleted_mid_submit_says_how_much_was_published() {
    let mut cluster = Cluster::new("inputs-delete-next");
    let (first, _, _) = text_input(&cluster, "first.txt", 53, 4000);
    let (second, _, _) = text_input(&cluster, "second.txt", 54, 100);
    let (producer, job) = cluster.stalled_submit(&[&first, &second], &[], LONG);
    std::fs::remove_file(&second).unwrap();
    cluster.worker(&[]);
    cluster.reducer(&[]);
    assert_failed_naming(
        &cluster,
        producer,
        &job,
        &second,
        "was deleted before it was read",
    );
}
