//! Usage records: one row in `<usage.dir>/record_YYYYMM.db` per routed request, whatever its outcome, with
//! credentials redacted, bodies kept or cut as configured, and every row written before a SIGTERM'd gateway exits.

use std::time::Duration;

use crate::common;
use crate::common::mock::{chat_chunk, Reply};
use crate::common::records::{
    fast_shutdown_conf, rows, usage_config, wait_exact_rows, wait_one_row, wait_rows, Row,
};
use crate::common::{
    client, http_client, post_bytes, post_json, wait_until, Behavior, Gateway, Mock,
};
use futures_util::StreamExt;
use serde_json::{json, Value};

fn one_client(mock: &Mock, models: &[&str]) -> Vec<Value> {
    vec![client("a", &mock.base_url("/v1"), "exact", models)]
}

fn assert_tokens(row: &Row, prompt: i64, completion: i64, total: i64) {
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens, row.total_tokens),
        (Some(prompt), Some(completion), Some(total)),
        "{row:#?}"
    );
}

fn assert_no_tokens(row: &Row) {
    let tokens = [
        row.prompt_tokens,
        row.completion_tokens,
        row.total_tokens,
        row.cached_tokens,
        row.reasoning_tokens,
    ];
    assert_eq!(tokens, [None; 5], "token columns must be NULL: {row:#?}");
}

/// A streaming chat request with a tool and an image_url part.
fn tool_and_image_request(model: &str) -> Value {
    json!({
        "model": model,
        "stream": true,
        "messages": [{ "role": "user", "content": [
            { "type": "text", "text": "what is this?" },
            { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw0KGgo=" } },
        ] }],
        "tools": [{ "type": "function", "function": { "name": "look", "parameters": { "type": "object" } } }],
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_success_leaves_a_full_record() {
    let mock = Mock::start("b").await;
    mock.set_sse(3, Duration::ZERO);
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&usage_config(
        one_client(&mock, &["m1"]),
        db.path(),
        json!({}),
    ))
    .await;

    let request = tool_and_image_request("m1");
    let sent = serde_json::to_vec(&request).unwrap();
    let resp = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(sent.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-gpt-api-backend"], "a");
    let body = resp.bytes().await.unwrap();
    assert_eq!(&body[..], Mock::sse_events("m1", 3).concat().as_bytes());

    let row = wait_one_row(db.path()).await;
    assert_eq!(row.model.as_deref(), Some("m1"));
    assert_eq!(row.kind.as_deref(), Some("chat.completions"));
    assert_tokens(&row, 3, 3, 6);
    assert_eq!(row.backend.as_deref(), Some("a"));
    assert_eq!(row.upstream_model.as_deref(), Some("m1"));
    assert_eq!(row.stream, Some(1));
    assert_eq!(row.status, Some(200));
    assert_eq!(row.attempts, Some(1));
    assert_eq!(row.tool, Some(1), "the request has tools");
    assert_eq!(row.multimodal, Some(1), "the request has an image_url part");
    assert_eq!(row.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(row.error, None);
    let latency = row.latency_ms.expect("LatencyMs");
    let first = row.first_token_ms.expect("FirstTokenMs of a stream");
    assert!(
        0 <= first && first <= latency,
        "first token {first} ms, latency {latency} ms"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(&row.time).is_ok(),
        "Time {:?}",
        row.time
    );
    assert_eq!(row.request.as_deref().map(str::as_bytes), Some(&sent[..]));
    // The stream's Response is the message rebuilt from its chunks, with the usage.
    let response = row.response_json();
    assert_eq!(response["model"], json!("m1"), "{response}");
    assert_eq!(
        response["choices"],
        json!([{ "index": 0, "message": { "role": "assistant", "content": Mock::sse_text(3) }, "finish_reason": "stop" }]),
        "{response}"
    );
    assert_eq!(
        response["usage"],
        common::mock::usage_json(3, 3),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn non_stream_success_records_the_body_as_sent_and_token_details() {
    let mock = Mock::start("b").await;
    let answer = json!({
        "id": "chatcmpl-7",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m1",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": "hi" }, "finish_reason": "stop" }],
        "usage": {
            "prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29,
            "prompt_tokens_details": { "cached_tokens": 16 },
            "completion_tokens_details": { "reasoning_tokens": 5 },
        },
    })
    .to_string();
    mock.set_reply(Reply::body(answer.clone()));
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&usage_config(
        one_client(&mock, &["m1"]),
        db.path(),
        json!({}),
    ))
    .await;

    let r = post_json(&gw, "/v1/chat/completions", &common::chat_body("m1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), answer);

    let row = wait_one_row(db.path()).await;
    assert_tokens(&row, 20, 9, 29);
    assert_eq!(
        (row.cached_tokens, row.reasoning_tokens),
        (Some(16), Some(5))
    );
    assert_eq!(row.stream, Some(0));
    assert_eq!((row.tool, row.multimodal), (Some(0), Some(0)));
    assert_eq!(row.status, Some(200));
    assert_eq!(row.response.as_deref(), Some(answer.as_str()));
    assert_eq!(row.upstream_model.as_deref(), Some("m1"));
    assert!(row.latency_ms.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_4xx_passes_through_and_is_recorded() {
    let body = r#"{"error":{"message":"bad request","type":"invalid_request_error","param":null,"code":null}}"#;
    let mock = Mock::start_with(
        "b",
        Behavior::Fail {
            status: 400,
            body: body.into(),
        },
    )
    .await;
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&usage_config(
        one_client(&mock, &["m1"]),
        db.path(),
        json!({}),
    ))
    .await;

    let r = post_json(&gw, "/v1/chat/completions", &common::chat_body("m1")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), body);

    let row = wait_one_row(db.path()).await;
    assert_eq!(row.status, Some(400));
    assert_eq!(row.backend.as_deref(), Some("a"));
    assert_eq!(row.attempts, Some(1));
    assert_eq!(row.response.as_deref(), Some(body));
    assert_no_tokens(&row);
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_5xx_from_the_only_candidate_is_recorded() {
    let body = r#"{"error":{"message":"boom","type":"server_error","param":null,"code":null}}"#;
    let mock = Mock::start_with(
        "b",
        Behavior::Fail {
            status: 500,
            body: body.into(),
        },
    )
    .await;
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&usage_config(
        one_client(&mock, &["m1"]),
        db.path(),
        json!({}),
    ))
    .await;

    // Every attempt failed: the caller gets the gateway's 502 naming the client (issue 4).
    let r = post_json(&gw, "/v1/chat/completions", &common::chat_body("m1")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(mock.count(), 1);

    let row = wait_one_row(db.path()).await;
    assert_eq!(row.status, Some(502), "{row:#?}");
    assert_eq!(row.backend.as_deref(), Some("a"));
    assert_eq!(row.attempts, Some(1));
    assert!(
        row.error
            .as_deref()
            .is_some_and(|e| e.contains("answered 500")),
        "{row:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_model_is_recorded_as_404_with_its_error() {
    let mock = Mock::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&usage_config(
        one_client(&mock, &["m1"]),
        db.path(),
        json!({}),
    ))
    .await;

    let r = post_json(
        &gw,
        "/v1/chat/completions",
        &common::chat_body("no-such-model"),
    )
    .await;
    r.expect_error(404);
    assert_eq!(mock.count(), 0);

    let row = wait_one_row(db.path()).await;
    assert_eq!(row.status, Some(404));
    assert_eq!(row.model.as_deref(), Some("no-such-model"));
    let error = row.error.as_deref().expect("Error of a 404");
    assert!(error.contains("no-such-model"), "{error}");
    assert_eq!(row.backend, None);
    assert_eq!(row.attempts, Some(0));
    assert_no_tokens(&row);

    // Requests that never reach routing (no model) leave no row; the next routed one does.
    let r = post_bytes(&gw, "/v1/chat/completions", b"{}".to_vec()).await;
    r.expect_error(400);
    let r = post_json(&gw, "/v1/chat/completions", &common::chat_body("m1")).await;
    assert_eq!(r.status, 200);
    let rows = wait_rows(db.path(), 2).await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert_eq!(rows[1].model.as_deref(), Some("m1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn caller_leaving_mid_stream_is_recorded_as_499() {
    let mock = Mock::start("b").await;
    // Many small events after the hold: the gateway keeps writing to the closed connection until it notices.
    mock.set_sse(60, Duration::from_millis(5));
    mock.hold_after_first_event();
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&usage_config(
        one_client(&mock, &["m1"]),
        db.path(),
        json!({}),
    ))
    .await;

    let request =
        json!({ "model": "m1", "stream": true, "messages": [{ "role": "user", "content": "go" }] });
    let resp = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&request).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("first event")
        .expect("stream ended")
        .unwrap();
    assert!(first.starts_with(b"data: "));
    drop(stream);
    mock.release();

    let row = wait_one_row(db.path()).await;
    assert_eq!(row.status, Some(499), "{row:#?}");
    assert_eq!(row.stream, Some(1));
    assert_eq!(row.backend.as_deref(), Some("a"));

    // The gateway goes on serving.
    let r = post_json(&gw, "/v1/chat/completions", &common::chat_body("m1")).await;
    assert_eq!(r.status, 200);
    let rows = wait_exact_rows(db.path(), 2).await;
    assert_eq!(rows[1].status, Some(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_redacted_in_the_record_and_never_logged() {
    credentials_stay_out_of_records_and_log("info").await;
}

/// Operators turn on debug logging to chase a problem; keys must not land in the log then either.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_stay_out_of_the_debug_log() {
    credentials_stay_out_of_records_and_log("debug").await;
}

/// Sends credentials in Authorization, api-key, x-api-key and Cookie (to a working and to a dead backend; the
/// working one has its own api_key) with the gateway logging at `level`: the records show `***` for each,
/// and no secret appears in a record or in the gateway's stderr.
async fn credentials_stay_out_of_records_and_log(level: &str) {
    let mock = Mock::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let mut good = client("a", &mock.base_url("/v1"), "exact", &["m1"]);
    good["api_key"] = json!("sk-backend-secret-4711");
    // A backend that is not listening: the failure path logs too.
    let dead = client(
        "dead",
        &format!("http://127.0.0.1:{}/v1", common::free_port()),
        "exact",
        &["m-dead"],
    );
    let gw = Gateway::builder(&usage_config(vec![good, dead], db.path(), json!({})))
        .log_level(level)
        .start()
        .await;

    let secrets = [
        ("authorization", "Bearer sk-caller-secret-1111"),
        ("api-key", "azure-secret-2222"),
        ("x-api-key", "anthropic-secret-3333"),
        ("cookie", "session=cookie-secret-4444"),
    ];
    for model in ["m1", "m-dead"] {
        let mut req = http_client()
            .post(gw.url("/v1/chat/completions"))
            .header("x-custom", "visible-value");
        for (name, value) in secrets {
            req = req.header(name, value);
        }
        let resp = req
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&common::chat_body(model)).unwrap())
            .send()
            .await
            .unwrap();
        let want = if model == "m1" { 200 } else { 502 };
        assert_eq!(resp.status(), want, "{model}");
        resp.bytes().await.unwrap();
    }

    let rows = wait_exact_rows(db.path(), 2).await;
    for row in &rows {
        let headers = row.headers_json();
        for (name, _) in secrets {
            assert_eq!(headers[name], json!("***"), "{name} in {headers}");
        }
        assert_eq!(headers["x-custom"], json!("visible-value"), "{headers}");
        let dump = row.dump();
        for (_, value) in secrets {
            assert!(!dump.contains(value), "{value} in the record: {dump}");
        }
        assert!(!dump.contains("sk-backend-secret-4711"), "{dump}");
    }
    assert_eq!(
        mock.single().header("authorization"),
        Some("Bearer sk-backend-secret-4711")
    );

    let log = gw.log();
    assert!(log.contains("m-dead"), "the failure was logged: {log}");
    let distinctive = [
        "sk-caller-secret-1111",
        "azure-secret-2222",
        "anthropic-secret-3333",
        "cookie-secret-4444",
        "sk-backend-secret-4711",
    ];
    for secret in distinctive {
        assert!(!log.contains(secret), "{secret} in the gateway log:\n{log}");
    }
}

/// A model, the request's headers, the IP its record must show.
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[tokio::test(flavor = "multi_thread")]
async fn ip_is_the_first_forwarded_for_else_real_ip_else_the_socket() {
    let mock = Mock::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let c = client("a", &mock.base_url("/v1"), "keyword", &["m-"]);
    // The test client is a trusted proxy: only then are its forwarding headers believed (tests/security.rs).
    let mut cfg = usage_config(vec![c], db.path(), json!({}));
    cfg["server"] = json!({ "trusted_proxies": ["127.0.0.1", "10.0.0.0/8"] });
    let gw = Gateway::start(&cfg).await;

    let cases: [Case; 3] = [
        (
            "m-xff",
            &[
                ("x-forwarded-for", "203.0.113.7, 10.0.0.1"),
                ("x-real-ip", "198.51.100.1"),
            ],
            "203.0.113.7",
        ),
        ("m-real", &[("x-real-ip", "198.51.100.1")], "198.51.100.1"),
        ("m-socket", &[], "127.0.0.1"),
    ];
    for (model, headers, _) in cases {
        let mut req = http_client().post(gw.url("/v1/chat/completions"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&common::chat_body(model)).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let rows = wait_exact_rows(db.path(), 3).await;
    for (model, _, ip) in cases {
        let row = rows
            .iter()
            .find(|r| r.model.as_deref() == Some(model))
            .unwrap();
        assert_eq!(row.ip.as_deref(), Some(ip), "{model}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn record_bodies_false_leaves_request_and_response_null() {
    let mock = Mock::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let cfg = usage_config(
        one_client(&mock, &["m1"]),
        db.path(),
        json!({ "record_bodies": false }),
    );
    let gw = Gateway::start(&cfg).await;

    let r = post_json(&gw, "/v1/chat/completions", &common::chat_body("m1")).await;
    assert_eq!(r.status, 200);
    let stream = json!({ "model": "m1", "stream": true, "messages": [] });
    let r = post_json(&gw, "/v1/chat/completions", &stream).await;
    assert_eq!(r.text(), Mock::sse_events("m1", 3).concat());

    let rows = wait_exact_rows(db.path(), 2).await;
    for row in &rows {
        assert_eq!((&row.request, &row.response), (&None, &None), "{row:#?}");
        assert!(
            row.prompt_tokens.is_some(),
            "tokens are still recorded: {row:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn recorded_bodies_are_cut_at_usage_max_body_bytes() {
    let mock = Mock::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let cfg = usage_config(
        one_client(&mock, &["m1"]),
        db.path(),
        json!({ "max_body_bytes": 64 }),
    );
    let gw = Gateway::start(&cfg).await;

    let mut request = common::chat_body("m1");
    request["messages"][0]["content"] = json!(common::filler(500));
    let sent = serde_json::to_string(&request).unwrap();
    let r = post_bytes(&gw, "/v1/chat/completions", sent.clone()).await;
    assert_eq!(r.status, 200);
    let answer = r.text();
    assert!(answer.len() > 64);

    let row = wait_one_row(db.path()).await;
    assert_eq!(row.request.as_deref(), Some(&sent[..64]));
    assert_eq!(row.response.as_deref(), Some(&answer[..64]));
    assert_tokens(&row, 3, 1, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn recorded_headers_are_cut_at_usage_max_body_bytes_into_valid_json() {
    let mock = Mock::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let cfg = usage_config(
        one_client(&mock, &["m1"]),
        db.path(),
        json!({ "max_body_bytes": 300 }),
    );
    let gw = Gateway::start(&cfg).await;
    let r = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-large", common::filler(6000))
        .header("x-after", "never recorded")
        .body(serde_json::to_vec(&common::chat_body("m1")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        mock.single().header("x-large").map(str::len),
        Some(6000),
        "the backend gets the header whole"
    );

    let row = wait_one_row(db.path()).await;
    let text = row.headers.as_deref().unwrap();
    assert!(text.len() <= 300, "{} bytes: {text}", text.len());
    let headers = row.headers_json();
    assert_eq!(headers["content-type"], "application/json");
    let large = headers["x-large"].as_str().unwrap_or_default();
    assert!(
        large.contains("…(+") && large.ends_with(" bytes)"),
        "{text}"
    );
    assert!(headers.get("x-after").is_none(), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_counts_are_estimated_when_the_backend_reports_no_usage() {
    let mock = Mock::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&usage_config(
        one_client(&mock, &["m1"]),
        db.path(),
        json!({}),
    ))
    .await;

    let body = r#"{"id":"x","object":"chat.completion","model":"m1","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#;
    mock.set_reply(Reply::body(body));
    let r = post_json(&gw, "/v1/chat/completions", &common::chat_body("m1")).await;
    assert_eq!(r.text(), body);
    let rows = wait_exact_rows(db.path(), 1).await;
    assert_estimated(&rows[0]);

    // A stream that never sends a usage chunk, although the gateway asked for one.
    let events = vec![
        chat_chunk(
            "m1",
            json!([{ "index": 0, "delta": { "content": "hi" }, "finish_reason": null }]),
        ),
        chat_chunk(
            "m1",
            json!([{ "index": 0, "delta": {}, "finish_reason": "stop" }]),
        ),
    ];
    mock.set_reply(Reply::stream(events.clone(), None));
    let stream = json!({ "model": "m1", "stream": true, "messages": [] });
    let r = post_json(&gw, "/v1/chat/completions", &stream).await;
    assert_eq!(r.text(), Reply::stream(events, None).sse(false).concat());
    let rows = wait_exact_rows(db.path(), 2).await;
    assert_estimated(&rows[1]);
    assert_eq!(rows[1].status, Some(200));
}

/// The gateway counted the tokens (#16): "hi" is one completion token; the prompt has at least the
/// messages' overhead; the backend reported no cached or reasoning tokens.
fn assert_estimated(row: &Row) {
    assert_eq!(row.usage_estimated, Some(1), "{row:#?}");
    assert_eq!(row.completion_tokens, Some(1), "{row:#?}");
    let prompt = row.prompt_tokens.unwrap();
    assert!(prompt >= 3, "{row:#?}");
    assert_eq!(row.total_tokens, Some(prompt + 1), "{row:#?}");
    assert_eq!(
        (row.cached_tokens, row.reasoning_tokens),
        (None, None),
        "{row:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_requests_then_sigterm_exits_0_with_every_row_written() {
    const TOTAL: usize = 2000;
    let mock = Mock::start("b").await;
    mock.set_sse(2, Duration::ZERO);
    let db = tempfile::tempdir().unwrap();
    let conf_dir = tempfile::tempdir().unwrap();
    // A long flush interval: the rows of the last, partial batch are written only because of the shutdown.
    let cfg = usage_config(
        one_client(&mock, &["m1"]),
        db.path(),
        json!({ "flush_interval_ms": 600000 }),
    );
    let mut gw = Gateway::builder(&cfg)
        .server_conf(&fast_shutdown_conf(conf_dir.path()))
        .start()
        .await;

    let http = http_client();
    let statuses: Vec<u16> = futures_util::stream::iter(0..TOTAL)
        .map(|i| {
            let http = http.clone();
            let url = gw.url("/v1/chat/completions");
            async move {
                let body = json!({ "model": "m1", "stream": i % 10 == 0, "messages": [{ "role": "user", "content": i.to_string() }] });
                let resp = http.post(url).header("content-type", "application/json").body(serde_json::to_vec(&body).unwrap()).send().await.unwrap();
                let status = resp.status().as_u16();
                resp.bytes().await.unwrap();
                status
            }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "statuses: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    assert_eq!(mock.count(), TOTAL);
    eprintln!("rows before SIGTERM: {}", rows(db.path()).len());

    let status = gw.terminate_and_wait(Duration::from_secs(30)).await;
    let status = status.unwrap_or_else(|| {
        panic!(
            "the gateway did not exit within 30 s of SIGTERM; log:\n{}",
            gw.log()
        )
    });
    assert!(status.success(), "exit status {status}; log:\n{}", gw.log());

    let rows = rows(db.path());
    assert_eq!(rows.len(), TOTAL, "rows after shutdown; log:\n{}", gw.log());
    assert!(rows.iter().all(|r| r.status == Some(200)));
    let mut contents: Vec<String> = rows
        .iter()
        .map(|r| {
            let req: Value = serde_json::from_str(r.request.as_deref().unwrap()).unwrap();
            req["messages"][0]["content"].as_str().unwrap().to_string()
        })
        .collect();
    contents.sort();
    contents.dedup();
    assert_eq!(contents.len(), TOTAL, "one row per request");
}

#[tokio::test(flavor = "multi_thread")]
async fn unwritable_usage_dir_does_not_stop_serving() {
    let mock = Mock::start("b").await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let dir = file.join("records");
    let gw = Gateway::start(&usage_config(one_client(&mock, &["m1"]), &dir, json!({}))).await;

    for _ in 0..5 {
        let r = post_json(&gw, "/v1/chat/completions", &common::chat_body("m1")).await;
        assert_eq!(r.status, 200);
    }
    let stream = json!({ "model": "m1", "stream": true, "messages": [] });
    let r = post_json(&gw, "/v1/chat/completions", &stream).await;
    assert_eq!(r.text(), Mock::sse_events("m1", 3).concat());

    let logged = wait_until(Duration::from_secs(15), || {
        let log = gw.log();
        log.contains("ERROR") && log.contains("usage records not written")
    })
    .await;
    assert!(
        logged,
        "no error about the usage dir in the log:\n{}",
        gw.log()
    );
    let r = post_json(&gw, "/v1/chat/completions", &common::chat_body("m1")).await;
    assert_eq!(r.status, 200, "still serving after the error");
}

/// The gateway's resident memory (VmRSS), in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A sample of `GET /metrics` on `port` (a gauge or counter without labels).
async fn metric(port: u16, name: &str) -> u64 {
    let text = common::metrics_text(port).await;
    let line = text
        .lines()
        .find(|l| l.strip_prefix(name).is_some_and(|v| v.starts_with(' ')))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    line[name.len()..].trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_locked_database_keeps_the_queue_within_queue_max_mb() {
    const REQUESTS: usize = 120;
    const BODY: usize = 1 << 20;
    let mock = Mock::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let metrics_port = common::free_port();
    let mut cfg = usage_config(
        one_client(&mock, &["m1"]),
        db.path(),
        json!({ "queue_max_mb": 8 }),
    );
    cfg["server"] = json!({ "metrics_listen": format!("127.0.0.1:{metrics_port}") });
    let gw = Gateway::start(&cfg).await;
    let pid = gw.pid().unwrap();
    let r = post_json(&gw, "/v1/chat/completions", &common::chat_body("m1")).await;
    assert_eq!(r.status, 200);
    wait_one_row(db.path()).await;

    // Another writer holds the database: every write waits for its lock, then fails, and is retried.
    let file = common::records::files(db.path()).pop().unwrap();
    let lock = rusqlite::Connection::open(&file).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let before = rss(pid);

    // 120 requests with a 1 MiB body (kept whole in the record) and a 6 KB header, 4 at a time.
    let header = common::filler(6000);
    let body = common::chat_body_exact_len("m1", BODY);
    let statuses: Vec<u16> = futures_util::stream::iter(0..REQUESTS)
        .map(|_| {
            let request = http_client()
                .post(gw.url("/v1/chat/completions"))
                .header("content-type", "application/json")
                .header("x-large", header.clone())
                .body(body.clone());
            async move { request.send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    // Every record is counted as waiting or dropped (once the last request's logging phase has sent it);
    // what waits fits in 8 MiB.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (waiting, dropped) = loop {
        let waiting = metric(metrics_port, "gpt_api_usage_queue_depth").await;
        let dropped = metric(metrics_port, "gpt_api_usage_records_dropped_total").await;
        if usize::try_from(waiting + dropped).unwrap() == REQUESTS {
            break (waiting, dropped);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{waiting} waiting + {dropped} dropped of {REQUESTS}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!((1..=8).contains(&waiting), "{waiting} records waiting");
    let bytes = metric(metrics_port, "gpt_api_usage_queue_bytes").await;
    assert!(bytes <= 8 << 20, "{bytes} bytes waiting");
    assert!(gw.log().contains("usage queue full"), "{}", gw.log());
    let grown = rss(pid).saturating_sub(before);
    eprintln!(
        "RSS {} MiB -> +{} MiB; {waiting} waiting, {dropped} dropped",
        before >> 20,
        grown >> 20
    );
    assert!(grown < 64 << 20, "RSS grew by {} MiB", grown >> 20);

    // The lock goes: what waited is written.
    drop(lock);
    let rows = wait_exact_rows(db.path(), 1 + usize::try_from(waiting).unwrap()).await;
    assert!(rows[1..]
        .iter()
        .all(|r| r.request.as_ref().map(String::len) == Some(BODY)));
    let headers = rows[1].headers_json();
    assert_eq!(headers["x-large"].as_str().map(str::len), Some(6000));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(metrics_port, "gpt_api_usage_queue_depth").await > 0 {
        assert!(std::time::Instant::now() < deadline, "records still wait");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
