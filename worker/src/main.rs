//! `worker`: consumes map tasks; see `worker --help`. The command line lives in the app crate
//! ([`chunkflow_cli::worker_main`]) so that binaries with custom jobs share it.

fn main() -> std::process::ExitCode {
    chunkflow_cli::worker_main(chunkflow::jobs::JobRegistry::stock())
}
