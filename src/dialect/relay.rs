//! A backend's answer translated into the caller's dialect as it passes: a whole body, a stream or an error.
//!
//! The proxy feeds each read of the backend's body (after its own tap) and sends what comes out. A stream is
//! translated event by event as it arrives; a whole body or an error body is held to its end (bounded) and
//! translated then. It counts what it hands on, so the proxy knows when the caller has the whole answer.

use super::anthropic::{
    chat_answer_to_messages, error, messages_answer_to_chat, ChatToMessagesStream, MessagesReader,
    MessagesToChatStream,
};
use super::responses::{chat_answer_to_response, ChatToResponsesStream};
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
    /// An event stream translated event by event (chat -> Messages, Messages -> chat, chat -> Responses,
    /// Messages -> Responses).
    Stream(Box<dyn Translating>),
    /// An OpenAI-shaped error body (any content) becomes Anthropic's error, under the same status.
    OpenAiError { status: u16, held: BytesMut },
    /// A Messages answer (JSON) becomes a chat completion stamped `created`.
    MessagesBody { held: BytesMut, created: i64 },
    /// An Anthropic error body becomes OpenAI's (passed on as it is when it is not Anthropic's).
    AnthropicError(BytesMut),
    /// A Messages answer to a Messages caller passes unchanged, read for its usage.
    Messages(Box<MessagesReader>),
    /// A chat completion (JSON) becomes a Responses API `response`, stamped `created` when it has no time.
    ResponsesBody { held: BytesMut, created: i64 },
    /// A Messages answer (JSON) becomes a Responses API `response`, through its chat completion.
    MessagesResponseBody { held: BytesMut, created: i64 },
}

/// An incremental stream translator, as the relay drives it.
trait Translating: Send + Sync {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), DialectError>;
    fn finish(&mut self, out: &mut Vec<u8>);
    fn usage(&self) -> Option<TokenUsage>;
    fn is_complete(&self) -> bool;
    /// The id of the Responses API `response` it makes, once known.
    fn response_id(&self) -> Option<&str> {
        None
    }
}

/// The translators' own methods, as [`Translating`].
macro_rules! translating {
    ($($t:ty),*) => {$(
        impl Translating for $t {
            fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), DialectError> {
                <$t>::feed(self, bytes, out)
            }
            fn finish(&mut self, out: &mut Vec<u8>) {
                <$t>::finish(self, out)
            }
            fn usage(&self) -> Option<TokenUsage> {
                <$t>::usage(self)
            }
            fn is_complete(&self) -> bool {
                <$t>::is_complete(self)
            }
        }
    )*};
}
translating!(ChatToMessagesStream, MessagesToChatStream);

impl Translating for ChatToResponsesStream {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), DialectError> {
        ChatToResponsesStream::feed(self, bytes, out)
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        ChatToResponsesStream::finish(self, out)
    }
    fn usage(&self) -> Option<TokenUsage> {
        ChatToResponsesStream::usage(self)
    }
    fn is_complete(&self) -> bool {
        ChatToResponsesStream::is_complete(self)
    }
    fn response_id(&self) -> Option<&str> {
        ChatToResponsesStream::response_id(self)
    }
}

/// A Messages event stream made Responses events through chat chunks, event by event.
struct MessagesToResponses(MessagesToChatStream, ChatToResponsesStream);

impl Translating for MessagesToResponses {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), DialectError> {
        let mut chat = Vec::new();
        self.0.feed(bytes, &mut chat)?;
        self.1.feed(&chat, out)
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        let mut chat = Vec::new();
        self.0.finish(&mut chat);
        // What the first stage still held goes through the second before it ends.
        if let Err(e) = self.1.feed(&chat, out) {
            log::debug!("the end of a translated stream did not translate: {e}");
        }
        self.1.finish(out);
    }
    /// The first stage's usage: it has the cache writes, which chat's usage has no field for.
    fn usage(&self) -> Option<TokenUsage> {
        self.0.usage()
    }
    fn is_complete(&self) -> bool {
        self.1.is_complete()
    }
    fn response_id(&self) -> Option<&str> {
        self.1.response_id()
    }
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
    /// The id of the Responses API `response` made from a whole chat completion.
    response_id: Option<String>,
}

impl Relay {
    /// The relay for an answer, when the caller's and the backend's dialects call for one: a Messages caller
    /// answered by a chat backend or by a Messages one (read for usage), a chat caller by a Messages backend,
    /// a Responses caller's success by a chat backend.
    pub fn for_answer(head: AnswerHead) -> Option<Relay> {
        let ok = (200..300).contains(&head.status);
        let how = match (head.caller, head.upstream) {
            (ApiKind::Messages, ApiKind::Chat) => match (ok, head.sse) {
                (false, _) => How::OpenAiError {
                    status: head.status,
                    held: BytesMut::new(),
                },
                (true, true) => How::Stream(Box::<ChatToMessagesStream>::default()),
                (true, false) => How::ChatBody(BytesMut::new()),
            },
            (ApiKind::Chat, ApiKind::Messages) => match (ok, head.sse) {
                (false, _) => How::AnthropicError(BytesMut::new()),
                (true, true) => How::Stream(Box::new(MessagesToChatStream::new(
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
            // A chat backend's error is already in OpenAI's shape, which a Responses caller reads.
            (ApiKind::Responses, ApiKind::Messages) => match (ok, head.sse) {
                (false, _) => How::AnthropicError(BytesMut::new()),
                (true, true) => How::Stream(Box::new(MessagesToResponses(
                    MessagesToChatStream::new(head.created, true),
                    ChatToResponsesStream::new(head.created),
                ))),
                (true, false) => How::MessagesResponseBody {
                    held: BytesMut::new(),
                    created: head.created,
                },
            },
            (ApiKind::Responses, ApiKind::Chat) => match (ok, head.sse) {
                (false, _) => return None,
                (true, true) => How::Stream(Box::new(ChatToResponsesStream::new(head.created))),
                (true, false) => How::ResponsesBody {
                    held: BytesMut::new(),
                    created: head.created,
                },
            },
            _ => return None,
        };
        Some(Relay {
            how,
            sent: 0,
            end_at: None,
            usage: None,
            response_id: None,
        })
    }

    /// The bytes change on the way (translated): the backend's `Content-Length` no longer holds.
    pub fn rewrites(&self) -> bool {
        !matches!(self.how, How::Messages(_))
    }

    /// The caller gets a stream (`text/event-stream`) rather than a JSON body.
    pub fn is_stream(&self) -> bool {
        matches!(self.how, How::Stream(_))
    }

    /// A read of the backend's body in, the caller's bytes out (empty while a body is held).
    pub fn feed(&mut self, chunk: Bytes) -> Result<Bytes, DialectError> {
        let out = match &mut self.how {
            How::ChatBody(held)
            | How::MessagesBody { held, .. }
            | How::ResponsesBody { held, .. }
            | How::MessagesResponseBody { held, .. } => {
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
            How::Stream(stream) => {
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
            How::Stream(stream) => {
                let mut out = Vec::new();
                stream.finish(&mut out);
                self.usage = stream.usage();
                out
            }
            How::ResponsesBody { held, created } => match chat_answer_to_response(held, *created) {
                Ok((body, usage)) => {
                    self.usage = reported(usage);
                    self.response_id = serde_json::from_slice::<Id>(&body).ok().map(|r| r.id);
                    body
                }
                Err(e) => openai_error(&e.to_string()),
            },
            How::MessagesResponseBody { held, created } => {
                match messages_response(held, *created) {
                    Ok((body, usage)) => {
                        self.usage = reported(usage);
                        self.response_id = serde_json::from_slice::<Id>(&body).ok().map(|r| r.id);
                        body
                    }
                    Err(e) => openai_error(&e.to_string()),
                }
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

    /// The id of the Responses API `response` the gateway made from a chat answer, once known (a stream's
    /// from its first event, a whole body's at its end).
    pub fn response_id(&self) -> Option<&str> {
        match &self.how {
            How::Stream(stream) => stream.response_id(),
            _ => self.response_id.as_deref(),
        }
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

/// The `id` of a `response` the gateway made (the rest of it skipped).
#[derive(serde::Deserialize)]
struct Id {
    id: String,
}

/// A Messages answer as a Responses `response`, through its chat completion; the usage is the Messages
/// answer's (with its cache writes).
fn messages_response(held: &[u8], created: i64) -> Result<(Vec<u8>, TokenUsage), DialectError> {
    let (chat, usage) = messages_answer_to_chat(held, created)?;
    let (response, _) = chat_answer_to_response(&chat, created)?;
    Ok((response, usage))
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
mod tests;
