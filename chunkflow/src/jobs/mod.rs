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
//!   each key belonging to exactly one partition;
//! - `input_format` and `result_format` depend only on the job's parameters: the producer,
//!   the workers, the reducers and the local runner must agree on them.
//!
//! Built-in jobs: [`wordcount`], [`grep`], [`invertedindex`], [`groupby`], [`exec`] (external
//! programs, Hadoop Streaming style). [`typed`] turns a user's [`typed::MapReduce`] (own
//! serde key and value types) into a [`Job`].

pub mod exec;
pub mod grep;
pub mod groupby;
pub mod invertedindex;
pub mod params;
pub mod typed;
pub mod wordcount;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::output::ResultFormat;
pub use crate::records::RecordFormat;

pub use crate::job::{JobSpec, SPEC_VERSION};

/// Where a chunk came from; job code may use it (a grep job reports line numbers).
///
/// For a job whose input format is [`RecordFormat::CsvWithHeader`], the chunk's data starts
/// with a copy of its source's header record, and `offset` and `first_line` are those of the
/// first record after it (see [`crate::chunker`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkContext<'a> {
    /// The input path as the user gave it (`-` for standard input).
    pub source: &'a str,
    pub offset: u64,
    /// 1-based number, in its source, of the chunk's first line.
    pub first_line: u64,
    pub partitions: u32,
}

/// Per-chunk counters, committed atomically with the chunk's output so that a retried chunk
/// is counted once. Every job reports [`RECORDS_READ`], [`RECORDS_SKIPPED`] and
/// [`BYTES_READ`] (see [`input_counters`]); the reducers add `output_records`.
pub type Counters = BTreeMap<&'static str, u64>;

/// Records (lines, CSV records, JSON lines) the map read.
pub const RECORDS_READ: &str = "records_read";
/// Records that could not be parsed and were skipped (`--on-bad-record skip`).
pub const RECORDS_SKIPPED: &str = "records_skipped";
/// Bytes of records the map read (a CSV header copied into a chunk is not counted).
pub const BYTES_READ: &str = "bytes_read";
/// Records in the job's result (counted by the reducers).
pub const OUTPUT_RECORDS: &str = "output_records";

/// The counters every job reports for a chunk.
pub fn input_counters(records_read: u64, records_skipped: u64, bytes_read: u64) -> Counters {
    Counters::from([
        (RECORDS_READ, records_read),
        (RECORDS_SKIPPED, records_skipped),
        (BYTES_READ, bytes_read),
    ])
}

/// The output of mapping and combining one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MapOutput {
    /// One encoded partial per partition (empty when the chunk has nothing for it).
    pub partials: Vec<Vec<u8>>,
    pub counters: Counters,
}

impl MapOutput {
    /// The output of a line-oriented job: `partials`, with every line of `data` read and
    /// none skipped.
    pub fn from_lines(partials: Vec<Vec<u8>>, data: &[u8]) -> MapOutput {
        MapOutput {
            partials,
            counters: input_counters(count_lines(data), 0, data.len() as u64),
        }
    }
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

    /// How the producer cuts this job's input into chunks (default: whole lines).
    fn input_format(&self) -> RecordFormat {
        RecordFormat::Lines
    }

    /// How `producer result` assembles the partitions' results (default: `key\tvalue`
    /// lines merged by key in byte order, no header).
    fn result_format(&self) -> ResultFormat {
        ResultFormat::default()
    }
}

/// Builds a job's code from its spec parameters, validating them. A closure, so that a
/// builder can carry the process's settings (the `exec` job's allow-list).
pub type JobBuilder =
    Arc<dyn Fn(&serde_json::Value) -> Result<Arc<dyn Job>, JobError> + Send + Sync>;

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

    /// The built-in jobs. `exec` is registered with no allowed program: it validates its
    /// parameters but cannot run anything; binaries that run external programs use
    /// [`JobRegistry::with_exec`].
    pub fn stock() -> Self {
        let mut registry = Self::empty();
        registry
            .register(wordcount::KIND, wordcount::build)
            .register(grep::KIND, grep::build)
            .register(invertedindex::KIND, invertedindex::build)
            .register(groupby::KIND, groupby::build);
        registry.with_exec(exec::ExecSettings::default())
    }

    /// Registers (or replaces) the `exec` job with these settings.
    pub fn with_exec(mut self, settings: exec::ExecSettings) -> Self {
        let settings = Arc::new(settings);
        self.register(exec::KIND, move |params: &serde_json::Value| {
            exec::build(params, &settings)
        });
        self
    }

    /// Registers (or replaces) the builder of `kind`.
    pub fn register<F>(&mut self, kind: &str, builder: F) -> &mut Self
    where
        F: Fn(&serde_json::Value) -> Result<Arc<dyn Job>, JobError> + Send + Sync + 'static,
    {
        self.builders.insert(kind.to_string(), Arc::new(builder));
        self
    }

    /// Registers a typed job (see [`typed::MapReduce`]) under `kind`; `build` turns the
    /// spec's parameters into the job.
    pub fn register_typed<J, F>(&mut self, kind: &str, build: F) -> &mut Self
    where
        J: typed::MapReduce,
        F: Fn(&serde_json::Value) -> Result<J, JobError> + Send + Sync + 'static,
    {
        self.register(kind, move |params: &serde_json::Value| {
            Ok(Arc::new(typed::TypedJob::new(build(params)?)) as Arc<dyn Job>)
        })
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

/// Line numbers of records found by byte offset, for parsers (like the `csv` crate's) whose
/// own line count is off after a `\r\n` (they record a position before skipping the `\n`).
/// Offsets must not decrease.
#[derive(Debug)]
pub struct LineTracker<'a> {
    data: &'a [u8],
    position: usize,
    line: u64,
}

impl<'a> LineTracker<'a> {
    /// Line `first_line` starts at byte 0 of `data`.
    pub fn new(data: &'a [u8], first_line: u64) -> Self {
        LineTracker {
            data,
            position: 0,
            line: first_line,
        }
    }

    /// The line of the first byte at or after `offset` that is not a line end.
    pub fn line_at(&mut self, offset: u64) -> u64 {
        let mut at = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.data.len());
        while at < self.data.len() && matches!(self.data[at], b'\n' | b'\r') {
            at += 1;
        }
        if at > self.position {
            self.line += memchr::memchr_iter(b'\n', &self.data[self.position..at]).count() as u64;
            self.position = at;
        }
        self.line
    }
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
    fn tracks_lines_by_offset() {
        let data = b"a\r\nb\n\n\r\nc\n";
        let mut lines = LineTracker::new(data, 10);
        assert_eq!(lines.line_at(0), 10);
        assert_eq!(lines.line_at(1), 11);
        assert_eq!(lines.line_at(3), 11);
        // Blank lines before a record are skipped to the record.
        assert_eq!(lines.line_at(4), 14);
        assert_eq!(lines.line_at(8), 14);
        assert_eq!(lines.line_at(99), 15);
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
