//! The consume loop shared by workers and reducers, and its supervisor.
//!
//! The loop only moves deliveries in and settlements out: a [`TaskHandler`] decides what a
//! delivery means and returns a [`Disposition`]; the loop acks, dead-letters or requeues
//! accordingly. Shutdown is raced only against waiting for the next delivery, never against
//! a handler: a task that has started runs to its commit and its ack.
//!
//! The supervisor reconnects with capped exponential backoff when the broker connection,
//! the channel or the consumer fails, and declares the topology again on each connection.
//! Every step of setting up a session (connect, channels, declares, qos, consume, confirm
//! mode) runs within the connection's `broker_timeout`, and so does every settlement: a
//! broker that stops answering ends the session, and the supervisor reconnects. An ack
//! that returns `false` (its channel died) is logged: the broker redelivers the message,
//! and the commit protocol makes the redelivery harmless.

use std::time::Duration;

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
use crate::broker::topology::{self, Topology};
use crate::config::{redact_url, redact_within, ConnectionConfig};
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
    #[error("invalid RabbitMQ URL {url}: {reason}")]
    InvalidAmqpUrl { url: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
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
    if let Err(error) = args.amqp_url.parse::<lapin::uri::AMQPUri>() {
        return Err(ServiceError::InvalidAmqpUrl {
            url: redact_url(&args.amqp_url),
            // The parser's message quotes the URL it refused, password and all.
            reason: redact_within(&error.to_string(), &args.amqp_url),
        });
    }
    let topology = Topology::for_connection(args);
    let mut backoff = Backoff::new(Duration::from_millis(250), MAX_BACKOFF);
    while !shutdown.is_cancelled() {
        let mut connected = false;
        let ended = session(args, settings, &topology, handler, shutdown, &mut connected).await;
        crate::metrics::broker_connected(settings.role, false);
        settings.health.set_broker_connected(false);
        match ended {
            Ok(()) => break,
            Err(error) => {
                crate::metrics::reconnect(settings.role);
                if connected {
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
        Disposition::Retry(_) => Settlement::Retry,
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
        Disposition::Retry(_) => Settle::Requeue,
    }
}

async fn session<H: TaskHandler>(
    args: &ConnectionConfig,
    settings: &ConsumerSettings,
    topology: &Topology,
    handler: &mut H,
    shutdown: &CancellationToken,
    connected: &mut bool,
) -> Result<(), SessionError> {
    let deadline = topology.deadline();
    let connection =
        topology::connect_within(&args.amqp_url, settings.role, deadline.timeout()).await?;
    let channel = deadline
        .run("open a consuming channel", connection.create_channel())
        .await?;
    topology.declare(&channel).await?;
    deadline
        .run(
            "basic.qos",
            channel.basic_qos(settings.prefetch.max(1), BasicQosOptions::default()),
        )
        .await?;
    let mut publisher = Publisher::open(&connection, 16 * 1024 * 1024, deadline).await?;
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
    *connected = true;
    crate::metrics::broker_connected(settings.role, true);
    settings.health.set_broker_connected(true);
    tracing::info!(queue = %settings.queue, prefetch = settings.prefetch, "consuming");
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            // lapin does not always end an idle consumer's stream when the broker closes
            // the connection (seen with `rabbitmqctl close_all_connections`): watch it.
            _ = connection_lost(&connection, &channel) => return Err(SessionError::ConnectionLost),
            next = consumer.next() => Some(next),
        };
        let delivery = match next {
            None => {
                // Closing the channel gives prefetched, unstarted deliveries back.
                let _ =
                    tokio::time::timeout(deadline.timeout(), channel.close(200, "shutdown".into()))
                        .await;
                close_within(&connection, "shutdown", deadline).await;
                return Ok(());
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
                close_within(&connection, "shutdown", deadline).await;
                return Ok(());
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
            _ = connection_lost(&connection, &channel) => false,
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
                Disposition::Retry("Redis down".into()),
                Settle::Requeue,
                Settlement::Retry,
            ),
        ];
        for (disposition, settle, settlement) in cases {
            assert_eq!(settle_of(&disposition), settle, "{disposition:?}");
            assert_eq!(settlement_of(&disposition), settlement, "{disposition:?}");
        }
    }
}
