//! The broker topology: queue and exchange names and their declare options. Every binary
//! declares through [`Topology::declare`], also after a reconnect, so the options can never
//! disagree (RabbitMQ answers a mismatched redeclare with PRECONDITION_FAILED).
//!
//! | name | kind | role |
//! |---|---|---|
//! | `ns.map` | quorum queue | one message per chunk; body = the chunk's bytes |
//! | `ns.reduce` | quorum queue | one JSON message per partition to reduce |
//! | `ns.dlx` | fanout exchange | dead-letter exchange of both task queues |
//! | `ns.dead` | durable queue | rejected (undecodable, poison) messages, for inspection |
//! | `ns.dead-watch` | durable queue | a second copy of every dead letter, consumed by reducers, which fail the live job it belongs to |
//!
//! Task queues are quorum queues: replicated and durable, with a delivery limit so a message
//! that kills every worker that takes it is dead-lettered instead of looping forever.
//!
//! Every declare, passive declare and connect runs within a [`BrokerDeadline`]: a broker
//! that does not answer is an error naming what it did not answer, never a hang.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::broker::deadline::{BrokerDeadline, BrokerError};
use crate::config::{redact_url, ConnectionConfig};

/// A redelivered message past this many returns to its queue is dead-lettered: a backstop
/// far above `--max-attempts` (counted in Redis) and what an outage of a few minutes
/// produces. A queue declared with another limit must be deleted to be declared again.
pub const DELIVERY_LIMIT: i64 = 500;

/// Names and declarations of one namespace's queues, and how long a declare may take.
#[derive(Debug, Clone)]
pub struct Topology {
    namespace: String,
    deadline: BrokerDeadline,
}

impl Topology {
    /// The namespace's topology, declared within the default deadline.
    pub fn new(namespace: &str) -> Self {
        Topology {
            namespace: namespace.to_string(),
            deadline: BrokerDeadline::default(),
        }
    }

    /// The topology of `connection`'s namespace, declared within its `broker_timeout` (and
    /// naming its broker in errors).
    pub fn for_connection(connection: &ConnectionConfig) -> Self {
        Topology {
            namespace: connection.namespace.clone(),
            deadline: BrokerDeadline::new(&connection.amqp_url, connection.broker_timeout),
        }
    }

    /// The deadline of every broker operation on this topology.
    pub fn deadline(&self) -> &BrokerDeadline {
        &self.deadline
    }

    pub fn map_queue(&self) -> String {
        format!("{}.map", self.namespace)
    }

    pub fn reduce_queue(&self) -> String {
        format!("{}.reduce", self.namespace)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.namespace)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    /// The queue reducers consume dead letters from (bound to the same fanout exchange as
    /// [`Topology::dead_letter_queue`], so `ns.dead` keeps its copy for people to inspect).
    pub fn dead_watch_queue(&self) -> String {
        format!("{}.dead-watch", self.namespace)
    }

    fn task_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(self.dead_letter_exchange())),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        args
    }

    /// Declares (idempotently) every exchange and queue of the namespace.
    pub async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let exchange = self.dead_letter_exchange();
        self.deadline
            .run(
                format!("declare exchange {exchange}"),
                channel.exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
        for dead in [self.dead_letter_queue(), self.dead_watch_queue()] {
            self.deadline
                .run(
                    format!("declare queue {dead}"),
                    channel.queue_declare(dead.as_str().into(), durable, FieldTable::default()),
                )
                .await?;
            self.deadline
                .run(
                    format!("bind queue {dead} to {exchange}"),
                    channel.queue_bind(
                        dead.as_str().into(),
                        exchange.as_str().into(),
                        "".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    ),
                )
                .await?;
        }
        for queue in [self.map_queue(), self.reduce_queue()] {
            self.deadline
                .run(
                    format!("declare queue {queue}"),
                    channel.queue_declare(
                        queue.as_str().into(),
                        durable,
                        self.task_queue_arguments(),
                    ),
                )
                .await?;
        }
        Ok(())
    }

    /// Ready-message count of a queue (passive declare: fails if the queue is missing).
    pub async fn ready_messages(&self, channel: &Channel, queue: &str) -> Result<u32, BrokerError> {
        Ok(self.queue_counts(channel, queue).await?.0)
    }

    /// Every queue of the namespace: map, reduce, dead letters, and the dead letters'
    /// watch copy.
    pub fn queues(&self) -> [String; 4] {
        [
            self.map_queue(),
            self.reduce_queue(),
            self.dead_letter_queue(),
            self.dead_watch_queue(),
        ]
    }

    /// Ready messages and consumers of a queue (passive declare: fails, closing the
    /// channel, if the queue is missing).
    pub async fn queue_counts(
        &self,
        channel: &Channel,
        queue: &str,
    ) -> Result<(u32, u32), BrokerError> {
        let queue = self
            .deadline
            .run(
                format!("count messages in queue {queue}"),
                channel.queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
        Ok((queue.message_count(), queue.consumer_count()))
    }

    /// Deletes every queue and exchange of the namespace (tests and teardown).
    pub async fn delete(&self, channel: &Channel) -> Result<(), BrokerError> {
        for queue in self.queues() {
            self.deadline
                .run(
                    format!("delete queue {queue}"),
                    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
                )
                .await?;
        }
        let exchange = self.dead_letter_exchange();
        self.deadline
            .run(
                format!("delete exchange {exchange}"),
                channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()),
            )
            .await
    }
}

/// Why the broker could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    // The cause is in the message, so it is not also a `source` (it would print twice).
    #[error("cannot connect to RabbitMQ at {url}: {cause}; is it running? (start it with `rabbitmq-server -detached`, or set --amqp-url / AMQP_URL)")]
    Refused { url: String, cause: lapin::Error },
    #[error("`{url}` is not a RabbitMQ URL: it must start with amqp:// or amqps:// (set --amqp-url / AMQP_URL)")]
    NotAnAmqpUrl { url: String },
    #[error("RabbitMQ at {url} did not answer `connect` within {after:?}; is it running and reachable? (or set --amqp-url / AMQP_URL, --broker-timeout)")]
    TimedOut {
        url: String,
        after: std::time::Duration,
    },
}

/// Opens a broker connection named after the process role (shown in the management UI),
/// within the default deadline.
pub async fn connect(url: &str, role: &str) -> Result<Connection, ConnectError> {
    connect_within(url, role, crate::broker::deadline::DEFAULT_BROKER_TIMEOUT).await
}

/// Opens a broker connection named after the process role, waiting at most `timeout`.
pub async fn connect_within(
    url: &str,
    role: &str,
    timeout: std::time::Duration,
) -> Result<Connection, ConnectError> {
    // Checked before connecting: a mistyped `amqp:/user:pw@host` would otherwise reach the
    // default host with the rest as a vhost name, which the broker echoes back in its error.
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err(ConnectError::NotAnAmqpUrl {
            url: redact_url(url),
        });
    }
    let name = format!("chunkflow-{role}@{}", std::process::id());
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(timeout, Connection::connect(url, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(cause)) => Err(ConnectError::Refused {
            url: redact_url(url),
            cause,
        }),
        Err(_elapsed) => Err(ConnectError::TimedOut {
            url: redact_url(url),
            after: timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_namespace() {
        let topology = Topology::new("ns");
        assert_eq!(topology.map_queue(), "ns.map");
        assert_eq!(topology.reduce_queue(), "ns.reduce");
        assert_eq!(topology.dead_letter_exchange(), "ns.dlx");
        assert_eq!(topology.dead_watch_queue(), "ns.dead-watch");
        assert_eq!(
            topology.queues(),
            ["ns.map", "ns.reduce", "ns.dead", "ns.dead-watch"]
        );
    }

    #[test]
    fn task_queues_are_quorum_queues_dead_lettering_with_a_limit() {
        let args = Topology::new("ns").task_queue_arguments();
        let args = args.inner();
        assert_eq!(
            args.get("x-queue-type"),
            Some(&AMQPValue::LongString(LongString::from("quorum")))
        );
        assert_eq!(
            args.get("x-dead-letter-exchange"),
            Some(&AMQPValue::LongString(LongString::from("ns.dlx")))
        );
        assert_eq!(
            args.get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(DELIVERY_LIMIT))
        );
    }

    #[test]
    fn a_connection_names_its_broker_and_timeout() {
        let mut config = ConnectionConfig::local("ns");
        config.amqp_url = "amqp://u:pw@broker:5672/%2f".into();
        config.broker_timeout = std::time::Duration::from_secs(7);
        let topology = Topology::for_connection(&config);
        assert_eq!(topology.map_queue(), "ns.map");
        assert_eq!(
            topology.deadline(),
            &BrokerDeadline::new(
                "amqp://u:***@broker:5672/%2f",
                std::time::Duration::from_secs(7)
            )
        );
    }

    #[tokio::test]
    async fn a_silent_broker_fails_the_connect_in_time() {
        // A listener that accepts and never speaks AMQP.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("amqp://guest:pw@{}/%2f", listener.local_addr().unwrap());
        let error = connect_within(&url, "test", std::time::Duration::from_millis(200))
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, ConnectError::TimedOut { .. }), "{text}");
        assert!(
            text.contains("did not answer `connect` within 200ms") && !text.contains("pw@"),
            "{text}"
        );
        drop(listener);
    }
}
