//! The shipper's side of the monthly files: finding them, reading a file's rows after the last id shipped, and
//! that id itself, kept in the file (`ship_progress`, one row per PostgreSQL target) and raised after each commit
//! there, so a restart resumes where shipping stopped.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::batch::{Batch, Origin, RowError};
use super::schema::SHIPPED;
use crate::usage::sqlite::schema::{self as local, TABLE};
use crate::usage::Month;

/// How long a statement waits for the writer's lock on the file (its transactions are short).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// For each PostgreSQL target (`host:port/database`, never a password), the last `id` of `records` committed
/// there. Only the shipper writes it; created in a file the first time a row of it is shipped.
const PROGRESS: &str = "CREATE TABLE IF NOT EXISTS ship_progress \
                        (Target TEXT PRIMARY KEY, LastId INTEGER NOT NULL) WITHOUT ROWID;";
const SAVE: &str = "INSERT INTO ship_progress (Target, LastId) VALUES (?1, ?2) \
                    ON CONFLICT (Target) DO UPDATE SET LastId = max(LastId, excluded.LastId)";

/// A monthly file could not be read or its progress not written. Names the file, never row contents.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    pub source: rusqlite::Error,
}

/// The monthly files in `dir`, oldest first; none when `dir` does not exist (yet).
pub fn month_files(dir: &Path) -> std::io::Result<Vec<(Month, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(month) = name.to_str().and_then(month_of_name) {
            files.push((month, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// The month of a file named `record_YYYYMM.db`.
pub fn month_of_name(name: &str) -> Option<Month> {
    let digits = name.strip_prefix("record_")?.strip_suffix(".db")?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let month = Month {
        year: digits[..4].parse().ok()?,
        month: digits[4..].parse().ok()?,
    };
    (1..=12).contains(&month.month).then_some(month)
}

/// Sizes and modification times of a file and its WAL: while they stay the same, nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signature([(u64, Option<SystemTime>); 2]);

impl Signature {
    fn of(path: &Path) -> Signature {
        let stat =
            |p: &Path| std::fs::metadata(p).map_or((0, None), |m| (m.len(), m.modified().ok()));
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        Signature([stat(path), stat(Path::new(&wal))])
    }
}

/// What a read took from a file.
#[derive(Debug, Default)]
pub struct Read {
    /// The largest id read, rows that cannot be shipped included: where the progress goes once the batch is in.
    pub last_id: Option<i64>,
    /// Rows that cannot be shipped at all (logged and passed over).
    pub skipped: Vec<RowError>,
}

/// One monthly file as the shipper follows it, for one target.
#[derive(Debug)]
pub struct MonthFile {
    pub path: PathBuf,
    pub month: Month,
    connection: Option<Connection>,
    /// The last id shipped, once the file was opened.
    shipped: Option<i64>,
    /// The largest id seen in the file.
    newest: i64,
    signature: Option<Signature>,
    /// `ship_progress` is known to exist in the file.
    progress_table: bool,
}

impl MonthFile {
    pub fn new(path: PathBuf, month: Month) -> MonthFile {
        MonthFile {
            path,
            month,
            connection: None,
            shipped: None,
            newest: 0,
            signature: None,
            progress_table: false,
        }
    }

    /// Whether the file (or its WAL) changed since the last call; the first call says yes.
    pub fn changed(&mut self) -> bool {
        let now = Signature::of(&self.path);
        self.signature.replace(now) != Some(now)
    }

    /// Rows after the last one shipped, as last counted by [`MonthFile::refresh`] (ids count: they only grow).
    pub fn waiting(&self) -> u64 {
        let shipped = self.shipped.unwrap_or(0);
        u64::try_from(self.newest.saturating_sub(shipped)).unwrap_or(0)
    }

    /// The largest id seen in the file.
    pub fn newest(&self) -> i64 {
        self.newest
    }

    /// The last id shipped to `target`, read from the file when first opened.
    pub fn shipped(&mut self, target: &str) -> Result<i64, FileError> {
        self.connection(target)?;
        Ok(self.shipped.unwrap_or(0))
    }

    /// Reads the file's largest id again.
    pub fn refresh(&mut self, target: &str) -> Result<(), FileError> {
        let path = self.path.clone();
        let fail = |source| FileError { path, source };
        let connection = self.connection(target)?;
        let read = local::column_names(connection).and_then(|columns| {
            if columns.is_empty() {
                return Ok(0); // A file created this moment, its table not yet there.
            }
            let sql = format!("SELECT coalesce(max(id), 0) FROM {TABLE}");
            connection.query_row(&sql, [], |row| row.get::<_, i64>(0))
        });
        let newest = read.map_err(fail)?;
        self.newest = self.newest.max(newest);
        Ok(())
    }

    /// Adds the rows after the last one shipped to `batch`, in id order, until it holds `rows` rows or
    /// `bytes` bytes of text (at least one row).
    pub fn read(
        &mut self,
        target: &str,
        node: &str,
        batch: &mut Batch,
        rows: usize,
        bytes: usize,
    ) -> Result<Read, FileError> {
        let after = self.shipped(target)?;
        let origin = Origin {
            node,
            month: self.month,
        };
        let path = self.path.clone();
        let fail = |source| FileError {
            path: path.clone(),
            source,
        };
        let Some(connection) = self.connection.as_ref() else {
            return Ok(Read::default());
        };
        let columns = local::column_names(connection).map_err(fail)?;
        if columns.is_empty() {
            return Ok(Read::default());
        }
        let mut select = connection
            .prepare_cached(&select_sql(&columns))
            .map_err(fail)?;
        let limit = i64::try_from(rows).unwrap_or(i64::MAX);
        let mut found = select.query([after, limit]).map_err(fail)?;
        let mut read = Read::default();
        while let Some(row) = found.next().map_err(fail)? {
            let id: i64 = row.get(0).map_err(fail)?;
            let mut values = [ValueRef::Null; SHIPPED.len()];
            for (i, value) in values.iter_mut().enumerate() {
                *value = row.get_ref(i + 1).map_err(fail)?;
            }
            if let Err(e) = batch.push(id, &values, origin) {
                read.skipped.push(e);
            }
            read.last_id = Some(id);
            self.newest = self.newest.max(id);
            if batch.bytes() >= bytes {
                break;
            }
        }
        Ok(read)
    }

    /// Records that every row up to `last_id` is in `target`: in memory at once, then in the file (a failure
    /// to write it there only means those rows are sent again after a restart, and skipped there).
    pub fn save(&mut self, target: &str, last_id: i64) -> Result<(), FileError> {
        self.shipped = Some(self.shipped.unwrap_or(0).max(last_id));
        let create = !self.progress_table;
        let connection = self.connection(target)?;
        let created = if create {
            connection.execute_batch(PROGRESS)
        } else {
            Ok(())
        };
        let saved =
            created.and_then(|()| connection.execute(SAVE, rusqlite::params![target, last_id]));
        saved.map_err(|e| self.fail(e))?;
        self.progress_table = true;
        Ok(())
    }

    /// Lets go of the file (kept open only while it is written to).
    pub fn close(&mut self) {
        self.connection = None;
        self.progress_table = false;
    }

    fn connection(&mut self, target: &str) -> Result<&Connection, FileError> {
        if self.connection.is_none() {
            let connection = open(&self.path).map_err(|e| self.fail(e))?;
            if self.shipped.is_none() {
                let shipped = last_shipped(&connection, target).map_err(|e| self.fail(e))?;
                self.shipped = Some(shipped);
            }
            self.connection = Some(connection);
        }
        match &self.connection {
            Some(connection) => Ok(connection),
            None => Err(self.fail(rusqlite::Error::InvalidQuery)),
        }
    }

    fn fail(&self, source: rusqlite::Error) -> FileError {
        FileError {
            path: self.path.clone(),
            source,
        }
    }
}

/// The file, read-write (for its progress) but never created: the usage writer makes the files.
fn open(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    Ok(connection)
}

/// The last id shipped to `target` according to the file; 0 before its first shipment.
pub fn last_shipped(connection: &Connection, target: &str) -> rusqlite::Result<i64> {
    let exists: Option<String> = connection
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'ship_progress'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Ok(0);
    }
    let sql = "SELECT LastId FROM ship_progress WHERE Target = ?1";
    let last = connection.query_row(sql, [target], |row| row.get::<_, i64>(0));
    Ok(last.optional()?.unwrap_or(0))
}

/// The shipped columns, in [`SHIPPED`] order after `id`, of the rows after `?1`, at most `?2`; a column this
/// file lacks (written by an older version) reads as NULL.
pub fn select_sql(columns: &[String]) -> String {
    let select: Vec<String> = SHIPPED
        .iter()
        .map(|c| {
            if columns.contains(&c.name.to_ascii_lowercase()) {
                c.name.to_owned()
            } else {
                "NULL".to_owned()
            }
        })
        .collect();
    format!(
        "SELECT id, {} FROM {TABLE} WHERE id > ?1 ORDER BY id LIMIT ?2",
        select.join(", ")
    )
}
