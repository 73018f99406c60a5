//! Lets something (a log line) happen at most once per period, shared between threads without a lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Lets something happen at most once per period (the first time always); shared between threads.
#[derive(Debug)]
pub struct Throttle {
    start: Instant,
    every_ms: u64,
    /// Milliseconds since `start` before which `ready` says no.
    next_ms: AtomicU64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Throttle {
            start: Instant::now(),
            every_ms: millis(every),
            next_ms: AtomicU64::new(0),
        }
    }

    pub fn ready(&self) -> bool {
        let now = millis(self.start.elapsed());
        let next = self.next_ms.load(Relaxed);
        now >= next
            && self
                .next_ms
                .compare_exchange(next, now.saturating_add(self.every_ms), Relaxed, Relaxed)
                .is_ok()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
