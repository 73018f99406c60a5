//! Borrowed, shallow views of the JSON backends send: only the fields the tap reads; the rest is skipped unbuilt.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// One SSE event's JSON or a whole response body: chat and completions chunks and bodies, embeddings
/// bodies, and Responses API events (`type`, `response`) and bodies. Values the tap may splice into or only
/// sometimes needs stay raw, so reading them costs nothing until asked.
#[derive(Deserialize)]
pub struct Envelope<'a> {
    #[serde(borrow, rename = "type")]
    pub kind: Option<&'a RawValue>,
    #[serde(borrow)]
    pub id: Option<&'a RawValue>,
    #[serde(borrow)]
    pub model: Option<&'a RawValue>,
    #[serde(borrow)]
    pub choices: Option<Vec<Choice<'a>>>,
    #[serde(borrow)]
    pub usage: Option<&'a RawValue>,
    #[serde(borrow)]
    pub response: Option<&'a RawValue>,
    /// A Messages stream's `content_block_delta` delta (read only for Messages answers).
    #[serde(borrow)]
    pub delta: Option<&'a RawValue>,
    /// A Messages body's content blocks (read only for Messages answers).
    #[serde(borrow)]
    pub content: Option<&'a RawValue>,
}

/// A Messages content block or `content_block_delta` delta: its type and text.
#[derive(Deserialize)]
pub struct TextBlock<'a> {
    #[serde(borrow, rename = "type")]
    pub kind: Option<&'a RawValue>,
    #[serde(borrow)]
    pub text: Option<&'a RawValue>,
}

impl<'a> TextBlock<'a> {
    /// The text of a block (or delta) of type `kind` when it has at least one character.
    pub fn text_of(&self, kind: &str) -> Option<&'a RawValue> {
        let named = self.kind.is_some_and(|k| {
            k.get().strip_prefix('"').and_then(|k| k.strip_suffix('"')) == Some(kind)
        });
        self.text.filter(|t| named && nonempty_str(t))
    }
}

#[derive(Deserialize)]
pub struct Choice<'a> {
    pub index: Option<u32>,
    #[serde(borrow)]
    pub delta: Option<Message<'a>>,
    #[serde(borrow)]
    pub message: Option<Message<'a>>,
    /// Completions' text (stream and body).
    #[serde(borrow)]
    pub text: Option<&'a RawValue>,
    #[serde(borrow)]
    pub finish_reason: Option<&'a RawValue>,
}

/// A chat `delta` (stream) or `message` (body).
#[derive(Deserialize)]
pub struct Message<'a> {
    #[serde(borrow)]
    pub content: Option<&'a RawValue>,
    #[serde(borrow)]
    pub reasoning_content: Option<&'a RawValue>,
    #[serde(borrow)]
    pub reasoning: Option<&'a RawValue>,
    #[serde(borrow)]
    pub tool_calls: Option<&'a RawValue>,
    #[serde(borrow)]
    pub function_call: Option<&'a RawValue>,
    #[serde(borrow)]
    pub refusal: Option<&'a RawValue>,
}

/// The `response` object of a Responses API event.
#[derive(Deserialize)]
pub struct ResponseObject<'a> {
    #[serde(borrow)]
    pub id: Option<&'a RawValue>,
    #[serde(borrow)]
    pub model: Option<&'a RawValue>,
    #[serde(borrow)]
    pub usage: Option<&'a RawValue>,
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

/// A value that says something: not null, not an empty string, array or object.
pub fn nonempty(raw: Option<&RawValue>) -> bool {
    raw.is_some_and(|r| !matches!(r.get(), "null" | "\"\"" | "[]" | "{}"))
}

/// A JSON string with at least one character.
pub fn nonempty_str(raw: &RawValue) -> bool {
    let v = raw.get();
    v.starts_with('"') && v.len() > 2
}

/// The text of a JSON string value (borrowed unless it has escapes); None for other values.
pub fn as_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let v = raw.get();
    if !v.starts_with('"') {
        return None;
    }
    // A RawValue is valid JSON: a string without a backslash has no escapes, and its text is what lies
    // between the quotes. Token deltas almost always are such strings.
    if let Some(inner) = v.get(1..v.len() - 1).filter(|inner| !inner.contains('\\')) {
        return Some(Cow::Borrowed(inner));
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
mod tests {
    use super::*;

    #[test]
    fn reads_a_chunk_shallowly() {
        let text = r#"{"id":"c1","model":"m","choices":[{"index":1,"delta":{"content":"a\"b","x":[1]},
            "logprobs":null,"finish_reason":null}],"usage":null,"extra":{"deep":[{}]}}"#;
        let env: Envelope = serde_json::from_str(text).unwrap();
        let choices = env.choices.as_ref().unwrap();
        assert_eq!(choices[0].index_or(0), 1);
        let content = choices[0].delta.as_ref().unwrap().content.unwrap();
        assert_eq!(as_str(content).unwrap(), "a\"b");
        assert!(env.usage.is_none() && choices[0].finish_reason.is_none());
        assert!(env.has_token() && !env.usage_only());
    }

    #[test]
    fn strings_are_read_like_serde_reads_them() {
        for text in [
            r#""plain""#,
            r#""""#,
            r#""caf\u00e9 \"q\" \\ \n""#,
            r#""日本""#,
        ] {
            let raw: &RawValue = serde_json::from_str(text).unwrap();
            let expected: String = serde_json::from_str(text).unwrap();
            assert_eq!(as_str(raw).unwrap(), expected, "{text}");
        }
        for text in ["null", "1", "[\"a\"]", "{}"] {
            let raw: &RawValue = serde_json::from_str(text).unwrap();
            assert!(as_str(raw).is_none(), "{text}");
        }
    }

    #[test]
    fn empty_values_are_not_tokens() {
        let text = r#"{"choices":[{"delta":{"role":"assistant","content":"","tool_calls":[]}}]}"#;
        let env: Envelope = serde_json::from_str(text).unwrap();
        assert!(!env.has_token());
        let env: Envelope = serde_json::from_str(r#"{"choices":[],"usage":{}}"#).unwrap();
        assert!(env.usage_only());
    }
}
