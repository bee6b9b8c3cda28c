//! `worker`: a thin binary over `chunkflow::worker`; see `worker --help`.

use std::process::ExitCode;

use chunkflow::config::ConnectionArgs;
use chunkflow::jobs::JobRegistry;
use chunkflow::worker::{run, WorkerConfig};
use clap::Parser;

/// Consume map tasks: map and combine each chunk, commit its output to every partition in Redis in one atomic step, then ack. Run as many as you like; stop with SIGTERM or SIGINT (the task in hand is finished, prefetched ones are given back).
#[derive(Debug, Parser)]
#[command(name = "worker", version)]
struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(flatten)]
    monitor: chunkflow::monitor::MonitorArgs,

    #[command(flatten)]
    log: chunkflow::telemetry::LogArgs,

    /// Deliveries the broker may hand this process ahead of the one in progress.
    #[arg(long, env = "CHUNKFLOW_PREFETCH", default_value_t = 2)]
    prefetch: u16,

    /// Deliveries of one chunk (panics, or a worker dying on it) before its job is failed
    /// and the chunk dead-lettered (1 to 19).
    #[arg(long, env = "CHUNKFLOW_MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=chunkflow::worker::MAX_ATTEMPTS_LIMIT as i64))]
    max_attempts: u32,

    /// After SIGTERM, how long the chunk in hand may take before it is given back to the
    /// queue (match the container's stop grace period).
    #[arg(long, env = "CHUNKFLOW_GRACE_PERIOD", default_value = "25s", value_parser = chunkflow::config::parse_duration)]
    grace_period: std::time::Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    chunkflow::telemetry::init_with("info", cli.log.log_format);
    let shutdown = chunkflow::shutdown::on_signals();
    let monitor = match chunkflow::monitor::start(&cli.monitor, &cli.connection, "worker").await {
        Ok(monitor) => monitor,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let config = WorkerConfig {
        connection: cli.connection,
        prefetch: cli.prefetch,
        max_attempts: cli.max_attempts,
        grace_period: cli.grace_period,
        registry: JobRegistry::stock(),
    };
    let result = run(config, shutdown).await;
    monitor.stop().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "worker stopped");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
