//! Per-request state, in typed parts: who asked and what (admission), the attempt, the answer, the record.
//!
//! Each part keeps its fields private to this module and its children and changes only through its methods:
//! `admission` (set while the request is admitted and routed, read after), the attempt in `attempt.rs`
//! (the [`crate::failover::attempt`] state machine and the body sent), the answer in `answer.rs` (the
//! response tap, first token, how it ended), and the record in `record.rs` (the one usage record).

mod answer;
mod attempt;
mod record;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::Runtime;
use crate::auth::KeyInfo;
use crate::balance::AffinityKey;
use crate::config::{Client, MatchKind};
use crate::endpoints::ApiKind;
use crate::error::GatewayError;
use crate::failover::attempt::Attempt;
use crate::request::RequestInfo;
use answer::Answer;
use attempt::Outgoing;
pub use attempt::{chat_as_messages, responses_as_chat};
pub use record::PendingRecord;
use record::Record;

/// Everything one request carries from phase to phase.
pub struct RequestCtx {
    started: Instant,
    admission: Admission,
    /// Set once routed: the candidates and the step of the current attempt.
    attempt: Option<Attempt>,
    outgoing: Outgoing,
    answer: Answer,
    record: Record,
}

/// Who asked, for what: set while the request is admitted and routed, read by every later phase.
struct Admission {
    /// The config snapshot this request uses from start to end (reloads do not affect it).
    runtime: Option<Arc<Runtime>>,
    /// Counted as in flight in the metrics; the logging phase counts it out.
    metered: bool,
    /// The caller's gateway key, when auth is on.
    key: Option<Arc<KeyInfo>>,
    caller: Caller,
    /// The gateway's id of the request (`x-request-id`), made when it starts.
    request_id: String,
    /// Headers for every answer, local or proxied: `x-request-id`, `x-ratelimit-*`, the budget left.
    ratelimit_headers: Vec<(&'static str, String)>,
    info: Option<RequestInfo>,
    kind: ApiKind,
    /// The complete request body, its `Content-Encoding` undone.
    body: Bytes,
    /// The body as received, when it came compressed.
    encoded: Option<Bytes>,
    /// The request's conversation, when its clients balance by affinity.
    affinity: Option<AffinityKey>,
    /// The request translated to chat completions, for a backend that speaks only that (a Messages caller,
    /// a Responses caller to a client that translates).
    chat: Option<Box<ChatRequest>>,
    /// A Messages request without the thinking blocks Anthropic refuses, for anthropic backends (only when
    /// it had any: otherwise they get the body as received).
    for_anthropic: Option<Bytes>,
}

/// A request translated to chat completions: its body and what that body says.
struct ChatRequest {
    body: Bytes,
    info: RequestInfo,
}

/// Where the request came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The socket peer's address, formatted once routing starts.
    pub socket_ip: Option<String>,
    /// The caller's address for the log and the record (the peer, or what a trusted proxy forwarded).
    pub ip: Option<String>,
    /// The peer is one of `server.trusted_proxies`: its `X-Forwarded-For` is passed on and appended to.
    pub peer_trusted: bool,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            runtime: None,
            metered: false,
            key: None,
            caller: Caller::default(),
            request_id: String::new(),
            ratelimit_headers: Vec::new(),
            info: None,
            kind: ApiKind::Other,
            body: Bytes::new(),
            encoded: None,
            affinity: None,
            chat: None,
            for_anthropic: None,
        }
    }
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            started: Instant::now(),
            admission: Admission::default(),
            attempt: None,
            outgoing: Outgoing::default(),
            answer: Answer::default(),
            record: Record::default(),
        }
    }

    /// The request starts under `runtime`, counted in flight.
    pub fn start(&mut self, runtime: Arc<Runtime>) {
        self.admission.runtime = Some(runtime);
        self.admission.metered = true;
        let id = crate::request_id::new();
        self.admission
            .ratelimit_headers
            .push((crate::request_id::HEADER, id.clone()));
        self.admission.request_id = id;
    }

    /// The gateway's id of the request (empty before [`RequestCtx::start`]).
    pub fn request_id(&self) -> &str {
        &self.admission.request_id
    }

    /// The request goes on under a newer `runtime` (after a reload it asked for).
    pub fn use_runtime(&mut self, runtime: Arc<Runtime>) {
        self.admission.runtime = Some(runtime);
    }

    /// Counts the request out of the metrics' in-flight gauge, once: true the first time.
    pub fn unmeter(&mut self) -> bool {
        std::mem::take(&mut self.admission.metered)
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn runtime(&self) -> Option<&Arc<Runtime>> {
        self.admission.runtime.as_ref()
    }

    pub fn admit_key(&mut self, key: Arc<KeyInfo>) {
        self.admission.key = Some(key);
    }

    pub fn key(&self) -> Option<&Arc<KeyInfo>> {
        self.admission.key.as_ref()
    }

    pub fn set_ratelimit_headers(&mut self, headers: Vec<(&'static str, String)>) {
        self.admission.ratelimit_headers.extend(headers);
    }

    /// Bytes of the request body.
    pub fn body_len(&self) -> usize {
        self.admission.body.len()
    }

    /// The request body as received.
    pub fn body(&self) -> &Bytes {
        &self.admission.body
    }

    /// The conversation this request belongs to, when its clients balance by affinity.
    pub fn set_affinity(&mut self, key: Option<AffinityKey>) {
        self.admission.affinity = key;
    }

    /// The affinity key's short hash, for the record.
    pub fn affinity_key(&self) -> Option<String> {
        self.admission.affinity.map(|k| k.short())
    }

    pub fn ratelimit_headers(&self) -> &[(&'static str, String)] {
        &self.admission.ratelimit_headers
    }

    /// The request as read: where it came from, its kind, its body and what the body says.
    /// `body` is the decoded body; `encoded` the bytes received, when they were compressed.
    pub fn admit_request(
        &mut self,
        caller: Caller,
        kind: ApiKind,
        (body, encoded): (Bytes, Option<Bytes>),
        info: RequestInfo,
    ) {
        let a = &mut self.admission;
        a.caller = caller;
        a.kind = kind;
        a.body = body;
        a.encoded = encoded;
        a.info = Some(info);
    }

    /// The request as a chat completions request (`body`, and what it says), for backends that speak only
    /// that: each attempt to one sends it, rewritten for its client, to the chat completions path.
    pub fn translated_to_chat(&mut self, body: Bytes, info: RequestInfo) {
        self.admission.chat = Some(Box::new(ChatRequest { body, info }));
    }

    /// The Messages request as anthropic backends get it: its unsigned thinking blocks taken out.
    pub fn set_anthropic_body(&mut self, body: Bytes) {
        self.admission.for_anthropic = Some(body);
    }

    pub fn caller(&self) -> &Caller {
        &self.admission.caller
    }

    /// The caller's address, found late for a request refused before routing (for its access line).
    pub fn set_caller_ip(&mut self, ip: Option<String>) {
        self.admission.caller.ip = ip;
    }

    pub fn kind(&self) -> ApiKind {
        self.admission.kind
    }

    pub fn info(&self) -> Option<&RequestInfo> {
        self.admission.info.as_ref()
    }

    /// The requested model ("" before the body was read).
    pub fn model(&self) -> &str {
        self.admission
            .info
            .as_ref()
            .map_or("", |i| i.model.as_str())
    }

    /// The request was refused or failed: `err` is what the record and the log say went wrong.
    pub fn refuse(&mut self, err: &GatewayError) {
        self.record.set_error(err.to_string());
    }

    /// Sets what went wrong, for the record (never a key).
    pub fn set_error(&mut self, why: String) {
        self.record.set_error(why);
    }

    /// Routed: the attempts to make, in order.
    pub fn route(&mut self, attempt: Attempt) {
        self.attempt = Some(attempt);
    }

    pub fn attempt(&self) -> Option<&Attempt> {
        self.attempt.as_ref()
    }

    /// The client of the current attempt, once routed.
    pub fn client(&self) -> Option<&Arc<Client>> {
        self.attempt.as_ref()?.current().map(|c| &c.client)
    }

    /// The model as a metrics label: the requested name when a rule names it, else the keyword that
    /// routed it (label values stay bounded by the config).
    pub fn model_label(&self) -> &str {
        let model = self.model();
        match self.client() {
            Some(c) if c.model_match.kind == MatchKind::Keyword => c
                .model_match
                .values
                .iter()
                .find(|v| model.contains(v.as_str()))
                .map_or(model, String::as_str),
            _ => model,
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
