//! Monthly SQLite files of usage records (`<dir>/record_YYYYMM.db`): schema, batched inserts, and how far each
//! spool segment's records are committed (`spool_progress`, in the same transactions).

use std::collections::btree_map::{BTreeMap, Entry as Slot};
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, FixedOffset};
use rusqlite::{Connection, OptionalExtension};

use super::record::UsageRecord;
use insert::Inserts;

mod insert;

/// The columns of `records` after `id`, in table order, with their types. The inserts are built from this list
/// and so is the upgrade of files written by older versions, so the three cannot drift apart.
const COLUMNS: &[(&str, &str)] = &[
    ("Time", "TEXT"),
    ("IP", "TEXT"),
    ("Model", "TEXT"),
    ("Type", "TEXT"),
    ("CompletionTokens", "INTEGER"),
    ("PromptTokens", "INTEGER"),
    ("TotalTokens", "INTEGER"),
    ("Tool", "INTEGER"),
    ("Multimodal", "INTEGER"),
    ("Headers", "TEXT"),
    ("Request", "TEXT"),
    ("Response", "TEXT"),
    ("Backend", "TEXT"),
    ("UpstreamModel", "TEXT"),
    ("Stream", "INTEGER"),
    ("Status", "INTEGER"),
    ("LatencyMs", "INTEGER"),
    ("FirstTokenMs", "INTEGER"),
    ("Attempts", "INTEGER"),
    ("CachedTokens", "INTEGER"),
    ("ReasoningTokens", "INTEGER"),
    ("Error", "TEXT"),
    ("KeyName", "TEXT"),
];

/// WAL with `synchronous=NORMAL`: a commit is an append to the log, not an fsync, which is what makes
/// tens of thousands of rows a second possible; a power cut can lose the last commits, never corrupt the file.
/// WAL also lets anyone read the file while the gateway writes it.
// busy_timeout: during a graceful upgrade two gateway processes write the same monthly file.
// page_size: 8 KiB pages, for new files only (it must come before WAL; an existing file keeps its own). A row
// is ~1 KB, and the larger page means fewer page splits and WAL frames per row: ~2% fewer instructions per
// record than 4 KiB; 16 KiB gained little more and rewrites twice the bytes for each small commit.
const PRAGMAS: &str = "PRAGMA busy_timeout=5000; PRAGMA page_size=8192; PRAGMA journal_mode=WAL; \
                       PRAGMA synchronous=NORMAL;";

const INDEXES: &str = "CREATE INDEX IF NOT EXISTS idx_records_time ON records(Time);
CREATE INDEX IF NOT EXISTS idx_records_model ON records(Model);";

/// For each spool segment (`usage::spool`), the end offset of its last frame committed to this file: its
/// records of this month up to there are in `records`. Written in the same transaction as those rows.
const PROGRESS: &str = "CREATE TABLE IF NOT EXISTS spool_progress \
                        (Segment TEXT PRIMARY KEY, Offset INTEGER NOT NULL) WITHOUT ROWID;";

/// A row to insert, and where the spool holds it.
pub trait Entry {
    fn record(&self) -> &UsageRecord;
    /// The spool segment and the end offset of the record's frame, when it was spooled.
    fn spooled(&self) -> Option<(&str, u64)> {
        None
    }
}

impl Entry for UsageRecord {
    fn record(&self) -> &UsageRecord {
        self
    }
}

impl<E: Entry + ?Sized> Entry for &E {
    fn record(&self) -> &UsageRecord {
        (**self).record()
    }
    fn spooled(&self) -> Option<(&str, u64)> {
        (**self).spooled()
    }
}

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

/// The monthly files of one directory, with a connection kept open for each month recently written.
pub struct Store {
    dir: PathBuf,
    files: BTreeMap<Month, Connection>,
    inserts: Inserts,
}

impl Store {
    /// Touches nothing on disk: the directory and files are created by the first write that needs them.
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store {
            dir: dir.into(),
            files: BTreeMap::new(),
            inserts: Inserts::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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
            Slot::Vacant(closed) => closed.insert(open(&self.dir, &path, month)?),
        };
        self.inserts.write(connection, records).map_err(|source| {
            // Reopened on the next attempt, in case the file was replaced or the handle went bad.
            self.files.remove(&month);
            StoreError::Write {
                path,
                month,
                source,
            }
        })
    }

    /// The end offset of the last frame of spool segment `segment` committed to the file of `month` (0: none).
    pub fn progress(&mut self, month: Month, segment: &str) -> Result<u64, StoreError> {
        let path = self.path(month);
        let connection = match self.files.entry(month) {
            Slot::Occupied(open) => open.into_mut(),
            Slot::Vacant(closed) => closed.insert(open(&self.dir, &path, month)?),
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

    /// Forgets the progress of deleted spool segments in the open files (a row left behind by a crash in
    /// between is harmless: segment names are never reused).
    pub fn forget(&mut self, segments: &[String]) {
        for (month, connection) in &self.files {
            for segment in segments {
                let sql = "DELETE FROM spool_progress WHERE Segment = ?1";
                if let Err(e) = connection.execute(sql, [segment]) {
                    log::debug!("spool progress of {segment} in {month}: {e}");
                }
            }
        }
    }

    /// Keeps the newest month and the one before it open (records near midnight on the 1st still arrive for
    /// the old month); older files are closed so a long-running process does not hold every month open.
    fn close_old(&mut self) {
        if let Some(newest) = self.files.keys().next_back().copied() {
            self.files = self.files.split_off(&newest.previous());
        }
    }
}

fn open(dir: &Path, path: &Path, month: Month) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        dir: dir.to_path_buf(),
        month,
        source,
    })?;
    let opened = Connection::open(path).and_then(|connection| {
        create_schema(&connection)?;
        Ok(connection)
    });
    opened.map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        month,
        source,
    })
}

/// Creates the table if needed, and adds the columns that files written by older versions lack.
fn create_schema(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute_batch(PRAGMAS)?;
    let columns: Vec<String> = COLUMNS.iter().map(|(n, t)| format!("{n} {t}")).collect();
    connection.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS records (id INTEGER PRIMARY KEY AUTOINCREMENT, {});",
        columns.join(", ")
    ))?;
    let mut existing = Vec::new();
    connection.pragma(None, "table_info", "records", |row| {
        existing.push(row.get::<_, String>("name")?.to_ascii_lowercase());
        Ok(())
    })?;
    for (name, kind) in COLUMNS {
        if !existing.contains(&name.to_ascii_lowercase()) {
            connection.execute_batch(&format!("ALTER TABLE records ADD COLUMN {name} {kind};"))?;
        }
    }
    connection.execute_batch(INDEXES)?;
    connection.execute_batch(PROGRESS)
}

#[cfg(test)]
pub(super) mod tests;
