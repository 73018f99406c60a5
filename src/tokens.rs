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

/// The tokenizer that counts a model's tokens when the backend reports none (tiktoken's encodings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tokenizer {
    /// GPT-4o, GPT-4.1, GPT-5, o1/o3/o4 and later OpenAI models.
    O200kBase,
    /// GPT-4, GPT-3.5 and the default for every other model (an estimate for non-OpenAI models).
    Cl100kBase,
}
