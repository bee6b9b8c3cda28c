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
//!
//! Task queues are quorum queues: replicated and durable, with a delivery limit so a message
//! that kills every worker that takes it is dead-lettered instead of looping forever.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::config::redact_url;

/// A redelivered message past this many returns to its queue is dead-lettered.
pub const DELIVERY_LIMIT: i64 = 20;

/// Names and declarations of one namespace's queues.
#[derive(Debug, Clone)]
pub struct Topology {
    namespace: String,
}

impl Topology {
    pub fn new(namespace: &str) -> Self {
        Topology {
            namespace: namespace.to_string(),
        }
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
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.dead_letter_exchange().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.dead_letter_queue().into(),
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                self.dead_letter_queue().into(),
                self.dead_letter_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for queue in [self.map_queue(), self.reduce_queue()] {
            channel
                .queue_declare(queue.into(), durable, self.task_queue_arguments())
                .await?;
        }
        Ok(())
    }

    /// Ready-message count of a queue (passive declare: fails if the queue is missing).
    pub async fn ready_messages(&self, channel: &Channel, queue: &str) -> lapin::Result<u32> {
        Ok(self.queue_counts(channel, queue).await?.0)
    }

    /// Every queue of the namespace: map, reduce, dead letters.
    pub fn queues(&self) -> [String; 3] {
        [
            self.map_queue(),
            self.reduce_queue(),
            self.dead_letter_queue(),
        ]
    }

    /// Ready messages and consumers of a queue (passive declare: fails, closing the
    /// channel, if the queue is missing).
    pub async fn queue_counts(&self, channel: &Channel, queue: &str) -> lapin::Result<(u32, u32)> {
        let queue = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok((queue.message_count(), queue.consumer_count()))
    }

    /// Deletes every queue and exchange of the namespace (tests and teardown).
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for queue in self.queues() {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        channel
            .exchange_delete(
                self.dead_letter_exchange().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
    }
}

/// Why the broker could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to RabbitMQ at {url}: {source}; is it running? (start it with `rabbitmq-server -detached`, or set --amqp-url / AMQP_URL)")]
pub struct ConnectError {
    pub url: String,
    #[source]
    pub source: lapin::Error,
}

/// Opens a broker connection named after the process role (shown in the management UI).
pub async fn connect(url: &str, role: &str) -> Result<Connection, ConnectError> {
    let name = format!("chunkflow-{role}@{}", std::process::id());
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties)
        .await
        .map_err(|source| ConnectError {
            url: redact_url(url),
            source,
        })
}
