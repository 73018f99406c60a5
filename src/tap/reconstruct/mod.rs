//! Rebuilds a stream's final message from its chunks for the usage record's Response column, within the record's size.
//!
//! Texts (content, reasoning, tool names and arguments) are kept only up to the record's size as they arrive,
//! together with the choices and tool calls they belong to; what does not fit is counted, not kept, so an endless
//! stream costs a bounded amount of memory. Usage and finish reasons are small and always kept (last wins), and
//! the rendered JSON is fitted into the record's size (`render`) with each cut text ending in a `…(+N bytes)` marker.

mod render;

use super::wire::{as_str, Choice, Envelope, Message, Raw};
use crate::escape::cut;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest `id` and `model`, and tool call `id` and `type`, kept.
const FIELD_CAP: usize = 256;
/// Longest finish reason kept (OpenAI's longest is `content_filter`).
const REASON_CAP: usize = 32;
/// Largest `usage` object kept (OpenAI's, with its details, is a few hundred bytes).
const USAGE_CAP: usize = 16 << 10;
/// What a new choice or tool call takes from the room: its place in memory and in the rendered JSON.
const ENTRY_COST: usize = 128;

/// What a stream said so far, merged per choice `index`.
pub struct Reconstruction {
    /// The record's size in bytes (`usage.max_body_bytes`): the rendered JSON is fitted into it.
    limit: usize,
    /// Bytes left for texts, tool call ids and new entries; starts at `limit` and is never given back.
    room: usize,
    id: Option<String>,
    model: Option<String>,
    usage: Option<Box<RawValue>>,
    /// The Responses API's `response` object (the last seen: `response.completed` ends a stream), cut at `limit`.
    response: Option<String>,
    choices: Vec<ChoiceAcc>,
}

/// A text put together from deltas: its first bytes, as many as there was room for, and how many more came.
#[derive(Default)]
struct Text {
    kept: String,
    dropped: usize,
}

struct ChoiceAcc {
    index: u32,
    content: Option<Text>,
    reasoning: Option<Text>,
    tool_calls: Vec<ToolCallAcc>,
    finish_reason: Option<String>,
}

struct ToolCallAcc {
    index: u32,
    id: Option<String>,
    /// `None`: `function`.
    kind: Option<String>,
    name: Text,
    arguments: Text,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    index: Option<u32>,
    #[serde(borrow)]
    id: Option<Raw<'a>>,
    #[serde(borrow, rename = "type")]
    kind: Option<Raw<'a>>,
    #[serde(borrow)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(borrow)]
    name: Option<Raw<'a>>,
    #[serde(borrow)]
    arguments: Option<Raw<'a>>,
}

impl Reconstruction {
    /// An empty reconstruction for a record of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Reconstruction {
            limit,
            room: limit,
            id: None,
            model: None,
            usage: None,
            response: None,
            choices: Vec::new(),
        }
    }

    pub fn observe(&mut self, env: &Envelope) {
        if self.id.is_none() {
            self.id = env.id.and_then(|r| short(r, FIELD_CAP));
        }
        if self.model.is_none() {
            self.model = env.model.and_then(|r| short(r, FIELD_CAP));
        }
        if let Some(usage) = env.usage.filter(|u| u.get().len() <= USAGE_CAP) {
            self.usage = RawValue::from_string(usage.get().to_owned()).ok();
        }
        for (position, choice) in env.choices.iter().flatten().enumerate() {
            self.observe_choice(choice.index_or(position), choice);
        }
    }

    pub fn set_response(&mut self, response: Raw) {
        let kept = self.response.get_or_insert_with(String::new);
        kept.clear();
        kept.push_str(cut(response.get(), self.limit));
    }

    /// Appends to a choice's content (the prefix, spliced into what the caller got).
    pub fn push_content(&mut self, index: u32, text: &str) {
        let room = &mut self.room;
        if let Some(acc) = entry(&mut self.choices, room, index) {
            acc.content
                .get_or_insert_with(Text::default)
                .push(text, room);
        }
    }

    /// Bytes held for the record: texts, fields and entries (for tests of the bounds).
    #[cfg(test)]
    pub fn held(&self) -> usize {
        let fields = [&self.id, &self.model, &self.response];
        let fields: usize = fields
            .iter()
            .filter_map(|f| f.as_ref())
            .map(String::len)
            .sum();
        let usage = self.usage.as_ref().map_or(0, |u| u.get().len());
        let reasons = self.choices.iter().filter_map(|c| c.finish_reason.as_ref());
        fields + usage + reasons.map(String::len).sum::<usize>() + self.charged()
    }

    /// What texts, tool call ids and entries hold, counted afresh: never more than the record's size.
    #[cfg(test)]
    pub fn charged(&self) -> usize {
        let ids = |c: &ToolCallAcc| {
            [&c.id, &c.kind]
                .iter()
                .filter_map(|f| f.as_ref())
                .map(|f| f.len())
                .sum::<usize>()
        };
        let calls = self.choices.iter().flat_map(|c| &c.tool_calls);
        let entries = self.choices.len() + calls.clone().count();
        let texts = self
            .choices
            .iter()
            .map(ChoiceAcc::text_bytes)
            .sum::<usize>();
        entries * ENTRY_COST + texts + calls.map(ids).sum::<usize>()
    }

    /// Checks each part against its own bound.
    #[cfg(test)]
    pub fn assert_bounded(&self) {
        assert!(
            self.charged() <= self.limit,
            "{} > {}",
            self.charged(),
            self.limit
        );
        let fields = [&self.id, &self.model].into_iter().flatten();
        assert!(fields.map(String::len).all(|n| n <= FIELD_CAP));
        assert!(self.response.as_ref().is_none_or(|r| r.len() <= self.limit));
        assert!(self
            .usage
            .as_ref()
            .is_none_or(|u| u.get().len() <= USAGE_CAP));
        let reasons = self.choices.iter().filter_map(|c| c.finish_reason.as_ref());
        assert!(reasons.map(String::len).all(|n| n <= REASON_CAP));
    }

    /// The most [`Reconstruction::held`] can reach for a record of `limit` bytes.
    #[cfg(test)]
    pub fn held_bound(limit: usize) -> usize {
        let entries = limit / ENTRY_COST;
        limit * 2 + 2 * FIELD_CAP + USAGE_CAP + entries * REASON_CAP
    }

    fn observe_choice(&mut self, index: u32, choice: &Choice) {
        let room = &mut self.room;
        let Some(acc) = entry(&mut self.choices, room, index) else {
            return;
        };
        append(&mut acc.content, choice.text, room);
        if let Some(delta) = &choice.delta {
            acc.observe_delta(delta, room);
        }
        if let Some(reason) = choice.finish_reason.and_then(|r| short(r, REASON_CAP)) {
            acc.finish_reason = Some(reason);
        }
    }
}

/// The choice with this index, added when there is room for it.
fn entry<'a>(
    choices: &'a mut Vec<ChoiceAcc>,
    room: &mut usize,
    index: u32,
) -> Option<&'a mut ChoiceAcc> {
    let at = match choices.binary_search_by_key(&index, |c| c.index) {
        Ok(at) => at,
        Err(at) => {
            *room = room.checked_sub(ENTRY_COST)?;
            let acc = ChoiceAcc {
                index,
                content: None,
                reasoning: None,
                tool_calls: Vec::new(),
                finish_reason: None,
            };
            choices.insert(at, acc);
            at
        }
    };
    choices.get_mut(at)
}

impl ChoiceAcc {
    fn observe_delta(&mut self, delta: &Message, room: &mut usize) {
        append(&mut self.content, delta.content, room);
        let reasoning = delta.reasoning_content.or(delta.reasoning);
        append(&mut self.reasoning, reasoning, room);
        let calls = delta
            .tool_calls
            .map(|raw| serde_json::from_str::<Vec<ToolCallDelta>>(raw.get()));
        for (position, call) in calls.and_then(Result::ok).iter().flatten().enumerate() {
            self.merge_tool_call(position, call, room);
        }
    }

    fn merge_tool_call(&mut self, position: usize, call: &ToolCallDelta, room: &mut usize) {
        let index = call
            .index
            .unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX));
        let at = match self.tool_calls.iter().position(|c| c.index == index) {
            Some(at) => at,
            None => {
                let Some(left) = room.checked_sub(ENTRY_COST) else {
                    return;
                };
                *room = left;
                self.tool_calls.push(ToolCallAcc {
                    index,
                    id: None,
                    kind: None,
                    name: Text::default(),
                    arguments: Text::default(),
                });
                self.tool_calls.len() - 1
            }
        };
        let acc = &mut self.tool_calls[at];
        if let Some(id) = call.id.and_then(as_str).filter(|s| !s.is_empty()) {
            set_field(&mut acc.id, &id, room);
        }
        if let Some(kind) = call.kind.and_then(as_str).filter(|s| !s.is_empty()) {
            set_field(&mut acc.kind, &kind, room);
        }
        let Some(function) = &call.function else {
            return;
        };
        // Some backends repeat the whole name in every delta; OpenAI sends it once.
        if let Some(name) = function
            .name
            .and_then(as_str)
            .filter(|n| *n != acc.name.kept)
        {
            acc.name.push(&name, room);
        }
        if let Some(arguments) = function.arguments.and_then(as_str) {
            acc.arguments.push(&arguments, room);
        }
    }
}

impl Text {
    /// Appends `piece` as far as there is room (on a character boundary); once cut, a text only counts.
    fn push(&mut self, piece: &str, room: &mut usize) {
        if self.dropped > 0 {
            self.dropped = self.dropped.saturating_add(piece.len());
            return;
        }
        let kept = cut(piece, *room);
        *room -= kept.len();
        self.kept.push_str(kept);
        self.dropped = piece.len() - kept.len();
    }
}

/// Appends a string delta to `into` (created on the first one, even if empty).
fn append(into: &mut Option<Text>, raw: Option<Raw>, room: &mut usize) {
    if let Some(text) = raw.and_then(as_str) {
        into.get_or_insert_with(Text::default).push(&text, room);
    }
}

/// A string value cut to `cap` bytes.
fn short(raw: Raw, cap: usize) -> Option<String> {
    as_str(raw).map(|s| cut(&s, cap).to_owned())
}

/// Replaces a field's value, cut to [`FIELD_CAP`] and to the room (the old value's bytes go back to it).
fn set_field(slot: &mut Option<String>, value: &str, room: &mut usize) {
    *room += slot.as_ref().map_or(0, String::len);
    let kept = cut(value, FIELD_CAP.min(*room));
    *room -= kept.len();
    *slot = Some(kept.to_owned());
}
