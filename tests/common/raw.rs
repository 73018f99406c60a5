//! A raw HTTP/1 client for the edge tests: what the gateway sends back, byte for byte, parsed into responses,
//! and whether it closes the connection. Every wait has a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{client, config, Gateway, Mock};

/// What came back on one connection.
pub struct Exchange {
    pub bytes: Vec<u8>,
    /// The gateway closed the connection (read 0 or reset) within the wait.
    pub closed: bool,
}

impl Exchange {
    pub fn responses(&self) -> Vec<Parsed> {
        parse_responses(&self.bytes)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Writes `request` on a new connection, then reads until the gateway closes it or `within` passes.
pub async fn exchange(addr: SocketAddr, request: &[u8], within: Duration) -> Exchange {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    read_until_closed(&mut conn, within).await
}

/// Reads until the peer closes or `within` passes.
pub async fn read_until_closed(conn: &mut TcpStream, within: Duration) -> Exchange {
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
pub async fn read_one(conn: &mut TcpStream, within: Duration) -> Parsed {
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
pub struct Parsed {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    /// De-chunked.
    pub body: Vec<u8>,
    pub chunked: bool,
}

impl Parsed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One response at the start of `buf` and its length; `to_end`: a body without length runs to the end.
pub fn parse_one(buf: &[u8], to_end: bool) -> Option<(Parsed, usize)> {
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
pub fn parse_responses(mut buf: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    while let Some((parsed, used)) = parse_one(buf, true) {
        out.push(parsed);
        buf = &buf[used..];
    }
    out
}

pub async fn gateway_with_mock() -> (Gateway, Mock) {
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

pub const WAIT: Duration = Duration::from_secs(5);
pub const CHAT: &str = r#"{"model":"m1","messages":[{"role":"user","content":"hi"}]}"#;
pub const STREAM_CHAT: &str =
    r#"{"model":"m1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

pub fn post(version: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /v1/chat/completions {version}\r\nHost: gw\r\nContent-Type: application/json\r\n\
         {extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads `n` complete responses from `conn`, in order.
pub async fn read_n(conn: &mut TcpStream, n: usize, within: Duration) -> Vec<Parsed> {
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

pub fn chat_answer_model(p: &Parsed) -> String {
    let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
    v["model"].as_str().unwrap().to_owned()
}
