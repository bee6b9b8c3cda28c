//! Capped exponential backoff: the one way this crate waits between retries (the consume
//! loop's reconnects, the publisher's reconnects, the producer's Redis retries and its wait
//! for queue room).
//!
//! [`Backoff`] only computes delays and sleeps; whether to retry at all, and for how long in
//! total, stays with the caller. Must not: retry anything itself, or sleep past a shutdown
//! ([`Backoff::pause`] returns as soon as shutdown is requested).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Delays that double from `initial` up to `max`, until [`Backoff::reset`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `initial` and doubles up to `max` (a `max` below `initial` is raised to it).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    /// The delay the next pause will take.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// The delay to wait now; the one after it is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        delay
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// Sleeps the next delay unless shutdown comes first; `false` on shutdown.
    pub async fn pause(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Sleeps the next delay (for callers without a shutdown signal; they bound their
    /// retries by a deadline of their own).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap() {
        let mut backoff = Backoff::new(100 * MS, 500 * MS);
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays, [100 * MS, 200 * MS, 400 * MS, 500 * MS, 500 * MS]);
        assert_eq!(backoff.current(), 500 * MS);
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::new(250 * MS, Duration::from_secs(5));
        backoff.next_delay();
        backoff.next_delay();
        assert_eq!(backoff.current(), Duration::from_secs(1));
        backoff.reset();
        assert_eq!(backoff.next_delay(), 250 * MS);
    }

    #[test]
    fn a_cap_below_the_start_is_the_start() {
        let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(backoff.next_delay(), Duration::from_secs(2));
        assert_eq!(backoff.next_delay(), Duration::from_secs(2));
    }

    #[test]
    fn huge_delays_saturate_instead_of_overflowing() {
        let mut backoff = Backoff::new(Duration::MAX / 2 + Duration::from_secs(1), Duration::MAX);
        backoff.next_delay();
        assert_eq!(backoff.next_delay(), Duration::MAX);
    }

    #[tokio::test]
    async fn pause_sleeps_the_delay_and_stops_on_shutdown() {
        let shutdown = CancellationToken::new();
        let mut backoff = Backoff::new(20 * MS, Duration::from_secs(60));
        let started = std::time::Instant::now();
        assert!(backoff.pause(&shutdown).await);
        assert!(started.elapsed() >= 20 * MS);
        backoff.wait().await;
        assert!(started.elapsed() >= 60 * MS);
        // The next delays are long: a shutdown must cut them short.
        let mut long = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        shutdown.cancel();
        let cancelled = std::time::Instant::now();
        assert!(!long.pause(&shutdown).await);
        assert!(
            cancelled.elapsed() < Duration::from_secs(5),
            "no sleep after shutdown"
        );
    }
}
