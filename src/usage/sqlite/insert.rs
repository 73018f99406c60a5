//! The batched INSERT of usage records: multi-row statements, values bound straight from the records.

use chrono::{DateTime, Datelike, FixedOffset, SecondsFormat, Timelike};
use rusqlite::{Connection, Statement};

use super::rollup;
use super::schema::{COLUMNS, TABLE};
use crate::usage::pace;
use crate::usage::record::UsageRecord;
use crate::usage::sink::Entry;

/// Rows per INSERT statement, largest first, each half the one before: a batch goes in with as many
/// statements of the largest size as fit, then at most one of each smaller size. SQLite's work per statement
/// (opening the table and index cursors, reading and writing `sqlite_sequence` for AUTOINCREMENT, resetting)
/// is shared by its rows. Eight measured best: with 16 or 32 rows bound at once, the copies SQLite makes of
/// the bound texts outgrow its per-connection lookaside memory and each becomes a malloc, which costs more
/// than the statements saved.
const ROWS: [usize; 4] = [8, 4, 2, 1];

/// The INSERT statement of each size in [`ROWS`], prepared once per connection (`prepare_cached`).
pub(super) struct Inserts {
    sql: [String; ROWS.len()],
}

impl Inserts {
    pub(super) fn new() -> Inserts {
        let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
        let row = format!("({})", vec!["?"; COLUMNS.len()].join(", "));
        Inserts {
            sql: ROWS.map(|rows| {
                format!(
                    "INSERT INTO {TABLE} ({}) VALUES {}",
                    names.join(", "),
                    vec![row.as_str(); rows].join(", ")
                )
            }),
        }
    }

    /// Inserts `records`, in order, in one transaction: all of them or, on an error, none. The same transaction
    /// raises the `spool_progress` of each spool segment they come from to their last frame's end.
    pub(super) fn write<R: Entry>(
        &self,
        connection: &mut Connection,
        records: &[R],
    ) -> rusqlite::Result<()> {
        let transaction = connection.transaction()?;
        // Reused for every record's Time text, which SQLite copies when it is bound.
        let mut time = String::with_capacity(40);
        let mut rest = records;
        for (&rows, sql) in ROWS.iter().zip(&self.sql) {
            if rest.len() < rows {
                continue;
            }
            let mut insert = transaction.prepare_cached(sql)?;
            let chunks = rest.chunks_exact(rows);
            rest = chunks.remainder();
            // What the statement's parameters hold: nothing known before its first execution here.
            let mut bound: Option<&[R]> = None;
            for chunk in chunks {
                for (row, record) in chunk.iter().enumerate() {
                    let was = bound.map(|b| b[row].record());
                    bind(
                        &mut insert,
                        row * COLUMNS.len(),
                        record.record(),
                        was,
                        &mut time,
                    )?;
                }
                insert.raw_execute()?;
                bound = Some(chunk);
                pace::step();
            }
        }
        // The rollup of these rows commits with them (`rollup.rs`).
        rollup::after_insert(&transaction, records)?;
        pace::step();
        let mut progress = transaction.prepare_cached(PROGRESS)?;
        for (segment, end) in spool_ends(records) {
            progress.execute(rusqlite::params![segment, sql_int(end)])?;
        }
        drop(progress);
        transaction.commit()
    }
}

const PROGRESS: &str = "INSERT INTO spool_progress (Segment, Offset) VALUES (?1, ?2) \
                        ON CONFLICT (Segment) DO UPDATE SET Offset = max(Offset, excluded.Offset)";

/// The last frame's end of each spool segment among `records` (a handful: one per shard that queued them).
fn spool_ends<R: Entry>(records: &[R]) -> Vec<(&str, u64)> {
    let mut ends: Vec<(&str, u64)> = Vec::new();
    for (segment, end) in records.iter().filter_map(|r| r.spooled()) {
        match ends.iter_mut().find(|(s, _)| *s == segment) {
            Some((_, last)) => *last = (*last).max(end),
            None => ends.push((segment, end)),
        }
    }
    ends
}

/// Binds `r` to the parameters after the first `before`, in the order of [`COLUMNS`]. `was` is the record
/// bound to the same parameters by the statement's previous execution: SQLite keeps bindings across executions,
/// and most columns (Model, Type, Backend, Status, the flags...) repeat from one request to the next, so only
/// the values that differ are bound again. Each text bind costs SQLite an allocation and a copy.
/// A cost that is not finite is stored as NULL (unknown), so that it cannot turn every sum over it into `inf`.
fn bind(
    insert: &mut Statement<'_>,
    before: usize,
    r: &UsageRecord,
    was: Option<&UsageRecord>,
    time: &mut String,
) -> rusqlite::Result<()> {
    time.clear();
    push_time(time, &r.time);
    let mut index = before + 1;
    insert.raw_bind_parameter(index, time.as_str())?;
    // Each value is written once, as an expression of `r`, evaluated for the record and, with `r` bound
    // to it (the identifier comes from here, for macro hygiene), for `was`.
    macro_rules! bind_changed {
        ($r:ident; $($value:expr),+ $(,)?) => {$(
            index += 1;
            let value = $value;
            if was.map_or(true, |$r| value != $value) {
                insert.raw_bind_parameter(index, value)?;
            }
        )+};
    }
    bind_changed!(
        r;
        r.ip.as_str(),
        r.model.as_str(),
        r.kind.as_str(),
        r.tokens.completion,
        r.tokens.prompt,
        r.tokens.total,
        r.tool,
        r.multimodal,
        r.headers.as_str(),
        r.request.as_deref(),
        r.response.as_deref(),
        r.backend.as_deref(),
        r.upstream_model.as_deref(),
        r.stream,
        r.status,
        sql_int(r.latency_ms),
        r.first_token_ms.map(sql_int),
        r.attempts,
        r.tokens.cached,
        r.tokens.reasoning,
        r.error.as_deref(),
        r.key_name.as_deref(),
        r.cost_usd.filter(|usd| usd.is_finite()),
        r.usage_estimated,
        r.affinity_key.as_deref(),
        r.request_id.as_deref(),
        r.node.as_deref(),
        r.tokens.cache_write,
    );
    debug_assert_eq!(index - before, COLUMNS.len(), "one value per column");
    Ok(())
}

/// SQLite integers are signed 64-bit.
fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Appends the `Time` column's text: RFC 3339 with milliseconds and a numeric offset
/// (`2026-11-26T13:05:09.123+08:00`), exactly what `to_rfc3339_opts(SecondsFormat::Millis, false)` writes,
/// without chrono's general formatter and a new String for every record.
fn push_time(out: &mut String, time: &DateTime<FixedOffset>) {
    let local = time.naive_local();
    let offset = time.offset().local_minus_utc();
    let nano = local.nanosecond();
    let year = u32::try_from(local.year()).unwrap_or(u32::MAX);
    // Years beyond four digits, leap seconds and offsets with seconds never come from the clock: chrono's
    // own formatting keeps them right.
    if year > 9999 || nano >= 1_000_000_000 || offset % 60 != 0 {
        out.push_str(&time.to_rfc3339_opts(SecondsFormat::Millis, false));
        return;
    }
    let offset_minutes = offset.unsigned_abs() / 60;
    let mut text = *b"0000-00-00T00:00:00.000+00:00";
    put_digits(&mut text[0..4], year);
    put_digits(&mut text[5..7], local.month());
    put_digits(&mut text[8..10], local.day());
    put_digits(&mut text[11..13], local.hour());
    put_digits(&mut text[14..16], local.minute());
    put_digits(&mut text[17..19], local.second());
    put_digits(&mut text[20..23], nano / 1_000_000);
    if offset < 0 {
        text[23] = b'-';
    }
    put_digits(&mut text[24..26], offset_minutes / 60);
    put_digits(&mut text[27..29], offset_minutes % 60);
    match std::str::from_utf8(&text) {
        Ok(text) => out.push_str(text),
        Err(_) => out.push_str(&time.to_rfc3339_opts(SecondsFormat::Millis, false)),
    }
}

/// Writes the last `digits.len()` decimal digits of `n` into `digits`, zero-padded.
fn put_digits(digits: &mut [u8], mut n: u32) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

#[cfg(test)]
mod tests;
