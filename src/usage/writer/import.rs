//! The writer's import of the spool files dead processes left: read in order, each record asked of the sink,
//! and what the sink does not have yet written like any other record.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::{count, Pending, Sink, Spooled, Writer};
use crate::usage::spool::frame::{Damaged, Next};

impl<S: Sink> Writer<S> {
    /// Looks for the spool files of dead processes, to import.
    pub(super) fn scan_spool(&mut self) {
        self.last_scan = Some(Instant::now());
        let found = self.spool.orphans();
        if !found.is_empty() {
            log::info!(
                "importing {} usage spool file(s) left by a process that stopped without writing them",
                found.len()
            );
            self.imports.extend(found);
        }
    }

    /// Takes records from the spool files being imported while the writer has room (up to a batch, and half
    /// the byte bound of the queue), skipping those the sink already has.
    pub(super) fn take_imported(&mut self) {
        let batch = self.settings.batch_size.max(1);
        let bytes = count(self.settings.queue_max_bytes) / 2;
        while self.pending.len() < batch && !self.failing {
            if !self.pending.is_empty() && self.stats.waiting_bytes.load(Relaxed) >= bytes {
                return;
            }
            let Some(orphan) = self.imports.front_mut() else {
                return;
            };
            let next = orphan.frames.read_next();
            let segment = Arc::clone(&orphan.segment);
            let offset = orphan.frames.offset();
            let (record, end) = match next {
                Ok(Next::Record(record, end)) => (record, end),
                Ok(Next::End) => {
                    self.imported_segment();
                    continue;
                }
                Ok(Next::Torn(at)) => {
                    log::warn!(
                        "usage spool {}: the record at offset {at} was cut short when its process died; skipped",
                        segment.name()
                    );
                    self.imported_segment();
                    continue;
                }
                Err(Damaged::Io(e)) => {
                    log::error!(
                        "cannot read the usage spool {} (import postponed): {e}",
                        segment.name()
                    );
                    self.stop_imports();
                    return;
                }
                Err(e) => {
                    log::error!(
                        "usage spool {} is damaged at offset {offset} ({e}); the rest of it is skipped",
                        segment.name()
                    );
                    self.imported_segment();
                    continue;
                }
            };
            let committed = match self.sink.committed(&record.row, segment.name(), end) {
                Ok(committed) => committed,
                Err(e) => {
                    log::error!("usage spool import postponed: {e}");
                    self.stop_imports();
                    return;
                }
            };
            if committed {
                continue;
            }
            let size = count(record.size());
            self.stats.waiting.fetch_add(1, Relaxed);
            self.stats.waiting_bytes.fetch_add(size, Relaxed);
            self.imported += 1;
            self.pending.push(Pending {
                record: record.render(),
                size,
                spooled: Some(Spooled { segment, end }),
            });
        }
    }

    /// The first import has been read to its end.
    fn imported_segment(&mut self) {
        if let Some(done) = self.imports.pop_front() {
            self.spool.imported(&done.segment);
        }
        if self.imports.is_empty() {
            self.sink.end_import();
            log::info!(
                "usage spool imported: {} record(s) that were not written before",
                self.imported
            );
            self.imported = 0;
        }
    }

    /// Stops importing; what was not read stays in the spool for a later import.
    pub(super) fn stop_imports(&mut self) {
        if !self.imports.is_empty() {
            self.spool.abandon(self.imports.drain(..).collect());
            self.sink.end_import();
        }
    }
}
