//! Shipping every usage record to a shared PostgreSQL table (`usage.postgres_url`): the monthly SQLite files
//! stay each node's durable outbox, and a [`Shipper`] on a thread of its own (a current-thread runtime) copies
//! their new rows there in batches, idempotently, remembering in each file how far it got. Nothing on the
//! request path ever waits for it.
//!
//! `schema` is the shared table (DDL, INSERT, partitions); `batch` turns file rows into its types; `progress`
//! reads the files and keeps their progress; `postgres` connects (`tls`) and inserts; `run` is the loop;
//! `spend` reads each key's spend back from the table.
//!
//! The URL is read once, at start: a reload that changes `usage.postgres_url` applies at the next start.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::UsageSettings;

mod batch;
mod postgres;
mod progress;
mod run;
pub mod schema;
mod spend;
mod tls;

pub use batch::{legacy_request_id, Batch, Origin, RowError};
pub use postgres::{describe, split_ssl, PostgresError, Session, Target};
pub use progress::{month_files, month_of_name, FileError, MonthFile};
pub use run::{backoff, BATCH_BYTES, BATCH_ROWS, MAX_BACKOFF, SCAN_EVERY};
pub use spend::{spend_by_key, spend_by_key_blocking, spend_on};

/// What the shipper reports (read by the metrics at each scrape).
#[derive(Debug, Default)]
pub struct ShipStats {
    /// Rows in the monthly files after the last one shipped (ids after it: exact while no row is deleted).
    pub pending: AtomicU64,
    /// Rows shipped (committed to PostgreSQL) since start; a row sent again after a crash counts again.
    pub shipped: AtomicU64,
}

/// Shared between the [`Shipper`] handle and its thread.
#[derive(Debug, Default)]
pub(crate) struct Control {
    stop: AtomicBool,
    /// The end of the last pass, once stopping.
    deadline: Mutex<Option<Instant>>,
    wake: Notify,
}

impl Control {
    fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    fn deadline(&self) -> Instant {
        let deadline = *self.deadline.lock().unwrap_or_else(PoisonError::into_inner);
        deadline.unwrap_or_else(Instant::now)
    }
}

/// The running thread, and how it says it has finished.
struct Running {
    thread: JoinHandle<()>,
    done: std::sync::mpsc::Receiver<()>,
}

/// Ships one usage directory's records to one PostgreSQL database. Create it before the server forks
/// ([`Shipper::new`] touches neither the network nor the files), [`Shipper::start`] it in the process that
/// serves, [`Shipper::stop`] it after the usage writer's last batch.
pub struct Shipper {
    target: Arc<Target>,
    dir: PathBuf,
    node: Arc<str>,
    stats: Arc<ShipStats>,
    control: Arc<Control>,
    running: Mutex<Option<Running>>,
}

impl Shipper {
    /// A shipper for `settings` (its `dir` and `postgres_url`) as node `node` (`cluster.node`, the `Node` of
    /// rows written before that column existed); `None` when recording is off or no URL is set. Fails when the
    /// URL cannot be used (unknown `sslmode`, unreadable `sslrootcert`...).
    pub fn new(settings: &UsageSettings, node: Arc<str>) -> Result<Option<Shipper>, PostgresError> {
        let Some(url) = settings.postgres_url.as_ref().filter(|_| settings.enabled) else {
            return Ok(None);
        };
        Ok(Some(Shipper {
            target: Arc::new(Target::parse(url.expose())?),
            dir: settings.dir.clone(),
            node,
            stats: Arc::new(ShipStats::default()),
            control: Arc::new(Control::default()),
            running: Mutex::new(None),
        }))
    }

    pub fn stats(&self) -> Arc<ShipStats> {
        Arc::clone(&self.stats)
    }

    /// The database, as log lines show it (no password).
    pub fn target(&self) -> &str {
        self.target.shown()
    }

    /// Starts the shipping thread (once; later calls do nothing).
    pub fn start(&self) -> std::io::Result<()> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if running.is_some() {
            return Ok(());
        }
        let shipping = run::Shipping::new(
            Arc::clone(&self.target),
            self.dir.clone(),
            Arc::clone(&self.node),
            Arc::clone(&self.stats),
            Arc::clone(&self.control),
        );
        let (finished, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("usage-ship".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(shipping.run()),
                    Err(e) => log::error!("usage shipping: cannot start its runtime: {e}"),
                }
                let _ = finished.send(());
            })?;
        *running = Some(Running { thread, done });
        Ok(())
    }

    /// Looks for new rows now rather than at the next scan.
    pub fn wake(&self) {
        self.control.wake.notify_one();
    }

    /// Makes one last pass, ending within `deadline`, and stops the thread. Returns whether it stopped in time
    /// (if not, it is left to end with the process; what it did not ship waits for the next start).
    pub fn stop(&self, deadline: Duration) -> bool {
        let Some(running) = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return true;
        };
        *self
            .control
            .deadline
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + deadline);
        self.control.stop.store(true, Relaxed);
        self.control.wake.notify_one();
        // A margin past the deadline for the thread's own end (dropping its runtime).
        match running
            .done
            .recv_timeout(deadline + Duration::from_millis(500))
        {
            Ok(()) => {
                let _ = running.thread.join();
                true
            }
            Err(_) => {
                log::warn!("usage shipping: did not stop within {deadline:?}");
                false
            }
        }
    }
}

impl Drop for Shipper {
    /// Tells a thread still running to stop (without waiting for it).
    fn drop(&mut self) {
        self.control.stop.store(true, Relaxed);
        self.control.wake.notify_one();
    }
}

#[cfg(test)]
mod tests;
