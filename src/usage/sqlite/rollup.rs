//! The hourly rollup of each monthly file, kept in step with `records` in the writer's own transactions.

// The hourly rollup of each monthly file: sums per (hour, model, key, backend) and latency histograms per day, kept
// in step with `records` in the writer's own transactions, so the admin page reads a month in a few thousand rows
// instead of a million.
//
// `rollup_state.covered` is the last `records.id` the rollup holds. A batch whose rows follow it directly is summed
// from memory; otherwise (a file written by an older version, or by one during an upgrade) the rows after `covered`
// are read back and summed first, so the rollup catches up by itself.

use std::collections::HashMap;
use std::hash::BuildHasher;

use chrono::{Datelike, Timelike};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::schema::{self, int, real};
use crate::money::Usd;
use crate::usage::record::UsageRecord;
use crate::usage::sink::Entry;
pub use histogram::Histogram;

mod histogram;
mod tables;
pub use histogram::{index as bucket, value as bucket_value, BUCKETS};
pub(super) use tables::create;
pub use tables::CACHE_WRITES;

/// Sums per hour and group.
pub const HOURS: &str = "rollup_hours";
/// One histogram per day and kind ([`Histogram`] as a blob).
pub const MS: &str = "rollup_ms";
/// `covered`: the last `records.id` summed into the rollup.
pub const STATE: &str = "rollup_state";

/// The `Kind` of a histogram in [`MS`].
pub const LATENCY: i64 = 0;
pub const FIRST_TOKEN: i64 = 1;

/// The figures of a group, added up. Costs in whole nano-dollars, rounded per record as the report does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums {
    pub requests: i64,
    pub errors: i64,
    pub prompt: i64,
    pub completion: i64,
    pub total: i64,
    pub cached: i64,
    pub reasoning: i64,
    /// Input tokens written to the backend's prompt cache (part of `prompt`).
    pub cache_write: i64,
    /// Records without any token count.
    pub no_usage: i64,
    pub estimated: i64,
    pub cost_nanos: i64,
    /// Records with a known cost.
    pub costed: i64,
}

impl Sums {
    pub fn merge(&mut self, o: &Sums) {
        let pairs = [
            (&mut self.requests, o.requests),
            (&mut self.errors, o.errors),
            (&mut self.prompt, o.prompt),
            (&mut self.completion, o.completion),
            (&mut self.total, o.total),
            (&mut self.cached, o.cached),
            (&mut self.reasoning, o.reasoning),
            (&mut self.cache_write, o.cache_write),
            (&mut self.no_usage, o.no_usage),
            (&mut self.estimated, o.estimated),
            (&mut self.cost_nanos, o.cost_nanos),
            (&mut self.costed, o.costed),
        ];
        for (sum, add) in pairs {
            *sum = sum.saturating_add(add);
        }
    }

    fn add(&mut self, f: &Facts<'_>) {
        let t = f.tokens;
        self.merge(&Sums {
            requests: 1,
            errors: i64::from(f.status.is_some_and(|s| s >= 400) || f.has_error),
            prompt: t[0].unwrap_or(0),
            completion: t[1].unwrap_or(0),
            total: t[2].unwrap_or(0),
            cached: t[3].unwrap_or(0),
            reasoning: t[4].unwrap_or(0),
            cache_write: t[5].unwrap_or(0),
            no_usage: i64::from(t[0].is_none() && t[1].is_none() && t[2].is_none()),
            estimated: i64::from(f.estimated),
            cost_nanos: f.cost.map_or(0, nanos),
            costed: i64::from(f.cost.is_some()),
        });
    }
}

/// A cost as the report counts it: [`Usd::from_f64`] of the recorded value, unknown when not finite.
fn nanos(usd: f64) -> i64 {
    i64::try_from(Usd::from_f64(usd).0).unwrap_or(i64::MAX)
}

/// One record as the rollup sees it. Empty text stands for a missing model, key or backend (as in the report).
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// `YYYY-MM-DDTHH`: the first 13 characters of its Time; the day is the first 10.
    hour: &'a str,
    model: &'a str,
    key: &'a str,
    backend: &'a str,
    /// Prompt, completion, total, cached, reasoning, cache writes.
    tokens: [Option<i64>; 6],
    status: Option<i64>,
    has_error: bool,
    latency_ms: Option<i64>,
    first_token_ms: Option<i64>,
    estimated: bool,
    cost: Option<f64>,
}

impl Facts<'_> {
    /// `YYYY-MM-DDTHH`.
    pub fn hour(&self) -> &str {
        self.hour
    }
}

/// The group of a row of [`HOURS`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Group {
    pub hour: String,
    pub model: String,
    pub key: String,
    pub backend: String,
}

/// Sums and histogram counts not yet written: one batch's, or a catch-up's.
#[derive(Default)]
pub struct Delta {
    /// Groups by the hash of their borrowed values, so a record only allocates when it starts a group.
    groups: HashMap<u64, Vec<(Group, Sums)>>,
    hasher: std::collections::hash_map::RandomState,
    /// (day, kind, counts): a handful per batch.
    ms: Vec<(String, i64, Histogram)>,
}

impl Delta {
    pub fn add(&mut self, f: &Facts<'_>) {
        let hash = self.hasher.hash_one((f.hour, f.model, f.key, f.backend));
        let slot = self.groups.entry(hash).or_default();
        let same = |g: &Group| {
            g.hour == f.hour && g.model == f.model && g.key == f.key && g.backend == f.backend
        };
        match slot.iter_mut().find(|(g, _)| same(g)) {
            Some((_, sums)) => sums.add(f),
            None => {
                let group = Group {
                    hour: f.hour.to_owned(),
                    model: f.model.to_owned(),
                    key: f.key.to_owned(),
                    backend: f.backend.to_owned(),
                };
                let mut sums = Sums::default();
                sums.add(f);
                slot.push((group, sums));
            }
        }
        let day = f.hour.get(..10).unwrap_or(f.hour);
        for (kind, ms) in [(LATENCY, f.latency_ms), (FIRST_TOKEN, f.first_token_ms)] {
            if let Some(ms) = ms {
                self.histogram(day, kind).add(ms);
            }
        }
    }

    fn histogram(&mut self, day: &str, kind: i64) -> &mut Histogram {
        let at = match self.ms.iter().position(|(d, k, _)| d == day && *k == kind) {
            Some(at) => at,
            None => {
                self.ms.push((day.to_owned(), kind, Histogram::default()));
                self.ms.len() - 1
            }
        };
        &mut self.ms[at].2
    }

    fn write(&self, connection: &Connection, covered: i64) -> rusqlite::Result<()> {
        let mut hours = connection.prepare_cached(UPSERT_HOUR)?;
        for (g, s) in self.groups.values().flatten() {
            hours.execute(params![
                g.hour,
                g.model,
                g.key,
                g.backend,
                s.requests,
                s.errors,
                s.prompt,
                s.completion,
                s.total,
                s.cached,
                s.reasoning,
                s.no_usage,
                s.estimated,
                s.cost_nanos,
                s.costed
            ])?;
            if s.cache_write != 0 {
                let mut writes = connection.prepare_cached(UPSERT_CACHE_WRITES)?;
                writes.execute(params![g.hour, g.model, g.key, g.backend, s.cache_write])?;
            }
        }
        for (day, kind, counts) in &self.ms {
            let mut select = connection.prepare_cached(SELECT_MS)?;
            let stored: Option<Vec<u8>> = select
                .query_row(params![day, kind], |r| r.get(0))
                .optional()?;
            let mut sum = stored.map_or_else(Histogram::default, |b| Histogram::from_blob(&b));
            sum.merge(counts);
            let mut upsert = connection.prepare_cached(UPSERT_MS)?;
            upsert.execute(params![day, kind, sum.to_blob()])?;
        }
        connection.execute(SET_COVERED, [covered])?;
        Ok(())
    }
}

const UPSERT_HOUR: &str = "INSERT INTO rollup_hours VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, \
    ?11, ?12, ?13, ?14, ?15) ON CONFLICT (Hour, Model, KeyName, Backend) DO UPDATE SET \
    Requests = Requests + excluded.Requests, Errors = Errors + excluded.Errors, \
    PromptTokens = PromptTokens + excluded.PromptTokens, \
    CompletionTokens = CompletionTokens + excluded.CompletionTokens, \
    TotalTokens = TotalTokens + excluded.TotalTokens, CachedTokens = CachedTokens + excluded.CachedTokens, \
    ReasoningTokens = ReasoningTokens + excluded.ReasoningTokens, NoUsage = NoUsage + excluded.NoUsage, \
    Estimated = Estimated + excluded.Estimated, CostNanos = CostNanos + excluded.CostNanos, \
    Costed = Costed + excluded.Costed";
const UPSERT_CACHE_WRITES: &str = "INSERT INTO rollup_cache_writes VALUES (?1, ?2, ?3, ?4, ?5) \
    ON CONFLICT (Hour, Model, KeyName, Backend) DO UPDATE SET \
    CacheWriteTokens = CacheWriteTokens + excluded.CacheWriteTokens";
const SELECT_MS: &str = "SELECT Counts FROM rollup_ms WHERE Day = ?1 AND Kind = ?2";
const UPSERT_MS: &str = "INSERT INTO rollup_ms (Day, Kind, Counts) VALUES (?1, ?2, ?3) \
    ON CONFLICT (Day, Kind) DO UPDATE SET Counts = excluded.Counts";
const SET_COVERED: &str = "INSERT INTO rollup_state VALUES ('covered', ?1) \
    ON CONFLICT (Name) DO UPDATE SET Value = excluded.Value";
pub const COVERED: &str = "SELECT Value FROM rollup_state WHERE Name = 'covered'";

/// The last id in `records` (0 when empty).
fn last_id(connection: &Connection) -> rusqlite::Result<i64> {
    connection.query_row("SELECT ifnull(max(id), 0) FROM records", [], |r| r.get(0))
}

/// The last id the rollup holds (0: nothing yet).
pub fn covered(connection: &Connection) -> rusqlite::Result<i64> {
    Ok(connection
        .query_row(COVERED, [], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// After a batch's rows are inserted, in the same transaction (so nothing is read before the write lock is
/// held: a read first would risk SQLITE_BUSY_SNAPSHOT with two writers during an upgrade): adds them to the
/// rollup, summed from memory when they follow what it holds (a batch's rows have consecutive ids, the file being
/// locked), else read back with everything after what it holds.
pub(super) fn after_insert<R: Entry>(
    connection: &Connection,
    records: &[R],
) -> rusqlite::Result<()> {
    let covered = covered(connection)?;
    let last = last_id(connection)?;
    let mut delta = Delta::default();
    if covered == last - records.len() as i64 {
        let mut hour = [0u8; 13];
        for r in records {
            let r = r.record();
            delta.add(&facts_of(r, hour_text(r, &mut hour)));
        }
    } else {
        read_after(connection, covered, &mut |f| delta.add(f))?;
    }
    delta.write(connection, last)
}

/// `YYYY-MM-DDTHH` of the record's local time, as the start of its Time text.
fn hour_text<'b>(r: &UsageRecord, buf: &'b mut [u8; 13]) -> &'b str {
    let local = r.time.naive_local();
    let year = u32::try_from(local.year()).unwrap_or(0).min(9999);
    let parts = [
        (0..4, year),
        (5..7, local.month()),
        (8..10, local.day()),
        (11..13, local.hour()),
    ];
    buf.copy_from_slice(b"0000-00-00T00");
    for (range, mut n) in parts {
        for digit in buf[range].iter_mut().rev() {
            *digit = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    std::str::from_utf8(buf).unwrap_or("")
}

fn facts_of<'a>(r: &'a UsageRecord, hour: &'a str) -> Facts<'a> {
    let t = &r.tokens;
    Facts {
        hour,
        model: &r.model,
        key: r.key_name.as_deref().unwrap_or(""),
        backend: r.backend.as_deref().unwrap_or(""),
        tokens: [
            t.prompt,
            t.completion,
            t.total,
            t.cached,
            t.reasoning,
            t.cache_write,
        ],
        status: Some(i64::from(r.status)),
        has_error: r.error.is_some(),
        latency_ms: Some(i64::try_from(r.latency_ms).unwrap_or(i64::MAX)),
        first_token_ms: r
            .first_token_ms
            .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX)),
        estimated: r.usage_estimated,
        cost: r.cost_usd.filter(|c| c.is_finite()),
    }
}

/// The columns [`read_after`] reads, in [`facts_row`] order; a column an older file lacks reads as NULL.
fn select_after(columns: &[String]) -> String {
    use schema::*;
    let list = [
        TIME,
        MODEL,
        KEY_NAME,
        BACKEND,
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
        TOTAL_TOKENS,
        CACHED_TOKENS,
        REASONING_TOKENS,
        STATUS,
        ERROR,
        LATENCY_MS,
        FIRST_TOKEN_MS,
        USAGE_ESTIMATED,
        COST_USD,
        CACHE_WRITE_TOKENS,
    ];
    let names: Vec<String> = list
        .iter()
        .map(|c| match columns.contains(&c.name.to_ascii_lowercase()) {
            true if c.name == ERROR.name => format!("{} IS NOT NULL", c.name),
            true => c.name.to_string(),
            false => "NULL".to_string(),
        })
        .collect();
    format!("SELECT {} FROM records WHERE id > ?1", names.join(", "))
}

/// Hands every record after `after` to `add`, as the rollup sees it (also the admin page's way to sum the
/// tail of a file whose rollup is behind, or a file without one).
pub fn read_after(
    connection: &Connection,
    after: i64,
    add: &mut dyn FnMut(&Facts<'_>),
) -> rusqlite::Result<()> {
    let columns = schema::column_names(connection)?;
    if columns.is_empty() {
        return Ok(());
    }
    let mut select = connection.prepare(&select_after(&columns))?;
    let mut rows = select.query([after])?;
    while let Some(row) = rows.next()? {
        facts_row(row, add)?;
    }
    Ok(())
}

fn facts_row(row: &Row<'_>, add: &mut dyn FnMut(&Facts<'_>)) -> rusqlite::Result<()> {
    let text = |i: usize| -> rusqlite::Result<&str> {
        Ok(match row.get_ref(i)? {
            ValueRef::Text(t) => std::str::from_utf8(t).unwrap_or(""),
            _ => "",
        })
    };
    let time = text(0)?;
    let hour = time.get(..13).unwrap_or(time);
    let int = |i| int(row, i);
    let facts = Facts {
        hour,
        model: text(1)?,
        key: text(2)?,
        backend: text(3)?,
        tokens: [int(4)?, int(5)?, int(6)?, int(7)?, int(8)?, int(15)?],
        status: int(9)?,
        has_error: int(10)?.is_some_and(|n| n != 0),
        latency_ms: int(11)?,
        first_token_ms: int(12)?,
        estimated: int(13)?.is_some_and(|n| n != 0),
        cost: real(row, 14)?.filter(|x| x.is_finite()),
    };
    add(&facts);
    Ok(())
}

/// A rollup summed in memory (the admin page's, from the tail of a file or a file without a rollup).
impl Delta {
    /// Every group with its sums.
    pub fn groups(&self) -> impl Iterator<Item = &(Group, Sums)> {
        self.groups.values().flatten()
    }

    /// Every (day, kind) with its histogram.
    pub fn histograms(&self) -> impl Iterator<Item = &(String, i64, Histogram)> {
        self.ms.iter()
    }
}

#[cfg(test)]
mod tests;
