//! Tests of the multi-row inserts: every batch size, values that repeat or not between chunks, Time's text.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use chrono::{Duration, TimeZone};
use rusqlite::types::Value;

use super::*;
use crate::usage::sqlite::tests::{self as store_tests, record, TIME};
use crate::usage::sqlite::{Month, Store};

/// Record `i` of a sequence whose columns change at different paces: some every record, some in runs longer
/// than a chunk, some with a period that divides the chunk sizes, so a parameter's new value is sometimes the
/// one bound the execution before and sometimes not; NULLs come and go.
fn varied(start: &DateTime<FixedOffset>, i: usize) -> UsageRecord {
    let n = i64::try_from(i).unwrap();
    let mut r = record(TIME);
    r.time = *start + Duration::milliseconds(n * 7);
    r.ip = format!("10.0.0.{}", i % 3);
    r.model = ["gpt-4o", "gpt-4o-mini"][i / 40 % 2].into();
    r.kind = ["chat.completions", "embeddings"][i % 2].into();
    r.tokens.prompt = (!i.is_multiple_of(5)).then_some(n);
    r.tokens.completion = Some(n / 10);
    r.tokens.total = i.is_multiple_of(4).then_some(7);
    r.tokens.cached = Some(0);
    r.tokens.reasoning = (i / 33 % 2 == 1).then_some(n);
    (r.tool, r.multimodal, r.stream) = (
        i.is_multiple_of(3),
        i.is_multiple_of(8),
        (i / 16).is_multiple_of(2),
    );
    r.headers = format!(r#"{{"x-request":"{}"}}"#, i % 16);
    r.request = (i % 6 != 5).then(|| format!("request {i}"));
    r.response = i.is_multiple_of(2).then(|| "same response".to_string());
    r.backend = Some(["a", "b", "c"][i / 17 % 3].into());
    r.upstream_model = (i % 32 < 16).then(|| "gpt-4o-2024-08-06".into());
    r.status = [200, 200, 429, 200, 500][i % 5];
    (r.latency_ms, r.first_token_ms) = (i as u64, (!i.is_multiple_of(9)).then_some(i as u64 / 2));
    r.attempts = 1 + u32::try_from(i % 2).unwrap();
    r.error = (r.status != 200).then(|| format!("status {}", r.status));
    r.key_name = (i % 64 >= 48).then(|| "team".into());
    // Priced in runs, with a NULL now and then (a model without a price), and a cost that is not finite.
    r.cost_usd = match i % 11 {
        3 => None,
        7 => Some(f64::INFINITY),
        _ => Some([0.0, 0.000_125, 1.5][i / 13 % 3]),
    };
    r.usage_estimated = i % 7 == 2;
    r.affinity_key = (i % 5 != 1).then(|| format!("{:012x}", i % 9));
    r.request_id = (i % 6 != 4).then(|| format!("0190a5b2-0000-7000-8000-{i:012x}"));
    r.node = (i % 17 != 3).then(|| ["gw-1", "gw-2"][i / 20 % 2].into());
    r.tokens.cache_write = (i % 4 == 1).then(|| i64::try_from(i % 9).unwrap());
    r
}

/// The row `r` must become, written out column by column without the code under test.
fn expected(r: &UsageRecord) -> Vec<Value> {
    let text = |s: &str| Value::Text(s.into());
    let opt_text = |s: &Option<String>| s.as_deref().map_or(Value::Null, text);
    let int = |n: i64| Value::Integer(n);
    let opt_int = |n: Option<i64>| n.map_or(Value::Null, int);
    let unsigned = |n: Option<u64>| opt_int(n.map(|n| i64::try_from(n).unwrap()));
    let cost = r.cost_usd.filter(|usd| usd.is_finite());
    vec![
        text(&r.time.to_rfc3339_opts(SecondsFormat::Millis, false)),
        text(&r.ip),
        text(&r.model),
        text(&r.kind),
        opt_int(r.tokens.completion),
        opt_int(r.tokens.prompt),
        opt_int(r.tokens.total),
        int(r.tool.into()),
        int(r.multimodal.into()),
        text(&r.headers),
        opt_text(&r.request),
        opt_text(&r.response),
        opt_text(&r.backend),
        opt_text(&r.upstream_model),
        int(r.stream.into()),
        int(r.status.into()),
        unsigned(Some(r.latency_ms)),
        unsigned(r.first_token_ms),
        int(r.attempts.into()),
        opt_int(r.tokens.cached),
        opt_int(r.tokens.reasoning),
        opt_text(&r.error),
        opt_text(&r.key_name),
        cost.map_or(Value::Null, Value::Real),
        int(r.usage_estimated.into()),
        opt_text(&r.affinity_key),
        opt_text(&r.request_id),
        r.node.as_deref().map_or(Value::Null, text),
        opt_int(r.tokens.cache_write),
    ]
}

/// Every row of `path` without its id, in id order, after checking the ids run 1, 2, 3...
fn rows(path: &Path) -> Vec<Vec<Value>> {
    let rows = store_tests::rows(path);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], Value::Integer(i64::try_from(i).unwrap() + 1));
    }
    rows.into_iter().map(|row| row[1..].to_vec()).collect()
}

#[test]
fn batches_of_every_size_are_stored_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::new(dir.path());
    let start = DateTime::parse_from_rfc3339("2026-11-02T00:00:00+08:00").unwrap();
    // 1..=70 covers each statement size alone, in every combination, and up to eight full-size ones; the
    // batches share one connection and its cached statements, as the writer's do.
    let mut written = Vec::new();
    for size in 1..=70 {
        let batch: Vec<UsageRecord> = (written.len()..written.len() + size)
            .map(|i| varied(&start, i))
            .collect();
        store.write(&batch).unwrap();
        written.extend(batch);
    }
    let stored = rows(&store.path(Month::of(&start)));
    assert_eq!(stored.len(), written.len());
    for (i, (row, record)) in stored.iter().zip(&written).enumerate() {
        assert_eq!(*row, expected(record), "record {i}");
    }
}

#[test]
fn a_batch_spanning_two_months_is_split_in_order_in_uneven_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::new(dir.path());
    let january = DateTime::parse_from_rfc3339("2026-01-31T23:00:00+08:00").unwrap();
    let february = DateTime::parse_from_rfc3339("2026-02-01T00:00:00+08:00").unwrap();
    // Interleaved: 49 records of each month, 6 chunks of 8 and one of 1 in each file.
    let batch: Vec<UsageRecord> = (0..98)
        .map(|i| varied(if i % 15 < 7 { &january } else { &february }, i))
        .collect();
    store.write(&batch).unwrap();
    for month in [&january, &february] {
        let mine: Vec<&UsageRecord> = batch
            .iter()
            .filter(|r| Month::of(&r.time) == Month::of(month))
            .collect();
        assert_eq!(mine.len(), 49);
        let stored = rows(&store.path(Month::of(month)));
        assert_eq!(stored.len(), mine.len());
        for (row, record) in stored.iter().zip(mine) {
            assert_eq!(*row, expected(record));
        }
    }
}

#[test]
fn a_failed_batch_leaves_nothing_behind_and_its_retry_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::new(dir.path());
    let start = DateTime::parse_from_rfc3339(TIME).unwrap();
    let batch: Vec<UsageRecord> = (0..40).map(|i| varied(&start, i)).collect();
    store.write(&batch[..3]).unwrap();
    let path = store.path(Month::of(&start));
    // Another process holds the write lock: the batch fails after its statements were prepared and bound.
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    other.busy_timeout(std::time::Duration::ZERO).unwrap();
    store.files.values().for_each(|c| {
        c.busy_timeout(std::time::Duration::ZERO).unwrap();
    });
    assert!(store.write(&batch[3..]).is_err());
    other.execute_batch("ROLLBACK").unwrap();
    store.write(&batch[3..]).unwrap();
    let stored = rows(&path);
    assert_eq!(stored.len(), batch.len());
    for (row, record) in stored.iter().zip(&batch) {
        assert_eq!(*row, expected(record));
    }
}

#[test]
fn time_is_written_as_chrono_writes_it() {
    let offsets = [
        0,
        3600,
        -3600,
        8 * 3600,
        5 * 3600 + 45 * 60,
        -(3 * 3600 + 30 * 60),
        14 * 3600,
        -12 * 3600,
    ];
    // A simple linear congruential generator: many instants from 1970 to 2100, every millisecond pattern.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut instants: Vec<(i64, u32)> =
        vec![(0, 0), (-1, 999_999_999), (4_102_444_799, 999_000_000)];
    for _ in 0..5000 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let secs = i64::try_from(seed >> 33).unwrap() % 4_102_444_800;
        instants.push((secs, u32::try_from(seed % 1_000_000_000).unwrap()));
    }
    let mut out = String::new();
    for (secs, nanos) in instants {
        for offset in offsets {
            let zone = FixedOffset::east_opt(offset).unwrap();
            let time = zone.timestamp_opt(secs, nanos).unwrap();
            out.clear();
            push_time(&mut out, &time);
            assert_eq!(out, time.to_rfc3339_opts(SecondsFormat::Millis, false));
        }
    }
}

#[test]
fn unusual_times_fall_back_to_chrono() {
    let utc = FixedOffset::east_opt(0).unwrap();
    let west = FixedOffset::east_opt(-(23 * 3600 + 59 * 60)).unwrap();
    let odd = FixedOffset::east_opt(3600 + 30).unwrap();
    let times = [
        utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
        utc.with_ymd_and_hms(-1, 12, 31, 23, 59, 59).unwrap(),
        utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
        west.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
        odd.timestamp_opt(1_700_000_000, 123_456_789).unwrap(),
        // A leap second.
        utc.with_ymd_and_hms(2016, 12, 31, 23, 59, 59)
            .unwrap()
            .with_nanosecond(1_500_000_000)
            .unwrap(),
    ];
    let mut out = String::new();
    for time in times {
        out.clear();
        push_time(&mut out, &time);
        assert_eq!(out, time.to_rfc3339_opts(SecondsFormat::Millis, false));
    }
}
