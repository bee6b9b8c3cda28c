//! Ending a chaos or fault scenario the one way: wait for the job, compare its result with
//! the sequential reference, and report one summary line (printed, and appended to
//! `target/chaos-report.txt`, which `scripts/test.sh` prints at the end). The line's format
//! is read by people comparing runs: keep it stable. Reporting never decides a test: the
//! assertions do.

use std::fs;
use std::io::Write;
use std::process::Child;
use std::time::Duration;

use crate::binaries::workspace;
use crate::cluster::Cluster;
use crate::monitor::METRICS_ON_FREE_PORT;
use crate::reference::{generate_text, reference_wordcount};
use crate::services::{redis, wait_for};

/// Writes `lines` lines of text and returns (path, bytes, reference result).
pub fn text_input(
    cluster: &Cluster,
    name: &str,
    seed: u64,
    lines: usize,
) -> (String, Vec<u8>, String) {
    let data = generate_text(seed, lines);
    let path = cluster.write_file(name, &data);
    let expected = reference_wordcount(&[&data]);
    (path, data, expected)
}

impl Cluster {
    /// Starts `submit --wait` of a wordcount over `inputs` that blocks mid-publish: no
    /// workers yet, 1 KiB chunks and a 4 KiB queue allowance, so the producer waits for
    /// room with the job stored but not sealed. Returns the producer and the job id.
    pub fn stalled_submit(
        &self,
        inputs: &[&str],
        extra: &[&str],
        within: Duration,
    ) -> (Child, String) {
        let mut args = vec!["--chunk-size", "1KiB", "--max-queued-bytes", "4KiB", "-q"];
        args.extend_from_slice(extra);
        let (producer, job) = self.submit_background(&args, inputs);
        let map_queue = self.topology().map_queue();
        wait_for("the producer to block on a full queue", within, || {
            (self.queue_depth(&map_queue) >= 4).then_some(())
        });
        assert!(
            self.status(&job)["chunks_total"].is_null(),
            "not sealed yet"
        );
        (producer, job)
    }
}

/// A one-partition job whose only reducer was frozen (SIGSTOP) mid-reduce, holding the
/// partition's lease: the setup of the lease scenarios.
pub struct FrozenReducer {
    /// The frozen reducer's index in the cluster.
    pub index: usize,
    /// Its metrics address, read before the freeze (a frozen process renews no heartbeat).
    pub metrics: String,
    /// The `submit --wait` process of the job.
    pub producer: Child,
    pub job: String,
    /// The Redis key of the partition's lease.
    pub lease_key: String,
}

/// The fencing token in a lease key, if the lease is held.
pub fn lease_token(key: &str) -> Option<u64> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut redis())
        .ok()
        .flatten()
}

impl Cluster {
    /// Starts a slow reducer (4 s per partition, 1 s lease, metrics on a free port, plus
    /// `env`), submits a one-partition wordcount of `file`, waits until the reducer holds
    /// the partition's first lease, and freezes it.
    pub fn freeze_reducer_holding_the_lease(
        &mut self,
        file: &str,
        env: &[(&str, &str)],
        within: Duration,
    ) -> FrozenReducer {
        let mut reducer_env = vec![
            ("CHUNKFLOW_FAULT", "reduce-delay-ms=4000"),
            ("CHUNKFLOW_LEASE", "1s"),
            METRICS_ON_FREE_PORT,
        ];
        reducer_env.extend_from_slice(env);
        let index = self.reducer(&reducer_env);
        let metrics = self.metrics_addr(index);
        let (producer, job) = self.submit_background(&["--partitions", "1", "-q"], &[file]);
        let lease_key = chunkflow::store::keys::Keys::new(&self.namespace)
            .job(&job)
            .partition(0, 1)
            .lease();
        wait_for("the first reducer to hold the lease", within, || {
            (lease_token(&lease_key) == Some(1)).then_some(())
        });
        self.service(index).signal("STOP");
        FrozenReducer {
            index,
            metrics,
            producer,
            job,
            lease_key,
        }
    }
}

/// The one-line summary of a scenario: chunks, deliveries, redeliveries, duplicates
/// detected and dropped, result identical. `identical` is `None` for scenarios whose
/// expected outcome is a failed job.
fn report(cluster: &Cluster, scenario: &str, job: &str, identical: Option<bool>) {
    let status = cluster.status(job);
    let stat = |name: &str| status["deliveries"][name].as_u64().unwrap_or(0);
    let line = format!(
        "scenario {scenario}: state {}, chunks {}, deliveries {}, redeliveries {}, duplicates dropped {}, {}",
        status["state"].as_str().unwrap_or("?"),
        status["chunks_total"],
        stat("deliveries"),
        stat("redeliveries"),
        stat("duplicates"),
        match identical {
            Some(true) => "result identical: yes",
            Some(false) => "result identical: NO",
            None => "no result (the job failed or was cancelled, as the scenario expects)",
        },
    );
    println!("{line}");
    let path = workspace().join("target").join("chaos-report.txt");
    if let Ok(mut file) = fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(file, "{line}");
    }
}

impl Cluster {
    /// Waits (at most `timeout`) for the scenario's background `submit --wait`, asserts it
    /// succeeded, then [`Cluster::verify_scenario`].
    pub fn finish_scenario(
        &self,
        producer: Child,
        timeout: Duration,
        scenario: &str,
        job: &str,
        expected: &str,
    ) {
        let (status, stderr) = self.finish_submit(producer, timeout);
        assert!(
            status.success(),
            "{scenario}: the job failed ({status}): {stderr}"
        );
        self.verify_scenario(scenario, job, expected);
    }

    /// Compares the ended job's result with the sequential reference `expected`, reports
    /// the scenario's line, and asserts the result is identical.
    pub fn verify_scenario(&self, scenario: &str, job: &str, expected: &str) {
        let identical = self.result(job) == expected;
        report(self, scenario, job, Some(identical));
        assert!(
            identical,
            "{scenario}: result differs from the sequential reference"
        );
    }

    /// Reports a scenario whose expected outcome is a failed or cancelled job (the test
    /// asserts the failure itself).
    pub fn report_failed_scenario(&self, scenario: &str, job: &str) {
        report(self, scenario, job, None);
    }
}
