//! The protocol's decisions, apart from the I/O that carries them out: what a delivery's
//! fate is ([`Disposition`]), how a failure is classified, what each step of a map task
//! ([`map`]) and of a reduce task ([`reduce`]) means, and the wire messages ([`messages`]).
//! Everything here is plain data in, plain data out, unit-tested without a broker or Redis;
//! the worker and reducer are thin shells that fetch state, call these, and act on the
//! answer.
//!
//! Must not: open a connection, sleep, or log. A decision that needs I/O to be made takes
//! the I/O's result as an argument.

pub mod dead_letter;
pub mod map;
pub mod messages;
pub mod reduce;

use crate::store::StoreError;

/// What to do with a delivery once handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done (committed, or a duplicate, or a task of an ended job): ack.
    Ack,
    /// Can never succeed (undecodable, unknown job): reject to the dead-letter queue.
    DeadLetter(String),
    /// May succeed later (job code crashed, reduce tasks unconfirmed): requeue after a
    /// pause.
    Retry(String),
    /// Redis is out (unreachable, not answering, out of memory): give the delivery back at
    /// once and stop consuming until Redis answers again. No fault of the task's.
    Unavailable(String),
}

/// Wait out a Redis outage, requeue what may pass, dead-letter what cannot.
pub fn store_disposition(error: StoreError) -> Disposition {
    if error.is_outage() {
        Disposition::Unavailable(error.to_string())
    } else if error.is_transient() {
        Disposition::Retry(error.to_string())
    } else {
        Disposition::DeadLetter(error.to_string())
    }
}

pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// The message of a job that Redis lost part of.
pub fn lost_state_reason(detail: &str) -> String {
    format!(
        "Redis lost part of this job's state ({detail}); it restarted without persistence or \
         evicted keys. The result would be wrong, so the job is failed: re-submit it"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_store_errors_requeue_and_others_dead_letter() {
        // An outage is waited out, and the delivery given back (requeued).
        let transient = StoreError::Pool("timed out".into());
        assert!(matches!(
            store_disposition(transient),
            Disposition::Unavailable(_)
        ));
        let refused = StoreError::Redis(deadpool_redis::redis::RedisError::from(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ));
        assert!(matches!(
            store_disposition(refused),
            Disposition::Unavailable(_)
        ));
        // A script error is no outage: requeued after a pause, as before.
        let script = StoreError::Redis(deadpool_redis::redis::RedisError::from((
            deadpool_redis::redis::ErrorKind::Client,
            "script error",
        )));
        assert!(matches!(store_disposition(script), Disposition::Retry(_)));
        let corrupt = StoreError::Corrupt {
            job: "j".into(),
            what: "bad".into(),
        };
        assert!(matches!(
            store_disposition(corrupt),
            Disposition::DeadLetter(_)
        ));
    }

    #[test]
    fn panic_payloads_become_text() {
        let payload: Box<dyn std::any::Any + Send> = Box::new("boom");
        assert_eq!(panic_message(&*payload), "boom");
        let payload: Box<dyn std::any::Any + Send> = Box::new(String::from("bang"));
        assert_eq!(panic_message(&*payload), "bang");
        let payload: Box<dyn std::any::Any + Send> = Box::new(7_u8);
        assert_eq!(panic_message(&*payload), "non-string panic payload");
    }

    #[test]
    fn lost_state_says_to_resubmit() {
        let reason = lost_state_reason("partition 3 holds 1 of 2");
        assert!(reason.contains("partition 3 holds 1 of 2") && reason.contains("re-submit"));
    }
}
