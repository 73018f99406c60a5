//! HTTP helpers for the tests: a proxy-free reqwest client, fully read responses, OpenAI error checks, raw HTTP/1.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use super::Gateway;

/// A plain-HTTP client that ignores proxy settings, with a 60 s overall timeout.
pub fn http_client() -> reqwest::Client {
    http_client_with_timeout(Duration::from_secs(60))
}

pub fn http_client_with_timeout(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("reqwest client")
}

/// A response fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub async fn read(resp: reqwest::Response) -> Resp {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("read response body");
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {:?}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an OpenAI-shaped error with this status and returns the `error` object.
    pub fn expect_error(&self, status: u16) -> serde_json::Map<String, Value> {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "error content-type is {ct:?}; body: {}",
            self.text()
        );
        error_object(&self.json())
    }
}

/// Checks `{"error":{"message":string,"type":string,"param":..,"code":..}}` and returns the inner object.
pub fn error_object(v: &Value) -> serde_json::Map<String, Value> {
    let err = v
        .get("error")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("no error object in {v}"))
        .clone();
    assert!(
        err.get("message").is_some_and(Value::is_string),
        "error.message not a string: {v}"
    );
    assert!(
        err.get("type").is_some_and(Value::is_string),
        "error.type not a string: {v}"
    );
    assert!(err.contains_key("param"), "error.param missing: {v}");
    assert!(err.contains_key("code"), "error.code missing: {v}");
    err
}

/// A minimal chat completion request for this model.
pub fn chat_body(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "hello" }] })
}

/// POSTs a JSON value to the gateway.
pub async fn post_json(gw: &Gateway, path: &str, body: &Value) -> Resp {
    post_bytes(gw, path, serde_json::to_vec(body).unwrap()).await
}

/// POSTs a JSON value with these extra headers (a gateway key, forwarding headers...).
pub async fn post_with(gw: &Gateway, path: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
    Resp::read(send_json(&gw.url(path), body, headers).await).await
}

/// POSTs a JSON value with these extra headers to `url` and returns the response as it starts, its body
/// unread (to read a stream piece by piece, or many requests at once).
pub async fn send_json(url: &str, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = http_client()
        .post(url)
        .header("content-type", "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(serde_json::to_vec(body).unwrap())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url} failed: {e:?}"))
}

/// The text of `GET /metrics` on the metrics listener at `port`.
pub async fn metrics_text(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let resp = http_client()
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url} failed: {e:?}"));
    resp.text().await.unwrap()
}

/// POSTs raw bytes with `content-type: application/json`.
pub async fn post_bytes(gw: &Gateway, path: &str, body: impl Into<reqwest::Body>) -> Resp {
    let resp = http_client()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path} failed: {e:?}"));
    Resp::read(resp).await
}

pub async fn get(gw: &Gateway, path: &str) -> Resp {
    let resp = http_client()
        .get(gw.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} failed: {e:?}"));
    Resp::read(resp).await
}

/// A raw HTTP/1.1 exchange: writes `request` as is, reads until the server closes (send `Connection: close`).
/// Blocking, so call it through [`raw_http`].
fn raw_http_blocking(addr: SocketAddr, request: Vec<u8>) -> RawResponse {
    let mut s = StdTcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&request).expect("write raw request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read raw response");
    RawResponse::parse(&buf)
}

pub async fn raw_http(addr: SocketAddr, request: Vec<u8>) -> RawResponse {
    tokio::task::spawn_blocking(move || raw_http_blocking(addr, request))
        .await
        .unwrap()
}

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Lower-cased names, in order.
    pub headers: Vec<(String, String)>,
    /// De-chunked when the response was chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    fn parse(buf: &[u8]) -> RawResponse {
        let end = find(buf, b"\r\n\r\n").unwrap_or_else(|| {
            panic!(
                "no header end in raw response: {:?}",
                String::from_utf8_lossy(buf)
            )
        });
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let raw_body = &buf[end + 4..];
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
        let body = if chunked {
            dechunk(raw_body)
        } else {
            raw_body.to_vec()
        };
        RawResponse {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = find(b, b"\r\n") {
        let size_str = String::from_utf8_lossy(&b[..i]);
        let size =
            usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = i + 2;
        out.extend_from_slice(&b[start..start + size]);
        b = &b[start + size + 2..];
    }
    out
}

/// POSTs `body` with curl and `Transfer-Encoding: chunked` (a real client's chunked upload); returns the status
/// and what curl wrote: the body, preceded by the response headers with `include_headers`.
pub async fn curl_chunked(url: &str, body: &[u8], include_headers: bool) -> (u16, String) {
    curl_upload(url, body, "Transfer-Encoding: chunked", include_headers).await
}

/// POSTs the JSON `body` with curl and one extra request `header` (which changes how curl sends it, e.g.
/// chunked or with `Expect: 100-continue`); returns the status and what curl wrote, as [`curl_chunked`].
pub async fn curl_upload(
    url: &str,
    body: &[u8],
    header: &str,
    include_headers: bool,
) -> (u16, String) {
    let header = header.to_owned();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    std::fs::write(&file, body).unwrap();
    let out_file = dir.path().join("out");
    let url = url.to_owned();
    let out = tokio::task::spawn_blocking({
        let out_file = out_file.clone();
        move || {
            let mut cmd = std::process::Command::new("curl");
            if include_headers {
                cmd.arg("-i");
            }
            cmd.args(["-sS", "--noproxy", "*", "--max-time", "60", "-o"])
                .arg(&out_file)
                .args(["-w", "%{http_code}", "-H", &header])
                .args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(format!("@{}", file.display()))
                .arg(&url)
                .output()
                .expect("run curl")
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (
        status,
        std::fs::read_to_string(&out_file).unwrap_or_default(),
    )
}

/// Reads a stream's events as they arrive: (event name, data JSON) pairs.
pub async fn read_events(resp: reqwest::Response) -> Vec<(String, Value)> {
    let mut text = String::new();
    let mut body = resp.bytes_stream();
    while let Some(piece) = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::StreamExt::next(&mut body),
    )
    .await
    .expect("stream stalled")
    {
        text.push_str(std::str::from_utf8(&piece.unwrap()).unwrap());
    }
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            (name.to_owned(), serde_json::from_str(data).unwrap())
        })
        .collect()
}
