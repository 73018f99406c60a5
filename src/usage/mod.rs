//! Usage records (`record`), the monthly SQLite files they go to (`store`), and the queue and batching writer between (`writer`).

pub mod record;
pub mod store;
pub mod writer;

pub use record::{
    capture_headers, cut, headers_json, CapturedHeaders, CapturedRecord, RawBody, RawTexts,
    TokenUsage, UsageRecord,
};
pub use store::{Month, Store, StoreError};
pub use writer::{channel, UsageQueue, UsageStats, Writer};
