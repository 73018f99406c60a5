//! Passive health of each backend: consecutive failures put a client in a cooldown; one success resets it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::HealthPolicy;
use crate::duration::millis;

/// Health of one client. Lock-free: every request may read it, failures and successes update it.
#[derive(Debug)]
pub struct ClientHealth {
    /// Failures since the last success.
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the client is skipped (0: not cooling).
    cooled_until_ms: AtomicU64,
    epoch: Instant,
}

impl ClientHealth {
    pub fn new(epoch: Instant) -> Self {
        ClientHealth {
            failures: AtomicU32::new(0),
            cooled_until_ms: AtomicU64::new(0),
            epoch,
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    /// True while the client is in its cooldown.
    pub fn is_cooling(&self) -> bool {
        self.cooled_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    /// How long the cooldown still lasts; `None` when not cooling.
    pub fn cooling_for(&self) -> Option<Duration> {
        let until = self.cooled_until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn record_success(&self) {
        // Plain stores on the common path would dirty a shared cache line on every request: write only on change.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.cooled_until_ms.load(Ordering::Relaxed) != 0 {
            self.cooled_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; cools the client once the threshold is reached, or at once for the time a
    /// backend asked for (`Retry-After` on a 429). Returns true when this call started a cooldown.
    pub fn record_failure(&self, policy: HealthPolicy, retry_after: Option<Duration>) -> bool {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let cool_for = match retry_after {
            Some(d) => Some(d),
            None if failures >= policy.failure_threshold => Some(policy.cooldown),
            None => None,
        };
        let Some(d) = cool_for else { return false };
        let until = self.now_ms().saturating_add(millis(d));
        let was_cooling = self.is_cooling();
        self.cooled_until_ms.fetch_max(until, Ordering::Relaxed);
        !was_cooling
    }

    /// Copies the state of a client of the same name from the config before a reload.
    pub fn inherit(&self, old: &ClientHealth) {
        self.failures.store(old.failures(), Ordering::Relaxed);
        let until = old.cooled_until_ms.load(Ordering::Relaxed);
        // Both count from their own epoch; translate through wall-clock-free Instants.
        let shifted = if until == 0 {
            0
        } else {
            let deadline = old.epoch + Duration::from_millis(until);
            millis(deadline.saturating_duration_since(self.epoch))
        };
        self.cooled_until_ms.store(shifted, Ordering::Relaxed);
    }
}

/// Parses a `Retry-After` header value given in seconds (HTTP dates are ignored: backends send seconds).
pub fn parse_retry_after(value: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let secs: f64 = text.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: HealthPolicy = HealthPolicy {
        failure_threshold: 3,
        cooldown: Duration::from_secs(30),
    };

    #[test]
    fn cools_after_threshold_and_resets_on_success() {
        let h = ClientHealth::new(Instant::now());
        assert!(!h.record_failure(POLICY, None));
        assert!(!h.record_failure(POLICY, None));
        assert!(!h.is_cooling());
        assert!(h.record_failure(POLICY, None));
        assert!(h.is_cooling());
        let left = h.cooling_for().unwrap();
        assert!(
            left > Duration::from_secs(29) && left <= POLICY.cooldown,
            "{left:?}"
        );
        h.record_success();
        assert_eq!(h.cooling_for(), None);
        assert!(!h.is_cooling());
        assert_eq!(h.failures(), 0);
    }

    #[test]
    fn retry_after_cools_at_once() {
        let h = ClientHealth::new(Instant::now());
        assert!(h.record_failure(POLICY, Some(Duration::from_secs(5))));
        assert!(h.is_cooling());
        let short = ClientHealth::new(Instant::now());
        short.record_failure(POLICY, Some(Duration::from_millis(0)));
        assert!(!short.is_cooling());
    }

    #[test]
    fn inherits_state_across_reload() {
        let old = ClientHealth::new(Instant::now());
        for _ in 0..3 {
            old.record_failure(POLICY, None);
        }
        let new = ClientHealth::new(Instant::now());
        new.inherit(&old);
        assert!(new.is_cooling());
        assert_eq!(new.failures(), 3);
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after(b"2"), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(b" 0.5 "),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after(b"-1"), None);
    }
}
