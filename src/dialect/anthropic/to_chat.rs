//! An Anthropic Messages request turned into an OpenAI chat completions request.
//!
//! What has no chat equivalent is dropped: `cache_control`, `thinking` blocks sent back, `top_k`, server
//! tools (web search, code execution), documents other than plain text. Unknown top-level fields are dropped
//! too: a chat backend would refuse Anthropic's. The body is read into borrowed views (texts without escapes
//! borrowed, tool schemas and inputs kept as raw JSON) and written by serde, with no tree in between.

use super::effort_for_budget;
use crate::dialect::chat::{self, Content as ChatContent, Message as ChatMessage, Part};
use crate::dialect::json::{is_null, is_string, joined, TextOr};
use crate::dialect::DialectError;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// How the chat request is shaped.
#[derive(Debug, Clone, Default)]
pub struct ToChat {
    /// Send the cap as `max_tokens` (older OpenAI-compatible servers) instead of `max_completion_tokens`
    /// (which OpenAI's reasoning models require).
    pub legacy_max_tokens: bool,
}

type Content<'a> = TextOr<'a, Block<'a>>;

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    system: Option<TextOr<'a, Block<'a>>>,
    #[serde(borrow)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    temperature: Option<&'a RawValue>,
    #[serde(borrow)]
    top_p: Option<&'a RawValue>,
    #[serde(borrow)]
    stop_sequences: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    metadata: Option<Metadata<'a>>,
    #[serde(borrow)]
    thinking: Option<Thinking<'a>>,
    #[serde(borrow)]
    tools: Option<Vec<Tool<'a>>>,
    #[serde(borrow)]
    tool_choice: Option<ToolChoice<'a>>,
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow)]
    user_id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Thinking<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    budget_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow)]
    content: Content<'a>,
}

/// Every kind of content block at once; each kind reads the fields it has.
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source: Option<Source<'a>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_use_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<Content<'a>>,
}

#[derive(Deserialize)]
struct Source<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    media_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<Cow<'a, str>>,
    #[serde(borrow)]
    url: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow)]
    input_schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolChoice<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    disable_parallel_tool_use: Option<bool>,
}

fn invalid(field: &'static str, reason: &'static str) -> DialectError {
    DialectError::Invalid { field, reason }
}

/// The chat completions request for a Messages request body. A stream asks for usage
/// (`stream_options.include_usage`), so the translated stream's last `message_delta` can carry it.
pub fn messages_to_chat(body: &[u8], opts: &ToChat) -> Result<Vec<u8>, DialectError> {
    let req: Request<'_> = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) if e.is_data() && body.trim_ascii_start().first() != Some(&b'{') => {
            return Err(DialectError::NotObject)
        }
        Err(e) => return Err(DialectError::InvalidJson(e.to_string())),
    };
    let list = req.messages.ok_or(DialectError::Missing("messages"))?;
    let mut messages = Vec::with_capacity(list.len() + 1);
    if let Some(system) = &req.system {
        let text = text_of(system, "\n\n");
        if !text.is_empty() {
            messages.push(ChatMessage::new("system", ChatContent::Text(text)));
        }
    }
    for m in list {
        match (&*m.role, m.content) {
            (role @ ("user" | "assistant"), TextOr::Text(text)) => {
                let role = if role == "user" { "user" } else { "assistant" };
                messages.push(ChatMessage::new(role, ChatContent::Text(text)));
            }
            ("user", TextOr::List(blocks)) => user_blocks(blocks, &mut messages)?,
            ("assistant", TextOr::List(blocks)) => messages.push(assistant_blocks(blocks)),
            ("user" | "assistant", TextOr::Null) => {
                return Err(invalid(
                    "messages.content",
                    "expected a string or an array of blocks.",
                ))
            }
            _ => {
                return Err(invalid(
                    "messages.role",
                    "must be \"user\" or \"assistant\".",
                ))
            }
        }
    }
    let (tools, tool_choice, parallel) = tools(req.tools, req.tool_choice)?;
    let mut out = chat::Request {
        model: req.model,
        messages,
        temperature: req.temperature.filter(|t| !is_null(&Some(t))),
        top_p: req.top_p.filter(|t| !is_null(&Some(t))),
        stop: req.stop_sequences.filter(|s| !s.is_empty()),
        user: req
            .metadata
            .and_then(|m| m.user_id)
            .filter(|u| is_string(u)),
        reasoning_effort: req.thinking.and_then(|t| {
            let budget = (t.kind == "enabled").then_some(t.budget_tokens?)?;
            Some(Cow::Borrowed(effort_for_budget(budget)))
        }),
        tools,
        tool_choice,
        parallel_tool_calls: parallel,
        ..chat::Request::default()
    };
    out.set_max(req.max_tokens, opts.legacy_max_tokens);
    out.set_stream(req.stream == Some(true));
    serde_json::to_vec(&out).map_err(|e| DialectError::InvalidJson(e.to_string()))
}

/// The text of a content value: itself, or its text blocks' joined with `sep` (borrowed when one).
fn text_of<'a>(content: &Content<'a>, sep: &str) -> Cow<'a, str> {
    let TextOr::List(blocks) = content else {
        return match content {
            TextOr::Text(t) => t.clone(),
            _ => Cow::Borrowed(""),
        };
    };
    let texts = blocks
        .iter()
        .filter(|b| b.kind == "text")
        .filter_map(|b| b.text.as_ref());
    joined(texts, sep)
}

/// A user turn: its `tool_result` blocks become `tool` messages (first, as chat wants them right after the
/// assistant's `tool_calls`), the rest one user message of text and image parts.
fn user_blocks<'a>(
    blocks: Vec<Block<'a>>,
    out: &mut Vec<ChatMessage<'a>>,
) -> Result<(), DialectError> {
    let mut parts = Vec::new();
    for b in blocks {
        match &*b.kind {
            "text" => parts.push(Part::Text {
                text: b.text.unwrap_or_default(),
            }),
            "image" => parts.push(image_part(b.source)?),
            "document" => {
                if let Some(Source {
                    kind,
                    data: Some(data),
                    ..
                }) = b.source
                {
                    if kind == "text" {
                        parts.push(Part::Text { text: data });
                    }
                }
            }
            "tool_result" => {
                let content = b.content.unwrap_or(TextOr::Null);
                let text = text_of(&content, "\n");
                if let TextOr::List(inner) = content {
                    for img in inner.into_iter().filter(|i| i.kind == "image") {
                        parts.push(image_part(img.source)?);
                    }
                }
                out.push(ChatMessage {
                    role: "tool",
                    content: ChatContent::Text(text),
                    tool_calls: None,
                    tool_call_id: Some(b.tool_use_id.unwrap_or_default()),
                });
            }
            _ => {}
        }
    }
    match parts.len() {
        0 => {}
        1 if matches!(parts[0], Part::Text { .. }) => {
            if let Some(Part::Text { text }) = parts.pop() {
                out.push(ChatMessage::new("user", ChatContent::Text(text)));
            }
        }
        _ => out.push(ChatMessage::new("user", ChatContent::Parts(parts))),
    }
    Ok(())
}

/// An image block's `source` (base64 or URL) as a chat `image_url` part (base64 as a data URL).
fn image_part(source: Option<Source<'_>>) -> Result<Part<'_>, DialectError> {
    let source = source.ok_or(invalid("image.source", "an image needs a source."))?;
    let url = match &*source.kind {
        "base64" => match (source.media_type, source.data) {
            (Some(media), Some(data)) => Cow::Owned(format!("data:{media};base64,{data}")),
            _ => return Err(invalid("image.source", "base64 needs media_type and data.")),
        },
        "url" => source
            .url
            .ok_or(invalid("image.source.url", "expected a string."))?,
        _ => {
            return Err(invalid(
                "image.source.type",
                "expected \"base64\" or \"url\".",
            ))
        }
    };
    Ok(Part::ImageUrl {
        image_url: chat::ImageUrl { url, detail: None },
    })
}

/// An assistant turn: its text joined, its `tool_use` blocks as `tool_calls` (input as a JSON string);
/// thinking blocks are the backend's own and have no place in a chat request.
fn assistant_blocks(blocks: Vec<Block<'_>>) -> ChatMessage<'_> {
    let mut text: Option<Cow<'_, str>> = None;
    let mut calls = Vec::new();
    for b in blocks {
        match &*b.kind {
            "text" => match (&mut text, b.text) {
                (None, t) => text = t,
                (Some(acc), Some(t)) => acc.to_mut().push_str(&t),
                _ => {}
            },
            "tool_use" => calls.push(chat::ToolCall {
                id: b.id.unwrap_or_default(),
                kind: "function",
                function: chat::Call {
                    name: b.name.unwrap_or_default(),
                    arguments: Cow::Borrowed(b.input.map_or("{}", RawValue::get)),
                },
            }),
            _ => {}
        }
    }
    let text = text.filter(|t| !t.is_empty());
    let content = match (text, calls.is_empty()) {
        (Some(t), _) => ChatContent::Text(t),
        (None, true) => ChatContent::Text(Cow::Borrowed("")),
        (None, false) => ChatContent::Null,
    };
    ChatMessage {
        role: "assistant",
        content,
        tool_calls: (!calls.is_empty()).then_some(calls),
        tool_call_id: None,
    }
}

type ToolsOut<'a> = (
    Option<Vec<chat::Tool<'a>>>,
    Option<chat::ToolChoice<'a>>,
    Option<bool>,
);

/// `tools` as chat functions (server tools, which have no `input_schema`, are dropped), `tool_choice` and
/// `parallel_tool_calls`.
fn tools<'a>(
    tools: Option<Vec<Tool<'a>>>,
    choice: Option<ToolChoice<'a>>,
) -> Result<ToolsOut<'a>, DialectError> {
    let functions: Vec<chat::Tool<'a>> = tools
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some(chat::Tool {
                kind: "function",
                function: chat::Function {
                    name: t.name?,
                    description: t.description,
                    parameters: Some(t.input_schema?),
                    strict: None,
                },
            })
        })
        .collect();
    if functions.is_empty() {
        return Ok((None, None, None));
    }
    let Some(choice) = choice else {
        return Ok((Some(functions), None, None));
    };
    let mapped = match &*choice.kind {
        "auto" => chat::ToolChoice::Mode(Cow::Borrowed("auto")),
        "any" => chat::ToolChoice::Mode(Cow::Borrowed("required")),
        "none" => chat::ToolChoice::Mode(Cow::Borrowed("none")),
        "tool" => chat::ToolChoice::Function {
            kind: "function",
            function: chat::Named {
                name: choice.name.unwrap_or_default(),
            },
        },
        _ => {
            return Err(invalid(
                "tool_choice.type",
                "expected auto, any, tool or none.",
            ))
        }
    };
    let parallel = (choice.disable_parallel_tool_use == Some(true)).then_some(false);
    Ok((Some(functions), Some(mapped), parallel))
}
