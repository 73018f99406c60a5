//! The bounded queue requests hand their usage records to: it appends each record to the spool and queues it
//! for the writer, without waiting; it is bounded in records and in bytes, and counts what it drops.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::Notify;

use super::record::CapturedRecord;
use super::spool::{Spool, Spooled};
use super::throttle::Throttle;
use crate::config::UsageSettings;

/// Drops are warned about at most this often, with the running count.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(1);
/// tokio's channel panics above `usize::MAX >> 3` records; no memory holds this many anyway.
const MAX_QUEUE: usize = 1 << 30;

/// Counters shared by the queue and the writer, for logs and metrics.
#[derive(Debug, Default)]
pub struct UsageStats {
    /// Records in the channel, not yet taken by the writer (approximate).
    pub queued: AtomicU64,
    /// Records accepted and not yet committed: in the channel or at the writer, a batch being retried and
    /// records imported from the spool included. The queue depth metric; bounded by `queue_capacity`.
    pub waiting: AtomicU64,
    /// Roughly the bytes those records hold; bounded by `queue_max_mb`.
    pub waiting_bytes: AtomicU64,
    /// Records committed to the sink.
    pub written: AtomicU64,
    /// Records lost: queue full (in records or bytes), writer gone, or given up on at shutdown.
    pub dropped: AtomicU64,
    /// Failed write attempts (each may concern many records).
    pub write_errors: AtomicU64,
}

impl UsageStats {
    /// Adds `n` to `dropped` and returns the new total.
    pub(super) fn drop_records(&self, n: usize) -> u64 {
        let n = count(n);
        self.dropped.fetch_add(n, Relaxed) + n
    }

    /// `n` records of `bytes` in all are waiting no more.
    pub(super) fn release(&self, n: usize, bytes: u64) {
        self.waiting.fetch_sub(count(n), Relaxed);
        self.waiting_bytes.fetch_sub(bytes, Relaxed);
    }
}

/// The sending side, held by every request. Cloning it is cheap; sending never waits.
#[derive(Clone, Debug)]
pub struct UsageQueue {
    sender: mpsc::Sender<Queued>,
    stats: Arc<UsageStats>,
    warnings: Arc<Throttle>,
    /// Wakes the writer early once a full batch is waiting; otherwise it wakes once per flush interval,
    /// not once per record (a wake-up per request would cost a context switch per request).
    pub(super) wake: Arc<Notify>,
    batch: u64,
    /// `queue_capacity` and `queue_max_mb` in bytes.
    max_records: u64,
    max_bytes: u64,
    /// Recorded headers are cut here (`max_body_bytes`, like the bodies).
    max_headers: usize,
    spool: Arc<Spool>,
}

/// A record in the channel: the bytes counted for it, and where the spool holds it.
#[derive(Debug)]
pub struct Queued {
    pub(super) record: CapturedRecord,
    pub(super) size: u64,
    pub(super) spooled: Option<Spooled>,
}

impl UsageQueue {
    /// A queue sized by `settings` that spools into `spool`, and the receiving end of its channel.
    pub(super) fn new(
        settings: &UsageSettings,
        spool: Arc<Spool>,
    ) -> (UsageQueue, mpsc::Receiver<Queued>) {
        let (sender, receiver) = mpsc::channel(settings.queue_capacity.clamp(1, MAX_QUEUE));
        let queue = UsageQueue {
            sender,
            stats: Arc::default(),
            warnings: Arc::new(Throttle::new(DROP_WARNING_EVERY)),
            wake: Arc::default(),
            batch: count(settings.batch_size.max(1)),
            max_records: count(settings.queue_capacity),
            max_bytes: count(settings.queue_max_bytes),
            max_headers: settings.max_body_bytes,
            spool,
        };
        (queue, receiver)
    }

    /// Queues `record` for writing, after appending it to the spool; drops and counts it when the queue is
    /// full (`queue_capacity` records or `queue_max_mb` waiting) or the writer is gone.
    pub fn send(&self, record: impl Into<CapturedRecord>) {
        let mut record = record.into();
        record.limit_headers(self.max_headers);
        // The spool keeps every text; a stream's body is made here, then, not by the writer.
        record.settle();
        let size = count(record.size());
        if !self.admit(size) {
            self.warn_dropped(None);
            return;
        }
        if self.sender.is_closed() {
            self.stats.release(1, size);
            self.warn_dropped(Some(TrySendError::Closed(())));
            return;
        }
        // Counted before sending, so the writer's decrement can never come first and wrap around.
        let depth = self.stats.queued.fetch_add(1, Relaxed) + 1;
        // Appended and queued under the shard's lock: the writer receives a segment's records in file order.
        let mut shard = self.spool.shard();
        let spooled = shard.append(&record);
        let sent = self.sender.try_send(Queued {
            record,
            size,
            spooled,
        });
        drop(shard);
        let Err(failed) = sent else {
            if depth >= self.batch {
                self.wake.notify_one();
            }
            return;
        };
        self.stats.queued.fetch_sub(1, Relaxed);
        self.stats.release(1, size);
        self.warn_dropped(Some(match failed {
            TrySendError::Full(_) => TrySendError::Full(()),
            TrySendError::Closed(_) => TrySendError::Closed(()),
        }));
    }

    /// Counts a record of `size` bytes as waiting, if the queue has room for it. A record always fits an
    /// empty queue, so a `queue_max_mb` smaller than one record still lets records through one at a time.
    fn admit(&self, size: u64) -> bool {
        let records = self.stats.waiting.fetch_add(1, Relaxed) + 1;
        let bytes = self.stats.waiting_bytes.fetch_add(size, Relaxed) + size;
        if records <= self.max_records && (bytes <= self.max_bytes || records == 1) {
            return true;
        }
        self.stats.release(1, size);
        false
    }

    /// Counts a dropped record and warns (at most once a second). `None`: the queue was full.
    fn warn_dropped(&self, failed: Option<TrySendError<()>>) {
        let dropped = self.stats.drop_records(1);
        if !self.warnings.ready() {
            return;
        }
        match failed {
            None | Some(TrySendError::Full(())) => log::warn!(
                "usage queue full ({} records, {} MB waiting; at most {} records, {} MB): {dropped} \
                 record(s) dropped so far",
                self.stats.waiting.load(Relaxed),
                self.stats.waiting_bytes.load(Relaxed) >> 20,
                self.max_records,
                self.max_bytes >> 20,
            ),
            Some(TrySendError::Closed(())) => {
                log::warn!("usage writer has stopped: {dropped} record(s) dropped so far")
            }
        }
    }

    pub fn stats(&self) -> Arc<UsageStats> {
        Arc::clone(&self.stats)
    }
}

pub(super) fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
