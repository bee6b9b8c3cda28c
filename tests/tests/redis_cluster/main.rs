//! The same binaries on a Redis Cluster: jobs through the real producer, workers and
//! reducers with `REDIS_URL` set to the seed nodes give the local runner's result byte for
//! byte; one seed is enough in auto mode; a mode that contradicts the server stops the
//! process with exit code 2; `--redis-min-replicas` waits for replicas, refuses to go on
//! without them, and keeps every acked commit through a failover.
//!
//! The clusters are started outside the tests (`scripts/redis-cluster.sh up`, which
//! `scripts/test.sh` runs); without them every test here fails saying so. The queues are on
//! the shared RabbitMQ, one namespace per test as everywhere. Tests on the replicated
//! cluster take [`disturbing`]: one of them kills a master.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use chunkflow::config::{ConnectionConfig, RedisMode};
use chunkflow::store::keys::Keys;
use chunkflow::store::{Store, StoreError};
use chunkflow_tests::cluster::*;
use chunkflow_tests::monitor::*;
use chunkflow_tests::redis_cluster::*;
use chunkflow_tests::reference::*;
use chunkflow_tests::scenario::text_input;
use chunkflow_tests::services::{block_on, wait_for};

const LONG: Duration = Duration::from_secs(180);

/// A pipeline on `redis`: two workers and a reducer, each with `env`.
fn pipeline(test: &str, redis_url: &str, env: &[(&str, &str)]) -> Cluster {
    let mut cluster = Cluster::new(test);
    cluster.use_redis(redis_url);
    cluster.worker(env);
    cluster.worker(env);
    cluster.reducer(env);
    cluster
}

fn groupby_input(cluster: &Cluster) -> String {
    let mut csv = String::from("country,city,amount\n");
    for i in 0..400 {
        let country = ["France", "Korea, Republic of", "Peru", "Chad"][i % 4];
        let city = ["North", "South", "East"][i % 3];
        csv.push_str(&format!(
            "\"{country}\",{city},{}.{:02}\n",
            i * 7 % 100,
            i % 100
        ));
    }
    cluster.write_file("sales.csv", csv.as_bytes())
}

#[test]
fn wordcount_grep_and_groupby_on_a_cluster_match_the_local_runner() {
    let _shared = sharing();
    let redis = RedisCluster::three_masters();
    assert_eq!(redis.masters().len(), 3, "three masters serve the slots");
    let cluster = pipeline("rcjobs", redis.seeds(), &[]);
    let (a, data_a, _) = text_input(&cluster, "a.txt", 31, 600);
    let (b, data_b, _) = text_input(&cluster, "b.txt", 32, 250);
    let expected = reference_wordcount(&[&data_a, &data_b]);
    let mut jobs = Vec::new();
    for (chunk_size, partitions) in [("1KiB", "3"), ("64KiB", "5")] {
        let args = [
            "--job",
            "wordcount",
            "--chunk-size",
            chunk_size,
            "--partitions",
            partitions,
            &a,
            &b,
        ];
        let (job, result) = distributed(&cluster, &args, &[]);
        assert_eq!(result, expected, "wordcount, chunk size {chunk_size}");
        assert_eq!(local(&cluster, &args, &[]), expected, "local wordcount");
        jobs.push(job);
    }

    // grep prints matching lines: text that is valid UTF-8, so the result compares as text.
    let lines: String = (0..500)
        .map(|i| {
            format!(
                "{} order {i} for customer {}\n",
                ["The", "the", "A"][i % 3],
                i % 7
            )
        })
        .collect();
    let g = cluster.write_file("g.txt", lines.as_bytes());
    let grep = [
        "--job",
        "grep",
        "--pattern",
        "^The|customer 3",
        "--chunk-size",
        "2KiB",
        "--partitions",
        "4",
        &g,
    ];
    let (job, result) = distributed(&cluster, &grep, &[]);
    assert!(result.lines().count() > 10, "a non-trivial grep: {result}");
    assert_eq!(result, local(&cluster, &grep, &[]), "grep");
    jobs.push(job);

    let csv = groupby_input(&cluster);
    let groupby = [
        "--job",
        "groupby",
        "--format",
        "csv",
        "--key",
        "country,city",
        "--agg",
        "count",
        "--agg",
        "sum:amount",
        "--agg",
        "avg:amount",
        "--chunk-size",
        "512",
        "--partitions",
        "3",
        &csv,
    ];
    let (job, result) = distributed(&cluster, &groupby, &[]);
    assert!(result.contains("Korea, Republic of"), "{result}");
    assert_eq!(result, local(&cluster, &groupby, &[]), "groupby");
    jobs.push(job);

    // The views read across slots: every job is listed, and so is every live process.
    let listed: BTreeSet<String> = producer_json(&cluster, &["jobs"])
        .as_array()
        .expect("jobs --json is an array")
        .iter()
        .map(|job| job["job"].as_str().expect("a job id").to_string())
        .collect();
    assert_eq!(listed, jobs.iter().cloned().collect::<BTreeSet<_>>());
    let pids: BTreeSet<u64> = (0..3).map(|i| u64::from(cluster.pid(i))).collect();
    wait_for_live(&cluster, &pids, Duration::from_secs(30));

    // The store lists the namespace's keys on every master; each is where its slot is.
    let keys = cluster.redis_keys();
    let by_master = redis.keys_by_master(&cluster.namespace);
    let mut union: Vec<String> = by_master.iter().flat_map(|(_, k)| k.clone()).collect();
    union.sort();
    assert_eq!(union, keys, "every master's keys, and only those");
    let names = Keys::new(&cluster.namespace);
    for job in &jobs {
        let meta = names.job(job).meta();
        let port = redis.master_of(&meta);
        let (_, on_master) = by_master.iter().find(|(p, _)| *p == port).unwrap();
        assert!(on_master.contains(&meta), "{meta} is on its master {port}");
    }
}

#[test]
fn auto_mode_finds_the_cluster_from_one_seed() {
    let _shared = sharing();
    let redis = RedisCluster::three_masters();
    let seed = redis.one_seed(redis.ports()[1]);
    let cluster = pipeline("rconeseed", &seed, &[]);
    let (a, data, _) = text_input(&cluster, "a.txt", 41, 300);
    let args = ["--job", "wordcount", "--chunk-size", "1KiB", &a];
    let (job, result) = distributed(&cluster, &args, &[]);
    assert_eq!(result, reference_wordcount(&[&data]));
    // Saying `cluster` explicitly reads the same job.
    let status = cluster.producer(&["--redis-mode", "cluster", "status", &job], &[], None);
    assert!(status.status.success(), "{status:?}");
}

/// Runs `producer ARGS` with `env`, expecting it to fail with exit code 2; its stderr.
fn refused(cluster: &Cluster, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = cluster.producer(args, env, None);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "producer {args:?}: {stderr}");
    stderr
}

#[test]
fn a_mode_that_contradicts_the_server_stops_with_exit_code_2() {
    let _shared = sharing();
    let redis = RedisCluster::three_masters();
    let seed = redis.one_seed(redis.ports()[0]);
    let mut cluster = Cluster::new("rcmode");
    cluster.use_redis(&seed);

    let stderr = refused(&cluster, &["--redis-mode", "standalone", "jobs"], &[]);
    assert!(
        stderr.contains("Redis Cluster node") && stderr.contains("--redis-mode cluster"),
        "{stderr}"
    );
    // The environment twin, and a worker: it stops at once, saying why, exit code 2.
    let worker = cluster.worker(&[("CHUNKFLOW_REDIS_MODE", "standalone")]);
    let status = cluster.service(worker).wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(2), "{}", cluster.log("worker", worker));
    assert!(cluster.log("worker", worker).contains("Redis Cluster node"));

    // Several URLs are seeds of a cluster: not for one server. Passwords stay hidden.
    let secret_seeds = "redis://:sekrit1@127.0.0.1:7001,redis://:sekrit2@127.0.0.1:7002";
    let stderr = refused(
        &cluster,
        &["jobs"],
        &[
            ("REDIS_URL", secret_seeds),
            ("CHUNKFLOW_REDIS_MODE", "standalone"),
        ],
    );
    assert!(stderr.contains("seed nodes"), "{stderr}");
    assert!(!stderr.contains("sekrit"), "{stderr}");

    // A cluster client on one server (the shared Redis, only asked `INFO cluster`).
    let stderr = refused(
        &cluster,
        &["--redis-mode", "cluster", "jobs"],
        &[("REDIS_URL", chunkflow_tests::services::REDIS_URL)],
    );
    assert!(stderr.contains("not a cluster node"), "{stderr}");
    let stderr = refused(&cluster, &["--redis-mode", "sentinel", "jobs"], &[]);
    assert!(stderr.contains("auto, standalone or cluster"), "{stderr}");
}

#[test]
fn the_store_runs_its_scripts_on_a_cluster_even_after_a_script_flush() {
    let _shared = sharing();
    let redis = RedisCluster::three_masters();
    let cluster = pipeline("rcscripts", redis.seeds(), &[]);
    let (a, data, _) = text_input(&cluster, "a.txt", 51, 300);
    let expected = reference_wordcount(&[&data]);
    let args = [
        "--job",
        "wordcount",
        "--chunk-size",
        "1KiB",
        "--partitions",
        "3",
        &a,
    ];
    let (_, result) = distributed(&cluster, &args, &[]);
    assert_eq!(result, expected);
    // Every node forgets every script: the long-running workers and reducer get NOSCRIPT
    // and load their scripts again.
    for port in redis.ports() {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut redis.node(*port))
            .unwrap();
    }
    let (_, result) = distributed(&cluster, &args, &[]);
    assert_eq!(result, expected, "after SCRIPT FLUSH");

    // The store itself, on the cluster: its masters, a script, the keys on every master.
    let config = redis.config(&cluster.namespace);
    let masters = block_on(async { Store::connect(&config).await.unwrap().masters() });
    assert_eq!(masters, 3);
    let keys = namespace_keys(redis.seeds(), &cluster.namespace);
    let on_masters: usize = redis
        .keys_by_master(&cluster.namespace)
        .iter()
        .map(|(_, keys)| keys.len())
        .sum();
    assert_eq!(keys.len(), on_masters);
    assert!(keys.contains(&Keys::new(&cluster.namespace).jobs_index()));
}

#[test]
fn min_replicas_waits_for_replicas_and_refuses_to_go_on_without_them() {
    let _alone = disturbing();
    let redis = RedisCluster::replicated();
    redis.wait_whole();
    let one = [("CHUNKFLOW_REDIS_MIN_REPLICAS", "1")];
    let cluster = pipeline("rcreplicas", redis.seeds(), &one);
    let (a, data, _) = text_input(&cluster, "a.txt", 61, 400);
    let args = [
        "--job",
        "wordcount",
        "--chunk-size",
        "1KiB",
        "--partitions",
        "3",
        &a,
    ];
    let (job, result) = distributed(&cluster, &args, &one);
    assert_eq!(result, reference_wordcount(&[&data]));
    // The job's end was written on its master's replica too.
    let meta = Keys::new(&cluster.namespace).job(&job).meta();
    let master = redis.master_of(&meta);
    let replica = redis.replicas_of(master)[0];
    let mut conn = redis.node(replica);
    let _: () = redis::cmd("READONLY").query(&mut conn).unwrap();
    wait_for(
        "the replica to hold the job's end",
        Duration::from_secs(10),
        || {
            let state: Option<String> = redis::cmd("HGET")
                .arg(&meta)
                .arg("state")
                .query(&mut conn)
                .unwrap();
            (state.as_deref() == Some("succeeded")).then_some(())
        },
    );

    // Two replicas per master are asked for but there is one: the producer's seal never
    // counts as done, and it gives up after --outage-timeout, saying why.
    let output = cluster.producer(
        &[
            "--redis-timeout",
            "1s",
            "--outage-timeout",
            "4s",
            "submit",
            "--wait",
            "-q",
            "--job",
            "wordcount",
            &a,
        ],
        &[("CHUNKFLOW_REDIS_MIN_REPLICAS", "2")],
        None,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("--redis-min-replicas"), "{stderr}");

    // The store says the same, as an outage (the task would be given back, not acked).
    let mut config: ConnectionConfig = redis.config(&cluster.namespace);
    config.redis_min_replicas = 2;
    config.redis_mode = RedisMode::Cluster;
    config.redis_timeout = Duration::from_secs(1);
    let error = block_on(async {
        let store = Store::connect(&config).await.unwrap();
        let spec = store.load_spec(&job).await.unwrap().unwrap();
        store
            .end_job(&spec, chunkflow::job::JobState::Failed, "late")
            .await
            .unwrap_err()
    });
    assert!(
        matches!(
            error,
            StoreError::NotReplicated {
                wanted: 2,
                acknowledged: 1
            }
        ),
        "{error}"
    );
    assert!(error.is_outage());
    redis.wait_whole();
}

/// A job on the replicated cluster with `--redis-min-replicas 1`; once it has made
/// progress, the master `victim` picks (from the namespace and the job id) is SIGKILLed, its
/// replica takes over, and the old master comes back as a replica. Every commit acked
/// before was on that replica (WAIT 1); until the old master is back, the new one has no
/// replica, so no commit of its slots is acked; then the job ends, exact.
fn min_replicas_failover(test: &str, seed: u64, victim: impl Fn(&RedisCluster, &str, &str) -> u16) {
    let _alone = disturbing();
    let redis = RedisCluster::replicated();
    redis.wait_whole();
    let env = [
        ("CHUNKFLOW_REDIS_MIN_REPLICAS", "1"),
        ("CHUNKFLOW_FAULT", "map-delay-ms=30"),
    ];
    let cluster = pipeline(test, redis.seeds(), &env);
    let (a, _, expected) = text_input(&cluster, "a.txt", seed, 3000);
    let (producer, job) = cluster.submit_background(
        &["--redis-min-replicas", "1", "--chunk-size", "1KiB", "-q"],
        &[&a],
    );
    wait_for("the job to make progress", LONG, || {
        (cluster.committed(&job) >= 5).then_some(())
    });
    let master = victim(&redis, &cluster.namespace, &job);
    let killed = redis.kill_for_a_while(master);
    wait_for(
        "a replica to take over the killed master's slots",
        LONG,
        || redis.masters().iter().all(|m| *m != master).then_some(()),
    );
    killed.restore();
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert!(status.success(), "the job survives the failover: {stderr}");
    assert_eq!(cluster.result(&job), expected, "and its result is exact");
    redis.wait_whole();
}

#[test]
fn with_min_replicas_a_failover_of_the_jobs_own_master_loses_no_acked_commit() {
    min_replicas_failover("rcfailover", 71, |redis, namespace, job| {
        redis.master_of(&Keys::new(namespace).job(job).meta())
    });
}

/// The masters holding partition data of `job` (default 8 partitions), with how many
/// partitions each holds.
fn partitions_by_master(redis: &RedisCluster, namespace: &str, job: &str) -> Vec<(u16, u32)> {
    let names = Keys::new(namespace).job(job);
    let mut counts: Vec<(u16, u32)> = redis.masters().into_iter().map(|m| (m, 0)).collect();
    for partition in 0..8 {
        let master = redis.master_of(&names.partition(partition, 8).record());
        if let Some(entry) = counts.iter_mut().find(|(m, _)| *m == master) {
            entry.1 += 1;
        }
    }
    counts
}

#[test]
fn a_jobs_data_spreads_over_every_master_and_nothing_is_left_after_its_ttl() {
    let _shared = sharing();
    let redis = RedisCluster::three_masters();
    let mut cluster = Cluster::new("rcspread");
    cluster.use_redis(redis.seeds());
    cluster.worker(&[]);
    cluster.worker(&[]);
    let (a, _, expected) = text_input(&cluster, "a.txt", 81, 2000);
    // No reducer yet: the job stops at `reducing`, every chunk's partials in Redis.
    let (producer, job) =
        cluster.submit_background(&["--chunk-size", "2KiB", "--ttl", "3s", "-q"], &[&a]);
    wait_for("the map phase to complete", LONG, || {
        (cluster.status(&job)["state"] == "reducing").then_some(())
    });
    assert_eq!(
        cluster.status(&job)["partitions_total"],
        8,
        "the default: 8 on 3 masters"
    );
    for (master, keys) in redis.keys_by_master(&cluster.namespace) {
        let data: Vec<&String> = keys
            .iter()
            .filter(|key| key.contains(&format!("{{{job}.")) && key.ends_with(":map"))
            .collect();
        assert!(
            !data.is_empty(),
            "master {master} holds some of the job's partition data: {keys:?}"
        );
    }
    cluster.reducer(&[]);
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert!(status.success(), "{stderr}");
    assert_eq!(cluster.result(&job), expected);
    // Once its time to live passes, nothing of the job is left on any master.
    wait_for("the job's keys to expire on every master", LONG, || {
        let left: Vec<String> = redis
            .keys_by_master(&cluster.namespace)
            .into_iter()
            .flat_map(|(_, keys)| keys)
            .filter(|key| key.contains(&format!("{{{job}")))
            .collect();
        left.is_empty().then_some(())
    });
}

#[test]
fn with_min_replicas_the_master_holding_most_partitions_dies_and_the_result_is_exact() {
    min_replicas_failover("rcmost", 72, |redis, namespace, job| {
        let (master, held) = partitions_by_master(redis, namespace, job)
            .into_iter()
            .max_by_key(|(_, held)| *held)
            .unwrap();
        assert!(held >= 3, "8 partitions over 3 masters: {held} on {master}");
        master
    });
}

#[test]
fn without_replicas_a_master_restarted_empty_fails_the_job_naming_lost_state() {
    let _alone = disturbing();
    let redis = RedisCluster::three_masters();
    redis.wait_whole();
    let cluster = pipeline(
        "rcempty",
        redis.seeds(),
        &[("CHUNKFLOW_FAULT", "map-delay-ms=30")],
    );
    let (a, _, _) = text_input(&cluster, "a.txt", 73, 3000);
    let (producer, job) = cluster.submit_background(&["--chunk-size", "1KiB", "-q"], &[&a]);
    wait_for("the job to make progress", LONG, || {
        (cluster.committed(&job) >= 5).then_some(())
    });
    // A master holding partitions but not the job's own record: the job's record survives
    // and can say what was lost.
    let meta_master = redis.master_of(&Keys::new(&cluster.namespace).job(&job).meta());
    let (master, _) = partitions_by_master(&redis, &cluster.namespace, &job)
        .into_iter()
        .filter(|(m, held)| *m != meta_master && *held > 0)
        .max_by_key(|(_, held)| *held)
        .unwrap();
    redis.kill_for_a_while(master).restore();
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert!(!status.success(), "a job that lost state never succeeds");
    assert!(
        stderr.contains("Redis lost part of this job's state") && stderr.contains("partition"),
        "{stderr}"
    );
    assert_eq!(cluster.status(&job)["state"], "failed");
    redis.wait_whole();
}

#[test]
fn on_both_clusters_with_workers_killed_at_random_the_result_is_exact() {
    let _shared = sharing();
    let redis = RedisCluster::replicated();
    let rabbit = chunkflow_tests::rabbitmq_cluster::RabbitCluster::from_env();
    let mut cluster = Cluster::new("bothclusters");
    cluster.use_redis(redis.seeds());
    cluster.use_amqp(&rabbit.url_list());
    let env = [
        ("CHUNKFLOW_REDIS_MIN_REPLICAS", "1"),
        ("CHUNKFLOW_FAULT", "map-delay-ms=20"),
    ];
    let mut workers: Vec<usize> = (0..3).map(|_| cluster.worker(&env)).collect();
    cluster.reducer(&env);
    let (a, _, expected) = text_input(&cluster, "a.txt", 91, 3000);
    let (producer, job) = cluster.submit_background(
        &["--redis-min-replicas", "1", "--chunk-size", "1KiB", "-q"],
        &[&a],
    );
    // Kill a random worker each time the job has made some progress, and start another.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut kills = 0;
    let mut last = 0;
    while kills < 4 {
        let committed = wait_for("the job to make progress", LONG, || {
            let committed = cluster.committed(&job);
            (committed >= last + 40 || cluster.status(&job)["state"] != "running")
                .then_some(committed)
        });
        if cluster.status(&job)["state"] != "running" {
            break;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let victim = (seed % workers.len() as u64) as usize;
        cluster.service(workers[victim]).kill_hard();
        workers[victim] = cluster.worker(&env);
        kills += 1;
        last = committed;
    }
    assert!(kills >= 2, "workers were killed mid-job ({kills})");
    let (status, stderr) = cluster.finish_submit(producer, LONG);
    assert!(status.success(), "{stderr}");
    assert_eq!(cluster.result(&job), expected, "exact after {kills} kills");
}
