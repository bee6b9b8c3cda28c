//! The `producer` command line: submit jobs (to the cluster or `--local`), follow them,
//! print their results, generate sample data. A shell over [`chunkflow::producer`] and
//! [`chunkflow::local`]; `anyhow` lives here, at the edge.
//!
//! Exit codes: 0 on success, also when the reader of standard output closed it early
//! (`producer result JOB | head`: it has what it wanted); 2 for a usage error; 1 for any
//! other failure, its causes printed once each on one line.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::args::ConnectionArgs;
use crate::args::ExecArgs;
use crate::http::{error_chain, HttpClient, HttpUrl};
use crate::views;
use chunkflow::config::{parse_duration, ConnectionConfig};
use chunkflow::job::JobId;
use chunkflow::jobs::exec::ExecRole;
use chunkflow::jobs::groupby::{BadRecordPolicy, InputFormat};
use chunkflow::jobs::JobRegistry;
use chunkflow::producer::{self, ProducerError, Submission, SubmitOptions};
use chunkflow::size::ByteSize;
use chunkflow::store::Store;

/// Submit MapReduce jobs to chunkflow workers and reducers through RabbitMQ, follow them,
/// and print their results from Redis.
///
/// Start any number of `worker` and `reducer` processes against the same RabbitMQ, Redis
/// and namespace, then: `producer submit --job wordcount --wait data/` and
/// `producer result JOB`.
#[derive(Debug, Parser)]
#[command(name = "producer", version)]
struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(flatten)]
    exec: ExecArgs,

    #[command(flatten)]
    log: crate::telemetry::LogArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Split input into chunks of whole lines and publish one task per chunk; prints the
    /// job id as the only line on standard output.
    Submit(Box<SubmitArgs>),
    /// Show a job's state (running, reducing, succeeded, failed), chunks committed and
    /// partitions reduced.
    Status {
        /// The job id printed by `submit`.
        job: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write deterministic sample data to standard output (or --output), for demos and
    /// benchmarks: `producer generate text --size 100MiB > corpus.txt`.
    Generate(GenerateArgs),
    /// Cancel a running job: workers drop its queued chunks, reducers skip it, and
    /// `submit --wait` on it exits non-zero.
    Cancel {
        /// The job id printed by `submit`.
        job: String,
    },
    /// Print a succeeded job's result in the job's format (wordcount: one `key<TAB>value`
    /// line per record, sorted by key in byte order); skipped records are reported on
    /// standard error.
    Result {
        /// The job id printed by `submit`.
        job: String,
    },
    /// List the jobs still in Redis, newest first: state, progress, chunks, partitions, age.
    Jobs {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the live workers and reducers (from their heartbeats): id, host, pid, version,
    /// uptime, tasks done, current task.
    Workers {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show each queue's ready and unacked messages and consumers (dead-letter queue
    /// included). Unacked counts need the RabbitMQ management API.
    Queues {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        management: ManagementArgs,
    },
    /// Follow a job until it ends: a progress bar on a terminal, plain lines otherwise.
    /// Exits 0 only if the job succeeded.
    Watch {
        /// The job id printed by `submit`.
        job: String,
    },
    /// Serve a live web dashboard: jobs with progress, per-partition progress of the
    /// selected job, live workers, queue depths.
    Dashboard {
        /// Address to serve on (port 0 picks a free one; the address is printed).
        #[arg(
            long,
            env = "CHUNKFLOW_DASHBOARD_LISTEN",
            default_value = "127.0.0.1:8080"
        )]
        listen: String,
        /// How often the page's data is refreshed.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        refresh: Duration,
        #[command(flatten)]
        management: ManagementArgs,
    },
    /// Exit 0 if URL answers HTTP 200 within 3 s (a healthcheck for images without curl:
    /// `producer probe http://127.0.0.1:9090/readyz`).
    Probe {
        /// An http:// or https:// URL.
        url: String,
    },
}

#[derive(Debug, clap::Args)]
struct ManagementArgs {
    /// RabbitMQ management API, for unacked counts [default: the --amqp-url host and
    /// credentials (of its first node), port 15672]
    #[arg(long, env = "CHUNKFLOW_MANAGEMENT_URL", hide_env_values = true)]
    management_url: Option<String>,
}

impl ManagementArgs {
    fn url(&self, connection: &ConnectionConfig) -> String {
        self.management_url
            .clone()
            .or_else(|| crate::views::default_management_url(&connection.amqp_url))
            .unwrap_or_else(|| "http://127.0.0.1:15672".to_string())
    }
}

#[derive(Debug, clap::Args)]
struct GenerateArgs {
    /// What to generate: `text` (words with a heavy-headed distribution, for wordcount),
    /// `csv` or `jsonl` (customer transactions: customer_id, country, category, amount,
    /// timestamp; for groupby).
    #[arg(value_parser = ["text", "csv", "jsonl"])]
    kind: String,

    /// Approximate size; output is whole lines, at least this long.
    #[arg(long, default_value = "16MiB")]
    size: ByteSize,

    /// Seed: the same seed and size give the same bytes everywhere.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Number of distinct words to draw from.
    #[arg(long, default_value_t = 500_000)]
    vocabulary: u64,

    /// Write to this file instead of standard output.
    #[arg(long, short)]
    output: Option<std::path::PathBuf>,
}

/// Parameters of the built-in jobs; each job refuses the ones that are not its own. They
/// describe one job, so they have no environment twins.
#[derive(Debug, clap::Args)]
struct JobParams {
    /// grep: the regular expression (Rust `regex` syntax) a line must match.
    #[arg(long)]
    pattern: Option<String>,

    /// groupby: the input format.
    #[arg(long, value_parser = ["csv", "jsonl"])]
    format: Option<String>,

    /// groupby: the key columns (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "COL[,COL...]")]
    key: Vec<String>,

    /// groupby: an aggregate, repeatable: count, sum:COL, min:COL, max:COL, avg:COL.
    #[arg(long, value_name = "AGG")]
    agg: Vec<String>,

    /// groupby: what to do with a record that cannot be parsed: fail the job (naming file
    /// and line) or skip it (counted in records_skipped).
    #[arg(long, value_parser = ["fail", "skip"])]
    on_bad_record: Option<String>,

    /// exec: the NAME of the mapper program (see --allow-exec).
    #[arg(long)]
    mapper: Option<String>,

    /// exec: the NAME of the reducer program (see --allow-exec); without it the mapper's
    /// sorted output is the result.
    #[arg(long)]
    reducer: Option<String>,

    /// Parameters as a JSON object, for custom jobs; the flags above are added to it.
    #[arg(long, value_name = "JSON")]
    params: Option<String>,
}

impl JobParams {
    /// The spec's `params`: `null` when no parameter was given.
    fn to_json(&self) -> Result<serde_json::Value, ProducerError> {
        let mut object = match &self.params {
            None => serde_json::Map::new(),
            Some(text) => match serde_json::from_str(text) {
                Ok(serde_json::Value::Object(object)) => object,
                Ok(_) | Err(_) => {
                    return Err(ProducerError::Usage(format!(
                        "--params must be a JSON object, got {text:?}"
                    )))
                }
            },
        };
        let mut set = |name: &str, value: serde_json::Value| {
            object.insert(name.to_string(), value);
        };
        if let Some(pattern) = &self.pattern {
            set("pattern", pattern.clone().into());
        }
        if let Some(format) = &self.format {
            // Checked here too, so a typo fails as a usage error.
            let _: InputFormat = serde_json::from_value(format.clone().into())
                .map_err(|e| ProducerError::Usage(e.to_string()))?;
            set("format", format.clone().into());
        }
        if !self.key.is_empty() {
            set("key", self.key.clone().into());
        }
        if !self.agg.is_empty() {
            set("agg", self.agg.clone().into());
        }
        if let Some(policy) = &self.on_bad_record {
            let _: BadRecordPolicy = serde_json::from_value(policy.clone().into())
                .map_err(|e| ProducerError::Usage(e.to_string()))?;
            set("on_bad_record", policy.clone().into());
        }
        if let Some(mapper) = &self.mapper {
            set("mapper", mapper.clone().into());
        }
        if let Some(reducer) = &self.reducer {
            set("reducer", reducer.clone().into());
        }
        Ok(if object.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::Value::Object(object)
        })
    }
}

#[derive(Debug, clap::Args)]
struct SubmitArgs {
    /// The job to run. Built in: wordcount, grep, invertedindex, groupby, exec.
    #[arg(long = "job", env = "CHUNKFLOW_JOB")]
    kind: String,

    #[command(flatten)]
    params: JobParams,

    /// Run the job in this process on all cores, with no broker and no Redis, and print its
    /// result (in the format of `producer result`) instead of a job id.
    #[arg(long)]
    local: bool,

    /// Threads of a --local run.
    #[arg(long, env = "CHUNKFLOW_THREADS", default_value_t = default_threads())]
    threads: usize,

    /// Number of partitions the keys are spread over (1 to 4096); each is reduced separately
    /// and, on a Redis Cluster, kept on the master owning its slot. [default: 8, or twice the
    /// cluster's masters where there are more than 4]
    #[arg(long, env = "CHUNKFLOW_PARTITIONS")]
    partitions: Option<u32>,

    /// Target chunk size: chunks hold whole lines up to this many bytes (a longer line is a
    /// chunk of its own). Accepts bytes or units: 65536, 64KiB, 4MiB.
    #[arg(long, env = "CHUNKFLOW_CHUNK_SIZE", default_value = "4MiB")]
    chunk_size: ByteSize,

    /// Longest line accepted; a longer one fails the submit, naming file and byte offset.
    #[arg(long, env = "CHUNKFLOW_MAX_RECORD_SIZE", default_value = "64MiB")]
    max_record_size: ByteSize,

    /// Use this job id instead of a generated one (letters, digits, `-`, `_`). If a running
    /// job with this id exists with the same settings and the same inputs (paths, sizes and
    /// modification times), it is resumed: its chunks are published again (duplicates are
    /// harmless) and it is sealed; otherwise the submit is refused, naming the differences.
    /// A job read from standard input is never resumed.
    #[arg(long)]
    job_id: Option<JobId>,

    /// How long the job's result and status are kept in Redis after it ends (e.g. 24h, 7d).
    #[arg(long, env = "CHUNKFLOW_JOB_TTL", default_value = "24h", value_parser = parse_duration)]
    ttl: Duration,

    /// Wait until the job ends; exit 0 only if it succeeded. Progress goes to standard error.
    #[arg(long)]
    wait: bool,

    /// No progress lines on standard error.
    #[arg(long, short)]
    quiet: bool,

    /// Pause publishing while the map queue holds more than this many bytes of chunks.
    #[arg(long, env = "CHUNKFLOW_MAX_QUEUED_BYTES", default_value = "512MiB")]
    max_queued_bytes: ByteSize,

    /// If the broker connection is lost while publishing, keep reconnecting (and
    /// republishing unconfirmed chunks) this long before giving up.
    #[arg(long, env = "CHUNKFLOW_RECONNECT_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    reconnect_timeout: Duration,

    /// Published but not yet confirmed bytes the producer may hold.
    #[arg(long, env = "CHUNKFLOW_MAX_UNCONFIRMED_BYTES", default_value = "32MiB")]
    max_unconfirmed_bytes: ByteSize,

    /// Files, directories (every regular file below, recursively, in sorted order), or `-`
    /// for standard input.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<String>,
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The `producer` binary over `registry`.
pub fn producer_main(registry: JobRegistry) -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init_with("warn", cli.log.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, registry)) {
        Ok(code) => code,
        Err(error) => match failure_exit_code(&error) {
            // The reader of standard output went away (`producer result JOB | head`): it
            // has what it wanted, so this is success, silently.
            None => ExitCode::SUCCESS,
            Some(code) => {
                eprintln!("error: {error:#}");
                ExitCode::from(code)
            }
        },
    }
}

/// The exit code of a failed command: 2 for a usage error (Redis settings that do not fit
/// the Redis found included: an invalid URL, a `--redis-mode` the server contradicts), 1 for
/// any other, and `None` (success) when standard output was closed by its reader.
fn failure_exit_code(error: &anyhow::Error) -> Option<u8> {
    if let Some(store) = error.downcast_ref::<chunkflow::store::StoreError>() {
        return Some(if store.is_configuration() { 2 } else { 1 });
    }
    match error.downcast_ref::<ProducerError>() {
        Some(error) if error.is_closed_output() => None,
        Some(ProducerError::Usage(_)) => Some(2),
        Some(ProducerError::Store(store)) if store.is_configuration() => Some(2),
        _ => Some(1),
    }
}

/// Writes `text` to standard output, flushed; a failure (a closed pipe included) is an
/// output error.
fn print_out(text: &str) -> Result<(), ProducerError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(ProducerError::Output)
}

async fn connect_store(connection: &ConnectionConfig) -> anyhow::Result<Store> {
    Ok(Store::connect(connection).await?)
}

async fn run(cli: Cli, registry: JobRegistry) -> anyhow::Result<ExitCode> {
    let connection = cli.connection.config();
    match cli.command {
        Command::Submit(args) if args.local => {
            let registry = registry.with_exec(cli.exec.settings(ExecRole::Local));
            submit_local(&registry, *args)
        }
        Command::Submit(args) => {
            let registry = registry.with_exec(cli.exec.settings(ExecRole::Submit));
            submit(&connection, &registry, *args).await
        }
        Command::Status { job, json } => {
            let store = connect_store(&connection).await?;
            let status = producer::job_status(&store, &job).await?;
            let failures = store.failures(&job).await?;
            let now = views::now();
            if json {
                print_out(&format!(
                    "{}\n",
                    views::status_json(&status, &failures, now)
                ))?;
            } else {
                print_out(&views::status_text(&status, &failures, now))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { json } => {
            let store = connect_store(&connection).await?;
            let jobs = store.jobs().await?;
            let now = views::now();
            if json {
                let list: Vec<_> = jobs
                    .iter()
                    .map(|status| views::job_summary_json(status, now))
                    .collect();
                print_out(&format!("{}\n", serde_json::Value::Array(list)))?;
            } else {
                print_out(&views::jobs_text(&jobs, now))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Workers { json } => {
            let mut redis = views::redis(&connection).await?;
            let keys = chunkflow::store::keys::Keys::new(&connection.namespace);
            let records = chunkflow::store::presence::list(&mut redis, &keys).await?;
            if json {
                print_out(&format!("{}\n", serde_json::to_string(&records)?))?;
            } else {
                print_out(&views::workers_text(&records, views::now()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Queues { json, management } => {
            let url = management.url(&connection);
            let report = views::queues(&connection, &url).await?;
            if json {
                print_out(&format!("{}\n", serde_json::to_string(&report)?))?;
            } else {
                print_out(&views::queues_text(&report))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { job } => {
            let store = connect_store(&connection).await?;
            crate::watch::wait_for_job(
                &store,
                &job,
                true,
                Instant::now(),
                connection.outage_timeout,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dashboard {
            listen,
            refresh,
            management,
        } => {
            let config = crate::dashboard::DashboardConfig {
                management_url: management.url(&connection),
                connection,
                listen,
                refresh,
            };
            let shutdown = crate::shutdown::on_signals();
            crate::dashboard::run(config, shutdown, |addr| {
                println!("dashboard: http://{addr}/");
                std::io::stdout().flush().ok();
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe { url } => {
            let parsed = HttpUrl::parse(&url)?;
            let client = HttpClient::new(Duration::from_secs(3))?;
            match client.get(&parsed).await {
                Ok((status, _)) if status == reqwest::StatusCode::OK => Ok(ExitCode::SUCCESS),
                Ok((status, body)) => {
                    eprintln!(
                        "{}: HTTP {}: {}",
                        parsed.redacted(),
                        status.as_u16(),
                        String::from_utf8_lossy(&body).trim()
                    );
                    Ok(ExitCode::FAILURE)
                }
                Err(error) => {
                    eprintln!("{}", error_chain(&error));
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Cancel { job } => {
            let store = connect_store(&connection).await?;
            let status = producer::cancel_job(&store, &job).await?;
            eprintln!("{job}: {}", status.progress_summary());
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate(args) => {
            let out: Box<dyn Write> = match &args.output {
                Some(path) => Box::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
            let (size, seed) = (args.size.bytes(), args.seed);
            match args.kind.as_str() {
                "csv" => crate::datagen::write_transactions_csv(&mut out, size, seed),
                "jsonl" => crate::datagen::write_transactions_jsonl(&mut out, size, seed),
                _ => crate::datagen::write_text(&mut out, size, seed, args.vocabulary),
            }
            .and_then(|_| out.flush())
            .map_err(ProducerError::Output)
            .with_context(|| match &args.output {
                Some(path) => format!("writing {}", path.display()),
                None => "writing generated data to standard output".to_string(),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Result { job } => {
            let store = connect_store(&connection).await?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
            let registry = registry.with_exec(cli.exec.settings(ExecRole::Submit));
            let status = producer::write_result(&store, &registry, &job, &mut out).await?;
            out.flush().map_err(ProducerError::Output)?;
            report_skipped(
                status
                    .counters
                    .get(chunkflow::jobs::RECORDS_SKIPPED)
                    .copied(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A note on standard error when records were skipped.
fn report_skipped(skipped: Option<u64>) {
    if let Some(skipped) = skipped.filter(|&n| n > 0) {
        eprintln!("note: {skipped} bad records were skipped (--on-bad-record skip)");
    }
}

fn submit_options(args: &SubmitArgs) -> Result<SubmitOptions, ProducerError> {
    Ok(SubmitOptions {
        kind: args.kind.clone(),
        params: args.params.to_json()?,
        partitions: args.partitions,
        chunk_size: args.chunk_size.bytes(),
        max_record_size: args.max_record_size.bytes(),
        inputs: args.inputs.clone(),
        job_id: args.job_id.clone(),
        ttl: args.ttl,
        max_queued_bytes: args.max_queued_bytes.bytes(),
        max_unconfirmed_bytes: args.max_unconfirmed_bytes.bytes(),
        reconnect_timeout: args.reconnect_timeout,
    })
}

fn submit_local(registry: &JobRegistry, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let options = submit_options(&args)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let outcome = chunkflow::local::run_local(registry, &options, args.threads, &mut out)?;
    out.flush().map_err(ProducerError::Output)?;
    if !args.quiet {
        let counters: Vec<String> = outcome
            .counters
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        eprintln!(
            "local {}: {} chunks, {} in {:.2}s",
            options.kind,
            outcome.chunks,
            counters.join(" "),
            started.elapsed().as_secs_f64()
        );
    }
    report_skipped(
        outcome
            .counters
            .get(chunkflow::jobs::RECORDS_SKIPPED)
            .copied(),
    );
    Ok(ExitCode::SUCCESS)
}

async fn submit(
    connection: &ConnectionConfig,
    registry: &JobRegistry,
    args: SubmitArgs,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let options = submit_options(&args)?;
    let mut submission = Submission::create(connection, registry, options).await?;
    println!("{}", submission.job_id());
    std::io::stdout().flush().ok();
    let published = submission.publish(!args.quiet).await?;
    tracing::info!(chunks = published.chunks, bytes = published.bytes, elapsed = ?started.elapsed(), "published");
    if args.wait {
        crate::watch::wait_for_job(
            submission.store(),
            submission.job_id(),
            !args.quiet,
            submission.started(),
            connection.outage_timeout,
        )
        .await?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn exit_codes_follow_the_error_class() {
        let closed = anyhow::Error::from(ProducerError::Output(Error::from(ErrorKind::BrokenPipe)));
        assert_eq!(failure_exit_code(&closed), None);
        assert_eq!(
            failure_exit_code(&closed.context("writing generated data to standard output")),
            None
        );
        let full = anyhow::Error::from(ProducerError::Output(Error::from(ErrorKind::StorageFull)));
        assert_eq!(failure_exit_code(&full), Some(1));
        let usage = anyhow::Error::from(ProducerError::Usage("--partitions".into()));
        assert_eq!(failure_exit_code(&usage), Some(2));
        // A broken pipe elsewhere (a lost connection) is a failure, not a closed output.
        let socket = anyhow::Error::from(Error::from(ErrorKind::BrokenPipe));
        assert_eq!(failure_exit_code(&socket), Some(1));
        // Redis settings that do not fit the Redis found are usage errors.
        use chunkflow::store::StoreError;
        let mode = || StoreError::Mode {
            url: "redis://h:7001".into(),
            reason: "a cluster node".into(),
        };
        assert_eq!(failure_exit_code(&anyhow::Error::from(mode())), Some(2));
        let wrapped = anyhow::Error::from(ProducerError::Store(mode()));
        assert_eq!(failure_exit_code(&wrapped), Some(2));
        let taken = anyhow::Error::from(StoreError::JobExists("j".into()));
        assert_eq!(failure_exit_code(&taken), Some(1));
    }
}
