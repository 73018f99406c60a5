//! The first usage sink: monthly SQLite files (`<dir>/record_YYYYMM.db`), one per month of the records' own
//! time, with batched inserts and how far each spool segment's records are committed (`spool_progress`, in
//! the same transactions). The report reads the same files (`schema` defines their table once), and so does
//! the gateway at startup for what each key spent this month (`spend`).

use std::collections::btree_map::{BTreeMap, Entry as Slot};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, FixedOffset};
use rusqlite::{Connection, OptionalExtension};

use super::record::UsageRecord;
use super::sink::{BatchError, Entry, Sink};
use checkpoint::Checkpointer;
use insert::Inserts;

mod checkpoint;
mod insert;
pub mod rollup;
pub mod schema;
pub mod spend;

pub use spend::{spend_by_key, Spend, SpendError};

/// A calendar month; decides which file a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    /// 1-12.
    pub month: u32,
}

impl Month {
    /// The month of `time` in its own offset: the proxy stamps records in the server's local time.
    pub fn of(time: &DateTime<FixedOffset>) -> Month {
        Month {
            year: time.year(),
            month: time.month(),
        }
    }

    pub fn previous(self) -> Month {
        match self.month {
            1 => Month {
                year: self.year - 1,
                month: 12,
            },
            m => Month {
                year: self.year,
                month: m - 1,
            },
        }
    }

    /// `record_YYYYMM.db`.
    pub fn file_name(self) -> String {
        format!("record_{self}.db")
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}{:02}", self.year, self.month)
    }
}

/// Why a batch (or part of it) was not written. Messages name files, never record contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the usage directory {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        month: Month,
        source: std::io::Error,
    },
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        month: Month,
        source: rusqlite::Error,
    },
    #[error("cannot write to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        month: Month,
        source: rusqlite::Error,
    },
    #[error("cannot read the spool progress in {}: {source}", path.display())]
    Read {
        path: PathBuf,
        month: Month,
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// The month whose file failed. [`Store::write`] handles months in order and stops at the first failure:
    /// a batch's records of earlier months were committed, those of this month and later ones were not.
    pub fn month(&self) -> Month {
        match self {
            StoreError::CreateDir { month, .. }
            | StoreError::Open { month, .. }
            | StoreError::Write { month, .. }
            | StoreError::Read { month, .. } => *month,
        }
    }
}

/// The monthly files of one directory, with a connection kept open for each month recently written: the
/// first [`Sink`], and where records are split by month.
pub struct Store {
    dir: PathBuf,
    files: BTreeMap<Month, Connection>,
    inserts: Inserts,
    /// (segment, month) -> how far this file has that segment's records, for the imports.
    import_progress: HashMap<(String, Month), u64>,
    /// Checkpoints the open files' logs, off the writer's thread; after `files`, so dropped after them.
    checkpointer: Checkpointer,
}

impl Store {
    /// Touches nothing on disk: the directory and files are created by the first write that needs them.
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store {
            dir: dir.into(),
            files: BTreeMap::new(),
            inserts: Inserts::new(),
            import_progress: HashMap::new(),
            checkpointer: Checkpointer::default(),
        }
    }

    /// Where the records of `month` are kept.
    pub fn path(&self, month: Month) -> PathBuf {
        self.dir.join(month.file_name())
    }

    /// Writes `batch` with one transaction per monthly file, months in order, stopping at the first failure
    /// (see [`StoreError::month`] for what was committed then).
    /// With each month's rows, the transaction records how far each spool segment is committed.
    pub fn write<E: Entry>(&mut self, batch: &[E]) -> Result<(), StoreError> {
        let Some(first) = batch.first().map(|r| Month::of(&r.record().time)) else {
            return Ok(());
        };
        let result = if batch.iter().all(|r| Month::of(&r.record().time) == first) {
            self.write_month(first, batch)
        } else {
            let mut months: BTreeMap<Month, Vec<&E>> = BTreeMap::new();
            for record in batch {
                months
                    .entry(Month::of(&record.record().time))
                    .or_default()
                    .push(record);
            }
            months
                .into_iter()
                .try_for_each(|(month, records)| self.write_month(month, &records))
        };
        self.close_old();
        result
    }

    fn write_month<E: Entry>(&mut self, month: Month, records: &[E]) -> Result<(), StoreError> {
        let path = self.path(month);
        let connection = match self.files.entry(month) {
            Slot::Occupied(open) => open.into_mut(),
            Slot::Vacant(closed) => {
                closed.insert(open(&self.dir, &path, month, &mut self.checkpointer)?)
            }
        };
        match self.inserts.write(connection, records) {
            Ok(()) => {
                // In the common case nothing: the checkpoint thread keeps the log short.
                self.checkpointer.bound(connection, &path);
                Ok(())
            }
            Err(source) => {
                // Reopened on the next attempt, in case the file was replaced or the handle went bad.
                self.files.remove(&month);
                Err(StoreError::Write {
                    path,
                    month,
                    source,
                })
            }
        }
    }

    /// The end offset of the last frame of spool segment `segment` committed to the file of `month` (0: none).
    pub fn progress(&mut self, month: Month, segment: &str) -> Result<u64, StoreError> {
        let path = self.path(month);
        let connection = match self.files.entry(month) {
            Slot::Occupied(open) => open.into_mut(),
            Slot::Vacant(closed) => {
                closed.insert(open(&self.dir, &path, month, &mut self.checkpointer)?)
            }
        };
        let sql = "SELECT Offset FROM spool_progress WHERE Segment = ?1";
        let offset: Option<i64> = connection
            .query_row(sql, [segment], |row| row.get(0))
            .optional()
            .map_err(|source| StoreError::Read {
                path,
                month,
                source,
            })?;
        Ok(offset.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }

    /// Keeps the newest month and the one before it open (records near midnight on the 1st still arrive for
    /// the old month); older files are closed so a long-running process does not hold every month open.
    fn close_old(&mut self) {
        if let Some(newest) = self.files.keys().next_back().copied() {
            let kept = self.files.split_off(&newest.previous());
            for (month, connection) in std::mem::replace(&mut self.files, kept) {
                drop(connection);
                self.checkpointer.closed(&self.path(month));
            }
        }
    }
}

impl Sink for Store {
    type Error = StoreError;

    fn write_batch<E: Entry>(&mut self, batch: &[E]) -> Result<(), BatchError<StoreError>> {
        self.write(batch).map_err(|error| {
            // Months go in order, each in its own transaction, up to the failing one.
            let failed = error.month();
            let committed = batch
                .iter()
                .map(|e| Month::of(&e.record().time) < failed)
                .collect();
            BatchError { committed, error }
        })
    }

    /// Nothing: every batch is committed by its own transactions when `write_batch` returns.
    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Closes the files after a last checkpoint that empties their logs, and stops the checkpoint thread.
    fn close(&mut self) {
        self.checkpointer.stop();
        self.files.clear();
    }

    /// Progress is kept per file: a record is committed when the file of its month has its segment up to `end`.
    fn committed(
        &mut self,
        record: &UsageRecord,
        segment: &str,
        end: u64,
    ) -> Result<bool, StoreError> {
        let month = Month::of(&record.time);
        let key = (segment.to_owned(), month);
        let committed = match self.import_progress.get(&key) {
            Some(&committed) => committed,
            None => {
                let committed = self.progress(month, segment)?;
                *self.import_progress.entry(key).or_insert(committed)
            }
        };
        Ok(end <= committed)
    }

    fn end_import(&mut self) {
        self.import_progress.clear();
    }

    /// Forgets the progress of deleted spool segments in the open files (a row left behind by a crash in
    /// between is harmless: segment names are never reused).
    fn forget(&mut self, segments: &[String]) {
        for (month, connection) in &self.files {
            for segment in segments {
                let sql = "DELETE FROM spool_progress WHERE Segment = ?1";
                if let Err(e) = connection.execute(sql, [segment]) {
                    log::debug!("spool progress of {segment} in {month}: {e}");
                }
            }
        }
    }
}

/// Opens the writer's connection to the file of `month`, creating it if needed; its log is checkpointed by
/// `checkpointer` (or by SQLite on the writer's commits if that thread cannot start).
fn open(
    dir: &Path,
    path: &Path,
    month: Month,
    checkpointer: &mut Checkpointer,
) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        dir: dir.to_path_buf(),
        month,
        source,
    })?;
    let opened = Connection::open(path).and_then(|mut connection| {
        schema::create(&connection)?;
        checkpointer.watch(&mut connection, path)?;
        Ok(connection)
    });
    opened.map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        month,
        source,
    })
}

#[cfg(test)]
pub(crate) mod tests;
