//! The rollup's tables, created with the file; cache writes added to a file whose rollup predates them.

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::covered;

pub(in crate::usage::sqlite) const TABLES: &str = "CREATE TABLE IF NOT EXISTS rollup_hours (Hour TEXT NOT NULL, \
    Model TEXT NOT NULL, KeyName TEXT NOT NULL, Backend TEXT NOT NULL, Requests INTEGER NOT NULL, \
    Errors INTEGER NOT NULL, PromptTokens INTEGER NOT NULL, CompletionTokens INTEGER NOT NULL, \
    TotalTokens INTEGER NOT NULL, CachedTokens INTEGER NOT NULL, ReasoningTokens INTEGER NOT NULL, \
    NoUsage INTEGER NOT NULL, Estimated INTEGER NOT NULL, CostNanos INTEGER NOT NULL, \
    Costed INTEGER NOT NULL, PRIMARY KEY (Hour, Model, KeyName, Backend)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_ms (Day TEXT NOT NULL, Kind INTEGER NOT NULL, Counts BLOB NOT NULL, \
    UNIQUE (Day, Kind));
CREATE TABLE IF NOT EXISTS rollup_state (Name TEXT PRIMARY KEY, Value INTEGER NOT NULL) WITHOUT ROWID;";

/// Prompt-cache writes per group of [`super::HOURS`], in a table of their own (only groups that have any): a writer of
/// an older version, still running during an upgrade, keeps inserting `rollup_hours` rows of the old width.
pub const CACHE_WRITES: &str = "rollup_cache_writes";
const CACHE_WRITES_TABLE: &str = "CREATE TABLE IF NOT EXISTS rollup_cache_writes (Hour TEXT NOT NULL, \
    Model TEXT NOT NULL, KeyName TEXT NOT NULL, Backend TEXT NOT NULL, CacheWriteTokens INTEGER NOT NULL, \
    PRIMARY KEY (Hour, Model, KeyName, Backend)) WITHOUT ROWID";
/// Fills a new [`CACHE_WRITES`] with the records the rollup already holds (those after it are summed as usual).
const CACHE_WRITES_BACKFILL: &str = "INSERT INTO rollup_cache_writes SELECT substr(Time, 1, 13), \
    ifnull(Model, ''), ifnull(KeyName, ''), ifnull(Backend, ''), sum(CacheWriteTokens) FROM records \
    WHERE id <= ?1 AND CacheWriteTokens > 0 GROUP BY 1, 2, 3, 4";

/// Creates the rollup's tables; a file whose rollup predates [`CACHE_WRITES`] gets it, filled from its records.
pub(in crate::usage::sqlite) fn create(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute_batch(TABLES)?;
    let exists = |c: &Connection| -> rusqlite::Result<bool> {
        c.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [CACHE_WRITES],
            |r| r.get(0),
        )
    };
    if exists(connection)? {
        return Ok(());
    }
    // Checked again under the write lock: two gateways (an upgrade) may open the file at once.
    let tx = Transaction::new_unchecked(connection, TransactionBehavior::Immediate)?;
    if !exists(&tx)? {
        tx.execute_batch(CACHE_WRITES_TABLE)?;
        tx.execute(CACHE_WRITES_BACKFILL, [covered(&tx)?])?;
    }
    tx.commit()
}
