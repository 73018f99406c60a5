//! Whole (non-stream) answers: a chat completion as a Messages answer, and a Messages answer as a chat
//! completion, each with its usage in OpenAI's meaning.

use super::{chat_usage, chat_usage_json, finish_reason, stop_reason, Counts};
use crate::dialect::DialectError;
use crate::tokens::TokenUsage;
use serde_json::{json, Map, Value};

fn bad(what: &str) -> DialectError {
    DialectError::BadAnswer(what.to_owned())
}

fn answer_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, DialectError> {
    parse_object(body).map_err(|e| match e {
        DialectError::InvalidJson(why) => DialectError::BadAnswer(why),
        _ => bad("the answer is not a JSON object"),
    })
}

/// The Messages answer for a chat completion body (its first choice): reasoning as a `thinking` block, then
/// the text, then the tool calls as `tool_use` blocks.
pub fn chat_answer_to_messages(body: &[u8]) -> Result<(Vec<u8>, TokenUsage), DialectError> {
    let mut chat = answer_object(body)?;
    let choice = match chat.get_mut("choices").and_then(|c| c.get_mut(0)) {
        Some(c) => c.take(),
        None => return Err(bad("no choices")),
    };
    // Read only through `get` and `[]` (never `[]` on a `&mut`, which panics on a value of the wrong type).
    let msg = &choice["message"];
    let mut content = Vec::new();
    let reasoning = msg["reasoning_content"]
        .as_str()
        .or(msg["reasoning"].as_str());
    if let Some(thinking) = reasoning.filter(|t| !t.is_empty()) {
        content.push(json!({"type": "thinking", "thinking": thinking, "signature": ""}));
    }
    let text = text_of(&msg["content"], "");
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    if let Value::Array(calls) = &msg["tool_calls"] {
        for call in calls {
            let args = call["function"]["arguments"].as_str().unwrap_or("");
            // A model's malformed arguments cannot become an input object; an empty one is the least wrong.
            let input = serde_json::from_str::<Value>(args)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({}));
            content.push(json!({"type": "tool_use", "id": call["id"],
                "name": call["function"]["name"], "input": input}));
        }
    }
    let usage = chat.get("usage").map(chat_usage).unwrap_or_default();
    let stop = choice["finish_reason"].as_str().map(stop_reason);
    let answer = json!({
        "id": chat.remove("id").unwrap_or_default(),
        "type": "message",
        "role": "assistant",
        "model": chat.remove("model").unwrap_or_default(),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": Counts::from_usage(&usage).to_json(),
    });
    Ok((answer.to_string().into_bytes(), usage))
}

/// The chat completion for a Messages answer body; `created` is the Unix time to stamp it with (a Messages
/// answer has none). Thinking becomes `reasoning_content`, `tool_use` blocks `tool_calls`.
pub fn messages_answer_to_chat(
    body: &[u8],
    created: i64,
) -> Result<(Vec<u8>, TokenUsage), DialectError> {
    let mut msg = answer_object(body)?;
    let Some(Value::Array(blocks)) = msg.remove("content") else {
        return Err(bad("no content"));
    };
    let (mut text, mut thinking, mut calls) = (String::new(), String::new(), Vec::new());
    for b in blocks {
        match b["type"].as_str() {
            Some("text") => text.push_str(b["text"].as_str().unwrap_or("")),
            Some("thinking") => thinking.push_str(b["thinking"].as_str().unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": b["id"],
                "type": "function",
                "function": {"name": b["name"], "arguments": b["input"].to_string()},
            })),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": text});
    if !thinking.is_empty() {
        message["reasoning_content"] = thinking.into();
    }
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
        if message["content"] == "" {
            message["content"] = Value::Null;
        }
    }
    let mut counts = Counts::default();
    if let Some(u) = msg.get("usage") {
        counts.merge(u);
    }
    let usage = counts.to_usage();
    let finish = msg
        .get("stop_reason")
        .and_then(Value::as_str)
        .map(finish_reason);
    let answer = json!({
        "id": msg.remove("id").unwrap_or_default(),
        "object": "chat.completion",
        "created": created,
        "model": msg.remove("model").unwrap_or_default(),
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish.unwrap_or("stop")}],
        "usage": chat_usage_json(&usage),
    });
    Ok((answer.to_string().into_bytes(), usage))
}

/// The JSON object of an answer body.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, DialectError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(DialectError::NotObject),
        Err(e) => Err(DialectError::InvalidJson(e.to_string())),
    }
}

/// The text of a content value: a string, or the `text` of its text blocks/parts joined with `sep`.
fn text_of(content: &Value, sep: &str) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => {
            let texts = blocks.iter().filter_map(|b| {
                (b.get("type").and_then(Value::as_str) == Some("text"))
                    .then(|| b.get("text").and_then(Value::as_str))
                    .flatten()
            });
            texts.collect::<Vec<_>>().join(sep)
        }
        _ => String::new(),
    }
}
