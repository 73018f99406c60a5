//! The one definition of the `records` table of the monthly files: its columns (written by the store, read by
//! the report), the pragmas, indexes, rollup tables and spool progress table, and the upgrade of older files.

use rusqlite::Connection;

/// The table of usage records in every monthly file.
pub const TABLE: &str = "records";

/// A column of [`TABLE`] after `id`: its name and SQLite type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub kind: &'static str,
}

const fn column(name: &'static str, kind: &'static str) -> Column {
    Column { name, kind }
}

pub const TIME: Column = column("Time", "TEXT");
pub const IP: Column = column("IP", "TEXT");
pub const MODEL: Column = column("Model", "TEXT");
pub const TYPE: Column = column("Type", "TEXT");
pub const COMPLETION_TOKENS: Column = column("CompletionTokens", "INTEGER");
pub const PROMPT_TOKENS: Column = column("PromptTokens", "INTEGER");
pub const TOTAL_TOKENS: Column = column("TotalTokens", "INTEGER");
pub const TOOL: Column = column("Tool", "INTEGER");
pub const MULTIMODAL: Column = column("Multimodal", "INTEGER");
pub const HEADERS: Column = column("Headers", "TEXT");
pub const REQUEST: Column = column("Request", "TEXT");
pub const RESPONSE: Column = column("Response", "TEXT");
pub const BACKEND: Column = column("Backend", "TEXT");
pub const UPSTREAM_MODEL: Column = column("UpstreamModel", "TEXT");
pub const STREAM: Column = column("Stream", "INTEGER");
pub const STATUS: Column = column("Status", "INTEGER");
pub const LATENCY_MS: Column = column("LatencyMs", "INTEGER");
pub const FIRST_TOKEN_MS: Column = column("FirstTokenMs", "INTEGER");
pub const ATTEMPTS: Column = column("Attempts", "INTEGER");
pub const CACHED_TOKENS: Column = column("CachedTokens", "INTEGER");
pub const REASONING_TOKENS: Column = column("ReasoningTokens", "INTEGER");
pub const ERROR: Column = column("Error", "TEXT");
pub const KEY_NAME: Column = column("KeyName", "TEXT");
/// What the request cost in USD by the price table; NULL when its model has no price.
pub const COST_USD: Column = column("CostUsd", "REAL");
/// 1 when the token counts are the gateway's estimate (the backend reported none).
pub const USAGE_ESTIMATED: Column = column("UsageEstimated", "INTEGER");
pub const AFFINITY_KEY: Column = column("AffinityKey", "TEXT");
/// The gateway's id of the request (UUIDv7 text, the answer's `x-request-id`).
pub const REQUEST_ID: Column = column("RequestId", "TEXT");
/// The node that served the request (`cluster.node`).
pub const NODE: Column = column("Node", "TEXT");
/// Prompt tokens written to the backend's prompt cache (Anthropic's `cache_creation_input_tokens`); they are
/// part of `PromptTokens`, like the cache reads of `CachedTokens`.
pub const CACHE_WRITE_TOKENS: Column = column("CacheWriteTokens", "INTEGER");

/// The columns after `id`, in table order. The table, its inserts and the upgrade of files written by older
/// versions are built from this list, and the report names its columns from the constants above, so none of
/// them can drift apart. A new column goes at the end (older files gain it there).
pub const COLUMNS: &[Column] = &[
    TIME,
    IP,
    MODEL,
    TYPE,
    COMPLETION_TOKENS,
    PROMPT_TOKENS,
    TOTAL_TOKENS,
    TOOL,
    MULTIMODAL,
    HEADERS,
    REQUEST,
    RESPONSE,
    BACKEND,
    UPSTREAM_MODEL,
    STREAM,
    STATUS,
    LATENCY_MS,
    FIRST_TOKEN_MS,
    ATTEMPTS,
    CACHED_TOKENS,
    REASONING_TOKENS,
    ERROR,
    KEY_NAME,
    COST_USD,
    USAGE_ESTIMATED,
    AFFINITY_KEY,
    REQUEST_ID,
    NODE,
    CACHE_WRITE_TOKENS,
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

/// `idx_records_scan` covers every column the report reads and every filter of the admin page's request list,
/// after Time: both read a range of it without touching the table, whose rows hold the bodies (a row of a few KB
/// spills into overflow pages that a read of its later columns walks through). It replaces the Time-only index
/// of older versions (dropped once it exists), which every query it served can use it for.
const INDEXES: &str = "CREATE INDEX IF NOT EXISTS idx_records_scan ON records(Time, Model, KeyName, Backend, \
                       Status, Stream, PromptTokens, CompletionTokens, TotalTokens, LatencyMs, UsageEstimated, \
                       CostUsd, Error);
DROP INDEX IF EXISTS idx_records_time;
CREATE INDEX IF NOT EXISTS idx_records_model ON records(Model);";

/// The index the admin page's newest-first request list walks.
pub const SCAN_INDEX: &str = "idx_records_scan";

/// For each spool segment (`usage::spool`), the end offset of its last frame committed to this file: its
/// records of this month up to there are in `records`. Written in the same transaction as those rows.
const PROGRESS: &str = "CREATE TABLE IF NOT EXISTS spool_progress \
                        (Segment TEXT PRIMARY KEY, Offset INTEGER NOT NULL) WITHOUT ROWID;";

/// Creates the table if needed, and adds the columns that files written by older versions lack.
pub(super) fn create(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute_batch(PRAGMAS)?;
    let columns: Vec<String> = COLUMNS
        .iter()
        .map(|c| format!("{} {}", c.name, c.kind))
        .collect();
    connection.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY AUTOINCREMENT, {});",
        columns.join(", ")
    ))?;
    let existing = column_names(connection)?;
    for Column { name, kind } in COLUMNS {
        if !existing.contains(&name.to_ascii_lowercase()) {
            connection.execute_batch(&format!("ALTER TABLE {TABLE} ADD COLUMN {name} {kind};"))?;
        }
    }
    connection.execute_batch(INDEXES)?;
    super::rollup::create(connection)?;
    connection.execute_batch(PROGRESS)
}

/// The columns [`TABLE`] has in this file, lower-case (SQLite compares names so); empty when there is no such
/// table (a file created but never written to).
pub fn column_names(connection: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut names = Vec::new();
    connection.pragma(None, "table_info", TABLE, |row| {
        names.push(row.get::<_, String>("name")?.to_ascii_lowercase());
        Ok(())
    })?;
    Ok(names)
}

/// A stored integer whatever type an older writer stored it as (SQLite columns are not strictly typed); NULL, a
/// blob or text that is no number is `None`. Read so by the report and the rollup.
pub fn int(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<i64>> {
    use rusqlite::types::ValueRef;
    Ok(match row.get_ref(i)? {
        ValueRef::Integer(n) => Some(n),
        ValueRef::Real(x) => Some(x as i64),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(|t| t.trim().parse().ok()),
        ValueRef::Null | ValueRef::Blob(_) => None,
    })
}

/// A stored number whatever type it was stored as; NULL, a blob or text that is no number is `None`.
pub fn real(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<f64>> {
    use rusqlite::types::ValueRef;
    Ok(match row.get_ref(i)? {
        ValueRef::Real(x) => Some(x),
        ValueRef::Integer(n) => Some(n as f64),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(|t| t.trim().parse().ok()),
        ValueRef::Null | ValueRef::Blob(_) => None,
    })
}
