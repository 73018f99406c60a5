//! The special prefix: JSON-escaped once, then spliced into JSON string values right after their opening quote.

/// The prefix as it must appear between a JSON string's quotes.
pub fn escape(prefix: &str) -> String {
    let quoted = serde_json::to_string(prefix).unwrap_or_default();
    let inner = quoted.get(1..quoted.len().saturating_sub(1));
    inner.unwrap_or_default().to_owned()
}

/// The offset in `text` just inside the opening quote of `value`, a string value read (borrowed) from `text`.
pub fn string_start(text: &str, value: &str) -> Option<usize> {
    if !value.starts_with('"') {
        return None;
    }
    let offset = (value.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    (offset + value.len() <= text.len()).then_some(offset + 1)
}

/// `src` with `insert` placed at each offset of `at` (ascending); every other byte stays as it was.
pub fn splice(src: &[u8], at: &[usize], insert: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() + at.len() * insert.len());
    let mut last = 0;
    for &offset in at {
        let offset = offset.clamp(last, src.len());
        out.extend_from_slice(&src[last..offset]);
        out.extend_from_slice(insert);
        last = offset;
    }
    out.extend_from_slice(&src[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_for_json() {
        assert_eq!(escape("<think>\n"), "<think>\\n");
        assert_eq!(escape("a\"b\\c\té"), "a\\\"b\\\\c\\té");
    }

    #[test]
    fn splices_inside_a_borrowed_string() {
        let text = r#"{"a" : "x\u0041", "b":1}"#;
        let v: std::collections::BTreeMap<&str, &serde_json::value::RawValue> =
            serde_json::from_str(text).unwrap();
        let at = string_start(text, v["a"].get()).unwrap();
        assert_eq!(string_start(text, v["b"].get()), None);
        let out = splice(text.as_bytes(), &[at], b"P\\n");
        assert_eq!(out, br#"{"a" : "P\nx\u0041", "b":1}"#);
    }

    #[test]
    fn splice_never_panics_on_bad_offsets() {
        assert_eq!(splice(b"abc", &[2, 1, 9], b"-"), b"ab--c-");
    }
}
