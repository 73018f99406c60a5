//! A chat completions stream translated, as it arrives, into the Responses API's stream events.
//!
//! `response.created` and `response.in_progress` open it; reasoning, text and each tool call become an
//! output item (`response.output_item.added`, its deltas: `response.reasoning_summary_text.delta`,
//! `response.output_text.delta`, `response.function_call_arguments.delta`, then the `.done` events and
//! `response.output_item.done`), and `response.completed` (or `incomplete`) carries every item and the usage,
//! so it waits for the usage chunk like the Messages translation. The `.done` events and the final response
//! repeat each item's whole text, as the protocol wants: that text is kept, up to [`KEEP_CAP`] bytes in all
//! (past it the repeated text is cut; the deltas are never held back).

use super::answer::{call_item, message_item, reasoning_item};
use super::{response_json, usage_json};
use crate::dialect::anthropic::chat_usage;
use crate::dialect::chat::{Chunk, ChunkDelta as Delta};
use crate::dialect::frames::{Event, Frames, OnEvents, EVENT_CAP};
use crate::dialect::DialectError;
use crate::tokens::TokenUsage;
use serde_json::{json, Map, Value};
use std::io::Write;

/// How much item text is kept for the `.done` events and `response.completed`, at most.
pub const KEEP_CAP: usize = 8 << 20;
/// The longest id or model name copied into the events (longer ones are cut).
const NAME_CAP: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Reasoning,
    Message,
    /// A function call, by its `index` in the chat stream, with its call id and name.
    Call {
        index: u64,
        call_id: String,
        name: String,
    },
}

/// The output item being streamed.
struct Open {
    kind: Kind,
    id: String,
    /// Its text (or arguments) so far, as far as the cap allows.
    text: String,
}

/// Translates one chat completions stream into Responses events: [`feed`](Self::feed) each read of the
/// backend's body, then [`finish`](Self::finish) at its end.
pub struct ChatToResponsesStream {
    frames: Frames,
    created: i64,
    seq: u64,
    id: String,
    model: String,
    started: bool,
    open: Option<Open>,
    /// The finished items, for `response.completed`.
    items: Vec<Value>,
    kept: usize,
    /// `completed`, or `incomplete` after a `length` finish.
    status: Option<&'static str>,
    usage: Option<TokenUsage>,
    usage_final: bool,
    done: bool,
}

impl ChatToResponsesStream {
    /// `created`: the Unix time of `created_at`.
    pub fn new(created: i64) -> Self {
        ChatToResponsesStream {
            frames: Frames::new(EVENT_CAP),
            created,
            seq: 0,
            id: String::new(),
            model: String::new(),
            started: false,
            open: None,
            items: Vec::new(),
            kept: 0,
            status: None,
            usage: None,
            usage_final: false,
            done: false,
        }
    }

    /// Translates the events that end in `bytes`, appending Responses events to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), DialectError> {
        self.feed_events(bytes, out)
    }

    /// The backend's stream ended: a response whose choice finished is completed; a cut one stays cut.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.finish_events(out);
        if self.status.is_some() && !self.done {
            self.end(out);
        }
    }

    /// The usage the backend reported, in OpenAI's meaning.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// The id of the response, once `response.created` was sent.
    pub fn response_id(&self) -> Option<&str> {
        self.started.then_some(self.id.as_str())
    }

    /// `response.completed` (or the error event) was sent.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    fn event(&mut self, e: Event<'_>, out: &mut Vec<u8>) -> Result<(), DialectError> {
        if self.done || e.keep_alive {
            return Ok(());
        }
        if e.data.trim_ascii() == b"[DONE]" {
            self.end(out);
            return Ok(());
        }
        let chunk: Chunk<'_> = serde_json::from_slice(&e.data)
            .map_err(|err| DialectError::BadAnswer(format!("a stream chunk: {err}")))?;
        if let Some(err) = &chunk.error {
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("The backend failed.");
            let code = err.get("code").cloned().unwrap_or(Value::Null);
            self.emit(
                out,
                "error",
                json!({"code": code, "message": message, "param": null}),
            );
            self.done = true;
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
            self.close(out);
            self.status = Some(if reason == "length" {
                "incomplete"
            } else {
                "completed"
            });
        }
        if let Some(usage) = chunk.usage.as_ref().filter(|u| u.is_object()) {
            self.usage = Some(chat_usage(usage));
            self.usage_final = self.status.is_some();
        }
        if self.status.is_some() && self.usage_final {
            self.end(out);
        }
        Ok(())
    }

    fn start(&mut self, chunk: &Chunk<'_>, out: &mut Vec<u8>) {
        self.started = true;
        self.id = format!("resp_{}", cut(chunk.id.as_deref().unwrap_or("")));
        self.model = cut(chunk.model.as_deref().unwrap_or("")).to_owned();
        let response = response_json(
            &self.id,
            &self.model,
            self.created,
            "in_progress",
            json!([]),
            Value::Null,
        );
        self.emit(
            out,
            "response.created",
            json!({"response": response.clone()}),
        );
        self.emit(out, "response.in_progress", json!({"response": response}));
    }

    fn delta(&mut self, delta: &Delta<'_>, out: &mut Vec<u8>) {
        let reasoning = delta
            .reasoning_content
            .as_deref()
            .or(delta.reasoning.as_deref());
        if let Some(text) = reasoning.filter(|t| !t.is_empty()) {
            self.open(Kind::Reasoning, out);
            self.piece(
                "response.reasoning_summary_text.delta",
                "summary_index",
                text,
                out,
            );
        }
        if let Some(text) = delta.content.as_deref().filter(|t| !t.is_empty()) {
            self.open(Kind::Message, out);
            self.piece("response.output_text.delta", "content_index", text, out);
        }
        for call in delta.tool_calls.iter().flatten() {
            let index = call.index.unwrap_or(0);
            let f = call.function.as_ref();
            let same = matches!(&self.open, Some(Open { kind: Kind::Call { index: i, call_id, .. }, .. })
                if *i == index && call.id.as_deref().is_none_or(|id| id.is_empty() || id == call_id));
            if !same {
                let call_id = cut(call.id.as_deref().unwrap_or("")).to_owned();
                let name = cut(f.and_then(|f| f.name.as_deref()).unwrap_or("")).to_owned();
                self.open(
                    Kind::Call {
                        index,
                        call_id,
                        name,
                    },
                    out,
                );
            }
            if let Some(args) = f
                .and_then(|f| f.arguments.as_deref())
                .filter(|a| !a.is_empty())
            {
                self.piece("response.function_call_arguments.delta", "", args, out);
            }
        }
    }

    /// Opens an item of this kind unless one of it is open.
    fn open(&mut self, kind: Kind, out: &mut Vec<u8>) {
        if self.open.as_ref().is_some_and(|o| o.kind == kind) {
            return;
        }
        self.close(out);
        let n = self.items.len();
        let (id, item) = match &kind {
            Kind::Reasoning => {
                let id = format!("rs_{n}_{}", self.id);
                (
                    id.clone(),
                    json!({"type": "reasoning", "id": id, "summary": []}),
                )
            }
            Kind::Message => {
                let id = format!("msg_{n}_{}", self.id);
                let item = json!({"type": "message", "id": id, "status": "in_progress", "role": "assistant",
                    "content": []});
                (id, item)
            }
            Kind::Call { call_id, name, .. } => {
                let id = format!("fc_{call_id}");
                let item = json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
                    "arguments": "", "status": "in_progress"});
                (id, item)
            }
        };
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": n, "item": item}),
        );
        match kind {
            Kind::Reasoning => self.emit(out, "response.reasoning_summary_part.added", json!({"item_id": id,
                "output_index": n, "summary_index": 0, "part": {"type": "summary_text", "text": ""}})),
            Kind::Message => self.emit(out, "response.content_part.added", json!({"item_id": id,
                "output_index": n, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []}})),
            Kind::Call { .. } => {}
        }
        self.open = Some(Open {
            kind,
            id,
            text: String::new(),
        });
    }

    /// One delta of the open item (`part_key`: its `content_index`/`summary_index`, if any), written without
    /// building a JSON value; its text is kept.
    fn piece(&mut self, name: &str, part_key: &str, text: &str, out: &mut Vec<u8>) {
        let Some(open) = &mut self.open else { return };
        if self.kept + text.len() <= KEEP_CAP {
            open.text.push_str(text);
            self.kept += text.len();
        }
        let _ = write!(
            out,
            "event: {name}\ndata: {{\"type\":\"{name}\",\"sequence_number\":{},\"item_id\":",
            self.seq
        );
        let _ = serde_json::to_writer(&mut *out, &open.id);
        let _ = write!(out, ",\"output_index\":{}", self.items.len());
        if !part_key.is_empty() {
            let _ = write!(out, ",\"{part_key}\":0");
        }
        out.extend_from_slice(b",\"delta\":");
        let _ = serde_json::to_writer(&mut *out, text);
        out.extend_from_slice(b"}\n\n");
        self.seq += 1;
    }

    /// Closes the open item: its `.done` events with the whole text, then `response.output_item.done`.
    fn close(&mut self, out: &mut Vec<u8>) {
        let Some(Open { kind, id, text }) = self.open.take() else {
            return;
        };
        let n = self.items.len();
        let item = match kind {
            Kind::Reasoning => {
                self.emit(
                    out,
                    "response.reasoning_summary_text.done",
                    json!({"item_id": id, "output_index": n,
                    "summary_index": 0, "text": text}),
                );
                self.emit(
                    out,
                    "response.reasoning_summary_part.done",
                    json!({"item_id": id, "output_index": n,
                    "summary_index": 0, "part": {"type": "summary_text", "text": text}}),
                );
                reasoning_item(&id, &text)
            }
            Kind::Message => {
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": n,
                    "content_index": 0, "text": text}),
                );
                self.emit(out, "response.content_part.done", json!({"item_id": id, "output_index": n,
                    "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}}));
                message_item(&id, &text)
            }
            Kind::Call { call_id, name, .. } => {
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": id,
                    "output_index": n, "arguments": text}),
                );
                call_item(&call_id, &name, &text)
            }
        };
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": n, "item": item}),
        );
        self.items.push(item);
    }

    /// Closes the response: the open item, then `response.completed` (or `.incomplete`) with the usage.
    fn end(&mut self, out: &mut Vec<u8>) {
        if self.done || !self.started {
            self.done = true;
            return;
        }
        self.close(out);
        let status = self.status.unwrap_or("completed");
        let usage = self.usage.as_ref().map_or(Value::Null, usage_json);
        let items = Value::Array(std::mem::take(&mut self.items));
        let response = response_json(&self.id, &self.model, self.created, status, items, usage);
        let name = if status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(out, name, json!({"response": response}));
        self.done = true;
    }

    /// Writes one event: `event: name`, then its data with `type` and `sequence_number` first.
    fn emit(&mut self, out: &mut Vec<u8>, name: &str, fields: Value) {
        let mut data = Map::with_capacity(8);
        data.insert("type".into(), name.into());
        data.insert("sequence_number".into(), self.seq.into());
        if let Value::Object(fields) = fields {
            data.extend(fields);
        }
        self.seq += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        let _ = serde_json::to_writer(&mut *out, &data);
        out.extend_from_slice(b"\n\n");
    }
}

fn cut(s: &str) -> &str {
    crate::dialect::cut(s, NAME_CAP)
}

impl OnEvents for ChatToResponsesStream {
    fn frames(&mut self) -> &mut Frames {
        &mut self.frames
    }

    fn on_event(&mut self, e: Event<'_>, out: &mut Vec<u8>) -> Result<(), DialectError> {
        self.event(e, out)
    }
}
