//! The shipping loop on the shipper's thread: look at the monthly files (what waits), ship each one's new rows
//! in batches, keep its progress; on failure back off (capped), log once per outage; at the end, one last pass
//! within a deadline.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batch::Batch;
use super::postgres::{PostgresError, Session, Target};
use super::progress::{month_files, MonthFile};
use super::{Control, ShipStats};
use crate::escape;
use crate::usage::Month;

/// How often the files are looked at for new rows when nothing else wakes the shipper.
pub const SCAN_EVERY: Duration = Duration::from_secs(1);
/// Files other than the two newest are read again only when they changed on disk, or this often.
const FULL_LOOK_EVERY: Duration = Duration::from_secs(60);
/// A batch: at most this many rows...
pub const BATCH_ROWS: usize = 2000;
/// ...and about this many bytes of text (bodies can be up to `max_body_bytes` each).
pub const BATCH_BYTES: usize = 16 << 20;
/// The first retry after a failure, doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The wait before attempt `failures + 1`.
pub fn backoff(failures: u32) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(MAX_BACKOFF)
}

/// Failures since the last success.
struct Outage {
    since: Instant,
    failures: u32,
}

/// What the shipper's thread owns.
pub(super) struct Shipping {
    pub target: Arc<Target>,
    pub dir: PathBuf,
    pub node: Arc<str>,
    pub stats: Arc<ShipStats>,
    pub control: Arc<Control>,
    files: BTreeMap<(Month, PathBuf), MonthFile>,
    session: Option<Session>,
    last_full_look: Option<Instant>,
    outage: Option<Outage>,
    /// Files whose last read failed (logged once until it works again).
    broken: HashSet<PathBuf>,
    /// In the last pass: ships until the deadline, not until asked to stop.
    last_pass: bool,
}

impl Shipping {
    pub fn new(
        target: Arc<Target>,
        dir: PathBuf,
        node: Arc<str>,
        stats: Arc<ShipStats>,
        control: Arc<Control>,
    ) -> Shipping {
        Shipping {
            target,
            dir,
            node,
            stats,
            control,
            files: BTreeMap::new(),
            session: None,
            last_full_look: None,
            outage: None,
            broken: HashSet::new(),
            last_pass: false,
        }
    }

    /// Ships until asked to stop, then makes one last pass within the stop's deadline.
    pub async fn run(mut self) {
        log::info!(
            "usage shipping: records of {} go to {}",
            self.dir.display(),
            self.target.shown()
        );
        while !self.control.stopping() {
            let wait = match self.pass().await {
                Ok(()) => {
                    self.recovered();
                    SCAN_EVERY
                }
                Err(e) => self.failed(&e),
            };
            if !self.control.stopping() {
                // A wake-up (or stop) before the wait begins is kept by the Notify, not lost.
                let _ = tokio::time::timeout(wait, self.control.wake.notified()).await;
            }
        }
        self.last_pass = true;
        let deadline = tokio::time::Instant::from_std(self.control.deadline());
        let outcome = tokio::time::timeout_at(deadline, self.pass()).await;
        let waiting = self.stats.pending.load(Relaxed);
        match outcome {
            Ok(Ok(())) if waiting == 0 => log::info!("usage shipping: every record shipped"),
            Ok(Ok(())) => log::warn!("usage shipping stopped: {waiting} record(s) wait for the next start"),
            Ok(Err(e)) => log::warn!(
                "usage shipping stopped: {e}; {waiting} record(s) wait in the monthly files for the next start"
            ),
            Err(_) => log::warn!(
                "usage shipping stopped at its deadline; the records not shipped wait in the monthly files for \
                 the next start"
            ),
        }
    }

    /// Looks at the files, then ships what waits in each, oldest file first.
    pub async fn pass(&mut self) -> Result<(), PostgresError> {
        self.look();
        let keys: Vec<(Month, PathBuf)> = self
            .files
            .iter()
            .filter(|(_, file)| file.waiting() > 0)
            .map(|(key, _)| key.clone())
            .collect();
        for key in keys {
            self.ship_file(&key).await?;
            if self.control.stopping() && !self.last_pass {
                break;
            }
        }
        // Only the files still written to stay open.
        let newest = self.files.len().saturating_sub(2);
        for file in self.files.values_mut().take(newest) {
            file.close();
        }
        Ok(())
    }

    /// Finds the files and reads the newest id of those that may have new rows; publishes what waits.
    fn look(&mut self) {
        let listed = match month_files(&self.dir) {
            Ok(listed) => listed,
            Err(e) => {
                if self.broken.insert(self.dir.clone()) {
                    log::warn!("usage shipping: cannot list {}: {e}", self.dir.display());
                }
                return;
            }
        };
        self.broken.remove(&self.dir);
        self.files.retain(|key, _| listed.contains(key));
        for (month, path) in listed {
            let file = MonthFile::new(path.clone(), month);
            self.files.entry((month, path)).or_insert(file);
        }
        let full = self
            .last_full_look
            .is_none_or(|at| at.elapsed() >= FULL_LOOK_EVERY);
        if full {
            self.last_full_look = Some(Instant::now());
        }
        let active = self.files.len().saturating_sub(2);
        for (i, file) in self.files.values_mut().enumerate() {
            let changed = file.changed();
            if !(changed || full || i >= active || file.waiting() > 0) {
                continue;
            }
            match file.refresh(self.target.key()) {
                Ok(()) => {
                    self.broken.remove(&file.path);
                }
                Err(e) => {
                    file.close();
                    if self.broken.insert(file.path.clone()) {
                        log::warn!("usage shipping: cannot read {e}");
                    }
                }
            }
        }
        self.publish_pending();
    }

    fn publish_pending(&self) {
        let waiting = self.files.values().map(MonthFile::waiting).sum();
        self.stats.pending.store(waiting, Relaxed);
    }

    /// Ships the rows of one file in batches until none waits.
    async fn ship_file(&mut self, key: &(Month, PathBuf)) -> Result<(), PostgresError> {
        let target = Arc::clone(&self.target);
        loop {
            let Some(file) = self.files.get_mut(key) else {
                return Ok(());
            };
            if file.waiting() == 0 {
                return Ok(());
            }
            let mut batch = Batch::new();
            let read = file.read(
                target.key(),
                &self.node,
                &mut batch,
                BATCH_ROWS,
                BATCH_BYTES,
            );
            let read = match read {
                Ok(read) => read,
                Err(e) => {
                    file.close();
                    if self.broken.insert(file.path.clone()) {
                        log::warn!("usage shipping: cannot read {e}");
                    }
                    return Ok(());
                }
            };
            let path = file.path.clone();
            for skipped in &read.skipped {
                log::error!("usage shipping: {}: {skipped}; not shipped", path.display());
            }
            let last_id = read.last_id.unwrap_or_else(|| file.newest());
            if !batch.is_empty() {
                self.insert(&batch, &path).await?;
            }
            if let Some(file) = self.files.get_mut(key) {
                if let Err(e) = file.save(target.key(), last_id) {
                    log::warn!(
                        "usage shipping: cannot keep the progress in {e} (rows up to {last_id} would be \
                         sent again after a restart, and skipped)"
                    );
                }
            }
            self.stats.shipped.fetch_add(batch.len() as u64, Relaxed);
            self.publish_pending();
            if self.control.stopping() && !self.last_pass {
                return Ok(());
            }
        }
    }

    /// Inserts `batch`; when PostgreSQL refuses its data, row by row, passing over the rows it refuses.
    async fn insert(&mut self, batch: &Batch, path: &std::path::Path) -> Result<(), PostgresError> {
        let target = Arc::clone(&self.target);
        let session = self.session().await?;
        let refused = match session.insert(&target, batch).await {
            Ok(_) => return Ok(()),
            Err(e) if e.refuses_data() => e,
            Err(e) => return Err(self.lost(e)),
        };
        // Perhaps a partition was dropped behind our back: check them again, once.
        session.forget_partitions();
        log::debug!("usage shipping: batch refused ({refused}); retrying row by row");
        for i in 0..batch.len() {
            let row = batch.row(i);
            match session.insert(&target, &row).await {
                Ok(_) => {}
                Err(e) if e.refuses_data() => log::error!(
                    "usage shipping: {} row {}: {}; not shipped",
                    path.display(),
                    row.ids().first().copied().unwrap_or_default(),
                    escape::text(&e.to_string())
                ),
                Err(e) => return Err(self.lost(e)),
            }
        }
        Ok(())
    }

    /// The session, opened (with the table and partitions made) if there is none or it broke.
    async fn session(&mut self) -> Result<&mut Session, PostgresError> {
        if self.session.as_ref().is_some_and(Session::is_closed) {
            self.session = None;
        }
        let session = match self.session.take() {
            Some(session) => session,
            None => Session::open(&self.target, chrono::Utc::now()).await?,
        };
        Ok(self.session.insert(session))
    }

    /// A failed statement: the session is dropped (the next attempt connects again).
    fn lost(&mut self, e: PostgresError) -> PostgresError {
        self.session = None;
        e
    }

    /// Logs the first failure of an outage (a WARN), not the retries; returns the wait before the next attempt.
    fn failed(&mut self, e: &PostgresError) -> Duration {
        self.session = None;
        let outage = self.outage.get_or_insert_with(|| {
            log::warn!(
                "usage shipping: {}; retrying with backoff (at most {MAX_BACKOFF:?}), the records wait in the \
                 monthly files",
                escape::text(&e.to_string())
            );
            Outage {
                since: Instant::now(),
                failures: 0,
            }
        });
        outage.failures += 1;
        log::debug!("usage shipping: failure {}: {e}", outage.failures);
        backoff(outage.failures)
    }

    /// After a successful pass: the end of an outage is logged (INFO).
    fn recovered(&mut self) {
        if let Some(outage) = self.outage.take() {
            log::info!(
                "usage shipping to {} works again after {:.1} s and {} failed attempt(s)",
                self.target.shown(),
                outage.since.elapsed().as_secs_f64(),
                outage.failures
            );
        }
    }
}
