//! The command lines of the three binaries, as library functions: [`producer_main`],
//! [`worker_main`] and [`reducer_main`] parse the process's arguments, start tracing and
//! signal handling, and run over the [`JobRegistry`] they are given.
//!
//! The stock binaries are one line each over [`JobRegistry::stock`]; a user with custom
//! jobs builds their own three binaries the same way over a registry with their jobs
//! registered (`examples/custom-job`). The flags are the same everywhere.

mod producer;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::config::{parse_duration, ConnectionArgs};
use crate::jobs::exec::{ExecRole, ExecSettings, Program};
use crate::jobs::JobRegistry;
use crate::size::ByteSize;

pub use producer::producer_main;

/// Flags of the `exec` job, shared by every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// Allow the `exec` job to run PROGRAM with ARGS under NAME (repeatable; the
    /// environment twin separates entries with `;`). Tasks name a NAME, never a command.
    /// Arguments are split at spaces, without shell quoting.
    #[arg(long = "allow-exec", value_name = "NAME=PROGRAM [ARGS]", env = "CHUNKFLOW_ALLOW_EXEC", value_delimiter = ';', value_parser = Program::parse)]
    pub allow_exec: Vec<Program>,

    /// Time limit of one run of an exec mapper or reducer (e.g. 30s, 10m).
    #[arg(long, env = "CHUNKFLOW_EXEC_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub exec_timeout: Duration,

    /// Largest standard output of one run of an exec mapper or reducer.
    #[arg(long, env = "CHUNKFLOW_EXEC_MAX_OUTPUT", default_value = "1GiB")]
    pub exec_max_output: ByteSize,
}

impl ExecArgs {
    /// The settings of a process in `role`.
    pub fn settings(&self, role: ExecRole) -> ExecSettings {
        ExecSettings {
            allowed: self
                .allow_exec
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect::<BTreeMap<_, _>>(),
            role,
            timeout: self.exec_timeout,
            max_output: self.exec_max_output.bytes(),
        }
    }
}

/// Consume map tasks: map and combine each chunk, commit its output to every partition in
/// Redis in one atomic step, then ack. Run as many as you like; stop with SIGTERM or SIGINT
/// (the task in hand is finished, prefetched ones are given back).
#[derive(Debug, Parser)]
#[command(name = "worker", version)]
struct WorkerCli {
    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(flatten)]
    monitor: crate::monitor::MonitorArgs,

    #[command(flatten)]
    log: crate::telemetry::LogArgs,

    /// Deliveries the broker may hand this process ahead of the one in progress (per
    /// consume loop). One keeps a worker's memory to about three chunks.
    #[arg(long, env = "CHUNKFLOW_PREFETCH", default_value_t = 1)]
    prefetch: u16,

    /// Chunks processed at once by this process (each with its own channel).
    #[arg(long, env = "CHUNKFLOW_CONCURRENCY", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,

    /// Deliveries of one chunk (panics, or a worker dying on it) before its job is failed
    /// and the chunk dead-lettered (1 to 19).
    #[arg(long, env = "CHUNKFLOW_MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=crate::worker::MAX_ATTEMPTS_LIMIT as i64))]
    max_attempts: u32,

    /// After SIGTERM, how long the chunk in hand may take before it is given back to the
    /// queue (match the container's stop grace period).
    #[arg(long, env = "CHUNKFLOW_GRACE_PERIOD", default_value = "25s", value_parser = parse_duration)]
    grace_period: Duration,

    #[command(flatten)]
    exec: ExecArgs,
}

/// Consume reduce tasks: merge each partition's chunk outputs and store its final result;
/// the last partition ends the job. Run as many as you like; stop with SIGTERM or SIGINT
/// (the task in hand is finished first).
#[derive(Debug, Parser)]
#[command(name = "reducer", version)]
struct ReducerCli {
    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(flatten)]
    monitor: crate::monitor::MonitorArgs,

    #[command(flatten)]
    log: crate::telemetry::LogArgs,

    /// Deliveries the broker may hand this process ahead of the one in progress.
    #[arg(long, env = "CHUNKFLOW_PREFETCH", default_value_t = 2)]
    prefetch: u16,

    /// Partitions reduced at once by this process (each with its own channel).
    #[arg(long, env = "CHUNKFLOW_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,

    /// Lease on a partition while reducing it; renewed every third of it. A reducer that
    /// stalls longer loses the partition to another and its late commit is refused.
    #[arg(long, env = "CHUNKFLOW_LEASE", default_value = "30s", value_parser = parse_duration)]
    lease: Duration,

    /// After SIGTERM, how long the partition in hand may take before it is given back.
    #[arg(long, env = "CHUNKFLOW_GRACE_PERIOD", default_value = "25s", value_parser = parse_duration)]
    grace_period: Duration,

    /// Fail a running job whose producer stopped publishing (and heartbeating) this long
    /// before sealing it.
    #[arg(long, env = "CHUNKFLOW_PRODUCER_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    producer_timeout: Duration,

    #[command(flatten)]
    exec: ExecArgs,
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        })
}

/// Runs a worker or reducer: its monitoring endpoints and heartbeat around `run`, which
/// gets the shutdown token; maps the outcome to an exit code.
fn run_service<F, Fut>(
    role: &'static str,
    monitor_args: &crate::monitor::MonitorArgs,
    connection: &ConnectionArgs,
    run: F,
) -> ExitCode
where
    F: FnOnce(crate::shutdown::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::service::ServiceError>>,
{
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let shutdown = crate::shutdown::on_signals();
        let monitor = match crate::monitor::start(monitor_args, connection, role).await {
            Ok(monitor) => monitor,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        };
        let result = run(shutdown).await;
        monitor.stop().await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(error = %error, role, "stopped on an error");
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The `worker` binary over `registry`.
pub fn worker_main(registry: JobRegistry) -> ExitCode {
    let cli = WorkerCli::parse();
    crate::telemetry::init_with("info", cli.log.log_format);
    let connection = cli.connection.clone();
    let config = crate::worker::WorkerConfig {
        connection: cli.connection,
        prefetch: cli.prefetch,
        concurrency: usize::from(cli.concurrency),
        max_attempts: cli.max_attempts,
        grace_period: cli.grace_period,
        registry: registry.with_exec(cli.exec.settings(ExecRole::Map)),
    };
    run_service("worker", &cli.monitor, &connection, |shutdown| {
        crate::worker::run(config, shutdown)
    })
}

/// The `reducer` binary over `registry`.
pub fn reducer_main(registry: JobRegistry) -> ExitCode {
    let cli = ReducerCli::parse();
    crate::telemetry::init_with("info", cli.log.log_format);
    let connection = cli.connection.clone();
    let config = crate::reducer::ReducerConfig {
        connection: cli.connection,
        prefetch: cli.prefetch,
        concurrency: usize::from(cli.concurrency),
        lease: cli.lease.max(Duration::from_millis(300)),
        grace_period: cli.grace_period,
        producer_timeout: cli.producer_timeout,
        registry: registry.with_exec(cli.exec.settings(ExecRole::Reduce)),
    };
    run_service("reducer", &cli.monitor, &connection, |shutdown| {
        crate::reducer::run(config, shutdown)
    })
}
