//! The worker's cache of jobs: each job's spec and code, built once per job, and its state
//! as last read, read again when older than [`STATE_REFRESH`] (the latency of a cancel)
//! unless it is final. Starting an attempt reads the state too (in the same round trip),
//! and refreshes it here.
//!
//! Must not: decide a delivery's fate. It reports what it found ([`Loaded`]); the worker
//! asks [`crate::protocol::map`] what that means.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::job::{JobSpec, JobState};
use crate::jobs::{Job, JobError, JobRegistry};
use crate::store::{Store, StoreError};

/// How stale a job's cached state may be before a task re-reads it (cancel latency).
pub const STATE_REFRESH: Duration = Duration::from_millis(250);

/// Jobs remembered at once; past it the cache starts over.
const MAX_CACHED_JOBS: usize = 256;

/// A job's spec and code, loaded once per job, and its state as last read.
#[derive(Clone)]
pub struct LoadedJob {
    pub spec: Arc<JobSpec>,
    pub code: Arc<dyn Job>,
    pub state: JobState,
    checked: Instant,
}

/// What looking a job up found.
pub enum Loaded {
    Job(LoadedJob),
    /// No such job in this namespace.
    Missing,
    /// The job exists but this worker cannot build its code.
    Unbuildable {
        spec: Arc<JobSpec>,
        error: JobError,
    },
}

/// Whether a cached state of this age must be read again (a final state never changes).
pub fn needs_refresh(state: JobState, age: Duration) -> bool {
    !state.is_final() && age >= STATE_REFRESH
}

#[derive(Default)]
pub struct JobCache {
    jobs: HashMap<String, LoadedJob>,
}

impl JobCache {
    /// The job's spec, code and fresh-enough state.
    pub async fn load(
        &mut self,
        store: &Store,
        registry: &JobRegistry,
        job_id: &str,
    ) -> Result<Loaded, StoreError> {
        if let Some(job) = self.jobs.get_mut(job_id) {
            if !needs_refresh(job.state, job.checked.elapsed()) {
                return Ok(Loaded::Job(job.clone()));
            }
            return match store.job_progress(job_id).await? {
                Some(progress) => {
                    job.state = progress.state;
                    job.checked = Instant::now();
                    Ok(Loaded::Job(job.clone()))
                }
                None => {
                    self.jobs.remove(job_id);
                    Ok(Loaded::Missing)
                }
            };
        }
        let Some(status) = store.status(job_id).await? else {
            return Ok(Loaded::Missing);
        };
        let spec = Arc::new(status.spec);
        let code = match registry.build(&spec.kind, &spec.params) {
            Ok(code) => code,
            Err(error) => return Ok(Loaded::Unbuildable { spec, error }),
        };
        if self.jobs.len() >= MAX_CACHED_JOBS {
            self.jobs.clear();
        }
        let job = LoadedJob {
            spec,
            code,
            state: status.state,
            checked: Instant::now(),
        };
        self.jobs.insert(job_id.to_string(), job.clone());
        Ok(Loaded::Job(job))
    }

    /// Records the job's state as just read (by the script that starts an attempt), so the
    /// next task does not read it again.
    pub fn refreshed(&mut self, job_id: &str, state: JobState) {
        if let Some(job) = self.jobs.get_mut(job_id) {
            job.state = state;
            job.checked = Instant::now();
        }
    }

    /// Remembers that this worker failed the job: its next tasks are dropped unread.
    pub fn mark_failed(&mut self, job_id: &str) {
        if let Some(job) = self.jobs.get_mut(job_id) {
            job.state = JobState::Failed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_states_are_read_again_once_stale_and_final_ones_never() {
        assert!(!needs_refresh(JobState::Running, Duration::ZERO));
        assert!(needs_refresh(JobState::Running, STATE_REFRESH));
        assert!(needs_refresh(JobState::Reducing, Duration::from_secs(5)));
        for state in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
            assert!(!needs_refresh(state, Duration::from_secs(3600)), "{state}");
        }
    }
}
