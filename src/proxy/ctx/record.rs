//! The record part of a request: its accounts (cost, budget, counted tokens) and the one usage record each
//! routed request leaves, whatever ends it.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, FixedOffset};

use super::answer::CLIENT_CLOSED;
use super::RequestCtx;
use crate::accounting::{Accountant, Bill, Settled, ToCount};
use crate::duration::millis;
use crate::endpoints::ApiKind;
use crate::ratelimit::{Reservation, Slot};
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
    /// Set once the request reached routing: its accounts are settled when it ends.
    accountant: Option<Arc<Accountant>>,
    /// The cost reserved under the key's budget, settled when the request ends (boxed: most requests have none).
    reservation: Option<Box<Reservation>>,
    /// The key's concurrency slot, freed when the request ends (dropped with the state, whatever happens).
    slot: Option<Box<Slot>>,
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

    /// The request reached routing: its accounts are settled by `accountant` when it ends.
    pub fn open_accounts(&mut self, accountant: Arc<Accountant>) {
        self.record.accountant = Some(accountant);
    }

    /// Holds the key's concurrency slot and the cost reserved under its budget until the request ends.
    pub fn hold_limits(&mut self, slot: Option<Slot>, reservation: Option<Reservation>) {
        self.record.slot = slot.map(Box::new);
        self.record.reservation = reservation.map(Box::new);
    }

    /// Settles this request's accounts and sends its record (once): `status` as the caller saw it. When the
    /// backend reported no usage, the record goes once its tokens are counted, off this thread.
    pub fn send_record(&mut self, status: u16) {
        // The request has ended: its slot is free for the key's next one.
        drop(self.record.slot.take());
        let Some(accountant) = self.record.accountant.take() else {
            return;
        };
        let reported = self.reported_usage();
        let count = self.what_to_count(status, reported.is_some());
        let record = self.captured_record(status);
        let reservation = self.record.reservation.take().map(|r| *r);
        let Some(rt) = self.runtime() else {
            // Never: a routed request has its runtime. The record goes as it is.
            if let Some((queue, record)) = record {
                queue.send(record);
            }
            return;
        };
        let bill = Bill {
            kind: self.counted_as().0,
            prices: &rt.config.prices,
            answered_model: self.answer.tap().and_then(|t| t.upstream_model()),
            sent_model: self.outgoing_model(),
            requested_model: self.model(),
            model_label: self.model_label(),
            backend: self.client().map(|c| c.name.as_str()),
            key: self.admission.key.as_ref(),
            reservation,
            reported,
        };
        accountant.settle(bill, count, move |settled: Settled| {
            if let Some((queue, mut record)) = record {
                record.row.tokens = settled.tokens;
                record.row.cost_usd = settled.cost_usd;
                record.row.usage_estimated = settled.estimated;
                queue.send(record);
            }
        });
    }

    /// What to count when the backend reported no usage and the request is billable (answered, cut short, or
    /// left by the caller after it was sent): the request body, and what the tap kept of the answer.
    fn what_to_count(&mut self, status: u16, reported: bool) -> Option<ToCount> {
        let (kind, request) = self.counted_as();
        let countable = matches!(
            kind,
            ApiKind::Chat | ApiKind::Completions | ApiKind::Responses | ApiKind::Embeddings
        );
        let billable =
            (200..300).contains(&status) || status == CLIENT_CLOSED || self.answer.was_cut_short();
        let tried = self.attempt.as_ref().is_some_and(|a| a.count() > 0);
        (!reported && countable && billable && tried).then(|| ToCount {
            request,
            generated: self.answer.tap_mut().and_then(|t| t.generated()),
        })
    }

    /// The API and the request body tokens are counted as: a Messages request sent translated to chat is
    /// counted as the chat request it became (what the backend answered to, and what the tap read).
    fn counted_as(&self) -> (ApiKind, Bytes) {
        match self.admission.chat.as_deref() {
            Some(chat) if self.upstream_kind() == ApiKind::Chat => {
                (ApiKind::Chat, chat.body.clone())
            }
            _ => (self.kind(), self.admission.body.clone()),
        }
    }

    /// The record to send, with its queue, once the request reached routing with recording on.
    fn captured_record(&mut self, status: u16) -> Option<(UsageQueue, CapturedRecord)> {
        let p = *self.record.pending.take()?;
        let response = self.answer.tap_mut().and_then(|t| t.take_record_body());
        let tap = self.answer.tap();
        let info = self.admission.info.as_ref();
        let row = UsageRecord {
            time: p.time,
            ip: p.ip,
            model: self.model().to_owned(),
            kind: p.kind,
            tokens: self.reported_usage().unwrap_or_default(),
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
            affinity_key: self.affinity_key(),
            request_id: Some(self.request_id().to_owned()).filter(|id| !id.is_empty()),
            node: self.runtime().map(|rt| Arc::clone(&rt.config.cluster.node)),
        };
        let raw = RawTexts {
            headers: p.headers,
            request: p.request,
            response,
            max_body: p.max_body,
        };
        let record = CapturedRecord {
            row,
            raw: Some(Box::new(raw)),
        };
        Some((p.queue, record))
    }
}

impl Drop for RequestCtx {
    /// A request dropped before `logging` ran (the server stopped under it) still leaves its record.
    fn drop(&mut self) {
        if self.record.accountant.is_some() {
            self.record
                .error
                .get_or_insert_with(|| "request cancelled before it finished".into());
            self.send_record(CLIENT_CLOSED);
        }
    }
}
