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

    /// Deliveries the broker may hand this process ahead of the one in progress.
    #[arg(long, env = "CHUNKFLOW_PREFETCH", default_value_t = 2)]
    prefetch: u16,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    chunkflow::telemetry::init("info");
    let shutdown = chunkflow::shutdown::on_signals();
    let config = ReducerConfig {
        connection: cli.connection,
        prefetch: cli.prefetch,
        registry: JobRegistry::stock(),
    };
    match run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "reducer stopped");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
