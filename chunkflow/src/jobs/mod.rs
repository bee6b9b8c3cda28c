//! The job model: what a job is (its [`JobSpec`], stored in Redis before any task is
//! published), the [`Job`] trait that map/combine/reduce code implements, and the
//! [`JobRegistry`] that turns a spec's kind name into code.
//!
//! Job code is pure: it sees bytes and returns bytes, never a broker or Redis. That keeps it
//! unit-testable and lets the worker run it on a blocking thread, off the async reactor.
//!
//! Contract for implementors, which the commit protocol relies on:
//! - `map_chunk` is deterministic: the same chunk gives the same output, so a redelivered
//!   chunk whose first commit won is not different from the one that lost;
//! - `reduce_partition` does not depend on the order of its partials (they arrive in the
//!   order Redis returns them), and emits `key\tvalue\n` lines sorted by key in byte order,
//!   each key belonging to exactly one partition.

pub mod wordcount;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Version of the [`JobSpec`] JSON layout.
pub const SPEC_VERSION: u32 = 1;

/// Everything a worker and a reducer need to know about a job; immutable once stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub version: u32,
    pub id: String,
    /// Registry name of the job code (`wordcount`, ...).
    pub kind: String,
    /// Job-specific parameters, validated by the job's builder.
    #[serde(default)]
    pub params: serde_json::Value,
    pub partitions: u32,
    pub chunk_size: u64,
    pub max_record_size: u64,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Time to live of the job's keys after it ends, in seconds.
    pub ttl_secs: u64,
}

/// Where a chunk came from; job code may use it (a grep job reports line numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkContext<'a> {
    pub source: &'a str,
    pub offset: u64,
    pub first_line: u64,
    pub partitions: u32,
}

/// Per-chunk counters, committed atomically with the chunk's output so that a retried chunk
/// is counted once.
pub type Counters = BTreeMap<&'static str, u64>;

/// The output of mapping and combining one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MapOutput {
    /// One encoded partial per partition (empty when the chunk has nothing for it).
    pub partials: Vec<Vec<u8>>,
    pub counters: Counters,
}

/// The final result of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReduceOutput {
    /// `key\tvalue\n` lines, sorted by key in byte order.
    pub lines: Vec<u8>,
    pub records: u64,
}

/// A failure inside job code. `permanent` failures fail the job; the others may be retried.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub message: String,
}

impl JobError {
    pub fn new(message: impl Into<String>) -> Self {
        JobError {
            message: message.into(),
        }
    }
}

impl From<crate::codec::CodecError> for JobError {
    fn from(error: crate::codec::CodecError) -> Self {
        JobError::new(error.to_string())
    }
}

/// Map/combine and reduce code of one kind of job. See the module docs for the contract.
pub trait Job: Send + Sync + 'static {
    /// Maps and combines one chunk of whole lines into one partial per partition.
    fn map_chunk(&self, ctx: &ChunkContext<'_>, data: &[u8]) -> Result<MapOutput, JobError>;

    /// Merges the partials of one partition into its final, sorted result.
    fn reduce_partition(&self, partials: Vec<Vec<u8>>) -> Result<ReduceOutput, JobError>;
}

/// Builds a job's code from its spec parameters, validating them.
pub type JobBuilder = fn(&serde_json::Value) -> Result<Arc<dyn Job>, JobError>;

/// Maps kind names to job code. Stock binaries use [`JobRegistry::stock`]; a custom binary
/// registers its own jobs on top.
#[derive(Clone)]
pub struct JobRegistry {
    builders: BTreeMap<String, JobBuilder>,
}

impl std::fmt::Debug for JobRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.builders.keys()).finish()
    }
}

impl JobRegistry {
    pub fn empty() -> Self {
        JobRegistry {
            builders: BTreeMap::new(),
        }
    }

    /// The built-in jobs.
    pub fn stock() -> Self {
        let mut registry = Self::empty();
        registry.register(wordcount::KIND, wordcount::build);
        registry
    }

    pub fn register(&mut self, kind: &str, builder: JobBuilder) -> &mut Self {
        self.builders.insert(kind.to_string(), builder);
        self
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.builders.keys().map(String::as_str)
    }

    /// Builds the code for `kind`; an unknown kind is an error naming the known ones.
    pub fn build(&self, kind: &str, params: &serde_json::Value) -> Result<Arc<dyn Job>, JobError> {
        match self.builders.get(kind) {
            Some(builder) => builder(params),
            None => Err(JobError::new(format!(
                "unknown job kind `{kind}`; this binary knows: {}",
                self.kinds().collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

/// The partition of a key: FNV-1a, stable across processes, versions and platforms (the
/// producer, every worker and every reducer must agree without talking to each other).
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in key {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

/// Number of records (lines) in a chunk: newlines, plus a final unterminated line.
pub fn count_lines(data: &[u8]) -> u64 {
    let newlines = memchr::memchr_iter(b'\n', data).count() as u64;
    match data.last() {
        Some(b'\n') | None => newlines,
        Some(_) => newlines + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_stable_and_in_range() {
        // Fixed expectations: changing the hash would split a running job's keys.
        assert_eq!(partition_of(b"", 8), (0xcbf2_9ce4_8422_2325u64 % 8) as u32);
        for p in [1, 2, 7, 8, 1000] {
            for key in [&b"a"[..], b"hello", b"\xff\xfe"] {
                assert!(partition_of(key, p) < p);
            }
        }
    }

    #[test]
    fn counts_lines() {
        assert_eq!(count_lines(b""), 0);
        assert_eq!(count_lines(b"a\nb\n"), 2);
        assert_eq!(count_lines(b"a\nb"), 2);
        assert_eq!(count_lines(b"\n"), 1);
    }

    #[test]
    fn unknown_kind_names_known_ones() {
        let err = JobRegistry::stock()
            .build("nope", &serde_json::Value::Null)
            .err()
            .unwrap();
        assert!(err.message.contains("wordcount"), "{}", err.message);
    }
}
