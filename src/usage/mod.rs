//! Usage records (`record`, their request headers in `headers`), the queue requests hand them to (`queue`) with
//! the crash-safe spool every queued record is also appended to (`spool`), the batching writer (`writer`) with its
//! pace on a shared core (`pace`), and
//! the sink it commits to (`sink`): the monthly SQLite files (`sqlite`), which the report reads too, and from
//! which each key's spend this month is read back at startup ([`spend_by_key`]); and the shipper (`ship`) that
//! copies the files' rows to a shared PostgreSQL table.

pub mod headers;
pub mod pace;
pub mod queue;
pub mod record;
pub mod ship;
pub mod sink;
pub mod spool;
pub mod sqlite;
mod throttle;
pub mod writer;

pub use queue::{UsageQueue, UsageStats};
pub use record::{
    capture_headers, cut, headers_json, CapturedHeaders, CapturedRecord, RawBody, RawTexts,
    TokenUsage, UsageRecord,
};
pub use sink::{BatchError, Entry, Sink};
pub use sqlite::{spend_by_key, Month, Spend, SpendError, Store, StoreError};
pub use writer::{channel, channel_to, Writer};
