//! An OpenAI chat completions request turned into an Anthropic Messages request.
//!
//! System and developer messages become `system`; `tool` messages become `tool_result` blocks of a user
//! turn; consecutive turns of one role merge (Anthropic wants them alternating). `max_tokens` is required
//! there: the caller's, else the client's cap, else [`DEFAULT_MAX_TOKENS`]. With `thinking` on, Anthropic
//! refuses `temperature`/`top_p` and forced tool use, so those are dropped (a forced tool drops thinking).
//! Unknown fields, `response_format`, `logprobs`, `seed` and the like are dropped; `n` over 1 is an error.

use super::{budget_for_effort, parse_object, text_of};
use crate::dialect::DialectError;
use serde_json::{json, Map, Value};

/// The `max_tokens` of a request that gives none and whose client has no cap.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// How the Messages request is shaped.
#[derive(Debug, Clone, Default)]
pub struct ToMessages {
    /// The client's `max_tokens` cap, the default when the caller gives none.
    pub default_max_tokens: Option<u64>,
}

/// The Messages request for a chat completions request body.
pub fn chat_to_messages(body: &[u8], opts: &ToMessages) -> Result<Vec<u8>, DialectError> {
    let mut req = parse_object(body)?;
    if req.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(invalid(
            "n",
            "an Anthropic backend answers one choice only.",
        ));
    }
    let mut out = Map::new();
    if let Some(model) = req.remove("model") {
        out.insert("model".into(), model);
    }
    let max_tokens = max_tokens(&req, opts)?;
    let (system, turns) = match req.remove("messages") {
        Some(Value::Array(list)) => turns(list)?,
        Some(_) => return Err(invalid("messages", "expected an array of messages.")),
        None => return Err(DialectError::Missing("messages")),
    };
    if !system.is_empty() {
        out.insert("system".into(), system.into());
    }
    out.insert("messages".into(), Value::Array(turns));
    out.insert("max_tokens".into(), max_tokens.into());
    match req.remove("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(list)) if !list.is_empty() => {
            out.insert("stop_sequences".into(), Value::Array(list));
        }
        _ => {}
    }
    let forced = tools(&mut req, &mut out)?;
    let budget = req
        .get("reasoning_effort")
        .and_then(Value::as_str)
        .and_then(budget_for_effort)
        .map(|b| b.min(max_tokens.saturating_sub(1)))
        .filter(|b| *b >= 1024 && !forced);
    if let Some(budget) = budget {
        out.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": budget}),
        );
    } else {
        if let Some(t) = req.get("temperature").and_then(Value::as_f64) {
            // OpenAI's range is 0..2, Anthropic's 0..1.
            out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
        }
        if let Some(p) = req.remove("top_p").filter(Value::is_number) {
            out.insert("top_p".into(), p);
        }
    }
    if let Some(user) = req.remove("user").filter(Value::is_string) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), true.into());
    }
    Ok(Value::Object(out).to_string().into_bytes())
}

fn invalid(field: &'static str, reason: &'static str) -> DialectError {
    DialectError::Invalid { field, reason }
}

fn max_tokens(req: &Map<String, Value>, opts: &ToMessages) -> Result<u64, DialectError> {
    for key in ["max_completion_tokens", "max_tokens"] {
        match req.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => {
                return match v.as_u64().filter(|n| *n > 0) {
                    Some(n) => Ok(n),
                    None => Err(invalid("max_tokens", "expected a positive integer.")),
                }
            }
        }
    }
    Ok(opts.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS))
}

/// The system text and the alternating turns of a chat `messages` list.
fn turns(list: Vec<Value>) -> Result<(String, Vec<Value>), DialectError> {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in list {
        let Value::Object(mut m) = m else {
            return Err(invalid("messages", "each message must be an object."));
        };
        let content = m.remove("content").unwrap_or_default();
        let (role, blocks) = match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => {
                system.push(text_of(&content, "\n"));
                continue;
            }
            Some("user") => ("user", content_blocks(content)?),
            Some("assistant") => ("assistant", assistant_blocks(content, &mut m)?),
            Some("tool") => {
                let block = json!({
                    "type": "tool_result",
                    "tool_use_id": m.remove("tool_call_id").unwrap_or_default(),
                    "content": text_of(&content, "\n"),
                });
                ("user", vec![block])
            }
            _ => {
                return Err(invalid(
                    "messages.role",
                    "expected system, developer, user, assistant or tool.",
                ))
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, prev)) if *last == role => prev.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let turns = turns
        .into_iter()
        .map(|(role, mut blocks)| {
            let content = if blocks.len() == 1 && blocks[0]["type"] == "text" {
                blocks[0]["text"].take()
            } else {
                Value::Array(blocks)
            };
            json!({"role": role, "content": content})
        })
        .collect();
    Ok((system.join("\n\n"), turns))
}

/// A chat content value (string or parts) as Messages blocks; empty text is left out (Anthropic refuses it).
fn content_blocks(content: Value) -> Result<Vec<Value>, DialectError> {
    let parts = match content {
        Value::String(s) if s.is_empty() => return Ok(Vec::new()),
        Value::String(s) => return Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts,
        Value::Null => return Ok(Vec::new()),
        _ => {
            return Err(invalid(
                "messages.content",
                "expected a string or an array of parts.",
            ))
        }
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for mut part in parts {
        match part.get("type").and_then(Value::as_str) {
            Some("text") if part["text"].as_str().is_some_and(|t| !t.is_empty()) => {
                blocks.push(json!({"type": "text", "text": part["text"].take()}));
            }
            Some("image_url") => {
                let url = part["image_url"]["url"]
                    .as_str()
                    .or(part["image_url"].as_str());
                let url = url.ok_or(invalid("image_url.url", "expected a string."))?;
                blocks.push(json!({"type": "image", "source": image_source(url)}));
            }
            _ => {} // audio, files: no Messages equivalent
        }
    }
    Ok(blocks)
}

/// A data URL as a base64 source, any other URL as a URL source.
fn image_source(url: &str) -> Value {
    if let Some((media, data)) = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
    {
        return json!({"type": "base64", "media_type": media, "data": data});
    }
    json!({"type": "url", "url": url})
}

/// An assistant message's text and its `tool_calls` as `tool_use` blocks (arguments parsed back to JSON).
fn assistant_blocks(
    content: Value,
    m: &mut Map<String, Value>,
) -> Result<Vec<Value>, DialectError> {
    let mut blocks = content_blocks(content)?;
    blocks.retain(|b| b["type"] == "text");
    let Some(Value::Array(calls)) = m.remove("tool_calls") else {
        return Ok(blocks);
    };
    for mut call in calls {
        let args = call["function"]["arguments"].as_str().unwrap_or("");
        let input = match args.trim() {
            "" => json!({}),
            args => serde_json::from_str::<Value>(args)
                .map_err(|_| invalid("tool_calls.function.arguments", "expected a JSON object."))?,
        };
        blocks.push(json!({
            "type": "tool_use",
            "id": call["id"].take(),
            "name": call["function"]["name"].take(),
            "input": input,
        }));
    }
    Ok(blocks)
}

/// Function `tools` and `tool_choice`/`parallel_tool_calls`; true when the choice forces a tool.
fn tools(req: &mut Map<String, Value>, out: &mut Map<String, Value>) -> Result<bool, DialectError> {
    let list = match req.remove("tools") {
        Some(Value::Array(list)) => list,
        Some(Value::Null) | None => return Ok(false),
        Some(_) => return Err(invalid("tools", "expected an array of tools.")),
    };
    let tools: Vec<Value> = list
        .into_iter()
        .filter(|t| t["type"] == "function")
        .map(|mut t| {
            let f = &mut t["function"];
            let schema = match f["parameters"].take() {
                Value::Null => json!({"type": "object", "properties": {}}),
                schema => schema,
            };
            let mut tool = json!({"name": f["name"].take(), "input_schema": schema});
            if f["description"].is_string() {
                tool["description"] = f["description"].take();
            }
            tool
        })
        .collect();
    if tools.is_empty() {
        return Ok(false);
    }
    out.insert("tools".into(), Value::Array(tools));
    let mut choice = match req.get("tool_choice") {
        None | Some(Value::Null) => json!({"type": "auto"}),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "required" => json!({"type": "any"}),
            "none" => json!({"type": "none"}),
            _ => {
                return Err(invalid(
                    "tool_choice",
                    "expected auto, required, none or a function.",
                ))
            }
        },
        Some(c) => match c["function"]["name"].as_str() {
            Some(name) => json!({"type": "tool", "name": name}),
            None => return Err(invalid("tool_choice.function.name", "expected a string.")),
        },
    };
    if req.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false) {
        choice["disable_parallel_tool_use"] = true.into();
    }
    let forced = matches!(choice["type"].as_str(), Some("any" | "tool"));
    let default = choice == json!({"type": "auto"});
    if !default {
        out.insert("tool_choice".into(), choice);
    }
    Ok(forced)
}
