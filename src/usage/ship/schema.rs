//! The shared PostgreSQL table `records`: the monthly files' columns in native types plus `LocalId` and `Day`,
//! its DDL, the batched INSERT, and its monthly partitions `records_YYYYMM` (UTC months of `Time`).

use chrono::{DateTime, Datelike, Utc};

use crate::usage::sqlite::schema as local;
use crate::usage::Month;

/// The shared table (in the connection's `search_path`, normally `public`).
pub const TABLE: &str = "records";

/// How a column is stored in PostgreSQL, and how a monthly file's value is turned into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `timestamptz NOT NULL`: the file's RFC 3339 text; the partition key.
    Time,
    /// `text`; NUL characters (which PostgreSQL text cannot hold) become U+FFFD.
    Text,
    /// `text NOT NULL`: the row's node, else the shipping node's (rows written before the column existed).
    Node,
    /// `bigint`.
    Int,
    /// `boolean`: a file's 0/1 integer.
    Flag,
    /// `double precision`; not finite is NULL.
    Real,
    /// `jsonb`: the text when it is JSON PostgreSQL takes, else the text as a JSON string (nothing is lost).
    Json,
    /// `uuid NOT NULL`: the gateway's request id, else one derived from (node, month file, id).
    RequestId,
    /// `bigint NOT NULL`: the row's `id` in its monthly file.
    LocalId,
    /// `date NOT NULL`: the date written at the start of `Time` (the serving gateway's local date), which the
    /// report groups and filters by, as it does the monthly files.
    Day,
}

impl Kind {
    /// The column's type and constraint in the table.
    pub fn sql_type(self) -> &'static str {
        match self {
            Kind::Time => "timestamptz NOT NULL",
            Kind::Text => "text",
            Kind::Node => "text NOT NULL",
            Kind::Int => "bigint",
            Kind::Flag => "boolean",
            Kind::Real => "double precision",
            Kind::Json => "jsonb",
            Kind::RequestId => "uuid NOT NULL",
            Kind::LocalId => "bigint NOT NULL",
            Kind::Day => "date NOT NULL",
        }
    }

    /// The type of the array a batch binds for the column, and the cast from it (if any) in the INSERT.
    fn array(self) -> (&'static str, &'static str) {
        match self {
            Kind::Time => ("timestamptz[]", ""),
            Kind::Text | Kind::Node => ("text[]", ""),
            Kind::Int | Kind::LocalId => ("int8[]", ""),
            Kind::Flag => ("bool[]", ""),
            Kind::Real => ("float8[]", ""),
            Kind::Json => ("text[]", "::jsonb"),
            Kind::RequestId => ("text[]", "::uuid"),
            Kind::Day => ("date[]", ""),
        }
    }
}

/// A column of the shared table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
}

const fn column(local: local::Column, kind: Kind) -> Column {
    Column {
        name: local.name,
        kind,
    }
}

/// The columns of the monthly files ([`local::COLUMNS`], same names, same order), as shipped. A unit test
/// keeps the two lists in step: a column added to the files must be given its kind here.
pub const SHIPPED: [Column; 29] = [
    column(local::TIME, Kind::Time),
    column(local::IP, Kind::Text),
    column(local::MODEL, Kind::Text),
    column(local::TYPE, Kind::Text),
    column(local::COMPLETION_TOKENS, Kind::Int),
    column(local::PROMPT_TOKENS, Kind::Int),
    column(local::TOTAL_TOKENS, Kind::Int),
    column(local::TOOL, Kind::Flag),
    column(local::MULTIMODAL, Kind::Flag),
    column(local::HEADERS, Kind::Json),
    column(local::REQUEST, Kind::Text),
    column(local::RESPONSE, Kind::Text),
    column(local::BACKEND, Kind::Text),
    column(local::UPSTREAM_MODEL, Kind::Text),
    column(local::STREAM, Kind::Flag),
    column(local::STATUS, Kind::Int),
    column(local::LATENCY_MS, Kind::Int),
    column(local::FIRST_TOKEN_MS, Kind::Int),
    column(local::ATTEMPTS, Kind::Int),
    column(local::CACHED_TOKENS, Kind::Int),
    column(local::REASONING_TOKENS, Kind::Int),
    column(local::ERROR, Kind::Text),
    column(local::KEY_NAME, Kind::Text),
    column(local::COST_USD, Kind::Real),
    column(local::USAGE_ESTIMATED, Kind::Flag),
    column(local::AFFINITY_KEY, Kind::Text),
    column(local::REQUEST_ID, Kind::RequestId),
    column(local::NODE, Kind::Node),
    column(local::CACHE_WRITE_TOKENS, Kind::Int),
];

/// The columns only the shared table has, after [`SHIPPED`].
pub const EXTRA: [Column; 2] = [
    Column {
        name: "LocalId",
        kind: Kind::LocalId,
    },
    Column {
        name: "Day",
        kind: Kind::Day,
    },
];

/// Every column of the shared table, in order.
pub fn columns() -> impl Iterator<Item = &'static Column> {
    SHIPPED.iter().chain(EXTRA.iter())
}

/// `"Name"`: quoted, so PostgreSQL keeps its case.
pub fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

/// The partitioned table, created if absent. One row per request: `UNIQUE ("RequestId", "Time")` (a unique
/// constraint of a partitioned table must hold its partition key), which is what makes shipping a batch twice
/// insert nothing twice.
pub fn create_table() -> String {
    let columns: Vec<String> = columns()
        .map(|c| format!("{} {}", quoted(c.name), c.kind.sql_type()))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} ({}, UNIQUE (\"RequestId\", \"Time\")) PARTITION BY RANGE (\"Time\")",
        columns.join(", ")
    )
}

/// Adds a column a table created by an older version lacks (NULL in its rows so far, hence no NOT NULL).
pub fn add_column(c: &Column) -> String {
    let kind = c.kind.sql_type().trim_end_matches(" NOT NULL");
    format!(
        "ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {} {kind}",
        quoted(c.name)
    )
}

/// One INSERT for a whole batch: one array parameter per column, unnested into rows; a row whose request is
/// already in the table is skipped.
pub fn insert() -> String {
    let all: Vec<&Column> = columns().collect();
    let names: Vec<String> = all.iter().map(|c| quoted(c.name)).collect();
    let arrays: Vec<String> = all
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", i + 1, c.kind.array().0))
        .collect();
    let values: Vec<String> = all
        .iter()
        .enumerate()
        .map(|(i, c)| format!("c{i}{}", c.kind.array().1))
        .collect();
    let aliases: Vec<String> = (0..all.len()).map(|i| format!("c{i}")).collect();
    format!(
        "INSERT INTO {TABLE} ({}) SELECT {} FROM UNNEST({}) AS u({}) ON CONFLICT DO NOTHING",
        names.join(", "),
        values.join(", "),
        arrays.join(", "),
        aliases.join(", ")
    )
}

/// The UTC month of an instant: which partition holds it.
pub fn utc_month(time: &DateTime<Utc>) -> Month {
    Month {
        year: time.year(),
        month: time.month(),
    }
}

/// `records_YYYYMM`.
pub fn partition_name(month: Month) -> String {
    format!("{TABLE}_{month}")
}

/// The first instant of `month` and of the month after it, in UTC, as PostgreSQL literals.
pub fn partition_bounds(month: Month) -> (String, String) {
    let next = next_month(month);
    let start = |m: Month| format!("{:04}-{:02}-01 00:00:00+00", m.year, m.month);
    (start(month), start(next))
}

/// The partition of `month`, created if absent.
pub fn create_partition(month: Month) -> String {
    let (from, to) = partition_bounds(month);
    format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF {TABLE} FOR VALUES FROM ('{from}') TO ('{to}')",
        partition_name(month)
    )
}

pub fn next_month(month: Month) -> Month {
    match month.month {
        12 => Month {
            year: month.year + 1,
            month: 1,
        },
        m => Month {
            year: month.year,
            month: m + 1,
        },
    }
}

/// The names of the table's columns, to find those a table made by an older version lacks.
pub const EXISTING_COLUMNS: &str = "SELECT attname::text FROM pg_attribute \
     WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped";

/// One key for the advisory lock that serializes creating the table and its partitions across nodes
/// (`CREATE TABLE IF NOT EXISTS` alone races: two sessions can both find it absent).
pub const DDL_LOCK: i64 = 0x6770_745f_6170_6931; // "gpt_api1"
