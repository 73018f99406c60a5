//! Backends with `protocol: anthropic`: Messages callers passed through (usage read from `message_start` /
//! `message_delta`), chat callers translated (JSON and SSE), the key in `x-api-key`, `anthropic-version` and
//! `anthropic-beta`, and failover from an overloaded (529) anthropic backend to an openai one, translated.

use crate::common::mock::Reply;
use crate::common::records::{usage_config, wait_one_row};
use crate::common::{client, post_with, send_json, Behavior, Gateway, Mock, Resp};
use futures_util::StreamExt;
use serde_json::{json, Value};

pub(crate) const BACKEND_KEY: &str = "sk-ant-backend-key-77";

/// Anthropic's event sequence for a short text answer (from the Messages streaming docs), with cache reads and
/// writes in its usage.
pub(crate) fn anthropic_frames() -> Vec<String> {
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
            "content": [], "model": "claude-x", "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 25, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 10,
                "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 15}}),
        json!({"type": "message_stop"}),
    ];
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect()
}

pub(crate) fn anthropic_answer() -> Value {
    json!({"id": "msg_2", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "Hi there"}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4,
            "output_tokens": 6}})
}

pub(crate) async fn anthropic_mock() -> Mock {
    let mock = Mock::start("ant").await;
    mock.set_reply(Reply {
        body: Some(anthropic_answer().to_string()),
        frames: Some(anthropic_frames()),
        ..Reply::default()
    });
    mock
}

pub(crate) fn anthropic_client(mock: &Mock, extra: Value) -> Value {
    let mut c = client("ant", &mock.base_url(""), "exact", &["claude-x"]);
    c["protocol"] = json!("anthropic");
    c["api_key"] = json!(BACKEND_KEY);
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            c[k] = v;
        }
    }
    c
}

pub(crate) fn messages_body(stream: bool) -> Value {
    json!({"model": "claude-x", "max_tokens": 50, "stream": stream,
        "messages": [{"role": "user", "content": "Hi"}]})
}

pub(crate) async fn read_all(resp: reqwest::Response) -> String {
    let mut text = String::new();
    let mut body = resp.bytes_stream();
    while let Some(piece) = tokio::time::timeout(std::time::Duration::from_secs(10), body.next())
        .await
        .expect("stream stalled")
    {
        text.push_str(std::str::from_utf8(&piece.unwrap()).unwrap());
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_pass_through_with_usage_read_from_the_events() {
    let mock = anthropic_mock().await;
    let db = tempfile::tempdir().unwrap();
    let cfg = usage_config(
        vec![anthropic_client(&mock, json!({}))],
        db.path(),
        json!({}),
    );
    let gw = Gateway::start(&cfg).await;
    let headers = [
        ("anthropic-version", "2023-01-01"),
        ("anthropic-beta", "prompt-caching-2024-07-31"),
        ("x-api-key", "sk-caller"),
    ];
    let resp = send_json(&gw.url("/v1/messages"), &messages_body(true), &headers).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        read_all(resp).await,
        anthropic_frames().concat(),
        "passed through byte for byte"
    );
    let sent = mock.single();
    assert_eq!(sent.uri, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some(BACKEND_KEY));
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(sent.header("anthropic-version"), Some("2023-01-01"));
    assert_eq!(
        sent.header("anthropic-beta"),
        Some("prompt-caching-2024-07-31")
    );
    assert_eq!(
        sent.body,
        messages_body(true).to_string().into_bytes(),
        "sent as received"
    );

    let row = wait_one_row(db.path()).await;
    assert_eq!(row.kind.as_deref(), Some("messages"));
    // OpenAI's meaning: all input (25 + 10 read + 3 written), of which 10 cached.
    assert_eq!(
        (
            row.prompt_tokens,
            row.completion_tokens,
            row.total_tokens,
            row.cached_tokens
        ),
        (Some(38), Some(15), Some(53), Some(10))
    );
    assert_eq!(row.cache_write_tokens, Some(3));
    assert!(row.first_token_ms.is_some(), "{row:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_messages_answer_passes_through_and_the_version_defaults() {
    let mock = anthropic_mock().await;
    let db = tempfile::tempdir().unwrap();
    let clients = vec![anthropic_client(
        &mock,
        json!({"anthropic_version": "2024-10-22"}),
    )];
    let gw = Gateway::start(&usage_config(clients, db.path(), json!({}))).await;
    let r = post_with(&gw, "/v1/messages", &messages_body(false), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), anthropic_answer());
    assert_eq!(
        mock.single().header("anthropic-version"),
        Some("2024-10-22")
    );
    let row = wait_one_row(db.path()).await;
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens),
        (Some(16), Some(6))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_callers_are_translated_to_an_anthropic_backend_and_back() {
    let mock = anthropic_mock().await;
    let db = tempfile::tempdir().unwrap();
    let clients = vec![anthropic_client(&mock, json!({"max_tokens": 300}))];
    let gw = Gateway::start(&usage_config(clients, db.path(), json!({}))).await;
    let chat = json!({"model": "claude-x", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]});
    let r = post_with(&gw, "/v1/chat/completions", &chat, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hi there");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 16);
    let sent = mock.single();
    assert_eq!(sent.uri, "/v1/messages");
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    let body = sent.json();
    assert_eq!(body["system"], "Be brief.");
    assert_eq!(
        body["max_tokens"], 300,
        "the client's cap when the caller gives none"
    );
    assert_eq!(body["messages"], json!([{"role": "user", "content": "Hi"}]));

    let mut stream = chat.clone();
    stream["stream"] = json!(true);
    stream["stream_options"] = json!({"include_usage": true});
    let resp = send_json(&gw.url("/v1/chat/completions"), &stream, &[]).await;
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = read_all(resp).await;
    let chunks: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello!");
    let usage = chunks
        .iter()
        .find(|c| c["usage"].is_object())
        .expect("a usage chunk");
    assert_eq!(usage["usage"]["prompt_tokens"], 38);
    assert_eq!(usage["usage"]["completion_tokens"], 15);
    let rows = crate::common::records::wait_rows(db.path(), 2).await;
    assert_eq!(rows[1].kind.as_deref(), Some("chat.completions"));
    assert_eq!(
        (rows[1].prompt_tokens, rows[1].completion_tokens),
        (Some(38), Some(15))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anthropic_error_reaches_a_chat_caller_in_openais_shape() {
    let mock = Mock::start_with(
        "ant",
        Behavior::Fail {
            status: 400,
            body: json!({"type": "error", "error": {"type": "invalid_request_error",
                "message": "max_tokens: too large"}})
            .to_string(),
        },
    )
    .await;
    let gw = Gateway::start(&crate::common::config(vec![anthropic_client(
        &mock,
        json!({}),
    )]))
    .await;
    let chat = json!({"model": "claude-x", "messages": [{"role": "user", "content": "Hi"}]});
    let r = post_with(&gw, "/v1/chat/completions", &chat, &[]).await;
    let e = r.expect_error(400);
    assert_eq!(e["message"], "max_tokens: too large");
    assert_eq!(e["type"], "invalid_request_error");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overloaded_anthropic_backend_fails_over_to_an_openai_one_translated() {
    let ant = Mock::start_with(
        "ant",
        Behavior::Fail {
            status: 529,
            body: json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                .to_string(),
        },
    )
    .await;
    let openai = Mock::start("oai").await;
    openai.set_sse(3, std::time::Duration::ZERO);
    let mut second = client("oai", &openai.base_url("/v1"), "exact", &["claude-x"]);
    second["priority"] = json!(1);
    let cfg = crate::common::config(vec![anthropic_client(&ant, json!({})), second]);
    let gw = Gateway::start(&cfg).await;

    let r: Resp = post_with(&gw, "/v1/messages", &messages_body(false), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["type"], "message");
    assert_eq!(r.json()["content"][0]["text"], "hi");

    let resp = send_json(&gw.url("/v1/messages"), &messages_body(true), &[]).await;
    let text = read_all(resp).await;
    assert!(text.starts_with("event: message_start\n"), "{text}");
    assert!(
        text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
        "{text}"
    );

    assert_eq!(
        ant.count(),
        2,
        "the anthropic backend was tried first each time"
    );
    for sent in ant.requests() {
        assert_eq!(sent.uri, "/v1/messages");
    }
    for sent in openai.requests() {
        assert_eq!(sent.uri, "/v1/chat/completions");
        assert_eq!(sent.header("x-api-key"), None);
        assert!(sent.json()["messages"].is_array());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_messages_body_that_does_not_translate_never_reaches_an_openai_backend_as_it_is() {
    let ant = Mock::start_with(
        "ant",
        Behavior::Fail {
            status: 529,
            body: json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                .to_string(),
        },
    )
    .await;
    let openai = Mock::start("oai").await;
    let mut second = client("oai", &openai.base_url("/v1"), "exact", &["claude-x"]);
    second["priority"] = json!(1);
    let cfg = crate::common::config(vec![anthropic_client(&ant, json!({})), second]);
    let gw = Gateway::start(&cfg).await;

    // Content the translator does not take: the anthropic backend gets it as it is and is overloaded.
    let body = json!({"model": "claude-x", "max_tokens": 50, "messages": [{"role": "user", "content": 5}]});
    let r: Resp = post_with(&gw, "/v1/messages", &body, &[]).await;
    assert!(r.status >= 400, "{}", r.text());
    assert_eq!(r.json()["type"], "error", "{}", r.text());
    assert_eq!(ant.count(), 1);
    assert_eq!(openai.count(), 0, "no Messages body sent to a chat backend");
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_callers_reach_an_anthropic_backend_through_chat_and_back() {
    let mock = anthropic_mock().await;
    let db = tempfile::tempdir().unwrap();
    let clients = vec![anthropic_client(&mock, json!({}))];
    let gw = Gateway::start(&usage_config(clients, db.path(), json!({}))).await;
    let request = json!({"model": "claude-x", "instructions": "Be brief.", "input": "Hi",
        "max_output_tokens": 40});
    let r = post_with(&gw, "/v1/responses", &request, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["output"][0]["content"][0]["text"], "Hi there");
    assert_eq!(v["usage"]["input_tokens"], 16);
    let sent = mock.single();
    assert_eq!(sent.uri, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some(BACKEND_KEY));
    let body = sent.json();
    assert_eq!(body["system"], "Be brief.");
    assert_eq!(body["max_tokens"], 40);
    assert_eq!(body["messages"], json!([{"role": "user", "content": "Hi"}]));

    let mut stream = request.clone();
    stream["stream"] = json!(true);
    let resp = send_json(&gw.url("/v1/responses"), &stream, &[]).await;
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = crate::common::read_events(resp).await;
    assert_eq!(events[0].0, "response.created", "{events:?}");
    let delta: String = events
        .iter()
        .filter(|(n, _)| *n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(delta, "Hello!");
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "response.completed", "{events:?}");
    assert_eq!(done["response"]["usage"]["input_tokens"], 38);
    assert_eq!(done["response"]["usage"]["output_tokens"], 15);
    let rows = crate::common::records::wait_rows(db.path(), 2).await;
    assert!(rows.iter().all(|r| r.kind.as_deref() == Some("responses")));
    assert_eq!(
        (rows[1].prompt_tokens, rows[1].completion_tokens),
        (Some(38), Some(15))
    );
    assert_eq!(
        rows[1].cache_write_tokens,
        Some(3),
        "the Messages usage's cache writes"
    );
}
