//! Where a report's records come from: the [`Source`] trait, and the figures it hands over of each record.
//! The monthly SQLite files (`sqlite.rs`) are the first source; another store of records is another file.

use std::path::PathBuf;

use super::{Dim, Range, ReportError};

/// What the report needs of one record, as read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fields {
    pub prompt: Option<i64>,
    pub completion: Option<i64>,
    pub total: Option<i64>,
    pub status: Option<i64>,
    pub has_error: bool,
    pub latency_ms: Option<i64>,
    /// The token counts are the gateway's estimate.
    pub estimated: bool,
    /// What the request cost in USD; `None`: unknown (no price, or recorded before costs were).
    pub cost_usd: Option<f64>,
    /// Input tokens read from the backend's prompt cache, and written to it (part of `prompt`).
    pub cached: Option<i64>,
    pub cache_write: Option<i64>,
}

/// Records to report on. The report only groups and sums; a source decides what to read and how.
pub trait Source {
    /// Hands every record whose date is in `range` to `add`, with its values of `by` in that order (`None`:
    /// not recorded) and its figures; never the bodies. Returns what it read (the report's `files`), in order.
    fn read(
        &mut self,
        range: Range,
        by: &[Dim],
        add: &mut dyn FnMut(Vec<Option<String>>, Fields),
    ) -> Result<Vec<PathBuf>, ReportError>;
}

#[cfg(test)]
mod tests;
