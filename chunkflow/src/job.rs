//! The job model every part of the pipeline shares: a job's id ([`JobId`], validated once
//! by [`JobId::parse`]), its immutable [`JobSpec`] (with the fingerprints of the inputs it
//! was cut from, [`InputFingerprint`]), its lifecycle ([`JobState`]) and the [`JobStatus`]
//! the views show. Whether a submit may resume an existing job is decided here, as a pure
//! comparison of two specs ([`JobSpec::differences`]).
//!
//! Nothing here talks to Redis or the broker: the store reads and writes these types, the
//! wire messages carry ids, and the views render statuses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A validated job id: 1 to 128 of `[A-Za-z0-9_-]`, starting with a letter or digit. Ids
/// become part of Redis keys (inside a `{...}` hash tag), queue message ids and log lines,
/// so `*`, `{`, `:`, `/`, `.` and spaces are refused. Only [`JobId::parse`] makes one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    /// Validates `text` as a job id; the error says what a valid id looks like.
    pub fn parse(text: &str) -> Result<JobId, InvalidJobId> {
        let valid = !text.is_empty()
            && text.len() <= 128
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && text.starts_with(|c: char| c.is_ascii_alphanumeric());
        if valid {
            Ok(JobId(text.to_string()))
        } else {
            Err(InvalidJobId(text.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A string that is not a valid [`JobId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a valid job id: use 1 to 128 letters, digits, `-` or `_`, starting with a letter or digit")]
pub struct InvalidJobId(pub String);

impl TryFrom<String> for JobId {
    type Error = InvalidJobId;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        JobId::parse(&text)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl std::str::FromStr for JobId {
    type Err = InvalidJobId;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        JobId::parse(text)
    }
}

impl std::ops::Deref for JobId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for JobId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for JobId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for JobId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Version of the [`JobSpec`] JSON layout.
pub const SPEC_VERSION: u32 = 1;

/// Everything a worker and a reducer need to know about a job; immutable once stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub version: u32,
    pub id: JobId,
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
    /// Every input in the order it is read, as the producer found it before reading: what
    /// a `--job-id` resume must read again. `None` in specs stored by producers that did not
    /// record their inputs (such a job cannot be resumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<InputFingerprint>>,
}

impl JobSpec {
    /// How a submit that wants `wanted` differs from this stored spec, in the settings that
    /// decide how chunks are cut and mapped and in the inputs they are cut from; empty when
    /// the submit may resume this job. Time to live and creation time do not count.
    pub fn differences(&self, wanted: &JobSpec) -> Vec<SpecDifference> {
        let mut differences = Vec::new();
        if self.kind != wanted.kind {
            differences.push(SpecDifference::Kind {
                recorded: self.kind.clone(),
                wanted: wanted.kind.clone(),
            });
        }
        if self.params != wanted.params {
            differences.push(SpecDifference::Params);
        }
        if self.partitions != wanted.partitions {
            differences.push(SpecDifference::Partitions {
                recorded: self.partitions,
                wanted: wanted.partitions,
            });
        }
        if self.chunk_size != wanted.chunk_size {
            differences.push(SpecDifference::ChunkSize {
                recorded: self.chunk_size,
                wanted: wanted.chunk_size,
            });
        }
        if self.max_record_size != wanted.max_record_size {
            differences.push(SpecDifference::MaxRecordSize {
                recorded: self.max_record_size,
                wanted: wanted.max_record_size,
            });
        }
        match (&self.inputs, &wanted.inputs) {
            (Some(recorded), Some(wanted)) => input_differences(recorded, wanted, &mut differences),
            _ => differences.push(SpecDifference::InputsNotRecorded),
        }
        differences
    }
}

/// One input as the producer found it before reading it. A file is known by its path (as
/// given, joined below a directory), size and modification time; standard input only by
/// its name `-`, since its bytes are known only once read, so a job read from standard
/// input can never be resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFingerprint {
    /// The path as given; `-` for standard input.
    pub path: String,
    /// Size in bytes; `None` for standard input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Last modification, in nanoseconds since the Unix epoch; `None` for standard input,
    /// or where the file system keeps no such time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<u64>,
}

impl InputFingerprint {
    /// The name standard input is given.
    pub const STDIN: &'static str = "-";

    /// Standard input: a name only.
    pub fn stdin() -> InputFingerprint {
        InputFingerprint {
            path: Self::STDIN.to_string(),
            size: None,
            mtime_ns: None,
        }
    }

    pub fn is_stdin(&self) -> bool {
        self.path == Self::STDIN
    }
}

/// One way a submit differs from the job already stored under its `--job-id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecDifference {
    Kind {
        recorded: String,
        wanted: String,
    },
    Params,
    Partitions {
        recorded: u32,
        wanted: u32,
    },
    ChunkSize {
        recorded: u64,
        wanted: u64,
    },
    MaxRecordSize {
        recorded: u64,
        wanted: u64,
    },
    /// The stored spec has no input fingerprints (an older producer stored it).
    InputsNotRecorded,
    /// Both read standard input, whose bytes cannot be compared.
    Stdin,
    InputAdded {
        path: String,
    },
    InputRemoved {
        path: String,
    },
    /// The same path, but another size or modification time.
    InputChanged {
        path: String,
        recorded_size: Option<u64>,
        wanted_size: Option<u64>,
        mtime_changed: bool,
    },
    /// The same inputs in another order (chunk ids would name other bytes).
    InputOrder,
}

impl std::fmt::Display for SpecDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpecDifference::Kind { recorded, wanted } => write!(f, "job {recorded} vs {wanted}"),
            SpecDifference::Params => f.write_str("parameters"),
            SpecDifference::Partitions { recorded, wanted } => {
                write!(f, "partitions {recorded} vs {wanted}")
            }
            SpecDifference::ChunkSize { recorded, wanted } => {
                write!(f, "chunk size {recorded} vs {wanted}")
            }
            SpecDifference::MaxRecordSize { recorded, wanted } => {
                write!(f, "max record size {recorded} vs {wanted}")
            }
            SpecDifference::InputsNotRecorded => f.write_str(
                "its inputs were not recorded (an older producer stored it), so they cannot be compared",
            ),
            SpecDifference::Stdin => f.write_str(
                "standard input (`-`) cannot be compared with what the first submit read",
            ),
            SpecDifference::InputAdded { path } => write!(f, "input `{path}` added"),
            SpecDifference::InputRemoved { path } => write!(f, "input `{path}` removed"),
            SpecDifference::InputChanged {
                path,
                recorded_size,
                wanted_size,
                mtime_changed,
            } => {
                let mut what = Vec::new();
                if recorded_size != wanted_size {
                    let size = |s: &Option<u64>| s.map_or_else(|| "?".into(), |s| s.to_string());
                    what.push(format!(
                        "size {} vs {} bytes",
                        size(recorded_size),
                        size(wanted_size)
                    ));
                }
                if *mtime_changed {
                    what.push("modification time changed".to_string());
                }
                write!(f, "input `{path}` changed ({})", what.join(", "))
            }
            SpecDifference::InputOrder => f.write_str("the same inputs in another order"),
        }
    }
}

/// Adds how the `wanted` inputs differ from the `recorded` ones: paths removed (recorded
/// order) and added (wanted order), paths whose size or modification time changed, and
/// otherwise the order. A path given twice counts twice.
fn input_differences(
    recorded: &[InputFingerprint],
    wanted: &[InputFingerprint],
    differences: &mut Vec<SpecDifference>,
) {
    fn counts(inputs: &[InputFingerprint]) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for input in inputs {
            *counts.entry(input.path.as_str()).or_insert(0) += 1;
        }
        counts
    }
    let (recorded_counts, wanted_counts) = (counts(recorded), counts(wanted));
    let count = |counts: &BTreeMap<&str, usize>, path: &str| counts.get(path).copied().unwrap_or(0);
    let before = differences.len();
    let mut reported = std::collections::BTreeSet::new();
    for input in recorded {
        let path = input.path.as_str();
        if count(&recorded_counts, path) > count(&wanted_counts, path) && reported.insert(path) {
            differences.push(SpecDifference::InputRemoved {
                path: path.to_string(),
            });
        }
    }
    for input in wanted {
        let path = input.path.as_str();
        if count(&wanted_counts, path) > count(&recorded_counts, path) && reported.insert(path) {
            differences.push(SpecDifference::InputAdded {
                path: path.to_string(),
            });
        }
    }
    let added_or_removed = differences.len() > before;
    let mut compared = std::collections::BTreeSet::new();
    for input in wanted {
        let Some(old) = recorded.iter().find(|old| old.path == input.path) else {
            continue;
        };
        if !compared.insert(input.path.as_str()) {
            continue;
        }
        if input.is_stdin() {
            differences.push(SpecDifference::Stdin);
        } else if old.size != input.size || old.mtime_ns != input.mtime_ns {
            differences.push(SpecDifference::InputChanged {
                path: input.path.clone(),
                recorded_size: old.size,
                wanted_size: input.size,
                mtime_changed: old.mtime_ns != input.mtime_ns,
            });
        }
    }
    let same_order = recorded
        .iter()
        .map(|i| &i.path)
        .eq(wanted.iter().map(|i| &i.path));
    if !added_or_removed && !same_order {
        differences.push(SpecDifference::InputOrder);
    }
}

/// The lifecycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Reducing,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Reducing => "reducing",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<JobState> {
        Some(match text {
            "running" => JobState::Running,
            "reducing" => JobState::Reducing,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as `producer status` shows it.
#[derive(Debug, Clone)]
pub struct JobStatus {
    pub spec: JobSpec,
    pub state: JobState,
    pub total_chunks: Option<u64>,
    pub chunks_committed: u64,
    pub partitions_reduced: u64,
    pub reason: Option<String>,
    pub counters: BTreeMap<String, u64>,
    /// Deliveries, redeliveries and duplicates seen by workers (observability).
    pub stats: BTreeMap<String, u64>,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
}

impl JobStatus {
    /// `running, chunks 3/10 committed, partitions 0/8 reduced`.
    pub fn progress_summary(&self) -> String {
        let total = self
            .total_chunks
            .map_or_else(|| "? (still publishing)".to_string(), |t| t.to_string());
        format!(
            "{}, chunks {}/{} committed, partitions {}/{} reduced",
            self.state, self.chunks_committed, total, self.partitions_reduced, self.spec.partitions
        )
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_job_ids() {
        assert!(JobId::parse("wordcount-20261126-ab12").is_ok());
        for bad in [
            "",
            "-x",
            "a*",
            "a{b",
            "a:b",
            "..",
            "a/b",
            "a.b",
            &"x".repeat(129),
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad}");
        }
        let error = JobId::parse("a b").unwrap_err().to_string();
        assert!(error.contains("not a valid job id"), "{error}");
    }

    fn file(path: &str, size: u64, mtime_ns: u64) -> InputFingerprint {
        InputFingerprint {
            path: path.into(),
            size: Some(size),
            mtime_ns: Some(mtime_ns),
        }
    }

    fn spec_over(inputs: Vec<InputFingerprint>) -> JobSpec {
        JobSpec {
            version: SPEC_VERSION,
            id: JobId::parse("j").unwrap(),
            kind: "wordcount".into(),
            params: serde_json::Value::Null,
            partitions: 4,
            chunk_size: 1024,
            max_record_size: 4096,
            created_ms: 1,
            ttl_secs: 60,
            inputs: Some(inputs),
        }
    }

    fn differences(recorded: &JobSpec, wanted: &JobSpec) -> Vec<String> {
        recorded
            .differences(wanted)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_same_inputs_and_settings_may_resume() {
        let recorded = spec_over(vec![file("a.txt", 10, 5), file("b.txt", 20, 6)]);
        let mut wanted = recorded.clone();
        wanted.created_ms = 99;
        wanted.ttl_secs = 1;
        assert_eq!(recorded.differences(&wanted), vec![]);
    }

    #[test]
    fn changed_added_and_removed_inputs_are_named() {
        let recorded = spec_over(vec![file("a.txt", 10, 5), file("b.txt", 20, 6)]);
        let wanted = spec_over(vec![file("a.txt", 12, 5), file("c.txt", 20, 6)]);
        assert_eq!(
            differences(&recorded, &wanted),
            vec![
                "input `b.txt` removed",
                "input `c.txt` added",
                "input `a.txt` changed (size 10 vs 12 bytes)",
            ]
        );
        // Same size, rewritten: only the modification time tells.
        let rewritten = spec_over(vec![file("a.txt", 10, 7), file("b.txt", 20, 6)]);
        assert_eq!(
            recorded.differences(&rewritten),
            vec![SpecDifference::InputChanged {
                path: "a.txt".into(),
                recorded_size: Some(10),
                wanted_size: Some(10),
                mtime_changed: true,
            }]
        );
        assert_eq!(
            differences(&recorded, &rewritten),
            vec!["input `a.txt` changed (modification time changed)"]
        );
    }

    #[test]
    fn order_and_repetition_of_inputs_count() {
        let recorded = spec_over(vec![file("a.txt", 10, 5), file("b.txt", 20, 6)]);
        let swapped = spec_over(vec![file("b.txt", 20, 6), file("a.txt", 10, 5)]);
        assert_eq!(
            recorded.differences(&swapped),
            vec![SpecDifference::InputOrder]
        );
        let twice = spec_over(vec![
            file("a.txt", 10, 5),
            file("b.txt", 20, 6),
            file("a.txt", 10, 5),
        ]);
        assert_eq!(differences(&recorded, &twice), vec!["input `a.txt` added"]);
    }

    #[test]
    fn standard_input_and_unrecorded_inputs_never_resume() {
        let stdin = spec_over(vec![InputFingerprint::stdin()]);
        assert_eq!(stdin.differences(&stdin), vec![SpecDifference::Stdin]);
        let files = spec_over(vec![file("a.txt", 10, 5)]);
        assert_eq!(
            differences(&stdin, &files),
            vec!["input `-` removed", "input `a.txt` added"]
        );
        let mut older = files.clone();
        older.inputs = None;
        assert_eq!(
            older.differences(&files),
            vec![SpecDifference::InputsNotRecorded]
        );
    }

    #[test]
    fn settings_differences_are_named_with_the_inputs() {
        let recorded = spec_over(vec![file("a.txt", 10, 5)]);
        let mut wanted = spec_over(vec![file("a.txt", 11, 5)]);
        wanted.partitions = 3;
        wanted.params = serde_json::json!({"pattern": "x"});
        assert_eq!(
            differences(&recorded, &wanted),
            vec![
                "parameters",
                "partitions 4 vs 3",
                "input `a.txt` changed (size 10 vs 11 bytes)",
            ]
        );
    }

    #[test]
    fn specs_without_inputs_still_read_and_new_ones_round_trip() {
        let older: JobSpec = serde_json::from_value(serde_json::json!({
            "version": 1, "id": "j", "kind": "wordcount", "partitions": 4,
            "chunk_size": 1, "max_record_size": 1, "created_ms": 1, "ttl_secs": 1,
        }))
        .unwrap();
        assert_eq!(older.inputs, None);
        let spec = spec_over(vec![file("a.txt", 10, 5), InputFingerprint::stdin()]);
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains(r#"{"path":"-"}"#), "{json}");
        assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);
    }

    #[test]
    fn job_ids_deserialize_only_when_valid() {
        let id: JobId = serde_json::from_str("\"j-1\"").unwrap();
        assert_eq!(id, "j-1");
        assert!(serde_json::from_str::<JobId>("\"a{b\"").is_err());
    }
}
