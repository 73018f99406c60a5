//! Anthropic's Messages events translated, as they arrive, into a chat completions stream (SSE chunks).
//!
//! `message_start` gives the first chunk (`role`); text and thinking deltas become `content` and
//! `reasoning_content` chunks; a `tool_use` block opens a `tool_calls` entry (id, name) whose `arguments`
//! then stream from `input_json_delta`; `message_stop` gives the finish chunk, the usage chunk (when the
//! caller asked for it) and `data: [DONE]`. Chunks are written from a prefix fixed at `message_start`, so
//! an event costs one parse and a few copies.

use super::{chat_usage_json, error, finish_reason, Counts};
use crate::dialect::frames::{Event, Frames, OnEvents, EVENT_CAP};
use crate::dialect::DialectError;
use crate::tokens::TokenUsage;
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;

/// The longest id or model name copied into the chunks (longer ones are cut).
const NAME_CAP: usize = 256;

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    message: Option<Value>,
    #[serde(borrow, default)]
    content_block: Option<Block<'a>>,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// An SSE comment: what an Anthropic `ping` (or the backend's own keep-alive) becomes for a chat caller.
pub const KEEP_ALIVE: &[u8] = b": ping\n\n";

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

/// Translates one Messages event stream into chat chunks: [`feed`](Self::feed) each read of the backend's
/// body, then [`finish`](Self::finish) at its end.
pub struct MessagesToChatStream {
    frames: Frames,
    created: i64,
    include_usage: bool,
    /// `{"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":` (set by `message_start`).
    head: Vec<u8>,
    /// The chat index of the tool call open (the number of tool calls so far, minus one).
    tool: Option<u32>,
    tools: u32,
    stop: Option<&'static str>,
    counts: Counts,
    seen_usage: bool,
    done: bool,
}

impl MessagesToChatStream {
    /// `created`: the Unix time the chunks carry; `include_usage`: the caller asked for the usage chunk.
    pub fn new(created: i64, include_usage: bool) -> Self {
        Self::with_cap(created, include_usage, EVENT_CAP)
    }

    /// With a smaller cap on one event (tests).
    pub fn with_cap(created: i64, include_usage: bool, cap: usize) -> Self {
        MessagesToChatStream {
            frames: Frames::new(cap),
            created,
            include_usage,
            head: Vec::new(),
            tool: None,
            tools: 0,
            stop: None,
            counts: Counts::default(),
            seen_usage: false,
            done: false,
        }
    }

    /// Translates the events that end in `bytes`, appending chat chunks to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), DialectError> {
        self.feed_events(bytes, out)
    }

    /// The backend's stream ended: a last unterminated event is read, and a message whose stop reason
    /// arrived (`message_delta`) is finished even without its `message_stop`. A cut stream stays cut.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.finish_events(out);
        if self.stop.is_some() && !self.done {
            self.end(out);
        }
    }

    /// The usage the backend reported, in OpenAI's meaning (None before any).
    pub fn usage(&self) -> Option<TokenUsage> {
        self.seen_usage.then(|| self.counts.to_usage())
    }

    /// `data: [DONE]` was sent.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    fn event(&mut self, e: Event<'_>, out: &mut Vec<u8>) -> Result<(), DialectError> {
        if self.done {
            return Ok(());
        }
        if e.keep_alive {
            out.extend_from_slice(KEEP_ALIVE);
            return Ok(());
        }
        let msg: Message<'_> = serde_json::from_slice(&e.data)
            .map_err(|err| DialectError::BadAnswer(format!("a stream event: {err}")))?;
        match &*msg.kind {
            "message_start" => self.start(msg.message.as_ref(), out),
            "content_block_start" => self.block_start(msg.content_block.as_ref(), out),
            "content_block_delta" => self.block_delta(msg.delta.as_ref(), out),
            "content_block_stop" => self.tool = None,
            "message_delta" => {
                if let Some(reason) = msg.delta.as_ref().and_then(|d| d.stop_reason.as_deref()) {
                    self.stop = Some(finish_reason(reason));
                }
                if let Some(usage) = &msg.usage {
                    self.counts.merge(usage);
                    self.seen_usage = true;
                }
            }
            "message_stop" => self.end(out),
            "error" => self.error(msg.error.as_ref(), out),
            // Keeps the caller's idle timers going; chat clients skip comments.
            "ping" => out.extend_from_slice(KEEP_ALIVE),
            _ => {} // events added later
        }
        Ok(())
    }

    fn start(&mut self, message: Option<&Value>, out: &mut Vec<u8>) {
        let field = |k: &str| {
            message
                .and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        self.head.clear();
        self.head.extend_from_slice(b"{\"id\":");
        let _ = serde_json::to_writer(&mut self.head, cut(field("id")));
        self.head
            .extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        self.head
            .extend_from_slice(self.created.to_string().as_bytes());
        self.head.extend_from_slice(b",\"model\":");
        let _ = serde_json::to_writer(&mut self.head, cut(field("model")));
        self.head.extend_from_slice(b",\"choices\":");
        if let Some(usage) = message.and_then(|m| m.get("usage")) {
            self.counts.merge(usage);
            self.seen_usage = true;
        }
        self.chunk(out, br#"{"role":"assistant","content":""}"#);
    }

    fn block_start(&mut self, block: Option<&Block<'_>>, out: &mut Vec<u8>) {
        let Some(block) = block else { return };
        match &*block.kind {
            "text" => {
                if let Some(text) = block.text.as_deref().filter(|t| !t.is_empty()) {
                    self.text_chunk("content", text, out);
                }
            }
            "tool_use" => {
                let index = self.tools;
                self.tools += 1;
                self.tool = Some(index);
                let mut delta =
                    format!("{{\"tool_calls\":[{{\"index\":{index},\"id\":").into_bytes();
                let _ = serde_json::to_writer(&mut delta, cut(block.id.as_deref().unwrap_or("")));
                delta.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
                let _ = serde_json::to_writer(&mut delta, cut(block.name.as_deref().unwrap_or("")));
                delta.extend_from_slice(b",\"arguments\":\"\"}}]}");
                self.chunk(out, &delta);
            }
            _ => {} // thinking opens empty; server tools and their results have no chat form
        }
    }

    fn block_delta(&mut self, delta: Option<&Delta<'_>>, out: &mut Vec<u8>) {
        let Some(delta) = delta else { return };
        match delta.kind.as_deref() {
            Some("text_delta") => {
                if let Some(text) = delta.text.as_deref().filter(|t| !t.is_empty()) {
                    self.text_chunk("content", text, out);
                }
            }
            Some("thinking_delta") => {
                if let Some(text) = delta.thinking.as_deref().filter(|t| !t.is_empty()) {
                    self.text_chunk("reasoning_content", text, out);
                }
            }
            Some("input_json_delta") => {
                let args = delta.partial_json.as_deref().filter(|a| !a.is_empty());
                if let (Some(index), Some(args)) = (self.tool, args) {
                    let mut d = format!(
                        "{{\"tool_calls\":[{{\"index\":{index},\"function\":{{\"arguments\":"
                    )
                    .into_bytes();
                    let _ = serde_json::to_writer(&mut d, args);
                    d.extend_from_slice(b"}}]}");
                    self.chunk(out, &d);
                }
            }
            _ => {} // signature_delta, citations_delta
        }
    }

    fn text_chunk(&mut self, field: &str, text: &str, out: &mut Vec<u8>) {
        let mut delta = Vec::with_capacity(text.len() + 24);
        delta.extend_from_slice(b"{\"");
        delta.extend_from_slice(field.as_bytes());
        delta.extend_from_slice(b"\":");
        let _ = serde_json::to_writer(&mut delta, text);
        delta.push(b'}');
        self.chunk(out, &delta);
    }

    /// One `data:` chunk of choice 0 with this delta (and no finish reason).
    fn chunk(&self, out: &mut Vec<u8>, delta: &[u8]) {
        self.choice(out, delta, b"null");
    }

    fn choice(&self, out: &mut Vec<u8>, delta: &[u8], finish: &[u8]) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"[{\"index\":0,\"delta\":");
        out.extend_from_slice(delta);
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        out.extend_from_slice(finish);
        out.extend_from_slice(b"}]}\n\n");
    }

    /// The finish chunk, the usage chunk if asked for, and `[DONE]`.
    fn end(&mut self, out: &mut Vec<u8>) {
        if self.head.is_empty() {
            self.done = true;
            return;
        }
        let finish = format!("\"{}\"", self.stop.unwrap_or("stop"));
        self.choice(out, b"{}", finish.as_bytes());
        if self.include_usage {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&self.head);
            out.extend_from_slice(b"[],\"usage\":");
            let _ = serde_json::to_writer(&mut *out, &chat_usage_json(&self.counts.to_usage()));
            out.extend_from_slice(b"}\n\n");
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    /// The backend's `error` event as an OpenAI error chunk; nothing follows it.
    fn error(&mut self, err: Option<&Value>, out: &mut Vec<u8>) {
        let kind = err
            .and_then(|e| e.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("api_error");
        let message = err.and_then(|e| e.get("message")).and_then(Value::as_str);
        let body = error::openai_value(kind, message.unwrap_or("The backend failed."));
        out.extend_from_slice(b"data: ");
        let _ = serde_json::to_writer(&mut *out, &body);
        out.extend_from_slice(b"\n\n");
        self.done = true;
    }
}

fn cut(s: &str) -> &str {
    super::cut(s, NAME_CAP)
}

impl OnEvents for MessagesToChatStream {
    fn frames(&mut self) -> &mut Frames {
        &mut self.frames
    }

    fn on_event(&mut self, e: Event<'_>, out: &mut Vec<u8>) -> Result<(), DialectError> {
        self.event(e, out)
    }
}
