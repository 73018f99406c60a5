//! A shallow scan of a request body without serde: what `inspect` would say, or None ("not sure": serde decides).
//!
//! It reads the body with a strict [`Cursor`] (`crate::json`), which checks the whole body as JSON, but only ever answers
//! where serde's answer is certain to be the same: anything it does not expect (a `\u` escape, an escaped key, a
//! number serde would read as a float where it reads numbers, a repeated `model`, a content part list, a
//! nesting deeper than the cursor's limit) makes it give up. Where serde reads a value (the fields the gateway
//! acts on, and what its probes look into) a number must be a plain integer; where serde only skips one
//! (`IgnoredAny`), any JSON number will do, as for serde.

use crate::json::Cursor;

/// What the scan read: the same fields as `request::Peek`, the model already a string.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Scanned<'a> {
    pub model: &'a str,
    pub stream: bool,
    pub include_usage: bool,
    pub tool: bool,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
}

/// The request's fields, when the body is a JSON object the scan is sure about (see the module notes).
/// `multimodal` is always false here: a message whose `content` is a list is left to serde.
pub(super) fn scan(body: &[u8]) -> Option<Scanned<'_>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut c = Cursor::strict(text);
    let mut out = Scanned::default();
    let mut model = None;
    c.object(|c, key| {
        match key {
            b"model" if model.is_some() => return None,
            b"model" => model = Some(c.plain_string()?),
            b"stream" => out.stream = flag(c)?,
            b"stream_options" => out.include_usage = stream_options(c)?,
            b"tools" | b"functions" => out.tool |= non_empty(c)?,
            b"messages" | b"input" => messages(c)?,
            b"max_tokens" => out.max_tokens = count(c)?,
            b"max_completion_tokens" => out.max_completion_tokens = count(c)?,
            b"max_output_tokens" => out.max_output_tokens = count(c)?,
            _ => drop(c.raw()?),
        }
        Some(())
    })?;
    c.end()?;
    out.model = model?; // no `model`: serde says which error
    Some(out)
}

/// Past a value serde reads (not `IgnoredAny`): a number must be one it reads exactly, an integer of at most 18
/// digits; what a list or object holds is only skipped either way. The value's raw text.
fn read<'a>(c: &mut Cursor<'a>) -> Option<&'a str> {
    let raw = c.raw()?;
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    match digits.as_bytes().first()? {
        b'0'..=b'9' if digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) => None,
        _ => Some(raw),
    }
}

/// `stream`: true, false or null (any other type is an error serde reports).
fn flag(c: &mut Cursor) -> Option<bool> {
    match c.raw()? {
        "true" => Some(true),
        "false" | "null" => Some(false),
        _ => None,
    }
}

/// `stream_options`: an object with `include_usage: true` (any of them, if repeated), or null.
fn stream_options(c: &mut Cursor) -> Option<bool> {
    if c.is_null()? {
        return Some(false);
    }
    if !c.at_object()? {
        return None;
    }
    let mut include = false;
    c.object(|c, key| {
        match key {
            b"include_usage" => include |= read(c)? == "true",
            _ => drop(c.raw()?),
        }
        Some(())
    })?;
    Some(include)
}

/// `tools`, `functions`: a non-empty list or object.
fn non_empty(c: &mut Cursor) -> Option<bool> {
    let mut any = false;
    match c.first_byte()? {
        b'[' => c.array(|c| {
            any = true;
            c.raw().map(drop)
        })?,
        b'{' => c.object(|c, _| {
            any = true;
            c.raw().map(drop)
        })?,
        _ => drop(read(c)?),
    }
    Some(any)
}

/// `messages`, `input`: a list of messages whose `content` is no list (one that is goes to serde).
fn messages(c: &mut Cursor) -> Option<()> {
    if c.first_byte()? != b'[' {
        return read(c).map(drop);
    }
    c.array(|c| {
        if !c.at_object()? {
            return read(c).map(drop);
        }
        c.object(|c, key| match key {
            b"content" if c.first_byte()? == b'[' => None,
            b"content" => read(c).map(drop),
            _ => c.raw().map(drop),
        })
    })
}

/// A token count: a non-negative integer, else None (a float, or a negative number, is left to serde).
fn count(c: &mut Cursor) -> Option<Option<u64>> {
    match c.first_byte()? {
        b'-' => None,
        b'0'..=b'9' => read(c)?.parse().ok().map(Some),
        _ => read(c).map(|_| None),
    }
}

#[cfg(test)]
mod tests;
