//! A deadline on every wait for RabbitMQ: connecting, opening a channel, declaring,
//! consuming, publishing and every publisher confirm. A broker that stops answering (a
//! half-open TCP connection, a stuck channel, a queue without a leader) turns into a typed
//! error naming what did not answer and after how long, never into a task that hangs.
//!
//! Must not: retry or reconnect (the callers decide that), or print a password (the broker
//! is named by its redacted URL: on a cluster, the node's that was waited on, see
//! `Topology::at_node`).

use std::future::Future;
use std::time::Duration;

use crate::config::redact_url;

/// How long one broker operation may take when nothing else says so.
pub const DEFAULT_BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait for RabbitMQ, and how to name it in errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerDeadline {
    /// `RabbitMQ at <redacted url>`, or `RabbitMQ` when the URL is not known here.
    broker: String,
    timeout: Duration,
}

/// Why a broker operation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{broker} did not answer `{what}` within {after:?}")]
    TimedOut {
        broker: String,
        what: String,
        after: Duration,
    },
    // The cause is in the message, not the source: `{:#}` would print it twice. Boxed:
    // errors travel in `Result`s on every path, keep them small.
    #[error("{broker} failed `{what}`: {cause}")]
    Failed {
        broker: String,
        what: String,
        cause: Box<lapin::Error>,
    },
}

impl BrokerError {
    /// Whether the operation ran out of time (rather than being refused).
    pub fn is_timeout(&self) -> bool {
        matches!(self, BrokerError::TimedOut { .. })
    }
}

impl Default for BrokerDeadline {
    fn default() -> Self {
        BrokerDeadline {
            broker: "RabbitMQ".to_string(),
            timeout: DEFAULT_BROKER_TIMEOUT,
        }
    }
}

impl BrokerDeadline {
    /// A deadline of `timeout` per operation on the broker at `amqp_url` (the node a
    /// connection goes to; before connecting, the list of a cluster's nodes).
    pub fn new(amqp_url: &str, timeout: Duration) -> Self {
        BrokerDeadline {
            broker: format!("RabbitMQ at {}", redact_url(amqp_url)),
            timeout,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The error of `what` not answering in time.
    pub fn timed_out(&self, what: impl Into<String>) -> BrokerError {
        BrokerError::TimedOut {
            broker: self.broker.clone(),
            what: what.into(),
            after: self.timeout,
        }
    }

    /// Runs `operation`, named `what` in errors, within the deadline.
    pub async fn run<T>(
        &self,
        what: impl Into<String>,
        operation: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T, BrokerError> {
        match tokio::time::timeout(self.timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(cause)) => Err(BrokerError::Failed {
                broker: self.broker.clone(),
                what: what.into(),
                cause: Box::new(cause),
            }),
            Err(_elapsed) => Err(self.timed_out(what)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_broker_is_named_with_what_and_how_long() {
        let deadline = BrokerDeadline::new(
            "amqp://guest:secret@127.0.0.1:5672/%2f",
            Duration::from_millis(20),
        );
        let error = deadline
            .run(
                "declare queue ns.map",
                std::future::pending::<lapin::Result<()>>(),
            )
            .await
            .unwrap_err();
        assert!(error.is_timeout());
        assert_eq!(
            error.to_string(),
            "RabbitMQ at amqp://guest:***@127.0.0.1:5672/%2f did not answer `declare queue ns.map` within 20ms"
        );
    }

    #[tokio::test]
    async fn answers_and_refusals_pass_through() {
        let deadline = BrokerDeadline::default();
        assert_eq!(deadline.timeout(), DEFAULT_BROKER_TIMEOUT);
        let value = deadline.run("noop", async { Ok(7) }).await.unwrap();
        assert_eq!(value, 7);
        let refused = deadline
            .run("basic.qos", async {
                Err::<(), _>(lapin::Error::from(lapin::ErrorKind::InvalidChannel(3)))
            })
            .await
            .unwrap_err();
        assert!(!refused.is_timeout());
        assert!(refused
            .to_string()
            .starts_with("RabbitMQ failed `basic.qos`: "));
    }
}
