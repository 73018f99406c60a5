//! The load of one client: requests in flight, requests picked first, a peak-EWMA of time to first byte.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How fast a latency estimate forgets: Finagle's and Linkerd's default decay of 10 s.
const DECAY: Duration = Duration::from_secs(10);
/// The cost of a client never measured that already has a request in flight: higher than any measured
/// cost, so a new client gets one request at once (cost 0 while idle) and no pile before its first answer.
const UNMEASURED_PENALTY_MS: f64 = 1e9;

/// One client's load, shared by every request that may pick it. Lock-free.
#[derive(Debug)]
pub struct ClientLoad {
    in_flight: AtomicU32,
    /// Requests this client was picked first for by `weighted` (its round robin counter).
    picked: AtomicU64,
    /// Peak-EWMA of time to first byte in milliseconds, as f64 bits; 0: never measured.
    ewma_ms: AtomicU64,
    /// Nanoseconds since `epoch` of the last sample.
    stamp_ns: AtomicU64,
    epoch: Instant,
}

/// A request in flight on a client: counted from [`ClientLoad::start`] until dropped.
#[derive(Debug)]
pub struct InFlight {
    load: Arc<ClientLoad>,
    started: Instant,
}

impl InFlight {
    /// Records the time from `start` to the answer's first byte (call it for answers that count as
    /// success: a fast error must not make a backend look fast).
    pub fn first_byte(&self, now: Instant) {
        self.load
            .observe_ttfb(now.saturating_duration_since(self.started), now);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ClientLoad {
    pub fn new(epoch: Instant) -> Self {
        ClientLoad {
            in_flight: AtomicU32::new(0),
            picked: AtomicU64::new(0),
            ewma_ms: AtomicU64::new(0f64.to_bits()),
            stamp_ns: AtomicU64::new(0),
            epoch,
        }
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            load: Arc::clone(self),
            started: Instant::now(),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests `weighted` has picked this client first for.
    pub fn picked(&self) -> u64 {
        self.picked.load(Ordering::Relaxed)
    }

    pub(super) fn count_pick(&self) {
        self.picked.fetch_add(1, Ordering::Relaxed);
    }

    /// A time to first byte: above the estimate it becomes the estimate at once (a slow backend is
    /// noticed by its first slow answer); below, the estimate moves toward it with a 10 s time constant.
    pub fn observe_ttfb(&self, ttfb: Duration, now: Instant) {
        let sample = ttfb.as_secs_f64() * 1000.0;
        let now_ns = self.nanos(now);
        let last_ns = self.stamp_ns.swap(now_ns, Ordering::Relaxed);
        let weight = decay_weight(now_ns.saturating_sub(last_ns));
        let _ = self
            .ewma_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let old = f64::from_bits(bits);
                let new = if sample > old || old == 0.0 {
                    sample
                } else {
                    old * weight + sample * (1.0 - weight)
                };
                Some(new.to_bits())
            });
    }

    /// The estimate in milliseconds, decayed toward 0 since the last sample so that a client left alone
    /// for being slow is tried again after a while. 0 when never measured.
    pub fn ewma_ms(&self, now: Instant) -> f64 {
        let ewma = f64::from_bits(self.ewma_ms.load(Ordering::Relaxed));
        let idle = self
            .nanos(now)
            .saturating_sub(self.stamp_ns.load(Ordering::Relaxed));
        ewma * decay_weight(idle)
    }

    /// What `latency` minimizes: the estimate times (requests in flight + 1). A client never measured
    /// costs 0 while idle and more than any measured client once it has a request in flight.
    pub fn latency_cost(&self, now: Instant) -> f64 {
        let in_flight = f64::from(self.in_flight());
        if f64::from_bits(self.ewma_ms.load(Ordering::Relaxed)) == 0.0 {
            return if in_flight == 0.0 {
                0.0
            } else {
                UNMEASURED_PENALTY_MS + in_flight
            };
        }
        self.ewma_ms(now) * (in_flight + 1.0)
    }

    /// Copies the latency estimate and pick count of the same client before a reload. Requests in flight
    /// are not copied: their guards hold the old value. Sharing the old `Arc<ClientLoad>` instead keeps
    /// them too, and is what the router should do for clients that stay.
    pub fn inherit(&self, old: &ClientLoad) {
        self.picked.store(old.picked(), Ordering::Relaxed);
        self.ewma_ms
            .store(old.ewma_ms.load(Ordering::Relaxed), Ordering::Relaxed);
        let stamp = old.epoch + Duration::from_nanos(old.stamp_ns.load(Ordering::Relaxed));
        self.stamp_ns.store(self.nanos(stamp), Ordering::Relaxed);
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// exp(-elapsed / DECAY): the share of the old estimate that is kept.
fn decay_weight(elapsed_ns: u64) -> f64 {
    (-(elapsed_ns as f64) / DECAY.as_nanos() as f64).exp()
}
