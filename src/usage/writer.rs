//! The background writer: it takes the records the queue (`queue`) hands over, batches them to the sink
//! (`sink`), retries what was not committed, and imports what dead processes left in the spool (`import`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::sync::watch;
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;

use super::pace;
use super::queue::{count, Queued, UsageQueue, UsageStats};
use super::record::UsageRecord;
use super::sink::{BatchError, Entry, Sink};
use super::spool::{Orphan, Spool, Spooled};
use super::sqlite::Store;
use super::throttle::Throttle;
use crate::config::UsageSettings;

mod import;

/// Attempts at the very end (channel closed, or `drain_now`) before what is left is given up on.
const FINAL_ATTEMPTS: u32 = 3;
const FINAL_RETRY_DELAY: Duration = Duration::from_millis(100);
/// How often the writer looks at the queue once the server is shutting down.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);
/// A failing sink is retried every flush interval, but logged at most this often (and at least once).
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
/// Besides at start, the spool is searched this often for what a process that died meanwhile left (the old
/// process of a graceful upgrade).
const ORPHAN_SCAN_EVERY: Duration = Duration::from_secs(60);

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

/// A queue and the writer that drains it into the monthly SQLite files of `settings.dir`, sized by `settings`.
/// Nothing touches the disk until a record arrives, or the writer starts (it then looks for what dead
/// processes left in the spool).
pub fn channel(settings: &UsageSettings) -> (UsageQueue, Writer) {
    channel_to(settings, Store::new(settings.dir.clone()))
}

/// A queue and the writer that drains it into `sink`.
pub fn channel_to<S: Sink>(settings: &UsageSettings, sink: S) -> (UsageQueue, Writer<S>) {
    let spool = Arc::new(Spool::new(&settings.dir));
    let (queue, receiver) = UsageQueue::new(settings, Arc::clone(&spool));
    let writer = Writer {
        receiver,
        wake: Arc::clone(&queue.wake),
        sink,
        pending: Vec::new(),
        settings: settings.clone(),
        stats: queue.stats(),
        failing: false,
        failures_unlogged: 0,
        error_log: Throttle::new(ERROR_LOG_EVERY.max(settings.flush_interval)),
        spool,
        imports: VecDeque::new(),
        imported: 0,
        last_scan: None,
        gave_up: false,
    };
    (queue, writer)
}

/// The receiving side: owns the sink and the records received but not yet written. It knows nothing of
/// where the sink keeps them: the sink says which records of a failed batch are committed.
pub struct Writer<S = Store> {
    receiver: mpsc::Receiver<Queued>,
    wake: Arc<Notify>,
    sink: S,
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
    imported: u64,
    last_scan: Option<Instant>,
    /// Records were given up on: their spool files stay for the next start.
    gave_up: bool,
}

impl<S: Sink> Writer<S> {
    pub fn stats(&self) -> Arc<UsageStats> {
        Arc::clone(&self.stats)
    }

    /// Batching loop: imports what dead processes left in the spool, waits for records, writes each full batch
    /// (`batch_size`) at once and whatever has arrived every flush interval, each batch handed to the sink.
    /// Returns when every [`UsageQueue`] has been dropped and everything received has been written (or,
    /// if the sink keeps failing, given up on).
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
            // An import goes on batch after batch while the sink takes them.
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
            // A failing sink is retried at the flush interval, not at every full batch.
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

    /// After the final attempts: the sink lets go of its files; once everything was written, this process's
    /// spool files go (a clean shutdown leaves none behind).
    fn close(&mut self) {
        self.sink.close();
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
                Ok(record) => {
                    received.push(record.render());
                    pace::step();
                }
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

    /// Writes every pending record, one batch at a time; what fails stays pending for the next attempt.
    /// Then deletes the spool files whose records are all committed.
    fn flush(&mut self) {
        let (written, mut failure) = self.write_pending();
        self.stats.written.fetch_add(count(written), Relaxed);
        if written > 0 {
            let deleted = self.spool.collect();
            if !deleted.is_empty() {
                self.sink.forget(&deleted);
            }
            pace::step();
        }
        if let Err(error) = self.sink.flush() {
            failure = failure.or(Some(error));
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
    fn write_pending(&mut self) -> (usize, Option<S::Error>) {
        let batch = self.settings.batch_size.max(1);
        let mut done = 0;
        let mut failure = None;
        while done < self.pending.len() {
            let end = self.pending.len().min(done + batch);
            let written = self.sink.write_batch(&self.pending[done..end]);
            pace::step();
            match written {
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
        let Some(BatchError { committed, error }) = failure else {
            return (done, None);
        };
        // The sink may have committed part of the failed batch, now at the front: a retry must skip those.
        let mut flags = committed.into_iter().take(batch.min(self.pending.len()));
        let (mut skipped, mut bytes) = (0, 0);
        self.pending.retain(|p| {
            let committed = flags.next().unwrap_or(false);
            if committed {
                (skipped, bytes) = (skipped + 1, bytes + p.size);
            }
            !committed
        });
        self.stats.release(skipped, bytes);
        (done + skipped, Some(error))
    }

    fn report(&mut self, error: &S::Error) {
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

#[cfg(test)]
mod tests;
