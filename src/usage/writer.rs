//! The bounded queue requests hand their usage records to, and the background writer that batches them into the
//! store. The queue is bounded in records and in bytes; every record it accepts is also in the spool until it is
//! committed, and the writer imports what dead processes left in the spool.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};
use tokio::sync::watch;
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;

use super::record::{CapturedRecord, UsageRecord};
use super::spool::frame::{Damaged, Next};
use super::spool::{Orphan, Spool, Spooled};
use super::sqlite::{Entry, Month, Store, StoreError};
use super::throttle::Throttle;
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
/// Besides at start, the spool is searched this often for what a process that died meanwhile left (the old
/// process of a graceful upgrade).
const ORPHAN_SCAN_EVERY: Duration = Duration::from_secs(60);
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
    /// Records committed to a file.
    pub written: AtomicU64,
    /// Records lost: queue full (in records or bytes), writer gone, or given up on at shutdown.
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

    /// `n` records of `bytes` in all are waiting no more.
    fn release(&self, n: usize, bytes: u64) {
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
    wake: Arc<Notify>,
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
    record: CapturedRecord,
    size: u64,
    spooled: Option<Spooled>,
}

impl Queued {
    /// The record rendered into its row, on the writer's thread.
    pub fn render(self) -> Pending {
        Pending {
            record: self.record.render(),
            size: self.size,
            spooled: self.spooled,
        }
    }
}

/// A row at the writer, waiting to be committed.
#[derive(Debug)]
pub struct Pending {
    record: UsageRecord,
    size: u64,
    /// Holds its segment: the spool deletes a segment once none of its records waits.
    spooled: Option<Spooled>,
}

impl Entry for Pending {
    fn record(&self) -> &UsageRecord {
        &self.record
    }
    fn spooled(&self) -> Option<(&str, u64)> {
        self.spooled.as_ref().map(|s| (s.segment.name(), s.end))
    }
}

impl UsageQueue {
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

/// A queue and the writer that drains it, sized by `settings`. Nothing touches the disk until a record
/// arrives, or the writer starts (it then looks for what dead processes left in the spool).
pub fn channel(settings: &UsageSettings) -> (UsageQueue, Writer) {
    let (sender, receiver) = mpsc::channel(settings.queue_capacity.clamp(1, MAX_QUEUE));
    let stats = Arc::new(UsageStats::default());
    let wake = Arc::new(Notify::new());
    let spool = Arc::new(Spool::new(&settings.dir));
    let queue = UsageQueue {
        sender,
        stats: Arc::clone(&stats),
        warnings: Arc::new(Throttle::new(DROP_WARNING_EVERY)),
        wake: Arc::clone(&wake),
        batch: count(settings.batch_size.max(1)),
        max_records: count(settings.queue_capacity),
        max_bytes: count(settings.queue_max_bytes),
        max_headers: settings.max_body_bytes,
        spool: Arc::clone(&spool),
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
        spool,
        imports: VecDeque::new(),
        import_progress: HashMap::new(),
        imported: 0,
        last_scan: None,
        gave_up: false,
    };
    (queue, writer)
}

/// The receiving side: owns the store and the records received but not yet written.
pub struct Writer {
    receiver: mpsc::Receiver<Queued>,
    wake: Arc<Notify>,
    store: Store,
    /// Received (or imported), not yet written.
    pending: Vec<Pending>,
    settings: UsageSettings,
    stats: Arc<UsageStats>,
    /// The last write failed: the next attempt waits for the flush interval instead of a full batch.
    failing: bool,
    failures_unlogged: u64,
    error_log: Throttle,
    spool: Arc<Spool>,
    /// Segments of dead processes being imported, in order.
    imports: VecDeque<Orphan>,
    /// (segment, month) -> how far the store has that segment's records, for the imports.
    import_progress: HashMap<(String, Month), u64>,
    imported: u64,
    last_scan: Option<Instant>,
    /// Records were given up on: their spool files stay for the next start.
    gave_up: bool,
}

impl Writer {
    pub fn stats(&self) -> Arc<UsageStats> {
        Arc::clone(&self.stats)
    }

    /// Batching loop: imports what dead processes left in the spool, waits for records, writes each full batch
    /// (`batch_size`) at once and whatever has arrived every flush interval, one transaction per batch per
    /// file. Returns when every [`UsageQueue`] has been dropped and everything received has been written (or,
    /// if the store keeps failing, given up on).
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
        if watching {
            self.scan_spool();
        }
        loop {
            // An import goes on batch after batch while the store takes them.
            let importing = !self.imports.is_empty()
                && !self.failing
                && self.pending.len() < self.settings.batch_size;
            let timed = tokio::select! {
                _ = ticks.tick() => true,
                _ = self.wake.notified() => false,
                _ = std::future::ready(()), if importing => true,
                changed = shutdown.changed(), if watching => match changed {
                    Ok(()) if *shutdown.borrow_and_update() => {
                        watching = false;
                        self.stop_imports();
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
            if watching {
                self.take_imported();
            }
            // A failing store is retried at the flush interval, not at every full batch.
            if timed || (!self.failing && self.pending.len() >= self.settings.batch_size) {
                self.flush();
            }
            if watching
                && self.imports.is_empty()
                && self
                    .last_scan
                    .is_none_or(|t| t.elapsed() >= ORPHAN_SCAN_EVERY)
            {
                self.scan_spool();
            }
            if !open {
                break;
            }
        }
        self.stop_imports();
        for attempt in 1..=FINAL_ATTEMPTS {
            if self.final_attempt(attempt) {
                break;
            }
            tokio::time::sleep(FINAL_RETRY_DELAY).await;
        }
        self.close();
    }

    /// Synchronous final drain, for after the runtimes have stopped: takes everything still queued, writes it
    /// with the pending records (retrying a failing write a few times), and gives up on what still fails.
    /// A record sent after this is still spooled (and imported by the next start), not written.
    pub fn drain_now(&mut self) {
        self.take_queued();
        self.stop_imports();
        for attempt in 1..=FINAL_ATTEMPTS {
            if self.final_attempt(attempt) {
                break;
            }
            std::thread::sleep(FINAL_RETRY_DELAY);
        }
        self.close();
    }

    /// After the final attempts: once everything was written, this process's spool files go (a clean
    /// shutdown leaves none behind).
    fn close(&mut self) {
        if !self.gave_up && self.pending.is_empty() {
            self.spool.finish();
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
        let spooled = self.pending.iter().filter(|p| p.spooled.is_some()).count();
        let bytes = self.pending.iter().map(|p| p.size).sum();
        self.stats.release(self.pending.len(), bytes);
        let dropped = self.stats.drop_records(self.pending.len() - spooled);
        log::error!(
            "gave up on {} usage record(s) that could not be written: {spooled} stay in the spool for the \
             next start ({dropped} dropped in all)",
            self.pending.len()
        );
        self.gave_up |= spooled > 0;
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

    /// Moves `received` into `pending`. The queue already bounds them: what it accepted and is not yet
    /// committed stays within `queue_capacity` and `queue_max_mb`.
    fn accept(&mut self, received: &mut Vec<Pending>) {
        self.stats.queued.fetch_sub(count(received.len()), Relaxed);
        self.pending.append(received);
    }

    /// Looks for the spool files of dead processes, to import.
    fn scan_spool(&mut self) {
        self.last_scan = Some(Instant::now());
        let found = self.spool.orphans();
        if !found.is_empty() {
            log::info!(
                "importing {} usage spool file(s) left by a process that stopped without writing them",
                found.len()
            );
            self.imports.extend(found);
        }
    }

    /// Takes records from the spool files being imported while the writer has room (up to a batch, and half
    /// the byte bound of the queue), skipping those the store already has.
    fn take_imported(&mut self) {
        let batch = self.settings.batch_size.max(1);
        let bytes = count(self.settings.queue_max_bytes) / 2;
        while self.pending.len() < batch && !self.failing {
            if !self.pending.is_empty() && self.stats.waiting_bytes.load(Relaxed) >= bytes {
                return;
            }
            let Some(orphan) = self.imports.front_mut() else {
                return;
            };
            let next = orphan.frames.read_next();
            let segment = Arc::clone(&orphan.segment);
            let offset = orphan.frames.offset();
            let (record, end) = match next {
                Ok(Next::Record(record, end)) => (record, end),
                Ok(Next::End) => {
                    self.imported_segment();
                    continue;
                }
                Ok(Next::Torn(at)) => {
                    log::warn!(
                        "usage spool {}: the record at offset {at} was cut short when its process died; skipped",
                        segment.name()
                    );
                    self.imported_segment();
                    continue;
                }
                Err(Damaged::Io(e)) => {
                    log::error!(
                        "cannot read the usage spool {} (import postponed): {e}",
                        segment.name()
                    );
                    self.stop_imports();
                    return;
                }
                Err(e) => {
                    log::error!(
                        "usage spool {} is damaged at offset {offset} ({e}); the rest of it is skipped",
                        segment.name()
                    );
                    self.imported_segment();
                    continue;
                }
            };
            let month = Month::of(&record.row.time);
            let key = (segment.name().to_owned(), month);
            let committed = match self.import_progress.get(&key) {
                Some(&committed) => committed,
                None => match self.store.progress(month, segment.name()) {
                    Ok(committed) => *self.import_progress.entry(key).or_insert(committed),
                    Err(e) => {
                        log::error!("usage spool import postponed: {e}");
                        self.stop_imports();
                        return;
                    }
                },
            };
            if end <= committed {
                continue;
            }
            let size = count(record.size());
            self.stats.waiting.fetch_add(1, Relaxed);
            self.stats.waiting_bytes.fetch_add(size, Relaxed);
            self.imported += 1;
            self.pending.push(Pending {
                record: record.render(),
                size,
                spooled: Some(Spooled { segment, end }),
            });
        }
    }

    /// The first import has been read to its end.
    fn imported_segment(&mut self) {
        if let Some(done) = self.imports.pop_front() {
            self.spool.imported(&done.segment);
        }
        if self.imports.is_empty() {
            self.import_progress.clear();
            log::info!(
                "usage spool imported: {} record(s) that were not written before",
                self.imported
            );
            self.imported = 0;
        }
    }

    /// Stops importing; what was not read stays in the spool for a later import.
    fn stop_imports(&mut self) {
        if !self.imports.is_empty() {
            self.spool.abandon(self.imports.drain(..).collect());
            self.import_progress.clear();
        }
    }

    /// Writes every pending record, one batch per transaction; what fails stays pending for the next attempt.
    /// Then deletes the spool files whose records are all committed.
    fn flush(&mut self) {
        let (written, failure) = self.write_pending();
        self.stats.written.fetch_add(count(written), Relaxed);
        if written > 0 {
            let deleted = self.spool.collect();
            if !deleted.is_empty() {
                self.store.forget(&deleted);
            }
        }
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
        let bytes = self.pending[..done].iter().map(|p| p.size).sum();
        self.stats.release(done, bytes);
        self.pending.drain(..done);
        let Some(error) = failure else {
            return (done, None);
        };
        // The store committed the failed batch's months before the failing one: a retry must skip those.
        let failed = error.month();
        let rest = self.pending.split_off(batch.min(self.pending.len()));
        let (mut committed, mut bytes) = (0, 0);
        self.pending.retain(|p| {
            let keep = Month::of(&p.record.time) >= failed;
            if !keep {
                (committed, bytes) = (committed + 1, bytes + p.size);
            }
            keep
        });
        self.stats.release(committed, bytes);
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

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
