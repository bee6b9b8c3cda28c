//! The consume loop shared by workers and reducers, and its supervisor.
//!
//! The loop only moves deliveries in and settlements out: a [`TaskHandler`] decides what a
//! delivery means and returns a [`Disposition`]; the loop acks, dead-letters or requeues
//! accordingly. Shutdown is raced only against waiting for the next delivery, never against
//! a handler: a task that has started runs to its commit and its ack.
//!
//! The supervisor reconnects with capped exponential backoff when the broker connection,
//! the channel or the consumer fails, and declares the topology again on each connection.
//! Given the nodes of a RabbitMQ cluster, it reconnects through the next node of its
//! rotation ([`topology::connect`]): a node that went down is tried last.
//! Every step of setting up a session (connect, channels, declares, qos, consume, confirm
//! mode) runs within the connection's `broker_timeout`, and so does every settlement: a
//! broker that stops answering ends the session, and the supervisor reconnects. An ack
//! that returns `false` (its channel died) is logged: the broker redelivers the message,
//! and the commit protocol makes the redelivery harmless.
//!
//! A Redis outage ([`Disposition::Unavailable`]: unreachable, not answering, out of memory)
//! is waited out, not retried task by task: the delivery is given back, the channel closed
//! (prefetched deliveries return), and Redis probed with capped backoff until it answers
//! and accepts writes; then the handler settles what the outage left undone
//! ([`TaskHandler::recover`]) and consuming resumes. The service is not ready meanwhile. An
//! outage longer than the connection's `outage_timeout` ends the service with
//! [`ServiceError::RedisOutage`].

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::backoff::Backoff;
use crate::broker::deadline::BrokerError;
use crate::broker::publisher::{close_within, Publisher};
use crate::broker::topology::{self, BrokerNodes, Topology};
use crate::config::{redact_url, ConnectionConfig};
use crate::health::ServiceHealth;
use crate::metrics::Settlement;
use crate::protocol::Disposition;
use crate::store::StoreError;

/// A delivery as handlers see it.
#[derive(Debug)]
pub struct Task {
    pub properties: BasicProperties,
    pub body: Vec<u8>,
    pub redelivered: bool,
    /// Deliveries of this message before this one (from the quorum queue's count).
    pub previous_deliveries: u64,
}

/// Handles one kind of task.
pub trait TaskHandler {
    /// Decides a delivery's fate. May publish (reduce tasks) through `publisher`, with
    /// confirms, before returning `Ack`.
    fn handle(
        &mut self,
        task: Task,
        publisher: &mut Publisher,
    ) -> impl std::future::Future<Output = Disposition> + Send;

    /// Called once Redis answers again after an outage, before consuming again: settles
    /// what the outage left undone (the worker gives back the attempts it cut short). An
    /// error keeps the loop waiting.
    fn recover(&mut self) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }

    /// Called when an outage lasted past the outage timeout, before the service gives up:
    /// the worker fails the jobs whose writes Redis refused for lack of memory.
    fn outage_outlasted(
        &mut self,
        waited: Duration,
    ) -> impl std::future::Future<Output = ()> + Send {
        let _ = waited;
        async {}
    }
}

/// Settings of the consume loop.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub role: &'static str,
    pub queue: String,
    pub prefetch: u16,
    pub retry_pause: Duration,
    /// After SIGTERM, how long the task in hand may run before it is given back.
    pub grace_period: Duration,
    /// The service's health, written here and read by its monitor.
    pub health: Arc<ServiceHealth>,
}

/// Why a service stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// `--amqp-url` names no usable broker (checked before connecting to anything).
    #[error(transparent)]
    InvalidAmqpUrl(topology::ConnectError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Redis at {url} was unavailable for {waited_secs} s, longer than --outage-timeout ({timeout_secs} s); last error: {last_error}. Start Redis (or free its memory: raise maxmemory, delete old jobs) and start this service again")]
    RedisOutage {
        url: String,
        waited_secs: u64,
        timeout_secs: u64,
        last_error: String,
    },
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Waits `duration` unless shutdown comes first; returns `false` on shutdown (a fixed
/// pause; growing ones use [`Backoff::pause`]).
pub async fn pause(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(duration) => true,
    }
}

/// Runs one consume loop per handler, concurrently (each with its own channel and
/// prefetch), until shutdown. One handler is one task in progress at a time.
pub async fn run_consumers<H>(
    args: &ConnectionConfig,
    settings: &ConsumerSettings,
    handlers: Vec<H>,
    shutdown: &CancellationToken,
) -> Result<(), ServiceError>
where
    H: TaskHandler + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for mut handler in handlers {
        let (args, settings, shutdown) = (args.clone(), settings.clone(), shutdown.clone());
        tasks.spawn(async move { run_consumer(&args, &settings, &mut handler, &shutdown).await });
    }
    let mut outcome = Ok(());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                shutdown.cancel();
                outcome = Err(error);
            }
            Err(join_error) => {
                shutdown.cancel();
                tracing::error!(error = %join_error, "a consume loop panicked");
            }
        }
    }
    outcome
}

/// Consumes `settings.queue` with `handler` until shutdown, reconnecting as needed.
pub async fn run_consumer<H: TaskHandler>(
    args: &ConnectionConfig,
    settings: &ConsumerSettings,
    handler: &mut H,
    shutdown: &CancellationToken,
) -> Result<(), ServiceError> {
    let nodes = BrokerNodes::for_connection(args).map_err(ServiceError::InvalidAmqpUrl)?;
    let topology = Topology::for_connection(args);
    let mut backoff = Backoff::new(Duration::from_millis(250), MAX_BACKOFF);
    let mut outage = OutageClock::default();
    while !shutdown.is_cancelled() {
        let mut progress = SessionProgress::default();
        let ended = session(
            settings,
            &topology,
            &nodes,
            handler,
            shutdown,
            &mut progress,
        )
        .await;
        crate::metrics::broker_connected(settings.role, false);
        settings.health.set_broker_connected(false);
        if progress.settled_a_task {
            outage.task_settled();
        }
        match ended {
            Ok(SessionEnd::Shutdown) => break,
            Ok(SessionEnd::RedisUnavailable(reason)) => {
                backoff.reset();
                let since = outage.begin(Instant::now());
                if !wait_out_redis_outage(args, settings, handler, shutdown, since, reason).await? {
                    break;
                }
            }
            Err(error) => {
                crate::metrics::reconnect(settings.role);
                if progress.connected {
                    backoff.reset();
                }
                tracing::error!(error = %error, retry_in = ?backoff.current(), "broker session ended; reconnecting");
                if !backoff.pause(shutdown).await {
                    break;
                }
            }
        }
    }
    tracing::info!(role = settings.role, "stopped");
    Ok(())
}

/// When the Redis outage being waited out began. An outage that seems over (Redis answers)
/// but comes back before a single task was settled (Redis answers PING but still refuses
/// writes) is the same outage: its clock keeps running.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct OutageClock {
    since: Option<Instant>,
}

impl OutageClock {
    /// An outage is seen at `now`: when it began.
    fn begin(&mut self, now: Instant) -> Instant {
        *self.since.get_or_insert(now)
    }

    /// A task was settled: the outage is over.
    fn task_settled(&mut self) {
        self.since = None;
    }
}

/// Whether an outage that began at `since` has lasted past `timeout` at `now`.
fn outage_expired(since: Instant, now: Instant, timeout: Duration) -> bool {
    now.saturating_duration_since(since) >= timeout
}

/// Refused by Redis while it is out of memory, without writing anything: Redis 7 refuses a
/// script that may write (a `#!lua` shebang without `no-writes`) before running it.
const WRITE_PROBE: &str = "#!lua\nreturn 1\n";

/// What a failed probe tells the operator (from the error's code and text): an
/// out-of-memory refusal says what to do.
fn probe_failure(code: Option<&str>, error: &dyn std::fmt::Display) -> String {
    if code == Some("OOM") {
        format!(
            "Redis is out of memory ({error}): raise its maxmemory, or free memory (delete old jobs' keys)"
        )
    } else {
        format!("Redis did not answer: {error}")
    }
}

/// Whether Redis answers and accepts writes (a script that may write, but does not).
async fn probe_redis(args: &ConnectionConfig) -> Result<(), String> {
    let mut connection = crate::store::connect_dedicated(args, args.redis_timeout)
        .await
        .map_err(|error| error.to_string())?;
    let _one: i64 = deadpool_redis::redis::cmd("EVAL")
        .arg(WRITE_PROBE)
        .arg(0)
        .query_async(&mut connection)
        .await
        .map_err(|error| probe_failure(error.code(), &error))?;
    Ok(())
}

/// Waits until Redis answers (and the handler has recovered), probing with capped backoff;
/// `Ok(false)` on shutdown, an error once the outage that began at `since` outlasts the
/// connection's `outage_timeout`.
async fn wait_out_redis_outage<H: TaskHandler>(
    args: &ConnectionConfig,
    settings: &ConsumerSettings,
    handler: &mut H,
    shutdown: &CancellationToken,
    since: Instant,
    reason: String,
) -> Result<bool, ServiceError> {
    crate::metrics::outage(settings.role, "redis");
    let _not_ready = settings.health.outage();
    tracing::warn!(
        role = settings.role,
        reason = %reason,
        outage_timeout = ?args.outage_timeout,
        "Redis is unavailable: gave the task back; not taking tasks until it answers"
    );
    let mut last_error = reason;
    let mut backoff = Backoff::new(Duration::from_millis(250), MAX_BACKOFF);
    loop {
        if outage_expired(since, Instant::now(), args.outage_timeout) {
            handler.outage_outlasted(since.elapsed()).await;
            return Err(ServiceError::RedisOutage {
                url: redact_url(&args.redis_url),
                waited_secs: since.elapsed().as_secs(),
                timeout_secs: args.outage_timeout.as_secs(),
                last_error,
            });
        }
        if !backoff.pause(shutdown).await {
            return Ok(false);
        }
        let recovered = match probe_redis(args).await {
            Ok(()) => handler.recover().await.map_err(|error| error.to_string()),
            Err(error) => Err(error),
        };
        match recovered {
            Ok(()) => {
                settings.health.redis_answered();
                tracing::info!(
                    role = settings.role,
                    waited = ?since.elapsed(),
                    "Redis answers again; consuming"
                );
                return Ok(true);
            }
            Err(error) => {
                tracing::debug!(error = %error, retry_in = ?backoff.current(), "Redis still unavailable");
                last_error = error;
            }
        }
    }
}

/// How a session ended without a broker failure.
#[derive(Debug)]
enum SessionEnd {
    /// Shutdown was requested (or the grace period ran out).
    Shutdown,
    /// A task found Redis out: it was given back and the channel closed.
    RedisUnavailable(String),
}

/// What a session got done before it ended.
#[derive(Debug, Default)]
struct SessionProgress {
    /// It was consuming (the broker side worked).
    connected: bool,
    /// It settled a task other than by giving it back in an outage.
    settled_a_task: bool,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Connect(#[from] topology::ConnectError),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Unanswered(#[from] BrokerError),
    #[error("the broker cancelled the consumer")]
    ConsumerEnded,
    #[error("the publishing channel was lost")]
    PublisherLost,
    #[error("the consuming channel was lost (an ack or reject was not delivered)")]
    ChannelLost,
    #[error("the broker connection was closed")]
    ConnectionLost,
}

/// How long an ack, reject or nack may take before its channel is taken for dead.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves once the connection or the channel is no longer usable.
async fn connection_lost(connection: &lapin::Connection, channel: &lapin::Channel) {
    while connection.status().connected() && channel.status().connected() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Resolves `grace` after shutdown is requested.
async fn grace_expired(shutdown: &CancellationToken, grace: Duration) {
    shutdown.cancelled().await;
    tokio::time::sleep(grace).await;
}

/// Names a delivery as the service's task in hand while it lives.
struct CurrentTask<'a>(&'a ServiceHealth);

impl<'a> CurrentTask<'a> {
    fn new(health: &'a ServiceHealth, task: Option<&str>) -> Self {
        health.set_current_task(task);
        CurrentTask(health)
    }
}

impl Drop for CurrentTask<'_> {
    fn drop(&mut self) {
        self.0.set_current_task(None);
    }
}

fn settlement_of(disposition: &Disposition) -> Settlement {
    match disposition {
        Disposition::Ack => Settlement::Ack,
        Disposition::DeadLetter(_) => Settlement::DeadLetter,
        Disposition::Retry(_) | Disposition::Unavailable(_) => Settlement::Retry,
    }
}

/// How a disposition is sent to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    /// `basic.reject` without requeue: the queue dead-letters it.
    RejectToDeadLetters,
    /// `basic.nack` with requeue.
    Requeue,
}

fn settle_of(disposition: &Disposition) -> Settle {
    match disposition {
        Disposition::Ack => Settle::Ack,
        Disposition::DeadLetter(_) => Settle::RejectToDeadLetters,
        Disposition::Retry(_) | Disposition::Unavailable(_) => Settle::Requeue,
    }
}

async fn session<H: TaskHandler>(
    settings: &ConsumerSettings,
    topology: &Topology,
    nodes: &BrokerNodes,
    handler: &mut H,
    shutdown: &CancellationToken,
    progress: &mut SessionProgress,
) -> Result<SessionEnd, SessionError> {
    let connected = topology::connect(nodes, settings.role, topology.deadline().timeout()).await?;
    // Errors from here on name the node that did not answer.
    let topology = &topology.at_node(&connected);
    let deadline = topology.deadline();
    let connection = &connected.connection;
    let channel = deadline
        .run("open a consuming channel", connection.create_channel())
        .await?;
    topology.declare(connection).await?;
    deadline
        .run(
            "basic.qos",
            channel.basic_qos(settings.prefetch.max(1), BasicQosOptions::default()),
        )
        .await?;
    let mut publisher = Publisher::open(connection, 16 * 1024 * 1024, deadline).await?;
    let tag = format!("{}-{}", settings.role, std::process::id());
    let mut consumer = deadline
        .run(
            format!("consume from queue {}", settings.queue),
            channel.basic_consume(
                settings.queue.as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    progress.connected = true;
    crate::metrics::broker_connected(settings.role, true);
    settings.health.set_broker_connected(true);
    tracing::info!(queue = %settings.queue, prefetch = settings.prefetch, node = %connected.node(), "consuming");
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            // lapin does not always end an idle consumer's stream when the broker closes
            // the connection (seen with `rabbitmqctl close_all_connections`): watch it.
            _ = connection_lost(connection, &channel) => return Err(SessionError::ConnectionLost),
            next = consumer.next() => Some(next),
        };
        let delivery = match next {
            None => {
                // Closing the channel gives prefetched, unstarted deliveries back.
                let _ =
                    tokio::time::timeout(deadline.timeout(), channel.close(200, "shutdown".into()))
                        .await;
                close_within(connection, "shutdown", deadline).await;
                return Ok(SessionEnd::Shutdown);
            }
            Some(None) => return Err(SessionError::ConsumerEnded),
            Some(Some(delivery)) => delivery?,
        };
        let _in_flight = crate::metrics::task_started(settings.role, delivery.redelivered);
        let _current = CurrentTask::new(
            &settings.health,
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str()),
        );
        let task = Task {
            previous_deliveries: crate::protocol::messages::previous_deliveries(
                &delivery.properties,
            ),
            properties: delivery.properties,
            body: delivery.data,
            redelivered: delivery.redelivered,
        };
        let disposition = tokio::select! {
            disposition = handler.handle(task, &mut publisher) => disposition,
            _ = grace_expired(shutdown, settings.grace_period) => {
                // The task in hand is given back: closing the connection returns it to the
                // queue. Its commit, if it was running, is one Lua script: it happened
                // entirely or not at all. The process exits next, so no pooled Redis
                // connection with a cancelled command is ever reused.
                tracing::warn!(grace = ?settings.grace_period, "grace period over; giving the task in hand back");
                close_within(connection, "shutdown", deadline).await;
                return Ok(SessionEnd::Shutdown);
            }
        };
        crate::metrics::task_settled(settings.role, settlement_of(&disposition));
        if disposition == Disposition::Ack {
            settings.health.task_done();
        }
        let acker = delivery.acker;
        if let Disposition::Retry(reason) = &disposition {
            tracing::warn!(reason = %reason, pause = ?settings.retry_pause, "requeueing task");
            pause(settings.retry_pause, shutdown).await;
        }
        if let Disposition::DeadLetter(reason) = &disposition {
            tracing::warn!(reason = %reason, "rejecting task to the dead-letter queue");
        }
        if let Disposition::Unavailable(reason) = &disposition {
            tracing::warn!(reason = %reason, "Redis unavailable; giving the task back");
        }
        let settlement = async {
            match settle_of(&disposition) {
                Settle::Ack => acker.ack(BasicAckOptions::default()).await,
                Settle::RejectToDeadLetters => {
                    acker.reject(BasicRejectOptions { requeue: false }).await
                }
                Settle::Requeue => {
                    acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        })
                        .await
                }
            }
        };
        // A settlement that never completes (its connection closed under it) means a dead
        // channel, like one returning false: the broker redelivers the task.
        let settled = tokio::select! {
            settled = tokio::time::timeout(SETTLE_TIMEOUT, settlement) => settled.unwrap_or(Ok(false))?,
            _ = connection_lost(connection, &channel) => false,
        };
        if !publisher.is_usable() {
            return Err(SessionError::PublisherLost);
        }
        if !settled {
            tracing::warn!(
                ?disposition,
                "settlement not delivered (channel closed); the broker will redeliver, which the commit protocol makes harmless"
            );
            return Err(SessionError::ChannelLost);
        }
        if let Disposition::Unavailable(reason) = disposition {
            // Stop taking tasks: closing the channel gives prefetched ones back.
            let _ = tokio::time::timeout(
                deadline.timeout(),
                channel.close(200, "waiting out a Redis outage".into()),
            )
            .await;
            close_within(connection, "waiting out a Redis outage", deadline).await;
            return Ok(SessionEnd::RedisUnavailable(reason));
        }
        progress.settled_a_task = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_disposition_settles_one_way() {
        let cases = [
            (Disposition::Ack, Settle::Ack, Settlement::Ack),
            (
                Disposition::DeadLetter("undecodable".into()),
                Settle::RejectToDeadLetters,
                Settlement::DeadLetter,
            ),
            (
                Disposition::Retry("panic".into()),
                Settle::Requeue,
                Settlement::Retry,
            ),
            (
                Disposition::Unavailable("Redis down".into()),
                Settle::Requeue,
                Settlement::Retry,
            ),
        ];
        for (disposition, settle, settlement) in cases {
            assert_eq!(settle_of(&disposition), settle, "{disposition:?}");
            assert_eq!(settlement_of(&disposition), settlement, "{disposition:?}");
        }
    }

    #[test]
    fn an_outage_that_returns_before_any_task_keeps_its_clock() {
        let start = Instant::now();
        let later = start + Duration::from_secs(30);
        let mut clock = OutageClock::default();
        assert_eq!(clock.begin(start), start);
        // Redis answered, but the next task found it out again: the same outage.
        assert_eq!(clock.begin(later), start);
        assert!(outage_expired(
            clock.begin(later),
            later,
            Duration::from_secs(30)
        ));
        assert!(!outage_expired(start, later, Duration::from_secs(31)));
        // A task settled in between: a new outage starts its own clock.
        clock.task_settled();
        assert_eq!(clock.begin(later), later);
    }

    #[test]
    fn an_out_of_memory_probe_says_what_to_do() {
        let oom = probe_failure(
            Some("OOM"),
            &"OOM command not allowed when used memory > 'maxmemory'.",
        );
        assert!(
            oom.starts_with("Redis is out of memory (OOM command"),
            "{oom}"
        );
        assert!(oom.contains("raise its maxmemory"), "{oom}");
        let refused = probe_failure(None, &"Connection refused (os error 111)");
        assert_eq!(
            refused,
            "Redis did not answer: Connection refused (os error 111)"
        );
    }
}
