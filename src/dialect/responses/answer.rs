//! A whole chat completion as a Responses API `response`: reasoning, message and function call items.

use super::{response_json, usage_json};
use crate::dialect::anthropic::chat_usage;
use crate::dialect::DialectError;
use crate::tokens::TokenUsage;
use serde_json::{json, Value};

/// The `response` for a chat completion body (its first choice); `created` stamps `created_at` when the
/// completion has no `created`. A `length` finish makes the response `incomplete`.
pub fn chat_answer_to_response(
    body: &[u8],
    created: i64,
) -> Result<(Vec<u8>, TokenUsage), DialectError> {
    let mut chat: Value =
        serde_json::from_slice(body).map_err(|e| DialectError::BadAnswer(e.to_string()))?;
    let Some(choice) = chat
        .get_mut("choices")
        .and_then(|c| c.get_mut(0))
        .map(Value::take)
    else {
        return Err(DialectError::BadAnswer("no choices".into()));
    };
    let id = chat["id"].as_str().unwrap_or("");
    let msg = &choice["message"];
    let mut output = Vec::new();
    let reasoning = msg["reasoning_content"]
        .as_str()
        .or(msg["reasoning"].as_str());
    if let Some(text) = reasoning.filter(|t| !t.is_empty()) {
        output.push(reasoning_item(&format!("rs_{id}"), text));
    }
    if let Some(text) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        output.push(message_item(&format!("msg_{id}"), text));
    }
    for call in msg["tool_calls"].as_array().into_iter().flatten() {
        let f = &call["function"];
        let call_id = call["id"].as_str().unwrap_or("");
        output.push(call_item(
            call_id,
            f["name"].as_str().unwrap_or(""),
            f["arguments"].as_str().unwrap_or(""),
        ));
    }
    let usage = chat.get("usage").map(chat_usage).unwrap_or_default();
    let status = if choice["finish_reason"] == "length" {
        "incomplete"
    } else {
        "completed"
    };
    let created = chat["created"].as_i64().unwrap_or(created);
    let model = chat["model"].as_str().unwrap_or("");
    let response = response_json(
        &format!("resp_{id}"),
        model,
        created,
        status,
        Value::Array(output),
        usage_json(&usage),
    );
    Ok((response.to_string().into_bytes(), usage))
}

pub(super) fn message_item(id: &str, text: &str) -> Value {
    json!({"type": "message", "id": id, "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

pub(super) fn reasoning_item(id: &str, text: &str) -> Value {
    json!({"type": "reasoning", "id": id, "summary": [{"type": "summary_text", "text": text}]})
}

pub(super) fn call_item(call_id: &str, name: &str, arguments: &str) -> Value {
    json!({"type": "function_call", "id": format!("fc_{call_id}"), "call_id": call_id, "name": name,
        "arguments": arguments, "status": "completed"})
}
