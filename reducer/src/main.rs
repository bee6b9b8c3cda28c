//! `reducer`: a thin binary over `chunkflow::reducer`; see `reducer --help`.

use std::process::ExitCode;

use chunkflow::config::ConnectionArgs;
use chunkflow::jobs::JobRegistry;
use chunkflow::reducer::{run, ReducerConfig};
use clap::Parser;

/// Consume reduce tasks: merge each partition's chunk outputs and store its final result; the last partition ends the job. Run as many as you like; stop with SIGTERM or SIGINT (the task in hand is finished first).
#[derive(Debug, Parser)]
#[command(name = "reducer", version)]
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

    /// Lease on a partition while reducing it; renewed every third of it. A reducer that
    /// stalls longer loses the partition to another and its late commit is refused.
    #[arg(long, env = "CHUNKFLOW_LEASE", default_value = "30s", value_parser = chunkflow::config::parse_duration)]
    lease: std::time::Duration,

    /// After SIGTERM, how long the partition in hand may take before it is given back.
    #[arg(long, env = "CHUNKFLOW_GRACE_PERIOD", default_value = "25s", value_parser = chunkflow::config::parse_duration)]
    grace_period: std::time::Duration,

    /// Fail a running job whose producer stopped publishing (and heartbeating) this long
    /// before sealing it.
    #[arg(long, env = "CHUNKFLOW_PRODUCER_TIMEOUT", default_value = "5m", value_parser = chunkflow::config::parse_duration)]
    producer_timeout: std::time::Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    chunkflow::telemetry::init_with("info", cli.log.log_format);
    let shutdown = chunkflow::shutdown::on_signals();
    let monitor = match chunkflow::monitor::start(&cli.monitor, &cli.connection, "reducer").await {
        Ok(monitor) => monitor,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let config = ReducerConfig {
        connection: cli.connection,
        prefetch: cli.prefetch,
        lease: cli.lease.max(std::time::Duration::from_millis(300)),
        grace_period: cli.grace_period,
        producer_timeout: cli.producer_timeout,
        registry: JobRegistry::stock(),
    };
    let result = run(config, shutdown).await;
    monitor.stop().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "reducer stopped");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
