//! Tests of the rollup: its sums equal the report's over the same records, written in batches or caught up.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use rusqlite::Connection;

use super::*;
use crate::usage::sqlite::tests::record;
use crate::usage::Store;

/// Records that vary every figure: models, keys, backends (some missing), statuses, errors, costs, hours.
fn records(n: usize) -> Vec<UsageRecord> {
    (0..n)
        .map(|i| {
            let hour = 8 + i % 3;
            let mut r = record(&format!(
                "2026-11-{:02}T{hour:02}:05:09.123+08:00",
                1 + i % 2
            ));
            r.model = ["gpt-4o", "o3", "<b>x</b>"][i % 3].into();
            r.key_name = [Some("a"), None, Some("b"), Some("a")][i % 4].map(Into::into);
            r.backend = [Some("one"), Some("two"), None][i % 3].map(Into::into);
            r.status = [200, 200, 500, 429, 200][i % 5];
            r.error = (i % 7 == 0).then(|| "boom".into());
            r.tokens.prompt = (i % 6 != 0).then_some(i as i64);
            r.tokens.completion = (i % 6 != 0).then_some(2 * i as i64);
            r.tokens.total = (i % 6 != 0).then_some(3 * i as i64);
            r.tokens.cached = Some(1);
            r.tokens.reasoning = (i % 2 == 0).then_some(5);
            r.tokens.cache_write = (i % 4 == 0).then_some(7 + i as i64);
            r.cost_usd = [Some(0.0012345), None, Some(1e-10), Some(f64::NAN)][i % 4];
            r.latency_ms = (i as u64 * 37) % 5000;
            r.first_token_ms = (i % 3 != 0).then_some(i as u64 % 900);
            r.usage_estimated = i % 5 == 1;
            r
        })
        .collect()
}

fn rollup_rows(path: &Path) -> (Sums, i64, i64) {
    let c = Connection::open(path).unwrap();
    let mut total = Sums::default();
    let mut select = c.prepare("SELECT * FROM rollup_hours").unwrap();
    let mut rows = select.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        let n = |i| r.get::<_, i64>(i).unwrap();
        total.merge(&Sums {
            requests: n(4),
            errors: n(5),
            prompt: n(6),
            completion: n(7),
            total: n(8),
            cached: n(9),
            reasoning: n(10),
            no_usage: n(11),
            estimated: n(12),
            cost_nanos: n(13),
            costed: n(14),
            cache_write: 0,
        });
    }
    let mut select = c
        .prepare("SELECT CacheWriteTokens FROM rollup_cache_writes")
        .unwrap();
    for n in select.query_map([], |r| r.get::<_, i64>(0)).unwrap() {
        total.cache_write += n.unwrap();
    }
    let mut select = c
        .prepare("SELECT Counts FROM rollup_ms WHERE Kind = 0")
        .unwrap();
    let blobs = select.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
    let latencies = blobs
        .map(|b| {
            Histogram::from_blob(&b.unwrap())
                .counts()
                .map(|(_, n)| i64::from(n))
                .sum::<i64>()
        })
        .sum();
    (total, latencies, covered(&c).unwrap())
}

/// The same sums, straight from every record in memory.
fn expected(records: &[UsageRecord]) -> Sums {
    let mut sums = Sums::default();
    let mut hour = [0u8; 13];
    for r in records {
        sums.add(&facts_of(r, hour_text(r, &mut hour)));
    }
    sums
}

#[test]
fn batches_add_up_to_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::new(dir.path());
    let all = records(100);
    for batch in all.chunks(7) {
        store.write(batch).unwrap();
    }
    let path = dir.path().join("record_202611.db");
    let (sums, latencies, covered) = rollup_rows(&path);
    assert_eq!(sums, expected(&all));
    assert_eq!(sums.requests, 100);
    assert_eq!(latencies, 100);
    assert_eq!(covered, 100);
    let c = Connection::open(&path).unwrap();
    let groups: i64 = c
        .query_row(
            "SELECT count(*) FROM rollup_hours WHERE Hour = '2026-11-01T08'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(groups > 1, "grouped by model, key and backend: {groups}");
}

#[test]
fn a_rollup_that_is_behind_catches_up_from_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::new(dir.path());
    let all = records(60);
    store.write(&all[..20]).unwrap();
    let path = dir.path().join("record_202611.db");
    // Rows written by an older version, which knows no rollup.
    let c = Connection::open(&path).unwrap();
    c.execute_batch(
        "INSERT INTO records (Time, Model, KeyName, Backend, PromptTokens, Status, LatencyMs) \
         SELECT Time, Model, KeyName, Backend, PromptTokens, Status, LatencyMs FROM records;",
    )
    .unwrap();
    drop(c);
    store.write(&all[20..]).unwrap();
    let (sums, latencies, covered) = rollup_rows(&path);
    assert_eq!(covered, 80);
    assert_eq!(latencies, 80);
    let mut want = expected(&all);
    let copies = Sums {
        cached: 0,
        reasoning: 0,
        cache_write: 0,
        completion: 0,
        total: 0,
        cost_nanos: 0,
        costed: 0,
        estimated: 0,
        ..expected(&all[..20])
    };
    want.merge(&Sums {
        // A copy has a prompt count only: it is not a record without usage unless the prompt was missing.
        no_usage: all[..20]
            .iter()
            .filter(|r| r.tokens.prompt.is_none())
            .count() as i64,
        errors: all[..20].iter().filter(|r| r.status >= 400).count() as i64,
        ..copies
    });
    assert_eq!(sums, want);
}

#[test]
fn hours_are_the_start_of_the_time_text() {
    let r = record("2026-01-02T03:04:05.678-05:00");
    let mut buf = [0u8; 13];
    assert_eq!(hour_text(&r, &mut buf), "2026-01-02T03");
}

#[test]
fn a_rollup_without_cache_writes_gets_them_from_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let all = records(40);
    Store::new(dir.path()).write(&all[..25]).unwrap();
    let path = dir.path().join("record_202611.db");
    // A file whose rollup was written before cache writes had a table of their own.
    let c = Connection::open(&path).unwrap();
    c.execute_batch("DROP TABLE rollup_cache_writes").unwrap();
    drop(c);
    Store::new(dir.path()).write(&all[25..]).unwrap();
    let (sums, _, covered) = rollup_rows(&path);
    assert_eq!(covered, 40);
    assert_eq!(sums, expected(&all));
    assert!(sums.cache_write > 0);
}
