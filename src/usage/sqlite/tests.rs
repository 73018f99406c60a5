//! Tests of the monthly SQLite files: schema, column values, months, old files, failures.
#![allow(clippy::unwrap_used)]

use rusqlite::types::Value;

use super::*;
use crate::usage::record::TokenUsage;

pub(crate) const TIME: &str = "2026-11-26T13:05:09.123+08:00";

/// A typical record with small bodies, at `time` (RFC 3339).
pub(crate) fn record(time: &str) -> UsageRecord {
    UsageRecord {
        time: DateTime::parse_from_rfc3339(time).unwrap(),
        ip: "10.0.0.1".into(),
        model: "gpt-4o".into(),
        kind: "chat.completions".into(),
        tokens: TokenUsage {
            prompt: Some(12),
            completion: Some(34),
            total: Some(46),
            cached: Some(0),
            reasoning: None,
            cache_write: None,
        },
        tool: true,
        multimodal: false,
        headers: r#"{"content-type":"application/json","authorization":"***"}"#.into(),
        request: Some(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#.into()),
        response: Some(r#"{"choices":[{"message":{"content":"hello"}}]}"#.into()),
        backend: Some("openai".into()),
        upstream_model: Some("gpt-4o-2024-08-06".into()),
        stream: false,
        status: 200,
        latency_ms: 321,
        first_token_ms: Some(45),
        attempts: 1,
        error: None,
        key_name: Some("team".into()),
        cost_usd: None,
        usage_estimated: false,
        affinity_key: None,
        request_id: None,
        node: None,
    }
}

pub(crate) fn count(path: &Path) -> i64 {
    let connection = Connection::open(path).unwrap();
    let sql = "SELECT COUNT(*) FROM records";
    connection.query_row(sql, [], |row| row.get(0)).unwrap()
}

pub(super) fn rows(path: &Path) -> Vec<Vec<Value>> {
    let connection = Connection::open(path).unwrap();
    let mut select = connection
        .prepare("SELECT * FROM records ORDER BY id")
        .unwrap();
    let n = select.column_count();
    let rows = select.query_map([], |row| (0..n).map(|i| row.get(i)).collect());
    rows.unwrap().map(Result::unwrap).collect()
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn month(year: i32, month: u32) -> Month {
    Month { year, month }
}

#[test]
fn the_table_has_the_documented_columns_and_indexes() {
    let dir = tempfile::tempdir().unwrap();
    Store::new(dir.path()).write(&[record(TIME)]).unwrap();
    let connection = Connection::open(dir.path().join("record_202611.db")).unwrap();
    let mut columns = Vec::new();
    connection
        .pragma(None, "table_info", "records", |row| {
            let name: String = row.get("name")?;
            let kind: String = row.get("type")?;
            columns.push(format!("{name} {kind}"));
            Ok(())
        })
        .unwrap();
    let expected = "id INTEGER, Time TEXT, IP TEXT, Model TEXT, Type TEXT, CompletionTokens INTEGER, \
        PromptTokens INTEGER, TotalTokens INTEGER, Tool INTEGER, Multimodal INTEGER, Headers TEXT, \
        Request TEXT, Response TEXT, Backend TEXT, UpstreamModel TEXT, Stream INTEGER, Status INTEGER, \
        LatencyMs INTEGER, FirstTokenMs INTEGER, Attempts INTEGER, CachedTokens INTEGER, \
        ReasoningTokens INTEGER, Error TEXT, KeyName TEXT, CostUsd REAL, UsageEstimated INTEGER, \
        AffinityKey TEXT, RequestId TEXT, Node TEXT, CacheWriteTokens INTEGER";
    assert_eq!(columns.join(", "), expected);
    let sql = "SELECT sql FROM sqlite_master WHERE tbl_name = 'records' ORDER BY name";
    let mut select = connection.prepare(sql).unwrap();
    let schema: Vec<String> = select
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(schema[0].contains("ON records(Model)"), "{schema:?}");
    assert!(
        schema[1].contains("ON records(Time, Model, KeyName, Backend, Status"),
        "{schema:?}"
    );
    assert_eq!(
        schema.len(),
        3,
        "the Time-only index of older versions is gone: {schema:?}"
    );
    assert!(schema[2].contains("id INTEGER PRIMARY KEY AUTOINCREMENT"));
}

#[test]
fn files_are_in_wal_mode_with_normal_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::new(dir.path());
    store.write(&[record(TIME)]).unwrap();
    let query = |c: &Connection, pragma| {
        c.pragma_query_value(None, pragma, |row| row.get::<_, Value>(0))
            .unwrap()
    };
    let ours = &store.files[&month(2026, 11)];
    assert_eq!(query(ours, "synchronous"), Value::Integer(1), "NORMAL");
    let other = Connection::open(store.path(month(2026, 11))).unwrap();
    assert_eq!(query(&other, "journal_mode"), text("wal"));
}

#[test]
fn new_files_have_8_kib_pages_and_old_files_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("record_202610.db");
    let connection = Connection::open(&old).unwrap();
    connection
        .execute_batch(
            "PRAGMA page_size=4096; CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT);",
        )
        .unwrap();
    drop(connection);
    let mut store = Store::new(dir.path());
    store
        .write(&[record("2026-10-31T12:00:00+08:00"), record(TIME)])
        .unwrap();
    let page_size = |month| {
        let connection = Connection::open(store.path(month)).unwrap();
        connection
            .pragma_query_value(None, "page_size", |row| row.get::<_, i64>(0))
            .unwrap()
    };
    assert_eq!(page_size(month(2026, 10)), 4096);
    assert_eq!(page_size(month(2026, 11)), 8192);
    assert_eq!(count(&old), 1);
}

#[test]
fn a_record_is_stored_column_by_column() {
    let dir = tempfile::tempdir().unwrap();
    Store::new(dir.path()).write(&[record(TIME)]).unwrap();
    let [row] = &rows(&dir.path().join("record_202611.db"))[..] else {
        panic!("expected one row");
    };
    let int = Value::Integer;
    let expected = [
        int(1),
        text(TIME),
        text("10.0.0.1"),
        text("gpt-4o"),
        text("chat.completions"),
        int(34),
        int(12),
        int(46),
        int(1),
        int(0),
        text(r#"{"content-type":"application/json","authorization":"***"}"#),
        text(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#),
        text(r#"{"choices":[{"message":{"content":"hello"}}]}"#),
        text("openai"),
        text("gpt-4o-2024-08-06"),
        int(0),
        int(200),
        int(321),
        int(45),
        int(1),
        int(0),
        Value::Null,
        Value::Null,
        text("team"),
        Value::Null,
        int(0),
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
    ];
    assert_eq!(row[..], expected);
}

#[test]
fn unknown_counts_are_null_and_flags_are_zero_or_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = record("2026-11-26T13:05:09Z");
    r.tokens = TokenUsage::default();
    (r.tool, r.multimodal, r.stream) = (false, true, true);
    (r.request, r.response, r.first_token_ms) = (None, None, None);
    r.error = Some("upstream timed out".into());
    (r.key_name, r.usage_estimated) = (None, true);
    Store::new(dir.path()).write(&[r]).unwrap();
    let row = &rows(&dir.path().join("record_202611.db"))[0];
    assert_eq!(row[1], text("2026-11-26T13:05:09.000+00:00"));
    for column in [5, 6, 7, 11, 12, 18, 20, 21, 23, 24] {
        assert_eq!(row[column], Value::Null, "column {column}");
    }
    let flags = [&row[8], &row[9], &row[15], &row[25]];
    let (zero, one) = (&Value::Integer(0), &Value::Integer(1));
    assert_eq!(flags, [zero, one, one, one]);
    assert_eq!(row[22], text("upstream timed out"));
}

#[test]
fn each_record_goes_to_the_file_of_its_own_month() {
    let dir = tempfile::tempdir().unwrap();
    let batch = [
        record("2026-02-01T00:00:00+08:00"),
        record("2026-01-31T23:59:59+08:00"),
        // Already February in UTC+8, but the record's own offset decides.
        record("2026-01-31T16:00:00+00:00"),
    ];
    Store::new(dir.path().join("new/db")).write(&batch).unwrap();
    assert_eq!(count(&dir.path().join("new/db/record_202601.db")), 2);
    assert_eq!(count(&dir.path().join("new/db/record_202602.db")), 1);
}

#[test]
fn only_the_two_newest_months_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::new(dir.path());
    for time in ["2026-01-10T00:00:00Z", "2026-02-10T00:00:00Z"] {
        store.write(&[record(time)]).unwrap();
    }
    assert_eq!(store.files.len(), 2);
    store.write(&[record("2026-03-10T00:00:00Z")]).unwrap();
    let open: Vec<Month> = store.files.keys().copied().collect();
    assert_eq!(open, [month(2026, 2), month(2026, 3)]);
    // A late record for a closed month is still written, and its file closed again.
    store.write(&[record("2026-01-31T23:59:00Z")]).unwrap();
    assert_eq!(store.files.len(), 2);
    assert_eq!(count(&store.path(month(2026, 1))), 2);
    assert_eq!(month(2026, 1).previous(), month(2025, 12));
}

#[test]
fn files_of_older_versions_gain_the_new_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record_202611.db");
    let old = "CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT, Time TEXT, IP TEXT, \
               Model TEXT, Type TEXT, CompletionTokens INTEGER, PromptTokens INTEGER, TotalTokens INTEGER, \
               Tool INTEGER, Multimodal INTEGER, Headers TEXT, Request TEXT, Response TEXT);
               INSERT INTO records (Time, Model) VALUES ('2026-11-01T00:00:00+08:00', 'old');";
    Connection::open(&path).unwrap().execute_batch(old).unwrap();
    Store::new(dir.path()).write(&[record(TIME)]).unwrap();
    let rows = rows(&path);
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].len(), &rows[0][3]), (30, &text("old")));
    assert_eq!((&rows[0][23], &rows[1][23]), (&Value::Null, &text("team")));
    assert_eq!((&rows[0][24], &rows[0][25]), (&Value::Null, &Value::Null));
    assert_eq!(rows[0][26], Value::Null, "AffinityKey");
    assert_eq!(
        (&rows[1][3], &rows[1][13]),
        (&text("gpt-4o"), &text("openai"))
    );
}

#[test]
fn a_file_of_the_previous_version_gains_the_cost_columns_and_its_rows_read_as_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record_202611.db");
    // The table as the version before CostUsd wrote it: every column up to KeyName.
    let before: Vec<String> = schema::COLUMNS
        .iter()
        .take_while(|c| c.name != schema::COST_USD.name)
        .map(|c| format!("{} {}", c.name, c.kind))
        .collect();
    assert_eq!(before.last().map(String::as_str), Some("KeyName TEXT"));
    let old = format!(
        "CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT, {});
         INSERT INTO records (Time, Model, KeyName) VALUES ('2026-11-01T00:00:00+08:00', 'old', 'team');",
        before.join(", ")
    );
    Connection::open(&path)
        .unwrap()
        .execute_batch(&old)
        .unwrap();
    let mut priced = record(TIME);
    (priced.cost_usd, priced.usage_estimated) = (Some(0.000_25), true);
    Store::new(dir.path()).write(&[priced]).unwrap();
    let rows = rows(&path);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (&rows[0][3], &rows[0][24], &rows[0][25]),
        (&text("old"), &Value::Null, &Value::Null)
    );
    assert_eq!(
        (&rows[1][24], &rows[1][25]),
        (&Value::Real(0.000_25), &Value::Integer(1))
    );
}

#[test]
fn a_failing_month_stops_the_batch_after_the_earlier_months_are_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::new(dir.path());
    std::fs::create_dir(store.path(month(2026, 2))).unwrap();
    let (jan, feb, mar) = (
        "2026-01-05T00:00:00Z",
        "2026-02-05T00:00:00Z",
        "2026-03-05T00:00:00Z",
    );
    let err = store
        .write(&[record(mar), record(feb), record(jan)])
        .unwrap_err();
    assert_eq!(err.month(), month(2026, 2));
    assert!(err.to_string().contains("record_202602.db"), "{err}");
    assert_eq!(count(&store.path(month(2026, 1))), 1);
    assert!(!store.path(month(2026, 3)).exists());
    std::fs::remove_dir(store.path(month(2026, 2))).unwrap();
    store.write(&[record(mar), record(feb)]).unwrap();
    assert_eq!(count(&store.path(month(2026, 2))), 1);
    assert_eq!(count(&store.path(month(2026, 3))), 1);
}

#[test]
fn an_unusable_directory_is_an_error_until_it_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "a file where a directory should be").unwrap();
    let mut store = Store::new(blocker.join("db"));
    let err = store.write(&[record(TIME)]).unwrap_err();
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err}");
    std::fs::remove_file(&blocker).unwrap();
    store.write(&[record(TIME)]).unwrap();
    assert_eq!(count(&blocker.join("db/record_202611.db")), 1);
}

#[test]
fn as_a_sink_a_failing_month_flags_the_records_of_earlier_months_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::new(dir.path());
    std::fs::create_dir(store.path(month(2026, 2))).unwrap();
    let batch = [
        record("2026-03-05T00:00:00Z"),
        record("2026-01-05T00:00:00Z"),
        record("2026-02-05T00:00:00Z"),
        record("2026-01-06T00:00:00Z"),
    ];
    let err = store.write_batch(&batch).unwrap_err();
    assert_eq!(err.committed, [false, true, false, true]);
    assert!(err.to_string().contains("record_202602.db"), "{err}");
    assert_eq!(count(&store.path(month(2026, 1))), 2);
}

#[test]
fn as_a_sink_it_answers_from_the_progress_of_the_records_month_until_the_import_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::new(dir.path());
    let spooled = |time: &str, end: u64| Spooled(record(time), end);
    store
        .write_batch(&[
            spooled(TIME, 100),
            spooled("2026-10-31T23:00:00+08:00", 200),
        ])
        .unwrap();
    let november = record(TIME);
    assert!(store.committed(&november, "s", 100).unwrap());
    assert!(
        !store.committed(&november, "s", 150).unwrap(),
        "only October's file has it up to 200"
    );
    assert!(!store.committed(&november, "other", 1).unwrap());
    // Remembered: a commit meanwhile is seen once the import has ended.
    store.write_batch(&[spooled(TIME, 300)]).unwrap();
    assert!(!store.committed(&november, "s", 150).unwrap());
    store.end_import();
    assert!(store.committed(&november, "s", 150).unwrap());
}

/// A record spooled in segment `s`, its frame ending at the offset.
struct Spooled(UsageRecord, u64);

impl Entry for Spooled {
    fn record(&self) -> &UsageRecord {
        &self.0
    }
    fn spooled(&self) -> Option<(&str, u64)> {
        Some(("s", self.1))
    }
}

mod checkpoint;
