//! The writer against a fake sink: a batch committed in part is retried for the rest only, and the sink's
//! other calls (flush, close, import questions) come when the writer says they do.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;

use super::*;
use crate::usage::sink::{BatchError, Entry, Sink};

#[derive(Debug, thiserror::Error)]
#[error("the fake sink failed")]
struct Failed;

/// Commits what it is told to: each planned failure commits only the flagged records of the next batch.
#[derive(Default)]
struct FakeSink {
    /// The IP of every record committed, in commit order.
    committed: Vec<String>,
    /// Per-record flags for the next batches; a batch without a plan is committed whole.
    plans: VecDeque<Vec<bool>>,
    batches: Vec<usize>,
    flushes: usize,
    closes: usize,
}

impl Sink for FakeSink {
    type Error = Failed;

    fn write_batch<E: Entry>(&mut self, batch: &[E]) -> Result<(), BatchError<Failed>> {
        self.batches.push(batch.len());
        let flags = self.plans.pop_front();
        for (i, entry) in batch.iter().enumerate() {
            if flags.as_ref().is_none_or(|f| f[i]) {
                self.committed.push(entry.record().ip.clone());
            }
        }
        match flags {
            None => Ok(()),
            Some(committed) => Err(BatchError {
                committed,
                error: Failed,
            }),
        }
    }

    fn flush(&mut self) -> Result<(), Failed> {
        self.flushes += 1;
        Ok(())
    }

    fn close(&mut self) {
        self.closes += 1;
    }

    fn committed(&mut self, _: &UsageRecord, _: &str, _: u64) -> Result<bool, Failed> {
        Ok(false)
    }

    fn end_import(&mut self) {}

    fn forget(&mut self, _: &[String]) {}
}

/// Records with the IPs `ips`, queued and taken by a writer over a fake sink with these plans.
fn writer_with(dir: &Path, ips: &[&str], plans: Vec<Vec<bool>>) -> (UsageQueue, Writer<FakeSink>) {
    let mut settings = settings(dir);
    settings.batch_size = 4;
    let sink = FakeSink {
        plans: plans.into(),
        ..FakeSink::default()
    };
    let (queue, mut writer) = channel_to(&settings, sink);
    for ip in ips {
        let mut r = record(TIME);
        r.ip = (*ip).into();
        queue.send(r);
    }
    writer.take_queued();
    (queue, writer)
}

#[test]
fn only_the_records_a_failed_batch_did_not_commit_are_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let ips = ["a", "b", "c", "d", "e", "f"];
    let plan = vec![true, false, true, false];
    let (_queue, mut writer) = writer_with(dir.path(), &ips, vec![plan]);
    writer.flush();
    // The first batch failed half-way: the next one was not tried.
    assert_eq!(writer.sink.batches, [4]);
    assert_eq!(writer.sink.committed, ["a", "c"]);
    let left: Vec<&str> = writer
        .pending
        .iter()
        .map(|p| p.record.ip.as_str())
        .collect();
    assert_eq!(left, ["b", "d", "e", "f"]);
    let stats = writer.stats();
    assert_eq!(stats.written.load(Relaxed), 2);
    assert_eq!(stats.waiting.load(Relaxed), 4);
    assert_eq!(
        (stats.write_errors.load(Relaxed), writer.failing),
        (1, true)
    );

    writer.flush();
    assert_eq!(writer.sink.committed, ["a", "c", "b", "d", "e", "f"]);
    assert_eq!(writer.sink.batches, [4, 4]);
    assert!(writer.pending.is_empty() && !writer.failing);
    assert_eq!(stats.written.load(Relaxed), 6);
    assert_eq!(
        (
            stats.waiting.load(Relaxed),
            stats.waiting_bytes.load(Relaxed)
        ),
        (0, 0)
    );
}

#[test]
fn flags_past_the_failed_batch_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    // A sink that claims more than it was given commits nothing of the next batch by it.
    let plan = vec![false, false, false, false, true, true];
    let (_queue, mut writer) = writer_with(dir.path(), &["a", "b", "c", "d", "e"], vec![plan]);
    writer.flush();
    assert!(writer.sink.committed.is_empty());
    assert_eq!(writer.pending.len(), 5);
    writer.drain_now();
    assert_eq!(writer.sink.committed, ["a", "b", "c", "d", "e"]);
    assert_eq!(writer.stats().written.load(Relaxed), 5);
}

#[test]
fn the_sink_is_flushed_after_each_round_and_closed_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, mut writer) = writer_with(dir.path(), &["a"], Vec::new());
    writer.flush();
    assert_eq!((writer.sink.flushes, writer.sink.closes), (1, 0));
    drop(queue);
    writer.drain_now();
    assert_eq!((writer.sink.flushes, writer.sink.closes), (2, 1));
    assert_eq!(writer.sink.committed, ["a"]);
}
