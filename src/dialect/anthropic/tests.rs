//! Tests of the Anthropic <-> chat translation, from fixtures written after the public docs' examples: requests
//! field by field, golden answers and streams, streams split at any byte.
#![allow(clippy::unwrap_used)]

mod requests;
mod streams;

use super::*;
use crate::dialect::DialectError;
use serde_json::Value;

/// A fixture and a translation of it (true when it translated).
type Fixture<'a> = (&'a [u8], &'a dyn Fn(&[u8]) -> bool);

const CLAUDE_CODE: &[u8] = include_bytes!("fixtures/claude_code_request.json");
const CHAT_REQUEST: &[u8] = include_bytes!("fixtures/chat_request.json");
const CHAT_ANSWER: &[u8] = include_bytes!("fixtures/chat_answer.json");
const MESSAGES_ANSWER: &[u8] = include_bytes!("fixtures/messages_answer.json");
const MESSAGES_TEXT: &[u8] = include_bytes!("fixtures/messages_stream_text.sse");
const MESSAGES_TOOLS: &[u8] = include_bytes!("fixtures/messages_stream_tools.sse");
const CHAT_TOOLS: &[u8] = include_bytes!("fixtures/chat_stream_tools.sse");
const CHAT_REASONING: &[u8] = include_bytes!("fixtures/chat_stream_reasoning.sse");

pub(super) fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap()
}

/// The Messages events for a chat stream fed in these pieces.
pub(super) fn to_messages(pieces: &[&[u8]]) -> (String, ChatToMessagesStream) {
    let mut t = ChatToMessagesStream::new();
    let mut out = Vec::new();
    for p in pieces {
        t.feed(p, &mut out).unwrap();
    }
    t.finish(&mut out);
    (String::from_utf8(out).unwrap(), t)
}

/// The chat chunks for a Messages stream fed in these pieces.
pub(super) fn to_chat(pieces: &[&[u8]], include_usage: bool) -> (String, MessagesToChatStream) {
    let mut t = MessagesToChatStream::new(1_745_916_231, include_usage);
    let mut out = Vec::new();
    for p in pieces {
        t.feed(p, &mut out).unwrap();
    }
    t.finish(&mut out);
    (String::from_utf8(out).unwrap(), t)
}

/// The `data` of each event of an SSE text, as JSON (`[DONE]` as a string).
pub(super) fn datas(sse: &str) -> Vec<Value> {
    sse.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.into())))
        .collect()
}
