//! The stock `worker` command line over a registry that includes the custom job.

fn main() -> std::process::ExitCode {
    chunkflow_cli::worker_main(custom_job::registry())
}
