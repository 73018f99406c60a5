//! The first report source: the monthly SQLite files (`<dir>/record_YYYYMM.db`) of one or more usage
//! directories, opened read-only, only those of the months a range touches.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, Row};

use super::{Dim, Fields, Range, ReportError, Source};
use crate::usage::sqlite::schema::{self, int, real, Column, TABLE};

/// How long a read waits when the gateway holds a lock on the file (a WAL checkpoint or recovery).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The monthly files of some usage directories, e.g. those of the gateways behind one load balancer.
#[derive(Debug, Clone)]
pub struct MonthFiles {
    dirs: Vec<PathBuf>,
}

impl MonthFiles {
    /// The files of `dirs`: each must be a directory, and one named twice is read once.
    pub fn new(dirs: &[PathBuf]) -> Result<MonthFiles, ReportError> {
        Ok(MonthFiles {
            dirs: distinct_dirs(dirs)?,
        })
    }
}

impl Source for MonthFiles {
    /// Directory by directory, month by month; a month without a file has no records.
    fn read(
        &mut self,
        range: Range,
        by: &[Dim],
        add: &mut dyn FnMut(Vec<Option<String>>, Fields),
    ) -> Result<Vec<PathBuf>, ReportError> {
        let mut files = Vec::new();
        for dir in &self.dirs {
            for month in range.months() {
                let path = dir.join(month.file_name());
                if path.is_file() {
                    read_file(&path, range, by, add)?;
                    files.push(path);
                }
            }
        }
        Ok(files)
    }
}

/// The directories, each checked to exist, and each read once even when named twice (its records would count twice).
fn distinct_dirs(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, ReportError> {
    let mut seen = Vec::new();
    let mut distinct = Vec::new();
    for dir in dirs {
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(ReportError::NotADir(dir.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ReportError::NoDir(dir.clone()))
            }
            Err(source) => {
                return Err(ReportError::Io {
                    path: dir.clone(),
                    source,
                })
            }
        }
        let canonical = dir.canonicalize().map_err(|source| ReportError::Io {
            path: dir.clone(),
            source,
        })?;
        if !seen.contains(&canonical) {
            seen.push(canonical);
            distinct.push(dir.clone());
        }
    }
    Ok(distinct)
}

/// Hands the records of `range` in one month file to `add`, in one read transaction.
fn read_file(
    path: &Path,
    range: Range,
    by: &[Dim],
    add: &mut dyn FnMut(Vec<Option<String>>, Fields),
) -> Result<(), ReportError> {
    let fail = |source| ReportError::Read {
        path: path.to_path_buf(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags).map_err(fail)?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
    let columns = schema::column_names(&connection).map_err(fail)?;
    if columns.is_empty() {
        // No `records` table: a file created but never written to.
        return Ok(());
    }
    let mut select = connection
        .prepare(&select_sql(by, &columns))
        .map_err(fail)?;
    let (lower, upper) = range.bounds();
    let mut rows = select.query([lower, upper]).map_err(fail)?;
    while let Some(row) = rows.next().map_err(fail)? {
        let key = (0..by.len())
            .map(|i| text(row, i))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        let fields = fields(row, by.len()).map_err(fail)?;
        add(key, fields);
    }
    Ok(())
}

/// Only the columns the report needs (never the bodies), named from the store's own schema; a column an older
/// file lacks reads as NULL.
fn select_sql(by: &[Dim], columns: &[String]) -> String {
    let column = |c: Column| {
        if columns.contains(&c.name.to_ascii_lowercase()) {
            c.name.to_string()
        } else {
            "NULL".to_string()
        }
    };
    let mut select: Vec<String> = by
        .iter()
        .map(|dim| match dim {
            Dim::Day => format!("substr({}, 1, 10)", column(schema::TIME)),
            Dim::Model => column(schema::MODEL),
            Dim::Backend => column(schema::BACKEND),
            Dim::Key => column(schema::KEY_NAME),
            Dim::Node => column(schema::NODE),
        })
        .collect();
    for c in [
        schema::PROMPT_TOKENS,
        schema::COMPLETION_TOKENS,
        schema::TOTAL_TOKENS,
        schema::STATUS,
    ] {
        select.push(column(c));
    }
    select.push(format!("{} IS NOT NULL", column(schema::ERROR)));
    select.push(column(schema::LATENCY_MS));
    select.push(column(schema::USAGE_ESTIMATED));
    select.push(column(schema::COST_USD));
    select.push(column(schema::CACHED_TOKENS));
    select.push(column(schema::CACHE_WRITE_TOKENS));
    format!(
        "SELECT {} FROM {TABLE} WHERE {time} >= ?1 AND {time} < ?2",
        select.join(", "),
        time = column(schema::TIME)
    )
}

/// The figures after the `keys` group columns of a row of [`select_sql`].
fn fields(row: &Row<'_>, keys: usize) -> rusqlite::Result<Fields> {
    Ok(Fields {
        prompt: int(row, keys)?,
        completion: int(row, keys + 1)?,
        total: int(row, keys + 2)?,
        status: int(row, keys + 3)?,
        has_error: int(row, keys + 4)?.is_some_and(|n| n != 0),
        latency_ms: int(row, keys + 5)?,
        estimated: int(row, keys + 6)?.is_some_and(|n| n != 0),
        cost_usd: real(row, keys + 7)?,
        cached: int(row, keys + 8)?,
        cache_write: int(row, keys + 9)?,
    })
}

/// A group value as text; NULL (or empty) is `None`.
fn text(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<String>> {
    Ok(match row.get_ref(i)? {
        ValueRef::Text(t) if !t.is_empty() => Some(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(x) => Some(x.to_string()),
        ValueRef::Text(_) | ValueRef::Null | ValueRef::Blob(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_select_names_its_columns_from_the_stores_schema() {
        let all: Vec<String> = schema::COLUMNS
            .iter()
            .map(|c| c.name.to_ascii_lowercase())
            .collect();
        let by = [Dim::Day, Dim::Model, Dim::Backend, Dim::Key, Dim::Node];
        assert_eq!(
            select_sql(&by, &all),
            "SELECT substr(Time, 1, 10), Model, Backend, KeyName, Node, PromptTokens, CompletionTokens, \
             TotalTokens, Status, Error IS NOT NULL, LatencyMs, UsageEstimated, CostUsd, CachedTokens, \
             CacheWriteTokens FROM records \
             WHERE Time >= ?1 AND Time < ?2"
        );
        let old: Vec<String> = all
            .into_iter()
            .filter(|c| {
                ![
                    "keyname",
                    "costusd",
                    "usageestimated",
                    "node",
                    "cachewritetokens",
                ]
                .contains(&c.as_str())
            })
            .collect();
        let sql = select_sql(&[Dim::Key, Dim::Node], &old);
        assert!(sql.starts_with("SELECT NULL, NULL, PromptTokens"), "{sql}");
        assert!(
            sql.contains("LatencyMs, NULL, NULL, CachedTokens, NULL FROM"),
            "{sql}"
        );
    }
}
