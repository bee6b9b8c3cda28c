//! Building the binaries under test. They are built once per test process into
//! `target/e2e` (relative to the workspace) with the `fault-injection` features, so the
//! test-only hooks never reach a normal build and the build never contends for the lock
//! of the `cargo test` running us. Nothing here runs a binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (the parent of this crate).
pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
}

/// The target directory of the binaries under test.
fn e2e_target() -> PathBuf {
    workspace().join("target").join("e2e")
}

/// Runs `cargo build --quiet ARGS` into [`e2e_target`], panicking with `what` on failure.
fn cargo_build(args: &[&str], what: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace())
        .arg("build")
        .arg("--quiet")
        .args(args)
        .env("CARGO_TARGET_DIR", e2e_target())
        .status()
        .unwrap_or_else(|e| panic!("run cargo build for {what}: {e}"));
    assert!(status.success(), "building {what} failed");
}

/// Directory holding the `producer`, `worker` and `reducer` binaries, built once per test
/// process with the `fault-injection` feature (test-only hooks, off in normal builds).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // A target dir of its own: no lock contention with the `cargo test` that runs us,
        // and the feature set never flips the main build's binaries.
        cargo_build(
            &[
                "-p",
                "producer",
                "-p",
                "worker",
                "-p",
                "reducer",
                "--features",
                "producer/fault-injection,worker/fault-injection,reducer/fault-injection",
            ],
            "the binaries under test",
        );
        e2e_target().join("debug")
    })
}

/// Builds the custom-job example's binaries next to the stock ones (same target directory
/// and features as [`bin_dir`], so dependencies are shared) and returns that directory.
pub fn custom_bin_dir() -> &'static Path {
    static DONE: OnceLock<()> = OnceLock::new();
    let dir = bin_dir();
    DONE.get_or_init(|| {
        cargo_build(
            &[
                "-p",
                "custom-job",
                "--features",
                "custom-job/fault-injection",
            ],
            "the custom-job example",
        );
    });
    dir
}
