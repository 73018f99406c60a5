//! A Messages answer passed through unchanged (an Anthropic backend to a Messages caller), read for its usage
//! (`message_start`, `message_delta`, or a whole body's `usage`), its first token and its end.

use super::Counts;
use crate::dialect::frames::{Frames, EVENT_CAP};
use crate::dialect::DialectError;
use crate::tokens::TokenUsage;
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;

/// The most of a whole body kept to read its usage at its end.
const BODY_CAP: usize = 16 << 20;

/// What is read of one event: its type and the usage it may carry (other fields are skipped).
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    usage: Option<Value>,
    message: Option<Message>,
}

#[derive(Deserialize)]
struct Message {
    usage: Option<Value>,
}

/// Reads a Messages answer as it passes.
pub struct MessagesReader {
    /// A stream's framing; None for a whole body.
    frames: Option<Frames>,
    /// A whole body, kept to its end (up to [`BODY_CAP`]; past it, its usage is not read).
    held: Vec<u8>,
    counts: Counts,
    seen_usage: bool,
    first_token: bool,
    done: bool,
}

impl MessagesReader {
    /// `sse`: the answer is an event stream, else a whole JSON body.
    pub fn new(sse: bool) -> Self {
        MessagesReader {
            frames: sse.then(|| Frames::new(EVENT_CAP)),
            held: Vec::new(),
            counts: Counts::default(),
            seen_usage: false,
            first_token: false,
            done: false,
        }
    }

    /// Reads the events that end in `bytes` (a stream), or keeps them (a body).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), DialectError> {
        let Some(mut frames) = self.frames.take() else {
            if self.held.len().saturating_add(bytes.len()) <= BODY_CAP {
                self.held.extend_from_slice(bytes);
            } else {
                self.held = Vec::new();
            }
            return Ok(());
        };
        let result = frames.feed(bytes, |e| {
            self.event(&e.data);
            Ok::<(), DialectError>(())
        });
        self.frames = Some(frames);
        result
    }

    /// The answer ended: a last unterminated event, or the whole body, is read.
    pub fn finish(&mut self) {
        match self.frames.take() {
            Some(mut frames) => {
                let _ = frames.finish(|e| {
                    self.event(&e.data);
                    Ok::<(), DialectError>(())
                });
                self.frames = Some(frames);
            }
            None => {
                let held = std::mem::take(&mut self.held);
                if let Ok(Some(usage)) = serde_json::from_slice::<Event<'_>>(&held).map(|e| e.usage)
                {
                    self.merge(&usage);
                }
                self.first_token = !held.is_empty();
                self.done = true;
            }
        }
    }

    fn event(&mut self, data: &[u8]) {
        let Ok(event) = serde_json::from_slice::<Event<'_>>(data) else {
            return;
        };
        let usage = event.usage.or(event.message.and_then(|m| m.usage));
        if let Some(usage) = usage {
            self.merge(&usage);
        }
        match event.kind.as_ref() {
            "content_block_delta" => self.first_token = true,
            "message_stop" => self.done = true,
            _ => {}
        }
    }

    fn merge(&mut self, usage: &Value) {
        if usage.is_object() {
            self.counts.merge(usage);
            self.seen_usage = true;
        }
    }

    /// The usage read so far, in OpenAI's meaning (prompt = input + cache reads + cache writes).
    pub fn usage(&self) -> Option<TokenUsage> {
        self.seen_usage.then(|| self.counts.to_usage())
    }

    pub fn saw_first_token(&self) -> bool {
        self.first_token
    }

    /// `message_stop` passed (a stream), or the body ended.
    pub fn is_complete(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\
\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"usage\":{\"input_tokens\":10,\
\"cache_creation_input_tokens\":4,\"cache_read_input_tokens\":6,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\ndata: {\"type\": \"ping\"}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn a_stream_split_anywhere_gives_its_usage_first_token_and_end() {
        for cut in 0..STREAM.len() {
            let mut r = MessagesReader::new(true);
            let (a, b) = STREAM.as_bytes().split_at(cut);
            r.feed(a).unwrap();
            r.feed(b).unwrap();
            assert!(r.is_complete() && r.saw_first_token(), "cut at {cut}");
            let u = r.usage().unwrap();
            assert_eq!(u.prompt, Some(20), "input + cache reads + cache writes");
            assert_eq!(
                (u.completion, u.cached, u.cache_write),
                (Some(15), Some(6), Some(4))
            );
            assert_eq!(u.total, Some(35));
        }
    }

    #[test]
    fn a_body_is_read_at_its_end() {
        let body = br#"{"id":"msg_1","type":"message","content":[{"type":"text","text":"Hi"}],
            "usage":{"input_tokens":3,"output_tokens":2}}"#;
        let mut r = MessagesReader::new(false);
        r.feed(&body[..7]).unwrap();
        r.feed(&body[7..]).unwrap();
        assert_eq!(r.usage(), None);
        r.finish();
        assert_eq!(r.usage().unwrap().total, Some(5));
        assert!(r.is_complete());
    }
}
