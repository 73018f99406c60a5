//! Attacks on the gateway's accounting and logs: a key's model list against aliases and fallbacks, usage that a
//! `stream` of the wrong type or an odd path would skip, forged log lines and forwarded-for headers, long model
//! names, gateway keys in the query, and error bodies that say too much.

use std::time::Duration;

use crate::common;
use crate::common::records::{usage_config, wait_one_row, wait_rows};
use crate::common::{chat_body, client, http_client, post_with, Gateway, Mock};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BACKEND_KEY: &str = "sk-backend-own-key-7331";
const LIMITED_KEY: &str = "sk-gw-limited-0001";
const OPEN_KEY: &str = "sk-gw-open-0002";

fn keyed(mut c: Value) -> Value {
    c["api_key"] = json!(BACKEND_KEY);
    c
}

/// Keys `limited` (models `cheap*` and `allowed-*`) and `open` (every model).
fn keys() -> Value {
    json!({ "keys": [
        { "name": "limited", "key": LIMITED_KEY, "models": ["cheap*", "allowed-*"] },
        { "name": "open", "key": OPEN_KEY },
    ]})
}

/// One client `c` for model `m` at `mock`, recording into `dir`.
fn recorded(mock: &Mock, dir: &std::path::Path) -> Value {
    usage_config(
        vec![client("c", &mock.base_url("/v1"), "exact", &["m"])],
        dir,
        json!({}),
    )
}

/// A chat request for `model` with this `Authorization` value.
async fn chat_as(gw: &Gateway, model: &str, authorization: &str) -> common::Resp {
    post_with(
        gw,
        "/v1/chat/completions",
        &chat_body(model),
        &[("authorization", authorization)],
    )
    .await
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn models_sent(mock: &Mock) -> Vec<String> {
    mock.requests()
        .iter()
        .map(|r| r.json()["model"].as_str().unwrap_or_default().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// 1, 2: a key's model list holds for every model sent upstream on its behalf
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn keyword_routing_does_not_walk_around_a_keys_model_list() {
    let cheap = Mock::start("cheap").await;
    let premium = Mock::start("premium").await;
    let mut c = keyed(client(
        "cheap",
        &cheap.base_url("/v1"),
        "keyword",
        &["cheap"],
    ));
    c["priority"] = json!(5);
    let mut p = keyed(client(
        "premium",
        &premium.base_url("/v1"),
        "keyword",
        &["premium"],
    ));
    p["priority"] = json!(1);
    p["model"] = json!("premium-upstream-gpt5");
    let gw = Gateway::start(&json!({ "openai_clients": [c, p], "auth": keys() })).await;
    let limited = bearer(LIMITED_KEY);

    let r = chat_as(&gw, "cheap-premium", &limited).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(models_sent(&cheap), ["cheap-premium"]);
    assert_eq!(
        premium.count(),
        0,
        "premium would send premium-upstream-gpt5"
    );

    // The open key still gets the priority-1 backend and its alias.
    let open = bearer(OPEN_KEY);
    let r = chat_as(&gw, "cheap-premium", &open).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(models_sent(&premium), ["premium-upstream-gpt5"]);

    // Only the aliasing backend matches: nothing is left, and the error names it.
    let r = chat_as(&gw, "allowed-premium", &limited).await;
    let err = r.expect_error(403);
    assert_eq!(err["code"], json!("model_not_allowed"), "{}", r.text());
    assert_eq!(err["param"], json!("model"));
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("premium") && message.contains("premium-upstream-gpt5"),
        "{message}"
    );
    assert_eq!(premium.count(), 1, "nothing more reached premium");
}

#[tokio::test(flavor = "multi_thread")]
async fn fallback_models_follow_the_keys_model_list() {
    let flaky = Mock::start_with(
        "flaky",
        common::Behavior::Fail {
            status: 500,
            body: r#"{"error":{"message":"boom"}}"#.into(),
        },
    )
    .await;
    let forbidden = Mock::start("forbidden").await;
    let mut f = keyed(client(
        "flaky",
        &flaky.base_url("/v1"),
        "exact",
        &["allowed-flaky"],
    ));
    f["fallback"] = json!("forbidden-model");
    let b = keyed(client(
        "forbidden_backend",
        &forbidden.base_url("/v1"),
        "exact",
        &["forbidden-model"],
    ));
    let gw = Gateway::start(&json!({ "openai_clients": [f, b], "auth": keys() })).await;

    let r = chat_as(&gw, "allowed-flaky", &bearer(LIMITED_KEY)).await;
    assert_ne!(r.status, 200, "{}", r.text());
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().contains("forbidden-model"),
        "the error says why no fallback: {}",
        r.text()
    );
    assert_eq!(flaky.count(), 1);
    assert_eq!(
        forbidden.count(),
        0,
        "the fallback model is not on the key's list"
    );

    // A key that may use it falls back as before.
    let r = chat_as(&gw, "allowed-flaky", &bearer(OPEN_KEY)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(models_sent(&forbidden), ["forbidden-model"]);
}

// ---------------------------------------------------------------------------------------------------------------
// 3: no way around the usage accounting
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_flag_of_the_wrong_type_is_a_400() {
    let mock = Mock::start("m").await;
    let gw = Gateway::start(
        &json!({ "openai_clients": [client("c", &mock.base_url("/v1"), "exact", &["m"])] }),
    )
    .await;
    let cases = [
        (json!({"model": "m", "stream": 1}), "stream"),
        (json!({"model": "m", "stream": "true"}), "stream"),
        (
            json!({"model": "m", "stream": true, "stream_options": "include_usage"}),
            "stream_options",
        ),
        (
            json!({"model": "m", "stream": true, "stream_options": [true]}),
            "stream_options",
        ),
    ];
    for (body, param) in cases {
        let r = post_with(&gw, "/v1/chat/completions", &body, &[]).await;
        let err = r.expect_error(400);
        assert_eq!(err["param"], json!(param), "{body}: {}", r.text());
        assert_eq!(err["code"], json!("invalid_type"), "{body}: {}", r.text());
        assert_eq!(err["type"], json!("invalid_request_error"));
    }
    assert_eq!(mock.count(), 0);
    for ok in [
        json!({"model": "m", "stream": null}),
        json!({"model": "m", "stream": false, "stream_options": null}),
    ] {
        assert_eq!(
            post_with(&gw, "/v1/chat/completions", &ok, &[])
                .await
                .status,
            200,
            "{ok}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn odd_spellings_of_a_path_are_normalised_before_anything_reads_them() {
    let mock = Mock::start("m").await;
    let dir = tempfile::tempdir().unwrap();
    let config = recorded(&mock, dir.path());
    let gw = Gateway::start(&config).await;
    let paths = [
        "/v1/chat/completions/",
        "//v1//chat///completions",
        "/V1/chat/completions",
        "/v1/./chat/completion%73",
    ];
    for path in paths {
        let body = json!({"model": "m", "stream": true, "messages": []});
        let r = post_with(&gw, path, &body, &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(
            !r.text().contains("\"usage\""),
            "{path}: the injected usage chunk stays hidden"
        );
    }
    let sent = mock.requests();
    assert_eq!(sent.len(), paths.len());
    for (path, req) in paths.iter().zip(&sent) {
        assert_eq!(req.uri, "/v1/chat/completions", "{path}");
        assert_eq!(
            req.json()["stream_options"]["include_usage"],
            json!(true),
            "{path}: usage asked for"
        );
    }
    let rows = wait_rows(dir.path(), paths.len()).await;
    for row in &rows {
        assert_eq!(row.kind.as_deref(), Some("chat.completions"));
        assert!(
            row.total_tokens.is_some_and(|t| t > 0),
            "tokens counted: {row:?}"
        );
    }
    let r = post_with(&gw, "/v1/chat%2Fcompletions", &chat_body("m"), &[]).await;
    assert_eq!(r.expect_error(400)["code"], json!("invalid_path"));
}

/// A backend that streams two content events, then the usage chunk without its closing blank line, and
/// holds the connection: the caller never sees the usage and gives up.
async fn usage_then_stall_backend() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // Headers, then the Content-Length body.
                loop {
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
                let content = |t: &str| {
                    format!(
                        "data: {}\n\n",
                        json!({"id": "x", "object": "chat.completion.chunk", "model": "m",
                        "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]})
                    )
                };
                let usage = format!(
                    "data: {}",
                    json!({"id": "x", "object": "chat.completion.chunk", "model": "m",
                    "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
                );
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                let body = chunk(&format!("{}{}{usage}", content("a"), content("b")));
                let _ = sock.write_all(format!("{head}{body}").as_bytes()).await;
                let _ = sock.flush().await;
                // Hold the connection until the gateway drops it.
                let _ = sock.read(&mut buf).await;
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_that_leaves_before_the_usage_chunk_still_leaves_the_usage_that_arrived() {
    let (port, backend) = usage_then_stall_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = keyed(client(
        "c",
        &format!("http://127.0.0.1:{port}/v1"),
        "exact",
        &["m"],
    ));
    c["read_timeout_ms"] = json!(30_000);
    let mut config = usage_config(vec![c], dir.path(), json!({}));
    config["auth"] = json!({ "keys": [{ "name": "t", "key": OPEN_KEY, "tpm": 1000 }] });
    let gw = Gateway::start(&config).await;
    let mut resp = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", bearer(OPEN_KEY))
        .header("content-type", "application/json")
        .body(json!({"model": "m", "stream": true, "messages": []}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut seen = String::new();
    while !seen.contains("\"b\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        !seen.contains("usage"),
        "the caller never got the usage: {seen}"
    );
    drop(resp);
    let row = wait_one_row(dir.path()).await;
    assert_eq!(row.status, Some(499), "{row:?}");
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens),
        (Some(11), Some(7)),
        "{row:?}"
    );
    // The tpm window counted the 18 tokens too (read from the next answer's headers; its body never ends).
    let next = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", bearer(OPEN_KEY))
        .header("content-type", "application/json")
        .body(json!({"model": "m", "messages": []}).to_string())
        .send()
        .await
        .unwrap();
    let remaining = next
        .headers()
        .get("x-ratelimit-remaining-tokens")
        .map(|v| v.to_str().unwrap().to_owned());
    drop(next);
    backend.abort();
    assert_eq!(remaining.as_deref(), Some("982"));
}

// ---------------------------------------------------------------------------------------------------------------
// 4, 5, 6: the log and the records believe nothing a caller writes
// ---------------------------------------------------------------------------------------------------------------

/// The access lines of routed requests (the harness's `/health` checks have lines too).
fn access_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("gpt_api::proxy:") && l.contains(" POST "))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn caller_controlled_values_cannot_forge_or_colour_log_lines() {
    let mock = Mock::start("m").await;
    let gw = Gateway::builder(
        &json!({ "openai_clients": [client("c", &mock.base_url("/v1"), "keyword", &["m"])] }),
    )
    .log_level("info")
    .start()
    .await;
    let forged = "m\n2026-12-04T00:00:00.000+00:00 INFO gpt_api::proxy: 10.0.0.1 POST /v1/chat/completions 200 \
                  model=gpt-4 key=admin prompt=999999\u{1b}]0;pwned\u{7}\u{0}";
    let r = post_with(&gw, "/v1/chat/completions", &chat_body(forged), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ok = common::wait_until(Duration::from_secs(10), || {
        access_lines(&gw.log())
            .iter()
            .any(|l| l.contains("/v1/chat/completions 200"))
    })
    .await;
    let log = gw.log();
    assert!(ok, "no access line: {log}");
    assert_eq!(
        access_lines(&log).len(),
        1,
        "exactly one access line: {log}"
    );
    assert!(!log.contains(" key=admin"), "no forged field: {log}");
    for raw in ['\u{1b}', '\u{7}', '\u{0}'] {
        assert!(!log.contains(raw), "{raw:?} written raw: {log:?}");
    }
    assert!(
        log.contains("\\u001b]0;pwned\\u0007\\u0000"),
        "escaped instead: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callers_forwarded_for_is_believed_only_from_a_trusted_proxy() {
    let mock = Mock::start("m").await;
    let dir = tempfile::tempdir().unwrap();
    let config = recorded(&mock, dir.path());
    let gw = Gateway::builder(&config).log_level("info").start().await;
    let forged = "6.6.6.6 key=admin prompt=999999, 10.0.0.9";
    let r = post_with(
        &gw,
        "/v1/chat/completions",
        &chat_body("m"),
        &[("x-forwarded-for", forged), ("x-real-ip", "7.7.7.7")],
    )
    .await;
    assert_eq!(r.status, 200);
    let row = wait_one_row(dir.path()).await;
    assert_eq!(row.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        mock.single().header("x-forwarded-for"),
        Some("127.0.0.1"),
        "a forged list is not passed on"
    );
    let ok = common::wait_until(Duration::from_secs(10), || {
        !access_lines(&gw.log()).is_empty()
    })
    .await;
    let log = gw.log();
    assert!(
        ok && access_lines(&log)[0].contains("proxy: 127.0.0.1 POST"),
        "{log}"
    );
    assert!(
        !log.contains("6.6.6.6") && !log.contains("7.7.7.7"),
        "{log}"
    );

    // Behind a trusted proxy (loopback here), the right-most untrusted entry is the caller.
    let mock2 = Mock::start("m2").await;
    let dir2 = tempfile::tempdir().unwrap();
    let mut config = recorded(&mock2, dir2.path());
    config["server"] = json!({ "trusted_proxies": ["127.0.0.1", "10.0.0.0/8"] });
    let gw = Gateway::start(&config).await;
    let chain = "6.6.6.6, 203.0.113.9, 10.0.0.9";
    let r = post_with(
        &gw,
        "/v1/chat/completions",
        &chat_body("m"),
        &[("x-forwarded-for", chain)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        wait_one_row(dir2.path()).await.ip.as_deref(),
        Some("203.0.113.9")
    );
    assert_eq!(
        mock2.single().header("x-forwarded-for"),
        Some("6.6.6.6, 203.0.113.9, 10.0.0.9, 127.0.0.1")
    );
    let r = post_with(
        &gw,
        "/v1/chat/completions",
        &chat_body("m"),
        &[("x-forwarded-for", "6.6.6.6 key=admin")],
    )
    .await;
    assert_eq!(r.status, 200);
    let rows = wait_rows(dir2.path(), 2).await;
    assert_eq!(
        rows[1].ip.as_deref(),
        Some("127.0.0.1"),
        "an entry that is no IP is not believed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn model_names_over_256_bytes_are_refused_without_an_echo() {
    let mock = Mock::start("m").await;
    let gw = Gateway::builder(
        &json!({ "openai_clients": [client("c", &mock.base_url("/v1"), "keyword", &["m"])] }),
    )
    .log_level("info")
    .start()
    .await;
    let long = "m".repeat(1_000_000);
    let r = post_with(&gw, "/v1/chat/completions", &chat_body(&long), &[]).await;
    let err = r.expect_error(400);
    assert_eq!(err["param"], json!("model"));
    assert_eq!(err["code"], json!("string_above_max_length"));
    assert!(r.text().len() < 1024, "no echo: {} bytes", r.text().len());
    let ok = common::wait_until(Duration::from_secs(10), || {
        !access_lines(&gw.log()).is_empty()
    })
    .await;
    assert!(ok);
    assert!(
        gw.log().lines().all(|l| l.len() < 2048),
        "every log line is bounded"
    );
    assert_eq!(mock.count(), 0);
    let ok = post_with(
        &gw,
        "/v1/chat/completions",
        &chat_body(&"m".repeat(256)),
        &[],
    )
    .await;
    assert_eq!(ok.status, 200);
}

// ---------------------------------------------------------------------------------------------------------------
// 8, 9: secrets and internals near the edges
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_key_in_the_query_is_neither_accepted_nor_forwarded() {
    let mock = Mock::start("m").await;
    let gw = Gateway::start(&json!({
        "openai_clients": [keyed(client("c", &mock.base_url("/v1"), "exact", &["m"]))],
        "auth": keys(),
    }))
    .await;
    let path =
        format!("/v1/chat/completions?api_key={OPEN_KEY}&api-version=2024-06-01&key={LIMITED_KEY}");
    let r = post_with(&gw, &path, &chat_body("m"), &[]).await;
    assert_eq!(
        r.expect_error(401)["code"],
        json!("invalid_api_key"),
        "no key from the URL"
    );
    let r = post_with(
        &gw,
        &path,
        &chat_body("m"),
        &[("authorization", &bearer(OPEN_KEY))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = mock.single();
    assert_eq!(sent.uri, "/v1/chat/completions?api-version=2024-06-01");
    assert!(!format!("{sent:?}").contains("sk-gw-"), "{sent:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_get_client_names_and_reason_classes_not_internal_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let mut dead = client(
        "internal",
        "http://internal-llm.corp.invalid:9/v1",
        "exact",
        &["m"],
    );
    dead["connect_timeout_ms"] = json!(2000);
    let failing = Mock::start_with(
        "failing",
        common::Behavior::Fail {
            status: 500,
            body: r#"{"error":{"message":"db at 10.1.2.3 down"}}"#.into(),
        },
    )
    .await;
    let mut second = client("second", &failing.base_url("/v1"), "exact", &["m"]);
    second["priority"] = json!(2);
    let gw = Gateway::start(&usage_config(vec![dead, second], dir.path(), json!({}))).await;
    let r = post_with(&gw, "/v1/chat/completions", &chat_body("m"), &[]).await;
    let err = r.expect_error(502);
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("internal for `m`: connection failed;"),
        "{message}"
    );
    assert!(
        message.contains("second for `m`: answered 500"),
        "{message}"
    );
    for secret in ["corp.invalid", "resolve", "10.1.2.3", "127.0.0.1"] {
        assert!(!r.text().contains(secret), "{secret} in {}", r.text());
    }
    let row = wait_one_row(dir.path()).await;
    let error = row.error.unwrap_or_default();
    assert!(
        error.contains("internal-llm.corp.invalid"),
        "the record keeps the details: {error}"
    );
}
