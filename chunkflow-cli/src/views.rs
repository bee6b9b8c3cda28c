//! Read-only views of a deployment for people and scripts: the job list, a job's detailed
//! status (failures, throughput, time left, per-partition progress), the live workers and
//! reducers, and the queues (ready, unacked, consumers). Used by `producer jobs`,
//! `status`, `workers`, `queues` and the dashboard.
//!
//! Nothing here writes job state, and nothing here reads job state from Redis itself: the
//! `Store` does (`status`, `jobs`, `failures`, `partition_progress`); this module renders.
//! Queue depths come from AMQP passive declares (ready messages and consumers, always
//! available) and, when it answers, the RabbitMQ management API (unacknowledged messages,
//! which AMQP cannot tell); when it does not, the unacked column is empty and the reason is
//! reported, never a made-up zero.

use std::time::Duration;

use url::Url;

use serde::Serialize;
use serde_json::{json, Value};

use crate::http::{error_chain, HttpClient, HttpError, HttpUrl};
use chunkflow::broker::topology::{self, BrokerNodes, Topology};
use chunkflow::config::{redact_url, split_url_list, ConnectionConfig};
use chunkflow::job::{now_ms, JobState, JobStatus};
use chunkflow::size::human_bytes;
use chunkflow::store::presence::ServiceRecord;
pub use chunkflow::store::{Failure, PartitionProgress};
use chunkflow::store::{RedisConnection, StoreError};

/// Overall progress in [0, 1]: chunks committed and partitions reduced over their totals;
/// `None` while the total number of chunks is not known yet (still publishing).
pub fn progress(status: &JobStatus) -> Option<f64> {
    if status.state == JobState::Succeeded {
        return Some(1.0);
    }
    let total = status.total_chunks? + u64::from(status.spec.partitions);
    if total == 0 {
        return Some(1.0);
    }
    let done = status.chunks_committed + status.partitions_reduced;
    Some((done as f64 / total as f64).min(1.0))
}

/// Seconds from the job's creation to its end (or to `now_ms`).
pub fn elapsed_seconds(status: &JobStatus, now_ms: u64) -> f64 {
    let end = status.finished_ms.unwrap_or(now_ms);
    end.saturating_sub(status.created_ms) as f64 / 1000.0
}

/// Input bytes committed per second since the job was created.
pub fn throughput(status: &JobStatus, now_ms: u64) -> f64 {
    let bytes = status.counters.get("bytes_read").copied().unwrap_or(0);
    bytes as f64 / elapsed_seconds(status, now_ms).max(1e-3)
}

/// Seconds left at the pace so far; `None` once ended or before any progress.
pub fn eta_seconds(status: &JobStatus, now_ms: u64) -> Option<f64> {
    if status.state.is_final() {
        return None;
    }
    let done = progress(status)?;
    if done <= 0.0 {
        return None;
    }
    Some(elapsed_seconds(status, now_ms) * (1.0 - done) / done)
}

/// `1.5s`, `2m05s`, `3h04m`.
pub fn human_duration(seconds: f64) -> String {
    let seconds = seconds.max(0.0);
    if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else if seconds < 3600.0 {
        format!("{}m{:02}s", (seconds / 60.0) as u64, seconds as u64 % 60)
    } else {
        format!(
            "{}h{:02}m",
            (seconds / 3600.0) as u64,
            (seconds as u64 % 3600) / 60
        )
    }
}

/// The status as a JSON document (stable field names, documented in the README).
pub fn basic_status_json(status: &JobStatus) -> serde_json::Value {
    json!({
        "job": status.spec.id,
        "kind": status.spec.kind,
        "state": status.state,
        "chunks_committed": status.chunks_committed,
        "chunks_total": status.total_chunks,
        "partitions_reduced": status.partitions_reduced,
        "partitions_total": status.spec.partitions,
        "reason": status.reason,
        "counters": status.counters,
        "deliveries": status.stats,
        "created_ms": status.created_ms,
        "finished_ms": status.finished_ms,
    })
}

/// The status for people.
pub fn basic_status_text(status: &JobStatus) -> String {
    let mut text = format!(
        "job:        {}\nkind:       {}\nstate:      {}\n",
        status.spec.id, status.spec.kind, status.state
    );
    let total = status.total_chunks.map_or_else(
        || "? (producer still publishing)".to_string(),
        |t| t.to_string(),
    );
    text.push_str(&format!(
        "chunks:     {}/{} committed\npartitions: {}/{} reduced\n",
        status.chunks_committed, total, status.partitions_reduced, status.spec.partitions
    ));
    for (name, value) in &status.counters {
        text.push_str(&format!(
            "{:<11} {value}\n",
            format!("{}:", name.replace('_', " "))
        ));
    }
    if !status.stats.is_empty() {
        let stats: Vec<String> = status
            .stats
            .iter()
            .map(|(name, value)| format!("{value} {name}"))
            .collect();
        text.push_str(&format!("deliveries: {}\n", stats.join(", ")));
    }
    if let Some(reason) = &status.reason {
        text.push_str(&format!("reason:     {reason}\n"));
    }
    text
}

/// The job's inputs as `status --json` shows them: `[{"path", "size"}]` in the order they
/// are read (`size` null for standard input), or null when the spec has none recorded.
pub fn inputs_json(status: &JobStatus) -> Value {
    match &status.spec.inputs {
        None => Value::Null,
        Some(inputs) => inputs
            .iter()
            .map(|input| json!({ "path": input.path, "size": input.size }))
            .collect(),
    }
}

/// Inputs listed one per line by `status`; more are summarised in one line.
const INPUTS_LISTED: usize = 20;

/// The job's inputs for people: their number and total size, then each path and size.
pub fn inputs_text(status: &JobStatus) -> String {
    let Some(inputs) = &status.spec.inputs else {
        return "inputs:     not recorded\n".to_string();
    };
    let size = |size: Option<u64>| size.map_or_else(|| "?".to_string(), human_bytes);
    let total: u64 = inputs.iter().filter_map(|input| input.size).sum();
    let stdin = inputs.iter().any(|input| input.size.is_none());
    let mut text = format!(
        "inputs:     {} ({}{})\n",
        inputs.len(),
        human_bytes(total),
        if stdin { " + standard input" } else { "" }
    );
    for input in inputs.iter().take(INPUTS_LISTED) {
        let path = if input.is_stdin() {
            "- (standard input)"
        } else {
            &input.path
        };
        text.push_str(&format!("  {path}  {}\n", size(input.size)));
    }
    if inputs.len() > INPUTS_LISTED {
        text.push_str(&format!(
            "  ... and {} more (`status --json` lists them all)\n",
            inputs.len() - INPUTS_LISTED
        ));
    }
    text
}

/// `producer status --json`: the fields of [`basic_status_json`] plus
/// `progress`, `elapsed_seconds`, `throughput_bytes_per_second`, `eta_seconds`,
/// `failures` and `inputs`.
pub fn status_json(status: &JobStatus, failures: &[Failure], now_ms: u64) -> Value {
    let mut value = basic_status_json(status);
    if let Value::Object(map) = &mut value {
        map.insert("progress".into(), json!(progress(status)));
        map.insert(
            "elapsed_seconds".into(),
            json!(elapsed_seconds(status, now_ms)),
        );
        map.insert(
            "throughput_bytes_per_second".into(),
            json!(throughput(status, now_ms)),
        );
        map.insert("eta_seconds".into(), json!(eta_seconds(status, now_ms)));
        map.insert("failures".into(), json!(failures));
        map.insert("inputs".into(), inputs_json(status));
    }
    value
}

/// `producer status`: the basic status plus progress, throughput, time left, failures and
/// inputs.
pub fn status_text(status: &JobStatus, failures: &[Failure], now_ms: u64) -> String {
    let mut text = basic_status_text(status);
    if let Some(done) = progress(status) {
        text.push_str(&format!("progress:   {:.1}%\n", done * 100.0));
    }
    text.push_str(&format!(
        "elapsed:    {}\nthroughput: {}/s\n",
        human_duration(elapsed_seconds(status, now_ms)),
        human_bytes(throughput(status, now_ms) as u64)
    ));
    if let Some(eta) = eta_seconds(status, now_ms) {
        text.push_str(&format!("time left:  ~{}\n", human_duration(eta)));
    }
    if failures.is_empty() {
        text.push_str("failures:   none\n");
    } else {
        text.push_str(&format!("failures:   {} chunk(s)\n", failures.len()));
        for failure in failures {
            text.push_str(&format!("  chunk {}: {}\n", failure.chunk, failure.error));
        }
    }
    text.push_str(&inputs_text(status));
    text
}

/// One line of `producer jobs --json`.
pub fn job_summary_json(status: &JobStatus, now_ms: u64) -> Value {
    json!({
        "job": status.spec.id,
        "kind": status.spec.kind,
        "state": status.state,
        "progress": progress(status),
        "chunks_committed": status.chunks_committed,
        "chunks_total": status.total_chunks,
        "partitions_reduced": status.partitions_reduced,
        "partitions_total": status.spec.partitions,
        "created_ms": status.created_ms,
        "finished_ms": status.finished_ms,
        "age_seconds": now_ms.saturating_sub(status.created_ms) as f64 / 1000.0,
        "reason": status.reason,
    })
}

/// `producer jobs` as a table.
pub fn jobs_text(jobs: &[JobStatus], now_ms: u64) -> String {
    if jobs.is_empty() {
        return "no jobs\n".to_string();
    }
    let mut text = format!(
        "{:<44} {:<10} {:<10} {:>7} {:>15} {:>11} {:>8}\n",
        "JOB", "KIND", "STATE", "DONE", "CHUNKS", "PARTITIONS", "AGE"
    );
    for status in jobs {
        let done = progress(status).map_or_else(|| "?".into(), |p| format!("{:.0}%", p * 100.0));
        let total = status
            .total_chunks
            .map_or_else(|| "?".into(), |t| t.to_string());
        text.push_str(&format!(
            "{:<44} {:<10} {:<10} {:>7} {:>15} {:>11} {:>8}\n",
            status.spec.id,
            status.spec.kind,
            status.state.as_str(),
            done,
            format!("{}/{}", status.chunks_committed, total),
            format!("{}/{}", status.partitions_reduced, status.spec.partitions),
            human_duration(now_ms.saturating_sub(status.created_ms) as f64 / 1000.0),
        ));
    }
    text
}

/// `producer workers` as a table.
pub fn workers_text(records: &[ServiceRecord], now_ms: u64) -> String {
    if records.is_empty() {
        return "no live workers or reducers\n".to_string();
    }
    let mut text = format!(
        "{:<36} {:<8} {:<16} {:>7} {:<8} {:>9} {:>6} {:>6}  {}\n",
        "ID", "ROLE", "HOST", "PID", "VERSION", "UP", "DONE", "SEEN", "TASK"
    );
    for record in records {
        text.push_str(&format!(
            "{:<36} {:<8} {:<16} {:>7} {:<8} {:>9} {:>6} {:>6}  {}\n",
            record.id,
            record.role,
            record.host,
            record.pid,
            record.version,
            human_duration(now_ms.saturating_sub(record.started_ms) as f64 / 1000.0),
            record.tasks_done,
            human_duration(now_ms.saturating_sub(record.last_seen_ms) as f64 / 1000.0),
            record.current_task.as_deref().unwrap_or("-"),
        ));
    }
    text
}

/// One queue's depth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    pub queue: String,
    /// `false` if the queue does not exist (no process has declared it yet).
    pub exists: bool,
    pub ready: u64,
    /// Delivered but not yet acked; `None` when the management API did not answer.
    pub unacked: Option<u64>,
    pub consumers: u64,
}

/// The queues of a namespace, and why unacked counts are missing (if they are).
#[derive(Debug, Clone, Serialize)]
pub struct QueuesReport {
    pub queues: Vec<QueueStats>,
    /// The management API URL used (password redacted).
    pub management_url: String,
    /// Why there are no unacked counts; `None` when the management API answered.
    pub management_error: Option<String>,
}

/// Why queue depths could not be read.
#[derive(Debug, thiserror::Error)]
pub enum QueuesError {
    #[error(transparent)]
    Connect(#[from] topology::ConnectError),
    #[error("reading queue depths from RabbitMQ failed")]
    Broker(#[from] lapin::Error),
}

/// The management API URL for an AMQP URL: same host and credentials, port 15672; for
/// the nodes of a cluster, those of the first node (every node serves the whole cluster's
/// queues).
pub fn default_management_url(amqp_url: &str) -> Option<String> {
    let first = split_url_list(amqp_url).into_iter().next()?;
    let uri: lapin::uri::AMQPUri = first.parse().ok()?;
    let user = &uri.authority.userinfo;
    let host = &uri.authority.host;
    let mut url = Url::parse("http://127.0.0.1:15672").ok()?;
    if host.contains(':') {
        url.set_host(Some(&format!("[{host}]"))).ok()?;
    } else {
        url.set_host(Some(host)).ok()?;
    }
    // `set_username` and `set_password` percent-encode what needs it.
    url.set_username(&user.username).ok()?;
    url.set_password(Some(&user.password)).ok()?;
    Some(url.as_str().trim_end_matches('/').to_string())
}

/// The vhost of an AMQP URL (of the first node of a list: they all name the same one).
fn vhost(amqp_url: &str) -> String {
    split_url_list(amqp_url)
        .into_iter()
        .next()
        .and_then(|first| first.parse::<lapin::uri::AMQPUri>().ok())
        .map(|uri| uri.vhost)
        .unwrap_or_else(|| "/".to_string())
}

/// Ready and consumer counts of every queue of the namespace over `connection`.
pub async fn amqp_queue_counts(
    connection: &lapin::Connection,
    topology: &Topology,
) -> Result<Vec<QueueStats>, QueuesError> {
    let mut stats = Vec::new();
    for queue in topology.queues() {
        // A passive declare of a missing queue closes its channel: one channel each.
        let channel = connection.create_channel().await?;
        let counts = topology.queue_counts(&channel, &queue).await;
        let exists = counts.is_ok();
        let (ready, consumers) = counts.unwrap_or((0, 0));
        if exists {
            let _ = channel.close(200, "done".into()).await;
        }
        stats.push(QueueStats {
            queue,
            exists,
            ready: u64::from(ready),
            unacked: None,
            consumers: u64::from(consumers),
        });
    }
    Ok(stats)
}

/// Deadline of one management API request.
const MANAGEMENT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the management API gave no unacked counts. URLs are redacted.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{url} answered HTTP {status}{hint}")]
    Status {
        url: String,
        status: u16,
        hint: &'static str,
    },
    #[error("{url} sent invalid JSON")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The RabbitMQ management API (`http://` or `https://`, credentials in the URL): the
/// unacknowledged counts AMQP cannot tell. Build one and reuse it.
#[derive(Debug, Clone)]
pub struct ManagementApi {
    base: HttpUrl,
    client: HttpClient,
}

impl ManagementApi {
    /// The API at `url`, each request with a deadline of a few seconds.
    pub fn new(url: &str) -> Result<ManagementApi, HttpError> {
        Ok(ManagementApi {
            base: HttpUrl::parse(url)?,
            client: HttpClient::new(MANAGEMENT_TIMEOUT)?,
        })
    }

    /// The API's URL, password redacted.
    pub fn redacted_url(&self) -> String {
        self.base.redacted()
    }

    /// Adds unacked counts to `stats` (0 for a queue the API does not list).
    pub async fn add_unacked(
        &self,
        stats: &mut [QueueStats],
        amqp_url: &str,
    ) -> Result<(), ManagementError> {
        let vhost = vhost(amqp_url);
        let url = self.base.with_path(
            &["api", "queues", &vhost],
            Some("columns=name,messages_unacknowledged"),
        );
        let (status, body) = self.client.get(&url).await?;
        if status != reqwest::StatusCode::OK {
            return Err(ManagementError::Status {
                url: url.redacted(),
                status: status.as_u16(),
                hint: if status == reqwest::StatusCode::UNAUTHORIZED {
                    " (wrong credentials?)"
                } else {
                    ""
                },
            });
        }
        let queues: Vec<Value> =
            serde_json::from_slice(&body).map_err(|source| ManagementError::Json {
                url: url.redacted(),
                source,
            })?;
        for stat in stats.iter_mut() {
            let found = queues
                .iter()
                .find(|q| q["name"].as_str() == Some(stat.queue.as_str()));
            stat.unacked = Some(
                found
                    .and_then(|q| q["messages_unacknowledged"].as_u64())
                    .unwrap_or(0),
            );
        }
        Ok(())
    }
}

/// Queue depths of the namespace, with unacked counts when the management API answers.
pub async fn queues(
    connection: &ConnectionConfig,
    management: &str,
) -> Result<QueuesReport, QueuesError> {
    let nodes = BrokerNodes::for_connection(connection)?;
    let topology = Topology::for_connection(connection);
    let amqp = topology::connect(&nodes, "inspect", connection.broker_timeout).await?;
    let counted = amqp_queue_counts(&amqp.connection, &topology.at_node(&amqp)).await;
    let _ = amqp.connection.close(200, "done".into()).await;
    let mut stats = counted?;
    let (management_url, management_error) = match ManagementApi::new(management) {
        Ok(api) => {
            let added = api.add_unacked(&mut stats, &connection.amqp_url).await;
            (api.redacted_url(), added.err().map(|e| error_chain(&e)))
        }
        Err(error) => (redact_url(management), Some(error_chain(&error))),
    };
    Ok(QueuesReport {
        queues: stats,
        management_url,
        management_error,
    })
}

/// `producer queues` as a table, with a note when unacked counts are missing.
pub fn queues_text(report: &QueuesReport) -> String {
    let mut text = format!(
        "{:<40} {:>8} {:>8} {:>10}\n",
        "QUEUE", "READY", "UNACKED", "CONSUMERS"
    );
    for stat in &report.queues {
        if !stat.exists {
            text.push_str(&format!(
                "{:<40} (not declared yet: no worker, reducer or producer has run)\n",
                stat.queue
            ));
            continue;
        }
        text.push_str(&format!(
            "{:<40} {:>8} {:>8} {:>10}\n",
            stat.queue,
            stat.ready,
            stat.unacked.map_or_else(|| "?".into(), |n| n.to_string()),
            stat.consumers
        ));
    }
    if let Some(error) = &report.management_error {
        text.push_str(&format!(
            "unacked counts unavailable: the RabbitMQ management API did not answer ({error}); \
             enable it with `rabbitmq-plugins enable rabbitmq_management` or set --management-url\n"
        ));
    }
    text
}

/// A Redis connection for the views of heartbeat records (one server or a cluster).
pub async fn redis(connection: &ConnectionConfig) -> Result<RedisConnection, StoreError> {
    chunkflow::store::connect_dedicated(connection, connection.redis_timeout).await
}

/// The current time, for callers that render several views at one instant.
pub fn now() -> u64 {
    now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chunkflow::job::InputFingerprint;
    use chunkflow::jobs::JobSpec;
    use std::collections::BTreeMap;

    fn status(state: JobState, committed: u64, total: Option<u64>, reduced: u64) -> JobStatus {
        JobStatus {
            // Built from JSON so that fields added to the spec later keep this compiling.
            spec: serde_json::from_value::<JobSpec>(json!({
                "version": chunkflow::jobs::SPEC_VERSION, "id": "j", "kind": "wordcount",
                "partitions": 4, "chunk_size": 1, "max_record_size": 1,
                "created_ms": 1_000, "ttl_secs": 1,
            }))
            .expect("a valid spec"),
            state,
            total_chunks: total,
            chunks_committed: committed,
            partitions_reduced: reduced,
            reason: None,
            counters: [("bytes_read".to_string(), 4096)].into_iter().collect(),
            stats: BTreeMap::new(),
            created_ms: 1_000,
            finished_ms: None,
        }
    }

    #[test]
    fn progress_and_estimates() {
        let publishing = status(JobState::Running, 3, None, 0);
        assert_eq!(progress(&publishing), None);
        assert_eq!(eta_seconds(&publishing, 5_000), None);
        let half = status(JobState::Running, 6, Some(12), 0);
        assert_eq!(progress(&half), Some(6.0 / 16.0));
        // 6 of 16 steps in 4 s: 10 more steps at the same pace.
        let eta = eta_seconds(&half, 5_000).unwrap();
        assert!((eta - 4.0 * 10.0 / 6.0).abs() < 1e-9, "{eta}");
        assert!((throughput(&half, 5_000) - 1024.0).abs() < 1e-9);
        let done = status(JobState::Succeeded, 12, Some(12), 4);
        assert_eq!(progress(&done), Some(1.0));
        assert_eq!(eta_seconds(&done, 5_000), None);
        assert_eq!(human_duration(125.0), "2m05s");
    }

    #[test]
    fn status_shows_the_inputs() {
        let mut job = status(JobState::Running, 0, None, 0);
        assert_eq!(inputs_json(&job), Value::Null);
        assert!(status_text(&job, &[], 5_000).contains("inputs:     not recorded\n"));
        job.spec.inputs = Some(vec![
            InputFingerprint {
                path: "data/a.txt".into(),
                size: Some(2048),
                mtime_ns: Some(1),
            },
            InputFingerprint::stdin(),
        ]);
        assert_eq!(
            status_json(&job, &[], 5_000)["inputs"],
            json!([{"path": "data/a.txt", "size": 2048}, {"path": "-", "size": null}])
        );
        let text = status_text(&job, &[], 5_000);
        assert!(
            text.contains("inputs:     2 (2.0 KiB + standard input)\n")
                && text.contains("  data/a.txt  2.0 KiB\n")
                && text.contains("  - (standard input)  ?\n"),
            "{text}"
        );
        job.spec.inputs = Some(
            (0..25)
                .map(|i| InputFingerprint {
                    path: format!("f{i}"),
                    size: Some(1),
                    mtime_ns: None,
                })
                .collect(),
        );
        let text = inputs_text(&job);
        assert!(
            text.contains("  f19  ") && !text.contains("  f20  "),
            "{text}"
        );
        assert!(text.contains("... and 5 more"), "{text}");
    }

    #[test]
    fn management_url_follows_the_amqp_url() {
        assert_eq!(
            default_management_url("amqp://guest:guest@127.0.0.1:5672/%2f").as_deref(),
            Some("http://guest:guest@127.0.0.1:15672")
        );
        assert_eq!(vhost("amqp://u:p@h:5672/%2f"), "/");
        // A cluster's nodes: the first node's.
        assert_eq!(
            default_management_url("amqp://u:p@rmq1:5681/v1,amqp://u:p@rmq2:5682/v1").as_deref(),
            Some("http://u:p@rmq1:15672")
        );
        assert_eq!(
            vhost("amqp://u:p@rmq1:5681/v1, amqp://u:p@rmq2:5682/v1"),
            "v1"
        );
    }
}
