//! Wire messages, encoded and decoded here and nowhere else.
//!
//! A map task carries the chunk's bytes as the message body, untouched (no base64, no JSON
//! escaping), and its metadata in typed AMQP headers; its `type` property names the message
//! kind and version. A reduce task is a small JSON document. Every message is persistent
//! and carries a message id, app id and timestamp so queue tools show it usefully.
//!
//! Decoding never panics: anything unexpected is a [`DecodeError`], which consumers treat as
//! permanent (the message goes to the dead-letter queue and the consumer carries on).

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};

use crate::job::JobId;

/// `type` property of a map task.
pub const MAP_TASK_TYPE: &str = "chunkflow.map.v1";
/// `type` property of a reduce task.
pub const REDUCE_TASK_TYPE: &str = "chunkflow.reduce.v1";

/// Metadata of one chunk; its bytes travel as the message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapTask {
    pub job_id: JobId,
    pub chunk: u64,
    pub source: String,
    pub offset: u64,
    pub first_line: u64,
}

/// One partition to reduce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReduceTask {
    #[serde(rename = "job")]
    pub job_id: JobId,
    pub partition: u32,
}

/// Why a delivery is not a valid task. Always permanent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message type {found:?} is not {expected:?} (unknown kind or version)")]
    WrongType {
        expected: &'static str,
        found: Option<String>,
    },
    #[error("header `{0}` is missing or has the wrong type")]
    BadHeader(&'static str),
    #[error("invalid job id in message: {0}")]
    BadJobId(String),
    #[error("body is not a valid reduce task: {0}")]
    BadBody(String),
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn base_properties(kind: &str, message_id: String, content_type: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_type(ShortString::from(kind))
        .with_content_type(ShortString::from(content_type))
        .with_message_id(ShortString::from(message_id))
        .with_app_id(ShortString::from("chunkflow"))
        .with_timestamp(now_secs())
}

impl MapTask {
    /// Message id, also the idempotency key of the chunk.
    pub fn message_id(&self) -> String {
        format!("{}/map/{}", self.job_id, self.chunk)
    }

    /// AMQP properties of the message carrying this chunk.
    pub fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            "job".into(),
            AMQPValue::LongString(LongString::from(self.job_id.as_str())),
        );
        headers.insert("chunk".into(), AMQPValue::LongLongInt(self.chunk as i64));
        headers.insert(
            "source".into(),
            AMQPValue::LongString(LongString::from(self.source.as_str())),
        );
        headers.insert("offset".into(), AMQPValue::LongLongInt(self.offset as i64));
        headers.insert(
            "line".into(),
            AMQPValue::LongLongInt(self.first_line as i64),
        );
        base_properties(MAP_TASK_TYPE, self.message_id(), "application/octet-stream")
            .with_headers(headers)
    }

    /// Reads the task from a delivery's properties.
    pub fn decode(properties: &BasicProperties) -> Result<MapTask, DecodeError> {
        check_type(properties, MAP_TASK_TYPE)?;
        let headers = properties
            .headers()
            .as_ref()
            .ok_or(DecodeError::BadHeader("job"))?;
        let job_id = JobId::parse(&header_string(headers, "job")?)
            .map_err(|e| DecodeError::BadJobId(e.to_string()))?;
        Ok(MapTask {
            job_id,
            chunk: header_u64(headers, "chunk")?,
            source: header_string(headers, "source")?,
            offset: header_u64(headers, "offset")?,
            first_line: header_u64(headers, "line")?,
        })
    }
}

impl ReduceTask {
    pub fn message_id(&self) -> String {
        format!("{}/reduce/{}", self.job_id, self.partition)
    }

    pub fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            "job".into(),
            AMQPValue::LongString(LongString::from(self.job_id.as_str())),
        );
        headers.insert(
            "partition".into(),
            AMQPValue::LongLongInt(i64::from(self.partition)),
        );
        base_properties(REDUCE_TASK_TYPE, self.message_id(), "application/json")
            .with_headers(headers)
    }

    pub fn body(&self) -> Vec<u8> {
        // Serializing a struct of a string and an integer cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(properties: &BasicProperties, body: &[u8]) -> Result<ReduceTask, DecodeError> {
        check_type(properties, REDUCE_TASK_TYPE)?;
        #[derive(Deserialize)]
        struct Wire {
            job: String,
            partition: u32,
        }
        let wire: Wire =
            serde_json::from_slice(body).map_err(|e| DecodeError::BadBody(e.to_string()))?;
        let job_id = JobId::parse(&wire.job).map_err(|e| DecodeError::BadJobId(e.to_string()))?;
        Ok(ReduceTask {
            job_id,
            partition: wire.partition,
        })
    }
}

/// How many times the broker delivered this message before (quorum queues count returns
/// in the `x-delivery-count` header; absent on a first delivery).
pub fn previous_deliveries(properties: &BasicProperties) -> u64 {
    properties
        .headers()
        .as_ref()
        .and_then(|headers| header_u64(headers, "x-delivery-count").ok())
        .unwrap_or(0)
}

fn check_type(properties: &BasicProperties, expected: &'static str) -> Result<(), DecodeError> {
    let found = properties.kind().as_ref().map(|k| k.as_str().to_string());
    if found.as_deref() == Some(expected) {
        Ok(())
    } else {
        Err(DecodeError::WrongType { expected, found })
    }
}

fn header_string(headers: &FieldTable, name: &'static str) -> Result<String, DecodeError> {
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => {
            String::from_utf8(s.as_bytes().to_vec()).map_err(|_| DecodeError::BadHeader(name))
        }
        Some(AMQPValue::ShortString(s)) => Ok(s.as_str().to_string()),
        _ => Err(DecodeError::BadHeader(name)),
    }
}

fn header_u64(headers: &FieldTable, name: &'static str) -> Result<u64, DecodeError> {
    let value = match headers.inner().get(name) {
        Some(AMQPValue::LongLongInt(v)) => *v,
        Some(AMQPValue::LongInt(v)) => i64::from(*v),
        Some(AMQPValue::LongUInt(v)) => i64::from(*v),
        Some(AMQPValue::ShortInt(v)) => i64::from(*v),
        Some(AMQPValue::ShortUInt(v)) => i64::from(*v),
        Some(AMQPValue::ShortShortInt(v)) => i64::from(*v),
        Some(AMQPValue::ShortShortUInt(v)) => i64::from(*v),
        _ => return Err(DecodeError::BadHeader(name)),
    };
    u64::try_from(value).map_err(|_| DecodeError::BadHeader(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_task_round_trips() {
        let task = MapTask {
            job_id: JobId::parse("j-1").unwrap(),
            chunk: 42,
            source: "dir/ü.txt".into(),
            offset: 1 << 40,
            first_line: 7,
        };
        assert_eq!(MapTask::decode(&task.properties()).unwrap(), task);
    }

    #[test]
    fn reduce_task_round_trips() {
        let task = ReduceTask {
            job_id: JobId::parse("j-1").unwrap(),
            partition: 3,
        };
        assert_eq!(
            ReduceTask::decode(&task.properties(), &task.body()).unwrap(),
            task
        );
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(matches!(
            MapTask::decode(&BasicProperties::default()),
            Err(DecodeError::WrongType { .. })
        ));
        let props = BasicProperties::default().with_type(MAP_TASK_TYPE.into());
        assert!(matches!(
            MapTask::decode(&props),
            Err(DecodeError::BadHeader("job"))
        ));
        let mut bad_id = MapTask {
            job_id: JobId::parse("x").unwrap(),
            chunk: 0,
            source: "s".into(),
            offset: 0,
            first_line: 1,
        }
        .properties();
        let mut headers = bad_id.headers().clone().unwrap();
        headers.insert(
            "job".into(),
            AMQPValue::LongString(LongString::from("a{b}*")),
        );
        bad_id = bad_id.with_headers(headers);
        assert!(matches!(
            MapTask::decode(&bad_id),
            Err(DecodeError::BadJobId(_))
        ));
        let reduce = ReduceTask {
            job_id: JobId::parse("j").unwrap(),
            partition: 0,
        };
        assert!(ReduceTask::decode(&reduce.properties(), b"{not json").is_err());
        assert!(ReduceTask::decode(&reduce.properties(), br#"{"job":"j"}"#).is_err());
    }

    #[test]
    fn the_delivery_count_header_counts_earlier_deliveries() {
        assert_eq!(previous_deliveries(&BasicProperties::default()), 0);
        let with = |value: AMQPValue| {
            let mut headers = FieldTable::default();
            headers.insert("x-delivery-count".into(), value);
            BasicProperties::default().with_headers(headers)
        };
        assert_eq!(previous_deliveries(&with(AMQPValue::LongLongInt(3))), 3);
        assert_eq!(previous_deliveries(&with(AMQPValue::LongInt(2))), 2);
        assert_eq!(previous_deliveries(&with(AMQPValue::ShortShortUInt(1))), 1);
        // Nonsense counts as a first delivery rather than failing the task.
        assert_eq!(previous_deliveries(&with(AMQPValue::LongLongInt(-1))), 0);
        assert_eq!(
            previous_deliveries(&with(AMQPValue::LongString(LongString::from("2")))),
            0
        );
    }
}
