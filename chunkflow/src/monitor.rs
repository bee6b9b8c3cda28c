//! What a running worker or reducer shows the outside: `/metrics` (Prometheus text),
//! `/healthz` (the process is alive), `/readyz` (connected to the broker and to Redis),
//! and its heartbeat record in Redis (see [`crate::presence`]).
//!
//! The consume loop reports into one process-wide [`ServiceState`] through the hooks in
//! [`crate::metrics`]; this module only reads it. The HTTP endpoints and the heartbeat run
//! as their own tasks and never touch a delivery, so they cannot slow or break the pipeline:
//! if Redis or the port is unavailable, the service still works, and says so in its log.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{parse_duration, ConnectionArgs};
use crate::http::{self, Request, Response};
use crate::keys::Keys;
use crate::presence::{self, ServiceRecord};
use crate::store::now_ms;

/// Flags of the monitoring endpoints and the heartbeat (flattened into worker and reducer).
#[derive(Debug, Clone, clap::Args)]
pub struct MonitorArgs {
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address, e.g.
    /// 0.0.0.0:9090 (port 0 picks a free port; the heartbeat record shows which). Not
    /// served when unset.
    #[arg(long, env = "CHUNKFLOW_METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    /// Time to live of this process's heartbeat record in Redis (renewed every third of
    /// it): a process that dies vanishes from `producer workers` after this long.
    #[arg(long, env = "CHUNKFLOW_HEARTBEAT_TTL", default_value = "15s", value_parser = parse_duration)]
    pub heartbeat_ttl: Duration,
}

/// What the consume loop reports about itself.
pub struct ServiceState {
    broker_connected: AtomicBool,
    /// When the last heartbeat reached Redis (ms since the epoch; 0: never).
    redis_ok_ms: AtomicU64,
    tasks_done: AtomicU64,
    current_task: Mutex<Option<String>>,
}

static STATE: ServiceState = ServiceState {
    broker_connected: AtomicBool::new(false),
    redis_ok_ms: AtomicU64::new(0),
    tasks_done: AtomicU64::new(0),
    current_task: Mutex::new(None),
};

/// The process's state.
pub fn state() -> &'static ServiceState {
    &STATE
}

impl ServiceState {
    pub fn set_current_task(&self, task: Option<&str>) {
        if let Ok(mut current) = self.current_task.lock() {
            *current = task.map(str::to_string);
        }
    }

    pub fn current_task(&self) -> Option<String> {
        self.current_task.lock().ok().and_then(|c| c.clone())
    }

    pub fn task_done(&self) {
        self.tasks_done.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tasks_done(&self) -> u64 {
        self.tasks_done.load(Ordering::Relaxed)
    }

    pub fn set_broker_connected(&self, connected: bool) {
        self.broker_connected.store(connected, Ordering::Relaxed);
    }

    pub fn broker_connected(&self) -> bool {
        self.broker_connected.load(Ordering::Relaxed)
    }

    fn redis_ok(&self, within: Duration) -> bool {
        let last = self.redis_ok_ms.load(Ordering::Relaxed);
        last > 0 && now_ms().saturating_sub(last) <= within.as_millis() as u64
    }

    /// `Ok` when ready, otherwise why not.
    pub fn readiness(&self, redis_within: Duration) -> Result<(), String> {
        let mut missing = Vec::new();
        if !self.broker_connected() {
            missing.push("not consuming from RabbitMQ");
        }
        if !self.redis_ok(redis_within) {
            missing.push("Redis did not answer the last heartbeat");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join("; "))
        }
    }
}

/// The running endpoints and heartbeat of one process.
pub struct Monitor {
    stop: CancellationToken,
    heartbeat: JoinHandle<()>,
    server: Option<JoinHandle<()>>,
    /// The address `/metrics` is served on, once bound.
    pub metrics_addr: Option<String>,
}

impl Monitor {
    /// Stops the heartbeat (deleting the record, so the process leaves `producer workers`
    /// at once) and the endpoints. Call after the service stopped.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.heartbeat).await;
        if let Some(server) = self.server {
            server.abort();
        }
    }
}

/// Starts the endpoints (if `--metrics-addr` is set) and the heartbeat of a `role` process.
/// Fails only if the metrics address cannot be bound (a misconfiguration to report).
pub async fn start(
    args: &MonitorArgs,
    connection: &ConnectionArgs,
    role: &'static str,
) -> std::io::Result<Monitor> {
    crate::metrics::install(role);
    let ttl = args.heartbeat_ttl.max(Duration::from_millis(300));
    let stop = CancellationToken::new();
    let (server, metrics_addr) = match &args.metrics_addr {
        Some(addr) => {
            let listener = http::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot serve metrics on {addr}: {e}"))
            })?;
            let bound = http::local_addr(&listener);
            tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
            let server = tokio::spawn(http::serve(
                listener,
                move |request| endpoint(request, ttl),
                stop.clone(),
            ));
            (Some(server), Some(bound))
        }
        None => (None, None),
    };
    let host = presence::host_name();
    let record = ServiceRecord {
        id: presence::service_id(role, &host),
        role: role.to_string(),
        host,
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_ms: now_ms(),
        current_task: None,
        tasks_done: 0,
        last_seen_ms: 0,
        metrics_addr: metrics_addr.clone(),
    };
    let heartbeat = tokio::spawn(run_heartbeat(connection.clone(), record, ttl, stop.clone()));
    Ok(Monitor {
        stop,
        heartbeat,
        server,
        metrics_addr,
    })
}

async fn endpoint(request: Request, ttl: Duration) -> Response {
    match request.path.as_str() {
        "/metrics" => Response::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(),
        ),
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => match state().readiness(ttl) {
            Ok(()) => Response::text(200, "ready\n"),
            Err(why) => Response::text(503, format!("not ready: {why}\n")),
        },
        _ => Response::not_found(),
    }
}

async fn run_heartbeat(
    connection: ConnectionArgs,
    mut record: ServiceRecord,
    ttl: Duration,
    stop: CancellationToken,
) {
    let keys = Keys::new(&connection.namespace);
    let timeout = (ttl / 3).max(Duration::from_millis(100));
    let mut conn = None;
    let mut warned = false;
    loop {
        if conn.is_none() {
            match presence::connect(&connection.redis_url, timeout).await {
                Ok(opened) => conn = Some(opened),
                Err(error) if !warned => {
                    tracing::warn!(error = %error, "heartbeat: Redis unavailable; will retry");
                    warned = true;
                }
                Err(_) => {}
            }
        }
        if let Some(open) = conn.as_mut() {
            record.current_task = state().current_task();
            record.tasks_done = state().tasks_done();
            record.last_seen_ms = now_ms();
            match presence::beat(open, &keys, &record, ttl).await {
                Ok(()) => {
                    state().redis_ok_ms.store(now_ms(), Ordering::Relaxed);
                    warned = false;
                }
                Err(error) => {
                    if !warned {
                        tracing::warn!(error = %error, "heartbeat failed; will retry");
                        warned = true;
                    }
                    conn = None;
                }
            }
        }
        if !crate::service::pause(ttl / 3, &stop).await {
            break;
        }
    }
    if let Some(open) = conn.as_mut() {
        if let Err(error) = presence::remove(open, &keys, &record.id).await {
            tracing::debug!(error = %error, "could not delete the heartbeat record");
        }
    }
}
