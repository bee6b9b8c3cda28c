//! The Redis key schema. No other module formats a key.
//!
//! Every key of a job shares the hash tag `{<job id>}`, so in a Redis Cluster all of a
//! job's keys (its spec, its completion sets, every partition) land in one slot and one
//! Lua script can commit a chunk's output to all partitions and mark it done atomically.
//! Jobs spread across slots. Layout, with `ns` the namespace:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `ns:jobs` | sorted set | job ids by creation time (an index for listing; not in a job's slot) |
//! | `ns:{job}:meta` | hash | `spec` (JSON), `state`, `partitions`, `total` (once sealed), `committed`, `outputs:P` (non-empty outputs per partition), `fence`, `reason`, timestamps |
//! | `ns:{job}:done` | set | chunk ids committed (completion is membership, never a counter) |
//! | `ns:{job}:counters` | hash | records read, bytes read, ... added once per first commit |
//! | `ns:{job}:stats` | hash | deliveries, redeliveries, duplicates dropped (observability, not exact) |
//! | `ns:{job}:errors` | hash | chunk id → last error of a failed attempt (for the failure reason) |
//! | `ns:{job}:lease:P` | string | fencing token of the reducer holding partition P (expires) |
//! | `ns:{job}:map:P` | hash | chunk id → encoded partial of partition P (non-empty ones only) |
//! | `ns:{job}:reduced` | set | partitions whose result is stored |
//! | `ns:{job}:result:P` | string | the final `key\tvalue\n` lines of partition P |

/// Keys of one namespace.
#[derive(Debug, Clone)]
pub struct Keys {
    namespace: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Self {
        Keys {
            namespace: namespace.to_string(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Sorted set of job ids scored by creation time.
    pub fn jobs_index(&self) -> String {
        format!("{}:jobs", self.namespace)
    }

    /// A `SCAN MATCH` pattern for every key of the namespace (tests and teardown).
    pub fn namespace_pattern(&self) -> String {
        format!("{}:*", self.namespace)
    }

    /// The keys of one job. `job_id` must already be validated (see `config::parse_job_id`).
    pub fn job(&self, job_id: &str) -> JobKeys {
        JobKeys {
            prefix: format!("{}:{{{}}}", self.namespace, job_id),
        }
    }
}

/// The keys of one job, all in the job's hash-tag slot.
#[derive(Debug, Clone)]
pub struct JobKeys {
    prefix: String,
}

impl JobKeys {
    pub fn meta(&self) -> String {
        format!("{}:meta", self.prefix)
    }

    pub fn chunks_done(&self) -> String {
        format!("{}:done", self.prefix)
    }

    pub fn counters(&self) -> String {
        format!("{}:counters", self.prefix)
    }

    pub fn stats(&self) -> String {
        format!("{}:stats", self.prefix)
    }

    pub fn chunk_errors(&self) -> String {
        format!("{}:errors", self.prefix)
    }

    pub fn partition_lease(&self, partition: u32) -> String {
        format!("{}:lease:{partition}", self.prefix)
    }

    pub fn partition_data(&self, partition: u32) -> String {
        format!("{}:map:{partition}", self.prefix)
    }

    pub fn partitions_reduced(&self) -> String {
        format!("{}:reduced", self.prefix)
    }

    pub fn partition_result(&self, partition: u32) -> String {
        format!("{}:result:{partition}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_keys_share_one_hash_tag() {
        let job = Keys::new("ns").job("j1");
        for key in [
            job.meta(),
            job.chunks_done(),
            job.counters(),
            job.stats(),
            job.chunk_errors(),
            job.partition_lease(1),
            job.partition_data(3),
            job.partitions_reduced(),
            job.partition_result(7),
        ] {
            assert!(key.starts_with("ns:{j1}:"), "{key}");
        }
    }
}
