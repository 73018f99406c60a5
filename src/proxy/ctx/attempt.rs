//! The attempt part of a request: the state machine's transitions with their side effects, and the body sent.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::RequestCtx;
use crate::balance::InFlight;
use crate::config::{Client, Protocol};
use crate::dialect::anthropic::{chat_to_messages, ToChat, ToMessages};
use crate::dialect::responses::responses_to_chat;
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
    /// Why the next attempt could not be made with this request (it does not translate for its backend):
    /// the caller's answer when nothing else is.
    refused: Option<GatewayError>,
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

/// A Responses API request as a chat completions request, and what that body says.
pub fn responses_as_chat(body: &[u8]) -> Result<(Bytes, RequestInfo), GatewayError> {
    let chat = Bytes::from(responses_to_chat(body, &ToChat::default())?);
    let info = crate::request::inspect(&chat)?;
    Ok((chat, info))
}

impl RequestCtx {
    /// Moves the attempts on (the first candidate, the same one after a stale connection, the next one or a
    /// fallback's after a failure) and readies the body for it. `None`: nothing is left to try.
    pub fn next_attempt(&mut self) -> Result<Option<Candidate>, GatewayError> {
        let (Some(rt), Some(attempt)) = (self.admission.runtime.as_ref(), self.attempt.as_mut())
        else {
            return Err(GatewayError::Internal("request not routed".into()));
        };
        let reconnect = attempt.step() == crate::failover::attempt::Step::RetrySame;
        let Some(cand) = attempt.next(&rt.router).cloned() else {
            return Ok(None);
        };
        if !reconnect {
            let to_chat = self.needs_chat(&cand.client)?;
            self.ready_body(&cand.client, to_chat)?;
        }
        self.outgoing.pending = true;
        // The previous attempt's count ends here.
        self.outgoing.in_flight = Some(cand.load.start());
        self.answer.clear();
        Ok(Some(cand))
    }

    /// Whether the attempt to `client` sends the request as chat completions (a Messages request to an
    /// openai backend, a Responses one to a client that translates it), with the translation made when it
    /// does. A request that must but does not translate is refused: it never reaches that backend as it is.
    fn needs_chat(&mut self, client: &Client) -> Result<bool, GatewayError> {
        let to_chat = match (self.admission.kind, client.protocol) {
            (ApiKind::Messages, Protocol::OpenAi) => true,
            (ApiKind::Responses, _) => client.translates_responses(),
            _ => false,
        };
        if !to_chat || self.admission.chat.is_some() {
            return Ok(to_chat);
        }
        let refusal = match self.admission.kind {
            // Not translated at admission (no first-choice client translates it, or it does not translate):
            // a fallback's client does, or this says why it cannot.
            ApiKind::Responses => match responses_as_chat(&self.admission.body) {
                Ok((body, info)) => {
                    self.admission.chat = Some(Box::new(super::ChatRequest { body, info }));
                    return Ok(true);
                }
                Err(e) => e,
            },
            // Kept untranslated for an anthropic backend.
            _ => GatewayError::InvalidRequest(format!(
                "this Messages request could not be translated for backend {}",
                client.name
            )),
        };
        self.outgoing.refused = Some(refusal.clone());
        Err(refusal)
    }

    /// The body, API and model the attempt to `client` sends: the request's, its chat translation
    /// (`to_chat`), or a chat request's Messages translation, rewritten for the client in its dialect.
    fn ready_body(&mut self, client: &Client, to_chat: bool) -> Result<(), GatewayError> {
        let (Some(attempt), Some(info)) = (self.attempt.as_ref(), self.admission.info.as_ref())
        else {
            return Err(GatewayError::Internal("request not routed".into()));
        };
        let fallback = attempt.fallback_model();
        // A chat request to an anthropic backend: its translation depends on the client's cap.
        let to_messages = match (self.admission.kind, client.protocol) {
            (ApiKind::Chat, Protocol::Anthropic) => {
                Some(chat_as_messages(&self.admission.body, client)?)
            }
            // A Responses request to an anthropic backend: through its chat translation (see needs_chat).
            (ApiKind::Responses, Protocol::Anthropic) => match &self.admission.chat {
                Some(chat) => Some(chat_as_messages(&chat.body, client)?),
                None => return Err(GatewayError::Internal("no chat translation".into())),
            },
            _ => None,
        };
        let (body, info, kind, encoded) = match (&to_messages, &self.admission.chat, to_chat) {
            (Some((body, info)), _, _) => (body, info, ApiKind::Messages, None),
            (None, Some(chat), true) => (&chat.body, &chat.info, ApiKind::Chat, None),
            (None, None, true) => return Err(GatewayError::Internal("no chat translation".into())),
            // The caller's own body (and its compressed bytes), or the one without the thinking blocks an
            // anthropic backend would refuse.
            _ => match (&self.admission.for_anthropic, client.protocol) {
                (Some(stripped), Protocol::Anthropic) => {
                    (stripped, info, self.admission.kind, None)
                }
                _ => (
                    &self.admission.body,
                    info,
                    self.admission.kind,
                    self.admission.encoded.as_ref(),
                ),
            },
        };
        // Per-backend rewriting applies after translation, in the backend's dialect; a request about a
        // stored response is no model request: nothing in it to rewrite.
        let rewritten = match kind {
            ApiKind::StoredResponse => None,
            _ => rewrite::rewrite(body, info, client, kind, fallback),
        };
        // A compressed request goes as it came unless the gateway changed (or translated) it.
        let sends_encoded = rewritten.is_none() && encoded.is_some();
        self.outgoing.decoded = self.admission.encoded.is_some() && !sends_encoded;
        self.outgoing.kind = Some(kind);
        self.outgoing.body = match (rewritten, encoded) {
            (Some(rewritten), _) => rewritten,
            (None, Some(encoded)) => encoded.clone(),
            (None, None) => body.clone(),
        };
        self.outgoing.model = Some(rewrite::upstream_model(info, client, fallback).to_owned());
        Ok(())
    }

    /// The API the current attempt calls upstream (the caller's until an attempt starts).
    pub fn upstream_kind(&self) -> ApiKind {
        self.outgoing.kind.unwrap_or(self.admission.kind)
    }

    /// The current attempt translates: it calls another API than the caller's.
    pub fn translates(&self) -> bool {
        self.upstream_kind() != self.admission.kind
    }

    /// Why no further attempt could be made with this request, if that is how it ended.
    pub fn refusal(&self) -> Option<&GatewayError> {
        self.outgoing.refused.as_ref()
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
