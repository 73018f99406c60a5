//! A Responses API request turned into a chat completions request.
//!
//! `instructions` become the system message; `input` (a string, or items) becomes messages: message items
//! by role, `function_call` items the assistant's `tool_calls` (consecutive calls share one assistant
//! message), `function_call_output` items `tool` messages. `max_output_tokens` -> `max_completion_tokens`,
//! `reasoning.effort` -> `reasoning_effort`, `text.format` -> `response_format`, flat function tools ->
//! chat's nested ones. A stream asks for usage, which `response.completed` carries.

use crate::dialect::anthropic::ToChat;
use crate::dialect::DialectError;
use serde_json::{json, Map, Value};

fn invalid(field: &'static str, reason: &'static str) -> DialectError {
    DialectError::Invalid { field, reason }
}

/// The chat completions request for a Responses request body.
pub fn responses_to_chat(body: &[u8], opts: &ToChat) -> Result<Vec<u8>, DialectError> {
    let mut req = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(DialectError::NotObject),
        Err(e) => return Err(DialectError::InvalidJson(e.to_string())),
    };
    if req
        .get("previous_response_id")
        .is_some_and(|v| !v.is_null())
    {
        return Err(invalid(
            "previous_response_id",
            "this backend serves chat completions and keeps no responses: send the whole input.",
        ));
    }
    let mut out = Map::new();
    if let Some(model) = req.remove("model") {
        out.insert("model".into(), model);
    }
    let mut messages = Vec::new();
    if let Some(Value::String(text)) = req.remove("instructions") {
        messages.push(json!({"role": "system", "content": text}));
    }
    match req.remove("input") {
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for item in items {
                push_item(item, &mut messages)?;
            }
        }
        _ => return Err(DialectError::Missing("input")),
    }
    out.insert("messages".into(), Value::Array(messages));
    if let Some(max) = req.remove("max_output_tokens").filter(|v| !v.is_null()) {
        let key = if opts.legacy_max_tokens {
            "max_tokens"
        } else {
            "max_completion_tokens"
        };
        out.insert(key.into(), max);
    }
    for key in ["temperature", "top_p", "parallel_tool_calls", "user"] {
        if let Some(v) = req.remove(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v);
        }
    }
    if let Some(effort) = req
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|e| e.is_string())
    {
        out.insert("reasoning_effort".into(), effort.clone());
    }
    if let Some(format) = req
        .get_mut("text")
        .and_then(|t| t.get_mut("format"))
        .map(Value::take)
    {
        if let Some(f) = response_format(format) {
            out.insert("response_format".into(), f);
        }
    }
    tools(&mut req, &mut out)?;
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(out).to_string().into_bytes())
}

fn push_item(item: Value, out: &mut Vec<Value>) -> Result<(), DialectError> {
    let Value::Object(mut item) = item else {
        return Err(invalid("input", "each input item must be an object."));
    };
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some("developer") => "developer",
                Some("system") => "system",
                Some("assistant") => "assistant",
                Some("user") => "user",
                _ => {
                    return Err(invalid(
                        "input.role",
                        "expected user, assistant, system or developer.",
                    ))
                }
            };
            let content = content(
                item.remove("content").unwrap_or_default(),
                role == "assistant",
            )?;
            out.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let call = json!({
                "id": item.remove("call_id").unwrap_or_default(),
                "type": "function",
                "function": {"name": item.remove("name").unwrap_or_default(),
                    "arguments": item.remove("arguments").unwrap_or_else(|| "{}".into())},
            });
            match out.last_mut() {
                Some(last) if last["role"] == "assistant" && last.get("tool_call_id").is_none() => {
                    match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                        Some(calls) => calls.push(call),
                        None => last["tool_calls"] = json!([call]),
                    }
                    if last["content"] == "" {
                        last["content"] = Value::Null;
                    }
                }
                _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let output = match item.remove("output") {
                Some(Value::String(s)) => s,
                Some(Value::Array(parts)) => text_of_parts(&parts),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            out.push(
                json!({"role": "tool", "tool_call_id": item.remove("call_id").unwrap_or_default(),
                "content": output}),
            );
        }
        _ => {} // reasoning items, built-in tool calls: no chat form
    }
    Ok(())
}

fn text_of_parts(parts: &[Value]) -> String {
    let texts = parts
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str));
    texts.collect::<Vec<_>>().join("\n")
}

/// A message item's content: a string stays one; `input_text`/`output_text` parts become text, `input_image`
/// parts image parts (an assistant's content is its text alone).
fn content(content: Value, assistant: bool) -> Result<Value, DialectError> {
    let parts = match content {
        Value::String(s) => return Ok(Value::String(s)),
        Value::Array(parts) => parts,
        _ => {
            return Err(invalid(
                "input.content",
                "expected a string or an array of parts.",
            ))
        }
    };
    if assistant {
        return Ok(Value::String(text_of_parts(&parts)));
    }
    let mut out = Vec::with_capacity(parts.len());
    for mut p in parts {
        match p.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text") => {
                out.push(json!({"type": "text", "text": p["text"].take()}));
            }
            Some("input_image") => {
                let mut image = json!({"url": p["image_url"].take()});
                if !image["url"].is_string() {
                    return Err(invalid(
                        "input_image.image_url",
                        "expected a URL (file ids need the Files API).",
                    ));
                }
                if p["detail"].is_string() {
                    image["detail"] = p["detail"].take();
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            _ => {} // files, audio
        }
    }
    Ok(Value::Array(out))
}

/// `text.format` as chat's `response_format`; plain text needs none.
fn response_format(mut format: Value) -> Option<Value> {
    match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => {
            let mut schema =
                json!({"name": format["name"].take(), "schema": format["schema"].take()});
            if format["strict"].is_boolean() {
                schema["strict"] = format["strict"].take();
            }
            if format["description"].is_string() {
                schema["description"] = format["description"].take();
            }
            Some(json!({"type": "json_schema", "json_schema": schema}))
        }
        Some("json_object") => Some(json!({"type": "json_object"})),
        _ => None,
    }
}

/// Flat function tools as chat's nested ones (other tool types dropped), and `tool_choice`.
fn tools(req: &mut Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), DialectError> {
    let Some(Value::Array(list)) = req.remove("tools") else {
        return Ok(());
    };
    let functions: Vec<Value> = list
        .into_iter()
        .filter(|t| t["type"] == "function")
        .map(|mut t| {
            let mut f = json!({"name": t["name"].take()});
            for key in ["description", "parameters", "strict"] {
                if !t[key].is_null() {
                    f[key] = t[key].take();
                }
            }
            json!({"type": "function", "function": f})
        })
        .collect();
    if functions.is_empty() {
        out.remove("parallel_tool_calls");
        return Ok(());
    }
    out.insert("tools".into(), Value::Array(functions));
    match req.remove("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(mode)) => {
            out.insert("tool_choice".into(), mode.into());
        }
        Some(c) if c["type"] == "function" && c["name"].is_string() => {
            out.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": c["name"]}}),
            );
        }
        Some(_) => {} // a built-in tool's choice: those tools are dropped
    }
    Ok(())
}
