//! A batch of rows for the shared table: each monthly-file row converted to PostgreSQL's types (time, request
//! id, JSON, flags), column by column into the arrays the one INSERT binds.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rusqlite::types::ValueRef;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::schema::{self, Kind, SHIPPED};
use crate::usage::Month;

/// Where the rows of a batch come from: the node and the monthly file (for rows without a `Node` or a
/// `RequestId`, written before those columns existed).
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub node: &'a str,
    pub month: Month,
}

/// Why a row cannot be shipped at all. Names the row, never its contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("row {id}: its Time is not a date and time")]
    Time { id: i64 },
    #[error("row {id}: {got} values for {want} columns")]
    Width { id: i64, got: usize, want: usize },
}

/// The values of one column, for every row of the batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Time(Vec<DateTime<Utc>>),
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Flag(Vec<Option<bool>>),
    Real(Vec<Option<f64>>),
    Day(Vec<NaiveDate>),
}

impl Values {
    fn of(kind: Kind) -> Values {
        match kind {
            Kind::Time => Values::Time(Vec::new()),
            Kind::Text | Kind::Node | Kind::Json | Kind::RequestId => Values::Text(Vec::new()),
            Kind::Int | Kind::LocalId => Values::Int(Vec::new()),
            Kind::Flag => Values::Flag(Vec::new()),
            Kind::Real => Values::Real(Vec::new()),
            Kind::Day => Values::Day(Vec::new()),
        }
    }

    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Values::Time(v) => v,
            Values::Text(v) => v,
            Values::Int(v) => v,
            Values::Flag(v) => v,
            Values::Real(v) => v,
            Values::Day(v) => v,
        }
    }

    /// The value of row `i` alone, as a one-row column.
    fn row(&self, i: usize) -> Values {
        fn one<T: Clone>(v: &[T], i: usize) -> Vec<T> {
            v.get(i..i + 1).unwrap_or_default().to_vec()
        }
        match self {
            Values::Time(v) => Values::Time(one(v, i)),
            Values::Text(v) => Values::Text(one(v, i)),
            Values::Int(v) => Values::Int(one(v, i)),
            Values::Flag(v) => Values::Flag(one(v, i)),
            Values::Real(v) => Values::Real(one(v, i)),
            Values::Day(v) => Values::Day(one(v, i)),
        }
    }
}

/// Rows of one monthly file, in `id` order, ready for the INSERT of [`schema::insert`].
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// One per column of [`schema::columns`], each as long as the batch.
    columns: Vec<Values>,
    /// The `id` of each row.
    ids: Vec<i64>,
    /// The UTC months of the rows' times: the partitions they need.
    months: BTreeSet<Month>,
    /// Roughly the bytes the texts hold.
    bytes: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

impl Batch {
    pub fn new() -> Batch {
        Batch {
            columns: schema::columns().map(|c| Values::of(c.kind)).collect(),
            ids: Vec::new(),
            months: BTreeSet::new(),
            bytes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The `id` of each row, in order.
    pub fn ids(&self) -> &[i64] {
        &self.ids
    }

    pub fn months(&self) -> &BTreeSet<Month> {
        &self.months
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Column `i` of [`schema::columns`].
    #[cfg(test)]
    pub fn column(&self, i: usize) -> &Values {
        &self.columns[i]
    }

    /// The batch's parameters, one array per column.
    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.columns.iter().map(Values::as_sql).collect()
    }

    /// Row `i` alone, to find which row of a rejected batch PostgreSQL will not take.
    pub fn row(&self, i: usize) -> Batch {
        let columns: Vec<Values> = self.columns.iter().map(|c| c.row(i)).collect();
        let mut months = BTreeSet::new();
        if let Some(Values::Time(times)) = columns.first() {
            months.extend(times.iter().map(schema::utc_month));
        }
        Batch {
            columns,
            ids: self.ids.get(i).copied().into_iter().collect(),
            months,
            bytes: 0,
        }
    }

    /// Adds row `id` of a monthly file, `values` in the order of [`SHIPPED`] (NULL for a column the file
    /// lacks). All of its columns or, on an error, none.
    pub fn push(
        &mut self,
        id: i64,
        values: &[ValueRef<'_>],
        origin: Origin<'_>,
    ) -> Result<(), RowError> {
        if values.len() != SHIPPED.len() {
            return Err(RowError::Width {
                id,
                got: values.len(),
                want: SHIPPED.len(),
            });
        }
        let time_text = text(values[0]).unwrap_or_default();
        let time = parse_time(&time_text).ok_or(RowError::Time { id })?;
        let day = day_of(&time_text).unwrap_or_else(|| time.date_naive());
        let node = match values
            .iter()
            .zip(&SHIPPED)
            .find(|(_, c)| c.kind == Kind::Node)
        {
            Some((value, _)) => text(*value).unwrap_or_else(|| origin.node.to_owned()),
            None => origin.node.to_owned(),
        };
        for ((column, value), kind) in self
            .columns
            .iter_mut()
            .zip(values)
            .zip(SHIPPED.map(|c| c.kind))
        {
            match (column, kind) {
                (Values::Time(v), _) => v.push(time),
                (Values::Text(v), Kind::Node) => v.push(Some(node.clone())),
                (Values::Text(v), Kind::Json) => {
                    let t = text(*value).map(json);
                    self.bytes += t.as_ref().map_or(0, String::len);
                    v.push(t);
                }
                (Values::Text(v), Kind::RequestId) => {
                    let month = origin.month;
                    let parsed = text(*value).and_then(|t| Uuid::parse_str(t.trim()).ok());
                    let uuid = parsed.unwrap_or_else(|| legacy_request_id(&node, month, id));
                    v.push(Some(uuid.hyphenated().to_string()));
                }
                (Values::Text(v), _) => {
                    let t = text(*value);
                    self.bytes += t.as_ref().map_or(0, String::len);
                    v.push(t);
                }
                (Values::Int(v), _) => v.push(int(*value)),
                (Values::Flag(v), _) => v.push(int(*value).map(|n| n != 0)),
                (Values::Real(v), _) => v.push(real(*value)),
                (Values::Day(v), _) => v.push(day),
            }
        }
        for (column, extra) in self.columns[SHIPPED.len()..].iter_mut().zip(schema::EXTRA) {
            match (column, extra.kind) {
                (Values::Int(v), Kind::LocalId) => v.push(Some(id)),
                (Values::Day(v), _) => v.push(day),
                _ => {}
            }
        }
        self.ids.push(id);
        self.months.insert(schema::utc_month(&time));
        self.bytes += 256;
        Ok(())
    }
}

/// The request id of a row written before ids existed: a UUIDv8 (custom) of SHA-256 over the node, the
/// monthly file and the row's id, so shipping the row again gives it the same id (and the table's unique key
/// skips it). Deterministic as long as the node keeps its name.
pub fn legacy_request_id(node: &str, month: Month, id: i64) -> Uuid {
    let input = format!("gpt-api record\0{node}\0{month}\0{id}");
    let digest = ring::digest::digest(&ring::digest::SHA256, input.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// A `Time` as written by the gateway (RFC 3339 with its offset); older or hand-made forms without an offset
/// (`2026-11-26 13:05:09`, with `T` or fractions) are taken as UTC.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.with_timezone(&Utc));
    }
    [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
    .or_else(|| {
        let date = NaiveDate::parse_from_str(text.get(..10)?, "%Y-%m-%d").ok()?;
        (text.len() == 10)
            .then(|| date.and_hms_opt(0, 0, 0))
            .flatten()
    })
    .map(|naive| naive.and_utc())
}

/// The date written at the start of a `Time` (what the report calls a record's date).
pub fn day_of(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text.trim().get(..10)?, "%Y-%m-%d").ok()
}

/// Text whatever SQLite stored; NUL, which PostgreSQL text cannot hold, becomes U+FFFD.
fn text(value: ValueRef<'_>) -> Option<String> {
    let text = match value {
        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Integer(n) => n.to_string(),
        ValueRef::Real(x) => x.to_string(),
        ValueRef::Null => return None,
    };
    Some(if text.contains('\0') {
        text.replace('\0', "\u{fffd}")
    } else {
        text
    })
}

/// JSON PostgreSQL's jsonb takes as it is, else the text as a JSON string: jsonb refuses `\u0000`, and a
/// Headers text cut short is no JSON at all.
fn json(text: String) -> String {
    let valid = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
    if valid && !text.contains("\\u0000") {
        text
    } else {
        serde_json::Value::String(text).to_string()
    }
}

/// An integer whatever SQLite stored (as the report reads it): a real is cut, a text parsed.
fn int(value: ValueRef<'_>) -> Option<i64> {
    match value {
        ValueRef::Integer(n) => Some(n),
        ValueRef::Real(x) if x.is_finite() => Some(x as i64),
        ValueRef::Text(t) => std::str::from_utf8(t).ok()?.trim().parse().ok(),
        _ => None,
    }
}

/// A finite number whatever SQLite stored.
fn real(value: ValueRef<'_>) -> Option<f64> {
    let x = match value {
        ValueRef::Real(x) => x,
        ValueRef::Integer(n) => n as f64,
        ValueRef::Text(t) => std::str::from_utf8(t).ok()?.trim().parse().ok()?,
        ValueRef::Null | ValueRef::Blob(_) => return None,
    };
    x.is_finite().then_some(x)
}
