//! The stock `reducer` command line over a registry that includes the custom job.

fn main() -> std::process::ExitCode {
    chunkflow_cli::reducer_main(custom_job::registry())
}
