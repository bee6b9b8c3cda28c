//! `producer dashboard`: a small live web page over the same views as `producer jobs`,
//! `status`, `workers` and `queues` ([`crate::views`]).
//!
//! One page of plain HTML, CSS and JavaScript compiled into the binary (no build step),
//! polling two JSON endpoints:
//!
//! | path | what |
//! |---|---|
//! | `/` | the page |
//! | `/api/overview` | `{namespace, now_ms, jobs, workers, queues, errors}`: refreshed once a second by one background task, whatever the number of viewers |
//! | `/api/job?id=JOB` | the job's `status --json` document plus `partitions` (per-partition progress) |
//! | `/healthz` | `ok` |
//!
//! Read-only: the dashboard never changes a job. It keeps one broker connection (for queue
//! depths) and reconnects it when lost; a source that fails shows up in `errors` instead
//! of failing the page.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_redis::redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::http::{self, Request, Response};
use crate::views;
use chunkflow::broker::topology::{self, Topology};
use chunkflow::config::ConnectionConfig;
use chunkflow::store::keys::Keys;
use chunkflow::store::Store;

const PAGE: &str = include_str!("dashboard.html");

/// Dashboard settings.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    pub connection: ConnectionConfig,
    /// Address to serve on (`127.0.0.1:8080`; port 0 picks one).
    pub listen: String,
    /// RabbitMQ management API, for unacked counts.
    pub management_url: String,
    /// How often the overview is refreshed.
    pub refresh: Duration,
}

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] chunkflow::store::StoreError),
}

struct Shared {
    store: Store,
    redis: MultiplexedConnection,
    keys: Keys,
    overview: RwLock<Value>,
}

/// Serves the dashboard until `shutdown`; `on_listening` gets the bound address.
pub async fn run(
    config: DashboardConfig,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(&str),
) -> Result<(), DashboardError> {
    let connection = &config.connection;
    let store = Store::connect(
        &connection.redis_url,
        &connection.namespace,
        connection.redis_timeout,
    )
    .await?;
    let redis = views::redis(connection).await?;
    let listener = http::bind(&config.listen)
        .await
        .map_err(|source| DashboardError::Listen {
            addr: config.listen.clone(),
            source,
        })?;
    let shared = Arc::new(Shared {
        store,
        redis,
        keys: Keys::new(&connection.namespace),
        overview: RwLock::new(
            json!({"namespace": connection.namespace, "jobs": [], "workers": [], "queues": [], "errors": ["starting"]}),
        ),
    });
    let refresher = tokio::spawn(refresh_loop(
        shared.clone(),
        config.clone(),
        shutdown.clone(),
    ));
    on_listening(&http::local_addr(&listener));
    let handler_shared = shared.clone();
    http::serve(
        listener,
        move |request| route(handler_shared.clone(), request),
        shutdown,
    )
    .await;
    refresher.abort();
    Ok(())
}

async fn route(shared: Arc<Shared>, request: Request) -> Response {
    match request.path.as_str() {
        "/" | "/index.html" => Response::new(200, "text/html; charset=utf-8", PAGE),
        "/healthz" => Response::text(200, "ok\n"),
        "/api/overview" => {
            let overview = shared
                .overview
                .read()
                .map(|value| value.clone())
                .unwrap_or(Value::Null);
            Response::json(&overview)
        }
        "/api/job" => match request.param("id") {
            Some(job) if chunkflow::job::JobId::parse(job).is_ok() => job_detail(&shared, job)
                .await
                .unwrap_or_else(|error| Response::text(500, format!("{error}\n"))),
            _ => Response::text(400, "give a valid ?id=JOB\n"),
        },
        _ => Response::not_found(),
    }
}

async fn job_detail(shared: &Shared, job: &str) -> Result<Response, String> {
    let Some(status) = shared.store.status(job).await.map_err(|e| e.to_string())? else {
        return Ok(Response::text(404, format!("no job `{job}`\n")));
    };
    let failures = shared
        .store
        .failures(job)
        .await
        .map_err(|e| e.to_string())?;
    let partitions = shared
        .store
        .partition_progress(&status)
        .await
        .map_err(|e| e.to_string())?;
    let mut value = views::status_json(&status, &failures, views::now());
    value["partitions"] = json!(partitions);
    Ok(Response::json(&value))
}

async fn refresh_loop(shared: Arc<Shared>, config: DashboardConfig, shutdown: CancellationToken) {
    let topology = Topology::new(&config.connection.namespace);
    let mut amqp: Option<lapin::Connection> = None;
    loop {
        let now = views::now();
        let mut errors = Vec::new();
        let jobs = match shared.store.jobs().await {
            Ok(jobs) => jobs
                .iter()
                .map(|status| views::job_summary_json(status, now))
                .collect(),
            Err(error) => {
                errors.push(format!("jobs: {error}"));
                Vec::new()
            }
        };
        let mut redis = shared.redis.clone();
        let workers = match chunkflow::store::presence::list(&mut redis, &shared.keys).await {
            Ok(records) => records,
            Err(error) => {
                errors.push(format!("workers: {error}"));
                Vec::new()
            }
        };
        if amqp.as_ref().is_none_or(|c| !c.status().connected()) {
            match topology::connect(&config.connection.amqp_url, "dashboard").await {
                Ok(connection) => amqp = Some(connection),
                Err(error) => errors.push(format!("queues: {error}")),
            }
        }
        let mut queues = Vec::new();
        if let Some(connection) = &amqp {
            match views::amqp_queue_counts(connection, &topology).await {
                Ok(mut stats) => {
                    if let Err(error) = views::add_unacked(
                        &mut stats,
                        &config.management_url,
                        &config.connection.amqp_url,
                    )
                    .await
                    {
                        errors.push(format!("unacked counts unavailable: {error}"));
                    }
                    queues = stats;
                }
                Err(error) => {
                    errors.push(format!("queues: {error}"));
                    amqp = None;
                }
            }
        }
        let overview = json!({
            "namespace": config.connection.namespace,
            "now_ms": now,
            "jobs": jobs,
            "workers": workers,
            "queues": queues,
            "errors": errors,
        });
        if let Ok(mut slot) = shared.overview.write() {
            *slot = overview;
        }
        if !chunkflow::broker::consumer::pause(config.refresh, &shutdown).await {
            break;
        }
    }
    if let Some(connection) = amqp {
        let _ = connection.close(200, "dashboard stopped".into()).await;
    }
}
