//! Logging setup shared by the binaries (and tests): structured `tracing` to standard
//! error, filtered by `RUST_LOG` (default given by the caller), as text or JSON lines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset.
pub fn init(default_filter: &str) {
    init_with(default_filter, LogFormat::Text);
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    Text,
    /// One JSON object per line, with the current span's fields (job id, chunk, partition).
    Json,
}

/// The log flag shared by every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log line format on standard error: `text`, or `json` (one object per line, with the
    /// task's span fields `job_id`, `chunk` / `partition`) for log collectors.
    #[arg(
        long,
        global = true,
        env = "CHUNKFLOW_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// Targets silenced unless `RUST_LOG` says otherwise, because chunkflow's own line already
/// says what they say: the TLS certificate verifier logs a failed verification that the
/// failed request reports; lapin logs every closed channel and connection (and whatever
/// the broker echoed back) that the consume loop, publisher or command reports with its
/// context.
const QUIET_TARGETS: &str = "rustls_platform_verifier=off,lapin=off";

/// Installs the global subscriber in `format`.
pub fn init_with(default_filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_filter},{QUIET_TARGETS}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
