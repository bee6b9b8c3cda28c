//! `producer`: submit jobs, follow them, print their results; see `producer --help`. The
//! command line lives in the library ([`chunkflow::cli::producer_main`]) so that binaries
//! with custom jobs share it.

fn main() -> std::process::ExitCode {
    chunkflow::cli::producer_main(chunkflow::jobs::JobRegistry::stock())
}
