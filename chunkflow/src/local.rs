//! The local runner: a job's own code in one process, on all cores, with no broker and no
//! Redis. `producer submit --local` uses it to try a job, and the end-to-end tests use it as
//! the reference the distributed result must equal.
//!
//! It runs exactly what the distributed pipeline runs — the same chunker, the same
//! `map_chunk` per chunk, the same `reduce_partition` per partition, the same output layer
//! — only the transport differs: chunks go to map threads through a bounded channel, and
//! partials stay in memory. Like the producer, it refuses a file that changed while it was
//! read.

use std::collections::BTreeMap;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use crate::chunker::{Chunk, Chunker};
use crate::input::expand_inputs;
use crate::jobs::{ChunkContext, Job, JobRegistry, OUTPUT_RECORDS};
use crate::output::write_results;
use crate::producer::{ProducerError, SubmitOptions};

/// One partition's partials, each with the id of its chunk.
type Partials = Vec<(u64, Vec<u8>)>;

/// What a local run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalOutcome {
    pub chunks: u64,
    /// The same counters a distributed run reports in `status`.
    pub counters: BTreeMap<String, u64>,
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// The first failure, by chunk id, so the message does not depend on thread timing.
#[derive(Default)]
struct Failure {
    first: Mutex<Option<(u64, String)>>,
    stop: AtomicBool,
}

impl Failure {
    fn record(&self, chunk: u64, reason: String) {
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        if first.as_ref().is_none_or(|(c, _)| chunk < *c) {
            *first = Some((chunk, reason));
        }
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Runs the job of `options` with `threads` threads and writes its result to `out`.
pub fn run_local(
    registry: &JobRegistry,
    options: &SubmitOptions,
    threads: usize,
    out: &mut impl Write,
) -> Result<LocalOutcome, ProducerError> {
    options.validate()?;
    let sources = expand_inputs(&options.inputs)?;
    let job: Arc<dyn Job> = registry.build(&options.kind, &options.params)?;
    let threads = threads.max(1);
    let partitions = options
        .partitions
        .unwrap_or(crate::producer::DEFAULT_PARTITIONS)
        .max(1);
    let format = job.input_format();
    let per_partition: Mutex<Vec<Partials>> = Mutex::new(vec![Vec::new(); partitions as usize]);
    let counters: Mutex<BTreeMap<String, u64>> = Mutex::default();
    let failure = Failure::default();
    let (sender, receiver) = mpsc::sync_channel::<(u64, Arc<str>, Chunk)>(threads * 2);
    let receiver = Mutex::new(receiver);

    let chunks = std::thread::scope(|scope| -> Result<u64, ProducerError> {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let next = receiver.lock().unwrap_or_else(|e| e.into_inner()).recv();
                let Ok((id, source, chunk)) = next else { break };
                if failure.stop.load(Ordering::SeqCst) {
                    continue;
                }
                let ctx = ChunkContext {
                    source: &source,
                    offset: chunk.offset,
                    first_line: chunk.first_line,
                    partitions,
                };
                let where_ = format!("chunk {id} (`{source}`, line {})", chunk.first_line);
                match catch_unwind(AssertUnwindSafe(|| job.map_chunk(&ctx, &chunk.data))) {
                    Ok(Ok(output)) => {
                        let mut all = per_partition.lock().unwrap_or_else(|e| e.into_inner());
                        for (p, partial) in output.partials.into_iter().enumerate() {
                            all[p].push((id, partial));
                        }
                        drop(all);
                        let mut totals = counters.lock().unwrap_or_else(|e| e.into_inner());
                        for (name, value) in output.counters {
                            *totals.entry(name.to_string()).or_default() += value;
                        }
                    }
                    Ok(Err(error)) => {
                        failure.record(id, format!("map failed on {where_}: {error}"))
                    }
                    Err(panic) => failure.record(
                        id,
                        format!("map panicked on {where_}: {}", panic_text(&*panic)),
                    ),
                }
            });
        }
        let mut id = 0u64;
        let result = (|| {
            for source in &sources {
                let name: Arc<str> = Arc::from(source.display());
                let mut input = source.open_checked()?;
                let mut chunker = Chunker::with_format(
                    &mut input,
                    &name,
                    options.chunk_size as usize,
                    options.max_record_size as usize,
                    format,
                );
                while let Some(chunk) = chunker.next_chunk()? {
                    if failure.stop.load(Ordering::SeqCst)
                        || sender.send((id, name.clone(), chunk)).is_err()
                    {
                        return Ok(());
                    }
                    id += 1;
                }
                drop(chunker);
                // Like the producer, refuse a result over a file that changed while read.
                input.finish()?;
            }
            Ok::<(), ProducerError>(())
        })();
        drop(sender);
        result.map(|()| id)
    })?;
    if let Some((_, reason)) = failure
        .first
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
    {
        return Err(ProducerError::Local(reason));
    }

    let per_partition = per_partition
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let per_partition: Vec<Mutex<Partials>> = per_partition.into_iter().map(Mutex::new).collect();
    let results: Vec<Mutex<Option<Vec<u8>>>> = (0..partitions).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let records = AtomicUsize::new(0);
    let failure = Failure::default();
    std::thread::scope(|scope| {
        for _ in 0..threads.min(partitions as usize) {
            scope.spawn(|| loop {
                let p = next.fetch_add(1, Ordering::SeqCst);
                if p >= per_partition.len() || failure.stop.load(Ordering::SeqCst) {
                    break;
                }
                let mut partials = std::mem::take(
                    &mut *per_partition[p].lock().unwrap_or_else(|e| e.into_inner()),
                );
                partials.sort_by_key(|(id, _)| *id);
                let data = partials.into_iter().map(|(_, d)| d).collect();
                match catch_unwind(AssertUnwindSafe(|| job.reduce_partition(data))) {
                    Ok(Ok(output)) => {
                        records.fetch_add(output.records as usize, Ordering::SeqCst);
                        *results[p].lock().unwrap_or_else(|e| e.into_inner()) = Some(output.lines);
                    }
                    Ok(Err(error)) => {
                        failure.record(p as u64, format!("reduce failed on partition {p}: {error}"))
                    }
                    Err(panic) => failure.record(
                        p as u64,
                        format!("reduce panicked on partition {p}: {}", panic_text(&*panic)),
                    ),
                }
            });
        }
    });
    if let Some((_, reason)) = failure
        .first
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
    {
        return Err(ProducerError::Local(reason));
    }
    let results: Vec<Vec<u8>> = results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_default()
        })
        .collect();
    write_results(&results, &job.result_format(), out).map_err(ProducerError::Output)?;
    let mut counters = counters.into_inner().unwrap_or_else(|e| e.into_inner());
    counters.insert(
        OUTPUT_RECORDS.to_string(),
        records.load(Ordering::SeqCst) as u64,
    );
    Ok(LocalOutcome { chunks, counters })
}
