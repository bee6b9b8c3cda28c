//! Live progress of a job on standard error, for `submit --wait` and `producer watch`: a
//! progress bar on a terminal, plain lines every few seconds otherwise (logs, CI, pipes),
//! so a script reading standard error never sees control characters.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use chunkflow::job::{JobSpec, JobState, JobStatus};
use chunkflow::producer::ProducerError;
use chunkflow::size::human_bytes;
use chunkflow::store::Store;

/// Shows a job's progress: call [`JobProgress::update`] with every status read, and
/// [`JobProgress::line`] for the messages that plain output prints.
pub struct JobProgress {
    enabled: bool,
    bar: Option<ProgressBar>,
    every: Duration,
    last: Option<Instant>,
}

impl JobProgress {
    /// A bar when `enabled` and standard error is a terminal; plain lines when only
    /// `enabled`; nothing otherwise.
    pub fn new(enabled: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (enabled && terminal).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message("reading the job's status");
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        JobProgress {
            enabled,
            bar,
            every: Duration::from_secs(2),
            last: None,
        }
    }

    /// Moves the bar to `status` (no effect in plain mode).
    pub fn update(&mut self, status: &JobStatus) {
        let Some(bar) = &self.bar else {
            return;
        };
        let partitions = u64::from(status.spec.partitions);
        match status.total_chunks {
            Some(total) => {
                if bar.length() != Some(total + partitions) {
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{spinner} {prefix} [{wide_bar}] {percent:>3}% {msg} ({elapsed}, ~{eta} left)",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.set_length(total + partitions);
                }
                bar.set_position(status.chunks_committed + status.partitions_reduced);
            }
            None => {
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix} {msg} ({elapsed})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
            }
        }
        bar.set_prefix(status.state.as_str());
        bar.set_message(format!(
            "chunks {}/{} partitions {}/{}",
            status.chunks_committed,
            status
                .total_chunks
                .map_or_else(|| "?".into(), |t| t.to_string()),
            status.partitions_reduced,
            partitions
        ));
        if status.state.is_final() {
            if status.state == JobState::Succeeded {
                bar.finish();
            } else {
                bar.abandon();
            }
        }
    }

    /// A progress line: printed in plain mode at most every few seconds (always when
    /// `force`); on a terminal only forced lines are printed, above the bar.
    pub fn line(&mut self, force: bool, text: impl FnOnce() -> String) {
        if !self.enabled {
            return;
        }
        if let Some(bar) = &self.bar {
            if force {
                bar.suspend(|| eprintln!("{}", text()));
            }
            return;
        }
        let due = self.last.is_none_or(|last| last.elapsed() >= self.every);
        if force || due {
            eprintln!("{}", text());
            self.last = Some(Instant::now());
        }
    }
}

impl Drop for JobProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

/// Polls a job until it ends, printing progress lines to standard error.
pub async fn wait_for_job(
    store: &Store,
    job: &str,
    show_progress: bool,
    started: Instant,
    outage_timeout: Duration,
) -> Result<JobStatus, ProducerError> {
    let mut progress = JobProgress::new(show_progress);
    let mut poll = Duration::from_millis(20);
    let mut last_seen: Option<(JobSpec, JobState)> = None;
    loop {
        let status =
            match chunkflow::producer::retry_transient("following the job", outage_timeout, || {
                store.status(job)
            })
            .await?
            {
                Some(status) => status,
                None => {
                    return Err(match last_seen {
                        Some((spec, state)) => {
                            chunkflow::producer::record_vanished(store, &spec, state).await;
                            ProducerError::JobVanished {
                                job: job.to_string(),
                                state,
                            }
                        }
                        None => ProducerError::NoSuchJob {
                            job: job.to_string(),
                            namespace: store.keys().namespace().to_string(),
                        },
                    })
                }
            };
        last_seen = Some((status.spec.clone(), status.state));
        let ended = status.state.is_final();
        progress.update(&status);
        progress.line(ended, || format!("{job}: {}", status.progress_summary()));
        match status.state {
            JobState::Succeeded => {
                let secs = started.elapsed().as_secs_f64();
                let bytes = status.counters.get("bytes_read").copied().unwrap_or(0);
                progress.line(true, || {
                    format!(
                        "{job}: succeeded in {secs:.2}s ({}, {:.1} MiB/s)",
                        human_bytes(bytes),
                        bytes as f64 / (1024.0 * 1024.0) / secs.max(1e-9)
                    )
                });
                return Ok(status);
            }
            JobState::Failed | JobState::Cancelled => {
                return Err(ProducerError::JobEnded {
                    job: job.to_string(),
                    state: status.state,
                    reason: status.reason.unwrap_or_else(|| "no reason recorded".into()),
                })
            }
            JobState::Running | JobState::Reducing => {}
        }
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(Duration::from_millis(50));
    }
}
