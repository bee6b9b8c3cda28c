//! The chunkflow application: the command lines of the `producer`, `worker` and `reducer`
//! binaries as library functions over a [`JobRegistry`](chunkflow::jobs::JobRegistry), so
//! that custom binaries with their own jobs get the very same command lines
//! (`examples/custom-job`).
//!
//! Everything a person or an operator's tool sees lives here, over the `chunkflow` library:
//! flags and their environment twins, exit codes, text and JSON views, the progress bar,
//! the web dashboard, the `/metrics`, `/healthz` and `/readyz` endpoints, the heartbeat
//! task, log setup and sample data. The library decides nothing here is needed to run the
//! pipeline; this crate decides nothing about the protocol.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`args`] | flags shared by every binary (connection, exec, monitoring, consuming) and their env twins |
//! | [`services`] | `worker_main` and `reducer_main`: a service with its monitor, to an exit code |
//! | [`producer`] | `producer_main` and its subcommands |
//! | [`views`] | read-only views for people and scripts: status, jobs, workers, queues |
//! | [`watch`] | following a job: progress bar or plain lines |
//! | [`dashboard`] | the web dashboard of `producer dashboard` |
//! | [`monitor`] | a service's endpoints and heartbeat |
//! | [`http`] | serving the endpoints above (axum over hyper) and the HTTP(S) client of the management API and `probe` (reqwest over rustls) |
//! | [`datagen`] | deterministic sample data for demos and benchmarks |
//! | [`telemetry`], [`shutdown`] | log setup; signals to a cancellation token |

pub mod args;
pub mod dashboard;
pub mod datagen;
pub mod http;
pub mod monitor;
pub mod producer;
pub mod services;
pub mod shutdown;
pub mod telemetry;
pub mod views;
pub mod watch;

pub use producer::producer_main;
pub use services::{reducer_main, worker_main};
