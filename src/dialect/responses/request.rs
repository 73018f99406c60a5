//! A Responses API request turned into a chat completions request.
//!
//! `instructions` become the system message; `input` (a string, or items) becomes messages: message items
//! by role, `function_call` items the assistant's `tool_calls` (consecutive calls share one assistant
//! message), `function_call_output` items `tool` messages. `max_output_tokens` -> `max_completion_tokens`,
//! `reasoning.effort` -> `reasoning_effort`, `text.format` -> `response_format`, flat function tools ->
//! chat's nested ones. A stream asks for usage, which `response.completed` carries. Read into borrowed
//! views (schemas as raw JSON) and written by serde, like the Messages translation.

use crate::dialect::anthropic::ToChat;
use crate::dialect::chat::{self, Content, Message, Part};
use crate::dialect::json::{is_null, TextOr};
use crate::dialect::DialectError;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    instructions: Option<Cow<'a, str>>,
    #[serde(borrow)]
    input: Option<TextOr<'a, Item<'a>>>,
    #[serde(borrow)]
    previous_response_id: Option<&'a RawValue>,
    #[serde(borrow)]
    max_output_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    temperature: Option<&'a RawValue>,
    #[serde(borrow)]
    top_p: Option<&'a RawValue>,
    parallel_tool_calls: Option<bool>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
    #[serde(borrow)]
    reasoning: Option<Reasoning<'a>>,
    #[serde(borrow)]
    text: Option<Text<'a>>,
    #[serde(borrow)]
    tools: Option<Vec<Tool<'a>>>,
    #[serde(borrow)]
    tool_choice: Option<&'a RawValue>,
    stream: Option<bool>,
}

/// Every kind of input item at once; each kind reads the fields it has.
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<TextOr<'a, InputPart<'a>>>,
    #[serde(borrow)]
    call_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<Cow<'a, str>>,
    #[serde(borrow)]
    output: Option<TextOr<'a, InputPart<'a>>>,
}

#[derive(Deserialize)]
struct InputPart<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    image_url: Option<Cow<'a, str>>,
    #[serde(borrow)]
    detail: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Reasoning<'a> {
    #[serde(borrow)]
    effort: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Text<'a> {
    #[serde(borrow)]
    format: Option<Format<'a>>,
}

#[derive(Deserialize)]
struct Format<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow)]
    schema: Option<&'a RawValue>,
    strict: Option<bool>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow)]
    parameters: Option<&'a RawValue>,
    strict: Option<bool>,
}

#[derive(Deserialize)]
struct FunctionChoice<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
}

fn invalid(field: &'static str, reason: &'static str) -> DialectError {
    DialectError::Invalid { field, reason }
}

/// The chat completions request for a Responses request body.
pub fn responses_to_chat(body: &[u8], opts: &ToChat) -> Result<Vec<u8>, DialectError> {
    let req: Request<'_> = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) if e.is_data() && body.trim_ascii_start().first() != Some(&b'{') => {
            return Err(DialectError::NotObject)
        }
        Err(e) => return Err(DialectError::InvalidJson(e.to_string())),
    };
    if !is_null(&req.previous_response_id) {
        return Err(invalid(
            "previous_response_id",
            "this backend serves chat completions and keeps no responses: send the whole input.",
        ));
    }
    let mut messages = Vec::new();
    if let Some(text) = req.instructions {
        messages.push(Message::new("system", Content::Text(text)));
    }
    match req.input {
        Some(TextOr::Text(text)) => messages.push(Message::new("user", Content::Text(text))),
        Some(TextOr::List(items)) => {
            for item in items {
                push_item(item, &mut messages)?;
            }
        }
        _ => return Err(DialectError::Missing("input")),
    }
    let (tools, tool_choice) = tools(req.tools, req.tool_choice);
    let mut out = chat::Request {
        model: req.model,
        messages,
        temperature: req.temperature.filter(|t| !is_null(&Some(t))),
        top_p: req.top_p.filter(|t| !is_null(&Some(t))),
        user: req.user.filter(|u| !is_null(&Some(u))),
        reasoning_effort: req.reasoning.and_then(|r| r.effort),
        response_format: req.text.and_then(|t| t.format).and_then(response_format),
        parallel_tool_calls: req.parallel_tool_calls.filter(|_| tools.is_some()),
        tools,
        tool_choice,
        ..chat::Request::default()
    };
    out.set_max(req.max_output_tokens, opts.legacy_max_tokens);
    out.set_stream(req.stream == Some(true));
    serde_json::to_vec(&out).map_err(|e| DialectError::InvalidJson(e.to_string()))
}

fn push_item<'a>(item: Item<'a>, out: &mut Vec<Message<'a>>) -> Result<(), DialectError> {
    match item.kind.as_deref().unwrap_or("message") {
        "message" => {
            let role = match item.role.as_deref() {
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
            let content = content(item.content.unwrap_or(TextOr::Null), role == "assistant")?;
            out.push(Message::new(role, content));
        }
        "function_call" => {
            let call = chat::ToolCall {
                id: item.call_id.unwrap_or_default(),
                kind: "function",
                function: chat::Call {
                    name: item.name.unwrap_or_default(),
                    arguments: item.arguments.unwrap_or(Cow::Borrowed("{}")),
                },
            };
            match out.last_mut() {
                Some(last) if last.role == "assistant" => {
                    if matches!(&last.content, Content::Text(t) if t.is_empty()) {
                        last.content = Content::Null;
                    }
                    last.tool_calls.get_or_insert_with(Vec::new).push(call);
                }
                _ => out.push(Message {
                    role: "assistant",
                    content: Content::Null,
                    tool_calls: Some(vec![call]),
                    tool_call_id: None,
                }),
            }
        }
        "function_call_output" => out.push(Message {
            role: "tool",
            content: Content::Text(text_of(item.output.unwrap_or(TextOr::Null))),
            tool_calls: None,
            tool_call_id: Some(item.call_id.unwrap_or_default()),
        }),
        _ => {} // reasoning items, built-in tool calls: no chat form
    }
    Ok(())
}

/// The text of a content value: itself, or its parts' texts joined with new lines.
fn text_of<'a>(content: TextOr<'a, InputPart<'a>>) -> Cow<'a, str> {
    match content {
        TextOr::Text(t) => t,
        TextOr::Null => Cow::Borrowed(""),
        TextOr::List(parts) => {
            let mut texts = parts.into_iter().filter_map(|p| p.text);
            let mut joined = texts.next().unwrap_or_default();
            for t in texts {
                let s = joined.to_mut();
                s.push('\n');
                s.push_str(&t);
            }
            joined
        }
    }
}

/// A message item's content: a string stays one; `input_text`/`output_text` parts become text, `input_image`
/// parts image parts (an assistant's content is its text alone).
fn content<'a>(
    content: TextOr<'a, InputPart<'a>>,
    assistant: bool,
) -> Result<Content<'a>, DialectError> {
    let parts = match content {
        TextOr::List(parts) if !assistant => parts,
        other => return Ok(Content::Text(text_of(other))),
    };
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        match &*p.kind {
            "input_text" | "output_text" | "text" => out.push(Part::Text {
                text: p.text.unwrap_or_default(),
            }),
            "input_image" => {
                let url = p.image_url.ok_or(invalid(
                    "input_image.image_url",
                    "expected a URL (file ids need the Files API).",
                ))?;
                out.push(Part::ImageUrl {
                    image_url: chat::ImageUrl {
                        url,
                        detail: p.detail,
                    },
                });
            }
            _ => {} // files, audio
        }
    }
    Ok(Content::Parts(out))
}

/// `text.format` as chat's `response_format`; plain text needs none.
fn response_format(format: Format<'_>) -> Option<chat::ResponseFormat<'_>> {
    match &*format.kind {
        "json_schema" => Some(chat::ResponseFormat {
            kind: "json_schema",
            json_schema: Some(chat::JsonSchema {
                name: format.name.unwrap_or_default(),
                description: format.description,
                schema: format.schema,
                strict: format.strict,
            }),
        }),
        "json_object" => Some(chat::ResponseFormat {
            kind: "json_object",
            json_schema: None,
        }),
        _ => None,
    }
}

type ToolsOut<'a> = (Option<Vec<chat::Tool<'a>>>, Option<chat::ToolChoice<'a>>);

/// Flat function tools as chat's nested ones (other tool types dropped), and `tool_choice` (a built-in
/// tool's choice is dropped with the tool).
fn tools<'a>(tools: Option<Vec<Tool<'a>>>, choice: Option<&'a RawValue>) -> ToolsOut<'a> {
    let functions: Vec<chat::Tool<'a>> = tools
        .into_iter()
        .flatten()
        .filter(|t| t.kind == "function")
        .map(|t| chat::Tool {
            kind: "function",
            function: chat::Function {
                name: t.name.unwrap_or_default(),
                description: t.description,
                parameters: t.parameters.filter(|p| p.get() != "null"),
                strict: t.strict,
            },
        })
        .collect();
    if functions.is_empty() {
        return (None, None);
    }
    let choice = choice.and_then(|raw| {
        if let Ok(mode) = serde_json::from_str::<Cow<'a, str>>(raw.get()) {
            return Some(chat::ToolChoice::Mode(mode));
        }
        let f = serde_json::from_str::<FunctionChoice<'a>>(raw.get()).ok()?;
        let name = f.name.filter(|_| f.kind == "function")?;
        Some(chat::ToolChoice::Function {
            kind: "function",
            function: chat::Named { name },
        })
    });
    (Some(functions), choice)
}
