//! Heartbeat records: every worker and reducer announces itself in Redis with a time to
//! live, so `producer workers` and the dashboard list the live ones and a dead process
//! disappears by itself once its record expires.
//!
//! A record is the hash `ns:workers:ID` (id, role, host, pid, version, started, current
//! task, tasks done, last seen, metrics address) with a TTL, and the id in the sorted set
//! `ns:workers` scored by the record's expiry time. The heartbeat rewrites both every third
//! of the TTL; a process stopped gracefully deletes its record at once. Readers prune
//! expired ids from the index, so a killed process leaves nothing behind for long.
//!
//! The record and the index are in different slots of a Redis Cluster, so they are written
//! by separate requests (each one slot), and the records are read one request each; the
//! same code runs on one server.
//!
//! This is observability only: no decision of the pipeline depends on these records. The
//! connection these functions take comes from `store::connect_dedicated` (the store's one
//! connection factory); nothing here opens one.

use std::collections::BTreeMap;
use std::time::Duration;

use deadpool_redis::redis;
use serde::Serialize;

use crate::job::now_ms;
use crate::store::keys::Keys;
use crate::store::RedisConnection;

/// One live worker or reducer, as its heartbeat describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceRecord {
    pub id: String,
    pub role: String,
    pub host: String,
    pub pid: u32,
    pub version: String,
    pub started_ms: u64,
    /// Message id of the task in hand (`job/map/3`, `job/reduce/1`), if any.
    pub current_task: Option<String>,
    pub tasks_done: u64,
    pub last_seen_ms: u64,
    /// Where it serves `/metrics`, if it does.
    pub metrics_addr: Option<String>,
}

impl ServiceRecord {
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.clone()),
            ("role", self.role.clone()),
            ("host", self.host.clone()),
            ("pid", self.pid.to_string()),
            ("version", self.version.clone()),
            ("started_ms", self.started_ms.to_string()),
            (
                "current_task",
                self.current_task.clone().unwrap_or_default(),
            ),
            ("tasks_done", self.tasks_done.to_string()),
            ("last_seen_ms", self.last_seen_ms.to_string()),
            (
                "metrics_addr",
                self.metrics_addr.clone().unwrap_or_default(),
            ),
        ]
    }

    fn from_fields(fields: &BTreeMap<String, String>) -> Option<ServiceRecord> {
        let text = |name: &str| fields.get(name).cloned().unwrap_or_default();
        let number = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
        let optional = |name: &str| fields.get(name).filter(|v| !v.is_empty()).cloned();
        Some(ServiceRecord {
            id: fields.get("id")?.clone(),
            role: text("role"),
            host: text("host"),
            pid: number("pid").unwrap_or(0) as u32,
            version: text("version"),
            started_ms: number("started_ms").unwrap_or(0),
            current_task: optional("current_task"),
            tasks_done: number("tasks_done").unwrap_or(0),
            last_seen_ms: number("last_seen_ms").unwrap_or(0),
            metrics_addr: optional("metrics_addr"),
        })
    }
}

/// This machine's name: `/etc/hostname`, the kernel's, or `$HOSTNAME`.
pub fn host_name() -> String {
    ["/etc/hostname", "/proc/sys/kernel/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// A fresh id: `role-host-pid-random`, with only `[A-Za-z0-9._-]`.
pub fn service_id(role: &str, host: &str) -> String {
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let random = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().rotate_left(16);
    format!(
        "{role}-{host}-{}-{:04x}",
        std::process::id(),
        random & 0xffff
    )
}

/// Writes (or renews) a heartbeat record that lives `ttl`: the record, then its entry in
/// the index (two slots, two requests).
pub async fn beat(
    conn: &mut RedisConnection,
    keys: &Keys,
    record: &ServiceRecord,
    ttl: Duration,
) -> redis::RedisResult<()> {
    let key = keys.service(&record.id);
    let ttl_ms = ttl.as_millis().max(1) as u64;
    let mut pipe = redis::pipe();
    pipe.cmd("HSET")
        .arg(&key)
        .arg(record.fields())
        .ignore()
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(ttl_ms)
        .ignore();
    pipe.query_async::<()>(conn).await?;
    let mut pipe = redis::pipe();
    pipe.cmd("ZADD")
        .arg(keys.services_index())
        .arg(record.last_seen_ms + ttl_ms)
        .arg(&record.id)
        .ignore()
        // The index itself goes away when no process has beaten for a while.
        .cmd("PEXPIRE")
        .arg(keys.services_index())
        .arg(ttl_ms * 4)
        .ignore();
    pipe.query_async(conn).await
}

/// Deletes a record (graceful stop), then its index entry.
pub async fn remove(conn: &mut RedisConnection, keys: &Keys, id: &str) -> redis::RedisResult<()> {
    let _deleted: i64 = redis::cmd("DEL")
        .arg(keys.service(id))
        .query_async(conn)
        .await?;
    let _removed: i64 = redis::cmd("ZREM")
        .arg(keys.services_index())
        .arg(id)
        .query_async(conn)
        .await?;
    Ok(())
}

/// Every live worker and reducer, by role then id; prunes expired ids from the index.
/// Records are read one request each (each in its own slot), concurrently.
pub async fn list(
    conn: &mut RedisConnection,
    keys: &Keys,
) -> redis::RedisResult<Vec<ServiceRecord>> {
    let index = keys.services_index();
    let (_, ids): (i64, Vec<String>) = redis::pipe()
        .cmd("ZREMRANGEBYSCORE")
        .arg(&index)
        .arg("-inf")
        .arg(now_ms())
        .cmd("ZRANGE")
        .arg(&index)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let records: Vec<BTreeMap<String, String>> =
        futures_util::future::try_join_all(ids.iter().map(|id| {
            let mut conn = conn.clone();
            let key = keys.service(id);
            async move { redis::cmd("HGETALL").arg(key).query_async(&mut conn).await }
        }))
        .await?;
    let mut live: Vec<ServiceRecord> = records
        .iter()
        .filter_map(ServiceRecord::from_fields)
        .collect();
    live.sort_by(|a, b| (b.role.as_str(), &a.id).cmp(&(a.role.as_str(), &b.id)));
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let record = ServiceRecord {
            id: service_id("worker", "my host"),
            role: "worker".into(),
            host: "my host".into(),
            pid: 42,
            version: "0.1.0".into(),
            started_ms: 1,
            current_task: Some("j/map/3".into()),
            tasks_done: 7,
            last_seen_ms: 9,
            metrics_addr: None,
        };
        assert!(record.id.starts_with("worker-my_host-"), "{}", record.id);
        let fields: BTreeMap<String, String> = record
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(ServiceRecord::from_fields(&fields), Some(record));
    }
}
