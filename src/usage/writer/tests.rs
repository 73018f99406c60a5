//! Tests of the usage queue and writer: batching, shutdown, drops, failing stores, final drain.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::*;
use crate::usage::record::CapturedRecord;
use crate::usage::sqlite::tests::{count, record, TIME};
use crate::usage::sqlite::Month;

mod fake;

const FILE: &str = "record_202611.db";

fn settings(dir: &Path) -> UsageSettings {
    UsageSettings {
        dir: dir.to_path_buf(),
        ..UsageSettings::default()
    }
}

/// Waits (up to 10 s) for `condition`, which a test states about the writer's progress.
async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn spawn_writer(mut writer: Writer) -> (watch::Sender<bool>, tokio::task::JoinHandle<Writer>) {
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(async move {
        writer.run(shutdown).await;
        writer
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_sent_is_written_before_run_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, writer) = channel(&settings(dir.path()));
    let stats = writer.stats();
    let (_stop, task) = spawn_writer(writer);
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                for i in 0..500 {
                    queue.send(record(TIME));
                    if i % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    drop(queue);
    for sender in senders {
        sender.await.unwrap();
    }
    task.await.unwrap();
    assert_eq!(count(&dir.path().join(FILE)), 2000);
    assert_eq!(stats.written.load(Relaxed), 2000);
    assert_eq!(stats.queued.load(Relaxed), 0);
    assert_eq!(stats.dropped.load(Relaxed), 0);
}

#[tokio::test]
async fn shutdown_flushes_at_once_and_the_writer_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.flush_interval = Duration::from_secs(3600);
    let (queue, writer) = channel(&settings);
    let stats = writer.stats();
    let (stop, task) = spawn_writer(writer);
    for _ in 0..10 {
        queue.send(record(TIME));
    }
    // Fewer than a batch and no interval elapsed: the writer is not even woken.
    assert_eq!(
        stats.written.load(Relaxed),
        0,
        "no flush before the interval"
    );
    stop.send(true).unwrap();
    until("the shutdown flush", || stats.written.load(Relaxed) == 10).await;
    assert!(!task.is_finished());
    queue.send(record(TIME));
    drop(queue);
    task.await.unwrap();
    assert_eq!(count(&dir.path().join(FILE)), 11);
}

#[test]
fn a_full_queue_drops_and_counts_and_drain_now_writes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.queue_capacity = 4;
    let (queue, mut writer) = channel(&settings);
    for _ in 0..10 {
        queue.send(record(TIME));
    }
    let stats = queue.stats();
    assert_eq!(stats.dropped.load(Relaxed), 6);
    assert_eq!(stats.queued.load(Relaxed), 4);
    writer.drain_now();
    assert_eq!(count(&dir.path().join(FILE)), 4);
    assert_eq!(stats.written.load(Relaxed), 4);
    assert_eq!(stats.queued.load(Relaxed), 0);
    drop(writer);
    queue.send(record(TIME));
    assert_eq!(
        stats.dropped.load(Relaxed),
        7,
        "a record sent after the writer is gone"
    );
}

#[tokio::test]
async fn an_unwritable_directory_is_retried_until_it_works() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "a file where a directory should be").unwrap();
    let mut settings = settings(&blocker.join("db"));
    (settings.queue_capacity, settings.flush_interval) = (4, Duration::from_millis(10));
    let (queue, writer) = channel(&settings);
    let stats = writer.stats();
    let (_stop, task) = spawn_writer(writer);
    for _ in 0..4 {
        queue.send(record(TIME));
    }
    until("retries fail", || stats.write_errors.load(Relaxed) >= 3).await;
    // Four are pending: the next four are received and dropped, the writer's memory stays bounded.
    for _ in 0..4 {
        queue.send(record(TIME));
    }
    until("the writer has the records", || {
        stats.queued.load(Relaxed) == 0
    })
    .await;
    assert_eq!(stats.dropped.load(Relaxed), 4);
    assert!(!task.is_finished());
    std::fs::remove_file(&blocker).unwrap();
    until("the records land", || stats.written.load(Relaxed) == 4).await;
    queue.send(record(TIME));
    drop(queue);
    task.await.unwrap();
    assert_eq!(count(&blocker.join("db").join(FILE)), 5);
    assert_eq!(stats.dropped.load(Relaxed), 4);
}

#[test]
fn a_batch_split_by_a_failing_month_is_not_written_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, mut writer) = channel(&settings(dir.path()));
    let february = writer.sink.path(Month {
        year: 2026,
        month: 2,
    });
    std::fs::create_dir(&february).unwrap();
    for time in ["2026-01-31T23:59:59+08:00", "2026-02-01T00:00:00+08:00"] {
        queue.send(record(time));
    }
    let mut received = Vec::new();
    while let Ok(record) = writer.receiver.try_recv() {
        received.push(record.render());
    }
    writer.accept(&mut received);
    writer.flush();
    assert_eq!((writer.pending.len(), writer.failing), (1, true));
    std::fs::remove_dir(&february).unwrap();
    writer.drain_now();
    assert_eq!(count(&dir.path().join("record_202601.db")), 1);
    assert_eq!(count(&february), 1);
    assert_eq!(writer.stats.written.load(Relaxed), 2);
}

#[test]
fn drain_now_gives_up_after_a_few_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "").unwrap();
    let (queue, mut writer) = channel(&settings(&blocker.join("db")));
    queue.send(record(TIME));
    queue.send(record(TIME));
    writer.drain_now();
    let stats = writer.stats();
    assert_eq!(stats.write_errors.load(Relaxed), u64::from(FINAL_ATTEMPTS));
    assert_eq!(stats.dropped.load(Relaxed), 2);
    assert!(writer.pending.is_empty());
}

#[test]
fn the_throttle_allows_one_per_period() {
    let throttle = Throttle::new(Duration::from_secs(3600));
    assert!(throttle.ready());
    assert!(!throttle.ready());
    let always = Throttle::new(Duration::ZERO);
    assert!(always.ready() && always.ready());
}

fn spool_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("spool")) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// A record with a request body of `n` bytes, as a request hands it over.
fn sized(n: usize) -> CapturedRecord {
    let mut record = crate::usage::spool::tests::captured(1);
    record.raw.as_mut().unwrap().request = Some(bytes::Bytes::from(vec![b'x'; n]));
    record
}

#[test]
fn the_queue_is_bounded_in_bytes_as_well_as_in_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.queue_max_bytes = 12_000;
    let (queue, mut writer) = channel(&settings);
    let stats = queue.stats();
    let one = u64::try_from(sized(3000).size()).unwrap();
    assert!((3000..4000).contains(&one), "a record's size: {one}");
    for _ in 0..10 {
        queue.send(sized(3000));
    }
    assert_eq!(stats.waiting.load(Relaxed), 3);
    assert_eq!(stats.waiting_bytes.load(Relaxed), 3 * one);
    assert_eq!(stats.dropped.load(Relaxed), 7);
    // One record larger than the whole bound still passes an empty queue.
    writer.drain_now();
    assert_eq!(
        (
            stats.waiting.load(Relaxed),
            stats.waiting_bytes.load(Relaxed)
        ),
        (0, 0)
    );
    queue.send(sized(20_000));
    assert_eq!(stats.waiting.load(Relaxed), 1);
    queue.send(sized(10));
    assert_eq!(stats.dropped.load(Relaxed), 8, "but nothing beside it");
    drop(queue);
    writer.drain_now();
    assert_eq!(count(&dir.path().join(FILE)), 4);
    assert_eq!(
        (
            stats.waiting.load(Relaxed),
            stats.waiting_bytes.load(Relaxed)
        ),
        (0, 0)
    );
}

#[test]
fn recorded_headers_are_cut_at_max_body_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.max_body_bytes = 300;
    let (queue, mut writer) = channel(&settings);
    let mut headers = http::HeaderMap::new();
    headers.insert("x-big", "y".repeat(100_000).parse().unwrap());
    let mut record = sized(10);
    record.raw.as_mut().unwrap().headers = crate::usage::capture_headers(&headers);
    let size = record.size();
    queue.send(record);
    assert!(
        queue.stats().waiting_bytes.load(Relaxed) < 2000,
        "counted after the cut, not at {size}"
    );
    drop(queue);
    writer.drain_now();
    let connection = rusqlite::Connection::open(dir.path().join(FILE)).unwrap();
    let headers: String = connection
        .query_row("SELECT Headers FROM records", [], |row| row.get(0))
        .unwrap();
    assert!(headers.len() <= 300, "{headers}");
    let parsed: serde_json::Value = serde_json::from_str(&headers).unwrap();
    assert!(parsed["x-big"].as_str().unwrap().ends_with(" bytes)"));
}

#[tokio::test]
async fn the_depth_counts_a_batch_being_retried() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "").unwrap();
    let mut settings = settings(&blocker.join("db"));
    settings.flush_interval = Duration::from_millis(10);
    let (queue, writer) = channel(&settings);
    let stats = writer.stats();
    let (_stop, task) = spawn_writer(writer);
    for _ in 0..3 {
        queue.send(sized(100));
    }
    until("retries fail", || stats.write_errors.load(Relaxed) >= 2).await;
    assert_eq!(stats.queued.load(Relaxed), 0, "the writer holds them");
    assert_eq!(stats.waiting.load(Relaxed), 3, "and they still wait");
    assert!(stats.waiting_bytes.load(Relaxed) > 300);
    std::fs::remove_file(&blocker).unwrap();
    until("written", || stats.written.load(Relaxed) == 3).await;
    assert_eq!(
        (
            stats.waiting.load(Relaxed),
            stats.waiting_bytes.load(Relaxed)
        ),
        (0, 0)
    );
    drop(queue);
    task.await.unwrap();
}

#[tokio::test]
async fn records_of_a_crashed_writer_are_imported_once() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, mut crashed) = channel(&settings(dir.path()));
    for _ in 0..5 {
        queue.send(sized(10));
    }
    // Five committed (with their spool progress), five only spooled, and then the process dies: nothing
    // is finished, the spool files stay.
    crashed.take_queued();
    crashed.flush();
    assert_eq!(count(&dir.path().join(FILE)), 5);
    for _ in 0..5 {
        queue.send(sized(20));
    }
    drop((queue, crashed));
    assert_eq!(spool_files(dir.path()).len(), 2, "a segment and its lock");

    let (queue, writer) = channel(&settings(dir.path()));
    let stats = writer.stats();
    let (stop, task) = spawn_writer(writer);
    until("the import", || stats.written.load(Relaxed) == 5).await;
    until("the spool of the dead writer is deleted", || {
        spool_files(dir.path()).is_empty()
    })
    .await;
    assert_eq!(count(&dir.path().join(FILE)), 10, "none twice");
    queue.send(sized(30));
    drop(queue);
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(count(&dir.path().join(FILE)), 11);
    assert!(
        !dir.path().join("spool").exists(),
        "a clean end leaves no spool"
    );
}
