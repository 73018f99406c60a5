//! Token counts of one request: what a backend reports in its `usage` object, or what the gateway estimated.

/// Token counts from a backend's `usage` object; a count the backend did not report stays `None`.
/// Counts keep OpenAI's meaning whatever the dialect: `prompt` is all input (cache reads and writes
/// included), `cached` the cache reads among it, `cache_write` the cache writes among it, `reasoning` the
/// reasoning tokens among `completion`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt: Option<i64>,
    pub completion: Option<i64>,
    pub total: Option<i64>,
    pub cached: Option<i64>,
    pub reasoning: Option<i64>,
    pub cache_write: Option<i64>,
}
