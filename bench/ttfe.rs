//! Time to first SSE event, for `bench/run.sh`: wrk only times whole responses, and a proxy that holds the first
//! event back (Nagle + delayed ACK: ~40 ms) still looks fine there.
//!
//! `cargo run --release --example bench-ttfe -- --addr 127.0.0.1:PORT [--path /v1/chat/completions]
//! [--model fast] [-n 200] [--warmup 10]` sends N sequential `"stream": true` requests over one kept-alive
//! HTTP/1.1 connection (hand-written, TCP_NODELAY), timestamps the moment the first `data:` event has fully
//! arrived, reads the rest of the stream (to `[DONE]` and the end of the body) and prints
//! `ttfe requests=N p50_ms=X p99_ms=Y max_ms=Z`. A `--path` ending in `/messages` sends an Anthropic Messages
//! request (with `max_tokens`) and expects the stream to end with `message_stop` instead of `[DONE]`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for one whole response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

struct Args {
    addr: String,
    path: String,
    model: String,
    requests: usize,
    warmup: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: String::new(),
        path: "/v1/chat/completions".to_string(),
        model: "fast".to_string(),
        requests: 200,
        warmup: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let count = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--addr" => args.addr = value,
            "--path" => args.path = value,
            "--model" => args.model = value,
            "-n" | "--requests" => args.requests = count(&value)?,
            "--warmup" => args.warmup = count(&value)?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.addr.is_empty() || args.requests == 0 {
        return Err(
            "usage: bench-ttfe --addr HOST:PORT [--path P] [--model M] [-n N] [--warmup N]".into(),
        );
    }
    Ok(args)
}

/// How the response body is delimited.
#[derive(Clone, Copy, Debug)]
enum Framing {
    /// Chunked; the state of the decoder.
    Chunked(Chunk),
    /// This many body bytes still to come.
    Length(usize),
}

#[derive(Clone, Copy, Debug)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, this many data bytes left.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last (empty) chunk: trailer lines until an empty one.
    Trailer,
    Done,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Moves the body bytes `raw` holds into `out`, removing them (and the chunk framing) from `raw`.
/// Returns whether the body is complete.
fn decode(framing: &mut Framing, raw: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<bool, String> {
    let mut pos = 0;
    let done = loop {
        match framing {
            Framing::Length(left) => {
                let n = (*left).min(raw.len() - pos);
                out.extend_from_slice(&raw[pos..pos + n]);
                pos += n;
                *left -= n;
                break *left == 0;
            }
            Framing::Chunked(state) => match *state {
                Chunk::Size => {
                    let Some(end) = find(&raw[pos..], b"\r\n") else {
                        break false;
                    };
                    let line = std::str::from_utf8(&raw[pos..pos + end])
                        .map_err(|_| "chunk size not text")?;
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16)
                        .map_err(|_| format!("bad chunk size {line:?}"))?;
                    pos += end + 2;
                    *state = if size == 0 {
                        Chunk::Trailer
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    let n = left.min(raw.len() - pos);
                    if n == 0 {
                        break false;
                    }
                    out.extend_from_slice(&raw[pos..pos + n]);
                    pos += n;
                    *state = if n == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::DataEnd => {
                    if raw.len() - pos < 2 {
                        break false;
                    }
                    if &raw[pos..pos + 2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF".into());
                    }
                    pos += 2;
                    *state = Chunk::Size;
                }
                Chunk::Trailer => {
                    let Some(end) = find(&raw[pos..], b"\r\n") else {
                        break false;
                    };
                    pos += end + 2;
                    if end == 0 {
                        *state = Chunk::Done;
                    }
                }
                Chunk::Done => break true,
            },
        }
    };
    raw.drain(..pos);
    Ok(done)
}

/// Whether `body` holds a complete `data:` event (a `data:` line followed by a blank line).
fn has_first_event(body: &[u8]) -> bool {
    find(body, b"data:").is_some_and(|start| {
        let rest = &body[start..];
        find(rest, b"\n\n").is_some() || find(rest, b"\r\n\r\n").is_some()
    })
}

/// The response head: status, framing, and whether the server closes the connection after it.
fn parse_head(head: &[u8]) -> Result<(u16, Framing, bool), String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut chunked, mut length, mut close) = (false, None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (
            name.trim().to_ascii_lowercase(),
            value.trim().to_ascii_lowercase(),
        );
        match name.as_str() {
            "transfer-encoding" => chunked = value.contains("chunked"),
            "content-length" => length = value.parse::<usize>().ok(),
            "connection" => close = value.contains("close"),
            _ => {}
        }
    }
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked(Chunk::Size),
        (false, Some(n)) => Framing::Length(n),
        (false, None) => {
            return Err("response has neither chunked encoding nor Content-Length".into())
        }
    };
    Ok((status, framing, close))
}

struct Client {
    addr: String,
    request: Vec<u8>,
    conn: Option<TcpStream>,
    /// What the last event of a whole stream holds.
    end_marker: &'static [u8],
    /// Bytes read but not yet consumed.
    raw: Vec<u8>,
}

impl Client {
    async fn connect(&mut self) -> Result<&mut TcpStream, String> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| format!("connect {}: {e}", self.addr))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            self.raw.clear();
            self.conn = Some(stream);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| "no connection".to_string())
    }

    async fn fill(&mut self) -> Result<(), String> {
        let mut buf = [0u8; 16 * 1024];
        let conn = self.conn.as_mut().ok_or("no connection")?;
        let n = conn
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed mid-response".into());
        }
        self.raw.extend_from_slice(&buf[..n]);
        Ok(())
    }

    /// One streaming request; the time from sending it to the first complete event.
    async fn one(&mut self) -> Result<Duration, String> {
        let request = self.request.clone();
        let started = Instant::now();
        self.connect()
            .await?
            .write_all(&request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let head_end = loop {
            if let Some(i) = find(&self.raw, b"\r\n\r\n") {
                break i;
            }
            if self.raw.len() > MAX_HEAD {
                return Err("response head too large".into());
            }
            self.fill().await?;
        };
        let (status, mut framing, close) = parse_head(&self.raw[..head_end])?;
        self.raw.drain(..head_end + 4);
        if status != 200 {
            return Err(format!("status {status}"));
        }
        let mut body = Vec::new();
        let mut first = None;
        loop {
            let done = decode(&mut framing, &mut self.raw, &mut body)?;
            if first.is_none() && has_first_event(&body) {
                first = Some(started.elapsed());
            }
            if done {
                break;
            }
            self.fill().await?;
        }
        if close {
            self.conn = None;
        }
        if find(&body, self.end_marker).is_none() {
            let marker = String::from_utf8_lossy(self.end_marker);
            return Err(format!("stream ended without {marker}"));
        }
        first.ok_or_else(|| "stream had no data: event".to_string())
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args = parse_args()?;
    let messages = args.path.ends_with("/messages");
    let mut body = serde_json::json!({
        "model": args.model,
        "stream": true,
        "messages": [{"role": "user", "content": "Hello"}],
    });
    let (extra, end_marker): (_, &'static [u8]) = match messages {
        true => (("max_tokens", serde_json::json!(64)), b"message_stop"),
        false => (
            ("stream_options", serde_json::json!({"include_usage": true})),
            b"data: [DONE]",
        ),
    };
    body[extra.0] = extra.1;
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Accept: text/event-stream\r\nContent-Length: {len}\r\n\r\n{body}",
        path = args.path,
        host = args.addr,
        len = body.len(),
    );
    let mut client = Client {
        addr: args.addr.clone(),
        request: request.into_bytes(),
        conn: None,
        end_marker,
        raw: Vec::new(),
    };
    let mut times = Vec::with_capacity(args.requests);
    for i in 0..args.warmup + args.requests {
        let t = tokio::time::timeout(REQUEST_TIMEOUT, client.one())
            .await
            .map_err(|_| format!("request {i}: no complete response within {REQUEST_TIMEOUT:?}"))?
            .map_err(|e| format!("request {i}: {e}"))?;
        if i >= args.warmup {
            times.push(t);
        }
    }
    times.sort();
    println!(
        "ttfe requests={} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        times.len(),
        ms(percentile(&times, 50.0)),
        ms(percentile(&times, 99.0)),
        ms(*times.last().unwrap_or(&Duration::ZERO))
    );
    Ok(())
}
