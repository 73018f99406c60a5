//! The answer part of a request: the response tap, the first token's time, and how the answer ended.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::RequestCtx;
use crate::dialect::relay::Relay;
use crate::endpoints::ApiKind;
use crate::routing::responses_ids::Origin;
use crate::tap::ResponseTap;
use crate::usage::TokenUsage;

/// Status recorded for a request whose caller went away before the answer was complete (nginx's convention).
pub(super) const CLIENT_CLOSED: u16 = 499;
/// Status recorded for an answer the backend broke off after its header reached the caller.
const CUT_SHORT: u16 = 502;

/// The backend's answer as it passes through.
#[derive(Default)]
pub(super) struct Answer {
    /// Boxed, like the record: the ctx is moved with Pingora's per-request future, so it is kept small.
    tap: Option<Box<ResponseTap>>,
    /// Translates the answer (after the tap, which reads it in the backend's dialect) for the caller.
    relay: Option<Box<Relay>>,
    /// The response is an SSE stream.
    sse: bool,
    first_token: Option<Duration>,
    /// The backend broke off its answer after the header reached the caller.
    cut_short: bool,
    /// The backend's status is a success (2xx).
    ok: bool,
    /// A Responses API answer's id was handed out for remembering.
    id_noted: bool,
}

impl Answer {
    /// A new attempt: nothing of an earlier answer counts.
    pub(super) fn clear(&mut self) {
        self.tap = None;
        self.relay = None;
    }

    pub(super) fn tap(&self) -> Option<&ResponseTap> {
        self.tap.as_deref()
    }

    pub(super) fn tap_mut(&mut self) -> Option<&mut ResponseTap> {
        self.tap.as_deref_mut()
    }

    /// The backend broke off its answer after the header reached the caller.
    pub(super) fn was_cut_short(&self) -> bool {
        self.cut_short
    }
}

impl RequestCtx {
    /// The answer's head is accepted: its body goes through `tap`, then `relay` when it is translated.
    /// `sse`: the caller gets a stream.
    /// `ok`: the backend's status is a success.
    pub fn answer_with(&mut self, tap: ResponseTap, relay: Option<Relay>, sse: bool, ok: bool) {
        self.answer.sse = sse;
        self.answer.ok = ok;
        self.answer.tap = Some(Box::new(tap));
        self.answer.relay = relay.map(Box::new);
    }

    /// Passes a piece of the answer's body through the tap; at its end, adds what the tap still held.
    /// `Err` names why the body cannot be passed on (it does not decode). Untouched without a tap.
    pub fn pass_body(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<(), String> {
        let Some(tap) = self.answer.tap_mut() else {
            return Ok(());
        };
        let mut out = body.take().map(|b| tap.feed(b));
        if let Some(why) = tap.broken() {
            return Err(why.to_owned());
        }
        if end_of_stream {
            let rest = tap.finish();
            if !rest.is_empty() {
                out = Some(match out {
                    Some(head) if !head.is_empty() => {
                        let mut joined = bytes::BytesMut::with_capacity(head.len() + rest.len());
                        joined.extend_from_slice(&head);
                        joined.extend_from_slice(&rest);
                        joined.freeze()
                    }
                    _ => rest,
                });
            }
        }
        if let Some(relay) = self.answer.relay.as_deref_mut() {
            out = translate(relay, out, end_of_stream)?;
        }
        *body = out;
        self.note_first_token();
        Ok(())
    }

    /// The answer is an SSE stream.
    pub fn is_stream_answer(&self) -> bool {
        self.answer.sse
    }

    /// Notes the first token's arrival time once the tap has seen it.
    pub fn note_first_token(&mut self) {
        let relay_saw = || {
            self.answer
                .relay
                .as_deref()
                .is_some_and(Relay::saw_first_token)
        };
        if self.answer.first_token.is_none()
            && (self.answer.tap().is_some_and(|t| t.saw_first_token()) || relay_saw())
        {
            self.answer.first_token = Some(self.started.elapsed());
        }
    }

    pub fn first_token(&self) -> Option<Duration> {
        self.answer.first_token
    }

    /// The request ends: a stream cut short (the caller left, the backend broke) may hold a last event that
    /// carries the usage, so read what arrived. A no-op for an answer that ended.
    pub fn end_answer(&mut self) {
        if let Some(tap) = self.answer.tap_mut() {
            tap.abandon();
        }
        if let Some(relay) = self.answer.relay.as_deref_mut() {
            relay.abandon();
        }
        self.note_first_token();
    }

    /// The tokens the answer reported (none without an answer).
    pub fn tokens(&self) -> TokenUsage {
        self.reported_usage().unwrap_or_default()
    }

    /// The usage the backend reported: read by the relay when the answer is in another dialect than chat's
    /// (an Anthropic backend's), else by the tap.
    pub fn reported_usage(&self) -> Option<TokenUsage> {
        if self.kind() == ApiKind::StoredResponse {
            // A stored response fetched again carries the usage of its making, which was counted then.
            return None;
        }
        match self.answer.relay.as_deref() {
            Some(relay) => relay.usage(),
            None => self.answer.tap().and_then(|t| t.usage()),
        }
    }

    /// Whether the caller has the whole answer, given how many body bytes reached its connection: the
    /// stream's `[DONE]` or the end of the backend's body was among them.
    pub fn answer_delivered(&self, bytes_sent: usize) -> bool {
        let sent = u64::try_from(bytes_sent).unwrap_or(u64::MAX);
        match self.answer.relay.as_deref() {
            Some(relay) => relay.delivered(sent),
            None => self.answer.tap().is_some_and(|t| t.delivered(sent)),
        }
    }

    /// Whether [`RequestCtx::new_response_id`] may still find an id: a successful Responses API answer whose
    /// id was not noted yet. Inlined: it is asked for every piece of every answer's body.
    #[inline]
    pub fn awaits_response_id(&self) -> bool {
        !self.answer.id_noted && self.answer.ok && self.kind() == ApiKind::Responses
    }

    /// A successful Responses API answer's id, once, as soon as it is seen: with who made it (the client, or
    /// the gateway translating a chat answer) and the model the caller asked for.
    pub fn new_response_id(&mut self) -> Option<(String, Origin, String)> {
        if !self.awaits_response_id() {
            return None;
        }
        let (id, origin) = match self.answer.relay.as_deref() {
            Some(relay) => (relay.response_id()?.to_owned(), Origin::Translated),
            None => {
                let id = self.answer.tap()?.response_id()?.to_owned();
                let name = Arc::from(self.client()?.name.as_str());
                (id, Origin::Client(name))
            }
        };
        self.answer.id_noted = true;
        Some((id, origin, self.model().to_owned()))
    }

    /// Notes that the backend broke off an answer whose header already reached the caller.
    pub fn answer_cut_short(&mut self) {
        self.answer.cut_short = true;
    }

    /// The status the record, the access line and the metrics show (see [`final_status`]).
    pub fn final_status(&self, written: Option<u16>, caller_left: bool, bytes_sent: usize) -> u16 {
        let delivered = self.answer_delivered(bytes_sent);
        final_status(written, caller_left, self.answer.cut_short, delivered)
    }
}

/// The tap's output translated for the caller; at the end of the body, with what the relay still held.
fn translate(relay: &mut Relay, out: Option<Bytes>, end: bool) -> Result<Option<Bytes>, String> {
    if out.is_none() && !end {
        return Ok(None);
    }
    let mut caller = match out {
        Some(piece) => relay.feed(piece).map_err(|e| e.to_string())?,
        None => Bytes::new(),
    };
    if end {
        let rest = relay.finish();
        if caller.is_empty() {
            caller = rest;
        } else if !rest.is_empty() {
            let mut joined = bytes::BytesMut::with_capacity(caller.len() + rest.len());
            joined.extend_from_slice(&caller);
            joined.extend_from_slice(&rest);
            caller = joined.freeze();
        }
    }
    Ok(Some(caller))
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
