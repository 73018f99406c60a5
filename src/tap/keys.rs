//! Shallow reads of JSON objects: one top-level key found by searching instead of parsing, or an object's members.
//!
//! A non-stream answer is read only for `model` (near its start) and `usage` (near its end); the content in
//! between can be long. A match of `"key"` followed by `:` whose quote is not escaped is a key in valid JSON;
//! whether it is a top-level one is checked by walking only the bytes between it and the nearer end of the body.
//! A body the checking skim (`json::Cursor`) reads is read in one pass instead ([`top`]), the searches kept for
//! what it is unsure about. The same search tells a stream's event that has no usage from one that must be
//! parsed ([`null_or_absent`]), and [`members`] reads a small object (a `usage`) member by member without
//! building it.

use crate::json::Cursor;
use serde_json::value::RawValue;

/// Where to look first: `model` comes early in an answer, `usage` last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchFrom {
    Start,
    End,
}

/// The raw value of the top-level `key` of the JSON object `text`; None when the body has no such key (or is
/// not a JSON object).
pub fn top_level<'a>(text: &'a str, key: &str, from: SearchFrom) -> Option<&'a RawValue> {
    let trimmed = text.trim();
    if !(trimmed.starts_with('{') && trimmed.ends_with('}')) {
        return None;
    }
    let (bytes, name) = (text.as_bytes(), key.as_bytes());
    let quoted_name_at = |at: usize| {
        bytes[at + 1..].starts_with(name) && bytes.get(at + 1 + name.len()) == Some(&b'"')
    };
    // From quote to quote: the key is usually a few dozen bytes from where the search starts.
    let (mut start, mut end) = (0, bytes.len());
    loop {
        let at = match from {
            SearchFrom::Start => start + memchr::memchr(b'"', &bytes[start..])?,
            SearchFrom::End => memchr::memrchr(b'"', &bytes[..end])?,
        };
        if quoted_name_at(at) {
            if let Some(value) = value_if_top_level(text, at, name.len() + 2, from) {
                return Some(value);
            }
        }
        (start, end) = (at + 1, at);
    }
}

/// The raw values of an answer's top-level `model`, `usage` and `id`, as [`top_level`] finds them (`model` and
/// `id` the first given, `usage` the last).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Top<'a> {
    pub model: Option<&'a str>,
    pub usage: Option<&'a str>,
    pub id: Option<&'a str>,
}

/// [`Top`] read in one checking pass over the members (`json::Cursor`): cheaper than three searches, each
/// walking the bytes between its match and an end and parsing the value. None when the pass is unsure (text
/// serde_json refuses, an escaped key, deep nesting): then [`top_level`] decides.
pub fn top(text: &str) -> Option<Top<'_>> {
    let mut top = Top::default();
    let mut cursor = Cursor::new(text);
    cursor.object(|c, key| {
        let raw = c.raw()?;
        match key {
            b"model" => top.model = top.model.or(Some(raw)),
            b"usage" => top.usage = Some(raw),
            b"id" => top.id = top.id.or(Some(raw)),
            _ => {}
        }
        Some(())
    })?;
    cursor.end()?;
    Some(top)
}

/// Calls `each` with the key (as written between its quotes) and the raw value text of every member of the
/// JSON object `text`, in order; None when `text` is not an object. Meant for valid JSON (a `RawValue`'s
/// text): values are skipped by their quotes and brackets, not checked.
pub fn members<'a>(text: &'a str, mut each: impl FnMut(&'a str, &'a str)) -> Option<()> {
    let b = text.as_bytes();
    let mut i = skip_space(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_space(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Some(());
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(b, i)?;
        let key = text.get(i + 1..key_end - 1)?;
        i = skip_space(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_space(b, i + 1);
        let end = value_end(b, i)?;
        each(key, text.get(i..end)?);
        i = skip_space(b, end);
        match b.get(i) {
            Some(b',') => i = skip_space(b, i + 1),
            Some(b'}') => return Some(()),
            _ => return None,
        }
    }
}

fn skip_space(b: &[u8], i: usize) -> usize {
    i + b
        .get(i..)
        .map_or(0, |rest| rest.len() - rest.trim_ascii_start().len())
}

/// Just past the closing quote of the string that opens at `i`.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let k = j + memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[k] == b'"' {
            return Some(k + 1);
        }
        j = k + 2;
    }
}

/// Just past the value that starts at `i`: a string, an object or array (by its brackets), else a number or
/// literal (up to the next delimiter).
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let (mut depth, mut j) = (0usize, i);
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let rest = &b[i..];
            let len = rest
                .iter()
                .position(|&c| matches!(c, b',' | b'}' | b']') || c.is_ascii_whitespace());
            Some(i + len.unwrap_or(rest.len()))
        }
    }
}

/// Whether the JSON object `bytes` surely has no top-level `key` whose value is not `null`: searched from
/// the end, a match of `"key":` followed by `null` one level inside the outermost object says so; any other
/// value, even a nested one, says "maybe" (false), and so does a body that is not an object. Read through,
/// never parsed: the cheap check of a stream's events for usage.
pub fn null_or_absent(bytes: &[u8], key: &str) -> bool {
    let name = key.as_bytes();
    if null_last(bytes, name) {
        return true;
    }
    let trimmed = bytes.trim_ascii();
    if !(trimmed.starts_with(b"{") && trimmed.ends_with(b"}")) {
        return false;
    }
    let mut end = bytes.len();
    while let Some(at) = memchr::memrchr(b'"', &bytes[..end]) {
        end = at;
        let quoted =
            bytes[at + 1..].starts_with(name) && bytes.get(at + 1 + name.len()) == Some(&b'"');
        if !quoted || escaped(bytes, at) {
            continue;
        }
        let after_name = bytes[at + name.len() + 2..].trim_ascii_start();
        let Some(value) = after_name.strip_prefix(b":") else {
            continue; // a string, not a key
        };
        let Some(rest) = value.trim_ascii_start().strip_prefix(b"null") else {
            return false;
        };
        if walk(rest) == Some((-1, -1)) {
            return true;
        }
    }
    true
}

/// Whether `bytes` is `{...,"name":null}` with nothing around it, the key's quote not escaped: the usual shape
/// of a stream's event, and the first match the search from the end would make. Two comparisons, no search.
fn null_last(bytes: &[u8], name: &[u8]) -> bool {
    const TAIL: &[u8] = b"\":null}";
    let end = bytes.len().saturating_sub(TAIL.len());
    let Some(quote) = end.checked_sub(name.len() + 1) else {
        return false;
    };
    bytes[0] == b'{'
        && bytes[end..] == *TAIL
        && bytes[quote] == b'"'
        && bytes[quote + 1..end] == *name
        && !escaped(bytes, quote)
}

/// Whether the quote at `at` is escaped (inside a string).
fn escaped(bytes: &[u8], at: usize) -> bool {
    let backslashes = bytes[..at]
        .iter()
        .rev()
        .take_while(|&&b| b == b'\\')
        .count();
    backslashes % 2 == 1
}

/// The value of the key whose quoted name starts at `at`, when it is a key of the outermost object. Only the
/// bytes between the key and the end it was searched from are walked.
fn value_if_top_level(
    text: &str,
    at: usize,
    name_len: usize,
    from: SearchFrom,
) -> Option<&RawValue> {
    let bytes = text.as_bytes();
    if escaped(bytes, at) {
        return None; // an escaped quote inside a string
    }
    let after_name = &text[at + name_len..];
    let value_text = after_name.trim_start().strip_prefix(':')?;
    let value_start = text.len() - value_text.len();
    let mut values = serde_json::Deserializer::from_str(value_text).into_iter::<&RawValue>();
    let value = values.next()?.ok()?;
    let value_end = value_start + values.byte_offset();
    // Before the key: one object opened and not closed. After the value: exactly that one closed.
    let top = match from {
        SearchFrom::Start => walk(&bytes[..at])? == (1, 0),
        SearchFrom::End => walk(&bytes[value_end..])? == (-1, -1),
    };
    top.then_some(value)
}

/// Net change of nesting depth over `bytes` (strings skipped) and the lowest depth reached; None when the
/// bytes end inside a string.
fn walk(bytes: &[u8]) -> Option<(i32, i32)> {
    let (mut depth, mut lowest) = (0i32, 0i32);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                lowest = lowest.min(depth);
            }
            _ => {}
        }
    }
    (!in_string).then_some((depth, lowest))
}

#[cfg(test)]
mod tests;
