//! Anthropic's Messages API <-> OpenAI chat completions: requests, whole answers, streams and errors.
//!
//! The mappings both directions share live here: stop reasons, `thinking` budgets and reasoning efforts,
//! and usage counts (Anthropic's `input_tokens` excludes cache reads and writes; OpenAI's `prompt_tokens`
//! includes them).

mod answer;
mod chat_stream;
pub mod error;
mod messages;
mod messages_stream;
mod reader;
mod thinking;
mod to_chat;
mod to_messages;

#[cfg(test)]
mod tests;

pub use answer::{chat_answer_to_messages, messages_answer_to_chat};
pub use chat_stream::MessagesToChatStream;
pub use messages_stream::ChatToMessagesStream;
pub use reader::MessagesReader;
pub use thinking::strip_unsigned_thinking;
pub use to_chat::{messages_to_chat, ToChat};
pub use to_messages::{chat_to_messages, ToMessages, DEFAULT_MAX_TOKENS};

use crate::dialect::cut;
use crate::tokens::TokenUsage;
use serde_json::Value;

/// Anthropic's `stop_reason` for a chat `finish_reason`.
pub fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// The chat `finish_reason` for an Anthropic `stop_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// The `reasoning_effort` for a `thinking.budget_tokens`: below 4096 `low`, below 16384 `medium`, else `high`.
pub fn effort_for_budget(budget_tokens: u64) -> &'static str {
    match budget_tokens {
        0..=4095 => "low",
        4096..=16383 => "medium",
        _ => "high",
    }
}

/// The `thinking.budget_tokens` for a `reasoning_effort` (`minimal` 1024, `low` 2048, `medium` 8192, `high`
/// 24576: each maps back to its band); None for `none` or an effort not known.
pub fn budget_for_effort(effort: &str) -> Option<u64> {
    match effort {
        "minimal" => Some(1024),
        "low" => Some(2048),
        "medium" => Some(8192),
        "high" | "xhigh" => Some(24576),
        _ => None,
    }
}

/// Counts of an Anthropic `usage` object (one field missing stays None).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub input: Option<i64>,
    pub output: Option<i64>,
    pub cache_read: Option<i64>,
    pub cache_write: Option<i64>,
}

impl Counts {
    /// Reads an Anthropic `usage` object; a later event's counts override the earlier ones they repeat.
    pub fn merge(&mut self, usage: &Value) {
        let get = |k: &str| usage.get(k).and_then(count);
        self.input = get("input_tokens").or(self.input);
        self.output = get("output_tokens").or(self.output);
        self.cache_read = get("cache_read_input_tokens").or(self.cache_read);
        self.cache_write = get("cache_creation_input_tokens").or(self.cache_write);
    }

    /// The same counts in OpenAI's meaning: prompt = input + cache reads + cache writes.
    pub fn to_usage(self) -> TokenUsage {
        let prompt = self.input.map(|i| {
            i.saturating_add(self.cache_read.unwrap_or(0))
                .saturating_add(self.cache_write.unwrap_or(0))
        });
        let total = match (prompt, self.output) {
            (Some(p), Some(o)) => Some(p.saturating_add(o)),
            _ => None,
        };
        TokenUsage {
            prompt,
            completion: self.output,
            total,
            cached: self.cache_read,
            reasoning: None,
            cache_write: self.cache_write,
        }
    }

    /// Counts in Anthropic's meaning from OpenAI's (input = prompt - cached - cache writes).
    pub fn from_usage(u: &TokenUsage) -> Self {
        let read = u.cached.unwrap_or(0);
        let write = u.cache_write.unwrap_or(0);
        Counts {
            input: u
                .prompt
                .map(|p| p.saturating_sub(read).saturating_sub(write).max(0)),
            output: u.completion,
            cache_read: Some(read),
            cache_write: Some(write),
        }
    }

    /// The Anthropic `usage` object (every count present, 0 when unknown).
    pub fn to_json(self) -> Value {
        serde_json::json!({
            "input_tokens": self.input.unwrap_or(0),
            "cache_creation_input_tokens": self.cache_write.unwrap_or(0),
            "cache_read_input_tokens": self.cache_read.unwrap_or(0),
            "output_tokens": self.output.unwrap_or(0),
        })
    }
}

/// The counts of a chat `usage` object (`prompt_tokens_details.cached_tokens`, `completion_tokens_details.
/// reasoning_tokens`); a count of the wrong type loses only itself.
pub fn chat_usage(usage: &Value) -> TokenUsage {
    let get = |k: &str| usage.get(k).and_then(count);
    let detail = |d: &str, k: &str| usage.get(d).and_then(|d| d.get(k)).and_then(count);
    TokenUsage {
        prompt: get("prompt_tokens"),
        completion: get("completion_tokens"),
        total: get("total_tokens"),
        cached: detail("prompt_tokens_details", "cached_tokens"),
        reasoning: detail("completion_tokens_details", "reasoning_tokens"),
        cache_write: detail("prompt_tokens_details", "cache_write_tokens"),
    }
}

/// The chat `usage` object for counts in OpenAI's meaning.
pub fn chat_usage_json(u: &TokenUsage) -> Value {
    let prompt = u.prompt.unwrap_or(0);
    let completion = u.completion.unwrap_or(0);
    let mut usage = serde_json::json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": u.total.unwrap_or(prompt.saturating_add(completion)),
        "prompt_tokens_details": {"cached_tokens": u.cached.unwrap_or(0)},
    });
    if let Some(r) = u.reasoning {
        usage["completion_tokens_details"] = serde_json::json!({"reasoning_tokens": r});
    }
    usage
}

/// A whole count: an integer, or a float with no fraction (some servers send `12.0`).
fn count(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}
