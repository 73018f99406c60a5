//! A mock OpenAI backend on 127.0.0.1:0 that records every request and answers as the test tells it to.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

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
    let resp = match behavior {
        Behavior::Hang | Behavior::Close => std::future::pending().await,
        Behavior::Fail { status, body } => {
            response(status, "application/json", &state.name, full(body))
        }
        Behavior::Answer if stream => {
            let shape = state.sse.lock().unwrap().clone();
            response(
                200,
                "text/event-stream",
                &state.name,
                sse_body(state.clone(), model, shape),
            )
        }
        Behavior::Answer => {
            let text = Mock::answer_json(&model).to_string();
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
fn sse_body(state: Arc<State>, model: String, shape: SseShape) -> Body {
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let mut release = state.release.subscribe();
    tokio::spawn(async move {
        for (i, event) in Mock::sse_events(&model, shape.events)
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
