//! Usage records (`record`, their request headers in `headers`), the monthly SQLite files they go to (`sqlite`),
//! the crash-safe spool every queued record is also appended to (`spool`), and the queue and batching writer
//! between (`writer`).

pub mod headers;
pub mod record;
pub mod spool;
pub mod sqlite;
mod throttle;
pub mod writer;

pub use record::{
    capture_headers, cut, headers_json, CapturedHeaders, CapturedRecord, RawBody, RawTexts,
    TokenUsage, UsageRecord,
};
pub use sqlite::{Month, Store, StoreError};
pub use writer::{channel, UsageQueue, UsageStats, Writer};
