//! Fault injection for the end-to-end tests, compiled in only with the `fault-injection`
//! feature (off by default; release binaries have none of it). Faults are chosen with the
//! `CHUNKFLOW_FAULT` environment variable, a comma-separated list:
//!
//! - `crash-after-commit=N`: the worker aborts right after its N-th successful chunk commit,
//!   before acking it (the broker must redeliver; the commit must not count twice);
//! - `publish-twice`: the producer publishes every chunk twice;
//! - `map-delay-ms=N`: the worker sleeps N ms per chunk (to make a job slow enough to kill
//!   a process in the middle of it);
//! - `panic-on-chunk=N`: map panics on chunk N of every job (a poison task);
//! - `abort-on-chunk=N`: the worker process aborts when it takes chunk N (a task that kills
//!   every worker that takes it);
//! - `reduce-delay-ms=N`: the reducer sleeps N ms while holding a partition's lease;
//! - `amqp-in-order`: connections to a list of RabbitMQ nodes begin with the first of the
//!   list instead of a node picked at random (a test places each process on a node by the
//!   order of the list it gives it).

/// The faults in force for this process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    pub crash_after_commit: Option<u64>,
    pub publish_twice: bool,
    pub map_delay_ms: u64,
    pub panic_on_chunk: Option<u64>,
    pub abort_on_chunk: Option<u64>,
    pub reduce_delay_ms: u64,
    pub amqp_in_order: bool,
}

impl Faults {
    /// Reads `CHUNKFLOW_FAULT`; without the feature, always no faults.
    pub fn from_env() -> Faults {
        #[cfg(feature = "fault-injection")]
        {
            if let Ok(spec) = std::env::var("CHUNKFLOW_FAULT") {
                let faults = Faults::parse(&spec);
                tracing::warn!(?faults, "fault injection active");
                return faults;
            }
        }
        Faults::default()
    }

    pub fn parse(spec: &str) -> Faults {
        let mut faults = Faults::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item.split_once('=').unwrap_or((item, ""));
            match name {
                "crash-after-commit" => faults.crash_after_commit = value.parse().ok(),
                "publish-twice" => faults.publish_twice = true,
                "map-delay-ms" => faults.map_delay_ms = value.parse().unwrap_or(0),
                "panic-on-chunk" => faults.panic_on_chunk = value.parse().ok(),
                "abort-on-chunk" => faults.abort_on_chunk = value.parse().ok(),
                "reduce-delay-ms" => faults.reduce_delay_ms = value.parse().unwrap_or(0),
                "amqp-in-order" => faults.amqp_in_order = true,
                _ => {}
            }
        }
        faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_faults() {
        assert_eq!(
            Faults::parse("crash-after-commit=3, publish-twice,map-delay-ms=20"),
            Faults {
                crash_after_commit: Some(3),
                publish_twice: true,
                map_delay_ms: 20,
                ..Faults::default()
            }
        );
    }
}
