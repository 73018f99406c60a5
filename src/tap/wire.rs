//! Borrowed, shallow views of the JSON backends send: only the fields the tap reads; the rest is skipped unbuilt.
//!
//! A stream's event is read by the checking skim ([`Envelope::read`], `json::Cursor`) and by serde_json only
//! where the skim is unsure; both give the same view.

use crate::json::{self, Cursor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The text of one JSON value as the backend sent it, checked (by serde_json, or by `json::Cursor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw<'a>(&'a str);

impl<'a> Raw<'a> {
    pub fn get(self) -> &'a str {
        self.0
    }

    /// A value's text that `json::Cursor` read (and so checked).
    pub(super) fn checked(text: &'a str) -> Self {
        Raw(text)
    }
}

impl<'a> From<&'a RawValue> for Raw<'a> {
    fn from(raw: &'a RawValue) -> Self {
        Raw(raw.get())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'de RawValue>::deserialize(d).map(Raw::from)
    }
}

/// One SSE event's JSON or a whole response body: chat and completions chunks and bodies, embeddings
/// bodies, and Responses API events (`type`, `response`) and bodies. Values the tap may splice into or only
/// sometimes needs stay raw, so reading them costs nothing until asked.
#[derive(Deserialize, Default, Debug, PartialEq)]
pub struct Envelope<'a> {
    #[serde(borrow, rename = "type")]
    pub kind: Option<Raw<'a>>,
    #[serde(borrow)]
    pub id: Option<Raw<'a>>,
    #[serde(borrow)]
    pub model: Option<Raw<'a>>,
    #[serde(borrow)]
    pub choices: Option<Vec<Choice<'a>>>,
    #[serde(borrow)]
    pub usage: Option<Raw<'a>>,
    #[serde(borrow)]
    pub response: Option<Raw<'a>>,
    /// A Messages stream's `content_block_delta` delta (read only for Messages answers).
    #[serde(borrow)]
    pub delta: Option<Raw<'a>>,
    /// A Messages body's content blocks (read only for Messages answers).
    #[serde(borrow)]
    pub content: Option<Raw<'a>>,
}

/// A Messages content block or `content_block_delta` delta: its type and text.
#[derive(Deserialize)]
pub struct TextBlock<'a> {
    #[serde(borrow, rename = "type")]
    pub kind: Option<Raw<'a>>,
    #[serde(borrow)]
    pub text: Option<Raw<'a>>,
}

impl<'a> TextBlock<'a> {
    /// The text of a block (or delta) of type `kind` when it has at least one character.
    pub fn text_of(&self, kind: &str) -> Option<Raw<'a>> {
        let named = self.kind.is_some_and(|k| {
            k.get().strip_prefix('"').and_then(|k| k.strip_suffix('"')) == Some(kind)
        });
        self.text.filter(|&t| named && nonempty_str(t))
    }
}

#[derive(Deserialize, Default, Debug, PartialEq)]
pub struct Choice<'a> {
    pub index: Option<u32>,
    #[serde(borrow)]
    pub delta: Option<Message<'a>>,
    #[serde(borrow)]
    pub message: Option<Message<'a>>,
    /// Completions' text (stream and body).
    #[serde(borrow)]
    pub text: Option<Raw<'a>>,
    #[serde(borrow)]
    pub finish_reason: Option<Raw<'a>>,
}

/// A chat `delta` (stream) or `message` (body).
#[derive(Deserialize, Default, Debug, PartialEq)]
pub struct Message<'a> {
    #[serde(borrow)]
    pub content: Option<Raw<'a>>,
    #[serde(borrow)]
    pub reasoning_content: Option<Raw<'a>>,
    #[serde(borrow)]
    pub reasoning: Option<Raw<'a>>,
    #[serde(borrow)]
    pub tool_calls: Option<Raw<'a>>,
    #[serde(borrow)]
    pub function_call: Option<Raw<'a>>,
    #[serde(borrow)]
    pub refusal: Option<Raw<'a>>,
}

/// The `response` object of a Responses API event.
#[derive(Deserialize)]
pub struct ResponseObject<'a> {
    #[serde(borrow)]
    pub id: Option<Raw<'a>>,
    #[serde(borrow)]
    pub model: Option<Raw<'a>>,
    #[serde(borrow)]
    pub usage: Option<Raw<'a>>,
}

impl<'a> Envelope<'a> {
    /// The event or body `text` as serde_json reads it (the checking skim first, serde_json where it is unsure);
    /// None when it is not a JSON object of this shape.
    pub fn parse(text: &'a str) -> Option<Self> {
        Envelope::read(text).or_else(|| serde_json::from_str(text).ok())
    }

    /// The event read by the checking skim; None when the skim cannot be sure to read what serde_json reads:
    /// text serde_json refuses, a key given twice, a choice that is not an object, an odd `index`.
    pub fn read(text: &'a str) -> Option<Self> {
        let mut env = Envelope::default();
        let mut seen = Seen::default();
        let mut cursor = Cursor::new(text);
        cursor.object(|c, key| {
            let (bit, slot) = match key {
                b"type" => (0, &mut env.kind),
                b"id" => (1, &mut env.id),
                b"model" => (2, &mut env.model),
                b"usage" => (3, &mut env.usage),
                b"response" => (4, &mut env.response),
                b"delta" => (5, &mut env.delta),
                b"content" => (6, &mut env.content),
                b"choices" => {
                    seen.once(7)?;
                    env.choices = match c.is_null()? {
                        true => None,
                        false => Some(read_choices(c)?),
                    };
                    return Some(());
                }
                _ => return c.raw().map(drop),
            };
            seen.once(bit)?;
            *slot = c.nullable()?.map(Raw);
            Some(())
        })?;
        cursor.end()?;
        Some(env)
    }
}

/// The `choices` array, each an object.
fn read_choices<'a>(c: &mut Cursor<'a>) -> Option<Vec<Choice<'a>>> {
    let mut choices = Vec::new();
    c.array(|c| {
        choices.push(read_choice(c)?);
        Some(())
    })?;
    Some(choices)
}

fn read_choice<'a>(c: &mut Cursor<'a>) -> Option<Choice<'a>> {
    // serde_json also reads a struct from an array, by position: left to it.
    c.at_object()?.then_some(())?;
    let mut choice = Choice::default();
    let mut seen = Seen::default();
    c.object(|c, key| {
        let (bit, slot) = match key {
            b"text" => (0, &mut choice.text),
            b"finish_reason" => (1, &mut choice.finish_reason),
            b"index" => {
                seen.once(2)?;
                choice.index = index(c.nullable()?)?;
                return Some(());
            }
            b"delta" | b"message" => {
                let (bit, slot) = match key {
                    b"delta" => (3, &mut choice.delta),
                    _ => (4, &mut choice.message),
                };
                seen.once(bit)?;
                *slot = match c.is_null()? {
                    true => None,
                    false => Some(read_message(c)?),
                };
                return Some(());
            }
            _ => return c.raw().map(drop),
        };
        seen.once(bit)?;
        *slot = c.nullable()?.map(Raw);
        Some(())
    })?;
    Some(choice)
}

fn read_message<'a>(c: &mut Cursor<'a>) -> Option<Message<'a>> {
    c.at_object()?.then_some(())?;
    let mut message = Message::default();
    let mut seen = Seen::default();
    c.object(|c, key| {
        let (bit, slot) = match key {
            b"content" => (0, &mut message.content),
            b"reasoning_content" => (1, &mut message.reasoning_content),
            b"reasoning" => (2, &mut message.reasoning),
            b"tool_calls" => (3, &mut message.tool_calls),
            b"function_call" => (4, &mut message.function_call),
            b"refusal" => (5, &mut message.refusal),
            _ => return c.raw().map(drop),
        };
        seen.once(bit)?;
        *slot = c.nullable()?.map(Raw);
        Some(())
    })?;
    Some(message)
}

/// A choice's `index` as serde_json reads an `Option<u32>`: null, or digits that fit; None (unsure) for any
/// other number.
fn index(raw: Option<&str>) -> Option<Option<u32>> {
    let Some(digits) = raw else {
        return Some(None);
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Some)
}

impl Envelope<'_> {
    /// The chunk `stream_options.include_usage` adds: no choices, only usage.
    pub fn usage_only(&self) -> bool {
        self.usage.is_some() && self.choices.as_ref().is_some_and(|c| c.is_empty())
    }

    /// Whether the chunk carries generated output: content, text, reasoning or a tool call.
    pub fn has_token(&self) -> bool {
        let mut choices = self.choices.iter().flatten();
        choices.any(|c| nonempty(c.text) || c.delta.as_ref().is_some_and(Message::has_token))
    }
}

impl Choice<'_> {
    /// The choice's `index`, else its position in `choices`.
    pub fn index_or(&self, position: usize) -> u32 {
        self.index
            .unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX))
    }
}

impl Message<'_> {
    fn has_token(&self) -> bool {
        [
            self.content,
            self.reasoning_content,
            self.reasoning,
            self.tool_calls,
            self.function_call,
            self.refusal,
        ]
        .into_iter()
        .any(nonempty)
    }
}

/// The known keys of one object met so far (one bit each): serde_json refuses a known key given twice.
#[derive(Default)]
struct Seen(u32);

impl Seen {
    /// None when the key numbered `bit` was met before.
    fn once(&mut self, bit: u32) -> Option<()> {
        let mask = 1 << bit;
        if self.0 & mask != 0 {
            return None;
        }
        self.0 |= mask;
        Some(())
    }
}

/// A value that says something: not null, not an empty string, array or object.
pub fn nonempty(raw: Option<Raw>) -> bool {
    raw.is_some_and(|r| !matches!(r.get(), "null" | "\"\"" | "[]" | "{}"))
}

/// A JSON string with at least one character.
pub fn nonempty_str(raw: Raw) -> bool {
    let v = raw.get();
    v.starts_with('"') && v.len() > 2
}

/// The text of a JSON string value (borrowed unless it has escapes); None for other values.
pub fn as_str(raw: Raw<'_>) -> Option<Cow<'_, str>> {
    let v = raw.get();
    if !v.starts_with('"') {
        return None;
    }
    // A RawValue is valid JSON: a string without a backslash has no escapes, and its text is what lies
    // between the quotes. Token deltas almost always are such strings.
    let inner = v.get(1..v.len() - 1)?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    if let Some(text) = json::unescape(inner) {
        return Some(Cow::Owned(text));
    }
    match serde_json::from_str::<&str>(v) {
        Ok(s) => Some(Cow::Borrowed(s)),
        Err(_) => serde_json::from_str::<String>(v).ok().map(Cow::Owned),
    }
}

/// Whether a Responses API event type names a delta of output (`response.output_text.delta`, ...).
pub fn is_output_delta(kind: &str) -> bool {
    kind.starts_with("response.") && kind.ends_with(".delta")
}

#[cfg(test)]
mod tests;
