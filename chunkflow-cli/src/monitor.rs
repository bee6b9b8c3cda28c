//! What a running worker or reducer shows the outside: `/metrics` (Prometheus text),
//! `/healthz` (the process is alive), `/readyz` (connected to the broker and to Redis),
//! and its heartbeat record in Redis (see [`chunkflow::store::presence`]).
//!
//! The service hands its monitor its [`ServiceHealth`]; this module only reads it (and
//! notes when Redis answered a heartbeat). The process's Prometheus recorder is installed
//! here, once: the library's metric hooks write to it. The HTTP endpoints and the heartbeat run
//! as their own tasks and never touch a delivery, so they cannot slow or break the pipeline:
//! if Redis or the port is unavailable, the service still works, and says so in its log.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chunkflow::config::ConnectionConfig;
use chunkflow::health::ServiceHealth;
use chunkflow::job::now_ms;
use chunkflow::store::keys::Keys;
use chunkflow::store::presence::{self, ServiceRecord};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use crate::args::MonitorArgs;
use crate::http;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and registers every metric of
/// `role` at zero.
pub fn install_metrics(role: &'static str) {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_duration_seconds".into()),
                chunkflow::metrics::BUCKETS,
            )
            .ok()?;
        match builder.install_recorder() {
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::warn!(error = %error, "metrics recorder not installed");
                None
            }
        }
    });
    chunkflow::metrics::register(role);
}

/// The Prometheus text exposition of every metric (empty if no recorder is installed).
pub fn render_metrics() -> String {
    match HANDLE.get() {
        Some(Some(handle)) => {
            handle.run_upkeep();
            handle.render()
        }
        _ => String::new(),
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
    /// at once) and the endpoints (letting requests in hand finish). Call after the service
    /// stopped.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.heartbeat).await;
        if let Some(server) = self.server {
            // `http::serve` bounds its own wait for requests in hand; this bounds the rest.
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
    }
}

/// Starts the endpoints (if `--metrics-addr` is set) and the heartbeat of a `role` process.
/// Fails only if the metrics address cannot be bound (a misconfiguration to report).
pub async fn start(
    args: &MonitorArgs,
    connection: &ConnectionConfig,
    role: &'static str,
    health: Arc<ServiceHealth>,
) -> std::io::Result<Monitor> {
    install_metrics(role);
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
                endpoints(ttl, health.clone()),
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
    let heartbeat = tokio::spawn(run_heartbeat(
        connection.clone(),
        record,
        ttl,
        health,
        stop.clone(),
    ));
    Ok(Monitor {
        stop,
        heartbeat,
        server,
        metrics_addr,
    })
}

/// `/metrics`, `/healthz` and `/readyz` over the service's health; readiness needs a
/// Redis answer within `ttl`.
fn endpoints(ttl: Duration, health: Arc<ServiceHealth>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|| async {
                http::body(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    render_metrics(),
                )
            }),
        )
        .route(
            "/healthz",
            get(|| async { http::text(StatusCode::OK, "ok\n") }),
        )
        .route("/readyz", get(readyz))
        .fallback(http::not_found)
        .with_state((ttl, health))
}

async fn readyz(State((ttl, health)): State<(Duration, Arc<ServiceHealth>)>) -> Response {
    match health.readiness(ttl) {
        Ok(()) => http::text(StatusCode::OK, "ready\n"),
        Err(why) => http::text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn run_heartbeat(
    connection: ConnectionConfig,
    mut record: ServiceRecord,
    ttl: Duration,
    health: Arc<ServiceHealth>,
    stop: CancellationToken,
) {
    let keys = Keys::new(&connection.namespace);
    let timeout = (ttl / 3).max(Duration::from_millis(100));
    let mut conn = None;
    let mut warned = false;
    loop {
        if conn.is_none() {
            match chunkflow::store::connect_dedicated(&connection, timeout).await {
                Ok(opened) => conn = Some(opened),
                Err(error) if !warned => {
                    tracing::warn!(error = %error, "heartbeat: Redis unavailable; will retry");
                    warned = true;
                }
                Err(_) => {}
            }
        }
        if let Some(open) = conn.as_mut() {
            record.current_task = health.current_task();
            record.tasks_done = health.tasks_done();
            record.last_seen_ms = now_ms();
            match presence::beat(open, &keys, &record, ttl).await {
                Ok(()) => {
                    health.redis_answered();
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
        if !chunkflow::broker::consumer::pause(ttl / 3, &stop).await {
            break;
        }
    }
    if let Some(open) = conn.as_mut() {
        if let Err(error) = presence::remove(open, &keys, &record.id).await {
            tracing::debug!(error = %error, "could not delete the heartbeat record");
        }
    }
}
