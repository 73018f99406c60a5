//! A request's headers for its usage record: captured in one buffer with credentials left out, rendered as the
//! `Headers` column's JSON object, and cut with a marker when a queue limits them.

use std::borrow::Cow;

use http::HeaderMap;

/// Request headers copied into one buffer, `name:value\n` each (a name holds no `:`, a value no `\n`).
/// Copied, not shared: Pingora's header values are slices of the connection's read buffer, which a record
/// waiting in the queue would otherwise keep alive (and the next request would allocate afresh).
///
/// A queue limits what it keeps ([`CapturedHeaders::limit`]): the buffer is cut, and the JSON rendered from it
/// is cut too, with a marker saying how much was left out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CapturedHeaders {
    buf: Vec<u8>,
    /// Bytes cut off the end of `buf` by [`CapturedHeaders::limit`].
    omitted: usize,
    /// The most the JSON may take, once limited.
    max: Option<usize>,
}

impl CapturedHeaders {
    /// The `Headers` column's JSON ([`headers_json`]). The buffer is checked as UTF-8 once, so that valid
    /// headers (almost always) need no check of their own.
    pub fn to_json(&self) -> String {
        let Ok(text) = std::str::from_utf8(&self.buf) else {
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

    /// The `Headers` column: [`CapturedHeaders::to_json`], cut at the limit when one was set.
    pub fn render(&self) -> String {
        let json = self.to_json();
        match self.max {
            Some(max) if json.len() > max || self.omitted > 0 => {
                cap_object(&json, max, self.omitted)
            }
            _ => json,
        }
    }

    /// Keeps at most `max` bytes of the captured headers, and renders them as JSON of at most `max` bytes
    /// (see [`cap_object`]): what a queue holds of one request's headers stays bounded however large they were.
    pub fn limit(&mut self, max: usize) {
        let max = self.max.map_or(max, |m| m.min(max));
        self.max = Some(max);
        if self.buf.len() > max {
            self.omitted += self.buf.len() - max;
            self.buf.truncate(max);
            self.buf.shrink_to_fit();
        }
    }

    /// The captured bytes (`name:value\n` lines), for the spool.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes cut off by [`CapturedHeaders::limit`], and the limit; for the spool.
    pub fn cut_state(&self) -> (usize, Option<usize>) {
        (self.omitted, self.max)
    }

    /// A capture as the spool kept it.
    pub fn from_parts(buf: Vec<u8>, omitted: usize, max: Option<usize>) -> CapturedHeaders {
        CapturedHeaders { buf, omitted, max }
    }

    /// Each header as (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.buf
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
    CapturedHeaders {
        buf: flat,
        ..CapturedHeaders::default()
    }
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
pub(super) fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Room kept at the end of a cut object for the marker `…(+N bytes)` and the closing `":""}`.
const MARKER_ROOM: usize = 40;

/// `json`, an object of string members as [`CapturedHeaders::to_json`] writes it, cut to at most `max` bytes
/// (`{}` when even that does not fit) and still valid JSON: whole members while they fit, then the member
/// that does not, cut inside its value (or its name) and ending with `…(+N bytes)`, N the bytes of `json`
/// left out plus `omitted` (cut from the capture before).
fn cap_object(json: &str, max: usize, omitted: usize) -> String {
    let limit = max.saturating_sub(MARKER_ROOM);
    let Some(members) = members(json) else {
        return "{}".to_owned();
    };
    let mut out = String::with_capacity(max.min(json.len() + MARKER_ROOM));
    // (kept text, what closes it): a cut inside a name still needs an (empty) value.
    let mut close = "\"}";
    let mut kept = None;
    for (i, m) in members.iter().enumerate() {
        // The member fits whole (its value's closing quote and the object's brace included).
        if m.value.1 + 2 <= limit && (i + 1 < members.len() || omitted == 0) {
            continue;
        }
        let fits_whole = m.value.1 + 2 <= limit;
        kept = Some(if fits_whole {
            // The last member, whole; the marker tells of what the capture left out.
            m.value.1
        } else if m.value.0 < limit {
            escaped_prefix(json, m.value.0, m.value.1.min(limit))
        } else if m.name.0 < limit {
            close = "\":\"\"}";
            escaped_prefix(json, m.name.0, m.name.1.min(limit))
        } else if i > 0 {
            // Not even this name begins within the limit: the marker goes to the previous value.
            members[i - 1].value.1
        } else {
            return "{}".to_owned();
        });
        break;
    }
    let Some(end) = kept else {
        return json.to_owned();
    };
    out.push_str(&json[..end]);
    // The closing quote and brace (or more) of `json` are not left out: the output closes with its own.
    let left = (json.len() - end).saturating_sub(2) + omitted;
    out.push_str(&format!("…(+{left} bytes)"));
    out.push_str(close);
    out
}

/// Where a member's name and value (their text between the quotes) lie in an object of string members.
struct Member {
    name: (usize, usize),
    value: (usize, usize),
}

/// The members of `json` (`{"name":"value",...}` with escaped strings), or None if it is not of that shape.
fn members(json: &str) -> Option<Vec<Member>> {
    let bytes = json.as_bytes();
    let mut at = 1;
    let mut members = Vec::new();
    if bytes.first() != Some(&b'{') {
        return None;
    }
    loop {
        match bytes.get(at)? {
            b'}' => return Some(members),
            b',' => at += 1,
            _ => {}
        }
        let name = string_at(bytes, at)?;
        if bytes.get(name.1 + 1) != Some(&b':') {
            return None;
        }
        let value = string_at(bytes, name.1 + 2)?;
        at = value.1 + 1;
        members.push(Member { name, value });
    }
}

/// The text of the JSON string that opens at `at`: (first byte after the quote, the closing quote).
fn string_at(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let mut i = at + 1;
    loop {
        match bytes.get(i)? {
            b'"' => return Some((at + 1, i)),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// The end of the longest prefix of the escaped string text `json[start..end]` that stops neither inside an
/// escape (`\n`, `\u00e9`) nor inside a character.
fn escaped_prefix(json: &str, start: usize, end: usize) -> usize {
    let bytes = json.as_bytes();
    let mut at = start;
    while at < end {
        let step = match bytes[at] {
            b'\\' if bytes.get(at + 1) == Some(&b'u') => 6,
            b'\\' => 2,
            _ => json[at..].chars().next().map_or(1, char::len_utf8),
        };
        if at + step > end {
            break;
        }
        at += step;
    }
    at
}

#[cfg(test)]
mod tests;
