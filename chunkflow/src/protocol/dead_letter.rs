//! What a dead letter means for its job, as plain functions over plain values: reducers
//! watch a copy of every dead-lettered task (`ns.dead-watch`) and fail the live job it
//! belongs to, naming the chunk or partition and the reason RabbitMQ recorded, so that a
//! job never waits forever for a task that will not come back (invariant 1).
//!
//! The steps: the `x-death` headers become a [`DeathRecord`]; the message becomes a
//! [`DeadTask`] (or nothing: undecodable garbage belongs to no job); the job's facts read
//! from Redis ([`JobFacts`]) and the task decide a [`WatchAction`] ([`decide`]).
//!
//! Must not: touch Redis or the broker, sleep, or log; fail a job for a task that is not
//! one of its own (a forged, oversized or out-of-range task), or for a chunk or partition
//! that was committed anyway.

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

use crate::job::JobState;
use crate::protocol::map::body_limit;
use crate::protocol::messages::{MapTask, ReduceTask, MAP_TASK_TYPE, REDUCE_TASK_TYPE};

/// Why and where RabbitMQ dead-lettered a message, from its `x-death` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeathRecord {
    /// `rejected`, `delivery_limit`, `expired`, `maxlen`... (`unknown` without headers).
    pub reason: String,
    /// The queue the message died in.
    pub queue: Option<String>,
    /// How often the message was delivered before it died (quorum queues count returns in
    /// `x-delivery-count`), if recorded.
    pub deliveries: Option<u64>,
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn number(value: &AMQPValue) -> Option<u64> {
    let value = match value {
        AMQPValue::LongLongInt(v) => *v,
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok()?,
        _ => return None,
    };
    u64::try_from(value).ok()
}

/// Reads the dead-lettering's reason: `x-first-death-reason` (the first death is the one
/// that took the task away from its consumers), else the newest `x-death` entry.
pub fn death_record(headers: Option<&FieldTable>) -> DeathRecord {
    let get = |name: &str| headers.and_then(|h| h.inner().get(name));
    let first_death = match get("x-death") {
        Some(AMQPValue::FieldArray(deaths)) => deaths.as_slice().iter().find_map(|d| match d {
            AMQPValue::FieldTable(table) => Some(table.clone()),
            _ => None,
        }),
        _ => None,
    };
    let from_x_death =
        |key: &str| -> Option<String> { first_death.as_ref()?.inner().get(key).and_then(text) };
    let reason = get("x-first-death-reason")
        .and_then(text)
        .or_else(|| from_x_death("reason"))
        .unwrap_or_else(|| "unknown".to_string());
    let queue = get("x-first-death-queue")
        .and_then(text)
        .or_else(|| from_x_death("queue"));
    DeathRecord {
        reason,
        queue,
        deliveries: get("x-delivery-count").and_then(number),
    }
}

impl std::fmt::Display for DeathRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)?;
        match (self.reason.as_str(), self.deliveries) {
            ("delivery_limit", Some(n)) => write!(f, " after {n} deliveries")?,
            ("rejected", _) => f.write_str(" by a consumer or by hand")?,
            _ => {}
        }
        if let Some(queue) = &self.queue {
            write!(f, " in `{queue}`")?;
        }
        Ok(())
    }
}

/// A dead-lettered task, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadTask {
    Map { task: MapTask, body_len: u64 },
    Reduce(ReduceTask),
}

impl DeadTask {
    /// The task a dead letter carries, or `None` for anything that is not a task (garbage
    /// belongs to no job).
    pub fn decode(properties: &BasicProperties, body: &[u8]) -> Option<DeadTask> {
        let kind = properties.kind().as_ref().map(|k| k.as_str().to_string());
        match kind.as_deref() {
            Some(MAP_TASK_TYPE) => MapTask::decode(properties).ok().map(|task| DeadTask::Map {
                task,
                body_len: body.len() as u64,
            }),
            Some(REDUCE_TASK_TYPE) => ReduceTask::decode(properties, body)
                .ok()
                .map(DeadTask::Reduce),
            _ => None,
        }
    }

    pub fn job_id(&self) -> &crate::job::JobId {
        match self {
            DeadTask::Map { task, .. } => &task.job_id,
            DeadTask::Reduce(task) => &task.job_id,
        }
    }
}

/// What Redis says about a dead task's job, read by the watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFacts {
    pub state: JobState,
    /// The sealed total of chunks, once sealed.
    pub total_chunks: Option<u64>,
    pub partitions: u32,
    pub chunk_size: u64,
    pub max_record_size: u64,
    /// Whether the task's chunk is committed (a map task) or its partition reduced (a
    /// reduce task): then nothing is missing.
    pub task_done: bool,
    /// The last error a worker recorded for the chunk (`ns:{job}:errors`), if any.
    pub last_error: Option<String>,
    /// A lease was ever granted on the task's partition (reduce tasks): a reducer took it,
    /// and the janitor hands it over if that reducer froze or died (invariant 9).
    pub partition_leased: bool,
}

/// What the watcher does with a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchAction {
    /// The job cannot complete without this task: fail it with this reason (the first
    /// ending wins, so a reason recorded before is kept), then ack.
    FailJob(String),
    /// Nothing to do (why): ack.
    Drop(String),
    /// Not decidable yet (the job is still being published): requeue and look again.
    Wait(String),
}

/// Whether a job in `state` is one a dead letter fails: only a live one.
pub fn fails_in_state(state: JobState) -> bool {
    matches!(state, JobState::Running | JobState::Reducing)
}

/// Decides what a dead letter means for its job (`None`: the job is unknown or expired).
pub fn decide(
    task: &DeadTask,
    facts: Option<&JobFacts>,
    death: &DeathRecord,
    dead_letter_queue: &str,
) -> WatchAction {
    let Some(facts) = facts else {
        return WatchAction::Drop("its job is unknown (expired, or never existed)".into());
    };
    if !fails_in_state(facts.state) {
        return WatchAction::Drop(format!("its job already ended ({})", facts.state));
    }
    let kept = format!("the message is kept in `{dead_letter_queue}` for inspection");
    match task {
        DeadTask::Map { task, body_len } => {
            let limit = body_limit(facts.chunk_size, facts.max_record_size);
            if *body_len > limit {
                return WatchAction::Drop(format!(
                    "chunk {} is {body_len} bytes, more than the job's limit of {limit}: not a task of this job",
                    task.chunk
                ));
            }
            if facts.task_done {
                return WatchAction::Drop(format!("chunk {} was committed anyway", task.chunk));
            }
            let Some(total) = facts.total_chunks else {
                return WatchAction::Wait(format!(
                    "job `{}` is not sealed yet: chunk {} may not be one of its chunks",
                    task.job_id, task.chunk
                ));
            };
            if task.chunk >= total {
                return WatchAction::Drop(format!(
                    "chunk {} is beyond the job's {total} chunks: not a task of this job",
                    task.chunk
                ));
            }
            let recorded = facts
                .last_error
                .as_ref()
                .map(|error| format!("; last error a worker recorded for it: {error}"))
                .unwrap_or_default();
            WatchAction::FailJob(format!(
                "chunk {} (`{}`, line {}) was dead-lettered by RabbitMQ ({death}){recorded}; \
                 the job cannot complete without it; {kept}",
                task.chunk, task.source, task.first_line
            ))
        }
        DeadTask::Reduce(task) => {
            if task.partition >= facts.partitions {
                return WatchAction::Drop(format!(
                    "partition {} is beyond the job's {} partitions",
                    task.partition, facts.partitions
                ));
            }
            if facts.task_done {
                return WatchAction::Drop(format!(
                    "partition {} was reduced anyway",
                    task.partition
                ));
            }
            if facts.state != JobState::Reducing {
                return WatchAction::Drop(
                    "a reduce task of a job that is not reducing: not one of its tasks".into(),
                );
            }
            if facts.partition_leased {
                // A duplicate that kept finding the lease busy, or a fenced holder's task:
                // the partition is in hand, or the janitor republishes it.
                return WatchAction::Drop(format!(
                    "partition {} was taken by a reducer; the janitor hands it over if that one froze or died",
                    task.partition
                ));
            }
            WatchAction::FailJob(format!(
                "the reduce task of partition {} was dead-lettered by RabbitMQ ({death}); \
                 the job cannot complete without it; {kept}",
                task.partition
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobId;
    use lapin::types::{FieldArray, LongString};

    fn long(text: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(text))
    }

    fn map_task(chunk: u64) -> DeadTask {
        DeadTask::Map {
            task: MapTask {
                job_id: JobId::parse("j").unwrap(),
                chunk,
                source: "input.txt".into(),
                offset: 0,
                first_line: 3400,
            },
            body_len: 100,
        }
    }

    fn reduce_task(partition: u32) -> DeadTask {
        DeadTask::Reduce(ReduceTask {
            job_id: JobId::parse("j").unwrap(),
            partition,
        })
    }

    fn facts(state: JobState) -> JobFacts {
        JobFacts {
            state,
            total_chunks: Some(20),
            partitions: 4,
            chunk_size: 1000,
            max_record_size: 500,
            task_done: false,
            last_error: None,
            partition_leased: false,
        }
    }

    fn rejected() -> DeathRecord {
        DeathRecord {
            reason: "rejected".into(),
            queue: Some("ns.map".into()),
            deliveries: None,
        }
    }

    #[test]
    fn x_death_headers_become_a_reason() {
        let mut death = FieldTable::default();
        death.insert("reason".into(), long("delivery_limit"));
        death.insert("queue".into(), long("ns.map"));
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(20));
        let record = death_record(Some(&headers));
        assert_eq!(
            record,
            DeathRecord {
                reason: "delivery_limit".into(),
                queue: Some("ns.map".into()),
                deliveries: Some(20),
            }
        );
        assert_eq!(
            record.to_string(),
            "delivery_limit after 20 deliveries in `ns.map`"
        );

        // The first death's own headers win over the x-death list.
        headers.insert("x-first-death-reason".into(), long("rejected"));
        headers.insert("x-first-death-queue".into(), long("ns.reduce"));
        let record = death_record(Some(&headers));
        assert_eq!(record.reason, "rejected");
        assert_eq!(record.queue.as_deref(), Some("ns.reduce"));
        assert_eq!(
            record.to_string(),
            "rejected by a consumer or by hand in `ns.reduce`"
        );

        let bare = death_record(None);
        assert_eq!(bare.reason, "unknown");
        assert_eq!(bare.to_string(), "unknown");
    }

    #[test]
    fn only_live_jobs_fail() {
        assert!(fails_in_state(JobState::Running));
        assert!(fails_in_state(JobState::Reducing));
        for ended in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
            assert!(!fails_in_state(ended), "{ended}");
            assert!(matches!(
                decide(&map_task(3), Some(&facts(ended)), &rejected(), "ns.dead"),
                WatchAction::Drop(_)
            ));
        }
        assert!(matches!(
            decide(&map_task(3), None, &rejected(), "ns.dead"),
            WatchAction::Drop(_)
        ));
    }

    #[test]
    fn a_missing_chunk_of_a_live_job_fails_it_naming_the_chunk_and_reason() {
        let WatchAction::FailJob(reason) = decide(
            &map_task(17),
            Some(&facts(JobState::Running)),
            &rejected(),
            "ns.dead",
        ) else {
            panic!("a dead chunk fails its job");
        };
        assert_eq!(
            reason,
            "chunk 17 (`input.txt`, line 3400) was dead-lettered by RabbitMQ (rejected by a \
             consumer or by hand in `ns.map`); the job cannot complete without it; the message \
             is kept in `ns.dead` for inspection"
        );
        let mut with_error = facts(JobState::Running);
        with_error.last_error = Some("panic: boom".into());
        let WatchAction::FailJob(reason) =
            decide(&map_task(17), Some(&with_error), &rejected(), "ns.dead")
        else {
            panic!("a dead chunk fails its job");
        };
        assert!(
            reason.contains("; last error a worker recorded for it: panic: boom;"),
            "{reason}"
        );
    }

    #[test]
    fn tasks_that_are_not_missing_never_fail_the_job() {
        let live = facts(JobState::Running);
        let mut done = live.clone();
        done.task_done = true;
        assert!(matches!(
            decide(&map_task(3), Some(&done), &rejected(), "d"),
            WatchAction::Drop(_)
        ));
        assert!(matches!(
            decide(&map_task(20), Some(&live), &rejected(), "d"),
            WatchAction::Drop(reason) if reason.contains("beyond the job's 20 chunks")
        ));
        let oversized = DeadTask::Map {
            task: match map_task(3) {
                DeadTask::Map { task, .. } => task,
                DeadTask::Reduce(_) => unreachable!(),
            },
            body_len: 64 * 1024,
        };
        assert!(matches!(
            decide(&oversized, Some(&live), &rejected(), "d"),
            WatchAction::Drop(reason) if reason.contains("more than the job's limit")
        ));
        let mut unsealed = live.clone();
        unsealed.total_chunks = None;
        assert!(matches!(
            decide(&map_task(3), Some(&unsealed), &rejected(), "d"),
            WatchAction::Wait(_)
        ));
    }

    #[test]
    fn a_dead_reduce_task_fails_a_reducing_job_only_if_its_partition_is_missing() {
        let reducing = facts(JobState::Reducing);
        let WatchAction::FailJob(reason) =
            decide(&reduce_task(2), Some(&reducing), &rejected(), "ns.dead")
        else {
            panic!("a dead reduce task fails its job");
        };
        assert!(
            reason.starts_with(
                "the reduce task of partition 2 was dead-lettered by RabbitMQ (rejected"
            ),
            "{reason}"
        );
        assert!(matches!(
            decide(&reduce_task(4), Some(&reducing), &rejected(), "d"),
            WatchAction::Drop(_)
        ));
        let mut reduced = reducing.clone();
        reduced.task_done = true;
        assert!(matches!(
            decide(&reduce_task(2), Some(&reduced), &rejected(), "d"),
            WatchAction::Drop(_)
        ));
        assert!(matches!(
            decide(
                &reduce_task(2),
                Some(&facts(JobState::Running)),
                &rejected(),
                "d"
            ),
            WatchAction::Drop(_)
        ));
    }

    #[test]
    fn only_tasks_decode() {
        let task = MapTask {
            job_id: JobId::parse("j").unwrap(),
            chunk: 1,
            source: "a".into(),
            offset: 0,
            first_line: 1,
        };
        assert_eq!(
            DeadTask::decode(&task.properties(), b"abc"),
            Some(DeadTask::Map { task, body_len: 3 })
        );
        let reduce = ReduceTask {
            job_id: JobId::parse("j").unwrap(),
            partition: 1,
        };
        assert_eq!(
            DeadTask::decode(&reduce.properties(), &reduce.body()),
            Some(DeadTask::Reduce(reduce))
        );
        assert_eq!(DeadTask::decode(&BasicProperties::default(), b"x"), None);
    }
}
