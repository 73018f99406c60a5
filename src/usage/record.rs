//! One usage record (a row of `records`) and the token counts a backend reports.

use chrono::{DateTime, FixedOffset};

/// Token counts from a backend's `usage` object; a count the backend did not report stays `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt: Option<i64>,
    pub completion: Option<i64>,
    pub total: Option<i64>,
    pub cached: Option<i64>,
    pub reasoning: Option<i64>,
}

/// Everything recorded about one routed request. Field order follows the table's columns.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    /// When the request arrived, in the server's local time zone (decides the monthly file).
    pub time: DateTime<FixedOffset>,
    /// First X-Forwarded-For entry, else X-Real-IP, else the socket peer.
    pub ip: String,
    /// The model as requested.
    pub model: String,
    /// chat.completions, text_completion, embeddings, responses, ...
    pub kind: String,
    pub tokens: TokenUsage,
    /// The request has tools or functions.
    pub tool: bool,
    /// The request has a content part that is not text.
    pub multimodal: bool,
    /// JSON object of the request headers, credentials replaced by `***`.
    pub headers: String,
    pub request: Option<String>,
    pub response: Option<String>,
    /// Name of the client that answered (or was tried last).
    pub backend: Option<String>,
    /// The model name sent upstream.
    pub upstream_model: Option<String>,
    pub stream: bool,
    /// Status sent to the caller; 499 when the caller went away first.
    pub status: u16,
    pub latency_ms: u64,
    pub first_token_ms: Option<u64>,
    pub attempts: u32,
    pub error: Option<String>,
}
