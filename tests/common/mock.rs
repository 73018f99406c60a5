//! A mock OpenAI backend on 127.0.0.1:0 that records every request and answers as the test tells it to.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

/// What the mock does with the next requests.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// A chat completion JSON echoing the request's model, or an SSE stream when the body has `"stream": true`.
    Answer,
    /// This status with this JSON body.
    Fail { status: u16, body: String },
    /// Read the request, record it, never answer.
    Hang,
    /// Close each accepted connection at once, before reading anything (counted in `connections()`).
    Close,
    /// The first `n` requests get this status and JSON body, the later ones are answered as `Answer`
    /// (`n` counts down as requests arrive).
    FailFirst { n: usize, status: u16, body: String },
    /// This status with this JSON body and these extra headers (e.g. `Retry-After`).
    FailWithHeaders {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// Plain-HTTP mocks, decided per connection (set it before the gateway connects): read and record the
    /// request, answer 200 with the first `events` events of a longer SSE stream (chunked), then close the
    /// connection without the terminating chunk.
    StreamThenAbort { events: usize },
}

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as on the request line.
    pub uri: String,
    /// Lower-cased names, in order received; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Recorded {
    /// The first value of this header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of this header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("recorded body is JSON")
    }
}

/// How the SSE answer is shaped.
#[derive(Clone, Debug)]
struct SseShape {
    /// Chunk events before `[DONE]`.
    events: usize,
    /// Pause before every event after the first.
    delay: Duration,
    /// After the first event, wait for [`Mock::release`] before sending the rest.
    hold_after_first: bool,
}

struct State {
    name: String,
    requests: Mutex<Vec<Recorded>>,
    behavior: Mutex<Behavior>,
    sse: Mutex<SseShape>,
    connections: AtomicUsize,
    /// TLS mocks: the SNI of each completed handshake, in order.
    sni: Mutex<Vec<Option<String>>>,
    /// TLS mocks: the error of each failed handshake (e.g. the client's alert), in order.
    tls_errors: Mutex<Vec<String>>,
    streams_finished: AtomicUsize,
    release: watch::Sender<bool>,
    /// What `Answer` says (see [`Mock::set_reply`]).
    reply: Mutex<Reply>,
    /// `GET .../models` answers (see [`Mock::set_models`]).
    models: Mutex<Option<Vec<Value>>>,
}

/// A running mock backend; its accept loop stops when the mock is dropped.
pub struct Mock {
    pub name: String,
    pub addr: SocketAddr,
    /// Served over TLS (see [`Mock::start_tls`]).
    pub tls: bool,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    /// Starts a mock answering normally. Needs a tokio runtime (the test's).
    pub async fn start(name: &str) -> Mock {
        Self::start_with(name, Behavior::Answer).await
    }

    pub async fn start_with(name: &str, behavior: Behavior) -> Mock {
        Self::start_inner(name, behavior, None).await
    }

    /// Starts a mock answering normally over TLS with this acceptor (see `common::tls`).
    pub async fn start_tls(name: &str, acceptor: TlsAcceptor) -> Mock {
        Self::start_inner(name, Behavior::Answer, Some(acceptor)).await
    }

    async fn start_inner(name: &str, behavior: Behavior, tls: Option<TlsAcceptor>) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("mock bind");
        let addr = listener.local_addr().unwrap();
        let (release, _) = watch::channel(false);
        let state = Arc::new(State {
            name: name.to_string(),
            requests: Mutex::new(Vec::new()),
            behavior: Mutex::new(behavior),
            sse: Mutex::new(SseShape {
                events: 3,
                delay: Duration::ZERO,
                hold_after_first: false,
            }),
            connections: AtomicUsize::new(0),
            sni: Mutex::new(Vec::new()),
            tls_errors: Mutex::new(Vec::new()),
            streams_finished: AtomicUsize::new(0),
            release,
            reply: Mutex::new(Reply::default()),
            models: Mutex::new(None),
        });
        let is_tls = tls.is_some();
        let task = tokio::spawn(accept_loop(listener, state.clone(), tls));
        Mock {
            name: name.to_string(),
            addr,
            tls: is_tls,
            state,
            task,
        }
    }

    /// `http://127.0.0.1:PORT` + suffix (e.g. `/v1`); `https://` for a TLS mock.
    pub fn base_url(&self, suffix: &str) -> String {
        self.url_with_host(&self.addr.ip().to_string(), suffix)
    }

    /// `http(s)://HOST:PORT` + suffix: the mock's port under another name (e.g. `localhost`, for SNI).
    pub fn url_with_host(&self, host: &str, suffix: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{host}:{}{suffix}", self.addr.port())
    }

    pub fn set_behavior(&self, behavior: Behavior) {
        *self.state.behavior.lock().unwrap() = behavior;
    }

    /// SSE answers: `events` chunk events, `delay` between them, then `data: [DONE]`.
    pub fn set_sse(&self, events: usize, delay: Duration) {
        let mut s = self.state.sse.lock().unwrap();
        s.events = events;
        s.delay = delay;
    }

    /// SSE answers send their first event, then wait for [`Mock::release`].
    pub fn hold_after_first_event(&self) {
        self.state.sse.lock().unwrap().hold_after_first = true;
    }

    /// Lets held SSE answers continue.
    pub fn release(&self) {
        self.state.release.send_replace(true);
    }

    /// Requests recorded so far (a request is recorded once its body was read in full).
    pub fn count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The only request received; panics unless exactly one arrived.
    pub fn single(&self) -> Recorded {
        let r = self.requests();
        assert_eq!(
            r.len(),
            1,
            "mock {} expected exactly 1 request, got {}",
            self.name,
            r.len()
        );
        r.into_iter().next().unwrap()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// TLS mocks: the SNI sent in each completed handshake (`None`: no SNI), in order.
    pub fn sni(&self) -> Vec<Option<String>> {
        self.state.sni.lock().unwrap().clone()
    }

    /// TLS mocks: handshakes that failed (e.g. the client rejected the certificate).
    pub fn tls_failures(&self) -> usize {
        self.state.tls_errors.lock().unwrap().len()
    }

    /// TLS mocks: why each failed handshake failed, as rustls reported it (`received fatal alert: UnknownCA`).
    pub fn tls_errors(&self) -> Vec<String> {
        self.state.tls_errors.lock().unwrap().clone()
    }

    /// SSE answers fully written (after `[DONE]`).
    pub fn streams_finished(&self) -> usize {
        self.state.streams_finished.load(Ordering::SeqCst)
    }

    /// The exact bytes this mock sends for a stream of `events` events for `model`.
    pub fn sse_events(model: &str, events: usize) -> Vec<String> {
        let mut out: Vec<String> = (0..events)
            .map(|i| {
                let finish = if i + 1 == events { json!("stop") } else { Value::Null };
                let chunk = json!({
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 1700000000,
                    "model": model,
                    "choices": [{ "index": 0, "delta": { "content": format!("c{i} ") }, "finish_reason": finish }],
                });
                format!("data: {chunk}\n\n")
            })
            .collect();
        out.push("data: [DONE]\n\n".to_string());
        out
    }

    /// The content the SSE events of [`Mock::sse_events`] add up to.
    pub fn sse_text(events: usize) -> String {
        (0..events).map(|i| format!("c{i} ")).collect()
    }

    /// The JSON answer for a non-stream request of this model.
    pub fn answer_json(model: &str) -> Value {
        json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": "hi" }, "finish_reason": "stop" }],
            "usage": { "prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4 },
        })
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, tls: Option<TlsAcceptor>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        state.connections.fetch_add(1, Ordering::SeqCst);
        if matches!(*state.behavior.lock().unwrap(), Behavior::Close) {
            drop(stream);
            continue;
        }
        let abort_after = match *state.behavior.lock().unwrap() {
            Behavior::StreamThenAbort { events } if tls.is_none() => Some(events),
            _ => None,
        };
        if let Some(events) = abort_after {
            tokio::spawn(stream_then_abort(state.clone(), stream, events));
            continue;
        }
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(acceptor) = tls else {
                return serve(state, stream).await;
            };
            match acceptor.accept(stream).await {
                Ok(stream) => {
                    let sni = stream.get_ref().1.server_name().map(str::to_string);
                    state.sni.lock().unwrap().push(sni);
                    serve(state, stream).await;
                }
                Err(e) => state.tls_errors.lock().unwrap().push(e.to_string()),
            }
        });
    }
}

/// Serves HTTP/1.1 on one accepted (plain or TLS) connection until it closes.
async fn serve<S>(state: Arc<State>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(state.clone(), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let recorded = Recorded {
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
    };
    state.requests.lock().unwrap().push(recorded);

    let behavior = state.behavior.lock().unwrap().clone();
    // FailFirst counts down under the lock and acts as Fail, then as Answer.
    let behavior = take_fail_first(&state).unwrap_or(behavior);
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = parsed
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let stream = parsed
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let models_list = models_answer(&state, &parts);
    let resp = match behavior {
        Behavior::Hang | Behavior::Close => std::future::pending().await,
        Behavior::Fail { status, body } => {
            response(status, "application/json", &state.name, full(body))
        }
        Behavior::FailWithHeaders {
            status,
            body,
            headers,
        } => {
            let mut resp = response(status, "application/json", &state.name, full(body));
            for (k, v) in headers {
                let name = hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap();
                resp.headers_mut().insert(name, v.parse().unwrap());
            }
            resp
        }
        // take_fail_first resolved it; only a set_behavior racing this request gets here.
        Behavior::FailFirst { .. } => panic!("mock {}: behavior changed mid-request", state.name),
        Behavior::StreamThenAbort { .. } => {
            panic!(
                "mock {}: StreamThenAbort set after the gateway connected",
                state.name
            )
        }
        Behavior::Answer if models_list.is_some() => response(
            200,
            "application/json",
            &state.name,
            full(models_list.unwrap()),
        ),
        Behavior::Answer if stream => {
            let shape = state.sse.lock().unwrap().clone();
            response(
                200,
                "text/event-stream",
                &state.name,
                sse_body(state.clone(), model, shape, asks_usage(&parsed)),
            )
        }
        Behavior::Answer => {
            let text = state.reply.lock().unwrap().body.clone();
            let text = text.unwrap_or_else(|| Mock::answer_json(&model).to_string());
            response(200, "application/json", &state.name, full(text))
        }
    };
    Ok(resp)
}

fn full(s: String) -> Body {
    Full::new(Bytes::from(s)).boxed()
}

fn response(status: u16, content_type: &str, name: &str, body: Body) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("x-mock", name)
        .body(body)
        .unwrap()
}

/// A chunked body fed by a task that writes the events with the configured pauses.
fn sse_body(state: Arc<State>, model: String, shape: SseShape, include_usage: bool) -> Body {
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let mut release = state.release.subscribe();
    tokio::spawn(async move {
        for (i, event) in stream_events(&state, &model, shape.events, include_usage)
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                if i == 1 && shape.hold_after_first {
                    let _ = release.wait_for(|r| *r).await;
                }
                if !shape.delay.is_zero() {
                    tokio::time::sleep(shape.delay).await;
                }
            }
            if tx.send(Bytes::from(event)).await.is_err() {
                return;
            }
        }
        state.streams_finished.fetch_add(1, Ordering::SeqCst);
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    });
    StreamBody::new(stream).boxed()
}

/// For `FailFirst`: `Fail` while `n` > 0 (counting it down), then `Answer`; `None` for other behaviors.
fn take_fail_first(state: &State) -> Option<Behavior> {
    let mut behavior = state.behavior.lock().unwrap();
    let Behavior::FailFirst { n, status, body } = &mut *behavior else {
        return None;
    };
    if *n == 0 {
        return Some(Behavior::Answer);
    }
    *n -= 1;
    Some(Behavior::Fail {
        status: *status,
        body: body.clone(),
    })
}

/// `StreamThenAbort`: one request read by hand (the gateway sends `Content-Length`), recorded, answered with
/// `events` chunked SSE events, then the connection closed without the `0\r\n\r\n` terminator.
async fn stream_then_abort(state: Arc<State>, mut stream: tokio::net::TcpStream, events: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut piece = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match stream.read(&mut piece).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&piece[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split_whitespace();
    let method = request_line.next().unwrap_or_default().to_string();
    let uri = request_line.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match stream.read(&mut piece).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&piece[..n]),
        }
    }
    body.truncate(len);
    let model = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string());
    state.requests.lock().unwrap().push(Recorded {
        method,
        uri,
        headers,
        body: Bytes::from(body),
    });
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nx-mock: {}\r\n\r\n",
        state.name
    );
    for event in Mock::sse_events(&model, events + 1).iter().take(events) {
        out.push_str(&format!("{:x}\r\n{event}\r\n", event.len()));
    }
    let _ = stream.write_all(out.as_bytes()).await;
    let _ = stream.flush().await;
    // Dropping the stream sends a FIN: the body ends without its terminating chunk.
}

// ---------------------------------------------------------------------------------------------------------------
// Response content: what `Answer` says (usage chunk on request, scripted bodies and streams)
// ---------------------------------------------------------------------------------------------------------------

/// What `Behavior::Answer` says instead of its defaults (see [`Mock::set_reply`]); every text is sent byte for
/// byte. The builders below make OpenAI-shaped ones (2 choices, reasoning, split tool calls, completions text).
#[derive(Clone, Debug, Default)]
pub struct Reply {
    /// A non-stream answer's body (sent with `Content-Length`); None: [`Mock::answer_json`].
    pub body: Option<String>,
    /// A stream answer's `data:` payloads, each sent as `data: {payload}\n\n`, then `data: [DONE]\n\n`;
    /// None: [`Mock::sse_events`] (with [`Mock::usage_event`] when asked).
    pub events: Option<Vec<String>>,
    /// For `events`: the usage-only chunk's payload, sent before `[DONE]` only when the request has
    /// `stream_options.include_usage: true`, as OpenAI does; None: the stream never reports usage.
    pub usage_event: Option<String>,
    /// Stream answers (scripted or default): the SSE text cut into frames of at most this many bytes, with the
    /// [`Mock::set_sse`] delay between frames, so that events reach the gateway split across reads.
    pub piece_bytes: Option<usize>,
    /// A stream answer sent as exactly these SSE frames (an Anthropic stream, with its `event:` lines and no
    /// `[DONE]`) instead of `events`.
    pub frames: Option<Vec<String>>,
}

impl Reply {
    /// A non-stream body, exactly this text.
    pub fn body(text: impl Into<String>) -> Reply {
        Reply {
            body: Some(text.into()),
            ..Reply::default()
        }
    }

    /// A stream of these `data:` payloads, with this usage-only chunk when the request asks for usage.
    pub fn stream(events: Vec<String>, usage_event: Option<String>) -> Reply {
        Reply {
            events: Some(events),
            usage_event,
            ..Reply::default()
        }
    }

    /// The exact SSE events sent for a stream request (`include_usage`: the request asked for usage).
    pub fn sse(&self, include_usage: bool) -> Vec<String> {
        let events = self.events.clone().unwrap_or_default();
        let usage = self.usage_event.iter().filter(|_| include_usage);
        let mut out: Vec<String> = events
            .iter()
            .chain(usage)
            .map(|e| format!("data: {e}\n\n"))
            .collect();
        out.push("data: [DONE]\n\n".to_string());
        out
    }
}

/// A `chat.completion.chunk` payload with these `choices` (compact JSON, keys in this order).
pub fn chat_chunk(model: &str, choices: Value) -> String {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": choices,
    })
    .to_string()
}

/// A completions (`text_completion`) stream payload with these `choices`.
pub fn text_chunk(model: &str, choices: Value) -> String {
    json!({
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1700000000,
        "model": model,
        "choices": choices,
    })
    .to_string()
}

/// The usage-only chunk (`"choices": []`) of a stream whose chunks are `object`.
pub fn usage_chunk(model: &str, object: &str, usage: Value) -> String {
    let id = if object == "text_completion" {
        "cmpl-1"
    } else {
        "chatcmpl-1"
    };
    json!({
        "id": id,
        "object": object,
        "created": 1700000000,
        "model": model,
        "choices": [],
        "usage": usage,
    })
    .to_string()
}

/// `{"prompt_tokens":p,"completion_tokens":c,"total_tokens":p+c}`.
pub fn usage_json(prompt: u64, completion: u64) -> Value {
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

/// A chat stream like OpenAI's with `n` = `pieces.len()` choices: a role chunk with `"content": ""` per choice,
/// then one chunk per piece of each choice (choices interleaved), then a `finish_reason` chunk per choice.
/// `pieces[i]` are choice i's content deltas. `prefix` goes in front of each choice's first non-empty piece
/// (`""` for what a backend sends; the special prefix, JSON-escaped, for what the caller should get).
pub fn chat_stream_events(model: &str, pieces: &[&[&str]], prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for index in 0..pieces.len() {
        let delta = json!({ "role": "assistant", "content": "" });
        out.push(chat_chunk(
            model,
            json!([{ "index": index, "delta": delta, "logprobs": null, "finish_reason": null }]),
        ));
    }
    let longest = pieces.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut prefixed = vec![false; pieces.len()];
    for step in 0..longest {
        for (index, choice) in pieces.iter().enumerate() {
            let Some(piece) = choice.get(step) else {
                continue;
            };
            let chunk = chat_chunk(
                model,
                json!([{ "index": index, "delta": { "content": piece }, "logprobs": null, "finish_reason": null }]),
            );
            out.push(with_prefix(chunk, piece, prefix, &mut prefixed[index]));
        }
    }
    for index in 0..pieces.len() {
        out.push(chat_chunk(
            model,
            json!([{ "index": index, "delta": {}, "logprobs": null, "finish_reason": "stop" }]),
        ));
    }
    out
}

/// A completions stream: one chunk per piece of each choice (`text` deltas), the last with `finish_reason`.
/// `prefix` as in [`chat_stream_events`].
pub fn text_stream_events(model: &str, pieces: &[&[&str]], prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let longest = pieces.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut prefixed = vec![false; pieces.len()];
    for step in 0..longest {
        for (index, choice) in pieces.iter().enumerate() {
            let Some(piece) = choice.get(step) else {
                continue;
            };
            let finish = if step + 1 == choice.len() {
                json!("stop")
            } else {
                Value::Null
            };
            let chunk = text_chunk(
                model,
                json!([{ "text": piece, "index": index, "logprobs": null, "finish_reason": finish }]),
            );
            out.push(with_prefix(chunk, piece, prefix, &mut prefixed[index]));
        }
    }
    out
}

/// A DeepSeek-style reasoning stream: `reasoning_content` deltas (content null), then content deltas.
/// `prefix` goes in front of the first non-empty content delta only.
pub fn reasoning_stream_events(
    model: &str,
    reasoning: &[&str],
    content: &[&str],
    prefix: &str,
) -> Vec<String> {
    let mut out = vec![chat_chunk(
        model,
        json!([{ "index": 0, "delta": { "role": "assistant", "content": null, "reasoning_content": "" }, "finish_reason": null }]),
    )];
    for piece in reasoning {
        out.push(chat_chunk(
            model,
            json!([{ "index": 0, "delta": { "content": null, "reasoning_content": piece }, "finish_reason": null }]),
        ));
    }
    let mut prefixed = false;
    for piece in content {
        let chunk = chat_chunk(
            model,
            json!([{ "index": 0, "delta": { "content": piece, "reasoning_content": null }, "finish_reason": null }]),
        );
        out.push(with_prefix(chunk, piece, prefix, &mut prefixed));
    }
    out.push(chat_chunk(
        model,
        json!([{ "index": 0, "delta": {}, "finish_reason": "stop" }]),
    ));
    out
}

/// A tool call split over chunks as OpenAI sends it: id and name first, then the arguments in `arguments`
/// pieces; no content at all (`content: null` in the first delta).
pub fn tool_call_stream_events(model: &str, name: &str, arguments: &[&str]) -> Vec<String> {
    let first = json!({
        "role": "assistant",
        "content": null,
        "tool_calls": [{ "index": 0, "id": "call_1", "type": "function", "function": { "name": name, "arguments": "" } }],
    });
    let mut out = vec![chat_chunk(
        model,
        json!([{ "index": 0, "delta": first, "finish_reason": null }]),
    )];
    for piece in arguments {
        let delta = json!({ "tool_calls": [{ "index": 0, "function": { "arguments": piece } }] });
        out.push(chat_chunk(
            model,
            json!([{ "index": 0, "delta": delta, "finish_reason": null }]),
        ));
    }
    out.push(chat_chunk(
        model,
        json!([{ "index": 0, "delta": {}, "finish_reason": "tool_calls" }]),
    ));
    out
}

/// Puts the (JSON-escaped) `prefix` inside the first `"content":"` / `"text":"` string of `chunk` when `piece`
/// is the choice's first non-empty one.
fn with_prefix(chunk: String, piece: &str, prefix: &str, done: &mut bool) -> String {
    if *done || piece.is_empty() || prefix.is_empty() {
        return chunk;
    }
    *done = true;
    let quoted = Value::from(piece).to_string();
    for key in ["\"content\":", "\"text\":"] {
        let needle = format!("{key}{quoted}");
        if let Some(at) = chunk.find(&needle) {
            let insert_at = at + key.len() + 1;
            return format!("{}{prefix}{}", &chunk[..insert_at], &chunk[insert_at..]);
        }
    }
    panic!("no content/text {quoted} in {chunk}")
}

/// The request asks for stream usage (`stream_options.include_usage: true`).
fn asks_usage(request: &Value) -> bool {
    request.pointer("/stream_options/include_usage") == Some(&Value::Bool(true))
}

/// The SSE events of a stream answer: the reply's script, else the default events (with the default usage
/// chunk when asked).
fn stream_events(state: &State, model: &str, events: usize, include_usage: bool) -> Vec<String> {
    let reply = state.reply.lock().unwrap().clone();
    let out = if let Some(frames) = &reply.frames {
        frames.clone()
    } else if reply.events.is_some() {
        reply.sse(include_usage)
    } else {
        let mut out = Mock::sse_events(model, events);
        if include_usage {
            let done = out.pop().unwrap();
            out.push(format!("data: {}\n\n", Mock::usage_event(model, events)));
            out.push(done);
        }
        out
    };
    match reply.piece_bytes {
        Some(n) => cut_frames(&out.concat(), n),
        None => out,
    }
}

/// `text` in pieces of at most `n` bytes (a piece ends early rather than inside a UTF-8 character).
fn cut_frames(text: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = n.max(1).min(rest.len());
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        out.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    out
}

impl Mock {
    /// What `Answer` says from now on (see [`Reply`]); `Reply::default()` restores the defaults.
    pub fn set_reply(&self, reply: Reply) {
        *self.state.reply.lock().unwrap() = reply;
    }

    /// The usage-only chunk the default stream of `events` events sends when the request asks for usage:
    /// 3 prompt tokens, one completion token per event.
    pub fn usage_event(model: &str, events: usize) -> String {
        let events = events as u64;
        usage_chunk(model, "chat.completion.chunk", usage_json(3, events))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Model lists: what `GET .../models` answers
// ---------------------------------------------------------------------------------------------------------------

impl Mock {
    /// From now on `Answer` answers `GET` requests whose path ends in `/models` (e.g. `/v1/models`, `/models`)
    /// with `{"object":"list","data":entries}` (see [`Mock::model_entry`]). They are recorded like any request.
    pub fn set_models(&self, entries: Vec<Value>) {
        *self.state.models.lock().unwrap() = Some(entries);
    }

    /// One OpenAI model-list entry.
    pub fn model_entry(id: &str, owned_by: &str) -> Value {
        json!({ "id": id, "object": "model", "created": 1700000000, "owned_by": owned_by })
    }

    /// The recorded `GET .../models` requests, in order.
    pub fn models_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.method == "GET" && r.uri.split('?').next().unwrap_or("").ends_with("/models")
            })
            .collect()
    }
}

/// The list body for a `GET .../models` request when [`Mock::set_models`] set one.
fn models_answer(state: &State, parts: &hyper::http::request::Parts) -> Option<String> {
    if parts.method != hyper::Method::GET || !parts.uri.path().ends_with("/models") {
        return None;
    }
    let entries = state.models.lock().unwrap().clone()?;
    Some(json!({ "object": "list", "data": entries }).to_string())
}
