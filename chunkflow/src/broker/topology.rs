//! The broker topology: queue and exchange names and their declare options. Every binary
//! declares through [`Topology::declare`], also after a reconnect, so the options can never
//! disagree (RabbitMQ answers a mismatched redeclare with PRECONDITION_FAILED).
//!
//! | name | kind | role |
//! |---|---|---|
//! | `ns.map` | quorum queue | one message per chunk; body = the chunk's bytes |
//! | `ns.reduce` | quorum queue | one JSON message per partition to reduce |
//! | `ns.dlx` | fanout exchange | dead-letter exchange of both task queues |
//! | `ns.dead` | quorum queue | rejected (undecodable, poison) messages, for inspection |
//! | `ns.dead-watch` | quorum queue | a second copy of every dead letter, consumed by reducers, which fail the live job it belongs to |
//!
//! Every queue is a quorum queue: durable, and replicated on the nodes of a RabbitMQ cluster
//! (by default on all of them), so losing a node loses no queue. Task queues have a
//! delivery limit so a message that kills every worker that takes it is dead-lettered
//! instead of looping forever. The dead-letter queues are quorum queues too because every
//! client declares the whole topology on each connection, and a classic durable queue
//! whose node is down refuses even a redeclare (404 "home node ... is down"): one lost node
//! would stop every client. Namespaces whose dead-letter queues an earlier version declared
//! as classic queues keep them (the redeclare's PRECONDITION_FAILED is taken as "exists"),
//! with a warning; delete them to have them declared replicated.
//!
//! Every declare, passive declare and connect runs within a [`BrokerDeadline`]: a broker
//! that does not answer is an error naming what it did not answer, never a hang.
//!
//! Every connection to RabbitMQ is opened here, by [`connect`], over [`BrokerNodes`]: the
//! URLs of `--amqp-url`, one broker or the nodes of one cluster. A client tries them in
//! turn from a node picked at random per process (so clients spread over the cluster) and
//! takes the first that answers; the next connect of the same client (a reconnect after
//! losing its connection) begins with the node after the one it had, not with the one that
//! may just have gone down. Queues being quorum queues, replicated on every node, a client
//! may consume and publish through any node.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::broker::deadline::{BrokerDeadline, BrokerError};
use crate::config::{redact_url, redact_within, split_url_list, ConnectionConfig};

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

    /// This topology with the same timeout, naming in its errors the node `connected` is
    /// connected to (the one that did not answer), not the whole list.
    pub fn at_node(&self, connected: &Connected) -> Topology {
        Topology {
            namespace: self.namespace.clone(),
            deadline: BrokerDeadline::new(&connected.url, self.deadline.timeout()),
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

    /// The queue reducers consume dead letters from (bound to the same fanout exchange as
    /// [`Topology::dead_letter_queue`], so `ns.dead` keeps its copy for people to inspect).
    pub fn dead_watch_queue(&self) -> String {
        format!("{}.dead-watch", self.namespace)
    }

    /// The arguments of the dead-letter queues: replicated like the task queues, without a
    /// dead-letter exchange of their own.
    fn dead_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        args
    }

    fn task_queue_arguments(&self) -> FieldTable {
        let mut args = self.dead_queue_arguments();
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

    /// Declares (idempotently) every exchange and queue of the namespace, on channels of
    /// its own (a refused declare closes its channel).
    pub async fn declare(&self, connection: &Connection) -> Result<(), BrokerError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut channel = self
            .deadline
            .run("open a channel to declare", connection.create_channel())
            .await?;
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
            let declared = self
                .deadline
                .run(
                    format!("declare queue {dead}"),
                    channel.queue_declare(
                        dead.as_str().into(),
                        durable,
                        self.dead_queue_arguments(),
                    ),
                )
                .await;
            match declared {
                Ok(_) => {}
                Err(error) if is_precondition_failed(&error) => {
                    // Declared by an earlier version, as a classic queue: keep it as it is
                    // (it must exist: a passive declare), on a new channel.
                    channel = self
                        .deadline
                        .run("open a channel to declare", connection.create_channel())
                        .await?;
                    self.deadline
                        .run(
                            format!("find queue {dead}"),
                            channel.queue_declare(
                                dead.as_str().into(),
                                QueueDeclareOptions {
                                    passive: true,
                                    ..QueueDeclareOptions::default()
                                },
                                FieldTable::default(),
                            ),
                        )
                        .await?;
                    warn_classic_dead_queue(&dead);
                }
                Err(error) => return Err(error),
            }
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
        let _ = tokio::time::timeout(
            self.deadline.timeout(),
            channel.close(200, "declared".into()),
        )
        .await;
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

/// Whether the broker refused an operation with PRECONDITION_FAILED (a redeclare with
/// other arguments than the queue has).
fn is_precondition_failed(error: &BrokerError) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    match error {
        BrokerError::Failed { cause, .. } => matches!(
            cause.kind(),
            lapin::ErrorKind::ProtocolError(amqp)
                if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
        ),
        BrokerError::TimedOut { .. } => false,
    }
}

/// Warns, once per queue and process, that a dead-letter queue is a classic queue.
fn warn_classic_dead_queue(queue: &str) {
    static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !warned.iter().any(|name| name == queue) {
        warned.push(queue.to_string());
        tracing::warn!(
            queue,
            "this dead-letter queue was declared by an earlier version as a classic queue, which lives on one node: \
             while that node is down no client can declare the topology. Delete it when it is empty \
             (`rabbitmqctl delete_queue {queue}`) to have it declared as a replicated quorum queue"
        );
    }
}

/// Why the broker could not be reached. URLs are shown redacted.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    // The cause is in the message, so it is not also a `source` (it would print twice).
    #[error("cannot connect to RabbitMQ at {url}: {cause}; is it running? (start it with `rabbitmq-server -detached`, or set --amqp-url / AMQP_URL)")]
    Refused { url: String, cause: lapin::Error },
    #[error("`{url}` is not a RabbitMQ URL: it must start with amqp:// or amqps:// (set --amqp-url / AMQP_URL)")]
    NotAnAmqpUrl { url: String },
    #[error("invalid RabbitMQ URL {url}: {reason} (set --amqp-url / AMQP_URL)")]
    InvalidUrl { url: String, reason: String },
    #[error("no RabbitMQ URL given: set --amqp-url / AMQP_URL to a broker's URL, or to the URLs of a cluster's nodes separated by commas")]
    NoUrl,
    #[error("RabbitMQ at {url} did not answer `connect` within {after:?}; is it running and reachable? (or set --amqp-url / AMQP_URL, --broker-timeout)")]
    TimedOut { url: String, after: Duration },
    /// Every node of a list refused or did not answer.
    #[error("no RabbitMQ node answered: tried {}; is the cluster running and reachable? (or set --amqp-url / AMQP_URL, --broker-timeout)", tried_text(.tried))]
    NoNodeAnswered { tried: Vec<NodeFailure> },
}

/// One node of a list that did not give a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFailure {
    /// The node's URL, redacted.
    pub url: String,
    /// What went wrong, redacted.
    pub cause: String,
}

fn tried_text(tried: &[NodeFailure]) -> String {
    tried
        .iter()
        .map(|failure| format!("{} ({})", failure.url, failure.cause))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The nodes of one RabbitMQ cluster a client connects through (or the one broker): the
/// URLs of `--amqp-url`, each validated, and where this client's next connect begins.
/// Each client (a consume loop, a publisher, the janitor, a view) keeps its own, for as
/// long as it reconnects.
pub struct BrokerNodes {
    /// Never printed: they carry passwords.
    urls: Vec<String>,
    /// The node the next [`connect`] tries first.
    next: AtomicUsize,
}

impl std::fmt::Debug for BrokerNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerNodes")
            .field(
                "urls",
                &self
                    .urls
                    .iter()
                    .map(|url| redact_url(url))
                    .collect::<Vec<_>>(),
            )
            .field("next", &self.next.load(Ordering::Relaxed))
            .finish()
    }
}

impl Clone for BrokerNodes {
    /// Another client's rotation over the same nodes, beginning where this one is.
    fn clone(&self) -> Self {
        BrokerNodes {
            urls: self.urls.clone(),
            next: AtomicUsize::new(self.next.load(Ordering::Relaxed)),
        }
    }
}

impl BrokerNodes {
    /// The nodes of `list` (one URL, or several separated by commas), each checked, the
    /// first connect beginning at this process's pick among them.
    pub fn parse(list: &str) -> Result<BrokerNodes, ConnectError> {
        let urls = split_url_list(list);
        if urls.is_empty() {
            return Err(ConnectError::NoUrl);
        }
        for url in &urls {
            check_url(url)?;
        }
        let first = first_node(urls.len());
        Ok(BrokerNodes {
            urls: urls.into_iter().map(str::to_string).collect(),
            next: AtomicUsize::new(first),
        })
    }

    /// The nodes of `connection.amqp_url`.
    pub fn for_connection(connection: &ConnectionConfig) -> Result<BrokerNodes, ConnectError> {
        BrokerNodes::parse(&connection.amqp_url)
    }

    /// How many nodes there are (at least one).
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Never: a list has at least one node.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }
}

/// Refuses what is not an AMQP URL, before connecting: a mistyped `amqp:/user:pw@host`
/// would otherwise reach the default host with the rest as a vhost name, which the broker
/// echoes back in its error.
fn check_url(url: &str) -> Result<(), ConnectError> {
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err(ConnectError::NotAnAmqpUrl {
            url: redact_url(url),
        });
    }
    if let Err(error) = url.parse::<lapin::uri::AMQPUri>() {
        return Err(ConnectError::InvalidUrl {
            url: redact_url(url),
            // The parser's message quotes the URL it refused, password and all.
            reason: redact_within(&error.to_string(), url),
        });
    }
    Ok(())
}

/// The order in which one connect tries `nodes` nodes beginning with `first`: each once,
/// wrapping around.
fn rotation(nodes: usize, first: usize) -> impl Iterator<Item = usize> {
    (0..nodes).map(move |step| (first + step) % nodes.max(1))
}

/// Where the next connect of a client begins, after one that began at `first` and got a
/// connection to `connected` (or none): the node after the one it got, so that a client
/// that loses its connection tries the other nodes before the one that may have just gone
/// down; after a connect that found no node, the node after `first`, so rounds do not
/// always begin with the same one.
fn next_first(nodes: usize, first: usize, connected: Option<usize>) -> usize {
    (connected.unwrap_or(first) + 1) % nodes.max(1)
}

/// The node a process's clients try first: one picked at random once per process, so the
/// processes of a deployment given the same list spread over its nodes. With fault
/// injection, `CHUNKFLOW_FAULT=amqp-in-order` makes it the first node of the list (tests
/// place each process on a node by the order of its list).
fn first_node(nodes: usize) -> usize {
    static PICK: OnceLock<usize> = OnceLock::new();
    let pick = *PICK.get_or_init(|| {
        if crate::fault::Faults::from_env().amqp_in_order {
            return 0;
        }
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        std::process::id().hash(&mut hasher);
        std::time::SystemTime::now().hash(&mut hasher);
        // Truncation is fine: any bits of a random number are random.
        hasher.finish() as usize
    });
    pick % nodes.max(1)
}

/// A connection to one node, and which node.
pub struct Connected {
    pub connection: Connection,
    /// The node's URL (with its password: never shown; see [`Connected::node`]).
    url: String,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("node", &self.node())
            .finish_non_exhaustive()
    }
}

impl Connected {
    /// The node connected to: its URL, redacted.
    pub fn node(&self) -> String {
        redact_url(&self.url)
    }

    /// The node's URL, password and all, for what must reach the same node (the vhost of
    /// the management API); never for a log or an error.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Opens a broker connection named after the process role (shown in the management UI and
/// `rabbitmqctl list_connections`) to the first of `nodes` that answers, in the client's
/// rotation; each node may take `timeout`. The one way every client connects.
pub async fn connect(
    nodes: &BrokerNodes,
    role: &str,
    timeout: Duration,
) -> Result<Connected, ConnectError> {
    let count = nodes.urls.len();
    let first = nodes.next.load(Ordering::Relaxed) % count.max(1);
    let name = format!("chunkflow-{role}@{}", std::process::id());
    let mut tried = Vec::new();
    let mut single_failure = None;
    for node in rotation(count, first) {
        let url = &nodes.urls[node];
        let properties = ConnectionProperties::default().with_connection_name(name.clone().into());
        let failure = match tokio::time::timeout(timeout, Connection::connect(url, properties))
            .await
        {
            Ok(Ok(connection)) => {
                nodes
                    .next
                    .store(next_first(count, first, Some(node)), Ordering::Relaxed);
                if count > 1 {
                    tracing::info!(role, node = %redact_url(url), "connected to a RabbitMQ node");
                }
                return Ok(Connected {
                    connection,
                    url: url.clone(),
                });
            }
            Ok(Err(cause)) => {
                let text = redact_within(&cause.to_string(), url);
                tried.push(NodeFailure {
                    url: redact_url(url),
                    cause: text,
                });
                ConnectError::Refused {
                    url: redact_url(url),
                    cause,
                }
            }
            Err(_elapsed) => {
                tried.push(NodeFailure {
                    url: redact_url(url),
                    cause: format!("no answer within {timeout:?}"),
                });
                ConnectError::TimedOut {
                    url: redact_url(url),
                    after: timeout,
                }
            }
        };
        if count > 1 {
            tracing::warn!(role, error = %failure, "a RabbitMQ node did not give a connection; trying the next");
        }
        single_failure = Some(failure);
    }
    nodes
        .next
        .store(next_first(count, first, None), Ordering::Relaxed);
    match single_failure {
        Some(failure) if count == 1 => Err(failure),
        _ => Err(ConnectError::NoNodeAnswered { tried }),
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
        // The dead-letter queues are replicated too, and dead-letter nowhere themselves.
        let dead = Topology::new("ns").dead_queue_arguments();
        let dead = dead.inner();
        assert_eq!(
            dead.get("x-queue-type"),
            Some(&AMQPValue::LongString(LongString::from("quorum")))
        );
        assert_eq!(dead.len(), 1);
    }

    #[test]
    fn only_a_precondition_failure_means_declared_otherwise() {
        use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPSoftError};
        let refused = |soft: AMQPSoftError| BrokerError::Failed {
            broker: "RabbitMQ".into(),
            what: "declare queue ns.dead".into(),
            cause: Box::new(lapin::Error::from(lapin::ErrorKind::ProtocolError(
                AMQPError::new(AMQPErrorKind::Soft(soft), "inequivalent arg".into()),
            ))),
        };
        assert!(is_precondition_failed(&refused(
            AMQPSoftError::PRECONDITIONFAILED
        )));
        assert!(!is_precondition_failed(&refused(AMQPSoftError::NOTFOUND)));
        assert!(!is_precondition_failed(
            &BrokerDeadline::default().timed_out("declare queue ns.dead")
        ));
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
        let nodes = BrokerNodes::parse(&url).unwrap();
        let error = connect(&nodes, "test", Duration::from_millis(200))
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

    #[test]
    fn a_connect_tries_every_node_once_from_its_first() {
        assert_eq!(rotation(3, 0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(rotation(3, 2).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(rotation(1, 0).collect::<Vec<_>>(), [0]);
        assert_eq!(rotation(0, 0).count(), 0);
    }

    #[test]
    fn a_reconnect_begins_past_the_node_it_had() {
        // Connected to node 1 (of 3): losing it, the client tries 2, then 0, then 1.
        let next = next_first(3, 0, Some(1));
        assert_eq!(next, 2);
        assert_eq!(rotation(3, next).collect::<Vec<_>>(), [2, 0, 1]);
        // The last node wraps around to the first.
        assert_eq!(next_first(3, 1, Some(2)), 0);
        // No node answered: the next round begins one further on.
        assert_eq!(next_first(3, 2, None), 0);
        assert_eq!(next_first(3, 0, None), 1);
        // A single broker is always tried first.
        assert_eq!(next_first(1, 0, Some(0)), 0);
        assert_eq!(next_first(1, 0, None), 0);
    }

    #[test]
    fn every_url_of_a_list_is_checked_and_none_shown_with_its_password() {
        let nodes =
            BrokerNodes::parse(" amqp://u:PW@a:5681/%2f, amqps://u:PW@b:5682/%2f ,").unwrap();
        assert_eq!(nodes.len(), 2);
        assert!(first_node(2) < 2);
        let shown = format!("{nodes:?}");
        assert!(
            shown.contains("u:***@b:5682") && !shown.contains("PW"),
            "{shown}"
        );
        for (list, says) in [
            ("amqp://u:PW@a/%2f,http://u:PW@b", "is not a RabbitMQ URL"),
            ("amqp://u:PW@a/%2f,amqp:/u:PW@b", "is not a RabbitMQ URL"),
            ("amqp://u:PW@a:port/%2f", "invalid RabbitMQ URL"),
            (" , ", "no RabbitMQ URL given"),
        ] {
            let error = BrokerNodes::parse(list).unwrap_err().to_string();
            assert!(error.contains(says), "{list}: {error}");
            assert!(!error.contains("PW"), "{list}: {error}");
        }
    }

    #[tokio::test]
    async fn a_list_where_no_node_answers_names_every_node_tried() {
        // Two ports nothing listens on (bound, then released).
        let ports: Vec<u16> = (0..2)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            })
            .collect();
        let list = format!(
            "amqp://guest:PW@127.0.0.1:{}/%2f,amqp://guest:PW@127.0.0.1:{}/%2f",
            ports[0], ports[1]
        );
        let nodes = BrokerNodes::parse(&list).unwrap();
        let first = nodes.next.load(Ordering::Relaxed);
        let error = connect(&nodes, "test", Duration::from_secs(5))
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("no RabbitMQ node answered: tried amqp://guest:***@127.0.0.1:"),
            "{text}"
        );
        for port in ports {
            assert!(text.contains(&format!("127.0.0.1:{port}/%2f (")), "{text}");
        }
        assert!(!text.contains("PW"), "{text}");
        // The next round begins one node further on.
        assert_eq!(nodes.next.load(Ordering::Relaxed), (first + 1) % 2);
    }
}
