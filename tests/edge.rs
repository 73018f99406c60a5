//! The HTTP edge against hostile or odd callers: busy ports at start, request framing, HTTP/1.0, header size
//! and pipelining (slow callers: `slow_callers.rs`). Raw sockets on loopback, every wait with a deadline.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::raw::*;
use crate::common::{client, config, free_port, run_bin, to_yaml, Gateway, Mock};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest a busy port may keep a second instance alive.
const BIND_FAILS_WITHIN: Duration = Duration::from_secs(5);

/// Runs the gateway on `listen` with this config; returns its exit code, stderr and how long it lived.
fn run_to_exit(config: &serde_json::Value, listen: &str) -> (i32, String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, to_yaml(config)).unwrap();
    let conf = dir.path().join("server.yaml");
    std::fs::write(
        &conf,
        format!(
            "---\nversion: 1\nthreads: 1\npid_file: {}\nupgrade_sock: {}\n",
            dir.path().join("pid").display(),
            dir.path().join("upgrade.sock").display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = run_bin(
        &[
            "--config",
            path.to_str().unwrap(),
            "--listen",
            listen,
            "-c",
            conf.to_str().unwrap(),
        ],
        &[],
        &[],
        dir.path(),
    );
    (out.code, out.stderr, started.elapsed())
}

fn one_client() -> serde_json::Value {
    config(vec![client("a", "http://127.0.0.1:9/v1", "exact", &["m1"])])
}

#[test]
fn busy_listen_port_is_exit_1_at_once() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr, lived) = run_to_exit(&one_client(), &addr);
    assert_eq!(code, 1, "stderr:\n{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("in use"),
        "stderr does not name the busy address:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
    assert!(lived < BIND_FAILS_WITHIN, "lived {lived:?}:\n{stderr}");
}

#[test]
fn busy_metrics_port_is_exit_1_at_once() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = taken.local_addr().unwrap().to_string();
    let mut cfg = one_client();
    cfg["server"] = json!({ "metrics_listen": metrics });
    let listen = format!("127.0.0.1:{}", free_port());
    let (code, stderr, lived) = run_to_exit(&cfg, &listen);
    assert_eq!(code, 1, "stderr:\n{stderr}");
    assert!(
        stderr.contains(&metrics) && stderr.contains("in use"),
        "stderr does not name the busy address:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
    assert!(lived < BIND_FAILS_WITHIN, "lived {lived:?}:\n{stderr}");
}

// ---------------------------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn broken_chunked_body_is_400_and_the_connection_closes() {
    let (gw, mock) = gateway_with_mock().await;
    for broken in ["zz\r\nhello\r\n0\r\n\r\n", "5\r\nhello\r\nzz\r\n"] {
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n{broken}\
             GET /health HTTP/1.1\r\nHost: gw\r\n\r\n"
        );
        let got = exchange(gw.addr(), request.as_bytes(), WAIT).await;
        let responses = got.responses();
        assert_eq!(responses.len(), 1, "{broken:?}: {}", got.text());
        assert_eq!(responses[0].status, 400, "{}", got.text());
        assert_eq!(responses[0].header("connection"), Some("close"));
        assert!(got.closed, "{broken:?}: the connection stayed open");
    }
    assert_eq!(mock.count(), 0);
}

/// A backend that records the raw request heads it receives (hyper would merge repeated headers) and answers
/// each with a small JSON chat completion.
struct RawBackend {
    addr: SocketAddr,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    async fn start() -> RawBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = std::sync::Arc::<std::sync::Mutex<Vec<String>>>::default();
        let record = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 16 * 1024];
                    loop {
                        let Some(end) = find(&buf, b"\r\n\r\n") else {
                            match conn.read(&mut chunk).await {
                                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                                _ => return,
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        while buf.len() < end + 4 + len {
                            match conn.read(&mut chunk).await {
                                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                                _ => return,
                            }
                        }
                        buf.drain(..end + 4 + len);
                        record.lock().unwrap().push(head);
                        let body = Mock::answer_json("m1").to_string();
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RawBackend { addr, heads, task }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_content_length_is_sent_once() {
    let backend = RawBackend::start().await;
    let url = format!("http://{}/v1", backend.addr);
    let gw = Gateway::start(&config(vec![client("a", &url, "exact", &["m1"])])).await;
    let twice = format!("Content-Length: {}\r\n", CHAT.len());
    let listed = format!("X: y\r\nContent-Length: {0}, {0}\r\n", CHAT.len());
    for extra in [twice, listed] {
        let request = post("HTTP/1.1", &format!("Connection: close\r\n{extra}"), CHAT)
            .into_iter()
            .collect::<Vec<u8>>();
        // `post` adds its own Content-Length; for the listed form, drop that one.
        let request = if extra.starts_with("X:") {
            String::from_utf8(request)
                .unwrap()
                .replacen(
                    &format!("Content-Length: {}\r\n\r\n", CHAT.len()),
                    "\r\n",
                    1,
                )
                .into_bytes()
        } else {
            request
        };
        let got = exchange(gw.addr(), &request, WAIT).await;
        assert_eq!(got.responses()[0].status, 200, "{}", got.text());
        let head = backend.heads().pop().unwrap();
        let lengths: Vec<&str> = head
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("content-length:"))
            .collect();
        let want = format!("content-length: {}", CHAT.len());
        assert_eq!(lengths.len(), 1, "{head}");
        assert_eq!(lengths[0].to_ascii_lowercase(), want, "{head}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transfer_coding_other_than_chunked_is_501() {
    let (gw, mock) = gateway_with_mock().await;
    for te in ["gzip, chunked", "chunked, chunked"] {
        let body = format!("{:x}\r\n{CHAT}\r\n0\r\n\r\n", CHAT.len());
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: {te}\r\n\r\n{body}"
        );
        let got = exchange(gw.addr(), request.as_bytes(), WAIT).await;
        let responses = got.responses();
        assert_eq!(responses.len(), 1, "{te}: {}", got.text());
        assert_eq!(responses[0].status, 501, "{te}: {}", got.text());
        let err: serde_json::Value = serde_json::from_slice(&responses[0].body).unwrap();
        assert_eq!(err["error"]["code"], "unsupported_transfer_encoding");
        assert!(got.closed, "{te}: the connection stayed open");
    }
    assert_eq!(mock.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_11_without_host_is_400() {
    let (gw, mock) = gateway_with_mock().await;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    );
    let got = exchange(gw.addr(), request.as_bytes(), WAIT).await;
    let responses = got.responses();
    assert_eq!(responses.len(), 1, "{}", got.text());
    assert_eq!(responses[0].status, 400, "{}", got.text());
    assert!(got.closed, "the connection stayed open");
    assert_eq!(mock.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_10_gets_no_chunked_answer_and_a_close() {
    let (gw, _mock) = gateway_with_mock().await;
    let got = exchange(gw.addr(), &post("HTTP/1.0", "", STREAM_CHAT), WAIT).await;
    let responses = got.responses();
    assert_eq!(responses.len(), 1, "{}", got.text());
    let r = &responses[0];
    assert_eq!(r.status, 200, "{}", got.text());
    assert!(!r.chunked, "chunked answer to HTTP/1.0: {}", got.text());
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        Mock::sse_events("m1", 3).concat()
    );
    assert!(got.closed, "the connection stayed open");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_10_keep_alive_is_kept_only_when_asked() {
    let (gw, _mock) = gateway_with_mock().await;
    // Asked: a Content-Length answer, and the connection takes a second request.
    let mut conn = TcpStream::connect(gw.addr()).await.unwrap();
    let keep = post("HTTP/1.0", "Connection: keep-alive\r\n", CHAT);
    for _ in 0..2 {
        conn.write_all(&keep).await.unwrap();
        let r = read_one(&mut conn, WAIT).await;
        assert_eq!(r.status, 200);
        assert!(!r.chunked && r.header("content-length").is_some(), "{r:?}");
        assert_eq!(r.header("connection"), Some("keep-alive"), "{r:?}");
    }
    // Not asked (HTTP/1.0), or refused (HTTP/1.1 `Connection: close`): closed after the answer.
    for request in [
        post("HTTP/1.0", "", CHAT),
        post("HTTP/1.1", "Connection: close\r\n", CHAT),
    ] {
        let got = exchange(gw.addr(), &request, WAIT).await;
        let responses = got.responses();
        assert_eq!(responses.len(), 1, "{}", got.text());
        assert_eq!(responses[0].header("connection"), Some("close"));
        assert!(got.closed, "the connection stayed open: {}", got.text());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Request head size
// ---------------------------------------------------------------------------------------------------------------

/// A chat request whose head (request line and headers) is exactly `head_len` bytes, with `Connection: close`.
fn request_with_head_len(head_len: usize) -> Vec<u8> {
    request_with(head_len, CHAT, "close")
}

/// A request for `body` whose head is exactly `head_len` bytes.
fn request_with(head_len: usize, body: &str, connection: &str) -> Vec<u8> {
    let start = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nConnection: {connection}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nX-Pad: ",
        body.len()
    );
    let end = "\r\n\r\n";
    let pad = head_len - start.len() - end.len();
    format!("{start}{}{end}{body}", "a".repeat(pad)).into_bytes()
}

/// Sends `request` from its own task (the gateway may answer before reading it all) and reads what comes back.
async fn send_big(addr: SocketAddr, request: Vec<u8>, within: Duration) -> Exchange {
    let conn = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = conn.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write
    });
    let deadline = tokio::time::Instant::now() + within;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    };
    writer.abort();
    Exchange { bytes, closed }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_over_max_header_bytes_is_431_and_closed() {
    let (gw, mock) = gateway_with_mock().await;
    // The default limit is 64 KiB: just under it passes, the issue's megabyte does not.
    let fits = send_big(gw.addr(), request_with_head_len(64 * 1024), WAIT).await;
    assert_eq!(fits.responses()[0].status, 200, "{}", fits.text());
    for head_len in [64 * 1024 + 1, 1_000_000] {
        let got = send_big(gw.addr(), request_with_head_len(head_len), WAIT).await;
        let responses = got.responses();
        assert_eq!(responses.len(), 1, "{head_len}: {}", got.text());
        assert_eq!(responses[0].status, 431, "{head_len}: {}", got.text());
        let err: serde_json::Value = serde_json::from_slice(&responses[0].body).unwrap();
        assert_eq!(err["error"]["code"], "request_header_too_large");
        assert_eq!(responses[0].header("connection"), Some("close"));
        assert!(got.closed, "{head_len}: the connection stayed open");
    }
    assert_eq!(mock.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_header_bytes_holds_for_every_request_on_a_connection() {
    let mock = Mock::start("edge").await;
    let gw = Gateway::start(&json!({
        "server": { "max_header_bytes": 2048 },
        "openai_clients": [client("a", &mock.base_url("/v1"), "exact", &["m1"])],
    }))
    .await;
    let mut conn = TcpStream::connect(gw.addr()).await.unwrap();
    // Keep-alive requests with heads of 2048 bytes pass, bodies of any size do not count.
    let big_body = format!(
        r#"{{"model":"m1","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "b".repeat(10_000)
    );
    for body in [CHAT.to_owned(), big_body] {
        conn.write_all(&request_with(2048, &body, "keep-alive"))
            .await
            .unwrap();
        assert_eq!(read_one(&mut conn, WAIT).await.status, 200);
    }
    // One byte more on the same connection: refused.
    conn.write_all(&request_with_head_len(2049)).await.unwrap();
    let got = read_until_closed(&mut conn, WAIT).await;
    assert_eq!(got.responses()[0].status, 431, "{}", got.text());
    assert!(got.closed);
    assert_eq!(mock.count(), 2);
}

// ---------------------------------------------------------------------------------------------------------------
// Pipelining
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_all_answered_in_order() {
    let mock = Mock::start("edge").await;
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "keyword",
        &["m"],
    )]))
    .await;
    let chat = |model: &str| {
        let body =
            format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
        post("HTTP/1.1", "", &body)
    };
    let health = b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec();
    let big = format!(
        r#"{{"model":"m-big","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(200 * 1024)
    );
    // A chunked body over 64 KiB takes the gateway's replay path (see src/proxy/body.rs).
    let chunked_big = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    )
    .into_bytes();
    let stream = post(
        "HTTP/1.1",
        "",
        r#"{"model":"m-s","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    let mut all = Vec::new();
    for part in [
        chat("m-1"),
        health.clone(),
        chat("m-2"),
        chunked_big,
        stream,
        chat("m-3"),
        health,
    ] {
        all.extend_from_slice(&part);
    }
    let mut conn = TcpStream::connect(gw.addr()).await.unwrap();
    // All at once, before reading anything.
    conn.write_all(&all).await.unwrap();
    let answers = read_n(&mut conn, 7, Duration::from_secs(10)).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200; 7]);
    assert_eq!(chat_answer_model(&answers[0]), "m-1");
    assert_eq!(answers[1].body, br#"{"status":"ok"}"#);
    assert_eq!(chat_answer_model(&answers[2]), "m-2");
    assert_eq!(chat_answer_model(&answers[3]), "m-big");
    assert_eq!(
        String::from_utf8_lossy(&answers[4].body),
        Mock::sse_events("m-s", 3).concat()
    );
    assert_eq!(chat_answer_model(&answers[5]), "m-3");
    assert_eq!(answers[6].body, br#"{"status":"ok"}"#);
    assert_eq!(mock.count(), 5);
    // The big body reached the backend whole.
    let big_sent = mock.requests()[2].json();
    assert_eq!(
        big_sent["messages"][0]["content"].as_str().unwrap().len(),
        200 * 1024
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_sent_while_the_previous_streams_is_answered_after_it() {
    let (gw, mock) = gateway_with_mock().await;
    mock.set_sse(5, Duration::from_millis(100));
    let mut conn = TcpStream::connect(gw.addr()).await.unwrap();
    conn.write_all(&post("HTTP/1.1", "", STREAM_CHAT))
        .await
        .unwrap();
    // Once the stream is under way (the backend has the request), the next request follows on the connection.
    assert!(common::wait_until(WAIT, || mock.count() == 1).await);
    conn.write_all(&post("HTTP/1.1", "", CHAT)).await.unwrap();
    let answers = read_n(&mut conn, 2, Duration::from_secs(10)).await;
    assert_eq!(
        String::from_utf8_lossy(&answers[0].body),
        Mock::sse_events("m1", 5).concat()
    );
    assert_eq!(chat_answer_model(&answers[1]), "m1");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_header_bytes_holds_for_http2_too() {
    let mock = Mock::start("edge").await;
    let cert = common::tls::SelfSigned::localhost();
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({
        "server": {
            "max_header_bytes": 2048,
            "tls": { "cert_path": cert.cert, "key_path": cert.key },
        },
        "openai_clients": [client("a", &mock.base_url("/v1"), "exact", &["m1"])],
    });
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, to_yaml(&cfg)).unwrap();
    let ca = cert.cert.clone();
    let (_gw, port) = common::process::start(
        "gateway",
        dir.path(),
        |port| common::process::gateway_args(&config_path, port, None, &[]),
        |port| {
            let ca = ca.clone();
            async move { common::process::https_healthy(port, &ca).await }
        },
    )
    .await;
    let status_with_pad = |pad: usize| {
        let ca = ca.clone();
        async move {
            let out = common::process::curl(&[
                "--http2".into(),
                "-sS".into(),
                "-o".into(),
                "/dev/null".into(),
                "-w".into(),
                "%{http_version} %{http_code}".into(),
                "--cacert".into(),
                ca.into(),
                "-H".into(),
                format!("x-pad: {}", "a".repeat(pad)).into(),
                format!("https://127.0.0.1:{port}/health").into(),
            ])
            .await;
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    assert_eq!(status_with_pad(1000).await, "2 200");
    // The h2 codec answers 431 itself (no JSON body).
    assert_eq!(status_with_pad(4000).await, "2 431");
}
