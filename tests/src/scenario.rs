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
use crate::reference::{generate_text, reference_wordcount};

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
