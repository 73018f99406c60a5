//! Unit tests of the relay: each (caller, backend) pair's answers, streams, errors and bounds.

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
    let mut r = Relay::for_answer(head(ApiKind::Messages, ApiKind::Messages, 200, true)).unwrap();
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
    let err = json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}});
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

/// A chat backend's answer for a Responses caller.
fn responses(status: u16, sse: bool) -> Option<Relay> {
    Relay::for_answer(head(ApiKind::Responses, ApiKind::Chat, status, sse))
}

#[test]
fn a_chat_stream_becomes_responses_events_and_ends_at_response_completed() {
    let mut r = responses(200, true).unwrap();
    assert!(r.rewrites() && r.is_stream());
    let first = r
        .feed(Bytes::from(chunk(
            json!({"role": "assistant", "content": "Hi"}),
            Value::Null,
        )))
        .unwrap();
    let text = String::from_utf8(first.to_vec()).unwrap();
    assert!(text.starts_with("event: response.created\n"), "{text}");
    assert!(text.contains("response.output_text.delta"), "{text}");
    assert!(!r.delivered(u64::MAX));
    let usage = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 1}}});
    let rest = format!(
        "{}data: {usage}\n\ndata: [DONE]\n\n",
        chunk(json!({}), json!("stop"))
    );
    let out = r.feed(Bytes::from(rest)).unwrap();
    let tail = r.finish();
    let text = String::from_utf8(out.to_vec()).unwrap();
    assert!(text.contains("event: response.completed\n"), "{text}");
    assert!(r.delivered((first.len() + out.len() + tail.len()) as u64));
    let u = r.usage().unwrap();
    assert_eq!(
        (u.prompt, u.completion, u.cached),
        (Some(5), Some(2), Some(1))
    );
}

#[test]
fn a_chat_completion_becomes_a_response_and_an_error_passes_as_it_is() {
    let mut r = responses(200, false).unwrap();
    assert!(r.rewrites() && !r.is_stream());
    let body = json!({"id": "c1", "object": "chat.completion", "model": "m", "created": 3,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
            "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}});
    assert!(r.feed(Bytes::from(body.to_string())).unwrap().is_empty());
    let v: Value = serde_json::from_slice(&r.finish()).unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["content"][0]["text"], "hello");
    assert_eq!(v["usage"]["input_tokens"], 3);
    assert_eq!(r.usage().unwrap().total, Some(4));

    let mut r = responses(200, false).unwrap();
    r.feed(Bytes::from_static(b"{\"nope\": 1}")).unwrap();
    let v: Value = serde_json::from_slice(&r.finish()).unwrap();
    assert_eq!(v["error"]["code"], "bad_upstream_answer");
    // OpenAI's error shape already: passed on untouched, its usage (none) read by the tap.
    for status in [400, 429, 500] {
        assert!(responses(status, false).is_none());
    }
}

#[test]
fn a_messages_stream_becomes_responses_events_through_chat_at_any_split() {
    let sse = include_str!("../anthropic/fixtures/messages_stream_text.sse");
    for split in [1, 7, 64, sse.len()] {
        let mut r =
            Relay::for_answer(head(ApiKind::Responses, ApiKind::Messages, 200, true)).unwrap();
        assert!(r.rewrites() && r.is_stream());
        let mut out = Vec::new();
        for piece in sse.as_bytes().chunks(split) {
            out.extend_from_slice(&r.feed(Bytes::copy_from_slice(piece)).unwrap());
        }
        out.extend_from_slice(&r.finish());
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("event: response.created\n"), "{text}");
        assert!(text.contains("\"delta\":\"Hello\""), "{text}");
        let last = text.trim_end().rsplit("\n\n").next().unwrap();
        assert!(last.starts_with("event: response.completed\n"), "{last}");
        assert!(last.contains("\"input_tokens\":25"), "{last}");
        assert!(r.delivered(out.len() as u64), "split {split}");
        assert!(r.response_id().is_some());
        let u = r.usage().unwrap();
        assert_eq!((u.prompt, u.completion), (Some(25), Some(15)));
    }
}

#[test]
fn a_messages_answer_becomes_a_response_and_its_error_openais() {
    let mut r = Relay::for_answer(head(ApiKind::Responses, ApiKind::Messages, 200, false)).unwrap();
    let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "c",
        "content": [{"type": "text", "text": "yo"}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 2, "output_tokens": 3, "cache_creation_input_tokens": 4}});
    assert!(r.feed(Bytes::from(body.to_string())).unwrap().is_empty());
    let v: Value = serde_json::from_slice(&r.finish()).unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["output"][0]["content"][0]["text"], "yo");
    assert_eq!(r.response_id(), v["id"].as_str());
    let u = r.usage().unwrap();
    assert_eq!((u.prompt, u.cache_write), (Some(6), Some(4)));

    let mut r = Relay::for_answer(head(ApiKind::Responses, ApiKind::Messages, 529, false)).unwrap();
    let err = json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}});
    r.feed(Bytes::from(err.to_string())).unwrap();
    let v: Value = serde_json::from_slice(&r.finish()).unwrap();
    assert_eq!(v["error"]["message"], "busy");
}
