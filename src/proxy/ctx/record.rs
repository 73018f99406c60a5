//! The record part of a request: the one usage record each routed request leaves, whatever ends it.

use bytes::Bytes;
use chrono::{DateTime, FixedOffset};

use super::answer::CLIENT_CLOSED;
use super::RequestCtx;
use crate::duration::millis;
use crate::usage::{CapturedHeaders, CapturedRecord, RawTexts, UsageQueue, UsageRecord};

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

/// The record to send, once the request reached routing, and what went wrong.
#[derive(Default)]
pub(super) struct Record {
    /// Set once the request reached routing; taken when its record is sent.
    pending: Option<Box<PendingRecord>>,
    /// What went wrong, for the record and the log (never a key).
    error: Option<String>,
}

impl Record {
    pub(super) fn set_error(&mut self, why: String) {
        self.error = Some(why);
    }
}

impl RequestCtx {
    /// The request reached routing: it leaves this record when it ends.
    pub fn open_record(&mut self, pending: PendingRecord) {
        self.record.pending = Some(Box::new(pending));
    }

    /// Sends this request's record (once): `status` as the caller saw it.
    pub fn send_record(&mut self, status: u16) {
        let Some(p) = self.record.pending.take() else {
            return;
        };
        let p = *p;
        let response = self.answer.tap_mut().and_then(|t| t.take_record_body());
        let tap = self.answer.tap();
        let info = self.admission.info.as_ref();
        let row = UsageRecord {
            time: p.time,
            ip: p.ip,
            model: self.model().to_owned(),
            kind: p.kind,
            tokens: tap.and_then(|t| t.usage()).unwrap_or_default(),
            tool: info.is_some_and(|i| i.tool),
            multimodal: info.is_some_and(|i| i.multimodal),
            // Rendered by the writer from `raw`.
            headers: String::new(),
            request: None,
            response: None,
            backend: self.client().map(|c| c.name.clone()),
            upstream_model: tap
                .and_then(|t| t.upstream_model().map(str::to_owned))
                .or_else(|| self.outgoing_model().map(str::to_owned)),
            stream: info.is_some_and(|i| i.stream),
            status,
            latency_ms: millis(self.started.elapsed()),
            first_token_ms: self.first_token().map(millis),
            attempts: self.attempt.as_ref().map_or(0, |a| a.count()),
            error: self.record.error.take(),
            key_name: self.admission.key.as_ref().map(|k| k.name().to_owned()),
            cost_usd: None,
            usage_estimated: false,
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

impl Drop for RequestCtx {
    /// A request dropped before `logging` ran (the server stopped under it) still leaves its record.
    fn drop(&mut self) {
        if self.record.pending.is_some() {
            self.record
                .error
                .get_or_insert_with(|| "request cancelled before it finished".into());
            self.send_record(CLIENT_CLOSED);
        }
    }
}
