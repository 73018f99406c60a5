//! The Responses API (`POST /v1/responses`) to a client with `responses: translate`: the request sent as chat
//! completions, the answer translated back (JSON, and SSE event by event), tools both ways, the record, errors,
//! failover between a passing-through and a translating client, and the official SDK's `responses.create`.

use std::time::Duration;

use crate::common;
use crate::common::mock::{
    chat_chunk, chat_stream_events, tool_call_stream_events, usage_chunk, usage_json, Reply,
};
use crate::common::read_events;
use crate::common::records::{usage_config, wait_one_row, wait_rows};
use crate::common::{client, post_with, send_json, Behavior, Gateway, Mock};
use futures_util::StreamExt;
use serde_json::{json, Value};

fn translating(name: &str, mock: &Mock) -> Value {
    let mut c = client(name, &mock.base_url("/v1"), "exact", &["m1"]);
    c["responses"] = json!("translate");
    c
}

fn request(stream: bool) -> Value {
    json!({"model": "m1", "instructions": "Be brief.", "input": "Say hi", "stream": stream,
        "max_output_tokens": 50})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_answer_is_translated_both_ways_and_recorded() {
    let mock = Mock::start("chat").await;
    let mut c = translating("a", &mock);
    c["model"] = json!("upstream-m");
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&usage_config(vec![c], db.path(), json!({}))).await;
    let r = post_with(&gw, "/v1/responses", &request(false), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let v = r.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["content"][0]["text"], "hi");
    assert_eq!(v["usage"]["input_tokens"], 3);
    assert_eq!(v["usage"]["output_tokens"], 1);

    let sent = mock.single();
    assert_eq!(sent.uri, "/v1/chat/completions");
    let body = sent.json();
    // Translated, then rewritten for the client (its model alias).
    assert_eq!(body["model"], "upstream-m");
    assert_eq!(
        body["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}])
    );
    assert_eq!(body["max_completion_tokens"], 50);
    for field in ["input", "instructions", "max_output_tokens"] {
        assert!(body.get(field).is_none(), "{field} in {body}");
    }

    let row = wait_one_row(db.path()).await;
    assert_eq!(row.kind.as_deref(), Some("responses"), "{}", row.dump());
    assert_eq!(row.status, Some(200));
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens, row.total_tokens),
        (Some(3), Some(1), Some(4))
    );
    assert_eq!(row.upstream_model.as_deref(), Some("upstream-m"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_is_translated_event_by_event_with_usage_in_response_completed() {
    let mock = Mock::start("chat").await;
    let usage = json!({"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 1}});
    mock.set_reply(Reply {
        piece_bytes: Some(17),
        ..Reply::stream(
            chat_stream_events("m1", &[&["Hel", "lo"]], ""),
            Some(usage_chunk("m1", "chat.completion.chunk", usage)),
        )
    });
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&usage_config(
        vec![translating("a", &mock)],
        db.path(),
        json!({}),
    ))
    .await;
    let resp = send_json(&gw.url("/v1/responses"), &request(true), &[]).await;
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    assert!(resp.headers().get("content-length").is_none());
    let events = read_events(resp).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"response.created"), "{names:?}");
    assert_eq!(names.last(), Some(&"response.completed"), "{names:?}");
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello");
    let done = &events.last().unwrap().1["response"];
    assert_eq!(done["usage"]["input_tokens"], 7);
    assert_eq!(done["usage"]["input_tokens_details"]["cached_tokens"], 4);
    assert_eq!(
        done["usage"]["output_tokens_details"]["reasoning_tokens"],
        1
    );
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello");

    let sent = mock.single().json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true, "{sent}");
    let row = wait_one_row(db.path()).await;
    assert_eq!(row.kind.as_deref(), Some("responses"));
    assert_eq!(row.stream, Some(1));
    assert_eq!(
        (
            row.prompt_tokens,
            row.completion_tokens,
            row.cached_tokens,
            row.reasoning_tokens
        ),
        (Some(7), Some(2), Some(4), Some(1)),
        "{}",
        row.dump()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_go_out_as_chat_tools_and_a_call_comes_back_as_a_function_call_item() {
    let mock = Mock::start("chat").await;
    mock.set_reply(Reply {
        piece_bytes: Some(23),
        ..Reply::stream(
            tool_call_stream_events("m1", "get_weather", &["{\"city\":", "\"Paris\"}"]),
            Some(usage_chunk(
                "m1",
                "chat.completion.chunk",
                usage_json(20, 5),
            )),
        )
    });
    let gw = Gateway::start(&common::config(vec![translating("a", &mock)])).await;
    let params = json!({"type": "object", "properties": {"city": {"type": "string"}}});
    let body = json!({"model": "m1", "stream": true,
    "tools": [{"type": "function", "name": "get_weather", "description": "Weather", "parameters": params}],
    "input": [
        {"role": "user", "content": "Weather in Rome, then Paris?"},
        {"type": "function_call", "call_id": "call_0", "name": "get_weather", "arguments": "{\"city\":\"Rome\"}"},
        {"type": "function_call_output", "call_id": "call_0", "output": "sunny"},
    ]});
    let events = read_events(send_json(&gw.url("/v1/responses"), &body, &[]).await).await;

    let sent = mock.single().json();
    assert_eq!(
        sent["tools"],
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
            "parameters": params}}])
    );
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{sent}");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["tool_calls"][0]["id"], "call_0");
    assert_eq!(
        messages[1]["tool_calls"][0]["function"],
        json!({"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"})
    );
    assert_eq!(
        messages[2],
        json!({"role": "tool", "tool_call_id": "call_0", "content": "sunny"})
    );

    let added = events
        .iter()
        .find(|(n, _)| n == "response.output_item.added")
        .map(|(_, d)| &d["item"])
        .unwrap();
    assert_eq!(added["type"], "function_call");
    assert_eq!(added["call_id"], "call_1");
    assert_eq!(added["name"], "get_weather");
    let args: String = events
        .iter()
        .filter(|(n, _)| n == "response.function_call_arguments.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(args, "{\"city\":\"Paris\"}");
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "response.completed");
    assert_eq!(
        done["response"]["output"][0]["arguments"],
        "{\"city\":\"Paris\"}"
    );
    assert_eq!(done["response"]["usage"]["total_tokens"], 25);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_does_not_translate_is_a_400_and_never_sent() {
    let mock = Mock::start("chat").await;
    let gw = Gateway::start(&common::config(vec![translating("a", &mock)])).await;
    let mut body = request(false);
    body["previous_response_id"] = json!("resp_earlier");
    let r = post_with(&gw, "/v1/responses", &body, &[]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!(e["type"], "invalid_request_error", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("previous_response_id"), "{e}");
    assert_eq!(mock.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_error_comes_back_in_openais_shape() {
    let mock = Mock::start("chat").await;
    let err = json!({"error": {"message": "bad tool schema", "type": "invalid_request_error",
        "param": "tools", "code": null}});
    mock.set_behavior(Behavior::Fail {
        status: 400,
        body: err.to_string(),
    });
    let gw = Gateway::start(&common::config(vec![translating("a", &mock)])).await;
    let r = post_with(&gw, "/v1/responses", &request(true), &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json(), err);
}

fn down() -> Behavior {
    let body = json!({"error": {"message": "down"}}).to_string();
    Behavior::Fail { status: 500, body }
}

/// Two clients of one model: `first` (priority 0) fails with 500, `second` answers.
async fn failover(first_translates: bool) -> (Mock, Mock, Gateway) {
    let (a, b) = (Mock::start("a").await, Mock::start("b").await);
    a.set_behavior(down());
    b.set_reply(Reply::body(response_json()));
    let mut ca = client("a", &a.base_url("/v1"), "exact", &["m1"]);
    let mut cb = client("b", &b.base_url("/v1"), "exact", &["m1"]);
    cb["priority"] = json!(1);
    let translator = if first_translates { &mut ca } else { &mut cb };
    translator["responses"] = json!("translate");
    let gw = Gateway::start(&common::config(vec![ca, cb])).await;
    (a, b, gw)
}

/// What a backend serving the Responses API answers (and what a chat one answers, for the other order).
fn response_json() -> String {
    json!({"id": "resp_1", "object": "response", "status": "completed", "model": "m1",
        "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "hi", "annotations": []}]}],
        "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_sends_each_client_the_body_it_takes_in_both_orders() {
    // A passing-through client fails: the translating one gets chat completions.
    let (a, b, gw) = failover(false).await;
    b.set_reply(Reply::default());
    let r = post_with(&gw, "/v1/responses", &request(false), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "response");
    assert_eq!(a.single().uri, "/v1/responses");
    assert_eq!(a.single().json(), request(false));
    assert_eq!(b.single().uri, "/v1/chat/completions");
    assert!(b.single().json()["messages"].is_array());

    // A translating client fails: the passing-through one gets the caller's request as it was.
    let (a, b, gw) = failover(true).await;
    let r = post_with(&gw, "/v1/responses", &request(false), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "resp_1");
    assert_eq!(a.single().uri, "/v1/chat/completions");
    assert_eq!(b.single().uri, "/v1/responses");
    assert_eq!(b.single().json(), request(false));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_does_not_translate_goes_only_to_clients_that_take_it_as_it_is() {
    let mut body = request(false);
    body["previous_response_id"] = json!("resp_earlier");
    // The translating client comes first: it is passed over, the other serves the request as it came.
    let (a, b, gw) = failover(true).await;
    let r = post_with(&gw, "/v1/responses", &body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "resp_1");
    assert_eq!(a.count(), 0);
    assert_eq!(b.single().json(), body);
    // The passing-through client comes first and fails: the translating one is no option.
    let (a, b, gw) = failover(false).await;
    let r = post_with(&gw, "/v1/responses", &body, &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!((a.count(), b.count()), (1, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fallback_models_translating_client_translates_or_refuses_with_a_400() {
    let (a, b) = (Mock::start("a").await, Mock::start("b").await);
    a.set_behavior(down());
    let mut ca = client("a", &a.base_url("/v1"), "exact", &["m1"]);
    ca["fallback"] = json!("m2");
    let mut cb = client("b", &b.base_url("/v1"), "exact", &["m2"]);
    cb["responses"] = json!("translate");
    let gw = Gateway::start(&common::config(vec![ca, cb])).await;
    // Not translated at admission (no client of m1 translates): translated when the fallback's client is tried.
    let r = post_with(&gw, "/v1/responses", &request(false), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "response");
    let sent = b.single();
    assert_eq!(sent.uri, "/v1/chat/completions");
    assert_eq!(sent.json()["model"], "m2");
    // One that does not translate is refused there, with the reason, and never sent to it.
    let mut body = request(false);
    body["previous_response_id"] = json!("resp_earlier");
    let r = post_with(&gw, "/v1/responses", &body, &[]).await;
    let e = r.expect_error(400);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("previous_response_id"),
        "{e:?}"
    );
    assert_eq!((a.count(), b.count()), (2, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdks_responses_create_works_against_a_chat_backend_and_is_recorded() {
    let mock = Mock::start("chat").await;
    // What the SDK script expects ("Hi there", 5 in, 3 out), as a chat backend says it.
    let completion = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000,
        "model": "codex-m", "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "Hi there"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
            "prompt_tokens_details": {"cached_tokens": 2}}});
    mock.set_reply(Reply {
        body: Some(completion.to_string()),
        ..Reply::stream(
            vec![
                chat_chunk(
                    "codex-m",
                    json!([{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]),
                ),
                chat_chunk(
                    "codex-m",
                    json!([{"index": 0, "delta": {"content": " there"}}]),
                ),
                chat_chunk(
                    "codex-m",
                    json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
                ),
            ],
            Some(usage_chunk(
                "codex-m",
                "chat.completion.chunk",
                completion["usage"].clone(),
            )),
        )
    });
    let db = tempfile::tempdir().unwrap();
    let mut c = client("a", &mock.base_url("/v1"), "exact", &["codex-m"]);
    c["responses"] = json!("translate");
    let gw = Gateway::start(&usage_config(vec![c], db.path(), json!({}))).await;
    common::run_python_client(
        "test_responses_sdk.py",
        vec![gw.url("/v1").into(), "codex-m".into(), "translated".into()],
    )
    .await;
    let sent = mock.requests();
    assert_eq!(sent.len(), 2);
    for r in &sent {
        assert_eq!(r.uri, "/v1/chat/completions");
    }
    let rows = wait_rows(db.path(), 2).await;
    for row in &rows {
        assert_eq!(row.kind.as_deref(), Some("responses"), "{}", row.dump());
        assert_eq!(row.prompt_tokens, Some(5), "{}", row.dump());
        assert_eq!(row.completion_tokens, Some(3), "{}", row.dump());
        assert_eq!(row.cached_tokens, Some(2), "{}", row.dump());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_event_reaches_the_caller_before_the_backend_sends_the_rest() {
    let mock = Mock::start("chat").await;
    mock.set_sse(3, Duration::ZERO);
    mock.hold_after_first_event();
    let gw = Gateway::start(&common::config(vec![translating("a", &mock)])).await;
    let started = std::time::Instant::now();
    let resp = send_json(&gw.url("/v1/responses"), &request(true), &[]).await;
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("\"delta\":\"c0 \"") {
        let piece = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the first event did not come while the backend held the rest")
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&piece).unwrap());
    }
    let first = started.elapsed();
    assert!(seen.starts_with("event: response.created\n"), "{seen}");
    assert!(!seen.contains("response.completed"), "{seen}");
    mock.release();
    while let Some(piece) = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("stream stalled")
    {
        seen.push_str(std::str::from_utf8(&piece.unwrap()).unwrap());
    }
    assert!(seen.contains("\"delta\":\"c2 \""), "{seen}");
    assert!(seen.contains("event: response.completed\n"), "{seen}");
    eprintln!("first translated event after {first:?} (request start to caller)");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_the_backend_cuts_ends_with_a_responses_error_event() {
    let mock = Mock::start_with("cut", Behavior::StreamThenAbort { events: 2 }).await;
    let gw = Gateway::start(&json!({ "openai_clients": [translating("a", &mock)] })).await;
    let resp = send_json(&gw.url("/v1/responses"), &request(true), &[]).await;
    assert_eq!(resp.status(), 200);
    let events = read_events(resp).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"response.created"), "{names:?}");
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error", "{names:?}");
    assert_eq!(data["type"], "error");
    assert_eq!(data["code"], "upstream_error");
    assert!(
        data["message"]
            .as_str()
            .unwrap()
            .contains("backend failed mid-response"),
        "{data}"
    );
}
