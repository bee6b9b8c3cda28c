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

/// Every form of URL a credential can hide in — parseable or mistyped, in the user info or
/// in a query parameter, for RabbitMQ, Redis and the management API — given by environment
/// to every command and service: the sentinel password appears in no output.
#[test]
fn no_url_form_leaks_its_password() {
    let mut cluster = Cluster::new("sentinel");
    let secret = "Sx7-sentinel-pw";
    let amqp_forms = [
        format!("amqp//u:{secret}@h"),
        format!("amqp:/u:{secret}@127.0.0.1:5691/%2f"),
        format!("amqp://u:{secret}@127.0.0.1:1/%2f"),
        format!("u:{secret}@127.0.0.1:5672"),
    ];
    let redis_forms = [
        format!("redis//:{secret}@h"),
        format!("redis+unix:///nonexistent/chunkflow.sock?pass={secret}"),
        format!("redis://:{secret}@127.0.0.1:1/0"),
        format!("redis://127.0.0.1:1/0?password={secret}"),
    ];
    let management_forms = [
        format!("http//u:{secret}@h"),
        format!("http://u:{secret}@127.0.0.1:1"),
        format!("https://u:{secret}@127.0.0.1:1/"),
    ];
    let file = cluster.write_file("a.txt", b"x\n");
    let check = |what: &str, output: &std::process::Output| {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !text.contains(secret),
            "{what} printed the password: {text}"
        );
        text
    };
    for url in &amqp_forms {
        let env = [("AMQP_URL", url.as_str())];
        let output = cluster.producer(&["submit", "--job", "wordcount", &file], &env, None);
        assert!(!output.status.success(), "{url}");
        let text = check(&format!("submit with AMQP_URL={url}"), &output);
        assert!(
            text.contains("RabbitMQ"),
            "the error names the broker: {text}"
        );
        check(
            &format!("queues with AMQP_URL={url}"),
            &cluster.producer(&["queues"], &env, None),
        );
    }
    for url in &redis_forms {
        let env = [("REDIS_URL", url.as_str())];
        for args in [
            vec!["submit", "--job", "wordcount", file.as_str()],
            vec!["jobs"],
            vec!["workers"],
            vec!["status", "some-job"],
        ] {
            let output = cluster.producer(&args, &env, None);
            assert!(!output.status.success(), "{args:?} with {url}");
            let text = check(&format!("{args:?} with REDIS_URL={url}"), &output);
            assert!(text.contains("Redis"), "the error names Redis: {text}");
        }
    }
    for url in &management_forms {
        let output = cluster.producer(&["queues"], &[("CHUNKFLOW_MANAGEMENT_URL", url)], None);
        let text = check(
            &format!("queues with CHUNKFLOW_MANAGEMENT_URL={url}"),
            &output,
        );
        assert!(text.contains("unacked counts unavailable"), "{text}");
    }
    // The services: each logs its connection trouble (or exits on a URL it cannot use)
    // without the password.
    let mut started = Vec::new();
    for url in &amqp_forms {
        started.push(("worker", cluster.worker(&[("AMQP_URL", url.as_str())])));
    }
    for url in &redis_forms {
        started.push(("reducer", cluster.reducer(&[("REDIS_URL", url.as_str())])));
    }
    for (role, index) in started {
        wait_for(
            "the service to log its connection trouble",
            std::time::Duration::from_secs(30),
            || {
                let log = cluster.log(role, index);
                (log.contains("RabbitMQ") || log.contains("Redis")).then_some(())
            },
        );
        if cluster.service(index).is_running() {
            cluster.service(index).signal("TERM");
        }
        cluster
            .service(index)
            .wait_exit(std::time::Duration::from_secs(20));
        let log = cluster.log(role, index);
        assert!(!log.contains(secret), "{role} logged the password: {log}");
    }
}
