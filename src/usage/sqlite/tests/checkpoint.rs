//! Tests of the checkpoints off the writer's thread: the log stays bounded, no row is lost.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::usage::sqlite::checkpoint::CEILING;

/// Bytes of one frame of the log: an 8 KiB page and its header.
const FRAME: u64 = 8192 + 24;

fn wal_size(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).map_or(0, |m| m.len())
}

/// 50 records of ~4 KB each: ~200 KB, ~30 frames a batch.
fn big_batch() -> Vec<UsageRecord> {
    let mut big = record(TIME);
    big.response = Some("x".repeat(4000));
    vec![big; 50]
}

/// Writes `batches` batches (~200 KB each) with `pause` between them; the largest log seen after a commit.
/// The log file only grows between restarts, so the size after each commit is its largest so far.
fn write(store: &mut Store, path: &Path, batches: usize, pause: Duration) -> u64 {
    let batch = big_batch();
    let mut largest = 0;
    for _ in 0..batches {
        store.write(&batch).unwrap();
        largest = largest.max(wal_size(path));
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    largest
}

/// The ceiling plus what one batch adds past it, with room for a batch's index and table pages.
fn bound() -> u64 {
    (CEILING as u64 + 128) * FRAME
}

#[test]
fn the_log_stays_bounded_when_commits_come_back_to_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record_202611.db");
    let mut store = Store::new(dir.path());
    // ~40 MB of rows with no pause between commits: no PASSIVE checkpoint of the thread ever catches up with
    // a writer that appends during it, so only the writer's own restart keeps the log bounded.
    let started = Instant::now();
    let largest = write(&mut store, &path, 200, Duration::ZERO);
    eprintln!(
        "largest log: {largest} bytes, in {:?}, {} restarts by the writer",
        started.elapsed(),
        store.checkpointer.restarts()
    );
    assert!(largest < bound(), "the log reached {largest} bytes");
    Sink::close(&mut store);
    assert_eq!(wal_size(&path), 0, "the log is emptied on close");
    assert_eq!(count(&path), 200 * 50);
}

#[test]
fn the_log_stays_bounded_with_a_reader_reading_all_along() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record_202611.db");
    let mut store = Store::new(dir.path());
    store.write(&[record(TIME)]).unwrap();
    // Like the admin page's list of the newest requests: short read transactions one after another, each
    // pinning the part of the log it reads until it ends.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (done, path) = (Arc::clone(&done), path.clone());
        std::thread::spawn(move || {
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
            let connection = Connection::open_with_flags(&path, flags).unwrap();
            connection.busy_timeout(Duration::from_secs(5)).unwrap();
            let mut reads = 0;
            while !done.load(Ordering::Relaxed) {
                let sql = "SELECT COUNT(*), MAX(id) FROM records \
                           WHERE id > (SELECT MAX(id) - 1000 FROM records)";
                let _: (i64, i64) = connection
                    .query_row(sql, [], |row| Ok((row.get(0)?, row.get(1)?)))
                    .unwrap();
                reads += 1;
            }
            reads
        })
    };
    let largest = write(&mut store, &path, 200, Duration::ZERO);
    done.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap();
    eprintln!(
        "largest log: {largest} bytes, {reads} reads meanwhile, {} restarts by the writer",
        store.checkpointer.restarts()
    );
    assert!(largest < bound(), "the log reached {largest} bytes");
    Sink::close(&mut store);
    assert_eq!(count(&path), 200 * 50 + 1);
}

#[test]
fn paced_commits_keep_the_log_bounded_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record_202611.db");
    let mut store = Store::new(dir.path());
    // ~20 MB/s, several times what a gateway writes at one connection.
    let largest = write(&mut store, &path, 100, Duration::from_millis(10));
    eprintln!(
        "largest log: {largest} bytes, {} restarts by the writer",
        store.checkpointer.restarts()
    );
    assert!(largest < bound(), "the log reached {largest} bytes");
    Sink::close(&mut store);
    assert_eq!(wal_size(&path), 0, "the log is emptied on close");
    assert_eq!(count(&path), 100 * 50);
}

#[test]
fn an_idle_file_has_its_log_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record_202611.db");
    let mut store = Store::new(dir.path());
    store.write(&[record(TIME)]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while wal_size(&path) > 0 {
        assert!(Instant::now() < deadline, "the log of an idle file stays");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(count(&path), 1);
}

#[test]
fn a_store_written_again_after_close_checkpoints_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record_202611.db");
    let mut store = Store::new(dir.path());
    store.write(&[record(TIME)]).unwrap();
    Sink::close(&mut store);
    let largest = write(&mut store, &path, 100, Duration::ZERO);
    assert!(largest < bound(), "the log reached {largest} bytes");
    drop(store);
    assert_eq!(
        wal_size(&path),
        0,
        "the log is emptied when the store is dropped"
    );
    assert_eq!(count(&path), 100 * 50 + 1);
}
