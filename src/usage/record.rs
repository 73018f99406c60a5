//! One usage record (a row of `records`), the form a request hands it over in, and the token counts a backend
//! reports.

use bytes::Bytes;
use chrono::{DateTime, FixedOffset};

use super::headers::lossy;
pub use super::headers::{capture_headers, headers_json, CapturedHeaders};
pub use crate::tokens::TokenUsage;

/// Everything recorded about one routed request. Field order follows the table's columns.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    /// When the request arrived, in the server's local time zone (decides the monthly file).
    pub time: DateTime<FixedOffset>,
    /// First X-Forwarded-For entry, else X-Real-IP, else the socket peer.
    pub ip: String,
    /// The model as requested.
    pub model: String,
    /// chat.completions, text_completion, embeddings, responses, ...
    pub kind: String,
    pub tokens: TokenUsage,
    /// The request has tools or functions.
    pub tool: bool,
    /// The request has a content part that is not text.
    pub multimodal: bool,
    /// JSON object of the request headers, credentials replaced by `***`.
    pub headers: String,
    pub request: Option<String>,
    pub response: Option<String>,
    /// Name of the client that answered (or was tried last).
    pub backend: Option<String>,
    /// The model the backend says answered (its `model` field), else the name sent upstream.
    pub upstream_model: Option<String>,
    pub stream: bool,
    /// Status sent to the caller; 499 when the caller went away first.
    pub status: u16,
    pub latency_ms: u64,
    pub first_token_ms: Option<u64>,
    pub attempts: u32,
    pub error: Option<String>,
    /// Name of the gateway key the caller authenticated with (`auth.keys[i].name`); `None` with auth off.
    pub key_name: Option<String>,
    /// What the request cost in USD by the price table; `None` when its model has no price.
    pub cost_usd: Option<f64>,
    /// The token counts are the gateway's estimate (the backend reported none), not the backend's.
    pub usage_estimated: bool,
    /// A short hash of the request's affinity key (`routing.affinity.keys`), never the key itself; `None`
    /// when its tier does not balance by affinity or it had no key.
    pub affinity_key: Option<String>,
    /// The gateway's id of the request (a UUIDv7, the `x-request-id` of its answer); `None` in records
    /// written before ids existed.
    pub request_id: Option<String>,
    /// The node that served it (`cluster.node`, default the host name).
    pub node: Option<std::sync::Arc<str>>,
}

/// A record as a request hands it over: the row, and the texts that take time to render (the headers as
/// JSON, the bodies as lossy UTF-8) still raw, so that the writer renders them off the request path.
#[derive(Debug)]
pub struct CapturedRecord {
    /// The row; its `headers`, `request` and `response` are filled in from `raw` by [`CapturedRecord::render`].
    pub row: UsageRecord,
    pub raw: Option<Box<RawTexts>>,
}

/// The raw texts of a [`CapturedRecord`].
#[derive(Debug, Default)]
pub struct RawTexts {
    /// The request headers, credentials' values already left out: see [`capture_headers`].
    pub headers: CapturedHeaders,
    pub request: Option<Bytes>,
    pub response: Option<RawBody>,
    /// Bodies are cut at this many bytes.
    pub max_body: usize,
}

/// A response body as a request hands it over.
pub enum RawBody {
    /// As received: the writer decodes it (lossy UTF-8) and cuts it.
    Bytes(Bytes),
    /// Made by the writer, then cut: a stream's rebuilt message, rendered to JSON off the request path.
    Later(Box<dyn FnOnce() -> String + Send>),
}

impl RawBody {
    /// The text for a record, cut at `max` bytes on a character boundary.
    pub fn render(self, max: usize) -> String {
        match self {
            RawBody::Bytes(bytes) => cut(&bytes, max),
            RawBody::Later(make) => truncate(make(), max),
        }
    }
}

impl std::fmt::Debug for RawBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawBody::Bytes(bytes) => f.debug_tuple("Bytes").field(bytes).finish(),
            RawBody::Later(_) => f.write_str("Later(..)"),
        }
    }
}

impl CapturedRecord {
    /// The finished row.
    pub fn render(self) -> UsageRecord {
        let mut row = self.row;
        if let Some(raw) = self.raw {
            row.headers = raw.headers.render();
            row.request = raw.request.map(|b| cut(&b, raw.max_body));
            row.response = raw.response.map(|b| b.render(raw.max_body));
        }
        row
    }
}

impl CapturedRecord {
    /// Roughly the bytes a queued record holds: its texts, and a fixed share for the rest (the row, its boxes,
    /// the queue's slot). A body the writer makes later counts as large as the record may keep it.
    pub fn size(&self) -> usize {
        const FIXED: usize = 512;
        let r = &self.row;
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let row = r.ip.len()
            + r.model.len()
            + r.kind.len()
            + r.headers.len()
            + text(&r.request)
            + text(&r.response)
            + text(&r.backend)
            + text(&r.upstream_model)
            + text(&r.error)
            + text(&r.key_name)
            + text(&r.affinity_key)
            + text(&r.request_id)
            + r.node.as_deref().map_or(0, str::len);
        let raw = self.raw.as_deref().map_or(0, |raw| {
            let response = match &raw.response {
                Some(RawBody::Bytes(bytes)) => bytes.len(),
                Some(RawBody::Later(_)) => raw.max_body,
                None => 0,
            };
            raw.headers.as_bytes().len() + raw.request.as_ref().map_or(0, Bytes::len) + response
        });
        FIXED + row + raw
    }

    /// Keeps at most `max` bytes of the captured headers (see [`CapturedHeaders::limit`]).
    pub fn limit_headers(&mut self, max: usize) {
        if let Some(raw) = self.raw.as_deref_mut() {
            raw.headers.limit(max);
        }
    }

    /// Makes a body that the writer would make later now, cut as the record keeps it: a record that is
    /// written to the spool must hold all of its texts.
    pub fn settle(&mut self) {
        let Some(raw) = self.raw.as_deref_mut() else {
            return;
        };
        if let Some(RawBody::Later(_)) = raw.response {
            if let Some(body) = raw.response.take() {
                let text = body.render(raw.max_body);
                raw.response = Some(RawBody::Bytes(Bytes::from(text.into_bytes())));
            }
        }
    }
}

impl From<UsageRecord> for CapturedRecord {
    /// A row whose texts are already rendered.
    fn from(row: UsageRecord) -> Self {
        CapturedRecord { row, raw: None }
    }
}

/// A copy of the part of `body` that [`cut`] reads for a record cut at `max` bytes. A copy: `body` may be a
/// slice of a larger buffer (Pingora's reads) that the queue would otherwise keep alive.
pub fn window(body: &[u8], max: usize) -> Bytes {
    Bytes::copy_from_slice(&body[..body.len().min(max.saturating_add(4))])
}

/// `body` as lossy UTF-8, cut to at most `max` bytes at a character boundary.
pub fn cut(body: &[u8], max: usize) -> String {
    // Decoding never shortens the input, and a character needs at most 4 bytes to be told apart from
    // garbage, so the first `max + 4` bytes decode to the same first `max` bytes as the whole body would.
    let window = &body[..body.len().min(max.saturating_add(4))];
    truncate(lossy(window).into_owned(), max)
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use http::{HeaderMap, HeaderValue};

    #[test]
    fn a_captured_record_renders_like_one_built_at_once() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_static("Bearer sk-secret"),
        );
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let captured = capture_headers(&headers);
        assert!(
            !format!("{captured:?}").contains("sk-secret"),
            "a credential is never held"
        );
        let row = crate::usage::sqlite::tests::record("2026-11-26T10:00:00+01:00");
        let raw = RawTexts {
            headers: captured,
            request: Some(Bytes::from_static(b"{\"model\":\"m\"}")),
            response: Some(RawBody::Bytes(Bytes::from_static(b"abc\xffdef"))),
            max_body: 5,
        };
        let rendered = CapturedRecord {
            row: row.clone(),
            raw: Some(Box::new(raw)),
        }
        .render();
        let parsed: serde_json::Value = serde_json::from_str(&rendered.headers).unwrap();
        let expected = serde_json::json!({
            "authorization": "***",
            "content-type": "application/json",
            "x-multi": "a, b",
        });
        assert_eq!(parsed, expected);
        assert_eq!(rendered.request.as_deref(), Some("{\"mod"));
        assert_eq!(
            rendered.response.as_deref(),
            Some("abc"),
            "cut on a character boundary"
        );
        assert_eq!(CapturedRecord::from(row.clone()).render(), row);
        // A body made by the writer (a stream's rebuilt message) is cut the same way.
        let raw = RawTexts {
            response: Some(RawBody::Later(Box::new(|| "h\u{e9}llo".to_string()))),
            max_body: 2,
            ..RawTexts::default()
        };
        let rendered = CapturedRecord {
            row,
            raw: Some(Box::new(raw)),
        }
        .render();
        assert_eq!(rendered.response.as_deref(), Some("h"));
    }

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut(b"hello", 10), "hello");
        assert_eq!(cut(b"hello", 5), "hello");
        assert_eq!(cut(b"hello", 3), "hel");
        assert_eq!(cut(b"hello", 0), "");
        let text = "a\u{e9}\u{4e2d}\u{1f600}"; // 1 + 2 + 3 + 4 bytes
        let expected = [
            "",
            "a",
            "a",
            "a\u{e9}",
            "a\u{e9}",
            "a\u{e9}",
            "a\u{e9}\u{4e2d}",
        ];
        for (max, expected) in expected.iter().enumerate() {
            assert_eq!(cut(text.as_bytes(), max), *expected, "max {max}");
        }
        assert_eq!(cut(text.as_bytes(), 9), "a\u{e9}\u{4e2d}");
        assert_eq!(cut(text.as_bytes(), 10), text);
    }

    #[test]
    fn cut_decodes_invalid_bytes_lossily() {
        assert_eq!(cut(b"ab\xffcd", 100), "ab\u{fffd}cd");
        assert_eq!(
            cut(b"ab\xffcd", 4),
            "ab",
            "the replacement character needs 3 bytes"
        );
        assert_eq!(cut(b"ab\xffcd", 5), "ab\u{fffd}");
        // A 4-byte character cut after 3 bytes is dropped, not turned into a replacement character.
        assert_eq!(cut("ab\u{1f600}".as_bytes(), 5), "ab");
    }
}
