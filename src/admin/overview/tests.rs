//! Tests of the overview: its sums equal the report's, from the rollup and from files without one.
#![allow(clippy::unwrap_used)]

use chrono::NaiveDate;
use rusqlite::Connection;

use super::*;
use crate::report::{collect, Dim};
use crate::usage::sqlite::tests::record;
use crate::usage::Store;

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, d).unwrap()
}

fn seed(dir: &std::path::Path) {
    let records: Vec<_> = (0..300)
        .map(|i| {
            let mut r = record(&format!(
                "2026-11-{:02}T{:02}:10:00.000+08:00",
                1 + i % 5,
                i % 24
            ));
            r.model = ["a", "b", "c", "d", "e", "f", "g", "h", "i"][i % 9].into();
            r.key_name = (i % 4 != 0).then(|| format!("k{}", i % 3));
            r.latency_ms = 10 + (i as u64 * 7) % 90;
            r.status = if i % 10 == 0 { 502 } else { 200 };
            r.cost_usd = Some(0.001 * (i % 3) as f64);
            r.tokens.cached = Some(i as i64 % 5);
            r.tokens.cache_write = (i % 3 == 0).then_some(11);
            r
        })
        .collect();
    Store::new(dir).write(&records).unwrap();
}

#[test]
fn the_overview_adds_up_what_the_report_does() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let files = Files {
        dir: dir.path().to_path_buf(),
    };
    let range = Range {
        from: day(2),
        to: day(4),
    };
    let o = overview(&files, range, Step::Day, By::Model).unwrap();
    let report = collect(&[dir.path().to_path_buf()], range, &[Dim::Key]).unwrap();
    let t = &report.total;
    assert_eq!(o.total.requests as u64, t.requests);
    assert_eq!(o.total.errors as u64, t.errors);
    assert_eq!(o.total.total, t.total_tokens);
    assert_eq!(o.total.cached, t.cached_tokens);
    assert_eq!(o.total.cache_write, t.cache_write_tokens);
    assert!(o.total.cache_write > 0);
    assert_eq!(cost(&o.total), t.cost_usd.map(|c| c.as_f64()));
    // Latencies below 100 ms are exact in the histograms.
    assert_eq!(o.latency.p50, t.p50_ms.map(i64::from));
    assert_eq!(o.latency.p99, t.p99_ms.map(i64::from));
    assert_eq!(o.labels, ["2026-11-02", "2026-11-03", "2026-11-04"]);
    assert_eq!(
        o.series.len(),
        SERIES + 1,
        "seven models and the other two together"
    );
    assert_eq!(o.series.last().unwrap().name, "other");
    let drawn: i64 = o.series.iter().flat_map(|s| &s.requests).sum();
    assert_eq!(drawn, o.total.requests);
    let keys: i64 = o.keys.iter().map(|(_, s)| s.requests).sum();
    assert_eq!(keys, o.total.requests);
    assert!(
        o.keys.iter().any(|(k, _)| k.is_empty()),
        "records without a key"
    );
    let hourly = overview(
        &files,
        Range {
            from: day(2),
            to: day(2),
        },
        Step::Hour,
        By::Key,
    )
    .unwrap();
    assert_eq!(hourly.labels.len(), 24);
    assert_eq!(hourly.labels[0], "2026-11-02T00");
}

#[test]
fn a_file_without_a_rollup_is_summed_from_its_records() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let files = Files {
        dir: dir.path().to_path_buf(),
    };
    let range = Range {
        from: day(1),
        to: day(30),
    };
    let before = overview(&files, range, Step::Day, By::Backend).unwrap();
    let c = Connection::open(dir.path().join("record_202611.db")).unwrap();
    c.execute_batch(
        "DROP TABLE rollup_hours; DROP TABLE rollup_ms; DROP TABLE rollup_state; \
                   DROP TABLE rollup_cache_writes;",
    )
    .unwrap();
    let after = overview(&files, range, Step::Day, By::Backend).unwrap();
    assert_eq!(after.total, before.total);
    assert_eq!(after.latency, before.latency);
    assert_eq!(after.series, before.series);
    let json = after.to_json();
    assert_eq!(json["total"]["requests"], serde_json::json!(300));
    assert_eq!(
        json["total"]["cache_write_tokens"],
        serde_json::json!(100 * 11)
    );
    assert_eq!(json["percentiles_approximate"], serde_json::json!(true));
}
