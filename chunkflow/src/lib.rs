//! chunkflow: a MapReduce pipeline driven by RabbitMQ, with Redis as the commit log.
//!
//! The producer cuts input into chunks of whole records ([`chunker`]) and publishes one map
//! task per chunk ([`protocol::messages`], [`broker`]); workers ([`worker`]) map and
//! combine each chunk and commit its output to every partition atomically ([`store`]); the
//! commit that completes the map phase publishes reduce tasks, and reducers ([`reducer`])
//! merge each partition into its final result. Job code is pure and lives in [`jobs`]. See
//! ARCHITECTURE.md for the protocol and its invariants.
//!
//! This crate is the pipeline only: no command line, no HTTP, no terminal output. The
//! `chunkflow-cli` crate builds the binaries' command lines, views, dashboard and
//! monitoring endpoints on top of it.
//!
//! # Layout
//!
//! Lower layers never import higher ones.
//!
//! | module | owns |
//! |---|---|
//! | [`job`] | the job model: [`job::JobId`], [`job::JobSpec`], [`job::JobState`], [`job::JobStatus`] |
//! | [`config`] | connection settings, name validation, durations, URL redaction |
//! | [`jobs`] | the `Job` trait, the registry and the built-in jobs (pure: bytes in, bytes out) |
//! | [`input`], [`records`], [`chunker`], [`codec`], [`output`], [`size`] | expanding and opening inputs; where records end (lines, quote-aware CSV); cutting sources into chunks; intermediate encoding; result assembly; byte sizes |
//! | [`protocol`] | pure decisions of the commit protocol and the wire messages |
//! | [`store`] | every Redis read and write: key schema, commit scripts, views, heartbeats |
//! | [`broker`] | RabbitMQ: topology, connections, publishing with confirms, the consume loop |
//! | [`metrics`], [`health`] | metric names and hooks; a service's own health state |
//! | [`backoff`] | capped exponential backoff, the one way retries wait |
//! | [`worker`], [`reducer`], [`producer`] | the three roles: I/O shells over the protocol |
//! | [`local`] | the local runner: the same job code in one process, the tests' reference |
//! | [`fault`] | test-only fault injection (the `fault-injection` feature) |

pub mod backoff;
pub mod broker;
pub mod chunker;
pub mod codec;
pub mod config;
pub mod fault;
pub mod health;
pub mod input;
pub mod job;
pub mod jobs;
pub mod local;
pub mod metrics;
pub mod output;
pub mod producer;
pub mod protocol;
pub mod records;
pub mod reducer;
pub mod size;
pub mod store;
pub mod worker;
