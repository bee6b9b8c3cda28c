//! What the processes report about themselves: their monitor endpoints (health, Prometheus
//! metrics), the heartbeat records `producer workers` lists, and the producer's `--json`
//! views. Tests wait on these signals rather than on log wording, which may change freely.
//! Reading a signal must never change the process it reads.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

use crate::cluster::Cluster;
use crate::services::wait_for;

/// Serves a worker's or reducer's monitor endpoints on a free port; the process announces
/// the address in its heartbeat record ([`Cluster::metrics_addr`] reads it).
pub const METRICS_ON_FREE_PORT: (&str, &str) = ("CHUNKFLOW_METRICS_ADDR", "127.0.0.1:0");

/// Environment of a monitored worker or reducer: metrics on a free port, a short TTL.
pub const MONITORED: &[(&str, &str)] =
    &[METRICS_ON_FREE_PORT, ("CHUNKFLOW_HEARTBEAT_TTL", "1500ms")];

/// Deadline of one HTTP exchange with a local monitor endpoint.
const HTTP_DEADLINE: Duration = Duration::from_secs(10);

/// `GET http://addr/path` with a plain TCP stream: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let socket = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("{addr} is not a socket address"));
    let mut stream = TcpStream::connect_timeout(&socket, HTTP_DEADLINE)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(HTTP_DEADLINE))
        .and_then(|()| stream.set_write_timeout(Some(HTTP_DEADLINE)))
        .expect("set socket timeouts");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("send GET {path} to {addr}: {e}"));
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .unwrap_or_else(|e| panic!("read the answer to GET {path} from {addr}: {e}"));
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// The value of a Prometheus sample (`name{labels}` exactly as rendered), 0 if absent.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// The current value of `series` on the monitor endpoint at `addr`.
pub fn metric(addr: &str, series: &str) -> f64 {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "GET {addr}/metrics: {body}");
    sample(&body, series)
}

/// A series of `metric` labelled with `role` (and `outcome`, for failed tasks), as the
/// Prometheus exporter renders it.
pub fn series(metric: &str, role: &str, outcome: Option<&str>) -> String {
    match outcome {
        Some(outcome) => format!("{metric}{{role=\"{role}\",outcome=\"{outcome}\"}}"),
        None => format!("{metric}{{role=\"{role}\"}}"),
    }
}

/// `producer ARGS --json`, parsed.
pub fn producer_json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.push("--json");
    let output = cluster.producer(&full, &[], None);
    assert!(
        output.status.success(),
        "producer {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("producer {args:?} --json is not JSON ({e})"))
}

/// The pids `producer workers` lists.
pub fn live_pids(cluster: &Cluster) -> BTreeSet<u64> {
    producer_json(cluster, &["workers"])
        .as_array()
        .expect("workers --json is an array")
        .iter()
        .map(|w| w["pid"].as_u64().expect("pid"))
        .collect()
}

/// Waits until `producer workers` lists exactly `pids`; returns the records.
pub fn wait_for_live(cluster: &Cluster, pids: &BTreeSet<u64>, timeout: Duration) -> Vec<Value> {
    wait_for("the live processes to be listed", timeout, || {
        let records = producer_json(cluster, &["workers"]);
        let listed: BTreeSet<u64> = records
            .as_array()?
            .iter()
            .filter_map(|w| w["pid"].as_u64())
            .collect();
        (&listed == pids).then(|| records.as_array().cloned())?
    })
}

impl Cluster {
    /// The monitor address of a worker or reducer started with [`METRICS_ON_FREE_PORT`],
    /// from its heartbeat record (waiting for it to appear). Read it before a fault that
    /// stops Redis or freezes the process: scraping the address needs neither.
    pub fn metrics_addr(&self, index: usize) -> String {
        let pid = u64::from(self.pid(index));
        wait_for(
            &format!("process {pid} to announce its metrics address"),
            Duration::from_secs(60),
            || {
                producer_json(self, &["workers"])
                    .as_array()?
                    .iter()
                    .find(|record| record["pid"].as_u64() == Some(pid))?["metrics_addr"]
                    .as_str()
                    .filter(|addr| !addr.is_empty())
                    .map(str::to_string)
            },
        )
    }
}
