//! What each gateway key spent this month and today, read back from the current month's file at startup, so
//! that per-key budgets survive a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Datelike, Local, NaiveDate};
use rusqlite::{Connection, OpenFlags};

use super::schema::{self, TABLE};
use super::Month;

/// How long the read waits when the gateway holds a lock on the file (a WAL checkpoint or recovery).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The spend of one key, in USD: the sum of its records' `CostUsd` (records without a cost add nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spend {
    /// Records of the local day.
    pub day_usd: f64,
    /// Records of the local month, today's included.
    pub month_usd: f64,
}

/// Why the spend could not be read. The message names the file, never a key.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the spend of the gateway keys from {}: {source}", path.display())]
pub struct SpendError {
    pub path: PathBuf,
    pub source: rusqlite::Error,
}

/// The spend of each key name (`KeyName`) in the month file of `now` under `dir`, for the month and for the day
/// of `now`, both in the server's local calendar like the monthly files: a record counts by the date written at
/// the start of its `Time` (the local date of the gateway that served it). Records without a key name or a cost
/// are left out, and so are keys without any cost this month. Opens the file read-only, which is safe while the
/// gateway writes it; no file is created (SQLite may leave the empty -wal/-shm companions it needs to read a WAL
/// file). A missing file, or one written before costs were recorded, is an empty map.
pub fn spend_by_key(
    dir: &Path,
    now: DateTime<Local>,
) -> Result<HashMap<String, Spend>, SpendError> {
    spend_on(dir, now.date_naive())
}

/// [`spend_by_key`] for the local date `today`.
pub fn spend_on(dir: &Path, today: NaiveDate) -> Result<HashMap<String, Spend>, SpendError> {
    let month = Month {
        year: today.year(),
        month: today.month(),
    };
    let path = dir.join(month.file_name());
    if !path.is_file() {
        return Ok(HashMap::new());
    }
    read(&path, today).map_err(|source| SpendError { path, source })
}

fn read(path: &Path, today: NaiveDate) -> rusqlite::Result<HashMap<String, Spend>> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    let columns = schema::column_names(&connection)?;
    let has = |c: schema::Column| columns.contains(&c.name.to_ascii_lowercase());
    if !(has(schema::KEY_NAME) && has(schema::COST_USD)) {
        // No table (a file never written to), or a file of a version before keys or costs: nothing spent.
        return Ok(HashMap::new());
    }
    let (key, cost, time) = (
        schema::KEY_NAME.name,
        schema::COST_USD.name,
        schema::TIME.name,
    );
    // `Time >= date AND Time < date~` is "Time starts with date" (`~` sorts after what follows a date).
    let sql = format!(
        "SELECT CAST({key} AS TEXT), total({cost}), total(CASE WHEN {time} >= ?1 AND {time} < ?2 THEN {cost} END) \
         FROM {TABLE} WHERE {key} IS NOT NULL AND {key} <> '' AND {cost} IS NOT NULL GROUP BY {key}"
    );
    let day = today.format("%Y-%m-%d").to_string();
    let mut select = connection.prepare(&sql)?;
    let rows = select.query_map([day.clone(), format!("{day}~")], |row| {
        let spend = Spend {
            month_usd: row.get(1)?,
            day_usd: row.get(2)?,
        };
        Ok((row.get::<_, String>(0)?, spend))
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests;
