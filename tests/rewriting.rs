//! Per-client rewriting: what the backend receives (stop, max_tokens, extra_body, model alias, stream usage,
//! untouched bytes) and what the caller receives (special_prefix in bodies and streams, the usage-only chunk).

use std::fmt;

use crate::common;
use crate::common::mock::{
    chat_chunk, chat_stream_events, reasoning_stream_events, text_stream_events,
    tool_call_stream_events, usage_chunk, usage_json, Reply,
};
use crate::common::records::{usage_config, wait_one_row};
use crate::common::{
    client, config, http_client, post_bytes, raw_http, Behavior, Gateway, Mock, Recorded, Resp,
};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// The special prefix used throughout, and how it reads inside a JSON string.
const PREFIX: &str = "<think>\n";
const PREFIX_JSON: &str = "<think>\\n";

/// `client(..)` with these extra fields (stop, max_tokens, special_prefix...).
fn client_with(mock: &Mock, models: &[&str], fields: Value) -> Value {
    let mut c = client("a", &mock.base_url("/v1"), "exact", models);
    for (k, v) in fields.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

async fn start(mock: &Mock, models: &[&str], fields: Value) -> Gateway {
    Gateway::start(&config(vec![client_with(mock, models, fields)])).await
}

/// POSTs `body` and returns the caller's response and what the backend received for it.
async fn exchange(gw: &Gateway, mock: &Mock, path: &str, body: &Value) -> (Resp, Recorded) {
    exchange_bytes(gw, mock, path, serde_json::to_vec(body).unwrap()).await
}

async fn exchange_bytes(gw: &Gateway, mock: &Mock, path: &str, body: Vec<u8>) -> (Resp, Recorded) {
    let before = mock.count();
    let resp = post_bytes(gw, path, body).await;
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    let requests = mock.requests();
    assert_eq!(requests.len(), before + 1, "one upstream request per call");
    (resp, requests.last().cloned().unwrap())
}

/// The top-level fields of a JSON object: each key and its value's exact text, in order.
struct RawFields(Vec<(String, String)>);

impl<'de> Deserialize<'de> for RawFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawFields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFields, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push((k, v.get().to_string()));
                }
                Ok(RawFields(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn raw_fields(body: &[u8]) -> Vec<(String, String)> {
    serde_json::from_slice::<RawFields>(body)
        .unwrap_or_else(|e| panic!("not a JSON object ({e}): {}", String::from_utf8_lossy(body)))
        .0
}

/// `v` without the key `k`.
fn without(v: &Value, k: &str) -> Value {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove(k);
    v
}

fn chat(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "hello" }], "temperature": 0.5 })
}

// ---------------------------------------------------------------------------------------------------------------
// What the backend receives
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn stop_words_are_merged_client_first_without_repeats() {
    let mock = Mock::start("b").await;
    let gw = start(&mock, &["m1"], json!({ "stop": ["<|end|>", "###"] })).await;

    let cases = [
        (
            json!(["###", "STOP", "STOP"]),
            json!(["<|end|>", "###", "STOP"]),
        ),
        (json!("STOP"), json!(["<|end|>", "###", "STOP"])),
        (json!("###"), json!(["<|end|>", "###"])),
        (Value::Null, json!(["<|end|>", "###"])),
    ];
    for (caller, want) in cases {
        let mut body = chat("m1");
        body["stop"] = caller.clone();
        let (_, up) = exchange(&gw, &mock, "/v1/chat/completions", &body).await;
        let got = up.json();
        assert_eq!(got["stop"], want, "caller stop {caller}");
        assert_eq!(
            without(&got, "stop"),
            without(&body, "stop"),
            "caller stop {caller}: other fields"
        );
    }

    // No stop at all: the client's list is added.
    let (_, up) = exchange(&gw, &mock, "/v1/chat/completions", &chat("m1")).await;
    assert_eq!(up.json()["stop"], json!(["<|end|>", "###"]));
    assert_eq!(without(&up.json(), "stop"), chat("m1"));

    // Completions have `stop` too.
    let body = json!({ "model": "m1", "prompt": "Once", "stop": ["\n\n"] });
    let (_, up) = exchange(&gw, &mock, "/v1/completions", &body).await;
    assert_eq!(up.json()["stop"], json!(["<|end|>", "###", "\n\n"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn max_tokens_is_capped_or_added() {
    let mock = Mock::start("b").await;
    let gw = start(&mock, &["m1"], json!({ "max_tokens": 100 })).await;

    // Above the cap: lowered.
    let mut body = chat("m1");
    body["max_tokens"] = json!(500);
    let (_, up) = exchange(&gw, &mock, "/v1/chat/completions", &body).await;
    assert_eq!(up.json()["max_tokens"], json!(100));
    assert_eq!(without(&up.json(), "max_tokens"), chat("m1"));

    // Below the cap: the request needs no change and arrives byte-identical.
    let sent = br#"{"model":"m1", "max_tokens": 50, "messages":[{"role":"user","content":"hi"}]}"#
        .to_vec();
    let (_, up) = exchange_bytes(&gw, &mock, "/v1/chat/completions", sent.clone()).await;
    assert_eq!(up.body, sent, "{}", String::from_utf8_lossy(&up.body));

    // Absent: added.
    let (_, up) = exchange(&gw, &mock, "/v1/chat/completions", &chat("m1")).await;
    assert_eq!(up.json()["max_tokens"], json!(100));
    assert_eq!(without(&up.json(), "max_tokens"), chat("m1"));

    // max_completion_tokens above the cap: that field is capped, max_tokens is not added.
    let mut body = chat("m1");
    body["max_completion_tokens"] = json!(4096);
    let (_, up) = exchange(&gw, &mock, "/v1/chat/completions", &body).await;
    let got = up.json();
    assert_eq!(got["max_completion_tokens"], json!(100));
    assert!(got.get("max_tokens").is_none(), "{got}");
}

#[tokio::test(flavor = "multi_thread")]
async fn extra_body_fields_are_added_only_when_absent() {
    let mock = Mock::start("b").await;
    let extra = json!({ "top_k": 20, "temperature": 0.1, "chat_template_kwargs": { "enable_thinking": false } });
    let gw = start(&mock, &["m1"], json!({ "extra_body": extra })).await;

    // temperature is the caller's (0.5); the others are added.
    let (_, up) = exchange(&gw, &mock, "/v1/chat/completions", &chat("m1")).await;
    let got = up.json();
    assert_eq!(got["temperature"], json!(0.5), "{got}");
    assert_eq!(got["top_k"], json!(20), "{got}");
    assert_eq!(
        got["chat_template_kwargs"],
        json!({ "enable_thinking": false }),
        "{got}"
    );
    let mut want = chat("m1");
    want["top_k"] = json!(20);
    want["chat_template_kwargs"] = json!({ "enable_thinking": false });
    assert_eq!(got, want);

    // Every field present (even as null): nothing changes, the bytes arrive as sent.
    let sent = br#"{"model":"m1","messages":[],"top_k":null,"temperature":1,"chat_template_kwargs":{"x":1}}"#.to_vec();
    let (_, up) = exchange_bytes(&gw, &mock, "/v1/chat/completions", sent.clone()).await;
    assert_eq!(up.body, sent, "{}", String::from_utf8_lossy(&up.body));
}

#[tokio::test(flavor = "multi_thread")]
async fn model_alias_is_sent_upstream_and_recorded() {
    let mock = Mock::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let c = client_with(&mock, &["alias"], json!({ "model": "upstream-x" }));
    let gw = Gateway::start(&usage_config(vec![c], db.path(), json!({}))).await;

    let (resp, up) = exchange(&gw, &mock, "/v1/chat/completions", &chat("alias")).await;
    let got = up.json();
    assert_eq!(got["model"], json!("upstream-x"));
    assert_eq!(without(&got, "model"), without(&chat("alias"), "model"));
    assert_eq!(
        resp.json(),
        Mock::answer_json("upstream-x"),
        "the backend's answer passes as it is"
    );

    let row = wait_one_row(db.path()).await;
    assert_eq!(row.model.as_deref(), Some("alias"));
    assert_eq!(row.upstream_model.as_deref(), Some("upstream-x"));
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_request_gets_include_usage_and_keeps_every_other_field_byte_for_byte() {
    let mock = Mock::start("b").await;
    let gw = start(&mock, &["m1"], json!({})).await;

    let sent = concat!(
        r#"{"model":"m1","messages":[{"role":"user","content":"hi \u00e9"}],"stream":true,"#,
        r#""tools":[ {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type":"string"}}}}} ],"#,
        r#""response_format":{ "type" : "json_object" },"n":2,"seed":42,"temperature":0.70,"#,
        r#""x_vendor":{"a":[1, 2.50, 1e3],"b":"\ud83d\ude00"}}"#
    );
    let (resp, up) =
        exchange_bytes(&gw, &mock, "/v1/chat/completions", sent.as_bytes().to_vec()).await;
    let mut want = raw_fields(sent.as_bytes());
    want.push(("stream_options".into(), r#"{"include_usage":true}"#.into()));
    let got = raw_fields(&up.body);
    assert_eq!(
        got,
        want,
        "upstream body: {}",
        String::from_utf8_lossy(&up.body)
    );
    assert_eq!(
        resp.text(),
        Mock::sse_events("m1", 3).concat(),
        "the caller did not ask for usage: no usage chunk"
    );

    // stream_options with include_usage false and another key: include_usage turns true, the rest stays.
    let sent = r#"{"model":"m1","stream":true,"stream_options":{"include_usage":false,"x":[1, 2]},"messages":[]}"#;
    let (resp, up) =
        exchange_bytes(&gw, &mock, "/v1/chat/completions", sent.as_bytes().to_vec()).await;
    let got = up.json();
    assert_eq!(
        got["stream_options"],
        json!({ "include_usage": true, "x": [1, 2] }),
        "{got}"
    );
    assert_eq!(
        without(&got, "stream_options"),
        without(&serde_json::from_str(sent).unwrap(), "stream_options")
    );
    assert_eq!(resp.text(), Mock::sse_events("m1", 3).concat());
}

#[tokio::test(flavor = "multi_thread")]
async fn request_needing_no_rewrite_arrives_byte_identical() {
    let mock = Mock::start("b").await;
    // stop and max_tokens do not apply to embeddings.
    let limits = client_with(&mock, &["emb"], json!({ "stop": ["x"], "max_tokens": 10 }));
    let plain = client("p", &mock.base_url("/v1"), "exact", &["m1"]);
    let gw = Gateway::start(&config(vec![plain, limits])).await;

    let bodies: [(&str, &str); 4] = [
        ("/v1/chat/completions", "{ \"messages\" : [ {\"role\":\"user\",\"content\":\"caf\\u00e9 \u{e9}\"} ],\n  \"model\":\"m1\", \"max_tokens\": 1e3, \"stop\": \"x\" }"),
        ("/v1/chat/completions", r#"{"model":"m1","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#),
        ("/v1/completions", r#"{"prompt":"a","model":"m1" ,"stream":false}"#),
        ("/v1/embeddings", r#"{"model":"emb","input":["a", "b"]}"#),
    ];
    for (path, body) in bodies {
        let (_, up) = exchange_bytes(&gw, &mock, path, body.as_bytes().to_vec()).await;
        assert_eq!(String::from_utf8(up.body.to_vec()).unwrap(), body, "{path}");
        assert_eq!(
            up.header("content-length"),
            Some(body.len().to_string().as_str()),
            "{path}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// special_prefix in whole bodies
// ---------------------------------------------------------------------------------------------------------------

/// Checks a whole-body answer both through reqwest and through a raw HTTP/1.1 read: the body is `want` and
/// the framing is chunked or a Content-Length equal to the body's length.
async fn assert_prefixed_body(gw: &Gateway, path: &str, request: &Value, want: &str) {
    let resp = http_client()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(request).unwrap())
        .send()
        .await
        .unwrap();
    let resp = Resp::read(resp).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), want, "caller's body");
    if let Some(len) = resp.header("content-length") {
        assert_eq!(len, want.len().to_string(), "Content-Length");
    }
    assert_eq!(resp.header("x-gpt-api-backend"), Some("a"));

    let body = serde_json::to_vec(request).unwrap();
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let raw = raw_http(gw.addr(), raw).await;
    assert_eq!(raw.status, 200);
    let chunked = raw
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    match raw.header("content-length") {
        Some(len) => {
            assert!(
                !chunked,
                "both Content-Length and chunked: {:?}",
                raw.headers
            );
            assert_eq!(
                len,
                raw.body.len().to_string(),
                "Content-Length vs the bytes sent: {:?}",
                raw.headers
            );
        }
        None => assert!(
            chunked,
            "neither Content-Length nor chunked: {:?}",
            raw.headers
        ),
    }
    assert_eq!(String::from_utf8(raw.body).unwrap(), want, "raw read body");
}

#[tokio::test(flavor = "multi_thread")]
async fn special_prefix_goes_in_front_of_each_chat_choice_and_nothing_else_changes() {
    let mock = Mock::start("b").await;
    let template = r#"{
  "id": "chatcmpl-9",
  "object": "chat.completion",
  "created": 1700000000,
  "model": "m1",
  "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "{P}Hello \"there\"\n"}, "logprobs": null, "finish_reason": "stop"},
    {"index": 1, "message": {"role": "assistant", "content":"{P}W\u00f6rld \u00e9", "refusal": null}, "finish_reason": "length"}
  ],
  "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
  "system_fingerprint": "fp_x"
}"#;
    mock.set_reply(Reply::body(template.replace("{P}", "")));
    let gw = start(&mock, &["m1"], json!({ "special_prefix": PREFIX })).await;

    let want = template.replace("{P}", PREFIX_JSON);
    let mut request = chat("m1");
    request["n"] = json!(2);
    assert_prefixed_body(&gw, "/v1/chat/completions", &request, &want).await;
    let v: Value = serde_json::from_str(&want).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        json!(format!("{PREFIX}Hello \"there\"\n"))
    );
    assert_eq!(mock.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn special_prefix_goes_in_front_of_each_completions_text() {
    let mock = Mock::start("b").await;
    let template = r#"{"id":"cmpl-9","object":"text_completion","created":1700000000,"model":"m1","choices":[{"text":"{P}Once upon","index":0,"logprobs":null,"finish_reason":"length"},{"text":"{P}A time","index":1,"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":2,"completion_tokens":4,"total_tokens":6}}"#;
    mock.set_reply(Reply::body(template.replace("{P}", "")));
    let gw = start(&mock, &["m1"], json!({ "special_prefix": PREFIX })).await;

    let request = json!({ "model": "m1", "prompt": "Say", "n": 2 });
    assert_prefixed_body(
        &gw,
        "/v1/completions",
        &request,
        &template.replace("{P}", PREFIX_JSON),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn special_prefix_leaves_null_content_and_error_bodies_alone_and_is_recorded() {
    let mock = Mock::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let c = client_with(&mock, &["m1"], json!({ "special_prefix": PREFIX }));
    let gw = Gateway::start(&usage_config(vec![c], db.path(), json!({}))).await;

    // A tool call answer: content is null, there is nothing to prefix.
    let tool_call = r#"{"id":"chatcmpl-3","object":"chat.completion","model":"m1","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\": \"b\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
    mock.set_reply(Reply::body(tool_call));
    let r = post_bytes(
        &gw,
        "/v1/chat/completions",
        serde_json::to_vec(&chat("m1")).unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), tool_call);

    // A plain answer: the record's Response is the body as the caller got it, prefix included.
    mock.set_reply(Reply::default());
    let r = post_bytes(
        &gw,
        "/v1/chat/completions",
        serde_json::to_vec(&chat("m1")).unwrap(),
    )
    .await;
    let want = Mock::answer_json("m1").to_string().replace(
        r#""content":"hi""#,
        &format!(r#""content":"{PREFIX_JSON}hi""#),
    );
    assert_eq!(r.text(), want);
    let rows = common::records::wait_exact_rows(db.path(), 2).await;
    // Its row found by its request id: the two records may reach the store in either order (each is sent in its
    // request's logging phase, after the caller has the answer).
    let id = r.header("x-request-id").expect("x-request-id");
    let row = rows
        .iter()
        .find(|row| row.request_id.as_deref() == Some(id));
    assert_eq!(
        row.and_then(|row| row.response.as_deref()),
        Some(want.as_str()),
        "{rows:#?}"
    );

    // An error from the backend is not an answer: it passes unchanged.
    let error = r#"{"error":{"message":"content\": \"x","type":"invalid_request_error","param":null,"code":null}}"#;
    mock.set_behavior(Behavior::Fail {
        status: 400,
        body: error.into(),
    });
    let r = post_bytes(
        &gw,
        "/v1/chat/completions",
        serde_json::to_vec(&chat("m1")).unwrap(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), error);
    if let Some(len) = r.header("content-length") {
        assert_eq!(len, error.len().to_string());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// special_prefix in streams, and the usage-only chunk
// ---------------------------------------------------------------------------------------------------------------

/// Streams `request` to `path` and returns the caller's whole body.
async fn stream_text(gw: &Gateway, path: &str, request: &Value) -> String {
    let resp = http_client()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(request).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap()
}

fn stream_chat(model: &str) -> Value {
    json!({ "model": model, "stream": true, "messages": [{ "role": "user", "content": "go" }] })
}

#[tokio::test(flavor = "multi_thread")]
async fn special_prefix_goes_in_the_first_nonempty_delta_of_each_chat_choice() {
    let mock = Mock::start("b").await;
    let db = tempfile::tempdir().unwrap();
    // Choice 1 sends an empty content delta before its first real one.
    let pieces: &[&[&str]] = &[&["Hel", "lo", "!"], &["", "Wor", "ld"]];
    let usage = usage_chunk("m1", "chat.completion.chunk", usage_json(4, 6));
    mock.set_reply(Reply::stream(
        chat_stream_events("m1", pieces, ""),
        Some(usage),
    ));
    let c = client_with(&mock, &["m1"], json!({ "special_prefix": PREFIX }));
    let gw = Gateway::start(&usage_config(vec![c], db.path(), json!({}))).await;

    let mut request = stream_chat("m1");
    request["n"] = json!(2);
    let got = stream_text(&gw, "/v1/chat/completions", &request).await;
    let want = Reply::stream(chat_stream_events("m1", pieces, PREFIX_JSON), None).sse(false);
    assert_eq!(got, want.concat());

    // The record has the backend's usage and the message as the caller got it.
    let row = wait_one_row(db.path()).await;
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens, row.total_tokens),
        (Some(4), Some(6), Some(10))
    );
    let response = row.response_json();
    assert_eq!(
        response["choices"][0]["message"]["content"],
        json!(format!("{PREFIX}Hello!")),
        "{response}"
    );
    assert_eq!(
        response["choices"][1]["message"]["content"],
        json!(format!("{PREFIX}World")),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prefix_and_hidden_usage_work_when_events_arrive_split_across_reads() {
    let mock = Mock::start("b").await;
    // 7-byte frames 2 ms apart: every event, and the usage chunk, reaches the gateway in pieces.
    mock.set_sse(0, std::time::Duration::from_millis(2));
    let pieces: &[&[&str]] = &[&["Gr\u{fc}\u{df}e", " aus"], &["", "\u{4e2d}\u{6587}", "!"]];
    let usage = usage_chunk("m1", "chat.completion.chunk", usage_json(4, 6));
    let mut reply = Reply::stream(chat_stream_events("m1", pieces, ""), Some(usage));
    reply.piece_bytes = Some(7);
    mock.set_reply(reply);
    let gw = start(&mock, &["m1"], json!({ "special_prefix": PREFIX })).await;

    let mut request = stream_chat("m1");
    request["n"] = json!(2);
    let got = stream_text(&gw, "/v1/chat/completions", &request).await;
    let want = Reply::stream(chat_stream_events("m1", pieces, PREFIX_JSON), None).sse(false);
    assert_eq!(got, want.concat());
}

#[tokio::test(flavor = "multi_thread")]
async fn special_prefix_goes_in_the_first_nonempty_text_of_each_completions_choice() {
    let mock = Mock::start("b").await;
    let pieces: &[&[&str]] = &[&["Once", " upon"], &["", "A", " time"]];
    let usage = usage_chunk("m1", "text_completion", usage_json(2, 5));
    mock.set_reply(Reply::stream(
        text_stream_events("m1", pieces, ""),
        Some(usage),
    ));
    let gw = start(&mock, &["m1"], json!({ "special_prefix": PREFIX })).await;

    let request = json!({ "model": "m1", "prompt": "Say", "n": 2, "stream": true });
    let got = stream_text(&gw, "/v1/completions", &request).await;
    let want = Reply::stream(text_stream_events("m1", pieces, PREFIX_JSON), None).sse(false);
    assert_eq!(got, want.concat());
    assert_eq!(
        mock.single().json()["stream_options"],
        json!({ "include_usage": true })
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn special_prefix_skips_reasoning_and_tool_call_deltas() {
    let mock = Mock::start("b").await;
    let gw = start(&mock, &["m1"], json!({ "special_prefix": PREFIX })).await;
    let usage = Some(usage_chunk("m1", "chat.completion.chunk", usage_json(3, 9)));

    // Reasoning first: the prefix goes on the first non-empty content, never on reasoning_content.
    let (reasoning, content): (&[&str], &[&str]) = (&["Let me", " think"], &["", "Answer", " 42"]);
    mock.set_reply(Reply::stream(
        reasoning_stream_events("m1", reasoning, content, ""),
        usage.clone(),
    ));
    let got = stream_text(&gw, "/v1/chat/completions", &stream_chat("m1")).await;
    let want = Reply::stream(
        reasoning_stream_events("m1", reasoning, content, PREFIX_JSON),
        None,
    )
    .sse(false);
    assert_eq!(got, want.concat());

    // A tool call split over chunks, no content: every event passes unchanged (only the usage chunk goes).
    let events = tool_call_stream_events("m1", "get_weather", &["{\"ci", "ty\": \"Par", "is\"}"]);
    mock.set_reply(Reply::stream(events.clone(), usage));
    let got = stream_text(&gw, "/v1/chat/completions", &stream_chat("m1")).await;
    assert_eq!(got, Reply::stream(events, None).sse(false).concat());
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_chunk_is_hidden_from_a_caller_who_did_not_ask_but_recorded() {
    let mock = Mock::start("b").await;
    mock.set_sse(4, std::time::Duration::ZERO);
    let db = tempfile::tempdir().unwrap();
    let c = client("a", &mock.base_url("/v1"), "exact", &["m1"]);
    let gw = Gateway::start(&usage_config(vec![c], db.path(), json!({}))).await;

    let got = stream_text(&gw, "/v1/chat/completions", &stream_chat("m1")).await;
    assert_eq!(got, Mock::sse_events("m1", 4).concat());
    let up = mock.single().json();
    assert_eq!(
        up["stream_options"],
        json!({ "include_usage": true }),
        "the gateway asks for usage"
    );

    let row = wait_one_row(db.path()).await;
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens, row.total_tokens),
        (Some(3), Some(4), Some(7))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_chunk_reaches_a_caller_who_asked() {
    let mock = Mock::start("b").await;
    mock.set_sse(4, std::time::Duration::ZERO);
    let gw = start(&mock, &["m1"], json!({})).await;

    let mut request = stream_chat("m1");
    request["stream_options"] = json!({ "include_usage": true });
    let got = stream_text(&gw, "/v1/chat/completions", &request).await;
    let mut want = Mock::sse_events("m1", 4);
    want.insert(4, format!("data: {}\n\n", Mock::usage_event("m1", 4)));
    assert_eq!(got, want.concat());
    assert_eq!(
        mock.single().body,
        serde_json::to_vec(&request).unwrap(),
        "nothing to rewrite"
    );

    // Also with a prefix: the usage chunk (no choices) passes unchanged.
    let pieces: &[&[&str]] = &[&["a", "b"]];
    let usage = usage_chunk("m1", "chat.completion.chunk", usage_json(1, 2));
    let mock2 = Mock::start("b2").await;
    mock2.set_reply(Reply::stream(
        chat_stream_events("m1", pieces, ""),
        Some(usage.clone()),
    ));
    let gw2 = start(&mock2, &["m1"], json!({ "special_prefix": PREFIX })).await;
    let got = stream_text(&gw2, "/v1/chat/completions", &request).await;
    let want = Reply::stream(chat_stream_events("m1", pieces, PREFIX_JSON), Some(usage)).sse(true);
    assert_eq!(got, want.concat());
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_python_sdk_streams_through_prefix_and_hidden_usage() {
    let mock = Mock::start("sdk").await;
    mock.set_sse(5, std::time::Duration::ZERO);
    let gw = start(&mock, &["sdk-model"], json!({ "special_prefix": PREFIX })).await;

    let base_url = gw.url("/v1");
    let expected = format!("{PREFIX}{}", Mock::sse_text(5));
    common::run_python_client(
        "test_sdk_stream_rewrite.py",
        vec![base_url.into(), "sdk-model".into(), expected.into()],
    )
    .await;
    let up = mock.single().json();
    assert_eq!(up["stream_options"], json!({ "include_usage": true }));
}

/// `chat_chunk` is what every scripted chat stream is made of; keep its shape checked here.
#[test]
fn scripted_chunks_are_openai_shaped() {
    let chunk: Value = serde_json::from_str(&chat_chunk("m", json!([]))).unwrap();
    assert_eq!(chunk["object"], json!("chat.completion.chunk"));
    let events = chat_stream_events("m", &[&["x"]], "P");
    assert!(events[1].contains(r#""content":"Px""#), "{events:?}");
}
