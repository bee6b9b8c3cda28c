//! Shared by the store's tests: a [`Store`] on the real Redis at 127.0.0.1:6379 in a
//! namespace of its own (`storetest-<pid>-<n>`), whose keys are deleted when it is dropped
//! (also when the test failed), and small builders of specs and outputs.
//!
//! Must not: touch a key outside its namespace (Redis is shared with other developers), or
//! fail a test because Redis is unreachable (it prints why and the test returns).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_redis::redis;

use super::Store;
use crate::config::ConnectionConfig;
use crate::job::{JobId, JobSpec, SPEC_VERSION};
use crate::jobs::{MapOutput, ReduceOutput};

const TEST_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A store in a fresh namespace; its keys go when it is dropped.
pub struct TestStore {
    pub store: Store,
    pub namespace: String,
}

impl TestStore {
    /// `None` (with the reason printed) only if Redis is unreachable.
    pub async fn open() -> Option<TestStore> {
        Self::open_with_timeout(Duration::from_secs(10)).await
    }

    pub async fn open_with_timeout(timeout: Duration) -> Option<TestStore> {
        Self::open_with(|config| config.redis_timeout = timeout).await
    }

    /// A store whose settings `adjust` changes from the defaults (timeout, replicas).
    pub async fn open_with(adjust: impl FnOnce(&mut ConnectionConfig)) -> Option<TestStore> {
        let namespace = format!(
            "storetest-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut config = ConnectionConfig::local(&namespace);
        config.redis_url = TEST_REDIS_URL.to_string();
        config.redis_timeout = Duration::from_secs(10);
        adjust(&mut config);
        match Store::connect(&config).await {
            Ok(store) => Some(TestStore { store, namespace }),
            Err(error) => {
                eprintln!("skipping: Redis is unreachable at {TEST_REDIS_URL}: {error}");
                None
            }
        }
    }

    /// Runs a raw command (to inspect or damage state the way a lost key would).
    pub async fn raw<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        self.store
            .invoke(command)
            .await
            .unwrap_or_else(|e| panic!("raw Redis command failed: {e}"))
    }

    /// The time to live of a key in seconds (-1: none, -2: no such key).
    pub async fn ttl(&self, key: &str) -> i64 {
        self.raw(redis::cmd("TTL").arg(key)).await
    }

    pub async fn exists(&self, key: &str) -> bool {
        self.raw(redis::cmd("EXISTS").arg(key)).await
    }

    /// A partition's partials (sorted by chunk id) and the count of outputs the job steps
    /// recorded for it.
    pub async fn partials(&self, spec: &JobSpec, partition: u32) -> (Vec<(u64, Vec<u8>)>, u64) {
        let job = self.store.keys.job(&spec.id);
        let data = job.partition(partition, spec.partitions).data();
        let entries: Vec<(String, Vec<u8>)> = self.raw(redis::cmd("HGETALL").arg(data)).await;
        let mut entries: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|(chunk, partial)| (chunk.parse().unwrap(), partial))
            .collect();
        entries.sort();
        let committed: Option<u64> = self
            .raw(
                redis::cmd("HGET")
                    .arg(job.meta())
                    .arg(format!("outputs:{partition}")),
            )
            .await;
        (entries, committed.unwrap_or(0))
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let pattern = self.store.keys.namespace_pattern();
        let cleaned = (|| -> redis::RedisResult<()> {
            let client = redis::Client::open(TEST_REDIS_URL)?;
            let mut conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut keys: Vec<String> = Vec::new();
            let mut cursor = 0_u64;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(&mut conn)?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            if !keys.is_empty() {
                redis::cmd("DEL").arg(keys).query::<i64>(&mut conn)?;
            }
            Ok(())
        })();
        if let Err(error) = cleaned {
            eprintln!("could not delete the keys of {}: {error}", self.namespace);
        }
    }
}

/// A job spec with `partitions` partitions and a 60 s TTL after it ends.
pub fn spec(id: &str, partitions: u32) -> JobSpec {
    JobSpec {
        version: SPEC_VERSION,
        id: JobId::parse(id).expect("a valid test job id"),
        kind: "wordcount".into(),
        params: serde_json::Value::Null,
        partitions,
        chunk_size: 1024,
        max_record_size: 1024,
        created_ms: crate::job::now_ms(),
        ttl_secs: 60,
        inputs: None,
    }
}

/// A map output with these per-partition partials and one counter.
pub fn map_output(partials: &[&[u8]]) -> MapOutput {
    MapOutput {
        partials: partials.iter().map(|p| p.to_vec()).collect(),
        counters: [("records_read", 2)].into_iter().collect(),
    }
}

pub fn reduce_output(lines: &str) -> ReduceOutput {
    ReduceOutput {
        lines: lines.as_bytes().to_vec(),
        records: lines.lines().count() as u64,
    }
}
