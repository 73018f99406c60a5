//! The HTTP edge against hostile or odd callers: busy ports at start, request framing, header size and
//! deadlines, slow callers, HTTP/1.0 and pipelining. Raw sockets on loopback, every wait with a deadline.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::{client, config, free_port, run_bin, to_yaml, Gateway, Mock};
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
// A raw HTTP/1 client: what the gateway sends back, byte for byte, and whether it closes
// ---------------------------------------------------------------------------------------------------------------

/// What came back on one connection.
struct Exchange {
    bytes: Vec<u8>,
    /// The gateway closed the connection (read 0 or reset) within the wait.
    closed: bool,
}

impl Exchange {
    fn responses(&self) -> Vec<Parsed> {
        parse_responses(&self.bytes)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Writes `request` on a new connection, then reads until the gateway closes it or `within` passes.
async fn exchange(addr: SocketAddr, request: &[u8], within: Duration) -> Exchange {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    read_until_closed(&mut conn, within).await
}

/// Reads until the peer closes or `within` passes.
async fn read_until_closed(conn: &mut TcpStream, within: Duration) -> Exchange {
    let deadline = tokio::time::Instant::now() + within;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => {
                return Exchange {
                    bytes,
                    closed: false,
                }
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Exchange {
                    bytes,
                    closed: true,
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one complete response (framed by Content-Length or chunked) within `within`.
async fn read_one(conn: &mut TcpStream, within: Duration) -> Parsed {
    let deadline = tokio::time::Instant::now() + within;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some((parsed, _)) = parse_one(&bytes, false) {
            return parsed;
        }
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&buf[..n]),
            other => panic!(
                "no complete response ({other:?}); got {:?}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
}

#[derive(Debug)]
struct Parsed {
    status: u16,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    /// De-chunked.
    body: Vec<u8>,
    chunked: bool,
}

impl Parsed {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One response at the start of `buf` and its length; `to_end`: a body without length runs to the end.
fn parse_one(buf: &[u8], to_end: bool) -> Option<(Parsed, usize)> {
    let head_end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let mut at = head_end + 4;
    let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let line_end = at + find(&buf[at..], b"\r\n")?;
            let size_text = String::from_utf8_lossy(&buf[at..line_end]);
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                at += find(&buf[at..], b"\r\n")? + 2;
                break body;
            }
            body.extend_from_slice(buf.get(at..at + size)?);
            at += size + 2;
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().ok()?;
        let body = buf.get(at..at + len)?.to_vec();
        at += len;
        body
    } else if to_end {
        let body = buf[at..].to_vec();
        at = buf.len();
        body
    } else {
        return None;
    };
    let parsed = Parsed {
        status,
        headers,
        body,
        chunked,
    };
    Some((parsed, at))
}

/// Every complete response in `buf`, in order (a last one without length runs to the end).
fn parse_responses(mut buf: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    while let Some((parsed, used)) = parse_one(buf, true) {
        out.push(parsed);
        buf = &buf[used..];
    }
    out
}

async fn gateway_with_mock() -> (Gateway, Mock) {
    let mock = Mock::start("edge").await;
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["m1"],
    )]))
    .await;
    (gw, mock)
}

const WAIT: Duration = Duration::from_secs(5);
const CHAT: &str = r#"{"model":"m1","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM_CHAT: &str =
    r#"{"model":"m1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn post(version: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /v1/chat/completions {version}\r\nHost: gw\r\nContent-Type: application/json\r\n\
         {extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
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
// Deadlines for slow callers
// ---------------------------------------------------------------------------------------------------------------

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
// Memory of idle connections (a measurement: `cargo nextest run --test edge --run-ignored only idle`)
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

// ---------------------------------------------------------------------------------------------------------------
// Pipelining
// ---------------------------------------------------------------------------------------------------------------

/// Reads `n` complete responses from `conn`, in order.
async fn read_n(conn: &mut TcpStream, n: usize, within: Duration) -> Vec<Parsed> {
    let deadline = tokio::time::Instant::now() + within;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let mut rest = &bytes[..];
        let mut parsed = Vec::new();
        while let Some((p, used)) = parse_one(rest, false) {
            parsed.push(p);
            rest = &rest[used..];
        }
        if parsed.len() >= n {
            return parsed;
        }
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(k)) if k > 0 => bytes.extend_from_slice(&buf[..k]),
            other => panic!(
                "{} of {n} responses ({other:?}): {:?}",
                parsed.len(),
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
}

fn chat_answer_model(p: &Parsed) -> String {
    let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
    v["model"].as_str().unwrap().to_owned()
}

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
    let mock = Mock::start("edge").await;
    mock.set_sse(5, Duration::from_millis(100));
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["m1"],
    )]))
    .await;
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
