//! Tests of the usage report: ranges, grouping and sums over files written by `usage::Store`, percentiles, output shapes.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use chrono::DateTime;
use rusqlite::Connection;

use super::*;
use crate::usage::{Store, TokenUsage, UsageRecord};

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn range(from: &str, to: &str) -> Range {
    Range {
        from: date(from),
        to: date(to),
    }
}

/// A successful record of `model` at `time` (RFC 3339) with these token counts and latency.
fn record(time: &str, model: &str, prompt: i64, completion: i64, latency_ms: u64) -> UsageRecord {
    UsageRecord {
        time: DateTime::parse_from_rfc3339(time).unwrap(),
        ip: "10.0.0.1".into(),
        model: model.into(),
        kind: "chat.completions".into(),
        tokens: TokenUsage {
            prompt: Some(prompt),
            completion: Some(completion),
            total: Some(prompt + completion),
            cached: None,
            reasoning: None,
            cache_write: None,
        },
        tool: false,
        multimodal: false,
        headers: "{}".into(),
        request: Some("{\"big\":\"body\"}".into()),
        response: Some("{}".into()),
        backend: Some("openai".into()),
        upstream_model: None,
        stream: false,
        status: 200,
        latency_ms,
        first_token_ms: None,
        attempts: 1,
        error: None,
        key_name: None,
        cost_usd: None,
        usage_estimated: false,
        affinity_key: None,
        request_id: None,
        node: None,
    }
}

fn write(dir: &Path, records: &[UsageRecord]) {
    Store::new(dir).write(records).unwrap();
}

fn stats_of<'r>(report: &'r Report, key: &[Option<&str>]) -> &'r Stats {
    let key: Vec<Option<String>> = key.iter().map(|k| k.map(String::from)).collect();
    let row = report.rows.iter().find(|r| r.key == key);
    &row.unwrap_or_else(|| panic!("no row {key:?} in {:?}", report.rows))
        .stats
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn groups_and_sums_records_across_two_months() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            record("2026-10-20T10:00:00+08:00", "gpt-4o", 10, 20, 100),
            record("2026-11-02T10:00:00+08:00", "gpt-4o", 1, 2, 300),
            record("2026-11-03T10:00:00+08:00", "mini", 5, 5, 50),
        ],
    );
    let report = collect(
        &[dir.path().into()],
        range("2026-10-01", "2026-11-30"),
        &[Dim::Model],
    )
    .unwrap();
    assert_eq!(report.files.len(), 2, "{:?}", report.files);
    assert_eq!(report.rows.len(), 2);
    let gpt = stats_of(&report, &[Some("gpt-4o")]);
    assert_eq!(
        (
            gpt.requests,
            gpt.prompt_tokens,
            gpt.completion_tokens,
            gpt.total_tokens
        ),
        (2, 11, 22, 33)
    );
    assert_eq!((gpt.p50_ms, gpt.p99_ms), (Some(100), Some(300)));
    let mini = stats_of(&report, &[Some("mini")]);
    assert_eq!((mini.requests, mini.total_tokens), (1, 10));
    assert_eq!(
        (
            report.total.requests,
            report.total.total_tokens,
            report.total.p99_ms
        ),
        (3, 43, Some(300))
    );

    let ungrouped = collect(&[dir.path().into()], range("2026-10-01", "2026-11-30"), &[]).unwrap();
    assert_eq!(ungrouped.rows.len(), 1);
    assert_eq!(ungrouped.rows[0].stats, ungrouped.total);
    assert_eq!(ungrouped.total.requests, 3);
}

#[test]
fn prompt_cache_reads_and_writes_are_summed_per_group() {
    let dir = tempfile::tempdir().unwrap();
    let cached = |model: &str, read: Option<i64>, written: Option<i64>| {
        let mut r = record("2026-11-03T10:00:00+08:00", model, 100, 5, 10);
        r.tokens.cached = read;
        r.tokens.cache_write = written;
        r
    };
    write(
        dir.path(),
        &[
            cached("claude", Some(60), Some(30)),
            cached("claude", Some(40), None),
            cached("gpt", None, None),
        ],
    );
    let by = [Dim::Model];
    let report = collect(&[dir.path().into()], range("2026-11-01", "2026-11-30"), &by).unwrap();
    let claude = stats_of(&report, &[Some("claude")]);
    assert_eq!((claude.cached_tokens, claude.cache_write_tokens), (100, 30));
    let gpt = stats_of(&report, &[Some("gpt")]);
    assert_eq!((gpt.cached_tokens, gpt.cache_write_tokens), (0, 0));
    assert_eq!(
        (report.total.cached_tokens, report.total.cache_write_tokens),
        (100, 30)
    );
}

#[test]
fn groups_by_several_fields_in_the_order_given() {
    let dir = tempfile::tempdir().unwrap();
    let mut other = record("2026-11-02T11:00:00+08:00", "gpt-4o", 1, 1, 10);
    other.backend = Some("azure".into());
    let mut none = record("2026-11-03T11:00:00+08:00", "gpt-4o", 1, 1, 10);
    none.backend = None;
    write(
        dir.path(),
        &[
            record("2026-11-02T10:00:00+08:00", "gpt-4o", 1, 1, 10),
            other,
            none,
        ],
    );
    let by = [Dim::Day, Dim::Backend];
    let report = collect(&[dir.path().into()], range("2026-11-01", "2026-11-30"), &by).unwrap();
    let keys: Vec<Vec<Option<String>>> = report.rows.iter().map(|r| r.key.clone()).collect();
    let key =
        |day: &str, backend: Option<&str>| vec![Some(day.to_string()), backend.map(String::from)];
    assert_eq!(
        keys,
        [
            key("2026-11-02", Some("azure")),
            key("2026-11-02", Some("openai")),
            key("2026-11-03", None),
        ]
    );
}

#[test]
fn a_date_is_the_one_written_in_time_and_month_boundaries_are_inclusive() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            record("2026-10-31T23:59:59.999+08:00", "a", 1, 0, 1),
            // 2026-10-31 in UTC, but the gateway's local date was the 1st: counts for November.
            record("2026-11-01T00:30:00+08:00", "a", 2, 0, 1),
            record("2026-11-30T23:59:59.999-05:00", "a", 4, 0, 1),
            record("2026-12-01T00:00:00+00:00", "a", 8, 0, 1),
        ],
    );
    let dirs = [dir.path().to_path_buf()];
    let prompt = |from: &str, to: &str| {
        collect(&dirs, range(from, to), &[])
            .unwrap()
            .total
            .prompt_tokens
    };
    assert_eq!(prompt("2026-11-01", "2026-11-30"), 2 + 4);
    assert_eq!(prompt("2026-10-31", "2026-10-31"), 1);
    assert_eq!(prompt("2026-10-31", "2026-11-01"), 1 + 2);
    assert_eq!(prompt("2026-11-30", "2026-12-01"), 4 + 8);
    assert_eq!(prompt("2026-11-02", "2026-11-29"), 0);
    let month = Range::from_args(Some("2026-11"), None, None, date("2030-01-01")).unwrap();
    assert_eq!(collect(&dirs, month, &[]).unwrap().total.prompt_tokens, 6);

    let by_day = collect(&dirs, range("2026-10-01", "2026-12-31"), &[Dim::Day]).unwrap();
    let days: Vec<Option<String>> = by_day.rows.iter().map(|r| r.key[0].clone()).collect();
    let expected = ["2026-10-31", "2026-11-01", "2026-11-30", "2026-12-01"];
    assert_eq!(days, expected.map(|d| Some(d.to_string())));
}

#[test]
fn only_the_files_of_the_months_in_range_are_opened_and_none_is_created() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[record("2026-11-02T10:00:00+08:00", "a", 1, 1, 1)],
    );
    // Not a database: reading it would fail.
    std::fs::write(dir.path().join("record_202609.db"), "not sqlite").unwrap();
    let before = file_names(dir.path());

    let report = collect(&[dir.path().into()], range("2026-10-15", "2027-01-31"), &[]).unwrap();
    assert_eq!(report.files, [dir.path().join("record_202611.db")]);
    assert_eq!(report.total.requests, 1);
    // SQLite may leave the -wal/-shm companions any reader of a WAL file needs; nothing else.
    let after: Vec<String> = file_names(dir.path())
        .into_iter()
        .filter(|n| !n.ends_with("-wal") && !n.ends_with("-shm"))
        .collect();
    assert_eq!(after, before, "the report created or removed files");
    // The gateway still writes after a report.
    write(
        dir.path(),
        &[record("2026-11-03T10:00:00+08:00", "a", 1, 1, 1)],
    );
    let again = collect(&[dir.path().into()], range("2026-11-01", "2026-11-30"), &[]).unwrap();
    assert_eq!(again.total.requests, 2);

    let error = collect(&[dir.path().into()], range("2026-09-30", "2026-10-01"), &[]).unwrap_err();
    assert!(error.to_string().contains("record_202609.db"), "{error}");
}

#[test]
fn reads_while_the_gateway_writes_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::new(dir.path());
    store
        .write(&[record("2026-11-02T10:00:00+08:00", "a", 1, 1, 1)])
        .unwrap();
    let dirs = [dir.path().to_path_buf()];
    let november = range("2026-11-01", "2026-11-30");
    assert_eq!(collect(&dirs, november, &[]).unwrap().total.requests, 1);
    store
        .write(&[record("2026-11-03T10:00:00+08:00", "a", 1, 1, 1)])
        .unwrap();
    assert_eq!(collect(&dirs, november, &[]).unwrap().total.requests, 2);
}

#[test]
fn the_same_directory_twice_counts_once_and_two_directories_add_up() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write(
        a.path(),
        &[record("2026-11-02T10:00:00+08:00", "m", 1, 2, 1)],
    );
    write(
        b.path(),
        &[record("2026-11-02T10:00:00+08:00", "m", 10, 20, 1)],
    );
    let november = range("2026-11-01", "2026-11-30");
    let twice = [a.path().to_path_buf(), a.path().join(".")];
    assert_eq!(collect(&twice, november, &[]).unwrap().total.requests, 1);
    let both = [a.path().to_path_buf(), b.path().to_path_buf()];
    let total = collect(&both, november, &[]).unwrap().total;
    assert_eq!((total.requests, total.total_tokens), (2, 33));
}

#[test]
fn nearest_rank_percentiles() {
    assert_eq!(nearest_rank(&[], 50), None);
    assert_eq!(nearest_rank(&[7], 50), Some(7));
    assert_eq!(nearest_rank(&[7], 99), Some(7));
    assert_eq!(nearest_rank(&[1, 2], 50), Some(1));
    assert_eq!(nearest_rank(&[1, 2], 99), Some(2));
    let ten: Vec<u32> = (1..=10).collect();
    assert_eq!(
        (nearest_rank(&ten, 50), nearest_rank(&ten, 99)),
        (Some(5), Some(10))
    );
    let hundred: Vec<u32> = (1..=100).collect();
    assert_eq!(
        (nearest_rank(&hundred, 50), nearest_rank(&hundred, 99)),
        (Some(50), Some(99))
    );
    let thousand: Vec<u32> = (1..=1000).collect();
    assert_eq!(nearest_rank(&thousand, 99), Some(990));
}

#[test]
fn percentiles_come_from_each_groups_latencies_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<UsageRecord> = [30, 10, 50, 20, 40]
        .iter()
        .map(|ms| record("2026-11-02T10:00:00+08:00", "a", 0, 0, *ms))
        .chain([record("2026-11-02T10:00:00+08:00", "b", 0, 0, 1000)])
        .collect();
    write(dir.path(), &records);
    let report = collect(
        &[dir.path().into()],
        range("2026-11-01", "2026-11-30"),
        &[Dim::Model],
    )
    .unwrap();
    let a = stats_of(&report, &[Some("a")]);
    assert_eq!((a.p50_ms, a.p99_ms), (Some(30), Some(50)));
    // 6 values, 10 20 30 40 50 1000: rank 3 and rank 6.
    assert_eq!(
        (report.total.p50_ms, report.total.p99_ms),
        (Some(30), Some(1000))
    );
}

#[test]
fn errors_are_status_400_and_up_or_a_recorded_error_and_missing_usage_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut server_error = record("2026-11-02T10:00:00+08:00", "a", 0, 0, 1);
    server_error.status = 502;
    server_error.tokens = TokenUsage::default();
    let mut cut_stream = record("2026-11-02T10:00:00+08:00", "a", 3, 0, 1);
    cut_stream.error = Some("upstream closed mid-stream".into());
    cut_stream.tokens.completion = None;
    cut_stream.tokens.total = None;
    let mut no_usage = record("2026-11-02T10:00:00+08:00", "a", 0, 0, 1);
    no_usage.tokens = TokenUsage::default();
    let mut redirect = record("2026-11-02T10:00:00+08:00", "a", 1, 1, 1);
    redirect.status = 399;
    write(dir.path(), &[server_error, cut_stream, no_usage, redirect]);
    let total = collect(&[dir.path().into()], range("2026-11-01", "2026-11-30"), &[])
        .unwrap()
        .total;
    assert_eq!(total.requests, 4);
    assert_eq!(total.errors, 2);
    assert_eq!(total.no_usage, 2);
    assert_eq!(
        (
            total.prompt_tokens,
            total.completion_tokens,
            total.total_tokens
        ),
        (4, 1, 2)
    );
}

#[test]
fn a_file_without_the_key_name_column_groups_as_no_key() {
    let dir = tempfile::tempdir().unwrap();
    // An older file: the columns of the first versions only.
    let old = Connection::open(dir.path().join("record_202610.db")).unwrap();
    old.execute_batch(
        "CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT, Time TEXT, IP TEXT, Model TEXT,
            Type TEXT, CompletionTokens INTEGER, PromptTokens INTEGER, TotalTokens INTEGER, Tool INTEGER,
            Multimodal INTEGER, Headers TEXT, Request TEXT, Response TEXT);
         INSERT INTO records (Time, Model, CompletionTokens, PromptTokens, TotalTokens)
            VALUES ('2026-10-30 12:00:00', 'm', 2, 3, 5);",
    )
    .unwrap();
    drop(old);
    let mut keyed = record("2026-11-02T10:00:00+08:00", "m", 1, 1, 1);
    keyed.key_name = Some("team-a".into());
    write(
        dir.path(),
        &[keyed, record("2026-11-02T10:00:00+08:00", "m", 1, 1, 1)],
    );
    let by = [Dim::Key, Dim::Backend];
    let report = collect(&[dir.path().into()], range("2026-10-01", "2026-11-30"), &by).unwrap();
    let no_key = stats_of(&report, &[None, Some("openai")]);
    assert_eq!(no_key.requests, 1);
    let old_file = stats_of(&report, &[None, None]);
    assert_eq!(
        (old_file.requests, old_file.total_tokens, old_file.errors),
        (1, 5, 0)
    );
    assert_eq!((old_file.p50_ms, old_file.no_usage), (None, 0));
    assert_eq!(
        (old_file.cost_usd, old_file.estimated),
        (None, 0),
        "no cost columns: an unknown cost, not an error"
    );
    assert_eq!(
        stats_of(&report, &[Some("team-a"), Some("openai")]).requests,
        1
    );
    assert!(
        render::table(&report).contains("\n-  "),
        "{}",
        render::table(&report)
    );
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let error = collect(
        std::slice::from_ref(&missing),
        range("2026-11-01", "2026-11-30"),
        &[],
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("usage directory {} does not exist", missing.display())
    );
    assert!(!missing.exists());
}

#[test]
fn months_and_dates_are_strict() {
    let today = date("2026-11-15");
    let month = |m: &str| Range::from_args(Some(m), None, None, today);
    assert_eq!(month("2026-02").unwrap(), range("2026-02-01", "2026-02-28"));
    assert_eq!(month("2028-02").unwrap(), range("2028-02-01", "2028-02-29"));
    assert_eq!(month("2026-12").unwrap(), range("2026-12-01", "2026-12-31"));
    for bad in [
        "2026-13",
        "2026-00",
        "2026-1",
        "26-11",
        "2026/11",
        "2026-11-01",
        "",
        "２０２６-11",
    ] {
        let error = month(bad).unwrap_err();
        assert!(error.to_string().starts_with("--month"), "{bad}: {error}");
    }
    let dates = |from: &str, to: Option<&str>| Range::from_args(None, Some(from), to, today);
    assert_eq!(
        dates("2026-11-01", None).unwrap(),
        range("2026-11-01", "2026-11-15")
    );
    assert_eq!(
        dates("2026-10-30", Some("2026-11-02")).unwrap(),
        range("2026-10-30", "2026-11-02")
    );
    assert!(dates("2026-11-31", None)
        .unwrap_err()
        .to_string()
        .starts_with("--from"));
    assert!(dates("2026-11-1", None).is_err());
    assert!(dates("2026-11-01", Some("2026-11-32"))
        .unwrap_err()
        .to_string()
        .starts_with("--to"));
    let reversed = dates("2026-11-02", Some("2026-11-01")).unwrap_err();
    assert_eq!(
        reversed.to_string(),
        "--from 2026-11-02 is after --to 2026-11-01"
    );
    let default = Range::from_args(None, None, None, today).unwrap();
    assert_eq!(default, range("2026-11-01", "2026-11-30"));
}

#[test]
fn months_of_a_range_cross_years() {
    let months: Vec<String> = range("2026-11-30", "2027-02-01")
        .months()
        .map(|m| m.to_string())
        .collect();
    assert_eq!(months, ["202611", "202612", "202701", "202702"]);
}

mod cost;
mod output;
