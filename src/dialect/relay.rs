//! A backend's answer translated into the caller's dialect as it passes: a whole body, a stream or an error.
//!
//! The proxy feeds each read of the backend's body (after its own tap) and sends what comes out. A stream is
//! translated event by event as it arrives; a whole body or an error body is held to its end (bounded) and
//! translated then. It counts what it hands on, so the proxy knows when the caller has the whole answer.

use super::anthropic::{chat_answer_to_messages, error, ChatToMessagesStream};
use super::DialectError;
use crate::tokens::TokenUsage;
use bytes::{Bytes, BytesMut};

/// The most of a whole answer held for translation (like the tap's cap on a body read for its usage).
const BODY_CAP: usize = 16 << 20;
/// The most of an error body held: its message is cut far shorter than this anyway.
const ERROR_CAP: usize = 64 << 10;

/// How the answer is translated.
enum How {
    /// A chat completion (JSON) becomes a Messages answer.
    ChatBody(BytesMut),
    /// A chat completions stream becomes Messages events.
    ChatStream(Box<ChatToMessagesStream>),
    /// An OpenAI-shaped error body (any content) becomes Anthropic's error, under the same status.
    OpenAiError { status: u16, held: BytesMut },
}

/// One answer on its way to the caller.
pub struct Relay {
    how: How,
    /// Bytes handed on so far.
    sent: u64,
    /// The caller has the whole answer once this many bytes reached it.
    end_at: Option<u64>,
    usage: Option<TokenUsage>,
}

impl Relay {
    /// A chat completions backend's answer (`status`, an SSE stream or not) for a Messages caller.
    pub fn messages_from_chat(status: u16, sse: bool) -> Self {
        let how = match ((200..300).contains(&status), sse) {
            (false, _) => How::OpenAiError {
                status,
                held: BytesMut::new(),
            },
            (true, true) => How::ChatStream(Box::default()),
            (true, false) => How::ChatBody(BytesMut::new()),
        };
        Relay {
            how,
            sent: 0,
            end_at: None,
            usage: None,
        }
    }

    /// The caller gets a stream (`text/event-stream`) rather than a JSON body.
    pub fn is_stream(&self) -> bool {
        matches!(self.how, How::ChatStream(_))
    }

    /// A read of the backend's body in, the caller's bytes out (empty while a body is held).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Bytes, DialectError> {
        let out = match &mut self.how {
            How::ChatBody(held) => {
                if held.len().saturating_add(chunk.len()) > BODY_CAP {
                    return Err(DialectError::BadAnswer(format!(
                        "the answer is over {BODY_CAP} bytes"
                    )));
                }
                held.extend_from_slice(chunk);
                Bytes::new()
            }
            How::OpenAiError { held, .. } => {
                let room = ERROR_CAP.saturating_sub(held.len());
                held.extend_from_slice(&chunk[..chunk.len().min(room)]);
                Bytes::new()
            }
            How::ChatStream(stream) => {
                let mut out = Vec::new();
                stream.feed(chunk, &mut out)?;
                self.usage = stream.usage();
                let out = Bytes::from(out);
                if stream.is_complete() {
                    return Ok(self.hand_on_last(out));
                }
                out
            }
        };
        Ok(self.hand_on(out))
    }

    /// The backend's body ended: what is still held, translated. A whole answer that does not translate
    /// becomes Anthropic's error body (its status is already on its way).
    pub fn finish(&mut self) -> Bytes {
        let out = match &mut self.how {
            How::ChatBody(held) => match chat_answer_to_messages(held) {
                Ok((body, usage)) => {
                    self.usage = Some(usage);
                    body
                }
                Err(e) => error::body(502, &e.to_string()),
            },
            How::OpenAiError { status, held } => error::from_openai(*status, held),
            How::ChatStream(stream) => {
                let mut out = Vec::new();
                stream.finish(&mut out);
                self.usage = stream.usage();
                out
            }
        };
        let out = Bytes::from(out);
        match self.end_at {
            Some(_) => self.hand_on(out),
            None => self.hand_on_last(out),
        }
    }

    /// Whether the caller has the whole answer, given how many body bytes reached its connection.
    pub fn delivered(&self, bytes_sent: u64) -> bool {
        self.end_at.is_some_and(|end| bytes_sent >= end)
    }

    /// The usage the backend reported, in OpenAI's meaning, as far as it is known.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    fn hand_on(&mut self, out: Bytes) -> Bytes {
        self.sent = self.sent.saturating_add(out.len() as u64);
        out
    }

    /// Hands on the answer's last bytes: once they reach the caller, it has all of it.
    fn hand_on_last(&mut self, out: Bytes) -> Bytes {
        let out = self.hand_on(out);
        self.end_at.get_or_insert(self.sent);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::{json, Value};

    fn chunk(delta: Value, finish: Value) -> String {
        let c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    }

    #[test]
    fn a_stream_is_translated_as_it_arrives_and_ends_at_message_stop() {
        let mut r = Relay::messages_from_chat(200, true);
        assert!(r.is_stream());
        let first = r
            .feed(chunk(json!({"role": "assistant", "content": "Hi"}), Value::Null).as_bytes())
            .unwrap();
        let text = String::from_utf8(first.to_vec()).unwrap();
        assert!(text.contains("event: message_start"), "{text}");
        assert!(text.contains("\"text\":\"Hi\""), "{text}");
        assert!(!r.delivered(u64::MAX));
        let usage = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}});
        let rest = format!(
            "{}data: {usage}\n\ndata: [DONE]\n\n",
            chunk(json!({}), json!("stop"))
        );
        // Split at every byte boundary would be the translator's own tests; here two uneven reads.
        let (a, b) = rest.as_bytes().split_at(rest.len() / 3);
        let mut out = r.feed(a).unwrap().to_vec();
        out.extend_from_slice(&r.feed(b).unwrap());
        out.extend_from_slice(&r.finish());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
            "{text}"
        );
        let total = (first.len() + text.len()) as u64;
        assert!(r.delivered(total));
        assert!(!r.delivered(total - 1));
        assert_eq!(r.usage().unwrap().prompt, Some(5));
        assert_eq!(r.usage().unwrap().completion, Some(2));
    }

    #[test]
    fn a_body_is_held_to_its_end_then_translated() {
        let mut r = Relay::messages_from_chat(200, false);
        let body = json!({"id": "c1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
        .to_string();
        let (a, b) = body.as_bytes().split_at(10);
        assert!(r.feed(a).unwrap().is_empty());
        assert!(r.feed(b).unwrap().is_empty());
        let out = r.finish();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["content"][0]["text"], "hello");
        assert_eq!(v["stop_reason"], "end_turn");
        assert_eq!(r.usage().unwrap().total, Some(4));
        assert!(r.delivered(out.len() as u64));
    }

    #[test]
    fn an_error_body_keeps_its_status_in_anthropics_shape() {
        let mut r = Relay::messages_from_chat(400, false);
        let body = br#"{"error":{"message":"bad things","type":"invalid_request_error"}}"#;
        assert!(r.feed(body).unwrap().is_empty());
        let v: Value = serde_json::from_slice(&r.finish()).unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "bad things"}})
        );
    }

    #[test]
    fn an_answer_that_does_not_translate_becomes_an_error_body() {
        let mut r = Relay::messages_from_chat(200, false);
        r.feed(b"not json").unwrap();
        let v: Value = serde_json::from_slice(&r.finish()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "api_error");
    }

    #[test]
    fn held_bodies_are_bounded() {
        let mut r = Relay::messages_from_chat(500, false);
        for _ in 0..100 {
            r.feed(&[b'x'; 4096]).unwrap();
        }
        let v: Value = serde_json::from_slice(&r.finish()).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().len() <= 4096);
        let mut r = Relay::messages_from_chat(200, false);
        let big = vec![b' '; BODY_CAP];
        r.feed(&big).unwrap();
        assert!(r.feed(b"  ").is_err());
    }
}
