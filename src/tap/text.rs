//! What a backend generated, for counting its tokens when it reports no usage: the stream's first bytes kept
//! cheaply as they pass, and the texts read out of them (or out of a JSON body) later, off the request path.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use crate::endpoints::ApiKind;

/// Stream bytes kept for counting, at most: beyond it only their number is kept, and the count of what was
/// kept is scaled up by it.
pub const SEEN_CAP: usize = 32 << 10;
/// The room a stream's kept bytes start with.
const SEEN_FIRST: usize = 8 << 10;

/// The first [`SEEN_CAP`] bytes of a stream and how many passed in all; dropped once the backend reports usage.
#[derive(Debug, Default)]
pub struct Seen {
    kept: BytesMut,
    total: u64,
    off: bool,
}

impl Seen {
    /// Copies what fits of `chunk` (a copy is cheaper than holding the chunk's larger buffer).
    pub fn add(&mut self, chunk: &[u8]) {
        if self.off {
            return;
        }
        self.total = self.total.saturating_add(chunk.len() as u64);
        if self.kept.capacity() == 0 {
            // One allocation for a typical answer, rather than a doubling for every few events.
            self.kept.reserve(SEEN_FIRST);
        }
        let room = SEEN_CAP.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    /// Bytes held.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.kept.len()
    }

    /// The backend reported usage: nothing needs counting.
    pub fn stop(&mut self) {
        self.off = true;
        self.kept = BytesMut::new();
    }

    pub fn take(&mut self) -> Option<Generated> {
        if self.off || self.total == 0 {
            return None;
        }
        Some(Generated {
            sse: true,
            bytes: std::mem::take(&mut self.kept).freeze(),
            total: self.total,
        })
    }
}

/// The generated answer as it arrived: a stream's first bytes, or a whole JSON body.
#[derive(Debug, Clone)]
pub struct Generated {
    pub sse: bool,
    pub bytes: Bytes,
    /// Bytes of the whole answer (more than `bytes` when only the first were kept).
    pub total: u64,
}

impl Generated {
    pub fn body(bytes: Bytes) -> Generated {
        let total = bytes.len() as u64;
        Generated {
            sse: false,
            bytes,
            total,
        }
    }

    /// The texts the model wrote in what was kept (content, reasoning, refusals, tool names and arguments),
    /// joined by newlines, and the factor by which the whole answer is larger than what was kept.
    pub fn texts(&self, kind: ApiKind) -> (String, f64) {
        let mut out = String::new();
        if self.sse {
            for data in events(&self.bytes) {
                if let Ok(value) = serde_json::from_slice::<Value>(data) {
                    chunk_texts(kind, &value, &mut out);
                }
            }
        } else if let Ok(value) = serde_json::from_slice::<Value>(&self.bytes) {
            body_texts(kind, &value, &mut out);
        }
        let kept = self.bytes.len().max(1) as f64;
        (out, (self.total as f64 / kept).max(1.0))
    }
}

/// The `data:` payload of each complete event (a last one cut in the middle is left out).
fn events(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let data = line.strip_prefix(b"data:")?;
        let data = data.strip_prefix(b" ").unwrap_or(data);
        (data != b"[DONE]").then_some(data)
    })
}

/// Adds `text` to `out`: a stream's deltas are pieces of one text and join as they are (a separator would
/// be counted as tokens of its own); the fields of a whole body are texts of their own, one per line.
fn push(out: &mut String, text: Option<&Value>) {
    if let Some(text) = text.and_then(Value::as_str).filter(|t| !t.is_empty()) {
        out.push_str(text);
    }
}

fn push_line(out: &mut String, text: Option<&Value>) {
    if text.and_then(Value::as_str).is_some_and(|t| !t.is_empty()) && !out.is_empty() {
        out.push('\n');
    }
    push(out, text);
}

/// The texts of a chat message or delta: content (a string or text parts), reasoning, refusal, tool calls.
fn message_texts(message: &Value, out: &mut String, push: fn(&mut String, Option<&Value>)) {
    match message.get("content") {
        Some(Value::Array(parts)) => parts.iter().for_each(|p| push(out, p.get("text"))),
        content => push(out, content),
    }
    for field in ["reasoning_content", "reasoning", "refusal"] {
        push(out, message.get(field));
    }
    if let Some(Value::Array(calls)) = message.get("tool_calls") {
        for call in calls {
            let function = call.get("function");
            push(out, function.and_then(|f| f.get("name")));
            push(out, function.and_then(|f| f.get("arguments")));
        }
    }
    if let Some(call) = message.get("function_call") {
        push(out, call.get("name"));
        push(out, call.get("arguments"));
    }
}

fn choices(value: &Value) -> impl Iterator<Item = &Value> {
    value
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// One stream chunk: chat deltas, completions texts, or a Responses API delta event.
fn chunk_texts(kind: ApiKind, value: &Value, out: &mut String) {
    match kind {
        ApiKind::Responses => {
            let delta = value.get("type").and_then(Value::as_str).is_some_and(|t| {
                t.ends_with(".delta") && !t.contains("audio") && !t.contains("image")
            });
            if delta {
                push(out, value.get("delta"));
            }
        }
        _ => {
            for choice in choices(value) {
                if let Some(delta) = choice.get("delta") {
                    message_texts(delta, out, push);
                }
                push(out, choice.get("text"));
            }
        }
    }
}

/// A whole JSON answer: chat messages, completions texts, or a Responses API `output`.
fn body_texts(kind: ApiKind, value: &Value, out: &mut String) {
    match kind {
        ApiKind::Responses => {
            for item in value
                .get("output")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for part in ["content", "summary"] {
                    if let Some(Value::Array(parts)) = item.get(part) {
                        parts.iter().for_each(|p| push_line(out, p.get("text")));
                    }
                }
                push_line(out, item.get("arguments"));
            }
        }
        _ => {
            for choice in choices(value) {
                if let Some(message) = choice.get("message") {
                    message_texts(message, out, push_line);
                }
                push_line(out, choice.get("text"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sse(events: &[&str]) -> Vec<u8> {
        events
            .iter()
            .map(|e| format!("data: {e}\n\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn chat_stream_texts_and_tool_arguments() {
        let bytes = sse(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":"think"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{\"a\":"}}]}}]}"#,
            "[DONE]",
        ]);
        let mut seen = Seen::default();
        seen.add(&bytes);
        let g = seen.take().unwrap();
        let (text, scale) = g.texts(ApiKind::Chat);
        assert_eq!(text, "Hellothinkf{\"a\":");
        assert!((scale - 1.0).abs() < f64::EPSILON);
    }

    #[test]
    fn kept_bytes_are_capped_and_scaled() {
        let event = sse(&[r#"{"choices":[{"index":0,"delta":{"content":"word "}}]}"#]);
        let mut seen = Seen::default();
        let n = SEEN_CAP * 3 / event.len();
        for _ in 0..n {
            seen.add(&event);
        }
        let g = seen.take().unwrap();
        assert_eq!(g.bytes.len(), SEEN_CAP);
        let (text, scale) = g.texts(ApiKind::Chat);
        let kept_events = text.matches("word ").count();
        assert_eq!(
            kept_events,
            SEEN_CAP / event.len(),
            "a cut last event is left out"
        );
        let estimate = kept_events as f64 * scale;
        assert!(
            (estimate - n as f64).abs() / (n as f64) < 0.01,
            "{estimate} vs {n}"
        );
    }

    #[test]
    fn usage_stops_keeping() {
        let mut seen = Seen::default();
        seen.add(b"data: {}\n\n");
        seen.stop();
        seen.add(b"data: {}\n\n");
        assert!(seen.take().is_none());
        assert!(Seen::default().take().is_none());
    }

    #[test]
    fn completions_responses_and_bodies() {
        let g = |bytes: Vec<u8>, sse: bool| Generated {
            sse,
            total: bytes.len() as u64,
            bytes: bytes.into(),
        };
        let c = sse(&[r#"{"choices":[{"index":0,"text":"abc"}]}"#]);
        assert_eq!(g(c, true).texts(ApiKind::Completions).0, "abc");
        let r = sse(&[
            r#"{"type":"response.output_text.delta","delta":"Hi"}"#,
            r#"{"type":"response.function_call_arguments.delta","delta":"{}"}"#,
            r#"{"type":"response.completed","response":{}}"#,
        ]);
        assert_eq!(g(r, true).texts(ApiKind::Responses).0, "Hi{}");
        let body = br#"{"choices":[{"message":{"content":[{"type":"text","text":"x"}],"tool_calls":[{"function":{"name":"n","arguments":"{}"}}]}}]}"#;
        assert_eq!(
            Generated::body(Bytes::from_static(body))
                .texts(ApiKind::Chat)
                .0,
            "x\nn\n{}"
        );
        let body = br#"{"output":[{"type":"message","content":[{"type":"output_text","text":"y"}]},{"type":"function_call","arguments":"{}"}]}"#;
        assert_eq!(
            Generated::body(Bytes::from_static(body))
                .texts(ApiKind::Responses)
                .0,
            "y\n{}"
        );
        assert_eq!(
            Generated::body(Bytes::from_static(b"not json"))
                .texts(ApiKind::Chat)
                .0,
            ""
        );
    }
}
