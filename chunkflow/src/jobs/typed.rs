//! Custom jobs with their own key and value types: implement [`MapReduce`] and register it
//! with [`super::JobRegistry::register_typed`]; then build `producer`, `worker` and
//! `reducer` binaries over that registry with the `chunkflow-cli` crate's `*_main` functions (the stock binaries are built
//! the same way). `examples/custom-job` is a complete example.
//!
//! The adapter [`TypedJob`] does the plumbing: it cuts a chunk into [`Record`]s (lines, or
//! CSV records with their header), calls `map`, groups the emitted pairs by key and calls
//! `combine` per key in the worker, partitions by the key's serialized form, and in the
//! reducer calls `reduce` once per key with every combined value. Keys and values travel
//! as JSON (serde): their serialization must be deterministic (no `HashMap` inside a key).
//!
//! Output: the lines `reduce` returns, sorted in byte order.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::grep::numbered_lines;
use super::{
    input_counters, partition_of, ChunkContext, Job, JobError, LineTracker, MapOutput,
    RecordFormat, ReduceOutput, ResultFormat,
};
use crate::codec::{put_bytes, Reader};
use crate::output::SortKey;
use crate::records::csv_record_len;

/// One input record handed to [`MapReduce::map`].
#[derive(Debug)]
pub struct Record<'a> {
    /// The input path as given.
    pub source: &'a str,
    /// 1-based line number of the record's first line in its source.
    pub line: u64,
    /// The line without its line end ([`RecordFormat::Lines`]), or the CSV record's fields
    /// joined by `,` (use [`Record::field`] for CSV).
    pub text: &'a [u8],
    csv: Option<(&'a csv::ByteRecord, &'a csv::ByteRecord)>,
}

impl<'a> Record<'a> {
    /// The CSV field under header `name` (unquoted); `None` for a missing column or a line
    /// record.
    pub fn field(&self, name: &str) -> Option<&'a [u8]> {
        let (header, record) = self.csv?;
        let index = header.iter().position(|h| h == name.as_bytes())?;
        record.get(index)
    }

    /// [`Record::field`] as UTF-8 text; `None` if absent or not UTF-8.
    pub fn field_str(&self, name: &str) -> Option<&'a str> {
        self.field(name).and_then(|f| std::str::from_utf8(f).ok())
    }
}

/// A job written with its own key and value types. See the module docs.
pub trait MapReduce: Send + Sync + 'static {
    type Key: Serialize + DeserializeOwned + Ord + Send;
    type Value: Serialize + DeserializeOwned + Send;

    /// How the input is cut into records (default: lines).
    fn input_format(&self) -> RecordFormat {
        RecordFormat::Lines
    }

    /// Maps one record to any number of `(key, value)` pairs. An error fails the job, named
    /// with the record's source and line.
    fn map(
        &self,
        record: &Record<'_>,
        emit: &mut dyn FnMut(Self::Key, Self::Value),
    ) -> Result<(), JobError>;

    /// Merges values of one key into one (associative and commutative: it runs on any
    /// subset of a key's values, in any order).
    fn combine(&self, key: &Self::Key, values: Vec<Self::Value>) -> Result<Self::Value, JobError>;

    /// The output lines (without line ends) of one key, given all its combined values.
    fn reduce(&self, key: &Self::Key, values: Vec<Self::Value>) -> Result<Vec<String>, JobError>;

    /// A header line written before the sorted lines.
    fn header(&self) -> Option<String> {
        None
    }
}

/// Adapts a [`MapReduce`] to the byte-level [`Job`] trait.
pub struct TypedJob<J> {
    job: J,
}

impl<J: MapReduce> TypedJob<J> {
    pub fn new(job: J) -> Self {
        TypedJob { job }
    }

    /// Calls `f` with each record of the chunk; returns the bytes of records read.
    fn records(
        &self,
        ctx: &ChunkContext<'_>,
        data: &[u8],
        mut f: impl FnMut(&Record<'_>) -> Result<(), JobError>,
    ) -> Result<u64, JobError> {
        match self.job.input_format() {
            RecordFormat::Lines => {
                for (line, text) in numbered_lines(data, ctx.first_line) {
                    f(&Record {
                        source: ctx.source,
                        line,
                        text,
                        csv: None,
                    })?;
                }
                Ok(data.len() as u64)
            }
            RecordFormat::CsvWithHeader => {
                let header_len = csv_record_len(data);
                let csv_error =
                    |e: csv::Error| JobError::new(format!("`{}`: CSV: {e}", ctx.source));
                let mut header = csv::ByteRecord::new();
                csv::ReaderBuilder::new()
                    .has_headers(false)
                    .from_reader(&data[..header_len])
                    .read_byte_record(&mut header)
                    .map_err(csv_error)?;
                let mut reader = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .from_reader(&data[header_len..]);
                let mut record = csv::ByteRecord::new();
                let mut text = Vec::new();
                let mut lines = LineTracker::new(&data[header_len..], ctx.first_line);
                while reader.read_byte_record(&mut record).map_err(csv_error)? {
                    text.clear();
                    for (i, field) in record.iter().enumerate() {
                        if i > 0 {
                            text.push(b',');
                        }
                        text.extend_from_slice(field);
                    }
                    let line = lines.line_at(record.position().map_or(0, |p| p.byte()));
                    f(&Record {
                        source: ctx.source,
                        line,
                        text: &text,
                        csv: Some((&header, &record)),
                    })?;
                }
                Ok((data.len() - header_len) as u64)
            }
        }
    }
}

/// Values of a key buffered in a chunk before they are combined.
const COMBINE_EVERY: usize = 256;

fn json_error(error: serde_json::Error) -> JobError {
    JobError::new(format!("corrupt intermediate data: {error}"))
}

impl<J: MapReduce> Job for TypedJob<J> {
    fn map_chunk(&self, ctx: &ChunkContext<'_>, data: &[u8]) -> Result<MapOutput, JobError> {
        let mut groups: BTreeMap<J::Key, Vec<J::Value>> = BTreeMap::new();
        let mut read = 0u64;
        let mut failure: Option<JobError> = None;
        let bytes = self.records(ctx, data, |record| {
            read += 1;
            let mut emit = |key: J::Key, value: J::Value| match groups.entry(key) {
                Entry::Vacant(entry) => {
                    entry.insert(vec![value]);
                }
                Entry::Occupied(mut entry) => {
                    entry.get_mut().push(value);
                    // Combine as we go: memory stays bounded by the number of keys.
                    if entry.get().len() >= COMBINE_EVERY && failure.is_none() {
                        let values = std::mem::take(entry.get_mut());
                        match self.job.combine(entry.key(), values) {
                            Ok(value) => entry.get_mut().push(value),
                            Err(error) => failure = Some(error),
                        }
                    }
                }
            };
            self.job.map(record, &mut emit).map_err(|e| {
                JobError::new(format!("`{}` line {}: {}", record.source, record.line, e))
            })
        })?;
        if let Some(error) = failure {
            return Err(error);
        }
        let mut buckets: Vec<Vec<u8>> = vec![Vec::new(); ctx.partitions.max(1) as usize];
        for (key, values) in groups {
            let value = self.job.combine(&key, values)?;
            let key_bytes = serde_json::to_vec(&key).map_err(json_error)?;
            let value_bytes = serde_json::to_vec(&value).map_err(json_error)?;
            let bucket = &mut buckets[partition_of(&key_bytes, ctx.partitions) as usize];
            put_bytes(bucket, &key_bytes);
            put_bytes(bucket, &value_bytes);
        }
        Ok(MapOutput {
            partials: buckets,
            counters: input_counters(read, 0, bytes),
        })
    }

    fn reduce_partition(&self, partials: Vec<Vec<u8>>) -> Result<ReduceOutput, JobError> {
        let mut groups: BTreeMap<J::Key, Vec<J::Value>> = BTreeMap::new();
        for partial in &partials {
            let mut reader = Reader::new(partial);
            while !reader.is_empty() {
                let key: J::Key = serde_json::from_slice(reader.bytes()?).map_err(json_error)?;
                let value: J::Value =
                    serde_json::from_slice(reader.bytes()?).map_err(json_error)?;
                groups.entry(key).or_default().push(value);
            }
        }
        let mut out: Vec<(SortKey, String)> = Vec::new();
        for (key, values) in groups {
            for line in self.job.reduce(&key, values)? {
                if line.contains('\n') {
                    return Err(JobError::new(format!(
                        "reduce returned a line with a line end in it: {line:?}"
                    )));
                }
                out.push((SortKey::new().bytes(line.as_bytes()), line));
            }
        }
        out.sort_unstable();
        let mut lines = Vec::new();
        for (key, line) in &out {
            lines.extend_from_slice(key.as_bytes());
            lines.push(b'\t');
            lines.extend_from_slice(line.as_bytes());
            lines.push(b'\n');
        }
        Ok(ReduceOutput {
            lines,
            records: out.len() as u64,
        })
    }

    fn input_format(&self) -> RecordFormat {
        self.job.input_format()
    }

    fn result_format(&self) -> ResultFormat {
        ResultFormat {
            header: self.job.header(),
            sort_key_prefix: true,
        }
    }
}
