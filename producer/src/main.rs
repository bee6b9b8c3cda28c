//! `producer`: submit jobs, follow them, print their results. A thin shell over
//! `chunkflow::producer`; see `producer --help`.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use chunkflow::config::{parse_duration, parse_job_id, ConnectionArgs};
use chunkflow::jobs::JobRegistry;
use chunkflow::producer::{self, ProducerError, Submission, SubmitOptions};
use chunkflow::size::ByteSize;
use chunkflow::store::Store;
use clap::{Parser, Subcommand};

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

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Split input into chunks of whole lines and publish one task per chunk; prints the
    /// job id as the only line on standard output.
    Submit(SubmitArgs),
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
    /// Print a succeeded job's result: one `key<TAB>value` line per record, sorted by key
    /// in byte order.
    Result {
        /// The job id printed by `submit`.
        job: String,
    },
}

#[derive(Debug, clap::Args)]
struct GenerateArgs {
    /// What to generate: `text` (words with a heavy-headed distribution, for wordcount).
    #[arg(value_parser = ["text"])]
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

#[derive(Debug, clap::Args)]
struct SubmitArgs {
    /// The job to run. Built in: wordcount.
    #[arg(long = "job", env = "CHUNKFLOW_JOB")]
    kind: String,

    /// Number of partitions the keys are spread over (1 to 4096); each is reduced separately.
    #[arg(long, env = "CHUNKFLOW_PARTITIONS", default_value_t = 8)]
    partitions: u32,

    /// Target chunk size: chunks hold whole lines up to this many bytes (a longer line is a
    /// chunk of its own). Accepts bytes or units: 65536, 64KiB, 4MiB.
    #[arg(long, env = "CHUNKFLOW_CHUNK_SIZE", default_value = "4MiB")]
    chunk_size: ByteSize,

    /// Longest line accepted; a longer one fails the submit, naming file and byte offset.
    #[arg(long, env = "CHUNKFLOW_MAX_RECORD_SIZE", default_value = "64MiB")]
    max_record_size: ByteSize,

    /// Use this job id instead of a generated one (letters, digits, `-`, `_`). If a running
    /// job with this id and the same settings exists, it is resumed: its chunks are
    /// published again (duplicates are harmless) and it is sealed.
    #[arg(long, value_parser = parse_job_id)]
    job_id: Option<String>,

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
    #[arg(long, env = "CHUNKFLOW_RECONNECT_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    reconnect_timeout: Duration,

    /// Published but not yet confirmed bytes the producer may hold.
    #[arg(long, env = "CHUNKFLOW_MAX_UNCONFIRMED_BYTES", default_value = "32MiB")]
    max_unconfirmed_bytes: ByteSize,

    /// Files, directories (every regular file below, recursively, in sorted order), or `-`
    /// for standard input.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    chunkflow::telemetry::init("warn");
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
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            let usage = matches!(
                error.downcast_ref::<ProducerError>(),
                Some(ProducerError::Usage(_))
            );
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

async fn connect_store(connection: &ConnectionArgs) -> anyhow::Result<Store> {
    Ok(Store::connect(
        &connection.redis_url,
        &connection.namespace,
        connection.redis_timeout,
    )
    .await?)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Submit(args) => submit(&cli.connection, args).await,
        Command::Status { job, json } => {
            let store = connect_store(&cli.connection).await?;
            let status = producer::job_status(&store, &job).await?;
            if json {
                println!("{}", producer::status_json(&status));
            } else {
                print!("{}", producer::status_text(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { job } => {
            let store = connect_store(&cli.connection).await?;
            let status = producer::cancel_job(&store, &job).await?;
            eprintln!("{job}: {}", producer::progress_summary(&status));
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
            chunkflow::datagen::write_text(&mut out, args.size.bytes(), args.seed, args.vocabulary)
                .and_then(|_| out.flush())
                .context("writing generated data")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Result { job } => {
            let store = connect_store(&cli.connection).await?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
            producer::write_result(&store, &job, &mut out).await?;
            out.flush()
                .context("writing the result to standard output")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn submit(connection: &ConnectionArgs, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let options = SubmitOptions {
        kind: args.kind,
        params: serde_json::Value::Null,
        partitions: args.partitions,
        chunk_size: args.chunk_size.bytes(),
        max_record_size: args.max_record_size.bytes(),
        inputs: args.inputs,
        job_id: args.job_id,
        ttl: args.ttl,
        max_queued_bytes: args.max_queued_bytes.bytes(),
        max_unconfirmed_bytes: args.max_unconfirmed_bytes.bytes(),
        reconnect_timeout: args.reconnect_timeout,
    };
    let mut submission = Submission::create(connection, &JobRegistry::stock(), options).await?;
    println!("{}", submission.job_id());
    std::io::stdout().flush().ok();
    let published = submission.publish(!args.quiet).await?;
    tracing::info!(chunks = published.chunks, bytes = published.bytes, elapsed = ?started.elapsed(), "published");
    if args.wait {
        submission.wait(!args.quiet).await?;
    }
    Ok(ExitCode::SUCCESS)
}
