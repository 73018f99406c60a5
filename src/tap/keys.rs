//! Finds one top-level key of a JSON object body by searching for it instead of parsing the whole body.
//!
//! A non-stream answer is read only for `model` (near its start) and `usage` (near its end); the content in
//! between can be long. A match of `"key"` followed by `:` whose quote is not escaped is a key in valid JSON;
//! whether it is a top-level one is checked by walking only the bytes between it and the nearer end of the body.

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

/// The value of the key whose quoted name starts at `at`, when it is a key of the outermost object. Only the
/// bytes between the key and the end it was searched from are walked.
fn value_if_top_level(
    text: &str,
    at: usize,
    name_len: usize,
    from: SearchFrom,
) -> Option<&RawValue> {
    let bytes = text.as_bytes();
    let backslashes = bytes[..at]
        .iter()
        .rev()
        .take_while(|&&b| b == b'\\')
        .count();
    if backslashes % 2 == 1 {
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
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// What a full parse says: the reference the search must agree with.
    fn parsed(text: &str, key: &str) -> Option<String> {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).ok()?;
        map.get(key).map(|v| v.to_string())
    }

    fn found(text: &str, key: &str, from: SearchFrom) -> Option<String> {
        top_level(text, key, from).map(|raw| {
            serde_json::from_str::<serde_json::Value>(raw.get())
                .unwrap()
                .to_string()
        })
    }

    #[test]
    fn agrees_with_a_full_parse() {
        let bodies = [
            r#"{"id":"c","model":"m1","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3}}"#,
            r#"{"usage" : {"total_tokens":1} , "model" :"m2"}"#,
            r#"{"choices":[{"usage":{"x":1},"model":"inner"}],"model":"outer","usage":{"y":2}}"#,
            r#"{"choices":[{"message":{"content":"\"usage\":{\"fake\":1} \"model\":\"no\""}}],"usage":null}"#,
            r#"{"a":"\\","usage":{"z":3},"b":{"usage":{"deeper":4}},"c":"}}]]"}"#,
            r#"{"a":"x\\\"usage\":1","usage":[1,{"q":"}"}]}"#,
            r#"{"model":"m","choices":[]}"#,
            r#"{"nested":{"model":"n"}}"#,
            r#"  {"model":"spaced"}  "#,
            r#"{"object":"response","model":"gpt","output":[{"content":[{"text":"{[\"usage\""}]}],"usage":{"input_tokens":5}}"#,
        ];
        for body in bodies {
            for key in ["model", "usage"] {
                for from in [SearchFrom::Start, SearchFrom::End] {
                    assert_eq!(
                        found(body, key, from),
                        parsed(body, key),
                        "{key} {from:?} in {body}"
                    );
                }
            }
        }
    }

    #[test]
    fn not_an_object_has_no_keys() {
        assert!(top_level(r#"["usage",{"usage":1}]"#, "usage", SearchFrom::End).is_none());
        assert!(top_level("usage", "usage", SearchFrom::End).is_none());
        assert!(top_level("", "model", SearchFrom::Start).is_none());
    }
}
