//! The job model every part of the pipeline shares: a job's id ([`JobId`], validated once
//! by [`JobId::parse`]), its immutable [`JobSpec`], its lifecycle ([`JobState`]) and the
//! [`JobStatus`] the views show.
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

    #[test]
    fn job_ids_deserialize_only_when_valid() {
        let id: JobId = serde_json::from_str("\"j-1\"").unwrap();
        assert_eq!(id, "j-1");
        assert!(serde_json::from_str::<JobId>("\"a{b\"").is_err());
    }
}
