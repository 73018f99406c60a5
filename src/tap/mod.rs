//! The response tap: watches the bytes going back to the caller (SSE or JSON) for usage, prefix and body.

mod body;
pub mod decode;
mod keys;
mod prefix;
mod reconstruct;
pub(crate) mod sse;
mod stream;
pub mod text;
mod usage;
mod wire;

#[cfg(test)]
mod tests;

use crate::endpoints::ApiKind;
use crate::request::MAX_MODEL_BYTES;
use crate::routing::responses_ids::MAX_ID_BYTES as MAX_RESPONSE_ID_BYTES;
use crate::usage::{RawBody, TokenUsage};
use bytes::{Bytes, BytesMut};
use decode::{Decoder, Encoding};
use reconstruct::Reconstruction;
use text::{Generated, Seen};
use wire::{Envelope, Raw};

/// How much of a non-stream body is kept to read its usage (and splice the prefix) at its end, at least.
const BODY_CAP: usize = 16 << 20;
/// How many choices of a stream get the prefix, at most (OpenAI's `n` is at most 128).
const PREFIXED_CHOICES: usize = 128;

/// What the tap does with one response.
#[derive(Debug, Clone)]
pub struct TapOptions {
    /// The response is an SSE stream (content-type text/event-stream); otherwise a whole JSON (or other) body.
    pub sse: bool,
    pub kind: ApiKind,
    /// Prepended verbatim to the assistant's answer (client's special_prefix).
    pub prefix: Option<String>,
    /// Drop the usage-only chunk (`"choices": []` with a `usage`) from what the caller receives
    /// (the gateway asked for usage; the caller did not).
    pub hide_usage_chunk: bool,
    /// Keep the response for the usage record, cut at this many bytes (None: don't keep).
    pub keep_body: Option<usize>,
}

/// The state of one response passing through. Plain Rust (no Pingora types): the proxy calls it from its
/// synchronous body filter. Complete SSE events are read once, through shallow borrowed views (`wire`), and
/// forwarded byte for byte unless the prefix is spliced into one or a usage-only chunk is hidden (`stream`);
/// a whole body passes on (or is held for the prefix) and is read at its end (`body`).
pub struct ResponseTap {
    opts: TapOptions,
    /// The prefix, JSON-escaped; None when there is none (or it is empty).
    prefix_json: Option<String>,
    /// What `buffers_whole_body` answers (fixed at the start, whatever happens later).
    buffers: bool,
    /// The answer may carry a top-level `response` object (a Responses API answer, or one of a kind the tap
    /// does not know); chat, completions, Messages and embeddings answers have none by their API's
    /// definition, so theirs is neither searched for nor read.
    responses: bool,
    // SSE framing.
    scanner: sse::Scanner,
    ends: Vec<usize>,
    pending: BytesMut,
    /// An event grew past the cap: its bytes pass unread until its end.
    skipping: bool,
    /// Choice indices whose first content got the prefix (at most [`PREFIXED_CHOICES`]).
    prefixed: Vec<u32>,
    // A whole body, or a raw stream kept for the record.
    body: BytesMut,
    /// How much of the body is kept: enough to read a JSON body at its end, else only the record's bytes.
    body_cap: usize,
    /// The kept body is cut (or not meant to be read): nothing to read at the end.
    body_full: bool,
    /// The body is held back for the prefix.
    holding: bool,
    /// The body's first non-blank byte was seen.
    sniffed: bool,
    finished: bool,
    /// Bytes handed on to the caller so far.
    sent: u64,
    /// The caller has the whole answer once this many bytes reached it: the stream's `[DONE]` or the body's
    /// end was handed on.
    end_at: Option<u64>,
    /// A `[DONE]` event is among the bytes being handed on.
    done_passed: bool,
    // What was seen.
    usage: Option<TokenUsage>,
    model: Option<String>,
    /// A Responses API answer's `id` (the body's, or the stream's first `response` object's).
    response_id: Option<String>,
    first_token: bool,
    recon: Option<Reconstruction>,
    /// A stream's first bytes, for counting its tokens if the backend reports no usage.
    seen: Option<Seen>,
    /// The body, once handed out by [`ResponseTap::generated`] (the record may still take it).
    frozen: Option<Bytes>,
    decoder: Option<Decoder>,
    /// Why the body could not be decoded; nothing more is passed on after it.
    broken: Option<String>,
    /// Tests: parse every event whole (the reference the quiet path must agree with).
    #[cfg(test)]
    always_parse: bool,
}

impl ResponseTap {
    pub fn new(opts: TapOptions) -> Self {
        let prefix_json = opts
            .prefix
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(prefix::escape);
        let spliceable = matches!(opts.kind, ApiKind::Chat | ApiKind::Completions);
        let prefixable = spliceable || opts.kind == ApiKind::Messages;
        let buffers = prefix_json.is_some() && !opts.sse && prefixable;
        let rebuilt = opts.sse && (spliceable || opts.kind == ApiKind::Responses);
        let recon = opts.keep_body.filter(|_| rebuilt).map(Reconstruction::new);
        let kept = opts.keep_body.unwrap_or(0);
        let seen = (opts.sse && opts.kind.generates_text()).then(Seen::default);
        let body_cap = match (opts.sse, rebuilt) {
            (false, _) => kept.max(BODY_CAP),
            (true, false) => kept,
            (true, true) => 0,
        };
        let responses = !matches!(
            opts.kind,
            ApiKind::Chat | ApiKind::Completions | ApiKind::Messages | ApiKind::Embeddings
        );
        ResponseTap {
            opts,
            prefix_json,
            buffers,
            responses,
            scanner: sse::Scanner::default(),
            ends: Vec::new(),
            pending: BytesMut::new(),
            skipping: false,
            prefixed: Vec::new(),
            body: BytesMut::new(),
            body_cap,
            body_full: false,
            holding: buffers,
            sniffed: false,
            finished: false,
            sent: 0,
            end_at: None,
            done_passed: false,
            usage: None,
            model: None,
            response_id: None,
            first_token: false,
            recon,
            seen,
            frozen: None,
            decoder: None,
            broken: None,
            #[cfg(test)]
            always_parse: false,
        }
    }

    /// The body arrives in the backend's `Content-Encoding`: it is decoded before anything reads it, and the
    /// caller gets it decoded (the proxy drops the header). Call before the first `feed`.
    pub fn decode_from(mut self, encoding: Encoding) -> Self {
        match Decoder::new(encoding) {
            Ok(d) => self.decoder = Some(d),
            Err(e) => self.broken = Some(e.to_string()),
        }
        self
    }

    /// Upstream body bytes in, caller bytes out. Complete SSE events pass on unchanged except the prefixed
    /// one and the hidden usage chunk; an incomplete trailing event is held until its end arrives.
    /// When nothing in the chunk changes and it ends on an event boundary, return the same `Bytes` (no copy).
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        let Some(chunk) = self.decode(chunk, false) else {
            return Bytes::new();
        };
        let out = self.feed_plain(chunk);
        let out = self.hand_on(out);
        if std::mem::take(&mut self.done_passed) {
            self.end_at.get_or_insert(self.sent);
        }
        out
    }

    fn feed_plain(&mut self, chunk: Bytes) -> Bytes {
        match (self.finished, self.opts.sse) {
            (true, _) => chunk,
            (false, true) => self.feed_sse(chunk),
            (false, false) => self.feed_body(chunk),
        }
    }

    /// End of the upstream body: returns whatever is still held (a partial last event as is; for a buffered
    /// JSON body, the body with the prefix applied). Once it is sent, the caller has the whole answer.
    pub fn finish(&mut self) -> Bytes {
        let rest = self.finish_reading();
        let out = self.hand_on(rest);
        self.end_at.get_or_insert(self.sent);
        out
    }

    /// The answer stopped before its end (the caller left, the backend broke): reads what arrived of a last
    /// event for its usage. Nothing more is sent. A no-op after [`ResponseTap::finish`].
    pub fn abandon(&mut self) {
        self.finish_reading();
    }

    /// Whether the caller has the whole answer, given how many body bytes reached its connection: the
    /// stream's `[DONE]`, or the end of the backend's body, was among them.
    pub fn delivered(&self, bytes_sent: u64) -> bool {
        self.end_at.is_some_and(|end| bytes_sent >= end)
    }

    fn finish_reading(&mut self) -> Bytes {
        let head = match self.finished {
            true => None,
            false => self
                .decode(Bytes::new(), true)
                .map(|tail| self.feed_plain(tail)),
        };
        let rest = match (std::mem::replace(&mut self.finished, true), self.opts.sse) {
            (true, _) => Bytes::new(),
            (false, true) => self.finish_sse(),
            (false, false) => self.finish_body(),
        };
        match head {
            Some(head) => concat(head, rest),
            None => rest,
        }
    }

    /// The plain bytes of an encoded piece (the piece itself when the body is not encoded); None once the
    /// body proved undecodable (see [`ResponseTap::broken`]).
    fn decode(&mut self, piece: Bytes, end: bool) -> Option<Bytes> {
        if self.broken.is_some() {
            return None;
        }
        let Some(decoder) = self.decoder.as_mut() else {
            return Some(piece);
        };
        match decoder.decode(&piece, end) {
            Ok(plain) => Some(plain),
            Err(e) => {
                self.broken = Some(e.to_string());
                self.decoder = None;
                None
            }
        }
    }

    /// Why the backend's encoded body could not be decoded: the answer must end here.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Counts what goes to the caller.
    fn hand_on(&mut self, out: Bytes) -> Bytes {
        self.sent = self.sent.saturating_add(out.len() as u64);
        out
    }

    /// Whether the non-stream body must be held until `finish` (true when a prefix must be spliced into a
    /// JSON body). The proxy then drops the upstream Content-Length before sending headers.
    pub fn buffers_whole_body(&self) -> bool {
        self.buffers
    }

    /// Usage reported by the backend, if any (last one wins).
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// The `model` the backend reported (first seen).
    pub fn upstream_model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// A Responses API answer's `id`, once seen (the first one; at most [`MAX_RESPONSE_ID_BYTES`]).
    pub fn response_id(&self) -> Option<&str> {
        self.response_id.as_deref()
    }

    /// True once the first token arrived: for SSE the first event carrying content / text / reasoning /
    /// tool-call deltas (Responses API: a `response.output_text.delta` etc.); for non-SSE, the first body byte.
    pub fn saw_first_token(&self) -> bool {
        self.first_token
    }

    /// The Response column in the form the usage writer finishes it, off the request path (`None` when
    /// bodies are not kept): a non-stream body's bytes as the caller got them (no copy unless longer than the
    /// record keeps), decoded lossily by the writer; a chat or completions stream rebuilt into one JSON body with
    /// its usage, or the `response` object of a Responses API stream, rendered by the writer; any other stream
    /// as received. Either is cut at `keep_body`. Takes the kept body: call once, at the end.
    pub fn take_record_body(&mut self) -> Option<RawBody> {
        let limit = self.opts.keep_body?;
        if let Some(recon) = self.recon.take() {
            let kind = self.opts.kind;
            return Some(RawBody::Later(Box::new(move || recon.render(kind))));
        }
        let body = match self.frozen.take() {
            Some(body) => body,
            None => std::mem::take(&mut self.body).freeze(),
        };
        // The tap's own buffer: handed over as is, unless it holds more than the record keeps.
        Some(RawBody::Bytes(match body.len() > limit.saturating_add(4) {
            true => crate::usage::record::window(&body, limit),
            false => body,
        }))
    }

    /// What the backend generated, for counting its tokens when it reported no usage: a stream's first bytes
    /// (and how many there were in all), or a whole JSON body (none if it was cut). Call at the end, before
    /// [`ResponseTap::take_record_body`].
    pub fn generated(&mut self) -> Option<Generated> {
        if self.opts.sse {
            return self.seen.as_mut()?.take();
        }
        if self.body_full || self.body.is_empty() || !self.opts.kind.generates_text() {
            return None;
        }
        let body = std::mem::take(&mut self.body).freeze();
        self.frozen = Some(body.clone());
        Some(Generated::body(body))
    }

    /// The Response column as the usage writer renders it from [`ResponseTap::take_record_body`].
    #[cfg(test)]
    pub fn record_body(&mut self) -> Option<String> {
        let limit = self.opts.keep_body?;
        self.take_record_body().map(|body| body.render(limit))
    }

    /// Bytes the tap holds: a partial event, a kept body, the rebuilt message, the model and prefixed choices.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        let recon = self.recon.as_ref().map_or(0, Reconstruction::held);
        let model = self.model.as_ref().map_or(0, String::len);
        let seen = self.seen.as_ref().map_or(0, Seen::held);
        self.pending.len() + self.body.len() + recon + model + self.prefixed.len() * 4 + seen
    }

    /// The most [`ResponseTap::held`] can reach with these options, whatever the backend sends.
    #[cfg(test)]
    pub fn held_bound(opts: &TapOptions) -> usize {
        let kept = opts.keep_body.unwrap_or(0);
        let body = kept.max(BODY_CAP);
        let recon = Reconstruction::held_bound(kept);
        stream::EVENT_CAP + body + recon + MAX_MODEL_BYTES + PREFIXED_CHOICES * 4 + text::SEEN_CAP
    }

    /// An SSE error event `data: {"error":{"message":..,"type":"api_error","param":null,"code":..}}\n\n` that
    /// the proxy sends when a stream breaks after its first byte.
    pub fn error_event(message: &str, code: &str) -> Bytes {
        let error = serde_json::json!({
            "error": {"message": message, "type": "api_error", "param": null, "code": code}
        });
        Bytes::from(format!("data: {error}\n\n"))
    }

    /// Takes in what one parsed event or body says: usage, model, first token, the pieces of the message.
    fn observe(&mut self, env: &Envelope, event_name: Option<&[u8]>) {
        self.note(env.usage, env.model);
        if let Some(response) = env.response.filter(|_| self.responses) {
            self.observe_response(response);
        }
        if !self.first_token {
            let kind = env.kind.and_then(wire::as_str);
            let name = event_name.and_then(|n| std::str::from_utf8(n).ok());
            let delta = kind.as_deref().or(name).is_some_and(wire::is_output_delta);
            self.first_token = delta || env.has_token();
        }
        if let Some(recon) = &mut self.recon {
            recon.observe(env);
        }
    }

    fn observe_response(&mut self, raw: Raw) {
        let Ok(response) = serde_json::from_str::<wire::ResponseObject>(raw.get()) else {
            return;
        };
        self.note(response.usage, response.model);
        self.note_response_id(response.id);
        if let Some(recon) = &mut self.recon {
            recon.set_response(raw);
        }
    }

    /// Keeps a Responses API answer's first `id` (one too long to be an id is not kept).
    fn note_response_id(&mut self, id: Option<Raw>) {
        if self.response_id.is_some() || self.opts.kind != ApiKind::Responses {
            return;
        }
        let id = id.and_then(wire::as_str);
        self.response_id = id
            .filter(|id| id.len() <= MAX_RESPONSE_ID_BYTES)
            .map(|id| id.into_owned());
    }

    fn note(&mut self, usage: Option<Raw>, model: Option<Raw>) {
        if let Some(usage) = usage.and_then(|u| usage::parse(u.get())) {
            self.usage = Some(usage);
            if let Some(seen) = &mut self.seen {
                seen.stop();
            }
        }
        if self.model.is_none() {
            let model = model.and_then(wire::as_str);
            self.model = model.map(|m| crate::escape::cut(&m, MAX_MODEL_BYTES).to_owned());
        }
    }
}

fn concat(a: Bytes, b: Bytes) -> Bytes {
    if a.is_empty() {
        return b;
    }
    let mut out = BytesMut::with_capacity(a.len() + b.len());
    out.extend_from_slice(&a);
    out.extend_from_slice(&b);
    out.freeze()
}
