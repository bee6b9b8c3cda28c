//! Publishing with confirms, through a bounded window.
//!
//! Every message is published `mandatory` on a channel in confirm mode. The publisher keeps
//! the confirms of what it has sent but not yet had confirmed, and waits for the oldest
//! when the window's bytes pass a limit: throughput without holding the whole input in
//! flight. A nack, a return (no queue bound) or a lost channel is an error; a caller
//! reports success only after [`Publisher::flush`] returned `Ok`.

use std::collections::VecDeque;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation, Connection, PublisherConfirm};

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
}

struct InFlight {
    confirm: PublisherConfirm,
    bytes: usize,
    what: String,
}

/// A confirm-mode channel with a window of unconfirmed messages.
pub struct Publisher {
    channel: lapin::Channel,
    window: VecDeque<InFlight>,
    window_bytes: usize,
    max_window_bytes: usize,
    confirmed: u64,
}

impl Publisher {
    /// Opens a channel in confirm mode. `max_window_bytes` bounds unconfirmed bytes.
    pub async fn open(connection: &Connection, max_window_bytes: usize) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            channel,
            window: VecDeque::new(),
            window_bytes: 0,
            max_window_bytes: max_window_bytes.max(1),
            confirmed: 0,
        })
    }

    /// The channel, for declares and queue inspection.
    pub fn channel(&self) -> &lapin::Channel {
        &self.channel
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
        let what = what.into();
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(PublishError::TooLarge {
                what,
                size: body.len(),
            });
        }
        while !self.window.is_empty() && self.window_bytes + body.len() > self.max_window_bytes {
            self.confirm_oldest().await?;
        }
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .map_err(|source| PublishError::Broker {
                what: what.clone(),
                source,
            })?;
        self.window_bytes += body.len();
        self.window.push_back(InFlight {
            confirm,
            bytes: body.len(),
            what,
        });
        Ok(())
    }

    async fn confirm_oldest(&mut self) -> Result<(), PublishError> {
        let Some(in_flight) = self.window.pop_front() else {
            return Ok(());
        };
        self.window_bytes -= in_flight.bytes;
        let what = in_flight.what;
        let confirmation = in_flight
            .confirm
            .await
            .map_err(|source| PublishError::Broker {
                what: what.clone(),
                source,
            })?;
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
            Confirmation::Nack(None) => Err(PublishError::Nacked { what }),
            Confirmation::NotRequested => Err(PublishError::Nacked { what }),
        }
    }

    /// Waits until every message published so far is confirmed.
    pub async fn flush(&mut self) -> Result<(), PublishError> {
        while !self.window.is_empty() {
            self.confirm_oldest().await?;
        }
        Ok(())
    }
}
