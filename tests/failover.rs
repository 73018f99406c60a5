//! Failover: which failures move a request to the next candidate or the fallback model, what the caller gets when
//! all fail, streams, retried bodies, passive health (threshold, cooldown, Retry-After) and the backend header.

use std::time::{Duration, Instant};

use crate::common;
use crate::common::tls::{server_conf, SelfSigned};
use crate::common::{
    chat_body, chat_body_exact_len, check, client, config, free_port, http_client, post_bytes,
    post_json, wait_until, Behavior, Gateway, Mock, Resp,
};
use futures_util::StreamExt;
use serde_json::{json, Value};

const PATH: &str = "/v1/chat/completions";

/// An `exact` client for `model` with this priority.
fn cand(name: &str, base_url: &str, model: &str, priority: i64) -> Value {
    let mut c = client(name, base_url, "exact", &[model]);
    c["priority"] = json!(priority);
    c
}

/// A base URL on a loopback port nothing listens on: connections are refused.
fn closed_port_url() -> String {
    format!("http://127.0.0.1:{}/v1", free_port())
}

fn fail(status: u16) -> Behavior {
    Behavior::Fail {
        status,
        body: format!(r#"{{"error":{{"message":"mock says {status}","type":"mock"}}}}"#),
    }
}

fn stream_body(model: &str) -> Value {
    json!({ "model": model, "stream": true, "messages": [{ "role": "user", "content": "count" }] })
}

/// Starts a `"stream": true` chat request for `model`; returns as soon as the headers arrived.
async fn post_stream(gw: &Gateway, model: &str) -> reqwest::Response {
    http_client()
        .post(gw.url(PATH))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&stream_body(model)).unwrap())
        .send()
        .await
        .unwrap()
}

fn backend(r: &Resp) -> Option<&str> {
    r.header("x-gpt-api-backend")
}

/// Asserts a 200 chat answer for `model` served by the client `name`.
fn assert_served(r: &Resp, name: &str, model: &str) {
    assert_eq!(r.status, 200, "body: {}", r.text());
    assert_eq!(backend(r), Some(name), "headers: {:?}", r.headers);
    assert_eq!(r.json(), Mock::answer_json(model));
}

/// Sends a file with curl and `Transfer-Encoding: chunked`; returns (status, response headers and body).
async fn curl_chunked(gw: &Gateway, body: &[u8]) -> (u16, String) {
    common::http::curl_chunked(&gw.url(PATH), body, true).await
}

/// Reads a streamed answer until it ends or breaks; returns the bytes and the read error, if any.
async fn read_stream(resp: reqwest::Response) -> (String, Option<String>) {
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    let mut err = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => got.extend_from_slice(&b),
            Err(e) => {
                err = Some(format!("{e:?}"));
                break;
            }
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), err)
}

// ---------------------------------------------------------------------------------------------------------------
// What fails over
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn connection_refused_fails_over_to_next_candidate() {
    let b = Mock::start("b").await;
    let gw = Gateway::start(&config(vec![
        cand("a", &closed_port_url(), "m", 1),
        cand("b", &b.base_url("/v1"), "m", 2),
    ]))
    .await;

    let r = post_json(&gw, PATH, &chat_body("m")).await;
    assert_served(&r, "b", "m");
    assert_eq!(b.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_failure_fails_over_to_next_candidate() {
    let cert = SelfSigned::localhost();
    let untrusted = Mock::start_tls("tls", cert.acceptor()).await;
    let b = Mock::start("b").await;
    // The server conf trusts no extra CA: the self-signed certificate is rejected.
    let conf = server_conf(cert.dir.path(), None);
    let gw = Gateway::builder(&config(vec![
        cand("a", &untrusted.url_with_host("localhost", "/v1"), "m", 1),
        cand("b", &b.base_url("/v1"), "m", 2),
    ]))
    .server_conf(&conf)
    .env_remove("SSL_CERT_FILE")
    .env_remove("SSL_CERT_DIR")
    .start()
    .await;

    let r = post_json(&gw, PATH, &chat_body("m")).await;
    assert_served(&r, "b", "m");
    assert!(
        wait_until(Duration::from_secs(5), || untrusted.tls_failures() == 1).await,
        "handshakes failed: {}",
        untrusted.tls_failures()
    );
    assert_eq!(untrusted.connections(), 1);
    assert_eq!(untrusted.count(), 0);
    assert_eq!(b.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_500_falls_back_to_fallback_model_with_its_key() {
    let a = Mock::start_with("a", fail(500)).await;
    let f = Mock::start("f").await;
    let mut ca = cand("a", &a.base_url("/v1"), "m", 1);
    ca["api_key"] = json!("sk-key-of-a");
    ca["fallback"] = json!("fb");
    let mut cf = cand("f", &f.base_url("/v1"), "fb", 1);
    cf["api_key"] = json!("sk-key-of-f");
    let gw = Gateway::start(&config(vec![ca, cf])).await;

    let body = json!({ "model": "m", "messages": [{ "role": "user", "content": "hello" }], "temperature": 0.5 });
    let r = post_json(&gw, PATH, &body).await;
    assert_served(&r, "f", "fb");

    let to_a = a.single();
    assert_eq!(to_a.json(), body, "a gets the request as sent");
    assert_eq!(to_a.header("authorization"), Some("Bearer sk-key-of-a"));
    let to_f = f.single();
    let mut want = body.clone();
    want["model"] = json!("fb");
    assert_eq!(
        to_f.json(),
        want,
        "only `model` is rewritten for the fallback"
    );
    assert_eq!(to_f.header("authorization"), Some("Bearer sk-key-of-f"));
    assert_eq!(to_f.uri, "/v1/chat/completions");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_default_retry_status_fails_over() {
    let a = Mock::start("a").await;
    let b = Mock::start("b").await;
    let mut ca = cand("a", &a.base_url("/v1"), "m", 1);
    // Keep `a` out of cooldown so that every request reaches it.
    ca["failure_threshold"] = json!(1000);
    let gw = Gateway::start(&config(vec![ca, cand("b", &b.base_url("/v1"), "m", 2)])).await;

    let statuses = [429, 408, 500, 502, 503, 504, 401, 403, 404];
    for (i, status) in statuses.into_iter().enumerate() {
        a.set_behavior(fail(status));
        let r = post_json(&gw, PATH, &chat_body("m")).await;
        assert_eq!(r.status, 200, "after {status}: {}", r.text());
        assert_eq!(backend(&r), Some("b"), "after {status}");
        assert_eq!(a.count(), i + 1, "after {status}");
        assert_eq!(b.count(), i + 1, "after {status}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_429_with_retry_after_cools_the_client_at_once() {
    let a = Mock::start_with(
        "a",
        Behavior::FailWithHeaders {
            status: 429,
            body: r#"{"error":{"message":"slow down","type":"rate_limit"}}"#.into(),
            headers: vec![("retry-after".into(), "30".into())],
        },
    )
    .await;
    let b = Mock::start("b").await;
    let gw = Gateway::start(&config(vec![
        cand("a", &a.base_url("/v1"), "m", 1),
        cand("b", &b.base_url("/v1"), "m", 2),
    ]))
    .await;

    let r = post_json(&gw, PATH, &chat_body("m")).await;
    assert_served(&r, "b", "m");
    assert_eq!((a.count(), b.count()), (1, 1));

    // One 429 is below the default threshold of 3: only Retry-After can explain skipping `a` now.
    let r = post_json(&gw, PATH, &chat_body("m")).await;
    assert_served(&r, "b", "m");
    assert_eq!(a.count(), 1, "the cooling client must not be called");
    assert_eq!(b.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn other_statuses_pass_through_unchanged_without_failover() {
    let a = Mock::start("a").await;
    let b = Mock::start("b").await;
    let gw = Gateway::start(&config(vec![
        cand("a", &a.base_url("/v1"), "m", 1),
        cand("b", &b.base_url("/v1"), "m", 2),
    ]))
    .await;

    for (i, status) in [400u16, 413, 422].into_iter().enumerate() {
        let body = format!(
            r#"{{"error":{{"message":"a refuses with {status}","type":"invalid_request_error"}}}}"#
        );
        a.set_behavior(Behavior::Fail {
            status,
            body: body.clone(),
        });
        let r = post_json(&gw, PATH, &chat_body("m")).await;
        assert_eq!(r.status, status, "{}", r.text());
        assert_eq!(r.text(), body, "the backend's body, unchanged");
        assert_eq!(r.header("x-mock"), Some("a"));
        assert_eq!(backend(&r), Some("a"));
        assert_eq!(a.count(), i + 1);
        assert_eq!(b.count(), 0, "no failover on {status}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_on_lists_replace_the_default_set() {
    // Global: only 422 fails over. Client `c` (model n) sets its own list: only 500.
    let a = Mock::start("a").await;
    let b = Mock::start("b").await;
    let c = Mock::start("c").await;
    let d = Mock::start("d").await;
    let mut cc = cand("c", &c.base_url("/v1"), "n", 1);
    cc["retry_on"] = json!([500]);
    let mut cfg = config(vec![
        cand("a", &a.base_url("/v1"), "m", 1),
        cand("b", &b.base_url("/v1"), "m", 2),
        cc,
        cand("d", &d.base_url("/v1"), "n", 2),
    ]);
    cfg["failover"] = json!({ "retry_on": [422] });
    let gw = Gateway::start(&cfg).await;

    a.set_behavior(fail(500));
    let r = post_json(&gw, PATH, &chat_body("m")).await;
    assert_eq!(r.status, 500, "500 is not in the global list: {}", r.text());
    assert_eq!((a.count(), b.count()), (1, 0));

    a.set_behavior(fail(422));
    let r = post_json(&gw, PATH, &chat_body("m")).await;
    assert_served(&r, "b", "m");
    assert_eq!((a.count(), b.count()), (2, 1));

    c.set_behavior(fail(422));
    let r = post_json(&gw, PATH, &chat_body("n")).await;
    assert_eq!(
        r.status,
        422,
        "the client's own list has no 422: {}",
        r.text()
    );
    assert_eq!((c.count(), d.count()), (1, 0));

    c.set_behavior(fail(500));
    let r = post_json(&gw, PATH, &chat_body("n")).await;
    assert_served(&r, "d", "n");
    assert_eq!((c.count(), d.count()), (2, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn read_timeout_before_headers_fails_over() {
    let a = Mock::start_with("a", Behavior::Hang).await;
    let b = Mock::start("b").await;
    let mut ca = cand("a", &a.base_url("/v1"), "m", 1);
    ca["read_timeout_ms"] = json!(500);
    let gw = Gateway::start(&config(vec![ca, cand("b", &b.base_url("/v1"), "m", 2)])).await;

    let started = Instant::now();
    let r = post_json(&gw, PATH, &chat_body("m")).await;
    let took = started.elapsed();
    assert_served(&r, "b", "m");
    assert_eq!((a.count(), b.count()), (1, 1));
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(10),
        "answered after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hop_fallback_chain() {
    let a = Mock::start_with("a", fail(500)).await;
    let f1 = Mock::start_with("f1", fail(503)).await;
    let f2 = Mock::start("f2").await;
    let mut ca = cand("a", &a.base_url("/v1"), "m", 1);
    ca["fallback"] = json!("fb1");
    let mut c1 = cand("f1", &f1.base_url("/v1"), "fb1", 1);
    c1["fallback"] = json!("fb2");
    let gw = Gateway::start(&config(vec![
        ca,
        c1,
        cand("f2", &f2.base_url("/v1"), "fb2", 1),
    ]))
    .await;

    let r = post_json(&gw, PATH, &chat_body("m")).await;
    assert_served(&r, "f2", "fb2");
    assert_eq!(a.single().json()["model"], "m");
    assert_eq!(f1.single().json()["model"], "fb1");
    assert_eq!(f2.single().json()["model"], "fb2");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_fallback_hops_bounds_the_chain() {
    let a = Mock::start_with("a", fail(500)).await;
    // f1 drops the connection: the last attempt fails without a status of its own to pass on.
    let f1 = Mock::start_with("f1", Behavior::Close).await;
    let f2 = Mock::start("f2").await;
    let mut ca = cand("a", &a.base_url("/v1"), "m", 1);
    ca["fallback"] = json!("fb1");
    let mut c1 = cand("f1", &f1.base_url("/v1"), "fb1", 1);
    c1["fallback"] = json!("fb2");
    let mut cfg = config(vec![ca, c1, cand("f2", &f2.base_url("/v1"), "fb2", 1)]);
    cfg["failover"] = json!({ "max_fallback_hops": 1 });
    let gw = Gateway::start(&cfg).await;

    let r = post_json(&gw, PATH, &chat_body("m")).await;
    let e = r.expect_error(502);
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("a for `m`: answered 500"), "{msg}");
    assert!(msg.contains("f1 for `fb1`"), "{msg}");
    assert_eq!((a.count(), f1.connections(), f2.count()), (1, 1, 0));
}

#[test]
fn fallback_cycle_and_unserved_fallback_rejected_by_check() {
    let yaml = r#"
openai_clients:
  - { name: a, base_url: "http://127.0.0.1:9/v1", fallback: fb1, model_match: { type: exact, value: m } }
  - { name: b, base_url: "http://127.0.0.1:9/v1", fallback: fb2, model_match: { type: exact, value: fb1 } }
  - { name: c, base_url: "http://127.0.0.1:9/v1", fallback: m, model_match: { type: exact, value: fb2 } }
"#;
    let out = check(yaml, &[], &[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("openai_clients[0].fallback: fallback cycle: "),
        "stderr: {}",
        out.stderr
    );
    for model in ["m", "fb1", "fb2"] {
        assert!(out.stderr.contains(model), "stderr: {}", out.stderr);
    }

    let unserved = r#"
openai_clients:
  - { name: a, base_url: "http://127.0.0.1:9/v1", fallback: nowhere, model_match: { type: exact, value: m } }
"#;
    let out = check(unserved, &[], &[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("openai_clients[0].fallback") && out.stderr.contains("nowhere"),
        "stderr: {}",
        out.stderr
    );

    let chain = r#"
openai_clients:
  - { name: a, base_url: "http://127.0.0.1:9/v1", fallback: fb1, model_match: { type: exact, value: m } }
  - { name: b, base_url: "http://127.0.0.1:9/v1", fallback: false, model_match: { type: exact, value: fb1 } }
"#;
    let out = check(chain, &[], &[]);
    assert_eq!(out.code, 0, "{out:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// When every attempt fails
// ---------------------------------------------------------------------------------------------------------------

const KEY_A: &str = "sk-alpha-secret-0f3c9e";
const KEY_B: &str = "sk-bravo-secret-7d21aa";
const KEY_C: &str = "sk-charlie-secret-5b88e4";

#[tokio::test(flavor = "multi_thread")]
async fn all_down_is_502_listing_every_client_and_reason_without_keys() {
    let b = Mock::start_with("b", fail(500)).await;
    let mut ca = cand("alpha", &closed_port_url(), "m", 1);
    ca["api_key"] = json!(KEY_A);
    let mut cb = cand("bravo", &b.base_url("/v1"), "m", 2);
    cb["api_key"] = json!(KEY_B);
    let mut cc = cand("charlie", &closed_port_url(), "m", 3);
    cc["api_key"] = json!(KEY_C);
    let gw = Gateway::builder(&config(vec![ca, cb, cc]))
        .log_level("info")
        .start()
        .await;

    let r = post_json(&gw, PATH, &chat_body("m")).await;
    let e = r.expect_error(502);
    assert_eq!(e["type"], "api_error", "{e:?}");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("`m`"), "names the model: {msg}");
    for (name, reason) in [
        ("alpha", "connection failed"),
        ("bravo", "answered 500"),
        ("charlie", "connection failed"),
    ] {
        let part = msg
            .split(';')
            .find(|p| p.contains(name))
            .unwrap_or_else(|| panic!("{name} missing from: {msg}"));
        assert!(part.contains(reason), "{name} without {reason:?}: {msg}");
    }
    assert_eq!(b.count(), 1);

    assert!(wait_until(Duration::from_secs(5), || gw.log().contains("charlie")).await);
    let log = gw.log();
    for key in [KEY_A, KEY_B, KEY_C] {
        assert!(!r.text().contains(key), "key in the body: {}", r.text());
        assert!(!log.contains(key), "key in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn last_candidate_failing_with_a_status_still_gives_502() {
    let a = Mock::start_with("a", fail(500)).await;
    let b = Mock::start_with("b", fail(503)).await;
    let gw = Gateway::start(&config(vec![
        cand("alpha", &a.base_url("/v1"), "m", 1),
        cand("bravo", &b.base_url("/v1"), "m", 2),
    ]))
    .await;

    let r = post_json(&gw, PATH, &chat_body("m")).await;
    let e = r.expect_error(502);
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("alpha") && msg.contains("answered 500"),
        "{msg}"
    );
    assert!(
        msg.contains("bravo") && msg.contains("answered 503"),
        "{msg}"
    );
    assert_eq!((a.count(), b.count()), (1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn all_failing_with_the_last_a_timeout_is_504() {
    let a = Mock::start_with("a", fail(500)).await;
    let b = Mock::start_with("b", Behavior::Hang).await;
    let mut cb = cand("bravo", &b.base_url("/v1"), "m", 2);
    cb["read_timeout_ms"] = json!(500);
    let gw = Gateway::start(&config(vec![cand("alpha", &a.base_url("/v1"), "m", 1), cb])).await;

    let r = post_json(&gw, PATH, &chat_body("m")).await;
    let e = r.expect_error(504);
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("alpha") && msg.contains("answered 500"),
        "{msg}"
    );
    assert!(msg.contains("bravo") && msg.contains("timed out"), "{msg}");
    assert_eq!((a.count(), b.count()), (1, 1));
}

// ---------------------------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn stream_cut_after_two_events_ends_with_an_error_event_without_failover() {
    let a = Mock::start_with("a", Behavior::StreamThenAbort { events: 2 }).await;
    let b = Mock::start("b").await;
    let gw = Gateway::start(&config(vec![
        cand("a", &a.base_url("/v1"), "m", 1),
        cand("b", &b.base_url("/v1"), "m", 2),
    ]))
    .await;

    let resp = post_stream(&gw, "m").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("x-gpt-api-backend")
            .and_then(|v| v.to_str().ok()),
        Some("a")
    );
    let (text, read_error) = read_stream(resp).await;
    let two: String = Mock::sse_events("m", 3)[..2].concat();
    assert!(
        text.starts_with(&two),
        "the two events first; got {text:?} (read error {read_error:?})"
    );
    let rest = &text[two.len()..];
    let event = rest
        .strip_prefix("data: ")
        .and_then(|r| r.strip_suffix("\n\n"))
        .unwrap_or_else(|| {
            panic!("then one error event; got {rest:?} (read error {read_error:?})")
        });
    let v: Value = serde_json::from_str(event).unwrap();
    assert!(
        v["error"]["message"].is_string(),
        "error event {v} (read error {read_error:?})"
    );
    assert_eq!(
        read_error, None,
        "the stream must end cleanly after the error event"
    );
    assert_eq!(
        (a.count(), b.count()),
        (1, 0),
        "no failover after the first byte"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_503_before_any_byte_fails_over_to_a_clean_stream() {
    let a = Mock::start_with("a", fail(503)).await;
    let b = Mock::start("b").await;
    let gw = Gateway::start(&config(vec![
        cand("a", &a.base_url("/v1"), "m", 1),
        cand("b", &b.base_url("/v1"), "m", 2),
    ]))
    .await;

    let resp = post_stream(&gw, "m").await;
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    assert_eq!(
        headers
            .get("x-gpt-api-backend")
            .and_then(|v| v.to_str().ok()),
        Some("b")
    );
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (text, read_error) = read_stream(resp).await;
    assert_eq!(read_error, None);
    assert_eq!(text, Mock::sse_events("m", 3).concat());
    assert_eq!((a.count(), b.count()), (1, 1));
}

// ---------------------------------------------------------------------------------------------------------------
// Bodies re-sent intact
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn three_mb_content_length_body_resent_intact_after_500() {
    let a = Mock::start_with("a", fail(500)).await;
    let b = Mock::start("b").await;
    let gw = Gateway::start(&config(vec![
        cand("a", &a.base_url("/v1"), "big", 1),
        cand("b", &b.base_url("/v1"), "big", 2),
    ]))
    .await;

    let body = chat_body_exact_len("big", 3 * 1024 * 1024);
    let r = post_bytes(&gw, PATH, body.clone()).await;
    assert_served(&r, "b", "big");
    let (to_a, to_b) = (a.single(), b.single());
    assert_eq!(to_a.body.len(), body.len());
    assert!(to_a.body == body, "first attempt's body changed");
    assert_eq!(to_b.body.len(), body.len());
    assert!(to_b.body == body, "retried body changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_mb_chunked_body_resent_intact_after_500() {
    let a = Mock::start_with("a", fail(500)).await;
    let b = Mock::start("b").await;
    let gw = Gateway::start(&config(vec![
        cand("a", &a.base_url("/v1"), "chunky", 1),
        cand("b", &b.base_url("/v1"), "chunky", 2),
    ]))
    .await;

    let body = chat_body_exact_len("chunky", 1024 * 1024);
    let (status, text) = curl_chunked(&gw, &body).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("x-gpt-api-backend: b"),
        "{text}"
    );
    let (to_a, to_b) = (a.single(), b.single());
    assert_eq!(to_a.body.len(), body.len());
    assert!(to_a.body == body, "first attempt's body changed");
    assert_eq!(to_b.body.len(), body.len());
    assert!(to_b.body == body, "retried body changed");
}

// ---------------------------------------------------------------------------------------------------------------
// Passive health
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn failure_threshold_cools_the_client() {
    let a = Mock::start_with(
        "a",
        Behavior::FailFirst {
            n: 2,
            status: 500,
            body: r#"{"error":{"message":"down"}}"#.into(),
        },
    )
    .await;
    let b = Mock::start("b").await;
    let mut ca = cand("a", &a.base_url("/v1"), "m", 1);
    ca["failure_threshold"] = json!(2);
    ca["cooldown_seconds"] = json!(60);
    let gw = Gateway::start(&config(vec![ca, cand("b", &b.base_url("/v1"), "m", 2)])).await;

    for i in 1..=2 {
        let r = post_json(&gw, PATH, &chat_body("m")).await;
        assert_served(&r, "b", "m");
        assert_eq!((a.count(), b.count()), (i, i), "request {i}");
    }
    // `a` would answer now, but it is cooling: skipped without a call.
    let r = post_json(&gw, PATH, &chat_body("m")).await;
    assert_served(&r, "b", "m");
    assert_eq!((a.count(), b.count()), (2, 3), "request 3");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_success_resets_the_failure_count() {
    let a = Mock::start("a").await;
    let b = Mock::start("b").await;
    let mut cfg = config(vec![
        cand("a", &a.base_url("/v1"), "m", 1),
        cand("b", &b.base_url("/v1"), "m", 2),
    ]);
    cfg["failover"] = json!({ "failure_threshold": 2, "cooldown_seconds": 60 });
    let gw = Gateway::start(&cfg).await;

    // fail, succeed, fail: never two failures in a row.
    let steps = [(fail(500), "b"), (Behavior::Answer, "a"), (fail(500), "b")];
    for (i, (behavior, served_by)) in steps.into_iter().enumerate() {
        a.set_behavior(behavior);
        let r = post_json(&gw, PATH, &chat_body("m")).await;
        assert_served(&r, served_by, "m");
        assert_eq!(a.count(), i + 1, "request {}", i + 1);
    }
    assert_eq!(b.count(), 2);
    a.set_behavior(Behavior::Answer);
    let r = post_json(&gw, PATH, &chat_body("m")).await;
    assert_served(&r, "a", "m");
    assert_eq!((a.count(), b.count()), (4, 2), "a was not cooled");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_candidate_is_tried_even_when_cooling() {
    let a = Mock::start_with("a", fail(500)).await;
    let mut ca = cand("a", &a.base_url("/v1"), "m", 1);
    ca["failure_threshold"] = json!(1);
    ca["cooldown_seconds"] = json!(60);
    let gw = Gateway::start(&config(vec![ca])).await;

    let r = post_json(&gw, PATH, &chat_body("m")).await;
    assert_eq!(r.status / 100, 5, "{}", r.text());
    a.set_behavior(Behavior::Answer);
    let r = post_json(&gw, PATH, &chat_body("m")).await;
    assert_served(&r, "a", "m");
    assert_eq!(a.count(), 2);
}

// ---------------------------------------------------------------------------------------------------------------
// Header and log
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn expose_backend_header_false_hides_the_backend() {
    let a = Mock::start_with("a", fail(500)).await;
    let b = Mock::start("b").await;
    let mut cfg = config(vec![
        cand("a", &a.base_url("/v1"), "m", 1),
        cand("b", &b.base_url("/v1"), "m", 2),
    ]);
    cfg["server"] = json!({ "expose_backend_header": false });
    let gw = Gateway::start(&cfg).await;

    let r = post_json(&gw, PATH, &chat_body("m")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), Mock::answer_json("m"));
    assert_eq!(backend(&r), None, "headers: {:?}", r.headers);
    assert_eq!((a.count(), b.count()), (1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn log_has_one_line_per_failed_attempt() {
    let b = Mock::start_with("b", fail(500)).await;
    let c = Mock::start("c").await;
    let gw = Gateway::builder(&config(vec![
        cand("alpha-refused", &closed_port_url(), "m", 1),
        cand("bravo-500", &b.base_url("/v1"), "m", 2),
        cand("charlie-ok", &c.base_url("/v1"), "m", 3),
    ]))
    .log_level("warn")
    .start()
    .await;

    let r = post_json(&gw, PATH, &chat_body("m")).await;
    assert_served(&r, "charlie-ok", "m");
    assert_eq!((b.count(), c.count()), (1, 1));

    let lines_with = |name: &str| -> Vec<String> {
        gw.log()
            .lines()
            .filter(|l| l.contains(name))
            .map(str::to_owned)
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || !lines_with("bravo-500")
            .is_empty())
        .await,
        "no line for bravo-500:\n{}",
        gw.log()
    );
    let alpha = lines_with("alpha-refused");
    assert_eq!(alpha.len(), 1, "{:#?}", gw.log());
    assert!(
        alpha[0].to_ascii_lowercase().contains("connect"),
        "reason missing: {}",
        alpha[0]
    );
    let bravo = lines_with("bravo-500");
    assert_eq!(bravo.len(), 1, "{}", gw.log());
    assert!(bravo[0].contains("500"), "reason missing: {}", bravo[0]);
    assert!(lines_with("charlie-ok").is_empty(), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn log_has_no_other_warning_per_failed_attempt() {
    let b = Mock::start_with("b", fail(500)).await;
    let c = Mock::start("c").await;
    let gw = Gateway::builder(&config(vec![
        cand("alpha-refused", &closed_port_url(), "m", 1),
        cand("bravo-500", &b.base_url("/v1"), "m", 2),
        cand("charlie-ok", &c.base_url("/v1"), "m", 3),
    ]))
    .log_level("warn")
    .start()
    .await;

    let r = post_json(&gw, PATH, &chat_body("m")).await;
    assert_served(&r, "charlie-ok", "m");
    assert!(
        wait_until(Duration::from_secs(5), || gw.log().contains("bravo-500")).await,
        "{}",
        gw.log()
    );
    // Two failed attempts: two lines, each naming its client (no second, anonymous line per retry).
    let log = gw.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .filter(|l| !l.contains("no auth section")) // the start-up warning of an open gateway
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(warnings[0].contains("alpha-refused"), "{warnings:#?}");
    assert!(warnings[1].contains("bravo-500"), "{warnings:#?}");
}
