//! OpenAI's Responses API (what Codex speaks) translated to chat completions and back, for a backend that
//! serves chat completions only: the request, the whole answer, and the stream as it arrives.
//!
//! Stateless only: `previous_response_id` cannot be served by a chat backend and is refused; built-in tools
//! (web search, file search, shell, custom) have no chat form and are dropped, like reasoning items sent back.

mod answer;
mod request;
mod stream;

#[cfg(test)]
mod tests;

pub use answer::chat_answer_to_response;
pub use request::responses_to_chat;
pub use stream::ChatToResponsesStream;

use crate::tokens::TokenUsage;
use serde_json::{json, Value};

/// The event that ends a Responses stream the backend broke off (`event: error`, as OpenAI sends it), which the
/// SDKs surface as an error event; the caller's own code, as a chat stream's error event carries it.
pub fn error_event(message: &str, code: &str) -> bytes::Bytes {
    let event = json!({
        "type": "error", "code": code, "message": message, "param": null, "sequence_number": 0,
    });
    bytes::Bytes::from(format!("event: error\ndata: {event}\n\n"))
}

/// The Responses `usage` object for counts in OpenAI's meaning.
fn usage_json(u: &TokenUsage) -> Value {
    let input = u.prompt.unwrap_or(0);
    let output = u.completion.unwrap_or(0);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": u.cached.unwrap_or(0)},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": u.reasoning.unwrap_or(0)},
        "total_tokens": u.total.unwrap_or(input.saturating_add(output)),
    })
}

/// A `response` object (status, output items, usage) with the fields the SDKs read.
fn response_json(
    id: &str,
    model: &str,
    created: i64,
    status: &str,
    output: Value,
    usage: Value,
) -> Value {
    let incomplete = (status == "incomplete").then(|| json!({"reason": "max_output_tokens"}));
    json!({
        "id": id, "object": "response", "created_at": created, "status": status,
        "error": null, "incomplete_details": incomplete, "instructions": null, "metadata": {},
        "model": model, "output": output, "parallel_tool_calls": true, "temperature": null,
        "tool_choice": "auto", "tools": [], "top_p": null, "usage": usage,
    })
}
