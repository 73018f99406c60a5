//! Tests of the spend read-back: the local day's and month's sums per key, only the current month's file, old
//! and missing files, a file the gateway is writing.
#![allow(clippy::unwrap_used)]

use chrono::TimeZone;

use super::*;
use crate::usage::sqlite::tests::record;
use crate::usage::sqlite::Store;
use crate::usage::UsageRecord;

fn priced(time: &str, key: Option<&str>, cost: Option<f64>) -> UsageRecord {
    let mut r = record(time);
    r.key_name = key.map(String::from);
    r.cost_usd = cost;
    r
}

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn spend(day_usd: f64, month_usd: f64) -> Spend {
    Spend { day_usd, month_usd }
}

/// Two months of records around the local day 2026-12-15, in several offsets (each record's own local date
/// counts, as written at the start of its Time). Quarters, halves and powers of two: sums exact in binary.
fn seed(dir: &Path) -> Store {
    let mut store = Store::new(dir);
    store
        .write(&[
            // November: another month, another file.
            priced("2026-11-30T23:59:59.999+08:00", Some("a"), Some(64.0)),
            priced("2026-12-01T00:00:00.000+08:00", Some("a"), Some(1.0)),
            // The last instant of the 14th, and the first of the 15th.
            priced("2026-12-14T23:59:59.999+08:00", Some("a"), Some(2.0)),
            priced("2026-12-15T00:00:00.000+08:00", Some("a"), Some(0.25)),
            // Already the 16th in UTC, but the 15th where it was served.
            priced("2026-12-15T23:59:59.999-05:00", Some("a"), Some(0.5)),
            priced("2026-12-15T12:00:00.000+08:00", Some("a"), None),
            priced("2026-12-15T12:00:00.000+08:00", Some("b"), Some(4.0)),
            priced("2026-12-03T12:00:00.000+08:00", Some("b"), Some(8.0)),
            // No price, no key: nothing to count.
            priced("2026-12-15T12:00:00.000+08:00", Some("unpriced"), None),
            priced("2026-12-15T12:00:00.000+08:00", None, Some(16.0)),
            priced("2026-12-15T12:00:00.000+08:00", Some(""), Some(16.0)),
            priced("2027-01-01T00:00:00.000+08:00", Some("a"), Some(32.0)),
        ])
        .unwrap();
    store
}

#[test]
fn sums_the_local_day_and_month_per_key_from_the_current_months_file() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let spent = spend_on(dir.path(), date("2026-12-15")).unwrap();
    let expected = HashMap::from([
        ("a".to_string(), spend(0.75, 3.75)),
        ("b".to_string(), spend(4.0, 12.0)),
    ]);
    assert_eq!(spent, expected);
    // The day before: the 14th's last instant is its own, the 15th's records are the month's only.
    let spent = spend_on(dir.path(), date("2026-12-14")).unwrap();
    assert_eq!(spent["a"], spend(2.0, 3.75));
    assert_eq!(spent["b"], spend(0.0, 12.0), "spent this month, not today");
    // Another month reads its own file only.
    let spent = spend_on(dir.path(), date("2026-11-30")).unwrap();
    assert_eq!(spent, HashMap::from([("a".to_string(), spend(64.0, 64.0))]));
    assert_eq!(
        spend_on(dir.path(), date("2027-01-02")).unwrap()["a"],
        spend(0.0, 32.0)
    );
}

#[test]
fn now_is_read_in_the_local_calendar() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    // Noon: the same local date whatever this machine's time zone.
    let now = Local.with_ymd_and_hms(2026, 12, 15, 12, 0, 0).unwrap();
    assert_eq!(
        spend_by_key(dir.path(), now).unwrap()["a"],
        spend(0.75, 3.75)
    );
}

#[test]
fn a_missing_file_or_directory_is_nothing_spent_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    assert!(spend_on(dir.path(), date("2026-12-15")).unwrap().is_empty());
    let missing = dir.path().join("nope");
    assert!(spend_on(&missing, date("2026-12-15")).unwrap().is_empty());
    assert!(!missing.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_file_of_a_version_before_costs_is_nothing_spent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record_202612.db");
    let before_costs: Vec<String> = schema::COLUMNS
        .iter()
        .take_while(|c| c.name != schema::COST_USD.name)
        .map(|c| format!("{} {}", c.name, c.kind))
        .collect();
    let sql = format!(
        "CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT, {});
         INSERT INTO records (Time, KeyName) VALUES ('2026-12-15T10:00:00+08:00', 'a');",
        before_costs.join(", ")
    );
    Connection::open(&path)
        .unwrap()
        .execute_batch(&sql)
        .unwrap();
    assert!(spend_on(dir.path(), date("2026-12-15")).unwrap().is_empty());
    // A file created but never written to has no table at all.
    std::fs::remove_file(&path).unwrap();
    drop(Connection::open(&path).unwrap());
    assert!(spend_on(dir.path(), date("2026-12-15")).unwrap().is_empty());
    // A file that is no database is an error naming it.
    std::fs::write(&path, "not sqlite").unwrap();
    let error = spend_on(dir.path(), date("2026-12-15")).unwrap_err();
    assert!(error.to_string().contains("record_202612.db"), "{error}");
}

#[test]
fn reads_while_the_gateway_writes() {
    let dir = tempfile::tempdir().unwrap();
    // The store keeps its connection open in WAL mode, as the running gateway does.
    let mut store = seed(dir.path());
    assert_eq!(
        spend_on(dir.path(), date("2026-12-15")).unwrap()["b"],
        spend(4.0, 12.0)
    );
    store
        .write(&[priced("2026-12-15T13:00:00+08:00", Some("b"), Some(0.5))])
        .unwrap();
    assert_eq!(
        spend_on(dir.path(), date("2026-12-15")).unwrap()["b"],
        spend(4.5, 12.5)
    );
    // A reader holding a read transaction does not block the gateway's next write.
    let reader = Connection::open_with_flags(
        dir.path().join("record_202612.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM records;")
        .unwrap();
    store
        .write(&[priced("2026-12-15T14:00:00+08:00", Some("b"), Some(0.25))])
        .unwrap();
    assert_eq!(
        spend_on(dir.path(), date("2026-12-15")).unwrap()["b"],
        spend(4.75, 12.75)
    );
}
