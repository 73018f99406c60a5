//! Deadlines for slow callers (`client_header_timeout_ms`, `client_body_timeout_ms`, `send_timeout_ms`) and
//! what idle connections cost. Raw sockets on loopback, short deadlines, every wait bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::raw::*;
use crate::common::{client, Gateway, Mock};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Short deadlines, so the tests run fast.
async fn gateway_with_timeouts(mock_url: &str, timeouts: serde_json::Value) -> Gateway {
    Gateway::start(&json!({
        "server": timeouts,
        "openai_clients": [client("a", mock_url, "exact", &["m1"])],
    }))
    .await
}

/// Sends `head_start`, then one byte every `gap` until the gateway closes or `within` passes; returns what came
/// back and how long the connection lived.
async fn trickle(
    addr: SocketAddr,
    head_start: &[u8],
    gap: Duration,
    within: Duration,
) -> (Exchange, Duration) {
    let started = Instant::now();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(head_start).await.unwrap();
    let deadline = tokio::time::Instant::now() + within;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        let wait = tokio::time::Instant::now() + gap;
        match tokio::time::timeout_at(wait.min(deadline), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) if tokio::time::Instant::now() >= deadline => break false,
            Err(_) => {
                if conn.write_all(b"a").await.is_err() {
                    break true;
                }
            }
        }
    };
    (Exchange { bytes, closed }, started.elapsed())
}

const HEAD_TIMEOUT: Duration = Duration::from_millis(800);

#[tokio::test(flavor = "multi_thread")]
async fn a_head_trickled_byte_by_byte_is_cut_at_client_header_timeout() {
    let mock = Mock::start("edge").await;
    let gw = gateway_with_timeouts(
        &mock.base_url("/v1"),
        json!({ "client_header_timeout_ms": 800 }),
    )
    .await;
    // Many slow callers at once, each sending a header byte every 100 ms (each byte would restart a per-read
    // timeout): every one gets a 408 at the deadline, not later.
    let callers: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(trickle(
                gw.addr(),
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Slow: ",
                Duration::from_millis(100),
                Duration::from_secs(10),
            ))
        })
        .collect();
    for caller in callers {
        let (got, lived) = caller.await.unwrap();
        assert!(got.closed, "still open after {lived:?}");
        assert!(
            lived >= HEAD_TIMEOUT && lived < HEAD_TIMEOUT * 3,
            "lived {lived:?}"
        );
        let responses = got.responses();
        assert_eq!(responses.len(), 1, "{}", got.text());
        assert_eq!(responses[0].status, 408, "{}", got.text());
        let err: serde_json::Value = serde_json::from_slice(&responses[0].body).unwrap();
        assert_eq!(err["error"]["code"], "request_timeout");
    }
    // A connection that sends nothing is closed at the deadline too, without an answer.
    let started = Instant::now();
    let got = exchange(gw.addr(), b"", Duration::from_secs(10)).await;
    assert!(got.closed && got.bytes.is_empty(), "{}", got.text());
    assert!(
        started.elapsed() < HEAD_TIMEOUT * 3,
        "lived {:?}",
        started.elapsed()
    );
    assert_eq!(mock.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_alive_connection_gets_the_header_deadline_from_its_first_byte() {
    let mock = Mock::start("edge").await;
    let gw = gateway_with_timeouts(
        &mock.base_url("/v1"),
        json!({ "client_header_timeout_ms": 800 }),
    )
    .await;
    let mut conn = TcpStream::connect(gw.addr()).await.unwrap();
    let request = post("HTTP/1.1", "", CHAT);
    conn.write_all(&request).await.unwrap();
    assert_eq!(read_one(&mut conn, WAIT).await.status, 200);
    // Idle longer than the header deadline (the keep-alive timeout is what applies between requests)...
    tokio::time::sleep(HEAD_TIMEOUT * 2).await;
    // ...then a request that arrives in pieces, within the deadline counted from its first byte.
    let (head, body) = request.split_at(20);
    conn.write_all(head).await.unwrap();
    tokio::time::sleep(HEAD_TIMEOUT / 2).await;
    conn.write_all(body).await.unwrap();
    assert_eq!(read_one(&mut conn, WAIT).await.status, 200);
    assert_eq!(mock.count(), 2);
}

const BODY_TIMEOUT: Duration = Duration::from_millis(800);

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_or_stalled_body_is_408_at_client_body_timeout() {
    let mock = Mock::start("edge").await;
    let gw = gateway_with_timeouts(
        &mock.base_url("/v1"),
        json!({ "client_body_timeout_ms": 800 }),
    )
    .await;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{}",
        CHAT.len(),
        &CHAT[..10]
    );
    // Trickled (a byte every 100 ms, 5 s to send it all) and stalled (nothing after the first 10 bytes).
    for gap in [Duration::from_millis(100), Duration::from_secs(30)] {
        let (got, lived) = trickle(gw.addr(), head.as_bytes(), gap, Duration::from_secs(10)).await;
        assert!(got.closed, "{gap:?}: still open after {lived:?}");
        assert!(
            lived >= BODY_TIMEOUT && lived < BODY_TIMEOUT * 3,
            "{gap:?}: lived {lived:?}"
        );
        let responses = got.responses();
        assert_eq!(responses.len(), 1, "{}", got.text());
        assert_eq!(responses[0].status, 408, "{gap:?}: {}", got.text());
        assert_eq!(responses[0].header("connection"), Some("close"));
    }
    assert_eq!(mock.count(), 0);
}

/// A backend that answers every request with an endless SSE stream of large events, and notes when it can no
/// longer write (the gateway closed its connection).
struct EndlessBackend {
    addr: SocketAddr,
    closed: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EndlessBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EndlessBackend {
    async fn start() -> EndlessBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let closed = std::sync::Arc::<std::sync::Mutex<Option<Instant>>>::default();
        let report = closed.clone();
        let task = tokio::spawn(async move {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 64 * 1024];
            let mut seen = Vec::new();
            while find(&seen, b"\r\n\r\n").is_none() {
                match conn.read(&mut buf).await {
                    Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            let event = format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"content": "x".repeat(16 * 1024)}}]})
            );
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            let mut result = conn.write_all(head.as_bytes()).await;
            while result.is_ok() {
                result = conn.write_all(chunk.as_bytes()).await;
            }
            *report.lock().unwrap() = Some(Instant::now());
        });
        EndlessBackend { addr, closed, task }
    }

    fn closed_at(&self) -> Option<Instant> {
        *self.closed.lock().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_that_reads_nothing_is_dropped_with_its_backend_at_send_timeout() {
    let backend = EndlessBackend::start().await;
    let url = format!("http://{}/v1", backend.addr);
    let gw = gateway_with_timeouts(&url, json!({ "send_timeout_ms": 1000 })).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(gw.addr()).await.unwrap();
    let started = Instant::now();
    conn.write_all(&post("HTTP/1.1", "", STREAM_CHAT))
        .await
        .unwrap();
    // Never read: the gateway's writes stall, then its reads from the backend.
    assert!(
        common::wait_until(Duration::from_secs(10), || backend.closed_at().is_some()).await,
        "the backend connection is still open after {:?}",
        started.elapsed()
    );
    let lived = backend.closed_at().unwrap() - started;
    assert!(
        lived < Duration::from_secs(5),
        "backend connection lived {lived:?}"
    );
    // The caller's connection is closed as well: what is left in it ends.
    let got = read_until_closed(&mut conn, Duration::from_secs(10)).await;
    assert!(got.closed, "the caller's connection is still open");
}

// ---------------------------------------------------------------------------------------------------------------
// Memory of idle connections (a measurement, ignored by default:
// `cargo nextest run --test integration --run-ignored only slow_callers::idle`)
// ---------------------------------------------------------------------------------------------------------------

fn vm_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: opens 2,000 connections"]
async fn idle_keep_alive_connections_memory() {
    const CONNECTIONS: usize = 2000;
    let gw = Gateway::start(&json!({
        "usage": { "enabled": false },
        "openai_clients": [client("a", "http://127.0.0.1:9/v1", "exact", &["m1"])],
    }))
    .await;
    let health = b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n";
    // Warm up, so that allocator pools exist before the baseline.
    for _ in 0..50 {
        let mut conn = TcpStream::connect(gw.addr()).await.unwrap();
        conn.write_all(health).await.unwrap();
        read_one(&mut conn, WAIT).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = gw.pid().unwrap();
    let before = vm_rss_kb(pid);
    let mut conns = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut conn = TcpStream::connect(gw.addr()).await.unwrap();
        conn.write_all(health).await.unwrap();
        assert_eq!(read_one(&mut conn, WAIT).await.status, 200);
        conns.push(conn);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = vm_rss_kb(pid);
    let per_connection = (after - before) as f64 / CONNECTIONS as f64;
    eprintln!(
        "VmRSS {before} kB before, {after} kB with {CONNECTIONS} idle keep-alive connections: \
         +{} kB, {per_connection:.1} kB each",
        after - before
    );
    assert!(
        per_connection < 64.0,
        "{per_connection:.1} kB per idle connection"
    );
}
