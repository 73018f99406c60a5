//! A backend's answer translated into the caller's dialect as it passes: a whole body, a stream or an error.
//!
//! The proxy feeds each read of the backend's body (after its own tap) and sends what comes out. A stream is
//! translated event by event as it arrives; a whole body or an error body is held to its end (bounded) and
//! translated then. It counts what it hands on, so the proxy knows when the caller has the whole answer.

use super::anthropic::{
    chat_answer_to_messages, error, messages_answer_to_chat, ChatToMessagesStream, MessagesReader,
    MessagesToChatStream,
};
use super::DialectError;
use crate::endpoints::ApiKind;
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
    /// A Messages answer (JSON) becomes a chat completion stamped `created`.
    MessagesBody { held: BytesMut, created: i64 },
    /// A Messages event stream becomes chat chunks.
    MessagesStream(Box<MessagesToChatStream>),
    /// An Anthropic error body becomes OpenAI's (passed on as it is when it is not Anthropic's).
    AnthropicError(BytesMut),
    /// A Messages answer to a Messages caller passes unchanged, read for its usage.
    Messages(Box<MessagesReader>),
}

/// What the relay is given to decide how an answer goes to the caller.
#[derive(Debug, Clone, Copy)]
pub struct AnswerHead {
    /// The API the caller called, and the one the backend answered in.
    pub caller: ApiKind,
    pub upstream: ApiKind,
    pub status: u16,
    /// The backend's answer is an event stream.
    pub sse: bool,
    /// A chat caller asked for the usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// The Unix time a chat completion made from a Messages answer is stamped with.
    pub created: i64,
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
    /// The relay for an answer, when the caller's and the backend's dialects call for one: a Messages caller
    /// answered by a chat backend or by a Messages one (read for usage), a chat caller by a Messages backend.
    pub fn for_answer(head: AnswerHead) -> Option<Relay> {
        let ok = (200..300).contains(&head.status);
        let how = match (head.caller, head.upstream) {
            (ApiKind::Messages, ApiKind::Chat) => match (ok, head.sse) {
                (false, _) => How::OpenAiError {
                    status: head.status,
                    held: BytesMut::new(),
                },
                (true, true) => How::ChatStream(Box::default()),
                (true, false) => How::ChatBody(BytesMut::new()),
            },
            (ApiKind::Chat, ApiKind::Messages) => match (ok, head.sse) {
                (false, _) => How::AnthropicError(BytesMut::new()),
                (true, true) => How::MessagesStream(Box::new(MessagesToChatStream::new(
                    head.created,
                    head.include_usage,
                ))),
                (true, false) => How::MessagesBody {
                    held: BytesMut::new(),
                    created: head.created,
                },
            },
            (ApiKind::Messages, ApiKind::Messages) => {
                How::Messages(Box::new(MessagesReader::new(ok && head.sse)))
            }
            _ => return None,
        };
        Some(Relay {
            how,
            sent: 0,
            end_at: None,
            usage: None,
        })
    }

    /// The bytes change on the way (translated): the backend's `Content-Length` no longer holds.
    pub fn rewrites(&self) -> bool {
        !matches!(self.how, How::Messages(_))
    }

    /// The caller gets a stream (`text/event-stream`) rather than a JSON body.
    pub fn is_stream(&self) -> bool {
        matches!(self.how, How::ChatStream(_) | How::MessagesStream(_))
    }

    /// A read of the backend's body in, the caller's bytes out (empty while a body is held).
    pub fn feed(&mut self, chunk: Bytes) -> Result<Bytes, DialectError> {
        let out = match &mut self.how {
            How::ChatBody(held) | How::MessagesBody { held, .. } => {
                if held.len().saturating_add(chunk.len()) > BODY_CAP {
                    return Err(DialectError::BadAnswer(format!(
                        "the answer is over {BODY_CAP} bytes"
                    )));
                }
                held.extend_from_slice(&chunk);
                Bytes::new()
            }
            How::OpenAiError { held, .. } | How::AnthropicError(held) => {
                let room = ERROR_CAP.saturating_sub(held.len());
                held.extend_from_slice(&chunk[..chunk.len().min(room)]);
                Bytes::new()
            }
            How::ChatStream(stream) => {
                let mut out = Vec::new();
                stream.feed(&chunk, &mut out)?;
                self.usage = stream.usage();
                let complete = stream.is_complete();
                return Ok(self.hand_on(Bytes::from(out), complete));
            }
            How::MessagesStream(stream) => {
                let mut out = Vec::new();
                stream.feed(&chunk, &mut out)?;
                self.usage = stream.usage();
                let complete = stream.is_complete();
                return Ok(self.hand_on(Bytes::from(out), complete));
            }
            How::Messages(reader) => {
                reader.feed(&chunk)?;
                self.usage = reader.usage();
                let complete = reader.is_complete();
                return Ok(self.hand_on(chunk, complete));
            }
        };
        Ok(self.hand_on(out, false))
    }

    /// The backend's body ended: what is still held, translated. A whole answer that does not translate
    /// becomes an error body in the caller's dialect (its status is already on its way).
    pub fn finish(&mut self) -> Bytes {
        let out = match &mut self.how {
            How::ChatBody(held) => match chat_answer_to_messages(held) {
                Ok((body, usage)) => {
                    self.usage = reported(usage);
                    body
                }
                Err(e) => error::body(502, &e.to_string()),
            },
            How::OpenAiError { status, held } => error::from_openai(*status, held),
            How::MessagesBody { held, created } => match messages_answer_to_chat(held, *created) {
                Ok((body, usage)) => {
                    self.usage = reported(usage);
                    body
                }
                Err(e) => openai_error(&e.to_string()),
            },
            How::AnthropicError(held) => error::to_openai(held).unwrap_or_else(|| held.to_vec()),
            How::ChatStream(stream) => {
                let mut out = Vec::new();
                stream.finish(&mut out);
                self.usage = stream.usage();
                out
            }
            How::MessagesStream(stream) => {
                let mut out = Vec::new();
                stream.finish(&mut out);
                self.usage = stream.usage();
                out
            }
            How::Messages(reader) => {
                reader.finish();
                self.usage = reader.usage();
                Vec::new()
            }
        };
        self.hand_on(Bytes::from(out), true)
    }

    /// The answer stopped before its end (the caller left, the backend broke): a Messages stream passed
    /// through is read for a last event's usage. Nothing more is sent.
    pub fn abandon(&mut self) {
        if let How::Messages(reader) = &mut self.how {
            if self.end_at.is_none() {
                reader.finish();
                self.usage = reader.usage();
            }
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

    /// A passed-through Messages stream showed its first token (translated answers: the tap sees it).
    pub fn saw_first_token(&self) -> bool {
        matches!(&self.how, How::Messages(r) if r.saw_first_token())
    }

    /// Counts what goes to the caller; `last`: once these bytes reach it, it has the whole answer.
    fn hand_on(&mut self, out: Bytes, last: bool) -> Bytes {
        self.sent = self.sent.saturating_add(out.len() as u64);
        if last {
            self.end_at.get_or_insert(self.sent);
        }
        out
    }
}

/// A whole answer's usage, unless it had none (its counts all absent): then the gateway counts the tokens.
fn reported(usage: TokenUsage) -> Option<TokenUsage> {
    (usage.prompt.is_some() || usage.completion.is_some() || usage.total.is_some()).then_some(usage)
}

/// OpenAI's error body for an answer that could not be translated.
fn openai_error(message: &str) -> Vec<u8> {
    serde_json::json!({"error": {"message": message, "type": "api_error", "param": null,
        "code": "bad_upstream_answer"}})
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::{json, Value};

    /// A chat backend's answer for a Messages caller.
    fn chat(status: u16, sse: bool) -> Relay {
        let head = AnswerHead {
            caller: ApiKind::Messages,
            upstream: ApiKind::Chat,
            status,
            sse,
            include_usage: false,
            created: 0,
        };
        Relay::for_answer(head).unwrap()
    }

    fn chunk(delta: Value, finish: Value) -> String {
        let c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    }

    #[test]
    fn a_stream_is_translated_as_it_arrives_and_ends_at_message_stop() {
        let mut r = chat(200, true);
        assert!(r.is_stream());
        let first = r
            .feed(Bytes::from(chunk(
                json!({"role": "assistant", "content": "Hi"}),
                Value::Null,
            )))
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
        let mut out = r.feed(Bytes::copy_from_slice(a)).unwrap().to_vec();
        out.extend_from_slice(&r.feed(Bytes::copy_from_slice(b)).unwrap());
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
        let mut r = chat(200, false);
        let body = json!({"id": "c1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
        .to_string();
        let (a, b) = body.as_bytes().split_at(10);
        assert!(r.feed(Bytes::copy_from_slice(a)).unwrap().is_empty());
        assert!(r.feed(Bytes::copy_from_slice(b)).unwrap().is_empty());
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
        let mut r = chat(400, false);
        let body = br#"{"error":{"message":"bad things","type":"invalid_request_error"}}"#;
        assert!(r.feed(Bytes::from_static(body)).unwrap().is_empty());
        let v: Value = serde_json::from_slice(&r.finish()).unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "bad things"}})
        );
    }

    #[test]
    fn an_answer_that_does_not_translate_becomes_an_error_body() {
        let mut r = chat(200, false);
        r.feed(Bytes::from_static(b"not json")).unwrap();
        let v: Value = serde_json::from_slice(&r.finish()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "api_error");
    }

    #[test]
    fn held_bodies_are_bounded() {
        let mut r = chat(500, false);
        for _ in 0..100 {
            r.feed(Bytes::from(vec![b'x'; 4096])).unwrap();
        }
        let v: Value = serde_json::from_slice(&r.finish()).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().len() <= 4096);
        let mut r = chat(200, false);
        r.feed(Bytes::from(vec![b' '; BODY_CAP])).unwrap();
        assert!(r.feed(Bytes::from_static(b"  ")).is_err());
    }

    fn head(caller: ApiKind, upstream: ApiKind, status: u16, sse: bool) -> AnswerHead {
        AnswerHead {
            caller,
            upstream,
            status,
            sse,
            include_usage: true,
            created: 7,
        }
    }

    #[test]
    fn a_messages_stream_passes_unchanged_and_ends_at_message_stop() {
        let mut r =
            Relay::for_answer(head(ApiKind::Messages, ApiKind::Messages, 200, true)).unwrap();
        assert!(!r.rewrites());
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":4,\"output_tokens\":1}}}\n\n";
        let stop = "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let a = r.feed(Bytes::from_static(start.as_bytes())).unwrap();
        assert_eq!(a, start.as_bytes());
        assert!(!r.delivered(u64::MAX));
        let b = r.feed(Bytes::from_static(stop.as_bytes())).unwrap();
        assert_eq!(b, stop.as_bytes());
        assert!(r.finish().is_empty());
        assert!(r.delivered((start.len() + stop.len()) as u64));
        let u = r.usage().unwrap();
        assert_eq!((u.prompt, u.completion), (Some(4), Some(9)));
    }

    #[test]
    fn a_messages_answer_becomes_a_chat_completion_and_its_error_openais() {
        let mut r = Relay::for_answer(head(ApiKind::Chat, ApiKind::Messages, 200, false)).unwrap();
        let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "c",
            "content": [{"type": "text", "text": "yo"}], "stop_reason": "max_tokens",
            "usage": {"input_tokens": 2, "output_tokens": 3}});
        assert!(r.feed(Bytes::from(body.to_string())).unwrap().is_empty());
        let v: Value = serde_json::from_slice(&r.finish()).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "yo");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["created"], 7);
        assert_eq!(r.usage().unwrap().total, Some(5));

        let mut r = Relay::for_answer(head(ApiKind::Chat, ApiKind::Messages, 529, false)).unwrap();
        let err =
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}});
        r.feed(Bytes::from(err.to_string())).unwrap();
        let v: Value = serde_json::from_slice(&r.finish()).unwrap();
        assert_eq!(v["error"]["message"], "busy");
        assert_eq!(v["error"]["code"], "overloaded");
    }

    #[test]
    fn same_dialects_need_no_relay() {
        for kind in [ApiKind::Chat, ApiKind::Responses, ApiKind::Embeddings] {
            assert!(Relay::for_answer(head(kind, kind, 200, true)).is_none());
        }
    }
}
