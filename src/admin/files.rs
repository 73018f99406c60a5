//! The monthly usage files as the admin page reads them: read-only connections, one read transaction each.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::report::ReportError;
use crate::usage::Month;

/// How long a read waits when the gateway holds a lock on the file (a WAL checkpoint or recovery).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a query gave no answer. Messages name files and parameters, never record contents.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot list {}: {source}", dir.display())]
    List {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Report(#[from] ReportError),
    #[error("every query slot is busy; try again")]
    Busy,
    #[error("query failed: {0}")]
    Internal(String),
}

impl QueryError {
    /// The HTTP status of this error's answer.
    pub fn status(&self) -> u16 {
        match self {
            QueryError::Report(ReportError::Read { .. } | ReportError::Io { .. }) => 500,
            QueryError::BadRequest(_) | QueryError::Report(_) => 400,
            QueryError::Busy => 503,
            QueryError::Read { .. } | QueryError::List { .. } | QueryError::Internal(_) => 500,
        }
    }
}

impl QueryError {
    pub fn read(path: &Path) -> impl Fn(rusqlite::Error) -> QueryError + '_ {
        move |source| QueryError::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The `record_YYYYMM.db` files of one usage directory.
#[derive(Debug, Clone)]
pub struct Files {
    pub dir: PathBuf,
}

/// One month file, open read-only.
pub struct MonthFile {
    pub path: PathBuf,
    pub connection: Connection,
}

impl Files {
    pub fn path(&self, month: Month) -> PathBuf {
        self.dir.join(month.file_name())
    }

    /// The file of `month`, open read-only, or `None` when there is none (nothing is created).
    pub fn open(&self, month: Month) -> Result<Option<MonthFile>, QueryError> {
        let path = self.path(month);
        if !path.is_file() {
            return Ok(None);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection =
            Connection::open_with_flags(&path, flags).map_err(QueryError::read(&path))?;
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(QueryError::read(&path))?;
        Ok(Some(MonthFile { path, connection }))
    }

    /// Every month with a file, newest first.
    pub fn months(&self) -> Result<Vec<Month>, QueryError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(QueryError::List {
                    dir: self.dir.clone(),
                    source,
                })
            }
        };
        let mut months: Vec<Month> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_file_name(&e.file_name().to_string_lossy()))
            .collect();
        months.sort_unstable_by(|a, b| b.cmp(a));
        Ok(months)
    }
}

/// `record_YYYYMM.db` -> its month.
pub fn parse_file_name(name: &str) -> Option<Month> {
    let digits = name.strip_prefix("record_")?.strip_suffix(".db")?;
    parse_month(digits)
}

/// `YYYYMM` -> its month.
pub fn parse_month(digits: &str) -> Option<Month> {
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let month = Month {
        year: digits.get(..4)?.parse().ok()?,
        month: digits.get(4..)?.parse().ok()?,
    };
    (1..=12).contains(&month.month).then_some(month)
}

/// Whether the file has a table (a file created but never written to has none).
pub fn has_table(connection: &Connection, name: &str) -> rusqlite::Result<bool> {
    let sql = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1";
    connection.query_row(sql, [name], |r| r.get::<_, i64>(0).map(|n| n > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_file_names() {
        assert_eq!(
            parse_file_name("record_202611.db"),
            Some(Month {
                year: 2026,
                month: 11
            })
        );
        assert_eq!(parse_file_name("record_202613.db"), None);
        assert_eq!(parse_file_name("record_2026-1.db"), None);
        assert_eq!(parse_file_name("spool"), None);
    }
}
