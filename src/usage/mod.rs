//! Usage records: one per routed request, batched by a background writer into monthly SQLite files.

pub mod record;

pub use record::{TokenUsage, UsageRecord};
