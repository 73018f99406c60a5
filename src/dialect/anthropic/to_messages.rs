//! An OpenAI chat completions request turned into an Anthropic Messages request.
//!
//! System and developer messages become `system`; `tool` messages become `tool_result` blocks of a user
//! turn; consecutive turns of one role merge (Anthropic wants them alternating). `max_tokens` is required
//! there: the caller's, else the client's cap, else [`DEFAULT_MAX_TOKENS`]. With `thinking` on, Anthropic
//! refuses `temperature`/`top_p` and forced tool use, so those are dropped (a forced tool drops thinking).
//! Unknown fields, `response_format`, `logprobs`, `seed` and the like are dropped; `n` over 1 is an error.
//! Read into borrowed views and written by serde, like the other direction.

use super::budget_for_effort;
use super::messages::{
    Block, MessagesRequest, Metadata, Source, Thinking, ToolChoice, ToolOut, Turn, TurnContent,
};
use crate::dialect::json::{is_null, is_string, joined, TextOr};
use crate::dialect::DialectError;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The `max_tokens` of a request that gives none and whose client has no cap.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// How the Messages request is shaped.
#[derive(Debug, Clone, Default)]
pub struct ToMessages {
    /// The client's `max_tokens` cap, the default when the caller gives none.
    pub default_max_tokens: Option<u64>,
}

type Content<'a> = TextOr<'a, Part<'a>>;

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(borrow)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    stop: Option<TextOr<'a, Cow<'a, str>>>,
    temperature: Option<f64>,
    #[serde(borrow)]
    top_p: Option<&'a RawValue>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
    #[serde(borrow)]
    reasoning_effort: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tools: Option<Vec<Tool<'a>>>,
    #[serde(borrow)]
    tool_choice: Option<&'a RawValue>,
    parallel_tool_calls: Option<bool>,
    stream: Option<bool>,
    n: Option<u64>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow)]
    content: Option<Content<'a>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(borrow)]
    tool_call_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    image_url: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ImageUrl<'a> {
    #[serde(borrow)]
    url: Cow<'a, str>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: Option<Call<'a>>,
}

#[derive(Deserialize)]
struct Call<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow)]
    parameters: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChoiceFunction<'a> {
    #[serde(borrow)]
    function: Named<'a>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

fn invalid(field: &'static str, reason: &'static str) -> DialectError {
    DialectError::Invalid { field, reason }
}

/// The Messages request for a chat completions request body.
pub fn chat_to_messages(body: &[u8], opts: &ToMessages) -> Result<Vec<u8>, DialectError> {
    let req: Request<'_> = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) if e.is_data() && body.trim_ascii_start().first() != Some(&b'{') => {
            return Err(DialectError::NotObject)
        }
        Err(e) => return Err(DialectError::InvalidJson(e.to_string())),
    };
    if req.n.is_some_and(|n| n > 1) {
        return Err(invalid(
            "n",
            "an Anthropic backend answers one choice only.",
        ));
    }
    let max_tokens = max_tokens(&req, opts)?;
    let list = req.messages.ok_or(DialectError::Missing("messages"))?;
    let (system, messages) = turns(list)?;
    let (tools, tool_choice) = tools(req.tools, req.tool_choice, req.parallel_tool_calls)?;
    let forced = tool_choice
        .as_ref()
        .is_some_and(|c| matches!(c.kind, "any" | "tool"));
    let budget = req
        .reasoning_effort
        .as_deref()
        .and_then(budget_for_effort)
        .map(|b| b.min(max_tokens.saturating_sub(1)))
        .filter(|b| *b >= 1024 && !forced);
    // Anthropic refuses an empty or whitespace-only stop sequence (OpenAI takes them): those are dropped.
    let stop_sequences = match req.stop {
        Some(TextOr::Text(s)) => Some(vec![s]),
        Some(TextOr::List(list)) => Some(list),
        _ => None,
    }
    .map(|list| {
        let kept = list.into_iter().filter(|s| !s.trim().is_empty());
        kept.collect::<Vec<_>>()
    })
    .filter(|list| !list.is_empty());
    let out = MessagesRequest {
        model: req.model,
        system,
        messages,
        max_tokens,
        stop_sequences,
        // OpenAI's range is 0..2, Anthropic's 0..1; neither goes with thinking.
        temperature: req
            .temperature
            .filter(|_| budget.is_none())
            .map(|t| t.clamp(0.0, 1.0)),
        top_p: req.top_p.filter(|p| budget.is_none() && !is_null(&Some(p))),
        thinking: budget.map(|budget_tokens| Thinking {
            kind: "enabled",
            budget_tokens,
        }),
        tools,
        tool_choice,
        metadata: req
            .user
            .filter(|u| is_string(u))
            .map(|user_id| Metadata { user_id }),
        stream: (req.stream == Some(true)).then_some(true),
    };
    serde_json::to_vec(&out).map_err(|e| DialectError::InvalidJson(e.to_string()))
}

fn max_tokens(req: &Request<'_>, opts: &ToMessages) -> Result<u64, DialectError> {
    for raw in [req.max_completion_tokens, req.max_tokens] {
        if let Some(raw) = raw.filter(|r| r.get() != "null") {
            return match raw.get().parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(invalid("max_tokens", "expected a positive integer.")),
            };
        }
    }
    Ok(opts.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS))
}

/// The system text and the alternating turns of a chat `messages` list.
fn turns(list: Vec<Message<'_>>) -> Result<(String, Vec<Turn<'_>>), DialectError> {
    let mut system = String::new();
    let mut turns: Vec<(&'static str, Vec<Block<'_>>)> = Vec::with_capacity(list.len());
    for m in list {
        let content = m.content.unwrap_or(TextOr::Null);
        let (role, blocks) = match &*m.role {
            "system" | "developer" => {
                if !system.is_empty() {
                    system.push_str("\n\n");
                }
                system.push_str(&text_of(&content, "\n"));
                continue;
            }
            "user" => ("user", content_blocks(content)?),
            "assistant" => ("assistant", assistant_blocks(content, m.tool_calls)?),
            "tool" => {
                let block = Block::ToolResult {
                    tool_use_id: m.tool_call_id.unwrap_or_default(),
                    content: text_of(&content, "\n"),
                };
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
            let content = match blocks.pop() {
                Some(Block::Text { text }) if blocks.is_empty() => TurnContent::Text(text),
                Some(last) => {
                    blocks.push(last);
                    TurnContent::Blocks(blocks)
                }
                None => TurnContent::Blocks(blocks),
            };
            Turn { role, content }
        })
        .collect();
    Ok((system, turns))
}

/// The text of a content value: itself, or its text parts joined with `sep` (borrowed when one).
fn text_of<'a>(content: &Content<'a>, sep: &str) -> Cow<'a, str> {
    let TextOr::List(parts) = content else {
        return match content {
            TextOr::Text(t) => t.clone(),
            _ => Cow::Borrowed(""),
        };
    };
    let texts = parts
        .iter()
        .filter(|p| p.kind == "text")
        .filter_map(|p| p.text.as_ref());
    joined(texts, sep)
}

/// A chat content value (string or parts) as Messages blocks; empty text is left out (Anthropic refuses it).
fn content_blocks(content: Content<'_>) -> Result<Vec<Block<'_>>, DialectError> {
    let parts = match content {
        TextOr::Text(s) if s.is_empty() => return Ok(Vec::new()),
        TextOr::Text(text) => return Ok(vec![Block::Text { text }]),
        TextOr::List(parts) => parts,
        TextOr::Null => return Ok(Vec::new()),
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for part in parts {
        match &*part.kind {
            "text" => {
                if let Some(text) = part.text.filter(|t| !t.is_empty()) {
                    blocks.push(Block::Text { text });
                }
            }
            "image_url" => {
                let raw = part
                    .image_url
                    .ok_or(invalid("image_url", "expected an object with a url."))?;
                let url = match serde_json::from_str::<ImageUrl<'_>>(raw.get()) {
                    Ok(u) => u.url,
                    Err(_) => serde_json::from_str::<Cow<'_, str>>(raw.get())
                        .map_err(|_| invalid("image_url.url", "expected a string."))?,
                };
                blocks.push(Block::Image {
                    source: image_source(url),
                });
            }
            _ => {} // audio, files: no Messages equivalent
        }
    }
    Ok(blocks)
}

/// A data URL as a base64 source (borrowing from the body when the URL did), any other URL as a URL source.
fn image_source(url: Cow<'_, str>) -> Source<'_> {
    let split = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
        .map(|(media, data)| (media.len(), data.len()));
    let Some((media, data)) = split else {
        return Source::Url { url };
    };
    let start = "data:".len();
    match url {
        Cow::Borrowed(u) => Source::Base64 {
            media_type: Cow::Borrowed(&u[start..start + media]),
            data: Cow::Borrowed(&u[u.len() - data..]),
        },
        Cow::Owned(u) => Source::Base64 {
            media_type: Cow::Owned(u[start..start + media].to_owned()),
            data: Cow::Owned(u[u.len() - data..].to_owned()),
        },
    }
}

/// An assistant message's text and its `tool_calls` as `tool_use` blocks (arguments checked to be a JSON
/// object and passed as they are).
fn assistant_blocks<'a>(
    content: Content<'a>,
    calls: Option<Vec<ToolCall<'a>>>,
) -> Result<Vec<Block<'a>>, DialectError> {
    let mut blocks = content_blocks(content)?;
    blocks.retain(|b| matches!(b, Block::Text { .. }));
    for call in calls.into_iter().flatten() {
        let (name, args) = match call.function {
            Some(f) => (f.name.unwrap_or_default(), f.arguments.unwrap_or_default()),
            None => (Cow::Borrowed(""), Cow::Borrowed("")),
        };
        let args = args.trim();
        let input = match args {
            "" => RawValue::from_string("{}".to_owned()),
            _ if args.starts_with('{') => RawValue::from_string(args.to_owned()),
            _ => {
                return Err(invalid(
                    "tool_calls.function.arguments",
                    "expected a JSON object.",
                ))
            }
        };
        let input = input
            .map_err(|_| invalid("tool_calls.function.arguments", "expected a JSON object."))?;
        blocks.push(Block::ToolUse {
            id: call.id.unwrap_or_default(),
            name,
            input,
        });
    }
    Ok(blocks)
}

type ToolsOut<'a> = (Option<Vec<ToolOut<'a>>>, Option<ToolChoice<'a>>);

/// Function `tools`, and `tool_choice` with `parallel_tool_calls` (left out when it is the default, auto).
fn tools<'a>(
    tools: Option<Vec<Tool<'a>>>,
    choice: Option<&'a RawValue>,
    parallel: Option<bool>,
) -> Result<ToolsOut<'a>, DialectError> {
    let tools: Vec<ToolOut<'a>> = tools
        .into_iter()
        .flatten()
        .filter(|t| t.kind == "function")
        .filter_map(|t| t.function)
        .map(|f| ToolOut {
            name: f.name,
            description: f.description,
            input_schema: f
                .parameters
                .filter(|p| p.get() != "null")
                .unwrap_or_else(|| empty_schema()),
        })
        .collect();
    if tools.is_empty() {
        return Ok((None, None));
    }
    let (kind, name) = match choice.map(RawValue::get) {
        None | Some("null" | "\"auto\"") => ("auto", None),
        Some("\"required\"") => ("any", None),
        Some("\"none\"") => ("none", None),
        Some(raw) if raw.starts_with('{') => {
            match serde_json::from_str::<ChoiceFunction<'a>>(raw) {
                Ok(c) => ("tool", Some(c.function.name)),
                Err(_) => return Err(invalid("tool_choice.function.name", "expected a string.")),
            }
        }
        Some(_) => {
            return Err(invalid(
                "tool_choice",
                "expected auto, required, none or a function.",
            ))
        }
    };
    let disable = (parallel == Some(false)).then_some(true);
    let choice = (kind != "auto" || disable.is_some()).then_some(ToolChoice {
        kind,
        name,
        disable_parallel_tool_use: disable,
    });
    Ok((Some(tools), choice))
}

/// `{"type":"object","properties":{}}`, the schema of a function without parameters.
fn empty_schema() -> &'static RawValue {
    static EMPTY: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| {
        RawValue::from_string(r#"{"type":"object","properties":{}}"#.to_owned())
            .unwrap_or_else(|_| Box::<RawValue>::default())
    })
}
