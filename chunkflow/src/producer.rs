//! The producer's logic: submit a job (validate inputs, store the spec, stream chunks to the
//! map queue with confirms, seal the total), wait for it, show its status, print its result.
//!
//! Order matters for exactness: inputs are checked before anything is stored or published;
//! the spec, with every input's fingerprint, is stored before the first task is published;
//! the total is sealed only after every chunk is confirmed and every file was found
//! unchanged once read to its end, so no job can complete before all of its chunks exist,
//! nor over bytes other than its recorded inputs'. A submit under an existing `--job-id`
//! resumes it only if its settings and input fingerprints are the same; otherwise it is
//! refused before it publishes anything (the spec is created first-writer-wins, so of two
//! producers racing on one id over different inputs, the second is refused).
//!
//! Memory stays bounded whatever the input size: a reader thread cuts chunks into a channel
//! of two; the publisher keeps at most `max_unconfirmed_bytes` unconfirmed; and when the
//! map queue holds more than `max_queued_bytes` the producer waits for workers to drain it.
//!
//! No wait is unbounded: every broker operation has the connection's `broker_timeout`, Redis
//! retries stop after about two minutes, and a map queue that does not drain for
//! [`QUEUE_ROOM_TIMEOUT`] fails the submit naming the queue.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::broker::publisher::ReconnectError;
use crate::broker::publisher::{
    reduce_task_messages, Pending, PublishError, ReconnectingPublisher,
};
use crate::broker::topology::{BrokerNodes, Topology};
use crate::chunker::{Chunk, ChunkError, Chunker};
use crate::config::ConnectionConfig;
use crate::fault::Faults;
use crate::input::{expand_inputs, InputError, InputSource};
use crate::job::{now_ms, JobId, JobState, JobStatus, SpecDifference};
use crate::jobs::{JobError, JobRegistry, JobSpec, SPEC_VERSION};
use crate::output::write_results;
use crate::protocol::messages::MapTask;
use crate::records::RecordFormat;
use crate::size::human_bytes;
use crate::store::{SealOutcome, Store, StoreError};

/// Largest accepted `--partitions`.
pub const MAX_PARTITIONS: u32 = 4096;
/// Partitions of a job submitted without `--partitions` to a single Redis or a small
/// cluster.
pub const DEFAULT_PARTITIONS: u32 = 8;

/// The partitions of a job submitted without `--partitions` to Redis with `masters`
/// masters: enough for every master to hold a share of the job's data (ARCHITECTURE.md,
/// invariant 4): 8, or twice the masters where there are more than 4.
pub fn default_partitions(masters: usize) -> u32 {
    let twice = u32::try_from(masters.saturating_mul(2)).unwrap_or(MAX_PARTITIONS);
    twice.clamp(DEFAULT_PARTITIONS, MAX_PARTITIONS)
}
/// Largest accepted `--chunk-size` and `--max-record-size`: a chunk must fit in one message.
pub const MAX_CHUNK_BYTES: u64 = 100 * 1024 * 1024;
/// How long the producer waits for a full map queue to drain at all before giving up.
pub const QUEUE_ROOM_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// What to submit.
#[derive(Debug, Clone)]
pub struct SubmitOptions {
    pub kind: String,
    pub params: serde_json::Value,
    /// `None`: [`default_partitions`] for the Redis the job runs on.
    pub partitions: Option<u32>,
    pub chunk_size: u64,
    pub max_record_size: u64,
    pub inputs: Vec<String>,
    pub job_id: Option<JobId>,
    pub ttl: Duration,
    pub max_queued_bytes: u64,
    pub max_unconfirmed_bytes: u64,
    /// How long to keep trying to reach the broker after losing it mid-publish.
    pub reconnect_timeout: Duration,
}

/// Why a producer command failed. Each message names the cause and what to do, and says
/// each cause once under `{:#}`: a variant that shows its inner error in its message does
/// not also make it its source.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("{0}; nothing was published")]
    Input(InputError),
    /// The command line asks for something impossible (exit code 2 in the `producer`).
    #[error("{0}")]
    Usage(String),
    #[error("{0}; the job was marked failed")]
    Chunk(ChunkError),
    /// Reading the inputs failed after the job was stored: it was marked failed, and the
    /// message says how much had been published.
    #[error("{error}; the job was marked failed {published}; re-submit it")]
    Reading {
        error: ReadError,
        published: PublishedSoFar,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Connect(#[from] ReconnectError),
    #[error("{0}; the job was marked failed, re-submit it")]
    Publish(PublishError),
    /// The thread reading the inputs panicked or was cancelled.
    #[error("the input reader stopped unexpectedly")]
    Reader(#[source] tokio::task::JoinError),
    /// Writing the result (or other output) failed; a reader that closed the pipe early
    /// (`producer result JOB | head`) shows as `BrokenPipe`.
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
    #[error("invalid job: {0}")]
    InvalidJob(JobError),
    #[error("job `{job}` {state}: {reason}")]
    JobEnded {
        job: String,
        state: JobState,
        reason: String,
    },
    #[error("no job `{job}` in namespace `{namespace}` (a typo, another --namespace, or it expired after its time to live)")]
    NoSuchJob { job: String, namespace: String },
    #[error("job `{job}` vanished from Redis while it was {state}: Redis lost its data (a restart without persistence, or eviction). Its result cannot be trusted; re-submit it")]
    JobVanished { job: String, state: JobState },
    #[error("job `{job}` already exists with other inputs or settings ({}); nothing was published: choose another --job-id, or resume with the inputs and settings it was submitted with", join_differences(.differences))]
    ResumeMismatch {
        job: String,
        differences: Vec<SpecDifference>,
    },
    #[error("job `{job}` has no result yet: it is {state} ({progress}); wait with `producer status {job}` or `producer submit --wait`")]
    NotFinished {
        job: String,
        state: JobState,
        progress: String,
    },
    #[error("job `{job}` succeeded but the result of partition {partition} is missing from Redis (expired or evicted); re-run the job")]
    ResultMissing { job: String, partition: u32 },
    #[error("job `{job}`: {what}")]
    Protocol { job: String, what: String },
    #[error("the job failed: {0}")]
    Local(String),
    #[error("the map queue {queue} did not drain for {after:?}: it holds {ready} chunks and publishing waits while it holds {limit} or more. Are any workers running? (start workers, or raise --max-queued-bytes)")]
    QueueFull {
        queue: String,
        ready: u32,
        limit: u64,
        after: Duration,
    },
}

/// Why the inputs could not be read to their end once the job was stored.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Input(InputError),
    #[error(transparent)]
    Chunk(ChunkError),
}

/// How many chunks a failed submit had published, as a message says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedSoFar(pub u64);

impl std::fmt::Display for PublishedSoFar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => f.write_str("before any chunk was published"),
            1 => f.write_str("after 1 chunk was published"),
            n => write!(f, "after {n} chunks were published"),
        }
    }
}

fn join_differences(differences: &[SpecDifference]) -> String {
    let texts: Vec<String> = differences.iter().map(ToString::to_string).collect();
    texts.join(", ")
}

impl ProducerError {
    /// Whether the output's reader went away (a closed pipe): the command did its part.
    pub fn is_closed_output(&self) -> bool {
        matches!(self, ProducerError::Output(error) if error.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

// Not `#[from]`: that would also make the inner error the source, and `{:#}` would print it
// twice.
impl From<JobError> for ProducerError {
    fn from(error: JobError) -> Self {
        ProducerError::InvalidJob(error)
    }
}

impl From<InputError> for ProducerError {
    fn from(error: InputError) -> Self {
        ProducerError::Input(error)
    }
}

impl From<ChunkError> for ProducerError {
    fn from(error: ChunkError) -> Self {
        ProducerError::Chunk(error)
    }
}

impl From<PublishError> for ProducerError {
    fn from(error: PublishError) -> Self {
        ProducerError::Publish(error)
    }
}

impl SubmitOptions {
    /// Checks the sizes, partitions and job id.
    pub fn validate(&self) -> Result<(), ProducerError> {
        if let Some(partitions) = self.partitions.filter(|p| *p == 0 || *p > MAX_PARTITIONS) {
            return Err(ProducerError::Usage(format!(
                "--partitions must be between 1 and {MAX_PARTITIONS}, got {partitions}"
            )));
        }
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK_BYTES {
            return Err(ProducerError::Usage(format!(
                "--chunk-size must be between 1 byte and {}, got {}",
                human_bytes(MAX_CHUNK_BYTES),
                self.chunk_size
            )));
        }
        if self.max_record_size == 0 || self.max_record_size > MAX_CHUNK_BYTES {
            return Err(ProducerError::Usage(format!(
                "--max-record-size must be between 1 byte and {}, got {}",
                human_bytes(MAX_CHUNK_BYTES),
                self.max_record_size
            )));
        }
        Ok(())
    }
}

/// A new job id: `<kind>-<utc date>-<utc time>-<random>`.
pub fn generate_job_id(kind: &str) -> JobId {
    use std::hash::{BuildHasher, Hasher};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(now.as_nanos());
    hasher.write_u32(std::process::id());
    let kind: String = kind
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(32)
        .collect();
    let kind = if kind.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        kind
    } else {
        format!("job{kind}")
    };
    let id = format!(
        "{kind}-{year:04}{month:02}{day:02}-{:02}{:02}{:02}-{:06x}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        hasher.finish() & 0xff_ffff
    );
    // Letters, digits, `-` and `_` only, starting with a letter or digit: always valid.
    JobId::parse(&id).unwrap_or_else(|_| unreachable!("generated job id `{id}` is valid"))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's method).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Progress lines on standard error, at most one per `every`.
struct Progress {
    enabled: bool,
    every: Duration,
    last: Option<Instant>,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        let every = if std::io::stderr().is_terminal() {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(2)
        };
        Progress {
            enabled,
            every,
            last: None,
        }
    }

    fn line(&mut self, force: bool, text: impl FnOnce() -> String) {
        if !self.enabled {
            return;
        }
        let due = self.last.is_none_or(|last| last.elapsed() >= self.every);
        if force || due {
            eprintln!("{}", text());
            self.last = Some(Instant::now());
        }
    }
}

/// A job that is created and about to be published.
pub struct Submission {
    options: SubmitOptions,
    sources: Vec<InputSource>,
    spec: JobSpec,
    /// How the job's code wants its input cut.
    format: RecordFormat,
    store: Store,
    publisher: Option<ReconnectingPublisher>,
    topology: Topology,
    started: Instant,
    /// The job existed and was already sealed: nothing to publish.
    already_sealed: bool,
    /// How long Redis retries last (`--outage-timeout`).
    outage_timeout: Duration,
}

/// What publishing did.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    pub chunks: u64,
    pub bytes: u64,
}

impl Submission {
    /// Validates the options and inputs, connects, and stores the job's spec. Nothing is
    /// published yet; a missing input or an unknown job kind fails here.
    pub async fn create(
        connection_args: &ConnectionConfig,
        registry: &JobRegistry,
        options: SubmitOptions,
    ) -> Result<Submission, ProducerError> {
        options.validate()?;
        let sources = expand_inputs(&options.inputs)?;
        let format = registry
            .build(&options.kind, &options.params)?
            .input_format();
        // Every broker URL is checked before anything is connected to.
        let nodes = BrokerNodes::for_connection(connection_args).map_err(ReconnectError::from)?;
        let store = Store::connect(connection_args).await?;
        let topology = Topology::for_connection(connection_args);
        let publisher = ReconnectingPublisher::connect(
            nodes,
            "producer",
            topology.clone(),
            options.max_unconfirmed_bytes as usize,
            options.reconnect_timeout,
        )
        .await?;
        let spec = JobSpec {
            version: SPEC_VERSION,
            id: options
                .job_id
                .clone()
                .unwrap_or_else(|| generate_job_id(&options.kind)),
            kind: options.kind.clone(),
            params: options.params.clone(),
            partitions: options
                .partitions
                .unwrap_or_else(|| default_partitions(store.masters())),
            chunk_size: options.chunk_size,
            max_record_size: options.max_record_size,
            created_ms: now_ms(),
            ttl_secs: options.ttl.as_secs().max(1),
            inputs: Some(sources.iter().map(InputSource::fingerprint).collect()),
        };
        let mut already_sealed = false;
        let spec = match store.create_job(&spec).await {
            Ok(()) => spec,
            Err(StoreError::JobExists(id)) if options.job_id.is_some() => {
                // Resume: same job id, same settings, same input fingerprints, still
                // running. Chunks are cut the same way from the same input, so republishing
                // them is harmless; anything else is refused before publishing.
                let status = job_status(&store, &id).await?;
                check_resumable(&status, &spec)?;
                already_sealed = status.total_chunks.is_some();
                tracing::warn!(job_id = %id, "resuming an existing job");
                // A producer killed before the partitions' records all existed left that
                // to the one resuming (before it publishes anything).
                store.ensure_partitions(&status.spec).await?;
                status.spec
            }
            Err(error) => return Err(error.into()),
        };
        Ok(Submission {
            options,
            sources,
            spec,
            format,
            store,
            publisher: Some(publisher),
            topology,
            started: Instant::now(),
            already_sealed,
            outage_timeout: connection_args.outage_timeout,
        })
    }

    /// The store the job lives in (to follow it after publishing).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// When the submit started (for the throughput of `--wait`).
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn job_id(&self) -> &str {
        &self.spec.id
    }

    /// Publishes every chunk with confirms and seals the job. On failure the job is marked
    /// failed so workers drop what was already published.
    pub async fn publish(&mut self, show_progress: bool) -> Result<Published, ProducerError> {
        if self.already_sealed {
            return Ok(Published {
                chunks: 0,
                bytes: 0,
            });
        }
        // The heartbeat tells reducers' janitor this producer is alive, even while it waits
        // for queue room or for the broker to come back.
        let heartbeat = {
            let store = self.store.clone();
            let job = self.spec.id.to_string();
            tokio::spawn(async move {
                loop {
                    if let Err(error) = store.producer_heartbeat(&job).await {
                        tracing::warn!(error = %error, "producer heartbeat failed");
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            })
        };
        let result = self.publish_inner(show_progress).await;
        heartbeat.abort();
        if let Some(publisher) = self.publisher.take() {
            publisher.close().await;
        }
        match result {
            Ok(published) => Ok(published),
            Err(error) => {
                let reason = format!("producer failed while publishing: {error}");
                if let Err(store_error) = self
                    .store
                    .end_job(&self.spec, JobState::Failed, &reason)
                    .await
                {
                    tracing::error!(error = %store_error, "could not mark the job failed");
                }
                Err(error)
            }
        }
    }

    async fn publish_inner(&mut self, show_progress: bool) -> Result<Published, ProducerError> {
        let faults = Faults::from_env();
        let mut progress = Progress::new(show_progress);
        let mut publisher = self
            .publisher
            .take()
            .ok_or_else(|| ProducerError::Protocol {
                job: self.spec.id.to_string(),
                what: "published twice".into(),
            })?;
        let (sender, mut receiver) = mpsc::channel::<Result<(Arc<str>, Chunk), ReadError>>(2);
        let sources = self.sources.clone();
        let chunk_size = self.options.chunk_size as usize;
        let max_record = self.options.max_record_size as usize;
        let format = self.format;
        // The reader sends its one error down the channel, after the chunks it cut, so the
        // error arrives once those are published and says how many were.
        let reader = tokio::task::spawn_blocking(move || {
            let error = match read_sources(&sources, chunk_size, max_record, format, &sender) {
                Ok(()) | Err(None) => return,
                Err(Some(error)) => error,
            };
            let _ = sender.blocking_send(Err(error));
        });

        let map_queue = self.topology.map_queue();
        let limit_messages = (self.options.max_queued_bytes / self.options.chunk_size).max(4);
        let mut chunks = 0u64;
        let mut bytes = 0u64;
        let mut bytes_since_check = 0u64;
        while let Some(next) = receiver.recv().await {
            let (source, chunk) = next.map_err(|error| ProducerError::Reading {
                error,
                published: PublishedSoFar(chunks),
            })?;
            if bytes_since_check >= self.options.max_queued_bytes / 4 {
                bytes_since_check = 0;
                wait_for_queue_room(&mut publisher, &map_queue, limit_messages).await?;
            }
            let task = MapTask {
                job_id: self.spec.id.clone(),
                chunk: chunks,
                source: source.to_string(),
                offset: chunk.offset,
                first_line: chunk.first_line,
            };
            let len = chunk.data.len() as u64;
            let what = format!("chunk {} of `{source}`", task.chunk);
            if faults.publish_twice {
                let copy = Pending::new(&map_queue, chunk.data.clone(), task.properties(), &what);
                publisher.publish(copy).await?;
            }
            let message = Pending::new(&map_queue, chunk.data, task.properties(), what);
            publisher.publish(message).await?;
            chunks += 1;
            bytes += len;
            bytes_since_check += len;
            progress.line(false, || {
                format!(
                    "{}: published {chunks} chunks, {}",
                    self.spec.id,
                    human_bytes(bytes)
                )
            });
        }
        reader.await.map_err(ProducerError::Reader)?;
        publisher.flush().await?;
        progress.line(true, || {
            format!(
                "{}: published {chunks} chunks, {}, all confirmed",
                self.spec.id,
                human_bytes(bytes)
            )
        });
        self.seal(&mut publisher, chunks).await?;
        self.publisher = Some(publisher);
        Ok(Published { chunks, bytes })
    }

    async fn seal(
        &self,
        publisher: &mut ReconnectingPublisher,
        total: u64,
    ) -> Result<(), ProducerError> {
        let job = self.spec.id.to_string();
        // Sealing is idempotent, so a Redis blip is retried; if an earlier attempt sealed
        // and completed the job but its reply was lost, the job is already reducing and
        // nobody has published its reduce tasks: publish them (duplicates are harmless).
        let outcome = retry_transient("sealing the job", self.outage_timeout, || {
            self.store.seal_job(&job, total)
        })
        .await?;
        match outcome {
            SealOutcome::Sealed { .. } => Ok(()),
            SealOutcome::Completed | SealOutcome::NotRunning(JobState::Reducing) => {
                for message in
                    reduce_task_messages(&self.topology, &self.spec.id, self.spec.partitions)
                {
                    publisher.publish(message).await?;
                }
                publisher.flush().await?;
                Ok(())
            }
            SealOutcome::NotRunning(state) => {
                let reason = self
                    .store
                    .status(&job)
                    .await?
                    .and_then(|s| s.reason)
                    .unwrap_or_default();
                Err(ProducerError::JobEnded { job, state, reason })
            }
            SealOutcome::Missing => {
                record_vanished(&self.store, &self.spec, JobState::Running).await;
                Err(ProducerError::JobVanished {
                    job,
                    state: JobState::Running,
                })
            }
            SealOutcome::Mismatch { recorded } => Err(ProducerError::Protocol {
                job,
                what: format!("it was already sealed with {recorded} chunks, but this submit published {total}: the input changed"),
            }),
            SealOutcome::Corrupt(detail) => Err(ProducerError::Protocol { job, what: detail }),
            SealOutcome::Lost(detail) => Err(ProducerError::Protocol {
                job,
                what: crate::protocol::lost_state_reason(&detail),
            }),
        }
    }
}

/// Runs `operation` until it succeeds or fails for a reason other than Redis being
/// unavailable, for up to `outage_timeout` of retries (the connection's `--outage-timeout`,
/// the same time workers and reducers wait out an outage).
pub async fn retry_transient<T, F, Fut>(
    what: &str,
    outage_timeout: Duration,
    mut operation: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match operation().await {
            Err(error) if error.is_transient() && started.elapsed() < outage_timeout => {
                tracing::warn!(error = %error, retry_in = ?backoff.current(), "{what}: Redis unavailable; retrying");
                backoff.wait().await;
            }
            other => return other,
        }
    }
}

/// Waits while the map queue holds `limit_messages` or more chunks (checked every quarter
/// of `--max-queued-bytes` published); fails if the queue does not shrink for
/// [`QUEUE_ROOM_TIMEOUT`].
async fn wait_for_queue_room(
    publisher: &mut ReconnectingPublisher,
    queue: &str,
    limit_messages: u64,
) -> Result<(), ProducerError> {
    // Messages still unconfirmed are not in the queue's count yet: wait for their confirms
    // first, or a fast producer would outrun the count and never pause.
    publisher.flush().await?;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut drain = DrainWatch::new(QUEUE_ROOM_TIMEOUT);
    loop {
        let ready = publisher.ready_messages(queue).await?;
        if u64::from(ready) < limit_messages {
            return Ok(());
        }
        if drain.stalled(ready, Instant::now()) {
            return Err(ProducerError::QueueFull {
                queue: queue.to_string(),
                ready,
                limit: limit_messages,
                after: QUEUE_ROOM_TIMEOUT,
            });
        }
        tracing::debug!(ready, limit_messages, "map queue full; waiting for workers");
        backoff.wait().await;
    }
}

/// Whether a queue has stopped draining: `stall` has passed since its depth last fell.
#[derive(Debug)]
struct DrainWatch {
    stall: Duration,
    lowest: Option<u32>,
    since: Option<Instant>,
}

impl DrainWatch {
    fn new(stall: Duration) -> Self {
        DrainWatch {
            stall,
            lowest: None,
            since: None,
        }
    }

    /// Records a depth seen at `now`; true once the depth has not fallen for `stall`.
    fn stalled(&mut self, ready: u32, now: Instant) -> bool {
        if self.lowest.is_none_or(|lowest| ready < lowest) {
            self.lowest = Some(ready);
            self.since = Some(now);
        }
        self.since
            .is_some_and(|since| now.saturating_duration_since(since) >= self.stall)
    }
}

/// Cuts every source into chunks, in order, and sends them; checks each file unchanged once
/// read to its end. `Err(None)`: the receiver went away (publishing failed), nothing to say.
fn read_sources(
    sources: &[InputSource],
    chunk_size: usize,
    max_record: usize,
    format: RecordFormat,
    sender: &mpsc::Sender<Result<(Arc<str>, Chunk), ReadError>>,
) -> Result<(), Option<ReadError>> {
    for source in sources {
        let name: Arc<str> = Arc::from(source.display());
        let mut input = source
            .open_checked()
            .map_err(|e| Some(ReadError::Input(e)))?;
        let mut chunker = Chunker::with_format(&mut input, &name, chunk_size, max_record, format);
        while let Some(chunk) = chunker
            .next_chunk()
            .map_err(|e| Some(ReadError::Chunk(e)))?
        {
            sender
                .blocking_send(Ok((name.clone(), chunk)))
                .map_err(|_| None)?;
        }
        drop(chunker);
        input.finish().map_err(|e| Some(ReadError::Input(e)))?;
    }
    Ok(())
}

/// Whether an existing job may be resumed by a submit with `wanted` settings and inputs.
fn check_resumable(status: &JobStatus, wanted: &JobSpec) -> Result<(), ProducerError> {
    let existing = &status.spec;
    let differences = existing.differences(wanted);
    if !differences.is_empty() {
        return Err(ProducerError::ResumeMismatch {
            job: existing.id.to_string(),
            differences,
        });
    }
    if status.state.is_final() {
        return Err(ProducerError::JobEnded {
            job: existing.id.to_string(),
            state: status.state,
            reason: status
                .reason
                .clone()
                .unwrap_or_else(|| "it already ended; choose another --job-id".into()),
        });
    }
    Ok(())
}

/// Cancels a running job: workers drop its queued tasks, reducers skip it.
pub async fn cancel_job(store: &Store, job: &str) -> Result<JobStatus, ProducerError> {
    let status = job_status(store, job).await?;
    let ended = store
        .end_job(&status.spec, JobState::Cancelled, "cancelled by the user")
        .await?;
    let after = job_status(store, job).await?;
    if !ended {
        return Err(ProducerError::JobEnded {
            job: job.to_string(),
            state: after.state,
            reason: "it had already ended; nothing to cancel".into(),
        });
    }
    Ok(after)
}

/// Leaves a failed record for a job whose state Redis lost, so `status` tells why.
pub async fn record_vanished(store: &Store, spec: &JobSpec, state: JobState) {
    let reason = format!(
        "Redis lost this job's state while it was {state} (a restart without persistence, or \
         eviction); its result cannot be trusted: re-submit it"
    );
    if let Err(error) = store.tombstone_lost_job(spec, &reason).await {
        tracing::warn!(error = %error, "could not record the lost job");
    }
}

/// Fetches a job's status.
pub async fn job_status(store: &Store, job: &str) -> Result<JobStatus, ProducerError> {
    JobId::parse(job).map_err(|e| ProducerError::Usage(e.to_string()))?;
    store
        .status(job)
        .await?
        .ok_or_else(|| ProducerError::NoSuchJob {
            job: job.to_string(),
            namespace: store.keys().namespace().to_string(),
        })
}

/// Writes a succeeded job's result in the job's [`crate::output::ResultFormat`] (its code,
/// from `registry`, gives the order and header); returns the job's status.
pub async fn write_result(
    store: &Store,
    registry: &JobRegistry,
    job: &str,
    out: &mut impl std::io::Write,
) -> Result<JobStatus, ProducerError> {
    let status = job_status(store, job).await?;
    match status.state {
        JobState::Succeeded => {}
        JobState::Failed | JobState::Cancelled => {
            return Err(ProducerError::JobEnded {
                job: job.to_string(),
                state: status.state,
                reason: status.reason.unwrap_or_default(),
            })
        }
        state => {
            return Err(ProducerError::NotFinished {
                job: job.to_string(),
                state,
                progress: status.progress_summary(),
            })
        }
    }
    let results = store.partition_results(job, status.spec.partitions).await?;
    let mut present = Vec::with_capacity(results.len());
    for (partition, result) in results.into_iter().enumerate() {
        present.push(result.ok_or(ProducerError::ResultMissing {
            job: job.to_string(),
            partition: partition as u32,
        })?);
    }
    let format = registry
        .build(&status.spec.kind, &status.spec.params)?
        .result_format();
    write_results(&present, &format, out).map_err(ProducerError::Output)?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn a_queue_stalls_only_when_it_stops_draining() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut watch = DrainWatch::new(Duration::from_secs(10));
        assert!(!watch.stalled(100, at(0)));
        assert!(!watch.stalled(100, at(9)));
        // It drained a little: the clock starts again.
        assert!(!watch.stalled(99, at(9)));
        assert!(!watch.stalled(120, at(18)), "growth is not draining");
        assert!(watch.stalled(99, at(19)));
    }

    #[test]
    fn a_full_queue_error_names_the_queue() {
        let error = ProducerError::QueueFull {
            queue: "ns.map".into(),
            ready: 40,
            limit: 32,
            after: QUEUE_ROOM_TIMEOUT,
        };
        let text = error.to_string();
        assert!(text.contains("ns.map") && text.contains("600s"), "{text}");
    }

    #[test]
    fn each_cause_is_said_once() {
        fn chain(error: &dyn std::error::Error) -> String {
            let mut text = error.to_string();
            let mut source = error.source();
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        }
        let input = ProducerError::from(InputError::Empty);
        assert_eq!(
            chain(&input),
            format!("{}; nothing was published", InputError::Empty)
        );
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let output = ProducerError::Output(pipe);
        assert_eq!(chain(&output), "cannot write the output: broken pipe");
        assert!(output.is_closed_output());
        let full = ProducerError::Output(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(!full.is_closed_output());
        assert!(!ProducerError::Usage("x".into()).is_closed_output());
    }

    #[test]
    fn errors_after_the_spec_say_how_much_was_published() {
        let deleted = |published| {
            ProducerError::Reading {
                error: ReadError::Input(InputError::DeletedWhileReading {
                    path: "x.txt".into(),
                }),
                published: PublishedSoFar(published),
            }
            .to_string()
        };
        assert_eq!(
            deleted(675),
            "input `x.txt` was deleted while being read; the job was marked failed after 675 \
             chunks were published; re-submit it"
        );
        assert!(deleted(1).contains("after 1 chunk was published"));
        assert!(deleted(0).contains("failed before any chunk was published"));
        assert!(!deleted(675).contains("nothing was published"));
    }

    #[test]
    fn the_default_partitions_give_every_master_a_share() {
        assert_eq!(default_partitions(1), 8);
        assert_eq!(default_partitions(3), 8);
        assert_eq!(default_partitions(4), 8);
        assert_eq!(default_partitions(6), 12);
        assert_eq!(default_partitions(10_000), MAX_PARTITIONS);
    }

    #[test]
    fn a_refused_resume_names_every_difference() {
        let error = ProducerError::ResumeMismatch {
            job: "j".into(),
            differences: vec![
                SpecDifference::Partitions {
                    recorded: 4,
                    wanted: 3,
                },
                SpecDifference::InputRemoved {
                    path: "a.txt".into(),
                },
                SpecDifference::InputAdded {
                    path: "b.txt".into(),
                },
            ],
        };
        let text = error.to_string();
        assert!(
            text.contains("(partitions 4 vs 3, input `a.txt` removed, input `b.txt` added)")
                && text.contains("nothing was published"),
            "{text}"
        );
    }

    #[test]
    fn generated_ids_are_valid() {
        let id = generate_job_id("wordcount");
        assert!(JobId::parse(&id).is_ok(), "{id}");
        assert!(generate_job_id("-x").starts_with("job-x-"));
        assert!(id.starts_with("wordcount-"));
    }
}
