//! End-to-end tests: real RabbitMQ, real Redis, and the real `producer`, `worker` and
//! `reducer` binaries as processes. Each test runs in its own namespace and removes it.

mod bad_input;
mod chaos;
mod compose;
mod dashboard;
mod faults;
mod jobs;
mod pipeline;
mod service;
mod stack;
