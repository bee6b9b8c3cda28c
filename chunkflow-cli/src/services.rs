//! The `worker` and `reducer` command lines: [`worker_main`] and [`reducer_main`] parse the
//! process's arguments, start tracing and signal handling, run the service over the
//! [`JobRegistry`] they are given with its monitor beside it, and map the outcome to an exit
//! code.
//!
//! The stock binaries are one line each over [`JobRegistry::stock`]; a user with custom
//! jobs builds their own binaries the same way (`examples/custom-job`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chunkflow::config::{parse_duration, ConnectionConfig};
use chunkflow::health::ServiceHealth;
use chunkflow::jobs::exec::ExecRole;
use chunkflow::jobs::JobRegistry;
use clap::Parser;

use crate::args::{ConnectionArgs, ConsumerArgs, ConsumerDefaults, ExecArgs, MonitorArgs};

/// Consume map tasks: map and combine each chunk, commit its output to every partition in
/// Redis in one atomic step, then ack. Run as many as you like; stop with SIGTERM or SIGINT
/// (the task in hand is finished, prefetched ones are given back).
#[derive(Debug, Parser)]
#[command(name = "worker", version)]
struct WorkerCli {
    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(flatten)]
    monitor: MonitorArgs,

    #[command(flatten)]
    log: crate::telemetry::LogArgs,

    #[command(flatten)]
    consumer: ConsumerArgs,

    /// Attempts at one chunk (panics, or a worker dying on it) before its job is failed and
    /// the chunk dead-lettered (1 to 19). Requeues that ran no job code (a Redis outage, a
    /// peek at the queue) are not attempts.
    #[arg(long, env = "CHUNKFLOW_MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=chunkflow::worker::MAX_ATTEMPTS_LIMIT as i64))]
    max_attempts: u32,

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
    monitor: MonitorArgs,

    #[command(flatten)]
    log: crate::telemetry::LogArgs,

    #[command(flatten)]
    consumer: ConsumerArgs,

    /// Lease on a partition while reducing it; renewed every third of it. A reducer that
    /// stalls longer loses the partition to another and its late commit is refused.
    #[arg(long, env = "CHUNKFLOW_LEASE", default_value = "30s", value_parser = parse_duration)]
    lease: Duration,

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
    monitor_args: &MonitorArgs,
    connection: &ConnectionConfig,
    health: Arc<ServiceHealth>,
    run: F,
) -> ExitCode
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), chunkflow::broker::consumer::ServiceError>>,
{
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let shutdown = crate::shutdown::on_signals();
        let monitor = match crate::monitor::start(monitor_args, connection, role, health).await {
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
                service_exit_code(&error)
            }
        }
    })
}

/// The exit code of a service that stopped on `error`: 2 when its Redis settings do not
/// fit the Redis found (an invalid URL, a `--redis-mode` the server contradicts: fix the
/// settings, restarting will not help), 1 otherwise.
fn service_exit_code(error: &chunkflow::broker::consumer::ServiceError) -> ExitCode {
    match error {
        chunkflow::broker::consumer::ServiceError::Store(store) if store.is_configuration() => {
            ExitCode::from(2)
        }
        _ => ExitCode::FAILURE,
    }
}

/// The `worker` binary over `registry`.
pub fn worker_main(registry: JobRegistry) -> ExitCode {
    let cli = WorkerCli::parse();
    crate::telemetry::init_with("info", cli.log.log_format);
    let connection = cli.connection.config();
    let health = Arc::new(ServiceHealth::new());
    let consumer = cli.consumer.settings(ConsumerDefaults::WORKER);
    let config = chunkflow::worker::WorkerConfig {
        connection: connection.clone(),
        health: health.clone(),
        prefetch: consumer.prefetch,
        concurrency: consumer.concurrency,
        max_attempts: cli.max_attempts,
        grace_period: consumer.grace_period,
        registry: registry.with_exec(cli.exec.settings(ExecRole::Map)),
    };
    run_service("worker", &cli.monitor, &connection, health, |shutdown| {
        chunkflow::worker::run(config, shutdown)
    })
}

/// The `reducer` binary over `registry`.
pub fn reducer_main(registry: JobRegistry) -> ExitCode {
    let cli = ReducerCli::parse();
    crate::telemetry::init_with("info", cli.log.log_format);
    let connection = cli.connection.config();
    let health = Arc::new(ServiceHealth::new());
    let consumer = cli.consumer.settings(ConsumerDefaults::REDUCER);
    let config = chunkflow::reducer::ReducerConfig {
        connection: connection.clone(),
        health: health.clone(),
        prefetch: consumer.prefetch,
        concurrency: consumer.concurrency,
        lease: cli.lease.max(Duration::from_millis(300)),
        grace_period: consumer.grace_period,
        producer_timeout: cli.producer_timeout,
        registry: registry.with_exec(cli.exec.settings(ExecRole::Reduce)),
    };
    run_service("reducer", &cli.monitor, &connection, health, |shutdown| {
        chunkflow::reducer::run(config, shutdown)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_defaults_follow_the_role() {
        let worker = WorkerCli::try_parse_from(["worker"]).unwrap();
        let settings = worker.consumer.settings(ConsumerDefaults::WORKER);
        assert_eq!((settings.prefetch, settings.concurrency), (1, 1));
        assert_eq!(settings.grace_period, Duration::from_secs(25));
        let reducer = ReducerCli::try_parse_from(["reducer"]).unwrap();
        let settings = reducer.consumer.settings(ConsumerDefaults::REDUCER);
        assert_eq!((settings.prefetch, settings.concurrency), (2, 2));

        let given = ReducerCli::try_parse_from([
            "reducer",
            "--prefetch",
            "7",
            "--concurrency",
            "3",
            "--grace-period",
            "5s",
        ])
        .unwrap();
        let settings = given.consumer.settings(ConsumerDefaults::REDUCER);
        assert_eq!((settings.prefetch, settings.concurrency), (7, 3));
        assert_eq!(settings.grace_period, Duration::from_secs(5));
        assert!(WorkerCli::try_parse_from(["worker", "--concurrency", "0"]).is_err());
        assert!(WorkerCli::try_parse_from(["worker", "--concurrency", "65"]).is_err());
    }

    #[test]
    fn help_lists_every_consumer_flag_with_its_env_twin() {
        use clap::CommandFactory;
        for mut command in [WorkerCli::command(), ReducerCli::command()] {
            let help = command.render_long_help().to_string();
            for (flag, env) in [
                ("--prefetch", "CHUNKFLOW_PREFETCH"),
                ("--concurrency", "CHUNKFLOW_CONCURRENCY"),
                ("--grace-period", "CHUNKFLOW_GRACE_PERIOD"),
            ] {
                assert!(help.contains(flag), "{flag} missing:\n{help}");
                assert!(
                    help.contains(&format!("[env: {env}")),
                    "{env} missing:\n{help}"
                );
            }
        }
    }
}
