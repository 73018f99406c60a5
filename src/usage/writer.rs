//! The bounded queue requests hand their usage records to, and the background writer that batches them into the store.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};
use tokio::sync::watch;
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;

use super::record::{CapturedRecord, UsageRecord};
use super::store::{Month, Store, StoreError};
use crate::config::UsageSettings;

/// Attempts at the very end (channel closed, or `drain_now`) before what is left is given up on.
const FINAL_ATTEMPTS: u32 = 3;
const FINAL_RETRY_DELAY: Duration = Duration::from_millis(100);
/// How often the writer looks at the queue once the server is shutting down.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);
/// Drops are warned about at most this often, with the running count.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(1);
/// A failing store is retried every flush interval, but logged at most this often (and at least once).
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
/// tokio's channel panics above `usize::MAX >> 3` records; no memory holds this many anyway.
const MAX_QUEUE: usize = 1 << 30;

/// Counters shared by the queue and the writer, for logs and metrics.
#[derive(Debug, Default)]
pub struct UsageStats {
    /// Records in the channel, not yet taken by the writer (approximate).
    pub queued: AtomicU64,
    /// Records committed to a file.
    pub written: AtomicU64,
    /// Records lost: queue full, writer gone, too many waiting while writes fail, or given up on at shutdown.
    pub dropped: AtomicU64,
    /// Failed write attempts (each may concern many records).
    pub write_errors: AtomicU64,
}

impl UsageStats {
    /// Adds `n` to `dropped` and returns the new total.
    fn drop_records(&self, n: usize) -> u64 {
        let n = count(n);
        self.dropped.fetch_add(n, Relaxed) + n
    }
}

/// The sending side, held by every request. Cloning it is cheap; sending never waits.
#[derive(Clone, Debug)]
pub struct UsageQueue {
    sender: mpsc::Sender<CapturedRecord>,
    stats: Arc<UsageStats>,
    warnings: Arc<Throttle>,
    /// Wakes the writer early once a full batch is waiting; otherwise it wakes once per flush interval,
    /// not once per record (a wake-up per request would cost a context switch per request).
    wake: Arc<Notify>,
    batch: u64,
}

impl UsageQueue {
    /// Queues `record` for writing, or drops and counts it when the queue is full or the writer is gone.
    pub fn send(&self, record: impl Into<CapturedRecord>) {
        let record = record.into();
        // Counted before sending, so the writer's decrement can never come first and wrap around.
        let depth = self.stats.queued.fetch_add(1, Relaxed) + 1;
        let Err(failed) = self.sender.try_send(record) else {
            if depth >= self.batch {
                self.wake.notify_one();
            }
            return;
        };
        self.stats.queued.fetch_sub(1, Relaxed);
        let dropped = self.stats.drop_records(1);
        if !self.warnings.ready() {
            return;
        }
        match failed {
            TrySendError::Full(_) => log::warn!(
                "usage queue full ({} records): {dropped} record(s) dropped so far",
                self.sender.max_capacity()
            ),
            TrySendError::Closed(_) => {
                log::warn!("usage writer has stopped: {dropped} record(s) dropped so far")
            }
        }
    }

    pub fn stats(&self) -> Arc<UsageStats> {
        Arc::clone(&self.stats)
    }
}

/// A queue and the writer that drains it, sized by `settings`. Nothing touches the disk until a record arrives.
pub fn channel(settings: &UsageSettings) -> (UsageQueue, Writer) {
    let (sender, receiver) = mpsc::channel(settings.queue_capacity.clamp(1, MAX_QUEUE));
    let stats = Arc::new(UsageStats::default());
    let wake = Arc::new(Notify::new());
    let queue = UsageQueue {
        sender,
        stats: Arc::clone(&stats),
        warnings: Arc::new(Throttle::new(DROP_WARNING_EVERY)),
        wake: Arc::clone(&wake),
        batch: count(settings.batch_size.max(1)),
    };
    let writer = Writer {
        receiver,
        wake,
        store: Store::new(settings.dir.clone()),
        pending: Vec::new(),
        settings: settings.clone(),
        stats,
        failing: false,
        failures_unlogged: 0,
        error_log: Throttle::new(ERROR_LOG_EVERY.max(settings.flush_interval)),
        overflow_log: Throttle::new(DROP_WARNING_EVERY),
    };
    (queue, writer)
}

/// The receiving side: owns the store and the records received but not yet written.
pub struct Writer {
    receiver: mpsc::Receiver<CapturedRecord>,
    wake: Arc<Notify>,
    store: Store,
    /// Received, not yet written; at most `queue_capacity` records.
    pending: Vec<UsageRecord>,
    settings: UsageSettings,
    stats: Arc<UsageStats>,
    /// The last write failed: the next attempt waits for the flush interval instead of a full batch.
    failing: bool,
    failures_unlogged: u64,
    error_log: Throttle,
    overflow_log: Throttle,
}

impl Writer {
    pub fn stats(&self) -> Arc<UsageStats> {
        Arc::clone(&self.stats)
    }

    /// Batching loop: waits for records, writes each full batch (`batch_size`) at once and whatever has arrived
    /// every flush interval, one transaction per batch per file. Returns when every [`UsageQueue`] has been
    /// dropped and everything received has been written (or, if the store keeps failing, given up on).
    ///
    /// `shutdown` turning true flushes right away; the loop then keeps running, because requests still finish
    /// during the server's grace period, until the channel closes.
    pub async fn run(&mut self, mut shutdown: watch::Receiver<bool>) {
        // A zero period would make tokio panic; the config never gives one, a hand-made setting might.
        let period = self.settings.flush_interval.max(Duration::from_millis(1));
        let mut watching = !*shutdown.borrow();
        let mut ticks = if watching {
            tokio::time::interval_at(tokio::time::Instant::now() + period, period)
        } else {
            // Started after the shutdown began: see the comment at the shutdown branch below.
            tokio::time::interval(period.min(SHUTDOWN_POLL))
        };
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let timed = tokio::select! {
                _ = ticks.tick() => true,
                _ = self.wake.notified() => false,
                changed = shutdown.changed(), if watching => match changed {
                    Ok(()) if *shutdown.borrow_and_update() => {
                        watching = false;
                        // The end is near: write what the last requests leave promptly, and notice
                        // soon when the queues are gone.
                        ticks = tokio::time::interval(period.min(SHUTDOWN_POLL));
                        true
                    }
                    Ok(()) => false,
                    // The sender is gone: no signal can come any more.
                    Err(_) => {
                        watching = false;
                        false
                    }
                },
            };
            let open = self.take_queued();
            // A failing store is retried at the flush interval, not at every full batch.
            if timed || (!self.failing && self.pending.len() >= self.settings.batch_size) {
                self.flush();
            }
            if !open {
                break;
            }
        }
        for attempt in 1..=FINAL_ATTEMPTS {
            if self.final_attempt(attempt) {
                return;
            }
            tokio::time::sleep(FINAL_RETRY_DELAY).await;
        }
    }

    /// Synchronous final drain, for after the runtimes have stopped: takes everything still queued, writes it
    /// with the pending records (retrying a failing write a few times), and gives up on what still fails.
    pub fn drain_now(&mut self) {
        self.take_queued();
        for attempt in 1..=FINAL_ATTEMPTS {
            if self.final_attempt(attempt) {
                return;
            }
            std::thread::sleep(FINAL_RETRY_DELAY);
        }
    }

    /// Writes what is pending; true when that is done, or this was the last attempt and the rest is given up on.
    fn final_attempt(&mut self, attempt: u32) -> bool {
        self.flush();
        if self.pending.is_empty() {
            return true;
        }
        if attempt < FINAL_ATTEMPTS {
            return false;
        }
        let dropped = self.stats.drop_records(self.pending.len());
        log::error!(
            "gave up on {} usage record(s) that could not be written ({dropped} dropped in all)",
            self.pending.len()
        );
        self.pending.clear();
        true
    }

    /// Moves everything queued into `pending`; false once every queue is gone and nothing is left.
    fn take_queued(&mut self) -> bool {
        // Sized from the queue's count, so that a full batch is not received into a vector grown (and copied)
        // again and again; the count is approximate, which only matters to the first allocation's size.
        let queued = usize::try_from(self.stats.queued.load(Relaxed)).unwrap_or(usize::MAX);
        let mut received = Vec::with_capacity(queued.min(self.settings.queue_capacity));
        let open = loop {
            match self.receiver.try_recv() {
                // Rendered here, on the writer's thread, not on the request's.
                Ok(record) => received.push(record.render()),
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        self.accept(&mut received);
        open
    }

    /// Moves `received` into `pending`, dropping (and counting) what exceeds `queue_capacity`: while writes
    /// fail, memory stays bounded by the queue plus this much.
    fn accept(&mut self, received: &mut Vec<UsageRecord>) {
        self.stats.queued.fetch_sub(count(received.len()), Relaxed);
        let room = self
            .settings
            .queue_capacity
            .saturating_sub(self.pending.len());
        if received.len() > room {
            let dropped = self.stats.drop_records(received.len() - room);
            received.truncate(room);
            if self.overflow_log.ready() {
                log::warn!(
                    "{} usage records are waiting for the store: {dropped} record(s) dropped so far",
                    self.pending.len() + room
                );
            }
        }
        self.pending.append(received);
    }

    /// Writes every pending record, one batch per transaction; what fails stays pending for the next attempt.
    fn flush(&mut self) {
        let (written, failure) = self.write_pending();
        self.stats.written.fetch_add(count(written), Relaxed);
        match failure {
            None => {
                if self.failing {
                    log::info!("usage records are being written again");
                }
                self.failing = false;
            }
            Some(error) => self.report(&error),
        }
    }

    /// Returns how many records were written, and the failure that stopped the rest.
    fn write_pending(&mut self) -> (usize, Option<StoreError>) {
        let batch = self.settings.batch_size.max(1);
        let mut done = 0;
        let mut failure = None;
        while done < self.pending.len() {
            let end = self.pending.len().min(done + batch);
            match self.store.write(&self.pending[done..end]) {
                Ok(()) => done = end,
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        self.pending.drain(..done);
        let Some(error) = failure else {
            return (done, None);
        };
        // The store committed the failed batch's months before the failing one: a retry must skip those.
        let failed = error.month();
        let rest = self.pending.split_off(batch.min(self.pending.len()));
        let before = self.pending.len();
        self.pending.retain(|r| Month::of(&r.time) >= failed);
        let committed = before - self.pending.len();
        self.pending.extend(rest);
        (done + committed, Some(error))
    }

    fn report(&mut self, error: &StoreError) {
        self.failing = true;
        self.stats.write_errors.fetch_add(1, Relaxed);
        self.failures_unlogged += 1;
        if self.error_log.ready() {
            log::error!(
                "usage records not written ({} failed attempt(s), {} record(s) waiting, retrying every {:?}): {error}",
                self.failures_unlogged,
                self.pending.len(),
                self.settings.flush_interval
            );
            self.failures_unlogged = 0;
        }
    }
}

/// Lets something happen at most once per period (the first time always); shared between threads.
#[derive(Debug)]
struct Throttle {
    start: Instant,
    every_ms: u64,
    /// Milliseconds since `start` before which `ready` says no.
    next_ms: AtomicU64,
}

impl Throttle {
    fn new(every: Duration) -> Self {
        Throttle {
            start: Instant::now(),
            every_ms: millis(every),
            next_ms: AtomicU64::new(0),
        }
    }

    fn ready(&self) -> bool {
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

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
