//! Fake OpenAI backend for `bench/run.sh`: answers every POST at once (or after a fixed wait), so the benchmark
//! measures the proxy in front of it.
//!
//! `cargo run --release --example bench-backend -- [--listen 127.0.0.1:0] [--slow-ms 20]` prints
//! `listening on ADDR` once bound. The request's `model` picks the answer time: `slow` waits `--slow-ms` before
//! answering, anything else (`fast`) answers at once. `"stream": true` gets 20 SSE events then `data: [DONE]`,
//! with no pause between events (for `slow` the wait is before the first); otherwise a chat completion with usage.
//! Any GET answers `{"status":"ok"}` (readiness checks).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Chunk events per stream, the usage event included; `data: [DONE]` comes after them.
const SSE_EVENTS: usize = 20;

const HEALTH: &[u8] = br#"{"status":"ok"}"#;
const NOT_JSON: &str = concat!(
    r#"{"error":{"message":"body is not JSON","#,
    r#""type":"invalid_request_error","param":null,"code":null}}"#
);

type Events = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;
type Body = Either<Full<Bytes>, StreamBody<Events>>;

/// Only what picks the answer; every other field of the request is ignored.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    model: String,
    #[serde(default)]
    stream: bool,
}

/// The prebuilt answers for one model name, so a request costs no formatting.
struct Answers {
    json: Bytes,
    sse: Vec<Bytes>,
}

impl Answers {
    fn new(model: &str) -> Answers {
        let json = json!({
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
        });
        let chunk = |choices: Value, usage: Value| {
            let event = json!({
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": choices,
                "usage": usage,
            });
            Bytes::from(format!("data: {event}\n\n"))
        };
        let delta = |delta: Value, finish: Value| {
            chunk(
                json!([{"index": 0, "delta": delta, "finish_reason": finish}]),
                Value::Null,
            )
        };
        // As OpenAI streams with `stream_options.include_usage`: role, content, finish, then usage alone.
        let completion_tokens = SSE_EVENTS - 2;
        let mut sse = Vec::with_capacity(SSE_EVENTS + 1);
        sse.push(delta(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ));
        for i in 1..completion_tokens {
            sse.push(delta(json!({"content": format!("token{i} ")}), Value::Null));
        }
        sse.push(delta(json!({}), json!("stop")));
        sse.push(chunk(
            json!([]),
            json!({
                "prompt_tokens": 9,
                "completion_tokens": completion_tokens,
                "total_tokens": completion_tokens + 9,
            }),
        ));
        sse.push(Bytes::from_static(b"data: [DONE]\n\n"));
        Answers {
            json: Bytes::from(json.to_string()),
            sse,
        }
    }
}

struct Backend {
    fast: Answers,
    slow: Answers,
    slow_delay: Duration,
}

impl Backend {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Body>, hyper::Error> {
        if req.method() != Method::POST {
            return Ok(json_response(StatusCode::OK, Bytes::from_static(HEALTH)));
        }
        let body = req.into_body().collect().await?.to_bytes();
        let Ok(probe) = serde_json::from_slice::<Probe>(&body) else {
            let err = Bytes::from_static(NOT_JSON.as_bytes());
            return Ok(json_response(StatusCode::BAD_REQUEST, err));
        };
        let answers = if probe.model == "slow" {
            tokio::time::sleep(self.slow_delay).await;
            &self.slow
        } else {
            &self.fast
        };
        if !probe.stream {
            return Ok(json_response(StatusCode::OK, answers.json.clone()));
        }
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = answers
            .sse
            .iter()
            .map(|e| Ok(Frame::data(e.clone())))
            .collect();
        let events = StreamBody::new(futures_util::stream::iter(frames));
        let mut resp = Response::new(Either::Right(events));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(resp)
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Either::Left(Full::new(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

struct Args {
    listen: SocketAddr,
    slow_ms: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        slow_ms: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => {
                args.listen = value
                    .parse()
                    .map_err(|e| format!("--listen {value}: {e}"))?
            }
            "--slow-ms" => {
                args.slow_ms = value
                    .parse()
                    .map_err(|e| format!("--slow-ms {value}: {e}"))?
            }
            _ => {
                return Err(format!(
                    "unknown flag {flag}; usage: bench-backend [--listen ADDR] [--slow-ms N]"
                ))
            }
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = parse_args()?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let backend = Arc::new(Backend {
        fast: Answers::new("fast"),
        slow: Answers::new("slow"),
        slow_delay: Duration::from_millis(args.slow_ms),
    });
    // run.sh waits for this line to learn the port.
    println!("listening on {addr}");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Without it a small answer can wait ~40 ms for the proxy's delayed ACK (Nagle).
        let _ = stream.set_nodelay(true);
        let backend = backend.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let backend = backend.clone();
                async move { backend.handle(req).await }
            });
            // Errors here are clients going away mid-request (wrk stopping); nothing to do.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
