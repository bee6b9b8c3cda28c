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

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::http;
use crate::views::{self, ManagementApi};
use chunkflow::broker::topology::{self, BrokerNodes, Topology};
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
    #[error("cannot listen on {addr}")]
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
    redis: chunkflow::store::RedisConnection,
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
    let store = Store::connect(connection).await?;
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
    let app = Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route(
            "/healthz",
            get(|| async { http::text(StatusCode::OK, "ok\n") }),
        )
        .route("/api/overview", get(overview))
        .route("/api/job", get(job))
        .fallback(http::not_found)
        .with_state(shared);
    http::serve(listener, app, shutdown.clone()).await;
    // The refresher stops on the same token; it closes its broker connection on the way.
    let _ = tokio::time::timeout(Duration::from_secs(5), refresher).await;
    Ok(())
}

async fn page() -> Response {
    http::body(StatusCode::OK, "text/html; charset=utf-8", PAGE)
}

async fn overview(State(shared): State<Arc<Shared>>) -> Response {
    let overview = shared
        .overview
        .read()
        .map(|value| value.clone())
        .unwrap_or(Value::Null);
    http::json(&overview)
}

/// The first value of query parameter `name`, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

async fn job(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    match query_param(query.as_deref(), "id") {
        Some(job) if chunkflow::job::JobId::parse(&job).is_ok() => {
            job_detail(&shared, &job).await.unwrap_or_else(|error| {
                http::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{}\n", http::error_chain(&error)),
                )
            })
        }
        _ => http::text(StatusCode::BAD_REQUEST, "give a valid ?id=JOB\n"),
    }
}

/// Why a job's detail could not be read.
#[derive(Debug, thiserror::Error)]
enum DetailError {
    #[error(transparent)]
    Store(#[from] chunkflow::store::StoreError),
}

async fn job_detail(shared: &Shared, job: &str) -> Result<Response, DetailError> {
    let Some(status) = shared.store.status(job).await? else {
        return Ok(http::text(
            StatusCode::NOT_FOUND,
            format!("no job `{job}`\n"),
        ));
    };
    let failures = shared.store.failures(job).await?;
    let partitions = shared.store.partition_progress(&status).await?;
    let mut value = views::status_json(&status, &failures, views::now());
    value["partitions"] = json!(partitions);
    Ok(http::json(&value))
}

async fn refresh_loop(shared: Arc<Shared>, config: DashboardConfig, shutdown: CancellationToken) {
    let topology = Topology::for_connection(&config.connection);
    // The broker's nodes, in the dashboard's rotation (reconnects try the next node first);
    // a list that names no usable broker is reported on every refresh.
    let nodes = BrokerNodes::for_connection(&config.connection).map_err(|error| error.to_string());
    // A URL the client refuses is reported on every refresh, like an API that is down.
    let management =
        ManagementApi::new(&config.management_url).map_err(|error| http::error_chain(&error));
    let mut amqp: Option<(lapin::Connection, Topology)> = None;
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
        if amqp.as_ref().is_none_or(|(c, _)| !c.status().connected()) {
            let connected = match &nodes {
                Ok(nodes) => {
                    topology::connect(nodes, "dashboard", config.connection.broker_timeout)
                        .await
                        .map_err(|error| error.to_string())
                }
                Err(why) => Err(why.clone()),
            };
            match connected {
                Ok(connected) => {
                    let at_node = topology.at_node(&connected);
                    amqp = Some((connected.connection, at_node));
                }
                Err(why) => errors.push(format!("queues: {why}")),
            }
        }
        let mut queues = Vec::new();
        if let Some((connection, topology)) = &amqp {
            match views::amqp_queue_counts(connection, topology).await {
                Ok(mut stats) => {
                    let added = match &management {
                        Ok(api) => api
                            .add_unacked(&mut stats, &config.connection.amqp_url)
                            .await
                            .map_err(|error| http::error_chain(&error)),
                        Err(why) => Err(why.clone()),
                    };
                    if let Err(why) = added {
                        errors.push(format!("unacked counts unavailable: {why}"));
                    }
                    queues = stats;
                }
                Err(error) => {
                    errors.push(format!("queues: {}", http::error_chain(&error)));
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
    if let Some((connection, _)) = amqp {
        let _ = connection.close(200, "dashboard stopped".into()).await;
    }
}
