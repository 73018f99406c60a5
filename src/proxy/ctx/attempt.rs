//! The attempt part of a request: the state machine's transitions with their side effects, and the body sent.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::RequestCtx;
use crate::balance::InFlight;
use crate::config::{Client, Protocol};
use crate::dialect::anthropic::{chat_to_messages, ToMessages};
use crate::endpoints::ApiKind;
use crate::error::GatewayError;
use crate::failover::attempt::{Broke, Verdict};
use crate::failover::Failure;
use crate::metrics::Metrics;
use crate::request::RequestInfo;
use crate::routing::Candidate;
use crate::{escape, rewrite};

/// The target these lines had before the per-request state was split into parts.
const LOG: &str = "gpt_api::proxy::ctx";

/// What the current attempt sends upstream.
#[derive(Default)]
pub(super) struct Outgoing {
    /// The body for the current attempt (rewritten for its client, or the request's own).
    body: Bytes,
    /// The body still has to be handed to the current upstream attempt.
    pending: bool,
    /// The model named in the body sent.
    model: Option<String>,
    /// The body sent is the decoded one of a compressed request: its `Content-Encoding` must go.
    decoded: bool,
    /// The current attempt, counted in flight on its client until the next attempt or the request's end.
    in_flight: Option<InFlight>,
    /// The API the body sent calls: the caller's, or chat completions for a translated request.
    kind: Option<ApiKind>,
}

/// A chat completions request as a Messages request for `client` (its `max_tokens` cap, else 4096, when the
/// caller gives none), and what that body says.
pub fn chat_as_messages(
    body: &[u8],
    client: &Client,
) -> Result<(Bytes, RequestInfo), GatewayError> {
    let opts = ToMessages {
        default_max_tokens: client.max_tokens,
    };
    let messages = Bytes::from(chat_to_messages(body, &opts)?);
    let info = crate::request::inspect(&messages)?;
    Ok((messages, info))
}

impl RequestCtx {
    /// Moves the attempts on (the first candidate, the same one after a stale connection, the next one or a
    /// fallback's after a failure) and readies the body for it. `None`: nothing is left to try.
    pub fn next_attempt(&mut self) -> Result<Option<Candidate>, GatewayError> {
        let (Some(rt), Some(attempt), Some(info)) = (
            self.admission.runtime.as_ref(),
            self.attempt.as_mut(),
            self.admission.info.as_ref(),
        ) else {
            return Err(GatewayError::Internal("request not routed".into()));
        };
        let reconnect = attempt.step() == crate::failover::attempt::Step::RetrySame;
        let Some(cand) = attempt.next(&rt.router).cloned() else {
            return Ok(None);
        };
        if !reconnect {
            let fallback = attempt.fallback_model();
            let protocol = cand.client.protocol;
            // A chat request to an anthropic backend: its translation depends on the client's cap.
            let to_messages = match (self.admission.kind, protocol) {
                (ApiKind::Chat, Protocol::Anthropic) => {
                    Some(chat_as_messages(&self.admission.body, &cand.client)?)
                }
                _ => None,
            };
            // The caller's own body (and its compressed bytes), or the one without the thinking blocks an
            // anthropic backend would refuse.
            let own = match (&self.admission.for_anthropic, protocol) {
                (Some(stripped), Protocol::Anthropic) => (stripped, None),
                _ => (&self.admission.body, self.admission.encoded.as_ref()),
            };
            // Per-backend rewriting applies after translation, in the backend's dialect.
            let (body, info, kind, encoded) = match (&to_messages, &self.admission.chat, protocol) {
                (Some((body, info)), _, _) => (body, info, ApiKind::Messages, None),
                (None, Some(chat), Protocol::OpenAi) => {
                    (&chat.body, &chat.info, ApiKind::Chat, None)
                }
                // A Messages request that did not translate (kept for an anthropic backend) never reaches
                // an openai one as it is.
                (None, None, Protocol::OpenAi) if self.admission.kind == ApiKind::Messages => {
                    return Err(GatewayError::InvalidRequest(format!(
                        "this Messages request could not be translated for backend {}",
                        cand.client.name
                    )));
                }
                _ => (own.0, info, self.admission.kind, own.1),
            };
            let rewritten = rewrite::rewrite(body, info, &cand.client, kind, fallback);
            // A compressed request goes as it came unless the gateway changed (or translated) it.
            let sends_encoded = rewritten.is_none() && encoded.is_some();
            self.outgoing.decoded = self.admission.encoded.is_some() && !sends_encoded;
            self.outgoing.kind = Some(kind);
            self.outgoing.body = match (rewritten, encoded) {
                (Some(rewritten), _) => rewritten,
                (None, Some(encoded)) => encoded.clone(),
                (None, None) => body.clone(),
            };
            self.outgoing.model =
                Some(rewrite::upstream_model(info, &cand.client, fallback).to_owned());
        }
        self.outgoing.pending = true;
        // The previous attempt's count ends here.
        self.outgoing.in_flight = Some(cand.load.start());
        self.answer.clear();
        Ok(Some(cand))
    }

    /// The API the current attempt calls upstream (the caller's until an attempt starts).
    pub fn upstream_kind(&self) -> ApiKind {
        self.outgoing.kind.unwrap_or(self.admission.kind)
    }

    /// The current attempt translates: it calls another API than the caller's.
    pub fn translates(&self) -> bool {
        self.upstream_kind() != self.admission.kind
    }

    /// The current attempt sends a compressed request's body decoded (its `Content-Encoding` must go).
    pub fn sends_decoded(&self) -> bool {
        self.outgoing.decoded
    }

    /// The length of the body the current attempt sends.
    pub fn outgoing_len(&self) -> usize {
        self.outgoing.body.len()
    }

    /// The body bytes to hand upstream for a piece of the caller's body: nothing until its end, then the
    /// whole body for this attempt once (Pingora replays only the tail it kept, see body.rs).
    pub fn body_for_upstream(&mut self, end_of_stream: bool) -> Option<Bytes> {
        match (self.outgoing.pending, end_of_stream) {
            (true, true) => {
                self.outgoing.pending = false;
                Some(self.outgoing.body.clone())
            }
            (_, false) => Some(Bytes::new()),
            (false, true) => None,
        }
    }

    /// The model the current attempt sends upstream.
    pub fn outgoing_model(&self) -> Option<&str> {
        self.outgoing.model.as_deref()
    }

    /// Records the current attempt's failure: health, metrics, the log line, and whether another attempt may
    /// follow.
    pub fn fail_attempt(
        &mut self,
        failure: Failure,
        retry_after: Option<Duration>,
        metrics: &Metrics,
    ) -> bool {
        self.note_failure(&failure, retry_after, metrics);
        let Some(attempt) = self.attempt.as_mut() else {
            return false;
        };
        let more = attempt.fail(failure);
        self.record.set_error(attempt.order().summary());
        more
    }

    /// The health, metrics and log line of the current attempt's failure.
    fn note_failure(&self, failure: &Failure, retry_after: Option<Duration>, metrics: &Metrics) {
        let Some(attempt) = self.attempt.as_ref() else {
            return;
        };
        let Some(c) = attempt.current() else { return };
        let name = c.client.name.as_str();
        if c.health.record_failure(c.client.health_policy, retry_after) {
            log::warn!(
                target: LOG,
                "backend {name} cooling down after {} failure(s)",
                c.health.failures()
            );
        }
        metrics.backend_health(name, c.health.failures(), c.health.is_cooling());
        metrics.failover(name, &failure.reason());
        log::warn!(
            target: LOG,
            "attempt {} of model `{}` at {name} failed: {}",
            attempt.count(),
            escape::field(attempt.model()),
            escape::text(&failure.to_string())
        );
    }

    /// What to do about an attempt that broke after it was sent (see [`crate::failover::attempt::Attempt::broke`]).
    pub fn attempt_broke(&mut self, seen: Broke) -> Verdict {
        match self.attempt.as_mut() {
            Some(attempt) => attempt.broke(seen),
            None => Verdict::Stop,
        }
    }

    /// The backend's answer (`status`) is accepted: it is passed on, and its client counts as healthy again. A
    /// success also gives the client's latency estimate its time to first byte, and keeps the request's
    /// conversation on this client (affinity) when an earlier attempt went elsewhere.
    pub fn attempt_answered(&mut self, status: u16, metrics: &Metrics) {
        let Some(attempt) = self.attempt.as_mut() else {
            return;
        };
        attempt.answered();
        if (200..300).contains(&status) {
            if let Some(in_flight) = &self.outgoing.in_flight {
                in_flight.first_byte(Instant::now());
            }
            // The router recorded the first candidate when it picked it: only a later one is news.
            let moved = attempt.count() > 1;
            let rt = self.admission.runtime.as_ref().filter(|_| moved);
            if let (Some(key), Some(rt), Some(c)) = (self.admission.affinity, rt, attempt.current())
            {
                rt.router.stick(key, &c.client.name);
            }
        }
        if let Some(c) = attempt.current() {
            if c.health.failures() != 0 {
                c.health.record_success();
                metrics.backend_health(&c.client.name, 0, false);
            }
        }
    }
}
