//! Tests of the progress the shipper keeps in the monthly files (SQLite temp files), and of the shipper's handle.
#![allow(clippy::unwrap_used)]

use super::super::*;
use super::{column, NOVEMBER};
use crate::usage::sqlite::tests::record;
use crate::usage::{Month, Store};
use batch::Values;

#[test]
fn month_files_are_found_by_name() {
    assert_eq!(month_of_name("record_202611.db"), Some(NOVEMBER));
    for name in [
        "record_202613.db",
        "record_2026111.db",
        "record_202611.db-wal",
        "x_202611.db",
    ] {
        assert_eq!(month_of_name(name), None, "{name}");
    }
    let dir = tempfile::tempdir().unwrap();
    assert!(month_files(&dir.path().join("missing")).unwrap().is_empty());
    for name in [
        "record_202612.db",
        "record_202611.db",
        "record_202611.db-wal",
        "notes.txt",
    ] {
        std::fs::write(dir.path().join(name), b"").unwrap();
    }
    let found: Vec<Month> = month_files(dir.path())
        .unwrap()
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    assert_eq!(
        found,
        [
            NOVEMBER,
            Month {
                year: 2026,
                month: 12
            }
        ]
    );
}

/// A month file with `n` records written by the usage store.
fn month_file(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let mut store = Store::new(dir);
    let records: Vec<_> = (0..n)
        .map(|i| record(&format!("2026-11-10T08:00:{:02}.000+08:00", i % 60)))
        .collect();
    store.write(&records).unwrap();
    store.path(NOVEMBER)
}

#[test]
fn progress_is_kept_in_the_file_per_target() {
    let dir = tempfile::tempdir().unwrap();
    let path = month_file(dir.path(), 5);
    let mut file = MonthFile::new(path.clone(), NOVEMBER);
    assert!(file.changed(), "the first look");
    assert!(!file.changed(), "nothing written since");
    file.refresh("db:5432/a").unwrap();
    assert_eq!(file.waiting(), 5);
    let mut batch = Batch::new();
    let read = file
        .read("db:5432/a", "gw-1", &mut batch, 3, usize::MAX)
        .unwrap();
    assert_eq!((read.last_id, batch.ids()), (Some(3), &[1, 2, 3][..]));
    file.save("db:5432/a", 3).unwrap();
    assert_eq!(file.waiting(), 2);
    // A lower id (an older batch committed late) never lowers the progress.
    file.save("db:5432/a", 2).unwrap();
    file.close();

    let mut again = MonthFile::new(path.clone(), NOVEMBER);
    assert_eq!(
        again.shipped("db:5432/a").unwrap(),
        3,
        "read back from the file"
    );
    let mut other = MonthFile::new(path.clone(), NOVEMBER);
    other.refresh("db:5432/b").unwrap();
    assert_eq!(other.waiting(), 5, "another target starts over");

    // New rows: the file changed, and the rest is read from where it stopped, at most `bytes` at a time.
    month_file(dir.path(), 2);
    assert!(again.changed());
    again.refresh("db:5432/a").unwrap();
    assert_eq!(again.waiting(), 4);
    let mut batch = Batch::new();
    let read = again.read("db:5432/a", "gw-1", &mut batch, 100, 1).unwrap();
    assert_eq!(
        (read.last_id, batch.ids()),
        (Some(4), &[4][..]),
        "one row past the byte budget"
    );
}

#[test]
fn files_of_older_versions_read_their_missing_columns_as_null() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record_202611.db");
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .execute_batch(
            "CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT, Time TEXT, Model TEXT, Status INTEGER);
             INSERT INTO records (Time, Model, Status) VALUES ('2026-11-02 10:00:00', 'm', 200);",
        )
        .unwrap();
    let mut file = MonthFile::new(path.clone(), NOVEMBER);
    file.refresh("t").unwrap();
    assert_eq!(file.waiting(), 1);
    let mut batch = Batch::new();
    file.read("t", "gw-old", &mut batch, 10, usize::MAX)
        .unwrap();
    assert_eq!(
        column(&batch, "Model"),
        Values::Text(vec![Some("m".into())])
    );
    assert_eq!(column(&batch, "KeyName"), Values::Text(vec![None]));
    assert_eq!(
        column(&batch, "Node"),
        Values::Text(vec![Some("gw-old".into())])
    );
    // A file created but not yet given its table has nothing to ship.
    let empty = dir.path().join("record_202612.db");
    rusqlite::Connection::open(&empty)
        .unwrap()
        .execute_batch("PRAGMA user_version = 1;")
        .unwrap();
    let mut file = MonthFile::new(
        empty,
        Month {
            year: 2026,
            month: 12,
        },
    );
    file.refresh("t").unwrap();
    assert_eq!(file.waiting(), 0);
    let read = file
        .read("t", "gw", &mut Batch::new(), 10, usize::MAX)
        .unwrap();
    assert_eq!(read.last_id, None);
}

#[test]
fn a_shipper_exists_only_with_a_url_and_recording_on() {
    let mut settings = crate::config::UsageSettings::default();
    assert!(Shipper::new(&settings, "gw".into()).unwrap().is_none());
    settings.postgres_url = Some(crate::secret::Secret::new("postgres://u:pw@127.0.0.1:1/x"));
    let shipper = Shipper::new(&settings, "gw".into()).unwrap().unwrap();
    assert_eq!(shipper.target(), "postgres://u@127.0.0.1:1/x");
    assert!(
        shipper.stop(std::time::Duration::from_millis(10)),
        "never started: nothing to stop"
    );
    settings.enabled = false;
    assert!(Shipper::new(&settings, "gw".into()).unwrap().is_none());
}
