//! What a running worker or reducer knows about its own health: connected to the broker,
//! when Redis last answered, whether it is waiting out a Redis outage, tasks done, the task
//! in hand. The service owns one
//! [`ServiceHealth`] and writes it from its consume loops; whoever monitors the service
//! (the `/readyz` endpoint and heartbeat of the command-line crate) is handed the same
//! `Arc` and only reads it, except for recording that Redis answered a heartbeat.
//!
//! There is no process-wide instance: two services in one process (an in-process test)
//! each have their own.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::job::now_ms;

/// The health of one service.
#[derive(Debug, Default)]
pub struct ServiceHealth {
    broker_connected: AtomicBool,
    /// When Redis last answered (ms since the epoch; 0: never).
    redis_ok_ms: AtomicU64,
    tasks_done: AtomicU64,
    current_task: Mutex<Option<String>>,
    /// Consume loops waiting out a Redis outage now.
    loops_in_outage: AtomicUsize,
}

/// Marks one consume loop as waiting out an outage while it lives.
#[derive(Debug)]
pub struct OutageMark<'a>(&'a ServiceHealth);

impl Drop for OutageMark<'_> {
    fn drop(&mut self) {
        self.0.loops_in_outage.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ServiceHealth {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_current_task(&self, task: Option<&str>) {
        if let Ok(mut current) = self.current_task.lock() {
            *current = task.map(str::to_string);
        }
    }

    pub fn current_task(&self) -> Option<String> {
        self.current_task.lock().ok().and_then(|c| c.clone())
    }

    pub fn task_done(&self) {
        self.tasks_done.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tasks_done(&self) -> u64 {
        self.tasks_done.load(Ordering::Relaxed)
    }

    pub fn set_broker_connected(&self, connected: bool) {
        self.broker_connected.store(connected, Ordering::Relaxed);
    }

    pub fn broker_connected(&self) -> bool {
        self.broker_connected.load(Ordering::Relaxed)
    }

    /// A consume loop stops consuming to wait out a Redis outage, until the mark is
    /// dropped; the service is not ready meanwhile.
    pub fn outage(&self) -> OutageMark<'_> {
        self.loops_in_outage.fetch_add(1, Ordering::Relaxed);
        OutageMark(self)
    }

    pub fn in_outage(&self) -> bool {
        self.loops_in_outage.load(Ordering::Relaxed) > 0
    }

    /// Records that Redis answered just now.
    pub fn redis_answered(&self) {
        self.redis_ok_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn redis_ok(&self, within: Duration) -> bool {
        let last = self.redis_ok_ms.load(Ordering::Relaxed);
        last > 0 && now_ms().saturating_sub(last) <= within.as_millis() as u64
    }

    /// `Ok` when ready, otherwise why not.
    pub fn readiness(&self, redis_within: Duration) -> Result<(), String> {
        let mut missing = Vec::new();
        if !self.broker_connected() {
            missing.push("not consuming from RabbitMQ");
        }
        if !self.redis_ok(redis_within) {
            missing.push("Redis did not answer the last heartbeat");
        }
        if self.in_outage() {
            missing.push("waiting out a Redis outage (not taking tasks)");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_both_sides_answer() {
        let health = ServiceHealth::new();
        let why = health.readiness(Duration::from_secs(5)).unwrap_err();
        assert!(why.contains("RabbitMQ") && why.contains("Redis"), "{why}");
        health.set_broker_connected(true);
        health.redis_answered();
        assert_eq!(health.readiness(Duration::from_secs(5)), Ok(()));
        health.set_broker_connected(false);
        assert!(health.readiness(Duration::from_secs(5)).is_err());
    }

    #[test]
    fn not_ready_while_waiting_out_an_outage() {
        let health = ServiceHealth::new();
        health.set_broker_connected(true);
        health.redis_answered();
        let first = health.outage();
        let second = health.outage();
        let why = health.readiness(Duration::from_secs(5)).unwrap_err();
        assert!(why.contains("Redis outage"), "{why}");
        drop(first);
        assert!(
            health.readiness(Duration::from_secs(5)).is_err(),
            "one loop still waits"
        );
        drop(second);
        assert_eq!(health.readiness(Duration::from_secs(5)), Ok(()));
    }

    #[test]
    fn two_services_do_not_share_state() {
        let (a, b) = (ServiceHealth::new(), ServiceHealth::new());
        a.task_done();
        a.set_current_task(Some("j/map/1"));
        assert_eq!((a.tasks_done(), b.tasks_done()), (1, 0));
        assert_eq!(b.current_task(), None);
    }
}
