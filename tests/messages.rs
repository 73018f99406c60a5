//! Anthropic's Messages API (`POST /v1/messages`) through the gateway to an OpenAI-compatible backend: the request
//! translated to chat completions (then rewritten per backend), the answer translated back (JSON and SSE, event
//! by event), the gateway's errors and the backend's in Anthropic's shape, the key in `x-api-key`, the record.

use std::time::Duration;

use crate::common::mock::{chat_chunk, tool_call_stream_events, usage_chunk, usage_json, Reply};
use crate::common::read_events;
use crate::common::records::{usage_config, wait_one_row};
use crate::common::{
    client, http_client, post_bytes, post_with, send_json, Behavior, Gateway, Mock, Resp,
};
use futures_util::StreamExt;
use serde_json::{json, Value};

const KEY: &str = "sk-gateway-key-for-messages-1";

fn messages_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "max_tokens": 100,
        "stream": stream,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Say hi"}],
        "stop_sequences": ["END"],
    })
}

fn one_client(mock: &Mock) -> Vec<Value> {
    vec![client("a", &mock.base_url("/v1"), "exact", &["m1"])]
}

/// An Anthropic error body: `{"type":"error","error":{"type","message"}}`, its type returned.
fn anthropic_error(r: &Resp, status: u16) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(v.get("error").and_then(|e| e.get("code")).is_none(), "{v}");
    v["error"]["type"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_answer_is_translated_both_ways_and_recorded() {
    let mock = Mock::start("b").await;
    let mut c = client("a", &mock.base_url("/v1"), "exact", &["m1"]);
    c["model"] = json!("upstream-m");
    c["stop"] = json!(["STOP"]);
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&usage_config(vec![c], db.path(), json!({}))).await;
    let r = post_with(
        &gw,
        "/v1/messages",
        &messages_body("m1", false),
        &[("anthropic-version", "2023-06-01")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["content"], json!([{"type": "text", "text": "hi"}]));
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["input_tokens"], 3);
    assert_eq!(v["usage"]["output_tokens"], 1);

    let sent = mock.single();
    assert_eq!(sent.uri, "/v1/chat/completions");
    assert_eq!(sent.header("anthropic-version"), None);
    let body = sent.json();
    // Translated, then rewritten for the client: its model alias and its stop words.
    assert_eq!(body["model"], "upstream-m");
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(
        body["messages"][1],
        json!({"role": "user", "content": "Say hi"})
    );
    assert_eq!(body["stop"], json!(["STOP", "END"]));
    assert!(body.get("stop_sequences").is_none(), "{body}");

    let row = wait_one_row(db.path()).await;
    assert_eq!(row.kind.as_deref(), Some("messages"));
    assert_eq!(row.status, Some(200));
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens, row.total_tokens),
        (Some(3), Some(1), Some(4))
    );
    assert_eq!(row.upstream_model.as_deref(), Some("upstream-m"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_is_translated_event_by_event_with_usage_in_its_last_delta() {
    let mock = Mock::start("b").await;
    let events = vec![
        chat_chunk(
            "m1",
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}}]),
        ),
        chat_chunk("m1", json!([{"index": 0, "delta": {"content": "Hel"}}])),
        chat_chunk("m1", json!([{"index": 0, "delta": {"content": "lo"}}])),
        chat_chunk(
            "m1",
            json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        ),
    ];
    let usage = usage_chunk("m1", "chat.completion.chunk", usage_json(7, 2));
    mock.set_reply(Reply {
        piece_bytes: Some(17),
        ..Reply::stream(events, Some(usage))
    });
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&usage_config(one_client(&mock), db.path(), json!({}))).await;
    let resp = send_json(&gw.url("/v1/messages"), &messages_body("m1", true), &[]).await;
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    assert!(resp.headers().get("content-length").is_none());
    let events = read_events(resp).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let text: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello");
    let delta = &events[5].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["input_tokens"], 7);
    assert_eq!(delta["usage"]["output_tokens"], 2);

    let sent = mock.single().json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));

    let row = wait_one_row(db.path()).await;
    assert_eq!(row.kind.as_deref(), Some("messages"));
    assert_eq!(row.stream, Some(1));
    assert_eq!(row.status, Some(200));
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens),
        (Some(7), Some(2))
    );
    assert!(row.first_token_ms.is_some(), "{row:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_tool_calls_become_tool_use_blocks() {
    let mock = Mock::start("b").await;
    let events = tool_call_stream_events("m1", "get_weather", &["{\"city\":", "\"Paris\"}"]);
    let usage = usage_chunk("m1", "chat.completion.chunk", usage_json(20, 5));
    mock.set_reply(Reply::stream(events, Some(usage)));
    let gw = Gateway::start(&crate::common::config(one_client(&mock))).await;
    let mut body = messages_body("m1", true);
    body["tools"] = json!([{"name": "get_weather", "description": "Weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let resp = send_json(&gw.url("/v1/messages"), &body, &[]).await;
    let events = read_events(resp).await;
    let start = events
        .iter()
        .find(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .expect("a tool_use block");
    assert_eq!(start.1["content_block"]["name"], "get_weather");
    let json: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(json, "{\"city\":\"Paris\"}");
    let stop = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(stop.1["delta"]["stop_reason"], "tool_use");
    let sent = mock.single().json();
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_errors_are_in_anthropics_shape() {
    let mock = Mock::start("b").await;
    let mut cfg = crate::common::config(one_client(&mock));
    cfg["openai_clients"][0]["api_key"] = json!("sk-backend");
    cfg["auth"] = json!({"keys": [{"name": "team", "key": KEY}]});
    let gw = Gateway::start(&cfg).await;
    let body = messages_body("m1", false);

    let r = post_with(&gw, "/v1/messages", &body, &[]).await;
    assert_eq!(anthropic_error(&r, 401), "authentication_error");
    let r = post_with(&gw, "/v1/messages", &body, &[("x-api-key", "sk-wrong")]).await;
    assert_eq!(anthropic_error(&r, 401), "authentication_error");

    let unknown = messages_body("nope", false);
    let r = post_with(&gw, "/v1/messages", &unknown, &[("x-api-key", KEY)]).await;
    assert_eq!(anthropic_error(&r, 404), "not_found_error");

    let resp = http_client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        anthropic_error(&Resp::read(resp).await, 400),
        "invalid_request_error"
    );

    let no_messages = json!({"model": "m1", "max_tokens": 5});
    let r = post_with(&gw, "/v1/messages", &no_messages, &[("x-api-key", KEY)]).await;
    assert_eq!(anthropic_error(&r, 400), "invalid_request_error");
    assert_eq!(mock.count(), 0);

    // The key in x-api-key (Anthropic's SDKs) or as a bearer token; never sent on.
    let r = post_with(&gw, "/v1/messages", &body, &[("x-api-key", KEY)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let bearer = format!("Bearer {KEY}");
    let r = post_with(&gw, "/v1/messages", &body, &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for sent in mock.requests() {
        assert_eq!(sent.header("x-api-key"), None);
        assert_eq!(sent.header("authorization"), Some("Bearer sk-backend"));
    }

    // Chat callers still get OpenAI's shape.
    let r = post_with(&gw, "/v1/chat/completions", &json!({"model": "m1"}), &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.json()["error"]["code"].is_string(), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_errors_and_exhausted_backends_are_in_anthropics_shape() {
    let mock = Mock::start_with(
        "b",
        Behavior::Fail {
            status: 400,
            body: json!({"error": {"message": "context too long", "type": "invalid_request_error",
                "param": null, "code": null}})
            .to_string(),
        },
    )
    .await;
    let gw = Gateway::start(&crate::common::config(one_client(&mock))).await;
    let r = post_bytes(&gw, "/v1/messages", messages_body("m1", false).to_string()).await;
    assert_eq!(anthropic_error(&r, 400), "invalid_request_error");
    assert_eq!(r.json()["error"]["message"], "context too long");

    // 503 is in the default retry_on: the one backend failing ends in the gateway's 502.
    mock.set_behavior(Behavior::Fail {
        status: 503,
        body: "{}".into(),
    });
    let r = post_bytes(&gw, "/v1/messages", messages_body("m1", true).to_string()).await;
    assert_eq!(anthropic_error(&r, 502), "api_error");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_anthropic_python_sdk_works_against_the_gateway_with_tools() {
    let mock = Mock::start("b").await;
    let answer = json!({
        "id": "chatcmpl-9", "object": "chat.completion", "created": 1700000000, "model": "m1",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
            "content": "Let me check.",
            "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
        "usage": usage_json(11, 6),
    });
    let events = tool_call_stream_events("m1", "get_weather", &["{\"city\":", "\"Paris\"}"]);
    let usage = usage_chunk("m1", "chat.completion.chunk", usage_json(20, 5));
    mock.set_reply(Reply {
        body: Some(answer.to_string()),
        ..Reply::stream(events, Some(usage))
    });
    let mut cfg = crate::common::config(one_client(&mock));
    cfg["openai_clients"][0]["api_key"] = json!("sk-backend");
    cfg["auth"] = json!({"keys": [{"name": "team", "key": KEY}]});
    let gw = Gateway::start(&cfg).await;
    crate::common::run_python_script(
        crate::common::python::anthropic_python,
        "test_anthropic_sdk.py",
        vec![gw.url("").into(), KEY.into(), "m1".into()],
    )
    .await;
    let sent: Vec<Value> = mock.requests().iter().map(|r| r.json()).collect();
    assert_eq!(
        sent.len(),
        2,
        "JSON and stream; nothing for the refused ones"
    );
    for body in &sent {
        let roles: Vec<&str> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(
            roles[roles.len() - 3..],
            ["user", "assistant", "tool"],
            "{body}"
        );
        assert_eq!(body["tools"][0]["function"]["name"], "get_weather");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn count_tokens_is_answered_by_the_gateway() {
    let mock = Mock::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&usage_config(one_client(&mock), db.path(), json!({}))).await;
    let short = json!({"model": "m1", "messages": [{"role": "user", "content": "Say hi"}]});
    let r = post_bytes(&gw, "/v1/messages/count_tokens", short.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let n = v["input_tokens"].as_i64().unwrap();
    // "Say hi" is 2 tokens, its message 3 more and its role 1, and the reply's priming 3.
    assert_eq!(n, 9, "{v}");
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");

    let long = json!({"model": "m1", "system": "Be brief.",
        "messages": [{"role": "user", "content": "Say hi ".repeat(100)}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]});
    let r = post_bytes(&gw, "/v1/messages/count_tokens", long.to_string()).await;
    assert!(
        r.json()["input_tokens"].as_i64().unwrap() > 200,
        "{}",
        r.text()
    );

    let unknown = json!({"model": "nope", "messages": []});
    let r = post_bytes(&gw, "/v1/messages/count_tokens", unknown.to_string()).await;
    assert_eq!(anthropic_error(&r, 404), "not_found_error");
    assert_eq!(mock.count(), 0, "never sent to a backend");

    let rows = crate::common::records::wait_rows(db.path(), 3).await;
    let kinds: Vec<_> = rows.iter().map(|r| r.kind.as_deref()).collect();
    assert_eq!(kinds, [Some("count_tokens"); 3]);
    assert_eq!(rows[0].status, Some(200));
    assert_eq!(rows[0].prompt_tokens, None, "a count is not usage");
}

/// The translation is incremental: the backend's first chunk reaches the caller as Messages events while the
/// backend holds the rest of its answer.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_event_reaches_the_caller_before_the_backend_sends_the_rest() {
    let mock = Mock::start("b").await;
    mock.set_sse(3, Duration::ZERO);
    mock.hold_after_first_event();
    let gw = Gateway::start(&crate::common::config(one_client(&mock))).await;
    let started = std::time::Instant::now();
    let resp = send_json(&gw.url("/v1/messages"), &messages_body("m1", true), &[]).await;
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("\"text\":\"c0 \"") {
        let piece = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the first event did not come while the backend held the rest")
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&piece).unwrap());
    }
    let first = started.elapsed();
    assert!(seen.starts_with("event: message_start\n"), "{seen}");
    assert!(!seen.contains("message_stop"), "{seen}");
    mock.release();
    while let Some(piece) = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("stream stalled")
    {
        seen.push_str(std::str::from_utf8(&piece.unwrap()).unwrap());
    }
    assert!(seen.contains("\"text\":\"c2 \""), "{seen}");
    assert!(
        seen.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
        "{seen}"
    );
    eprintln!("first translated event after {first:?} (request start to caller)");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_without_usage_is_counted_as_the_chat_request_it_became() {
    let mock = Mock::start("b").await;
    let answer = json!({"id": "c", "object": "chat.completion", "model": "m1", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": "hello there"}, "finish_reason": "stop"}]});
    mock.set_reply(Reply::body(answer.to_string()));
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&usage_config(one_client(&mock), db.path(), json!({}))).await;
    let r = post_bytes(&gw, "/v1/messages", messages_body("m1", false).to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["content"][0]["text"], "hello there");
    let row = wait_one_row(db.path()).await;
    assert_eq!(row.usage_estimated, Some(1), "{row:#?}");
    // The chat request: system "Be brief." (3 + 1 + 3), user "Say hi" (3 + 1 + 2), the reply's priming (3); the
    // answer's two words.
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens),
        (Some(16), Some(2)),
        "{row:#?}"
    );
}
