//! Everything that talks to RabbitMQ: the queue topology and connections ([`topology`]),
//! publishing with confirms ([`publisher`]), and the consume loop with its reconnecting
//! supervisor ([`consumer`]).
//!
//! Must not: know what a task means. Handlers (the worker and reducer) decide a delivery's
//! fate; this layer only moves deliveries in and settlements out.

pub mod consumer;
pub mod publisher;
pub mod topology;
