//! The stock `producer` command line over a registry that includes the custom job.

fn main() -> std::process::ExitCode {
    chunkflow_cli::producer_main(custom_job::registry())
}
