//! The end-to-end test harness: what the `e2e` and `exclusive` test binaries share.
//!
//! It exists so that both binaries drive the real `producer`, `worker` and `reducer`
//! processes the same way: one build of the binaries under test, a unique namespace per
//! test with its cleanup, waits on conditions with deadlines, and sequential references to
//! compare results with. Tests hold the assertions; this crate holds no test of its own,
//! and it must never stop, pause or flush the shared RabbitMQ or Redis on its own account
//! (the exclusive scenarios do that, explicitly, through [`services::rabbitmqctl`]).
//!
//! | module | owns |
//! |---|---|
//! | [`binaries`] | building the binaries under test (with fault injection) into `target/e2e` |
//! | [`services`] | the shared RabbitMQ and Redis: connections, `wait_for`, a private Redis |
//! | [`cluster`] | one test's namespace, processes, scratch directory and cleanup |
//! | [`redis_cluster`] | the test Redis Clusters: seeds, nodes, killing and restarting a node, a namespace's keys on every master |
//! | [`rabbitmq_cluster`] | the 3-node RabbitMQ cluster of `scripts/rabbitmq-cluster.sh`: nodes, queue leaders and members, connections, stopping a node |
//! | [`monitor`] | the processes' monitor endpoints, metrics and `--json` views |
//! | [`reference`](mod@reference) | inputs and independent sequential references of the jobs |
//! | [`scenario`] | finishing a chaos scenario: compare with the reference, report a line |

// Test and benchmark code: a failed unwrap is a failed run, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod binaries;
pub mod cluster;
pub mod monitor;
pub mod rabbitmq_cluster;
pub mod redis_cluster;
pub mod reference;
pub mod scenario;
pub mod services;
