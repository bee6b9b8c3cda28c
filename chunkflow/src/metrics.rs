//! Metrics of workers and reducers: their names, and the hooks the consume loop, the worker
//! and the reducer call. Nothing else names a metric. The hooks write to the `metrics`
//! facade with plain labels and import nothing of the code that calls them; which exporter
//! serves them (Prometheus, in the command-line crate) is the application's choice.
//!
//! Labels are bounded: `role` (worker, reducer), on failures `outcome` (dead_letter,
//! retry), on outages `dependency` (redis). Never a job id, chunk or partition: those belong in logs and `producer status`,
//! and as labels they would grow the exporter without bound.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `chunkflow_deliveries_received_total{role}` | counter | deliveries taken from the queue |
//! | `chunkflow_tasks_redelivered_total{role}` | counter | of those, flagged redelivered by the broker |
//! | `chunkflow_tasks_succeeded_total{role}` | counter | deliveries acked (committed, or dropped as done) |
//! | `chunkflow_tasks_failed_total{role,outcome}` | counter | deliveries dead-lettered or requeued |
//! | `chunkflow_duplicates_dropped_total{role}` | counter | chunks / partitions already committed by someone else |
//! | `chunkflow_bytes_mapped_total` | counter | chunk bytes run through map |
//! | `chunkflow_records_total` | counter | records (lines) read by map |
//! | `chunkflow_map_duration_seconds` | histogram | map + combine of one chunk |
//! | `chunkflow_reduce_duration_seconds` | histogram | merge of one partition |
//! | `chunkflow_commit_duration_seconds{role}` | histogram | the Redis commit of one chunk or partition |
//! | `chunkflow_tasks_in_flight{role}` | gauge | deliveries being handled now |
//! | `chunkflow_reconnects_total{role}` | counter | broker sessions (or connection attempts) that failed and were retried |
//! | `chunkflow_broker_connected{role}` | gauge | 1 while consuming |
//! | `chunkflow_outages_total{role,dependency}` | counter | outages of a dependency (`redis`) waited out by a consume loop |

use std::time::Duration;

use metrics::{counter, gauge, histogram};

pub const DELIVERIES: &str = "chunkflow_deliveries_received_total";
pub const REDELIVERED: &str = "chunkflow_tasks_redelivered_total";
pub const SUCCEEDED: &str = "chunkflow_tasks_succeeded_total";
pub const FAILED: &str = "chunkflow_tasks_failed_total";
pub const DUPLICATES: &str = "chunkflow_duplicates_dropped_total";
pub const BYTES_MAPPED: &str = "chunkflow_bytes_mapped_total";
pub const RECORDS: &str = "chunkflow_records_total";
pub const MAP_DURATION: &str = "chunkflow_map_duration_seconds";
pub const REDUCE_DURATION: &str = "chunkflow_reduce_duration_seconds";
pub const COMMIT_DURATION: &str = "chunkflow_commit_duration_seconds";
pub const IN_FLIGHT: &str = "chunkflow_tasks_in_flight";
pub const RECONNECTS: &str = "chunkflow_reconnects_total";
pub const BROKER_CONNECTED: &str = "chunkflow_broker_connected";
pub const OUTAGES: &str = "chunkflow_outages_total";

/// Histogram buckets, in seconds: 1 ms to 2 min (for whichever exporter is installed).
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Describes every metric and registers those of `role` at zero, so a scrape shows the
/// full set before the first task. Call once the process's recorder is installed.
pub fn register(role: &'static str) {
    describe();
    for name in [DELIVERIES, REDELIVERED, SUCCEEDED, DUPLICATES, RECONNECTS] {
        counter!(name, "role" => role).absolute(0);
    }
    for outcome in [Settlement::DeadLetter, Settlement::Retry] {
        counter!(FAILED, "role" => role, "outcome" => outcome.label()).absolute(0);
    }
    counter!(OUTAGES, "role" => role, "dependency" => "redis").absolute(0);
    gauge!(IN_FLIGHT, "role" => role).set(0.0);
    gauge!(BROKER_CONNECTED, "role" => role).set(0.0);
    if role == "worker" {
        counter!(BYTES_MAPPED).absolute(0);
        counter!(RECORDS).absolute(0);
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(DELIVERIES, "Deliveries taken from the task queue");
    describe_counter!(REDELIVERED, "Deliveries the broker flagged as redelivered");
    describe_counter!(
        SUCCEEDED,
        "Deliveries acked: committed, or dropped as already done"
    );
    describe_counter!(
        FAILED,
        "Deliveries dead-lettered (outcome=dead_letter) or requeued (outcome=retry)"
    );
    describe_counter!(
        DUPLICATES,
        "Tasks already committed by another delivery, dropped"
    );
    describe_counter!(BYTES_MAPPED, Unit::Bytes, "Chunk bytes run through map");
    describe_counter!(RECORDS, "Records (lines) read by map");
    describe_histogram!(MAP_DURATION, Unit::Seconds, "Map and combine of one chunk");
    describe_histogram!(REDUCE_DURATION, Unit::Seconds, "Merge of one partition");
    describe_histogram!(
        COMMIT_DURATION,
        Unit::Seconds,
        "Redis commit of one chunk or partition"
    );
    describe_gauge!(IN_FLIGHT, "Deliveries being handled now");
    describe_counter!(
        RECONNECTS,
        "Broker sessions (or connection attempts) that failed and were retried"
    );
    describe_gauge!(BROKER_CONNECTED, "1 while consuming from the broker");
    describe_counter!(
        OUTAGES,
        "Outages of a dependency (Redis) during which a consume loop stopped taking tasks"
    );
}

/// Held while a delivery is handled: counts it in flight.
pub struct InFlight {
    role: &'static str,
}

/// A delivery arrived.
pub fn task_started(role: &'static str, redelivered: bool) -> InFlight {
    counter!(DELIVERIES, "role" => role).increment(1);
    if redelivered {
        counter!(REDELIVERED, "role" => role).increment(1);
    }
    gauge!(IN_FLIGHT, "role" => role).increment(1.0);
    InFlight { role }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!(IN_FLIGHT, "role" => self.role).decrement(1.0);
    }
}

/// How a delivery was settled, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    Ack,
    DeadLetter,
    Retry,
}

impl Settlement {
    fn label(self) -> &'static str {
        match self {
            Settlement::Ack => "ack",
            Settlement::DeadLetter => "dead_letter",
            Settlement::Retry => "retry",
        }
    }
}

/// A delivery was settled.
pub fn task_settled(role: &'static str, settlement: Settlement) {
    match settlement {
        Settlement::Ack => counter!(SUCCEEDED, "role" => role).increment(1),
        failed => counter!(FAILED, "role" => role, "outcome" => failed.label()).increment(1),
    }
}

/// A task turned out to be done already (first commit won elsewhere).
pub fn duplicate(role: &'static str) {
    counter!(DUPLICATES, "role" => role).increment(1);
}

/// Map and combine of one chunk finished.
pub fn chunk_mapped(elapsed: Duration, bytes: usize, records: u64) {
    histogram!(MAP_DURATION).record(elapsed.as_secs_f64());
    counter!(BYTES_MAPPED).increment(bytes as u64);
    counter!(RECORDS).increment(records);
}

/// Merge of one partition finished.
pub fn partition_reduced(elapsed: Duration) {
    histogram!(REDUCE_DURATION).record(elapsed.as_secs_f64());
}

/// A commit script returned (whatever its outcome).
pub fn committed(role: &'static str, elapsed: Duration) {
    histogram!(COMMIT_DURATION, "role" => role).record(elapsed.as_secs_f64());
}

/// The broker session started consuming (`true`) or ended (`false`).
pub fn broker_connected(role: &'static str, connected: bool) {
    gauge!(BROKER_CONNECTED, "role" => role).set(if connected { 1.0 } else { 0.0 });
}

/// A broker session failed and is being re-established.
pub fn reconnect(role: &'static str) {
    counter!(RECONNECTS, "role" => role).increment(1);
}

/// A consume loop stopped taking tasks to wait out an outage of `dependency` (`redis`).
pub fn outage(role: &'static str, dependency: &'static str) {
    counter!(OUTAGES, "role" => role, "dependency" => dependency).increment(1);
}
