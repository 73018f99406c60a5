//! Hostile or odd streams: an endless stream keeps the gateway's memory bounded and its record cut to size; a
//! stream the caller read to its end and closed at once is complete (200); a backend that cuts its answer
//! short leaves a 502 in the record, the access log and the metrics alike.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::records::{usage_config, wait_exact_rows, wait_one_row, Row};
use crate::common::{client, free_port, http_client, wait_until, Behavior, Gateway, Mock};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USAGE: &str = r#"{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}"#;

/// A backend on loopback that reads each request (head and Content-Length body) by hand and hands the
/// socket to `answer`, which writes whatever HTTP it likes.
async fn raw_backend<F, Fut>(answer: F) -> u16
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let _ = sock.set_nodelay(true);
                if read_request(&mut sock).await {
                    answer(sock).await;
                }
            });
        }
    });
    port
}

/// Reads one request's head and its Content-Length body; false when the connection ends first.
async fn read_request(sock: &mut TcpStream) -> bool {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return true;
            }
        }
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

/// `text` as one HTTP/1.1 chunk.
fn chunk(text: &str) -> String {
    format!("{:x}\r\n{text}\r\n", text.len())
}

/// A chat chunk event with this content delta (and finish reason).
fn content_event(content: &str, finish: Value) -> String {
    let chunk = json!({"id": "chatcmpl-r", "object": "chat.completion.chunk", "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]});
    format!("data: {chunk}\n\n")
}

/// The usage-only chunk and `[DONE]`.
fn usage_and_done() -> String {
    let usage: Value = serde_json::from_str(USAGE).unwrap();
    let chunk = json!({"id": "chatcmpl-r", "object": "chat.completion.chunk", "model": "m",
        "choices": [], "usage": usage});
    format!("data: {chunk}\n\ndata: [DONE]\n\n")
}

fn stream_request() -> String {
    json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "go"}]})
    .to_string()
}

/// The gateway's resident set size in bytes (`VmRSS` of `/proc/<pid>/status`).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn assert_tokens(row: &Row) {
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens, row.total_tokens),
        (Some(11), Some(7), Some(18)),
        "{row:#?}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Memory: an endless stream
// ---------------------------------------------------------------------------------------------------------------

/// Bytes of small content deltas the long stream sends before its end.
const LONG_STREAM_BYTES: usize = 200 << 20;
/// The bound on the gateway's RSS while it passes the long stream on and records it.
const RSS_BOUND: u64 = 150 << 20;
const MAX_BODY: usize = 1 << 20;
/// One content delta of the long stream: 128 bytes.
const DELTA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\
                     0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread")]
async fn a_long_stream_keeps_memory_bounded_and_its_record_cut_with_usage() {
    let port = raw_backend(|mut sock| async move {
        // One block of many small deltas, sent over and over: the backend costs nothing.
        let events: String = (0..400)
            .map(|_| content_event(DELTA, Value::Null))
            .collect();
        let block = chunk(&events);
        let mut out = SSE_HEAD.as_bytes().to_vec();
        out.extend_from_slice(block.as_bytes());
        let mut sent = 0;
        while sent < LONG_STREAM_BYTES {
            if sock.write_all(&out).await.is_err() {
                return;
            }
            sent += out.len();
            out = block.clone().into_bytes();
        }
        let end = format!(
            "{}{}",
            content_event("end", json!("stop")),
            usage_and_done()
        );
        let _ = sock.write_all(chunk(&end).as_bytes()).await;
        let _ = sock.write_all(b"0\r\n\r\n").await;
        let _ = sock.flush().await;
        let _ = sock.read(&mut [0u8; 16]).await;
    })
    .await;
    let db = tempfile::tempdir().unwrap();
    let c = client(
        "long",
        &format!("http://127.0.0.1:{port}/v1"),
        "exact",
        &["m"],
    );
    let config = usage_config(vec![c], db.path(), json!({ "max_body_bytes": MAX_BODY }));
    let gw = Gateway::start(&config).await;
    let pid = gw.pid().unwrap();

    // Sample the RSS from the first byte until the record is written.
    let start = rss_bytes(pid);
    let peak = Arc::new(AtomicU64::new(start));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(rss_bytes(pid), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let resp = http_client_long()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(stream_request())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let (mut received, mut tail) = (0usize, Vec::new());
    while let Some(piece) = stream.next().await {
        let piece = piece.unwrap();
        received += piece.len();
        tail.extend_from_slice(&piece);
        let keep = tail.len().saturating_sub(4096);
        tail.drain(..keep);
    }
    assert!(
        received > LONG_STREAM_BYTES - (1 << 20),
        "the caller got {received} bytes"
    );
    assert!(
        String::from_utf8_lossy(&tail).ends_with("data: [DONE]\n\n"),
        "the stream reached its end"
    );
    let row = wait_one_row(db.path()).await;
    done.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::SeqCst);
    eprintln!(
        "gateway RSS {} MB at the start, peak {} MB over a {received}-byte stream",
        start >> 20,
        peak >> 20
    );
    assert!(
        peak < RSS_BOUND,
        "peak RSS {} MB, bound {} MB",
        peak >> 20,
        RSS_BOUND >> 20
    );

    assert_eq!(row.status, Some(200));
    assert_tokens(&row);
    let response = row.response.as_deref().unwrap();
    assert!(
        response.len() <= MAX_BODY + 64,
        "Response is {} bytes, max_body_bytes {MAX_BODY}",
        response.len()
    );
    let v = row.response_json();
    assert_eq!(
        v["choices"][0]["finish_reason"],
        "stop",
        "{}",
        &response[..200]
    );
    assert_eq!(v["usage"], serde_json::from_str::<Value>(USAGE).unwrap());
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        content.starts_with(DELTA) && content.len() > MAX_BODY / 2,
        "the content's start is kept: {} bytes",
        content.len()
    );
    assert!(
        content.ends_with(" bytes)"),
        "the cut is marked: {:?}",
        &content[content.len().saturating_sub(40)..]
    );
}

/// A client without the harness's 60 s overall timeout: a debug build takes a while over 200 MB.
fn http_client_long() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------------------------
// A complete stream whose caller closes at `[DONE]`
// ---------------------------------------------------------------------------------------------------------------

/// Reads the SSE answer on `sock` until `data: [DONE]` and returns at once (the caller then closes).
async fn read_until_done(sock: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while !got.windows(14).any(|w| w == b"data: [DONE]\n\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf))
            .await
            .expect("the stream stalled before [DONE]")
            .unwrap();
        assert!(
            n > 0,
            "the stream ended before [DONE]: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_read_to_done_and_closed_at_once_is_recorded_complete() {
    // `[DONE]`, then the body stays open a while (until the gateway drops the connection, at most 2 s).
    let port = raw_backend(|mut sock| async move {
        let events = format!(
            "{}{}{}",
            content_event("a", Value::Null),
            content_event("b", json!("stop")),
            usage_and_done()
        );
        let _ = sock
            .write_all(format!("{SSE_HEAD}{}", chunk(&events)).as_bytes())
            .await;
        let _ = sock.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), sock.read(&mut [0u8; 16])).await;
        let _ = sock.write_all(b"0\r\n\r\n").await;
    })
    .await;
    let db = tempfile::tempdir().unwrap();
    let c = client(
        "sdk",
        &format!("http://127.0.0.1:{port}/v1"),
        "exact",
        &["m"],
    );
    let gw = Gateway::start(&usage_config(vec![c], db.path(), json!({}))).await;

    const STREAMS: usize = 50;
    let body = stream_request();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    for _ in 0..STREAMS {
        let mut sock = TcpStream::connect(gw.addr()).await.unwrap();
        sock.write_all(request.as_bytes()).await.unwrap();
        let got = read_until_done(&mut sock).await;
        assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
        drop(sock);
    }
    let rows = wait_exact_rows(db.path(), STREAMS).await;
    for row in &rows {
        assert_eq!(row.status, Some(200), "{row:#?}");
        assert_eq!(row.error, None, "{row:#?}");
        assert_tokens(row);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A backend that cuts its answer short
// ---------------------------------------------------------------------------------------------------------------

/// A config recording into `dir`, with metrics on a port of their own; returns it and the metrics port.
fn config_with_metrics(clients: Vec<Value>, dir: &std::path::Path) -> (Value, u16) {
    let metrics_port = free_port();
    let mut config = usage_config(clients, dir, json!({}));
    config["server"] = json!({ "metrics_listen": format!("127.0.0.1:{metrics_port}") });
    (config, metrics_port)
}

/// Waits until the access log line of `POST /v1/chat/completions` is written; returns its status.
async fn access_status(gw: &Gateway) -> String {
    let line = || {
        gw.log()
            .lines()
            .find(|l| l.contains(" POST /v1/chat/completions ") && l.contains(" model="))
            .map(str::to_owned)
    };
    assert!(
        wait_until(Duration::from_secs(10), || line().is_some()).await,
        "no access line:\n{}",
        gw.log()
    );
    let line = line().unwrap();
    let after = line.split(" POST /v1/chat/completions ").nth(1).unwrap();
    after.split(' ').next().unwrap().to_owned()
}

/// The `gpt_api_requests_total` lines of the metrics on `port`, once there is one for model `m`.
async fn requests_total(port: u16) -> Vec<String> {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = http_client().get(&url).send().await {
            let text = r.text().await.unwrap_or_default();
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with("gpt_api_requests_total{"))
                .map(str::to_owned)
                .collect();
            if lines.iter().any(|l| l.contains("model=\"m\"")) {
                return lines;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no gpt_api_requests_total on {url}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The record, the access line and the metrics of one cut answer all say 502.
async fn assert_502_everywhere(gw: &Gateway, row: &Row, metrics_port: u16) {
    assert_eq!(row.status, Some(502), "{row:#?}");
    assert!(
        row.error
            .as_deref()
            .is_some_and(|e| e.contains("backend failed mid-response")),
        "{row:#?}"
    );
    assert_eq!(access_status(gw).await, "502", "{}", gw.log());
    let metrics = requests_total(metrics_port).await;
    let routed: Vec<&String> = metrics
        .iter()
        .filter(|l| l.contains("model=\"m\""))
        .collect();
    assert!(
        routed.len() == 1 && routed[0].contains("status=\"502\"") && routed[0].ends_with(" 1"),
        "{metrics:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_by_the_backend_is_recorded_as_502_with_what_the_caller_got() {
    let mock = Mock::start_with("cut", Behavior::StreamThenAbort { events: 2 }).await;
    let db = tempfile::tempdir().unwrap();
    let clients = vec![client("a", &mock.base_url("/v1"), "exact", &["m"])];
    let (config, metrics_port) = config_with_metrics(clients, db.path());
    let gw = Gateway::builder(&config).log_level("info").start().await;

    let resp = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(stream_request())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut text = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(piece)) = stream.next().await {
        text.extend_from_slice(&piece);
    }
    let two: String = Mock::sse_events("m", 3)[..2].concat();
    assert!(text.starts_with(two.as_bytes()), "{text:?}");

    let row = wait_one_row(db.path()).await;
    assert_eq!(
        row.response_json()["choices"][0]["message"]["content"],
        "c0 c1 ",
        "the record keeps what the caller got"
    );
    assert_502_everywhere(&gw, &row, metrics_port).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_cut_short_of_its_content_length_is_recorded_as_502() {
    let answer = Mock::answer_json("m").to_string();
    let half = answer[..answer.len() / 2].to_owned();
    let port = raw_backend(move |mut sock| {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        );
        let sent = format!("{head}{half}");
        async move {
            let _ = sock.write_all(sent.as_bytes()).await;
            let _ = sock.flush().await;
            // Dropped: the body ends short of its Content-Length.
        }
    })
    .await;
    let db = tempfile::tempdir().unwrap();
    let clients = vec![client(
        "a",
        &format!("http://127.0.0.1:{port}/v1"),
        "exact",
        &["m"],
    )];
    let (config, metrics_port) = config_with_metrics(clients, db.path());
    let gw = Gateway::builder(&config).log_level("info").start().await;

    let resp = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(json!({"model": "m", "messages": []}).to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let got = resp.bytes().await;
    assert!(
        got.is_err() || status != 200,
        "the caller cannot take a cut body for a whole one: {status} {got:?}"
    );

    let row = wait_one_row(db.path()).await;
    let expected = Mock::answer_json("m").to_string();
    let response = row.response.as_deref().unwrap_or_default();
    assert!(
        !response.is_empty() && expected.starts_with(response) && response.len() < expected.len(),
        "the record keeps the bytes the caller got: {response:?}"
    );
    assert_502_everywhere(&gw, &row, metrics_port).await;
}
