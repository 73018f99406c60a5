//! An Anthropic Messages request turned into an OpenAI chat completions request.
//!
//! What has no chat equivalent is dropped: `cache_control`, `thinking` blocks sent back, `top_k`, server
//! tools (web search, code execution), documents other than plain text. Unknown top-level fields are dropped
//! too: a chat backend would refuse Anthropic's.

use super::{effort_for_budget, parse_object, text_of};
use crate::dialect::DialectError;
use serde_json::{json, Map, Value};

/// How the chat request is shaped.
#[derive(Debug, Clone, Default)]
pub struct ToChat {
    /// Send the cap as `max_tokens` (older OpenAI-compatible servers) instead of `max_completion_tokens`
    /// (which OpenAI's reasoning models require).
    pub legacy_max_tokens: bool,
}

/// The chat completions request for a Messages request body. A stream asks for usage
/// (`stream_options.include_usage`), so the translated stream's last `message_delta` can carry it.
pub fn messages_to_chat(body: &[u8], opts: &ToChat) -> Result<Vec<u8>, DialectError> {
    let mut req = parse_object(body)?;
    let mut out = Map::new();
    if let Some(model) = req.remove("model") {
        out.insert("model".into(), model);
    }
    let mut messages = Vec::new();
    if let Some(system) = req.remove("system") {
        let text = text_of(&system, "\n\n");
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    match req.remove("messages") {
        Some(Value::Array(list)) => {
            for m in list {
                push_message(m, &mut messages)?;
            }
        }
        Some(_) => return Err(invalid("messages", "expected an array of messages.")),
        None => return Err(DialectError::Missing("messages")),
    }
    out.insert("messages".into(), Value::Array(messages));
    if let Some(max) = req.remove("max_tokens") {
        let key = if opts.legacy_max_tokens {
            "max_tokens"
        } else {
            "max_completion_tokens"
        };
        out.insert(key.into(), max);
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = req.remove(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v);
        }
    }
    if let Some(Value::Array(stops)) = req.remove("stop_sequences") {
        if !stops.is_empty() {
            out.insert("stop".into(), Value::Array(stops));
        }
    }
    if let Some(user) = req.get("metadata").and_then(|m| m.get("user_id")) {
        if user.is_string() {
            out.insert("user".into(), user.clone());
        }
    }
    if let Some(effort) = req.get("thinking").and_then(effort_of) {
        out.insert("reasoning_effort".into(), effort.into());
    }
    tools(&mut req, &mut out)?;
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(out).to_string().into_bytes())
}

fn invalid(field: &'static str, reason: &'static str) -> DialectError {
    DialectError::Invalid { field, reason }
}

/// `thinking: {"type":"enabled","budget_tokens":N}` as an effort band; `adaptive` lets the backend choose.
fn effort_of(thinking: &Value) -> Option<&'static str> {
    if thinking.get("type").and_then(Value::as_str) != Some("enabled") {
        return None;
    }
    let budget = thinking.get("budget_tokens").and_then(Value::as_u64)?;
    Some(effort_for_budget(budget))
}

fn push_message(m: Value, out: &mut Vec<Value>) -> Result<(), DialectError> {
    let Value::Object(mut m) = m else {
        return Err(invalid("messages", "each message must be an object."));
    };
    let role = match m.get("role").and_then(Value::as_str) {
        Some("user") => "user",
        Some("assistant") => "assistant",
        _ => {
            return Err(invalid(
                "messages.role",
                "must be \"user\" or \"assistant\".",
            ))
        }
    };
    match m.remove("content") {
        Some(Value::String(text)) => out.push(json!({"role": role, "content": text})),
        Some(Value::Array(blocks)) if role == "user" => user_blocks(blocks, out)?,
        Some(Value::Array(blocks)) => assistant_blocks(blocks, out),
        _ => {
            return Err(invalid(
                "messages.content",
                "expected a string or an array of blocks.",
            ))
        }
    }
    Ok(())
}

/// A user turn: its `tool_result` blocks become `tool` messages (first, as chat wants them right after the
/// assistant's `tool_calls`), the rest one user message of text and image parts.
fn user_blocks(blocks: Vec<Value>, out: &mut Vec<Value>) -> Result<(), DialectError> {
    let mut parts = Vec::new();
    for block in blocks {
        let Value::Object(mut b) = block else {
            continue;
        };
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(text_part(b.remove("text"))),
            Some("image") => parts.push(image_part(b.get("source"))?),
            Some("document") => {
                let source = b.get("source");
                if source.and_then(|s| s.get("type")).and_then(Value::as_str) == Some("text") {
                    parts.push(text_part(source.and_then(|s| s.get("data")).cloned()));
                }
            }
            Some("tool_result") => {
                let id = b.remove("tool_use_id").unwrap_or_default();
                let content = b.remove("content").unwrap_or_default();
                if let Value::Array(inner) = &content {
                    for img in inner.iter().filter(|i| i["type"] == "image") {
                        parts.push(image_part(img.get("source"))?);
                    }
                }
                out.push(
                    json!({"role": "tool", "tool_call_id": id, "content": text_of(&content, "\n")}),
                );
            }
            _ => {}
        }
    }
    match parts.len() {
        0 => {}
        1 if parts[0]["type"] == "text" => {
            let text = parts
                .pop()
                .map(|mut p| p["text"].take())
                .unwrap_or_default();
            out.push(json!({"role": "user", "content": text}));
        }
        _ => out.push(json!({"role": "user", "content": parts})),
    }
    Ok(())
}

fn text_part(text: Option<Value>) -> Value {
    json!({"type": "text", "text": text.unwrap_or_else(|| "".into())})
}

/// An image block's `source` (base64 or URL) as a chat `image_url` part (base64 as a data URL).
fn image_part(source: Option<&Value>) -> Result<Value, DialectError> {
    let source = source.ok_or(invalid("image.source", "an image needs a source."))?;
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = source.get("media_type").and_then(Value::as_str);
            let data = source.get("data").and_then(Value::as_str);
            match (media, data) {
                (Some(media), Some(data)) => format!("data:{media};base64,{data}"),
                _ => return Err(invalid("image.source", "base64 needs media_type and data.")),
            }
        }
        Some("url") => match source.get("url").and_then(Value::as_str) {
            Some(url) => url.to_owned(),
            None => return Err(invalid("image.source.url", "expected a string.")),
        },
        _ => {
            return Err(invalid(
                "image.source.type",
                "expected \"base64\" or \"url\".",
            ))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// An assistant turn: its text joined, its `tool_use` blocks as `tool_calls` (input as a JSON string);
/// thinking blocks are the backend's own and have no place in a chat request.
fn assistant_blocks(blocks: Vec<Value>, out: &mut Vec<Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for mut b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": b["id"].take(),
                "type": "function",
                "function": {"name": b["name"].take(), "arguments": b["input"].to_string()},
            })),
            _ => {}
        }
    }
    let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { text.into() }});
    if !calls.is_empty() {
        msg["tool_calls"] = Value::Array(calls);
    } else if msg["content"].is_null() {
        msg["content"] = "".into();
    }
    out.push(msg);
}

/// `tools` as chat functions (server tools, which have no `input_schema`, are dropped) and `tool_choice`.
fn tools(req: &mut Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), DialectError> {
    let list = match req.remove("tools") {
        Some(Value::Array(list)) => list,
        Some(Value::Null) | None => Vec::new(),
        Some(_) => return Err(invalid("tools", "expected an array of tools.")),
    };
    let functions: Vec<Value> = list
        .into_iter()
        .filter_map(|mut t| {
            let schema = t.get_mut("input_schema")?.take();
            let mut function = json!({"name": t.get_mut("name")?.take(), "parameters": schema});
            if let Some(d) = t.get_mut("description").map(Value::take) {
                function["description"] = d;
            }
            Some(json!({"type": "function", "function": function}))
        })
        .collect();
    if functions.is_empty() {
        return Ok(());
    }
    out.insert("tools".into(), Value::Array(functions));
    let Some(choice) = req.get("tool_choice") else {
        return Ok(());
    };
    let mapped = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => "auto".into(),
        Some("any") => "required".into(),
        Some("none") => "none".into(),
        Some("tool") => json!({"type": "function", "function": {"name": choice["name"].clone()}}),
        _ => {
            return Err(invalid(
                "tool_choice.type",
                "expected auto, any, tool or none.",
            ))
        }
    };
    out.insert("tool_choice".into(), mapped);
    if choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        == Some(true)
    {
        out.insert("parallel_tool_calls".into(), false.into());
    }
    Ok(())
}
