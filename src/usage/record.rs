//! One usage record (a row of `records`), the form a request hands it over in, and the token counts a backend
//! reports.

use std::borrow::Cow;

use bytes::Bytes;
use chrono::{DateTime, FixedOffset};
use http::HeaderMap;

/// Token counts from a backend's `usage` object; a count the backend did not report stays `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt: Option<i64>,
    pub completion: Option<i64>,
    pub total: Option<i64>,
    pub cached: Option<i64>,
    pub reasoning: Option<i64>,
}

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
            row.headers = raw.headers.to_json();
            row.request = raw.request.map(|b| cut(&b, raw.max_body));
            row.response = raw.response.map(|b| b.render(raw.max_body));
        }
        row
    }
}

impl From<UsageRecord> for CapturedRecord {
    /// A row whose texts are already rendered.
    fn from(row: UsageRecord) -> Self {
        CapturedRecord { row, raw: None }
    }
}

/// Request headers copied into one buffer, `name:value\n` each (a name holds no `:`, a value no `\n`).
/// Copied, not shared: Pingora's header values are slices of the connection's read buffer, which a record
/// waiting in the queue would otherwise keep alive (and the next request would allocate afresh).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CapturedHeaders(Vec<u8>);

impl CapturedHeaders {
    /// The `Headers` column's JSON ([`headers_json`]). The buffer is checked as UTF-8 once, so that valid
    /// headers (almost always) need no check of their own.
    pub fn to_json(&self) -> String {
        let Ok(text) = std::str::from_utf8(&self.0) else {
            return headers_json(self.iter());
        };
        // Header values rarely hold a byte that JSON must escape: one pass over the whole buffer tells,
        // and then every name and value is copied whole.
        let escape = any_escape(text);
        let put = |out: &mut String, piece: &str| {
            if escape {
                push_escaped(out, piece);
            } else {
                out.push_str(piece);
            }
        };
        let mut out = String::with_capacity(text.len() + text.len() / 4 + 2);
        out.push('{');
        // [`capture_headers`] reads a `HeaderMap`, whose names are lower case and which yields a repeated
        // header's values one after another: a repetition only ever follows its own name.
        let mut previous = None;
        for (name, value) in text
            .split_terminator('\n')
            .filter_map(|l| l.split_once(':'))
        {
            let redacted = REDACTED_HEADERS.contains(&name);
            if previous == Some(name) {
                if !redacted {
                    // Reopens the previous value's string and joins this one to it.
                    out.pop();
                    out.push_str(", ");
                    put(&mut out, value);
                    out.push('"');
                }
                continue;
            }
            previous = Some(name);
            if out.len() > 1 {
                out.push(',');
            }
            out.push('"');
            put(&mut out, name);
            out.push_str("\":");
            if redacted {
                out.push_str("\"***\"");
            } else {
                out.push('"');
                put(&mut out, value);
                out.push('"');
            }
        }
        out.push('}');
        out
    }

    /// Each header as (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .filter_map(|line| {
                let at = line.iter().position(|&b| b == b':')?;
                let name = std::str::from_utf8(&line[..at]).ok()?;
                Some((name, &line[at + 1..]))
            })
    }
}

/// The request headers for a record, in one allocation; the values of credentials are left out here already.
pub fn capture_headers(headers: &HeaderMap) -> CapturedHeaders {
    let size = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 2)
        .sum();
    let mut flat = Vec::with_capacity(size);
    for (name, value) in headers {
        flat.extend_from_slice(name.as_str().as_bytes());
        flat.push(b':');
        if !REDACTED_HEADERS.contains(&name.as_str()) {
            flat.extend_from_slice(value.as_bytes());
        }
        flat.push(b'\n');
    }
    CapturedHeaders(flat)
}

/// A copy of the part of `body` that [`cut`] reads for a record cut at `max` bytes. A copy: `body` may be a
/// slice of a larger buffer (Pingora's reads) that the queue would otherwise keep alive.
pub fn window(body: &[u8], max: usize) -> Bytes {
    Bytes::copy_from_slice(&body[..body.len().min(max.saturating_add(4))])
}

/// Request headers whose values are credentials: recorded as `***`.
const REDACTED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "api-key",
    "x-api-key",
    "cookie",
];

/// The request headers as a JSON object for the `Headers` column: names lower-case, values lossy UTF-8,
/// a repeated header's values joined with ", ", and credentials replaced by `***`.
pub fn headers_json<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let pairs = headers
        .into_iter()
        .map(|(name, value)| (lower(name), lossy(value)))
        .collect();
    json_object(pairs)
}

/// The object of [`headers_json`] from decoded, lower-case pairs.
fn json_object(pairs: Vec<(Cow<'_, str>, Cow<'_, str>)>) -> String {
    // Written straight into the string, borrowing names and values where it can: this runs for every
    // record, and a request has a handful of headers (so the quadratic grouping below costs nothing).
    let mut out = String::with_capacity(
        pairs
            .iter()
            .map(|(n, v)| n.len() + v.len() + 8)
            .sum::<usize>()
            + 2,
    );
    out.push('{');
    for (i, (name, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(seen, _)| seen == name) {
            continue;
        }
        if out.len() > 1 {
            out.push(',');
        }
        push_json_string(&mut out, name);
        out.push(':');
        if REDACTED_HEADERS.contains(&name.as_ref()) {
            // A redacted header stays a single `***` however often it is repeated.
            out.push_str("\"***\"");
            continue;
        }
        let mut values = pairs[i..].iter().filter(|(n, _)| n == name).map(|(_, v)| v);
        let mut joined = values.next().cloned().unwrap_or_default();
        for value in values {
            let joined = joined.to_mut();
            joined.push_str(", ");
            joined.push_str(value);
        }
        push_json_string(&mut out, &joined);
    }
    out.push('}');
    out
}

fn lower(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// Bytes that a JSON string cannot hold as they are: `"`, `\\` and the control characters.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Appends `text` as a JSON string literal.
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    push_escaped(out, text);
    out.push('"');
}

/// Appends `text` escaped for a JSON string, copying the runs that need no escape whole.
fn push_escaped(out: &mut String, text: &str) {
    let bytes = text.as_bytes();
    let mut run = 0;
    while let Some(offset) = bytes[run..]
        .iter()
        .position(|&b| NEEDS_ESCAPE[usize::from(b)])
    {
        let at = run + offset;
        out.push_str(&text[run..at]);
        match bytes[at] {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            control => out.push_str(&format!("\\u{control:04x}")),
        }
        run = at + 1;
    }
    out.push_str(&text[run..]);
}

/// Whether `text` holds a byte that JSON escapes, other than the line ends of a [`CapturedHeaders`] buffer.
/// Without an early exit, so that the compiler can check many bytes at once.
fn any_escape(text: &str) -> bool {
    text.bytes().fold(false, |any, b| {
        any | (b < 0x20 && b != b'\n') | (b == b'"') | (b == b'\\')
    })
}

/// `bytes` as text, replacing invalid UTF-8; the strict check first, as it is much faster on valid text
/// (almost always the case) than the lossy decoder.
fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
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

    #[test]
    fn header_values_are_escaped_into_valid_json() {
        let tricky = "a\"b\\c\nd\te\u{1}f\u{e9}";
        let json = headers_json([("X-Odd", tricky.as_bytes()), ("x-odd", b"2".as_slice())]);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["x-odd"], format!("{tricky}, 2"));
    }

    fn json(headers: &[(&'static str, &'static str)]) -> serde_json::Value {
        let pairs = headers.iter().map(|(n, v)| (*n, v.as_bytes()));
        serde_json::from_str(&headers_json(pairs)).unwrap()
    }

    #[test]
    fn credentials_are_redacted_whatever_the_case_of_their_names() {
        let headers = json(&[
            ("Authorization", "Bearer sk-secret"),
            ("API-KEY", "azure-secret"),
            ("X-Api-Key", "anthropic-secret"),
            ("Cookie", "session=1"),
            ("cookie", "other=2"),
            ("Proxy-Authorization", "Basic x"),
            ("Content-Type", "application/json"),
        ]);
        let expected = serde_json::json!({
            "authorization": "***",
            "api-key": "***",
            "x-api-key": "***",
            "cookie": "***",
            "proxy-authorization": "***",
            "content-type": "application/json",
        });
        assert_eq!(headers, expected);
        let text = headers.to_string();
        assert!(
            !text.contains("secret") && !text.contains("session"),
            "{text}"
        );
    }

    #[test]
    fn repeated_headers_are_joined_and_values_decoded_lossily() {
        let pairs: [(&str, &[u8]); 3] = [
            ("Accept", b"text/plain"),
            ("X-Forwarded-For", b"1.2.3.4"),
            ("accept", b"application/\xffjson"),
        ];
        let headers: serde_json::Value = serde_json::from_str(&headers_json(pairs)).unwrap();
        let expected = serde_json::json!({
            "accept": "text/plain, application/\u{fffd}json",
            "x-forwarded-for": "1.2.3.4",
        });
        assert_eq!(headers, expected);
        assert_eq!(headers_json([]), "{}");
    }

    use http::HeaderValue;

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
        let row = crate::usage::store::tests::record("2026-11-26T10:00:00+01:00");
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
    fn captured_headers_render_like_headers_json_valid_or_not() {
        // Plain text (copied whole), invalid UTF-8 (the lossy path), and bytes JSON escapes: a quote, a
        // backslash and a tab, in a repeated header and alone.
        for odd in [&b"plain"[..], b"caf\xe9 (latin-1)", b"say \"hi\"\t\\o/"] {
            let mut headers = HeaderMap::new();
            headers.insert("x-odd", HeaderValue::from_bytes(odd).unwrap());
            headers.append("accept", HeaderValue::from_static("a/b"));
            headers.append("accept", HeaderValue::from_bytes(odd).unwrap());
            headers.append("accept", HeaderValue::from_static("c/d"));
            headers.insert("cookie", HeaderValue::from_static("secret=1"));
            headers.append("cookie", HeaderValue::from_static("secret=2"));
            headers.insert("host", HeaderValue::from_static("h"));
            let captured = capture_headers(&headers);
            let direct = headers_json(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
            assert_eq!(captured.to_json(), direct);
            assert!(!direct.contains("secret"));
            let value: serde_json::Value = serde_json::from_str(&direct).unwrap();
            assert_eq!(value["cookie"], "***");
            assert_eq!(value["host"], "h");
            let odd = String::from_utf8_lossy(odd);
            assert_eq!(value["accept"], format!("a/b, {odd}, c/d"));
            assert_eq!(value["x-odd"], *odd);
        }
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
