//! Everything that talks to RabbitMQ: the queue topology and connections ([`topology`]),
//! publishing with confirms ([`publisher`]), the consume loop with its reconnecting
//! supervisor ([`consumer`]), and the deadline on every wait for the broker
//! ([`deadline`]).
//!
//! Must not: know what a task means. Handlers (the worker and reducer) decide a delivery's
//! fate; this layer only moves deliveries in and settlements out.

pub mod consumer;
pub mod deadline;
pub mod publisher;
pub mod topology;
