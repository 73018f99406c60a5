//! The records themselves: a filtered, newest-first list paged with a cursor, and one record whole.

// A record's id is `YYYYMM-<rowid>`: its month file and its row there, stable for the life of the file. The list
// walks `idx_records_scan` (Time first, then every filtered column) backwards, so a filter is checked in the index
// and only the rows shown are read from the table.

use std::fmt;

use chrono::{DateTime, Local, TimeZone};
use rusqlite::types::{ToSql, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row};
use serde_json::{json, Map, Value};

use super::files::{parse_month, Files, QueryError};
use crate::report::Range;
use crate::usage::sqlite::schema;
use crate::usage::Month;

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

/// A record's place: its month file and row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordId {
    pub month: Month,
    pub row: i64,
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.month, self.row)
    }
}

impl RecordId {
    pub fn parse(text: &str) -> Option<RecordId> {
        let (month, row) = text.split_once('-')?;
        let row: i64 = row.parse().ok().filter(|r| *r > 0)?;
        Some(RecordId {
            month: parse_month(month)?,
            row,
        })
    }
}

/// Which statuses a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Code(i64),
    /// `2xx`, `4xx`, `5xx`: the hundreds digit.
    Class(i64),
    /// Status >= 400 or an error recorded (what the overview counts as an error).
    Errors,
}

impl Status {
    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "error" | "errors" => Some(Status::Errors),
            _ if text.len() == 3 && text.ends_with("xx") => {
                let digit = text
                    .get(..1)?
                    .parse()
                    .ok()
                    .filter(|d| (1..=5).contains(d))?;
                Some(Status::Class(digit))
            }
            _ => text
                .parse()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .map(Status::Code),
        }
    }
}

/// The list's filters; every one optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub range: Option<Range>,
    pub model: Option<String>,
    pub key: Option<String>,
    pub backend: Option<String>,
    pub status: Option<Status>,
    pub stream: Option<bool>,
    /// Only records after this one in the list (older): the previous page's `next`.
    pub before: Option<RecordId>,
    pub limit: usize,
}

/// The columns of a list row, in [`summary`] order.
const SUMMARY: &[&str] = &[
    "id",
    "Time",
    "Model",
    "KeyName",
    "Backend",
    "Status",
    "Stream",
    "LatencyMs",
    "FirstTokenMs",
    "PromptTokens",
    "CompletionTokens",
    "TotalTokens",
    "CachedTokens",
    "ReasoningTokens",
    "CostUsd",
    "Attempts",
    "Error",
    "RequestId",
    "CacheWriteTokens",
];

/// The rest of a whole record.
const DETAIL: &[&str] = &[
    "IP",
    "Type",
    "Tool",
    "Multimodal",
    "Headers",
    "Request",
    "Response",
    "UpstreamModel",
    "AffinityKey",
    "Node",
    "UsageEstimated",
];

/// One page of the list, newest first; `next` continues it.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub requests: Vec<Value>,
    pub next: Option<RecordId>,
}

/// The records that pass `filter`, newest first (by Time, then by row), `filter.limit` at most.
pub fn list(files: &Files, filter: &Filter) -> Result<Page, QueryError> {
    let months: Vec<Month> = match filter.range {
        Some(range) => range
            .months()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect(),
        None => files.months()?,
    };
    let want = filter.limit + 1;
    let mut found: Vec<(Month, Value)> = Vec::new();
    for month in months {
        if filter.before.is_some_and(|b| month > b.month) {
            continue;
        }
        let Some(file) = files.open(month)? else {
            continue;
        };
        let rows = list_month(&file.connection, month, filter, want - found.len())
            .map_err(QueryError::read(&file.path))?;
        found.extend(rows.into_iter().map(|r| (month, r)));
        if found.len() >= want {
            break;
        }
    }
    let more = found.len() > filter.limit;
    found.truncate(filter.limit);
    let next = match (more, found.last()) {
        (true, Some((month, last))) => last["row"]
            .as_i64()
            .map(|row| RecordId { month: *month, row }),
        _ => None,
    };
    let requests = found
        .into_iter()
        .map(|(_, mut v)| {
            if let Value::Object(map) = &mut v {
                map.remove("row");
            }
            v
        })
        .collect();
    Ok(Page { requests, next })
}

fn list_month(
    c: &Connection,
    month: Month,
    f: &Filter,
    limit: usize,
) -> rusqlite::Result<Vec<Value>> {
    let columns = schema::column_names(c)?;
    if columns.is_empty() {
        return Ok(Vec::new());
    }
    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<Box<dyn ToSql>> = Vec::new();
    let mut arg = |cond: &str, value: Box<dyn ToSql>, conds: &mut Vec<String>| {
        args.push(value);
        conds.push(cond.replace('?', &format!("?{}", args.len())));
    };
    if let Some(range) = f.range {
        let lower = range.from.format("%Y-%m-%d").to_string();
        let upper = format!("{}~", range.to.format("%Y-%m-%d"));
        arg("Time >= ?", Box::new(lower), &mut conds);
        arg("Time < ?", Box::new(upper), &mut conds);
    }
    // `+` keeps SQLite from choosing the Model index (then sorting every row of the model by Time).
    let texts = [
        ("+Model = ?", &f.model),
        ("+KeyName = ?", &f.key),
        ("+Backend = ?", &f.backend),
    ];
    for (cond, value) in texts {
        if let Some(value) = value {
            arg(cond, Box::new(value.clone()), &mut conds);
        }
    }
    match f.status {
        Some(Status::Code(code)) => arg("+Status = ?", Box::new(code), &mut conds),
        Some(Status::Class(d)) => arg("+Status / 100 = ?", Box::new(d), &mut conds),
        Some(Status::Errors) => conds.push("(+Status >= 400 OR Error IS NOT NULL)".into()),
        None => {}
    }
    if let Some(stream) = f.stream {
        arg("+Stream = ?", Box::new(i64::from(stream)), &mut conds);
    }
    if let Some(before) = f.before.filter(|b| b.month == month) {
        let sql = "SELECT Time FROM records WHERE id = ?1";
        let time: Option<String> = c.query_row(sql, [before.row], |r| r.get(0)).optional()?;
        let time = time.unwrap_or_default();
        arg("Time <= ?", Box::new(time.clone()), &mut conds);
        let n = args.len();
        args.push(Box::new(before.row));
        conds.push(format!("(Time < ?{n} OR id < ?{})", n + 1));
    }
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    let sql = format!(
        "SELECT {} FROM records {filter} ORDER BY Time DESC, id DESC LIMIT {limit}",
        select_list(SUMMARY, &columns)
    );
    let mut select = c.prepare(&sql)?;
    let params: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref()).collect();
    let mut rows = select.query(params.as_slice())?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(summary(row, month)?);
    }
    Ok(out)
}

/// The names, each as `NULL` when the file lacks that column (files written by older versions).
fn select_list(names: &[&str], columns: &[String]) -> String {
    let list: Vec<&str> = names
        .iter()
        .map(|n| match columns.contains(&n.to_ascii_lowercase()) {
            true => *n,
            false => "NULL",
        })
        .collect();
    list.join(", ")
}

/// A list row as JSON; `row` is the file's row id (removed before the answer).
fn summary(row: &Row<'_>, month: Month) -> rusqlite::Result<Value> {
    let mut map = Map::new();
    let id: i64 = row.get(0)?;
    map.insert("id".into(), json!(RecordId { month, row: id }.to_string()));
    map.insert("row".into(), json!(id));
    let names = [
        "time",
        "model",
        "key",
        "backend",
        "status",
        "stream",
        "latency_ms",
        "first_token_ms",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "cost_usd",
        "attempts",
        "error",
        "request_id",
        "cache_write_tokens",
    ];
    for (i, name) in names.iter().enumerate() {
        let mut value = value(row, i + 1)?;
        if *name == "stream" {
            value = json!(value.as_i64().map(|n| n != 0));
        }
        map.insert((*name).into(), value);
    }
    Ok(Value::Object(map))
}

/// A column as JSON, whatever its stored type.
fn value(row: &Row<'_>, i: usize) -> rusqlite::Result<Value> {
    Ok(match row.get_ref(i)? {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => json!(n),
        ValueRef::Real(x) => json!(x),
        ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => json!(String::from_utf8_lossy(b)),
    })
}

/// One whole record, by its id or its `RequestId` (a UUIDv7, whose time says where to look); `None`: no such
/// record.
pub fn detail(files: &Files, id: &str) -> Result<Option<Value>, QueryError> {
    if let Some(id) = RecordId::parse(id) {
        return by_row(files, id);
    }
    let Ok(uuid) = uuid::Uuid::parse_str(id) else {
        return Err(QueryError::BadRequest(
            "a record id is YYYYMM-<row> or a request's UUID".into(),
        ));
    };
    let Some(ms) = uuid.get_timestamp().map(|t| t.to_unix()) else {
        return Ok(None);
    };
    let at = i64::try_from(ms.0).unwrap_or(0) * 1000 + i64::from(ms.1 / 1_000_000);
    let window = |delta: i64| Local.timestamp_millis_opt(at + delta).single();
    let (Some(lower), Some(upper)) = (window(-5_000), window(5_000)) else {
        return Ok(None);
    };
    let mut months = vec![Month::of(&lower.fixed_offset())];
    let last = Month::of(&upper.fixed_offset());
    if last != months[0] {
        months.push(last);
    }
    for month in months {
        let Some(file) = files.open(month)? else {
            continue;
        };
        let row = find_request_id(
            &file.connection,
            &lower,
            &upper,
            &uuid.hyphenated().to_string(),
        )
        .map_err(QueryError::read(&file.path))?;
        if let Some(row) = row {
            return by_row(files, RecordId { month, row });
        }
    }
    Ok(None)
}

fn find_request_id(
    c: &Connection,
    lower: &DateTime<Local>,
    upper: &DateTime<Local>,
    id: &str,
) -> rusqlite::Result<Option<i64>> {
    let columns = schema::column_names(c)?;
    if !columns.contains(&"requestid".to_string()) {
        return Ok(None);
    }
    let sql = "SELECT id FROM records WHERE Time >= ?1 AND Time < ?2 AND RequestId = ?3";
    let format = |t: &DateTime<Local>| t.format("%Y-%m-%dT%H:%M:%S").to_string();
    c.query_row(sql, [format(lower), format(upper), id.to_string()], |r| {
        r.get(0)
    })
    .optional()
}

fn by_row(files: &Files, id: RecordId) -> Result<Option<Value>, QueryError> {
    let Some(file) = files.open(id.month)? else {
        return Ok(None);
    };
    let read = || -> rusqlite::Result<Option<Value>> {
        let c = &file.connection;
        let columns = schema::column_names(c)?;
        if columns.is_empty() {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {}, {} FROM records WHERE id = ?1",
            select_list(SUMMARY, &columns),
            select_list(DETAIL, &columns)
        );
        c.query_row(&sql, [id.row], |row| {
            let mut v = summary(row, id.month)?;
            if let Value::Object(map) = &mut v {
                map.remove("row");
                let names = [
                    "ip",
                    "type",
                    "tool",
                    "multimodal",
                    "headers",
                    "request",
                    "response",
                    "upstream_model",
                    "affinity_key",
                    "node",
                    "usage_estimated",
                ];
                for (i, name) in names.iter().enumerate() {
                    let mut value = value(row, SUMMARY.len() + i)?;
                    if matches!(*name, "tool" | "multimodal" | "usage_estimated") {
                        value = json!(value.as_i64().map(|n| n != 0));
                    }
                    map.insert((*name).into(), value);
                }
            }
            Ok(v)
        })
        .optional()
    };
    read().map_err(QueryError::read(&file.path))
}

#[cfg(test)]
mod tests;
