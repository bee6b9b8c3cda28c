//! Bad input: a clear error naming the cause, a non-zero exit, nothing lost or published.

use chunkflow_tests::cluster::*;
use chunkflow_tests::services::*;

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn missing_input_publishes_nothing() {
    let cluster = Cluster::new("missing");
    let good = cluster.write_file("good.txt", b"hello\n");
    let missing = cluster.dir.join("nope.txt").to_string_lossy().into_owned();
    let output = cluster.producer(
        &["submit", "--job", "wordcount", &good, &missing],
        &[],
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&missing) && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was published"), "{stderr}");
    assert!(output.stdout.is_empty(), "no job id printed");
    assert!(cluster.redis_keys().is_empty(), "no job stored");
}

#[test]
fn invalid_numbers_are_usage_errors() {
    let cluster = Cluster::new("usage");
    let file = cluster.write_file("a.txt", b"a\n");
    for (args, needle) in [
        (vec!["--partitions", "0"], "--partitions"),
        (vec!["--partitions", "1000000000"], "--partitions"),
        (vec!["--chunk-size", "0"], "--chunk-size"),
        (vec!["--chunk-size", "12XB"], "unit"),
        (vec!["--job-id", "a*{b}:.."], "job id"),
    ] {
        let mut full = vec!["submit", "--job", "wordcount"];
        full.extend(args.iter().copied());
        full.push(&file);
        let output = cluster.producer(&full, &[], None);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr_of(&output)
        );
        assert!(
            stderr_of(&output).contains(needle),
            "{args:?}: {}",
            stderr_of(&output)
        );
    }
    let output = cluster.producer(&["submit", "--job", "nosuchjob", &file], &[], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_of(&output).contains("unknown job kind `nosuchjob`"));
    assert!(cluster.redis_keys().is_empty(), "no job stored");
}

#[test]
fn line_longer_than_record_limit_names_file_and_offset() {
    let mut cluster = Cluster::new("longline");
    cluster.worker(&[]);
    cluster.reducer(&[]);
    let mut data = b"short line\n".to_vec();
    data.extend(std::iter::repeat_n(b'x', 300));
    data.push(b'\n');
    let file = cluster.write_file("long.txt", &data);
    let output = cluster.producer(
        &[
            "submit",
            "--job",
            "wordcount",
            "--wait",
            "--max-record-size",
            "100",
            "--chunk-size",
            "16",
            &file,
        ],
        &[],
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&file) && stderr.contains("byte offset 11"),
        "{stderr}"
    );
    let job = job_id_from(&output);
    let status = cluster.status(&job);
    assert_eq!(status["state"], "failed");
    assert!(status["reason"]
        .as_str()
        .unwrap()
        .contains("longer than the maximum record size"));
}

#[test]
fn help_explains_and_hides_passwords() {
    let cluster = Cluster::new("help");
    for binary in ["producer", "worker", "reducer"] {
        let output = cluster
            .command(binary)
            .arg("--help")
            .env("AMQP_URL", "amqp://user:s3cret-pw@127.0.0.1:5672/%2f")
            .env("REDIS_URL", "redis://:s3cret-pw@127.0.0.1:6379/0")
            .output()
            .unwrap();
        assert!(output.status.success());
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(
            help.contains("--amqp-url") && help.contains("--namespace"),
            "{help}"
        );
        assert!(
            !help.contains("s3cret-pw") && !help.contains("guest:guest"),
            "{help}"
        );
    }
}

#[test]
fn passwords_never_reach_logs_or_errors() {
    let mut cluster = Cluster::new("secrets");
    let secret = "s3cret-pw-9f8e";
    let bad_amqp = format!("amqp://guest:{secret}@127.0.0.1:1/%2f");
    let bad_redis = format!("redis://:{secret}@127.0.0.1:1/0");
    let worker = cluster.worker(&[("AMQP_URL", bad_amqp.as_str())]);
    let reducer = cluster.reducer(&[("REDIS_URL", bad_redis.as_str())]);
    // Waits on log text on purpose: what the logs say is the subject of this test, and
    // the reducer, cut off from Redis, writes no heartbeat record to find its metrics by.
    wait_for(
        "connection errors to be logged",
        std::time::Duration::from_secs(30),
        || {
            (cluster.log("worker", worker).contains("reconnecting")
                && cluster
                    .log("reducer", reducer)
                    .contains("Redis unavailable"))
            .then_some(())
        },
    );
    for (role, index) in [("worker", worker), ("reducer", reducer)] {
        cluster.service(index).signal("TERM");
        assert!(cluster
            .service(index)
            .wait_exit(std::time::Duration::from_secs(20))
            .success());
        let log = cluster.log(role, index);
        assert!(
            log.contains("127.0.0.1:1"),
            "the error names the endpoint: {log}"
        );
        assert!(!log.contains(secret), "{role} logged the password: {log}");
    }
    let file = cluster.write_file("a.txt", b"x\n");
    for env in [
        ("AMQP_URL", bad_amqp.as_str()),
        ("REDIS_URL", bad_redis.as_str()),
    ] {
        let output = cluster.producer(&["submit", "--job", "wordcount", &file], &[env], None);
        assert!(!output.status.success());
        let stderr = stderr_of(&output);
        assert!(stderr.contains("cannot"), "{stderr}");
        assert!(!stderr.contains(secret), "{stderr}");
    }
}
