//! Where the usage writer commits its batches: the [`Sink`] trait, and the entries and errors it speaks in.
//! The monthly SQLite files (`usage::sqlite`) are the first sink; another sink is another file beside them.

use super::record::UsageRecord;

/// A record of a batch, and where the spool holds it.
pub trait Entry {
    fn record(&self) -> &UsageRecord;
    /// The spool segment and the end offset of the record's frame, when it was spooled.
    fn spooled(&self) -> Option<(&str, u64)> {
        None
    }
}

impl Entry for UsageRecord {
    fn record(&self) -> &UsageRecord {
        self
    }
}

impl<E: Entry + ?Sized> Entry for &E {
    fn record(&self) -> &UsageRecord {
        (**self).record()
    }
    fn spooled(&self) -> Option<(&str, u64)> {
        (**self).spooled()
    }
}

/// A batch was not wholly committed: which of its records were, and why the others were not.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct BatchError<E: std::error::Error + 'static> {
    /// One flag per record of the batch, in its order: true when that record is committed (with its spool
    /// progress) and must not be written again. A missing flag means "not committed".
    pub committed: Vec<bool>,
    pub error: E,
}

/// Where the writer's batches go. It is used on the writer's thread only (never by a request), so a sink may
/// block, and it is generic rather than boxed: the writer is built for one sink and calls it without dispatch.
///
/// Exactly once across crashes rests on the spool offsets: every entry the queue spooled says where
/// ([`Entry::spooled`]: its segment and the end of its frame). A sink must commit, in the same atomic step as
/// the records, for each segment the largest end among them, so that [`Sink::committed`] answers from it
/// later, after a crash too. An import of a dead process's spool asks it about every record it reads and
/// writes only those not committed: a wrong "yes" loses a record, a wrong "no" writes it twice.
pub trait Sink {
    /// Why a write failed; its message names what failed (a file, a server), never record contents.
    type Error: std::error::Error + 'static;

    /// Commits `batch`, in order, with its spool progress. On an error the [`BatchError`] says which records
    /// are committed nevertheless; the writer offers the others again later, in the same order, possibly with
    /// newer records after them.
    fn write_batch<E: Entry>(&mut self, batch: &[E]) -> Result<(), BatchError<Self::Error>>;

    /// After each round of writes (a full batch, the flush interval, shutdown): work a sink does between batches.
    /// The records [`Sink::write_batch`] accepted are committed already; an error here is logged and counted,
    /// no record is written again for it.
    fn flush(&mut self) -> Result<(), Self::Error>;

    /// The writer has stopped: let go of connections and files. A write after it (the final drain after the
    /// server stopped) opens them again.
    fn close(&mut self);

    /// Whether the record spooled in `segment`, its frame ending at `end`, is committed. An import asks for each
    /// record it reads, in the segment's order; a sink may remember answers until [`Sink::end_import`].
    fn committed(
        &mut self,
        record: &UsageRecord,
        segment: &str,
        end: u64,
    ) -> Result<bool, Self::Error>;

    /// The imports ended or stopped: forget remembered answers, since a later import reads the same segments
    /// again once more of their records may be committed.
    fn end_import(&mut self);

    /// These spool segments are deleted: their progress is no longer needed (a name is never reused, so
    /// leaving it behind, as a crash may, is harmless).
    fn forget(&mut self, segments: &[String]);
}
