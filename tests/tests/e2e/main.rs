//! End-to-end tests: real RabbitMQ, real Redis, and the real `producer`, `worker` and
//! `reducer` binaries as processes. Each test runs in its own namespace and removes it.

// Test and benchmark code: a failed unwrap is a failed run, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bad_input;
mod chaos;
mod compose;
mod dashboard;
mod dead_letters;
mod faults;
mod inputs;
mod jobs;
mod outages;
mod pipeline;
mod service;
mod stack;
