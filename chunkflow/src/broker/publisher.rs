//! Publishing with confirms, through a bounded window.
//!
//! Every message is published `mandatory` on a channel in confirm mode. The publisher keeps
//! the confirms of what it has sent but not yet had confirmed, and waits for the oldest
//! when the window's bytes pass a limit: throughput without holding the whole input in
//! flight. A nack, a return (no queue bound), a lost channel or a publish or confirm that
//! does not come within the broker deadline is an error; a caller reports success only
//! after [`Publisher::flush`] returned `Ok`.
//!
//! [`ReconnectingPublisher`] (the producer's) reconnects, through the next node of its
//! rotation when given a cluster's nodes, and republishes what was not confirmed; a plain [`Publisher`] (a worker's, for reduce tasks) reports the error and
//! its caller requeues the delivery that wanted to publish. Must not: wait on the broker
//! without a deadline, or report a message published before its confirm arrived.

use std::collections::VecDeque;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation, Connection, PublisherConfirm};

use crate::backoff::Backoff;
use crate::broker::deadline::{BrokerDeadline, BrokerError};
use crate::broker::topology::{self, BrokerNodes, Connected, Topology};
use crate::job::JobId;
use crate::protocol::messages::ReduceTask;

/// RabbitMQ 3.10's default `max_message_size` is 128 MiB; stay clear of it.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024 * 1024 - 64 * 1024;

/// Why a publish did not reach a queue.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error while publishing {what}: {source}")]
    Broker { what: String, source: lapin::Error },
    #[error("the broker refused (nacked) {what}")]
    Nacked { what: String },
    #[error(
        "the broker returned {what} as unroutable (reply {code}: {text}); is the queue declared?"
    )]
    Returned {
        what: String,
        code: u16,
        text: String,
    },
    #[error(
        "{what} is {size} bytes, over the broker's message size limit of {MAX_MESSAGE_BYTES} bytes"
    )]
    TooLarge { what: String, size: usize },
    /// A publish or confirm that did not come within the broker deadline: its fate is
    /// unknown, so it is kept for a replay.
    #[error("{0}")]
    Unanswered(BrokerError),
    #[error("no working broker connection for {after:?} (last error: {cause})")]
    GaveUp {
        after: std::time::Duration,
        cause: String,
    },
}

/// A message published but not yet confirmed; kept so it can be sent again on a new
/// connection if this one dies before the confirm arrives.
struct InFlight {
    confirm: PublisherConfirm,
    message: Pending,
}

/// A message to (re)publish.
#[derive(Debug, Clone)]
pub struct Pending {
    pub queue: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    pub what: String,
}

impl Pending {
    /// A message for `queue`; `what` names it in errors.
    pub fn new(
        queue: &str,
        body: Vec<u8>,
        properties: BasicProperties,
        what: impl Into<String>,
    ) -> Self {
        Pending {
            queue: queue.to_string(),
            body,
            properties,
            what: what.into(),
        }
    }
}

/// A confirm-mode channel with a window of unconfirmed messages.
pub struct Publisher {
    channel: lapin::Channel,
    window: VecDeque<InFlight>,
    window_bytes: usize,
    max_window_bytes: usize,
    confirmed: u64,
    /// Messages whose publish or confirm failed on a broken channel.
    failed: Vec<Pending>,
    deadline: BrokerDeadline,
}

impl Publisher {
    /// Opens a channel in confirm mode. `max_window_bytes` bounds unconfirmed bytes; every
    /// wait on the broker, this one included, is bounded by `deadline`.
    pub async fn open(
        connection: &Connection,
        max_window_bytes: usize,
        deadline: &BrokerDeadline,
    ) -> Result<Self, BrokerError> {
        let channel = deadline
            .run("open a publishing channel", connection.create_channel())
            .await?;
        deadline
            .run(
                "confirm.select",
                channel.confirm_select(ConfirmSelectOptions::default()),
            )
            .await?;
        Ok(Publisher {
            channel,
            window: VecDeque::new(),
            window_bytes: 0,
            max_window_bytes: max_window_bytes.max(1),
            confirmed: 0,
            failed: Vec::new(),
            deadline: deadline.clone(),
        })
    }

    /// The channel, for declares and queue inspection.
    pub fn channel(&self) -> &lapin::Channel {
        &self.channel
    }

    /// Whether the channel can still publish (false after the connection was lost).
    pub fn is_usable(&self) -> bool {
        self.channel.status().connected()
    }

    /// Messages confirmed so far.
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// Publishes to `queue` through the default exchange; may wait for older confirms.
    pub async fn publish(
        &mut self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
        what: impl Into<String>,
    ) -> Result<(), PublishError> {
        self.publish_pending(Pending::new(queue, body.to_vec(), properties, what))
            .await
    }

    /// Publishes a message; on a broker error the message is kept for
    /// [`Publisher::take_unconfirmed`].
    pub async fn publish_pending(&mut self, message: Pending) -> Result<(), PublishError> {
        if message.body.len() > MAX_MESSAGE_BYTES {
            return Err(PublishError::TooLarge {
                what: message.what,
                size: message.body.len(),
            });
        }
        while !self.window.is_empty()
            && self.window_bytes + message.body.len() > self.max_window_bytes
        {
            self.confirm_oldest().await?;
        }
        let published = tokio::time::timeout(
            self.deadline.timeout(),
            self.channel.basic_publish(
                "".into(),
                message.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                message.properties.clone(),
            ),
        )
        .await;
        match published {
            Ok(Ok(confirm)) => {
                self.window_bytes += message.body.len();
                self.window.push_back(InFlight { confirm, message });
                Ok(())
            }
            Ok(Err(source)) => {
                let what = message.what.clone();
                self.failed.push(message);
                Err(PublishError::Broker { what, source })
            }
            Err(_elapsed) => {
                let error = self.deadline.timed_out(format!("publish {}", message.what));
                self.failed.push(message);
                Err(PublishError::Unanswered(error))
            }
        }
    }

    /// Every message not known to be confirmed (after a broker error), oldest first.
    pub fn take_unconfirmed(&mut self) -> Vec<Pending> {
        let mut pending: Vec<Pending> = std::mem::take(&mut self.failed);
        pending.extend(self.window.drain(..).map(|f| f.message));
        self.window_bytes = 0;
        pending
    }

    async fn confirm_oldest(&mut self) -> Result<(), PublishError> {
        let Some(in_flight) = self.window.pop_front() else {
            return Ok(());
        };
        self.window_bytes -= in_flight.message.body.len();
        let what = in_flight.message.what.clone();
        let confirmation =
            match tokio::time::timeout(self.deadline.timeout(), in_flight.confirm).await {
                Ok(Ok(confirmation)) => confirmation,
                Ok(Err(source)) => {
                    // Unknown fate: keep it for a replay on a new connection.
                    self.failed.push(in_flight.message);
                    return Err(PublishError::Broker { what, source });
                }
                Err(_elapsed) => {
                    // Unknown fate too: the confirm may still come, but nobody waits for it.
                    self.failed.push(in_flight.message);
                    return Err(PublishError::Unanswered(
                        self.deadline.timed_out(format!("confirm of {what}")),
                    ));
                }
            };
        match confirmation {
            Confirmation::Ack(None) => {
                self.confirmed += 1;
                Ok(())
            }
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(PublishError::Returned {
                    what,
                    code: returned.reply_code,
                    text: returned.reply_text.as_str().to_string(),
                })
            }
            Confirmation::Nack(None) | Confirmation::NotRequested => {
                // The broker did not take the message (e.g. a queue without a leader while
                // the broker restarts): keep it so a caller may publish it again.
                self.failed.push(in_flight.message);
                Err(PublishError::Nacked { what })
            }
        }
    }

    /// Waits until every message published so far is confirmed (each confirm within the
    /// deadline).
    pub async fn flush(&mut self) -> Result<(), PublishError> {
        while !self.window.is_empty() {
            self.confirm_oldest().await?;
        }
        Ok(())
    }
}

/// The reduce tasks of a job, one per partition: the one place they are built, whoever
/// publishes them (the worker whose commit completed the map phase, or the producer whose
/// seal did).
pub fn reduce_task_messages<'a>(
    topology: &Topology,
    job_id: &'a JobId,
    partitions: u32,
) -> impl Iterator<Item = Pending> + 'a {
    let queue = topology.reduce_queue();
    (0..partitions).map(move |partition| {
        let task = ReduceTask {
            job_id: job_id.clone(),
            partition,
        };
        Pending::new(
            &queue,
            task.body(),
            task.properties(),
            format!("reduce task {}", task.message_id()),
        )
    })
}

/// Publishes one reduce task per partition, and waits for every confirm. On failure what
/// was not confirmed is forgotten: the caller's redelivery publishes the whole set again.
pub async fn publish_reduce_tasks(
    publisher: &mut Publisher,
    topology: &Topology,
    job_id: &JobId,
    partitions: u32,
) -> Result<(), PublishError> {
    let mut published = Ok(());
    for message in reduce_task_messages(topology, job_id, partitions) {
        published = publisher.publish_pending(message).await;
        if published.is_err() {
            break;
        }
    }
    if published.is_ok() {
        published = publisher.flush().await;
    }
    if published.is_err() {
        publisher.take_unconfirmed();
    }
    published
}

/// A publisher that survives the loss of its broker connection: it reconnects with capped
/// exponential backoff, declares the topology again, and republishes every message that was
/// not confirmed (duplicates are harmless: the commit protocol drops them). A confirm that
/// does not come within the topology's deadline counts as a lost connection. It gives up
/// after `give_up_after` without a working connection.
pub struct ReconnectingPublisher {
    nodes: BrokerNodes,
    role: &'static str,
    topology: Topology,
    /// `topology` naming the node of the current connection in its errors.
    node_topology: Topology,
    max_window_bytes: usize,
    give_up_after: std::time::Duration,
    connected: Connected,
    publisher: Publisher,
    reconnects: u64,
    nack_recoveries: u32,
}

/// Nacked messages are republished on a new channel at most this many times in a row.
const MAX_NACK_RECOVERIES: u32 = 5;

/// Whether `error` is worth a reconnect and replay: a lost or silent connection always, a
/// nack a few times in a row (`nacks_in_a_row` recoveries so far; then it is reported).
/// Returns (no queue), oversized messages and giving up are reported at once.
fn worth_recovering(error: &PublishError, nacks_in_a_row: u32) -> bool {
    match error {
        PublishError::Broker { .. } | PublishError::Unanswered(_) => true,
        PublishError::Nacked { .. } => nacks_in_a_row < MAX_NACK_RECOVERIES,
        PublishError::Returned { .. }
        | PublishError::TooLarge { .. }
        | PublishError::GaveUp { .. } => false,
    }
}

/// Why a (re)connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconnectError {
    #[error(transparent)]
    Connect(#[from] crate::broker::topology::ConnectError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl ReconnectingPublisher {
    /// Connects to the first of `nodes` that answers (see [`topology::connect`]).
    pub async fn connect(
        nodes: BrokerNodes,
        role: &'static str,
        topology: Topology,
        max_window_bytes: usize,
        give_up_after: std::time::Duration,
    ) -> Result<Self, ReconnectError> {
        let (connected, publisher, node_topology) =
            Self::open(&nodes, role, &topology, max_window_bytes).await?;
        Ok(ReconnectingPublisher {
            nodes,
            role,
            topology,
            node_topology,
            max_window_bytes,
            give_up_after,
            connected,
            publisher,
            reconnects: 0,
            nack_recoveries: 0,
        })
    }

    async fn open(
        nodes: &BrokerNodes,
        role: &'static str,
        topology: &Topology,
        max_window_bytes: usize,
    ) -> Result<(Connected, Publisher, Topology), ReconnectError> {
        let connected = topology::connect(nodes, role, topology.deadline().timeout()).await?;
        let topology = topology.at_node(&connected);
        let publisher =
            Publisher::open(&connected.connection, max_window_bytes, topology.deadline()).await?;
        topology.declare(&connected.connection).await?;
        Ok((connected, publisher, topology))
    }

    /// The node of the current connection (its URL, redacted).
    pub fn node(&self) -> String {
        self.connected.node()
    }

    /// Times the connection was re-established.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Whether `error` is worth a reconnect and replay (counting nack recoveries).
    fn recoverable(&mut self, error: &PublishError) -> bool {
        let recoverable = worth_recovering(error, self.nack_recoveries);
        if recoverable && matches!(error, PublishError::Nacked { .. }) {
            self.nack_recoveries += 1;
        }
        recoverable
    }

    /// Reconnects and replays unconfirmed messages, until it works or time runs out.
    async fn recover(&mut self, cause: &PublishError) -> Result<(), PublishError> {
        let started = std::time::Instant::now();
        let mut backoff = Backoff::new(
            std::time::Duration::from_millis(250),
            std::time::Duration::from_secs(5),
        );
        let mut pending = self.publisher.take_unconfirmed();
        tracing::warn!(error = %cause, unconfirmed = pending.len(), "broker connection lost while publishing; reconnecting");
        loop {
            backoff.wait().await;
            match Self::open(
                &self.nodes,
                self.role,
                &self.topology,
                self.max_window_bytes,
            )
            .await
            {
                Ok((connected, publisher, node_topology)) => {
                    let old = std::mem::replace(&mut self.connected, connected);
                    close_within(&old.connection, "replaced", self.node_topology.deadline()).await;
                    self.node_topology = node_topology;
                    self.publisher = publisher;
                    self.reconnects += 1;
                    let mut replay = std::mem::take(&mut pending).into_iter();
                    let mut replay_failed = None;
                    for message in replay.by_ref() {
                        if let Err(error) = self.publisher.publish_pending(message).await {
                            replay_failed = Some(error);
                            break;
                        }
                    }
                    match replay_failed {
                        None => {
                            tracing::warn!(
                                reconnects = self.reconnects,
                                node = %self.connected.node(),
                                "reconnected; unconfirmed messages republished"
                            );
                            return Ok(());
                        }
                        Some(
                            error @ (PublishError::Broker { .. }
                            | PublishError::Nacked { .. }
                            | PublishError::Unanswered(_)),
                        ) => {
                            pending = self.publisher.take_unconfirmed();
                            pending.extend(replay);
                            tracing::warn!(error = %error, "replay failed; reconnecting again");
                        }
                        Some(other) => return Err(other),
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error, retry_in = ?backoff.current(), "reconnect failed");
                }
            }
            if started.elapsed() > self.give_up_after {
                return Err(PublishError::GaveUp {
                    after: self.give_up_after,
                    cause: cause.to_string(),
                });
            }
        }
    }

    /// Publishes `message`, reconnecting and replaying as needed. Takes the message by
    /// value: chunk bodies are moved, not copied, on the producer's hot path.
    pub async fn publish(&mut self, message: Pending) -> Result<(), PublishError> {
        match self.publisher.publish_pending(message).await {
            Err(error) if self.recoverable(&error) => self.recover(&error).await,
            Ok(()) => {
                self.nack_recoveries = 0;
                Ok(())
            }
            other => other,
        }
    }

    /// Waits until every message is confirmed, reconnecting as needed.
    pub async fn flush(&mut self) -> Result<(), PublishError> {
        loop {
            match self.publisher.flush().await {
                Err(error) if self.recoverable(&error) => self.recover(&error).await?,
                other => return other,
            }
        }
    }

    /// Ready messages in `queue`, reconnecting as needed.
    pub async fn ready_messages(&mut self, queue: &str) -> Result<u32, PublishError> {
        loop {
            match self
                .node_topology
                .ready_messages(self.publisher.channel(), queue)
                .await
            {
                Ok(count) => return Ok(count),
                Err(error) => {
                    let error = match error {
                        BrokerError::Failed { cause, .. } => PublishError::Broker {
                            what: format!("depth of queue {queue}"),
                            source: *cause,
                        },
                        timed_out @ BrokerError::TimedOut { .. } => {
                            PublishError::Unanswered(timed_out)
                        }
                    };
                    self.recover(&error).await?;
                }
            }
        }
    }

    /// The underlying publisher (to publish reduce tasks on the same connection).
    pub fn publisher(&mut self) -> &mut Publisher {
        &mut self.publisher
    }

    pub async fn close(self) {
        close_within(
            &self.connected.connection,
            "done",
            self.node_topology.deadline(),
        )
        .await;
    }
}

/// Closes `connection`, waiting for the broker's answer no longer than the deadline (a
/// connection being replaced may be the one that stopped answering).
pub async fn close_within(connection: &Connection, reason: &str, deadline: &BrokerDeadline) {
    let _ = tokio::time::timeout(deadline.timeout(), connection.close(200, reason.into())).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::REDUCE_TASK_TYPE;

    #[test]
    fn one_reduce_task_per_partition_on_the_reduce_queue() {
        let topology = Topology::new("ns");
        let job = JobId::parse("j1").unwrap();
        let messages: Vec<Pending> = reduce_task_messages(&topology, &job, 3).collect();
        assert_eq!(messages.len(), 3);
        for (partition, message) in messages.iter().enumerate() {
            assert_eq!(message.queue, "ns.reduce");
            let task = ReduceTask::decode(&message.properties, &message.body).unwrap();
            assert_eq!(task.job_id, job);
            assert_eq!(task.partition, partition as u32);
            assert_eq!(message.what, format!("reduce task {}", task.message_id()));
            assert_eq!(
                message.properties.kind().as_ref().map(|k| k.as_str()),
                Some(REDUCE_TASK_TYPE)
            );
            assert_eq!(message.properties.delivery_mode(), &Some(2), "persistent");
        }
        assert_eq!(reduce_task_messages(&topology, &job, 0).count(), 0);
    }

    #[test]
    fn lost_or_silent_connections_are_recovered_and_nacks_a_few_times() {
        let broker = PublishError::Broker {
            what: "chunk 1".into(),
            source: lapin::Error::from(lapin::ErrorKind::InvalidChannel(1)),
        };
        let silent =
            PublishError::Unanswered(BrokerDeadline::default().timed_out("confirm of chunk 1"));
        let nacked = PublishError::Nacked {
            what: "chunk 1".into(),
        };
        for nacks in [0, MAX_NACK_RECOVERIES, 100] {
            assert!(worth_recovering(&broker, nacks));
            assert!(worth_recovering(&silent, nacks));
        }
        assert!(worth_recovering(&nacked, 0));
        assert!(worth_recovering(&nacked, MAX_NACK_RECOVERIES - 1));
        assert!(!worth_recovering(&nacked, MAX_NACK_RECOVERIES));
        let returned = PublishError::Returned {
            what: "chunk 1".into(),
            code: 312,
            text: "NO_ROUTE".into(),
        };
        let too_large = PublishError::TooLarge {
            what: "chunk 1".into(),
            size: MAX_MESSAGE_BYTES + 1,
        };
        let gave_up = PublishError::GaveUp {
            after: std::time::Duration::from_secs(1),
            cause: "x".into(),
        };
        for error in [returned, too_large, gave_up] {
            assert!(!worth_recovering(&error, 0), "{error}");
        }
    }

    #[test]
    fn a_silent_confirm_names_the_message_and_the_wait() {
        let deadline = BrokerDeadline::new(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            std::time::Duration::from_secs(30),
        );
        let error =
            PublishError::Unanswered(deadline.timed_out("confirm of reduce task j1/reduce/0"));
        assert_eq!(
            error.to_string(),
            "RabbitMQ at amqp://guest:***@127.0.0.1:5672/%2f did not answer `confirm of reduce task j1/reduce/0` within 30s"
        );
    }
}
