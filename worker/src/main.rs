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

    /// Deliveries the broker may hand this process ahead of the one in progress.
    #[arg(long, env = "CHUNKFLOW_PREFETCH", default_value_t = 2)]
    prefetch: u16,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    chunkflow::telemetry::init("info");
    let shutdown = chunkflow::shutdown::on_signals();
    let config = WorkerConfig {
        connection: cli.connection,
        prefetch: cli.prefetch,
        registry: JobRegistry::stock(),
    };
    match run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "worker stopped");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
