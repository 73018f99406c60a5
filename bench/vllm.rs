//! Mock vLLM for `bench/affinity.rs`: instances with prefix caching (an LRU of message-prefix hashes) and N slots.
//!
//! Each instance serves N requests at once and queues the rest (FIFO).
//!
//! `cargo run --release --example bench-vllm -- [--listen 127.0.0.1:0] [--instances 4] [--slots 4]
//! [--cache-prefixes 2048] [--base-ms 5] [--token-ms 0.02] [--answer-tokens 20] [--decode-ms 1]
//! [--slow-instance I --slow-after-secs S --slow-factor 5]` binds one listener per instance (`--listen` is the
//! first; with port 0 each instance gets a port of its own) and prints `listening on ADDR` once per instance, in
//! instance order. The model (see bench/affinity.md):
//! - tokens of a message: its content's bytes / 4 (at least 1);
//! - the prefix `k` of a request is the hash of its messages 1..=k (role and content), chained;
//! - cached tokens: messages 1..=k for the largest k such that all of the prefixes 1..=k are in the LRU (a chain,
//!   like vLLM's block hashes), capped at n-1 (the last message is always computed);
//! - a request holds one of the instance's slots (FIFO queue when all are taken) for its prefill, `base-ms` +
//!   `token-ms` x uncached prompt tokens, then frees it and sends the first SSE event, then `answer-tokens` more
//!   events `decode-ms` apart (decoding is batched, prefill is what queues). Times are multiplied by
//!   `slow-factor` on the slow instance for requests taken from the queue `slow-after-secs` or more after the
//!   first chat request;
//! - after the prefill the prefixes 1..=n are inserted, after the answer also prefix n+1 (the messages plus the
//!   answer as an assistant message), so the next turn of a conversation finds all but its new user message;
//! - hit: a request with a previous turn (3+ messages) whose cached prefix covers at least its first n-2 messages,
//!   i.e. the whole prompt of the previous turn.
//!
//! `GET /stats` answers the instance's counters as JSON; any other GET `{"status":"ok"}`.

use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[path = "vllm/lru.rs"]
mod lru;

use lru::Lru;

/// Most instances one process serves.
const MAX_INSTANCES: usize = 64;
/// Most messages looked at in one request (the rest are ignored).
const MAX_MESSAGES: usize = 1024;
/// Most answer tokens.
const MAX_ANSWER_TOKENS: u32 = 4096;

type Events =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>;
type Body = Either<Full<Bytes>, StreamBody<Events>>;

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: String,
}

#[derive(Deserialize)]
struct Chat {
    #[serde(default)]
    model: String,
    #[serde(default)]
    messages: Vec<Message>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    /// Requests with a previous turn (3+ messages): the denominator of the hit rate.
    eligible: AtomicU64,
    hits: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    /// Requests taken from the queue after the slow-down began (counted on every instance).
    after_slow: AtomicU64,
    /// Time slots were held (prefills), in µs.
    busy_us: AtomicU64,
}

struct Shared {
    args: Args,
    /// When the first chat request arrived (any instance): the clock of `--slow-after-secs`.
    first: OnceLock<Instant>,
}

impl Shared {
    fn slow_started(&self) -> bool {
        match (self.args.slow_instance, self.first.get()) {
            (Some(_), Some(t)) => t.elapsed().as_secs_f64() >= self.args.slow_after_secs,
            _ => false,
        }
    }
}

struct Instance {
    index: usize,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    cache: Mutex<Lru>,
    counters: Counters,
}

fn tokens(m: &Message) -> u64 {
    (m.content.len() as u64 / 4).max(1)
}

/// The chained hashes of messages 1..=k for every k.
fn prefix_hashes(messages: &[Message]) -> Vec<u64> {
    let mut out = Vec::with_capacity(messages.len());
    let mut h = 0u64;
    for m in messages {
        let mut s = DefaultHasher::new();
        (h, &m.role, &m.content).hash(&mut s);
        h = s.finish();
        out.push(h);
    }
    out
}

fn extend(prev: u64, role: &str, content: &str) -> u64 {
    let mut s = DefaultHasher::new();
    (prev, role, content).hash(&mut s);
    s.finish()
}

/// The answer's text: `n` tokens of 4 bytes, fixed by the prompt so a replay sends the same history.
fn answer_text(prompt: u64, n: u32) -> String {
    let tag = format!("{:08x}", prompt as u32);
    (0..n)
        .map(|i| {
            if i == 0 {
                tag[..3].to_string() + " "
            } else {
                "tok ".to_string()
            }
        })
        .collect::<String>()
}

fn sse(event: serde_json::Value) -> Result<Frame<Bytes>, Infallible> {
    Ok(Frame::data(Bytes::from(format!("data: {event}\n\n"))))
}

impl Instance {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, hyper::Error> {
        if req.method() != Method::POST {
            if req.uri().path() == "/stats" {
                return Ok(json_response(StatusCode::OK, self.stats()));
            }
            return Ok(json_response(StatusCode::OK, json!({"status": "ok"})));
        }
        let body = req.into_body().collect().await?.to_bytes();
        let Ok(mut chat) = serde_json::from_slice::<Chat>(&body) else {
            let err = json!({"error": {"message": "body is not a chat request", "type": "invalid_request_error"}});
            return Ok(json_response(StatusCode::BAD_REQUEST, err));
        };
        chat.messages.truncate(MAX_MESSAGES);
        if chat.messages.is_empty() {
            let err = json!({"error": {"message": "no messages", "type": "invalid_request_error"}});
            return Ok(json_response(StatusCode::BAD_REQUEST, err));
        }
        self.shared.first.get_or_init(Instant::now);
        let Ok(permit) = self.slots.clone().acquire_owned().await else {
            return Ok(json_response(StatusCode::SERVICE_UNAVAILABLE, json!({})));
        };
        Ok(self.serve(chat, permit).await)
    }

    /// Runs the prefill in the slot the caller holds, frees it, and answers the stream (decoding is batched: the
    /// answer's tokens hold no slot).
    async fn serve(self: Arc<Self>, chat: Chat, permit: OwnedSemaphorePermit) -> Response<Body> {
        let held = tokio::time::Instant::now();
        let args = &self.shared.args;
        let slow_now = self.shared.slow_started();
        let factor = if slow_now && args.slow_instance == Some(self.index) {
            args.slow_factor
        } else {
            1.0
        };
        let n = chat.messages.len();
        let hashes = prefix_hashes(&chat.messages);
        let cached_msgs = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            hashes[..n - 1]
                .iter()
                .take_while(|h| cache.contains(**h))
                .count()
        };
        let prompt: u64 = chat.messages.iter().map(tokens).sum();
        let cached: u64 = chat.messages[..cached_msgs].iter().map(tokens).sum();
        let c = &self.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        c.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        c.cached_tokens.fetch_add(cached, Ordering::Relaxed);
        if slow_now {
            c.after_slow.fetch_add(1, Ordering::Relaxed);
        }
        if n >= 3 {
            c.eligible.fetch_add(1, Ordering::Relaxed);
            if cached_msgs >= n - 2 {
                c.hits.fetch_add(1, Ordering::Relaxed);
            }
        }
        let prefill = (args.base_ms + args.token_ms * (prompt - cached) as f64) * factor;
        tokio::time::sleep(Duration::from_secs_f64(prefill / 1000.0)).await;
        drop(permit);
        let us = u64::try_from(held.elapsed().as_micros()).unwrap_or(u64::MAX);
        c.busy_us.fetch_add(us, Ordering::Relaxed);
        {
            // Deepest first, so the shorter prefixes are the more recently used (evicted last, as the chain needs).
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for h in hashes.iter().rev() {
                cache.touch(*h);
            }
        }
        let last = hashes[n - 1];
        let answer = answer_text(last, args.answer_tokens);
        let with_answer = extend(last, "assistant", &answer);
        let completion = u64::from(args.answer_tokens);
        let model = chat.model;
        let chunk = move |delta: serde_json::Value, usage: serde_json::Value| {
            json!({"id": "chatcmpl-sim", "object": "chat.completion.chunk", "created": 1_700_000_000,
                   "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": null}], "usage": usage})
        };
        let words: Vec<String> = answer.split_inclusive(' ').map(str::to_string).collect();
        let decode = Duration::from_secs_f64(args.decode_ms * factor / 1000.0);
        let start = tokio::time::Instant::now();
        let first = sse(chunk(
            json!({"role": "assistant", "content": ""}),
            serde_json::Value::Null,
        ));
        let me = self.clone();
        let rest = futures_util::stream::unfold(Some(0usize), move |i| {
            let words = words.clone();
            let chunk = chunk.clone();
            let me = me.clone();
            async move {
                let i = i?;
                if i < words.len() {
                    tokio::time::sleep_until(start + decode * (i as u32 + 1)).await;
                    return Some((
                        sse(chunk(json!({"content": words[i]}), serde_json::Value::Null)),
                        Some(i + 1),
                    ));
                }
                // The answer is now part of the cache.
                me.cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .touch(with_answer);
                let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion,
                                   "total_tokens": prompt + completion,
                                   "prompt_tokens_details": {"cached_tokens": cached}});
                let mut event = chunk(json!({}), usage);
                event["choices"] = json!([]);
                let done = Frame::data(Bytes::from(format!("data: {event}\n\ndata: [DONE]\n\n")));
                Some((Ok(done), None))
            }
        });
        let events: Events = Box::pin(futures_util::StreamExt::chain(
            futures_util::stream::iter([first]),
            rest,
        ));
        let mut resp = Response::new(Either::Right(StreamBody::new(events)));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        resp
    }

    fn stats(&self) -> serde_json::Value {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "instance": self.index,
            "requests": get(&c.requests),
            "eligible": get(&c.eligible),
            "hits": get(&c.hits),
            "prompt_tokens": get(&c.prompt_tokens),
            "cached_tokens": get(&c.cached_tokens),
            "after_slow": get(&c.after_slow),
            "busy_us": get(&c.busy_us),
            "slow": self.shared.slow_started() && self.shared.args.slow_instance == Some(self.index),
        })
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

struct Args {
    listen: SocketAddr,
    instances: usize,
    slots: usize,
    cache_prefixes: usize,
    base_ms: f64,
    token_ms: f64,
    answer_tokens: u32,
    decode_ms: f64,
    slow_instance: Option<usize>,
    slow_after_secs: f64,
    slow_factor: f64,
}

const USAGE: &str = "usage: bench-vllm [--listen ADDR] [--instances N] [--slots N] [--cache-prefixes K] \
[--base-ms MS] [--token-ms MS] [--answer-tokens N] [--decode-ms MS] [--slow-instance I] [--slow-after-secs S] \
[--slow-factor F]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        instances: 4,
        slots: 4,
        cache_prefixes: 2048,
        base_ms: 5.0,
        token_ms: 0.02,
        answer_tokens: 20,
        decode_ms: 1.0,
        slow_instance: None,
        slow_after_secs: 0.0,
        slow_factor: 5.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        let ms = |v: &str| match v.parse::<f64>() {
            Ok(x) if (0.0..=60_000.0).contains(&x) => Ok(x),
            Ok(_) => Err(format!("{flag} {v}: out of range 0..60000")),
            Err(e) => Err(format!("{flag} {v}: {e}")),
        };
        match flag.as_str() {
            "--listen" => a.listen = value.parse().map_err(|e| bad(&e))?,
            "--instances" => a.instances = value.parse().map_err(|e| bad(&e))?,
            "--slots" => a.slots = value.parse().map_err(|e| bad(&e))?,
            "--cache-prefixes" => a.cache_prefixes = value.parse().map_err(|e| bad(&e))?,
            "--base-ms" => a.base_ms = ms(&value)?,
            "--token-ms" => a.token_ms = ms(&value)?,
            "--answer-tokens" => a.answer_tokens = value.parse().map_err(|e| bad(&e))?,
            "--decode-ms" => a.decode_ms = ms(&value)?,
            "--slow-instance" => a.slow_instance = Some(value.parse().map_err(|e| bad(&e))?),
            "--slow-after-secs" => a.slow_after_secs = ms(&value)?,
            "--slow-factor" => a.slow_factor = ms(&value)?,
            _ => return Err(format!("unknown flag {flag}; {USAGE}")),
        }
    }
    if !(1..=MAX_INSTANCES).contains(&a.instances) || !(1..=100_000).contains(&a.slots) {
        return Err(format!(
            "--instances must be 1..={MAX_INSTANCES}, --slots 1..=100000"
        ));
    }
    if a.cache_prefixes > 10_000_000 || a.answer_tokens == 0 || a.answer_tokens > MAX_ANSWER_TOKENS
    {
        return Err(format!(
            "--cache-prefixes must be <= 10000000, --answer-tokens 1..={MAX_ANSWER_TOKENS}"
        ));
    }
    if a.slow_instance.is_some_and(|i| i >= a.instances) {
        return Err("--slow-instance must be below --instances".into());
    }
    Ok(a)
}

async fn serve(listener: TcpListener, instance: Arc<Instance>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let instance = instance.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| instance.clone().handle(req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = parse_args()?;
    let (listen, instances, slots, capacity) =
        (args.listen, args.instances, args.slots, args.cache_prefixes);
    let shared = Arc::new(Shared {
        args,
        first: OnceLock::new(),
    });
    let mut tasks = Vec::with_capacity(instances);
    for index in 0..instances {
        let mut addr = listen;
        if addr.port() != 0 {
            let port =
                u16::try_from(usize::from(addr.port()) + index).map_err(|_| "port out of range")?;
            addr.set_port(port);
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("bind {addr}: {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        let instance = Arc::new(Instance {
            index,
            shared: shared.clone(),
            slots: Arc::new(Semaphore::new(slots)),
            cache: Mutex::new(Lru::new(capacity)),
            counters: Counters::default(),
        });
        // bench-affinity reads these lines, in instance order, to learn the ports.
        println!("listening on {bound}");
        tasks.push(tokio::spawn(serve(listener, instance)));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
