//! Hostile or odd streams: an endless stream keeps the gateway's memory bounded and its record cut to size.
#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::records::{usage_config, wait_one_row, Row};
use common::{client, Gateway};
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
