//! Per-request state carried through Pingora's phases, and the one usage record each routed request leaves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, FixedOffset};

use crate::auth::KeyInfo;
use crate::config::{Client, MatchKind};
use crate::duration::millis;
use crate::endpoints::ApiKind;
use crate::failover::{Attempts, Failure};
use crate::metrics::Metrics;
use crate::request::RequestInfo;
use crate::tap::ResponseTap;
use crate::usage::{CapturedHeaders, CapturedRecord, RawTexts, UsageQueue, UsageRecord};

use super::Runtime;

/// Status recorded for a request whose caller went away before the answer was complete (nginx's convention).
const CLIENT_CLOSED: u16 = 499;
/// Status recorded for an answer the backend broke off after its header reached the caller.
const CUT_SHORT: u16 = 502;

/// Everything one request needs after `request_filter`: the config it started with, its body and route.
pub struct RequestCtx {
    pub started: Instant,
    /// The config snapshot this request uses from start to end (reloads do not affect it).
    pub runtime: Option<Arc<Runtime>>,
    /// The complete request body, as received.
    pub body: Bytes,
    /// The body for the current attempt (rewritten for its client, or `body` itself).
    pub send_body: Bytes,
    /// The body still has to be handed to the current upstream attempt.
    pub body_pending: bool,
    pub info: Option<RequestInfo>,
    pub kind: ApiKind,
    pub attempts: Option<Attempts>,
    /// The current attempt failed; `upstream_peer` moves on before connecting again.
    pub advance: bool,
    /// The current attempt failed on its status (decided in the response filter); `Some(true)` when
    /// another attempt follows.
    pub failed_on_status: Option<bool>,
    /// A stale pooled connection was already retried for the current attempt.
    pub reconnected: bool,
    /// The next `upstream_peer` repeats the current attempt (after a stale pooled connection).
    pub retry_same: bool,
    /// The response is an SSE stream.
    pub sse: bool,
    pub upstream_model: Option<String>,
    /// Boxed, like the record: the ctx is moved with Pingora's per-request future, so it is kept small.
    pub tap: Option<Box<ResponseTap>>,
    pub first_token: Option<Duration>,
    /// What went wrong, for the record and the log (never a key).
    pub error: Option<String>,
    /// Set once the request reached routing; taken when its record is sent.
    pub record: Option<Box<PendingRecord>>,
    /// The caller's gateway key, when auth is on.
    pub key: Option<Arc<KeyInfo>>,
    /// `x-ratelimit-*` headers for the answer.
    pub ratelimit_headers: Vec<(&'static str, String)>,
    /// Counted as in flight in the metrics; the logging phase counts it out.
    pub metered: bool,
    /// The socket peer's address, formatted once routing starts.
    pub socket_ip: Option<String>,
    /// The caller's address for the log and the record (the peer, or what a trusted proxy forwarded).
    pub caller_ip: Option<String>,
    /// The peer is one of `server.trusted_proxies`: its `X-Forwarded-For` is passed on and appended to.
    pub peer_trusted: bool,
    /// The backend broke off its answer after the header reached the caller.
    cut_short: bool,
}

/// What is known of a record before the request ends.
pub struct PendingRecord {
    pub queue: UsageQueue,
    pub time: DateTime<FixedOffset>,
    pub ip: String,
    pub kind: String,
    /// The request's headers, credentials left out (rendered as JSON by the usage writer).
    pub headers: CapturedHeaders,
    /// The request body's first bytes (as many as the record keeps), or None when bodies are not recorded.
    pub request: Option<Bytes>,
    pub max_body: usize,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            started: Instant::now(),
            runtime: None,
            body: Bytes::new(),
            send_body: Bytes::new(),
            body_pending: false,
            info: None,
            kind: ApiKind::Other,
            attempts: None,
            advance: false,
            failed_on_status: None,
            reconnected: false,
            retry_same: false,
            sse: false,
            upstream_model: None,
            tap: None,
            first_token: None,
            error: None,
            record: None,
            key: None,
            ratelimit_headers: Vec::new(),
            metered: false,
            socket_ip: None,
            caller_ip: None,
            peer_trusted: false,
            cut_short: false,
        }
    }

    /// The client of the current attempt, once routed.
    pub fn client(&self) -> Option<&Arc<Client>> {
        self.attempts.as_ref()?.current().map(|c| &c.client)
    }

    pub fn model(&self) -> &str {
        self.info.as_ref().map_or("", |i| i.model.as_str())
    }

    /// Records the current attempt's failure: health, the attempt list, the log line, and whether another
    /// attempt may follow.
    pub fn fail_attempt(
        &mut self,
        failure: Failure,
        retry_after: Option<Duration>,
        metrics: &Metrics,
    ) -> bool {
        let Some(attempts) = self.attempts.as_mut() else {
            return false;
        };
        if let Some(c) = attempts.current() {
            let name = c.client.name.as_str();
            if c.health.record_failure(c.client.health_policy, retry_after) {
                log::warn!(
                    "backend {name} cooling down after {} failure(s)",
                    c.health.failures()
                );
            }
            metrics.backend_health(name, c.health.failures(), c.health.is_cooling());
            metrics.failover(name, &failure.reason());
            log::warn!(
                "attempt {} of model `{}` at {name} failed: {}",
                attempts.count(),
                crate::escape::field(attempts.model()),
                crate::escape::text(&failure.to_string())
            );
        }
        attempts.fail(failure);
        self.advance = true;
        self.error = Some(attempts.summary());
        attempts.has_next()
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

    /// Notes the first token's arrival time once the tap has seen it.
    pub fn note_first_token(&mut self) {
        if self.first_token.is_none() && self.tap.as_ref().is_some_and(|t| t.saw_first_token()) {
            self.first_token = Some(self.started.elapsed());
        }
    }

    /// Whether the caller has the whole answer, given how many body bytes reached its connection: the
    /// stream's `[DONE]` or the end of the backend's body was among them.
    pub fn answer_delivered(&self, bytes_sent: usize) -> bool {
        let sent = u64::try_from(bytes_sent).unwrap_or(u64::MAX);
        self.tap.as_ref().is_some_and(|t| t.delivered(sent))
    }

    /// Notes that the backend broke off an answer whose header already reached the caller.
    pub fn answer_cut_short(&mut self) {
        self.cut_short = true;
    }

    /// The status the record, the access line and the metrics show (see [`final_status`]).
    pub fn final_status(&self, written: Option<u16>, caller_left: bool, bytes_sent: usize) -> u16 {
        let delivered = self.answer_delivered(bytes_sent);
        final_status(written, caller_left, self.cut_short, delivered)
    }

    /// Sends this request's record (once): `status` as the caller saw it.
    pub fn send_record(&mut self, status: u16) {
        let Some(p) = self.record.take() else { return };
        let p = *p;
        let response = self.tap.as_mut().and_then(|t| t.take_record_body());
        let tap = self.tap.as_ref();
        let row = UsageRecord {
            time: p.time,
            ip: p.ip,
            model: self.model().to_owned(),
            kind: p.kind,
            tokens: tap.and_then(|t| t.usage()).unwrap_or_default(),
            tool: self.info.as_ref().is_some_and(|i| i.tool),
            multimodal: self.info.as_ref().is_some_and(|i| i.multimodal),
            // Rendered by the writer from `raw`.
            headers: String::new(),
            request: None,
            response: None,
            backend: self.client().map(|c| c.name.clone()),
            upstream_model: tap
                .and_then(|t| t.upstream_model().map(str::to_owned))
                .or_else(|| self.upstream_model.clone()),
            stream: self.info.as_ref().is_some_and(|i| i.stream),
            status,
            latency_ms: millis(self.started.elapsed()),
            first_token_ms: self.first_token.map(millis),
            attempts: self.attempts.as_ref().map_or(0, |a| a.count()),
            error: self.error.take(),
            key_name: self.key.as_ref().map(|k| k.name().to_owned()),
        };
        let raw = RawTexts {
            headers: p.headers,
            request: p.request,
            response,
            max_body: p.max_body,
        };
        p.queue.send(CapturedRecord {
            row,
            raw: Some(Box::new(raw)),
        });
    }
}

/// How a request ended, as one status: the status sent when the caller has the whole answer (whatever failed
/// after its end: the caller closing at `[DONE]`, the backend's connection); 499 when the caller left first, or
/// nothing was sent; 502 when the backend broke off an answer under way; else the status sent.
fn final_status(written: Option<u16>, caller_left: bool, cut_short: bool, delivered: bool) -> u16 {
    match written {
        Some(status) if delivered => status,
        _ if caller_left => CLIENT_CLOSED,
        None => CLIENT_CLOSED,
        Some(_) if cut_short => CUT_SHORT,
        Some(status) => status,
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RequestCtx {
    /// A request dropped before `logging` ran (the server stopped under it) still leaves its record.
    fn drop(&mut self) {
        if self.record.is_some() {
            self.error
                .get_or_insert_with(|| "request cancelled before it finished".into());
            self.send_record(CLIENT_CLOSED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivered_answer_keeps_its_status_whatever_failed_after() {
        for (caller_left, cut_short) in [(true, false), (false, true), (false, false)] {
            assert_eq!(final_status(Some(200), caller_left, cut_short, true), 200);
        }
    }

    #[test]
    fn an_answer_under_way_is_499_when_the_caller_left_and_502_when_the_backend_broke() {
        assert_eq!(final_status(Some(200), true, false, false), 499);
        assert_eq!(final_status(Some(200), true, true, false), 499);
        assert_eq!(final_status(Some(200), false, true, false), 502);
        assert_eq!(final_status(None, false, false, false), 499);
        // An answer the gateway wrote itself (a 504 after every attempt failed), or one that simply ended.
        assert_eq!(final_status(Some(504), false, false, false), 504);
        assert_eq!(final_status(Some(200), false, false, false), 200);
    }
}
