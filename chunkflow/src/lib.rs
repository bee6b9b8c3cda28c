//! chunkflow: a MapReduce pipeline driven by RabbitMQ, with Redis as the commit log.
//!
//! The producer cuts input into chunks of whole lines ([`chunker`]) and publishes one map
//! task per chunk ([`messages`], [`topology`], [`publisher`]); workers ([`worker`]) map and
//! combine each chunk and commit its output to every partition atomically ([`store`],
//! keys in [`keys`]); the commit that completes the map phase publishes reduce tasks, and
//! reducers ([`reducer`]) merge each partition into its final result. Job code is pure and
//! lives in [`jobs`]. See ARCHITECTURE.md for the protocol and its invariants.

pub mod chunker;
pub mod cli;
pub mod codec;
pub mod config;
pub mod dashboard;
pub mod datagen;
pub mod fault;
pub mod http;
pub mod inspect;
pub mod jobs;
pub mod keys;
pub mod local;
pub mod messages;
pub mod metrics;
pub mod monitor;
pub mod output;
pub mod presence;
pub mod producer;
pub mod publisher;
pub mod reducer;
pub mod service;
pub mod shutdown;
pub mod size;
pub mod store;
pub mod telemetry;
pub mod topology;
pub mod watch;
pub mod worker;
