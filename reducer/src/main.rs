//! `reducer`: consumes reduce tasks; see `reducer --help`. The command line lives in the app
//! library ([`chunkflow_cli::reducer_main`]) so that binaries with custom jobs share it.

fn main() -> std::process::ExitCode {
    chunkflow_cli::reducer_main(chunkflow::jobs::JobRegistry::stock())
}
