//! A chat completions stream (SSE chunks) translated, as it arrives, into Anthropic's Messages events.
//!
//! The first chunk opens the message (`message_start`); reasoning, text and each tool call open a content
//! block of their own (`content_block_start`), their pieces become `thinking_delta`, `text_delta` and
//! `input_json_delta`, and the block closes when another starts or the choice finishes. The final
//! `message_delta` carries the stop reason and the usage, so it waits for the usage chunk that follows the
//! finish chunk (or `[DONE]`, or the end of the stream after a finish). Only choice 0 is translated.

use super::{error, stop_reason, Counts};
use crate::dialect::chat::{Chunk, ChunkDelta as Delta};
use crate::dialect::frames::{Event, Frames, OnEvents, EVENT_CAP};
use crate::dialect::DialectError;
use crate::tokens::TokenUsage;
use serde_json::Value;
use std::io::Write;

/// The longest id or model name copied into the events (longer ones are cut).
const NAME_CAP: usize = 256;

/// The content block open in the caller's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    None,
    Text,
    Thinking,
    /// A tool call, by its `index` in the chat stream.
    Tool(u64),
}

/// Translates one chat completions stream into Messages events: [`feed`](Self::feed) each read of the
/// backend's body, then [`finish`](Self::finish) at its end.
pub struct ChatToMessagesStream {
    frames: Frames,
    started: bool,
    block: Block,
    /// The id of the last tool call opened (cut like the names).
    tool_id: String,
    /// The index the next content block gets.
    next_index: u32,
    stop: Option<&'static str>,
    usage: Option<TokenUsage>,
    /// A usage object arrived with or after the finish chunk: the message can end.
    usage_final: bool,
    done: bool,
}

impl Default for ChatToMessagesStream {
    fn default() -> Self {
        Self::new()
    }
}

impl ChatToMessagesStream {
    pub fn new() -> Self {
        Self::with_cap(EVENT_CAP)
    }

    /// With a smaller cap on one event (tests).
    pub fn with_cap(cap: usize) -> Self {
        ChatToMessagesStream {
            frames: Frames::new(cap),
            started: false,
            block: Block::None,
            tool_id: String::new(),
            next_index: 0,
            stop: None,
            usage: None,
            usage_final: false,
            done: false,
        }
    }

    /// Translates the events that end in `bytes`, appending Messages events to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), DialectError> {
        self.feed_events(bytes, out)
    }

    /// The backend's stream ended: a last unterminated event is read, and a message whose choice finished
    /// is closed (its usage as known). A stream cut before its finish stays cut.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.finish_events(out);
        if self.stop.is_some() && !self.done {
            self.end(out);
        }
    }

    /// A `ping` event, for the caller's idle stream (only while the message is open).
    pub fn ping(&self, out: &mut Vec<u8>) {
        if self.started && !self.done {
            out.extend_from_slice(b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
        }
    }

    /// The usage the backend reported, in OpenAI's meaning.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// `message_stop` was sent.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    fn event(&mut self, e: Event<'_>, out: &mut Vec<u8>) -> Result<(), DialectError> {
        if self.done {
            return Ok(());
        }
        if e.keep_alive {
            // The backend's keep-alive, in the caller's dialect.
            self.ping(out);
            return Ok(());
        }
        if e.data.trim_ascii() == b"[DONE]" {
            self.end(out);
            return Ok(());
        }
        let chunk: Chunk<'_> = match serde_json::from_slice(&e.data) {
            Ok(chunk) => chunk,
            Err(err) => return Err(DialectError::BadAnswer(format!("a stream chunk: {err}"))),
        };
        if let Some(err) = &chunk.error {
            self.error(err, out);
            return Ok(());
        }
        if !self.started {
            self.start(&chunk, out);
        }
        let choice = chunk.choices.iter().flatten().find(|c| c.index == 0);
        if let Some(delta) = choice.and_then(|c| c.delta.as_ref()) {
            self.delta(delta, out);
        }
        if let Some(reason) = choice.and_then(|c| c.finish_reason.as_deref()) {
            self.close_block(out);
            self.stop = Some(stop_reason(reason));
        }
        if let Some(usage) = chunk.usage.as_ref().filter(|u| u.is_object()) {
            self.usage = Some(super::chat_usage(usage));
            self.usage_final = self.stop.is_some();
        }
        if self.stop.is_some() && self.usage_final {
            self.end(out);
        }
        Ok(())
    }

    fn start(&mut self, chunk: &Chunk<'_>, out: &mut Vec<u8>) {
        self.started = true;
        let id = cut(chunk.id.as_deref().unwrap_or(""));
        let model = cut(chunk.model.as_deref().unwrap_or(""));
        let message = serde_json::json!({
            "type": "message_start",
            "message": {"id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}},
        });
        write_event(out, "message_start", &message);
    }

    fn delta(&mut self, delta: &Delta<'_>, out: &mut Vec<u8>) {
        let reasoning = delta
            .reasoning_content
            .as_deref()
            .or(delta.reasoning.as_deref());
        if let Some(text) = reasoning.filter(|t| !t.is_empty()) {
            self.open(Block::Thinking, out);
            self.text_delta("thinking_delta", "thinking", text, out);
        }
        if let Some(text) = delta.content.as_deref().filter(|t| !t.is_empty()) {
            self.open(Block::Text, out);
            self.text_delta("text_delta", "text", text, out);
        }
        for call in delta.tool_calls.iter().flatten() {
            let index = call.index.unwrap_or(0);
            let function = call.function.as_ref();
            // Some servers repeat the id in every piece of one call: only a new id or index starts a call.
            let new_id = call
                .id
                .as_deref()
                .is_some_and(|id| !id.is_empty() && id != self.tool_id);
            if new_id || self.block != Block::Tool(index) {
                let name = function.and_then(|f| f.name.as_deref()).unwrap_or("");
                self.open_tool(index, call.id.as_deref().unwrap_or(""), name, out);
            }
            if let Some(args) = function
                .and_then(|f| f.arguments.as_deref())
                .filter(|a| !a.is_empty())
            {
                self.text_delta("input_json_delta", "partial_json", args, out);
            }
        }
    }

    /// Opens a block of this kind unless it is the one open.
    fn open(&mut self, kind: Block, out: &mut Vec<u8>) {
        if self.block == kind {
            return;
        }
        self.close_block(out);
        let block = match kind {
            Block::Thinking => {
                serde_json::json!({"type": "thinking", "thinking": "", "signature": ""})
            }
            _ => serde_json::json!({"type": "text", "text": ""}),
        };
        self.start_block(kind, block, out);
    }

    fn open_tool(&mut self, index: u64, id: &str, name: &str, out: &mut Vec<u8>) {
        self.close_block(out);
        self.tool_id.clear();
        self.tool_id.push_str(cut(id));
        let block =
            serde_json::json!({"type": "tool_use", "id": cut(id), "name": cut(name), "input": {}});
        self.start_block(Block::Tool(index), block, out);
    }

    fn start_block(&mut self, kind: Block, block: Value, out: &mut Vec<u8>) {
        let event = serde_json::json!({"type": "content_block_start", "index": self.next_index,
            "content_block": block});
        write_event(out, "content_block_start", &event);
        self.block = kind;
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if self.block == Block::None {
            return;
        }
        let _ = write!(
            out,
            "event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":{}}}\n\n",
            self.next_index
        );
        self.block = Block::None;
        self.next_index += 1;
    }

    /// A `content_block_delta` of the open block, written without building a JSON value.
    fn text_delta(&self, kind: &str, field: &str, text: &str, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":{},\"delta\":{{\"type\":\"{kind}\",\"{field}\":",
            self.next_index
        );
        let _ = serde_json::to_writer(&mut *out, text);
        out.extend_from_slice(b"}}\n\n");
    }

    /// Closes the message: the open block, then `message_delta` (stop reason, usage) and `message_stop`.
    fn end(&mut self, out: &mut Vec<u8>) {
        if self.done || !self.started {
            self.done = true;
            return;
        }
        self.close_block(out);
        let counts = self
            .usage
            .map(|u| Counts::from_usage(&u))
            .unwrap_or_default();
        let event = serde_json::json!({
            "type": "message_delta",
            "delta": {"stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null},
            "usage": counts.to_json(),
        });
        write_event(out, "message_delta", &event);
        out.extend_from_slice(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        self.done = true;
    }

    /// The backend's error in the stream, as Anthropic's `error` event; nothing follows it.
    fn error(&mut self, err: &Value, out: &mut Vec<u8>) {
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("The backend failed.");
        let body = error::body_value(error::type_for_openai(err), message);
        write_event(out, "error", &body);
        self.done = true;
    }
}

fn cut(s: &str) -> &str {
    super::cut(s, NAME_CAP)
}

fn write_event(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

impl OnEvents for ChatToMessagesStream {
    fn frames(&mut self) -> &mut Frames {
        &mut self.frames
    }

    fn on_event(&mut self, e: Event<'_>, out: &mut Vec<u8>) -> Result<(), DialectError> {
        self.event(e, out)
    }
}
