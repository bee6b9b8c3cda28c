//! `scripts/stack.sh`: the docker-compose topology as local processes (3 workers,
//! 2 reducers, RabbitMQ and Redis as they are) drives a job to the right result, and goes
//! down cleanly.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chunkflow_tests::binaries::*;
use chunkflow_tests::cluster::*;
use chunkflow_tests::monitor::*;
use chunkflow_tests::scenario::*;
use chunkflow_tests::services::*;

fn stack(cluster: &Cluster, action: &str) -> std::process::Output {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    Command::new("bash")
        .arg(workspace.join("scripts/stack.sh"))
        .arg(action)
        .env("CHUNKFLOW_NAMESPACE", &cluster.namespace)
        .env("CHUNKFLOW_BIN_DIR", bin_dir())
        .env("STACK_DIR", stack_dir(cluster))
        .env("METRICS_PORT_BASE", "0")
        .env("CHUNKFLOW_HEARTBEAT_TTL", "2s")
        .env_remove("CHUNKFLOW_FAULT")
        .output()
        .expect("run scripts/stack.sh")
}

fn stack_dir(cluster: &Cluster) -> PathBuf {
    cluster.dir.join("stack")
}

/// Takes the stack down even when the test fails half-way.
struct StackGuard<'a>(&'a Cluster);

impl Drop for StackGuard<'_> {
    fn drop(&mut self) {
        if stack_dir(self.0).join("pids").exists() {
            let _ = stack(self.0, "down");
        }
    }
}

#[test]
fn local_stack_script_runs_a_job_and_goes_down_cleanly() {
    let cluster = Cluster::new("stack");
    let up = stack(&cluster, "up");
    let _guard = StackGuard(&cluster);
    assert!(
        up.status.success(),
        "stack.sh up: {}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    let workers = producer_json(&cluster, &["workers"]);
    let roles: Vec<&str> = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles.iter().filter(|r| **r == "worker").count(),
        3,
        "{workers}"
    );
    assert_eq!(
        roles.iter().filter(|r| **r == "reducer").count(),
        2,
        "{workers}"
    );
    let pids: BTreeSet<String> = std::fs::read_to_string(stack_dir(&cluster).join("pids"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    for worker in workers.as_array().unwrap() {
        assert!(
            pids.contains(&worker["pid"].to_string()),
            "{worker} started by the script"
        );
        let (status, _) = http_get(worker["metrics_addr"].as_str().unwrap(), "/readyz");
        assert_eq!(status, 200, "{worker} ready");
    }

    let (path, _, expected) = text_input(&cluster, "in.txt", 31, 4_000);
    let job = cluster.submit_wait(&["--chunk-size", "4KiB"], &[&path], &[]);
    assert_eq!(cluster.result(&job), expected);
    let queues = producer_json(&cluster, &["queues"]);
    assert_eq!(queues["queues"][0]["consumers"], 3, "{queues}");
    // Each reducer runs two consume loops by default (--concurrency 2).
    assert_eq!(queues["queues"][1]["consumers"], 4, "{queues}");

    let down = stack(&cluster, "down");
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(!stack_dir(&cluster).join("pids").exists());
    // Stopped gracefully: every heartbeat record is deleted at once.
    wait_for(
        "the stack to leave producer workers",
        Duration::from_secs(5),
        || {
            producer_json(&cluster, &["workers"])
                .as_array()
                .is_some_and(|w| w.is_empty())
                .then_some(())
        },
    );
}
