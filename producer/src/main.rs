//! `producer`: submit jobs, follow them, print their results; see `producer --help`. The
//! command line lives in the app crate ([`chunkflow_cli::producer_main`]) so that binaries
//! with custom jobs share it.

fn main() -> std::process::ExitCode {
    chunkflow_cli::producer_main(chunkflow::jobs::JobRegistry::stock())
}
