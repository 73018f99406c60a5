//! Caller-controlled text made safe for a log line: control characters escaped, length bounded with a marker.

use std::fmt;

/// Longest caller-controlled value written into a log line, in bytes before escaping.
pub const LOG_VALUE_BYTES: usize = 256;
/// Longest free text (an error message quoting a backend) written into a log line.
pub const LOG_TEXT_BYTES: usize = 1024;

/// A value shown as one `key=value` token of a log line: control characters, backslashes and spaces
/// escaped (so it can neither end the line nor forge another `key=value`), cut at [`LOG_VALUE_BYTES`].
pub fn field(value: &str) -> Escaped<'_> {
    Escaped {
        text: value,
        max: LOG_VALUE_BYTES,
        spaces: true,
    }
}

/// Free text (an error message that may quote a model or a backend's words): control characters and
/// backslashes escaped, spaces kept, cut at [`LOG_TEXT_BYTES`].
pub fn text(value: &str) -> Escaped<'_> {
    Escaped {
        text: value,
        max: LOG_TEXT_BYTES,
        spaces: false,
    }
}

/// `Display`s its text escaped and cut; nothing is allocated unless the caller formats it into a string.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a> {
    text: &'a str,
    max: usize,
    spaces: bool,
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kept = cut(self.text, self.max);
        let mut plain = 0;
        for (at, c) in kept.char_indices() {
            let escaped = match c {
                '\\' => Some("\\\\"),
                '\n' => Some("\\n"),
                '\r' => Some("\\r"),
                '\t' => Some("\\t"),
                ' ' if self.spaces => Some("\\x20"),
                _ => None,
            };
            let control = c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
            if escaped.is_none() && !control {
                continue;
            }
            f.write_str(&kept[plain..at])?;
            match escaped {
                Some(s) => f.write_str(s)?,
                None => write!(f, "\\u{:04x}", u32::from(c))?,
            }
            plain = at + c.len_utf8();
        }
        f.write_str(&kept[plain..])?;
        if kept.len() < self.text.len() {
            write!(f, "…(+{} bytes)", self.text.len() - kept.len())?;
        }
        Ok(())
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_end_or_colour_a_line() {
        let forged =
            "m\n2026-12-04T00:00:00.000+00:00 INFO gpt_api::proxy: x\u{1b}]0;pwned\u{7}\0\r\t\\";
        let shown = field(forged).to_string();
        assert_eq!(
            shown,
            "m\\n2026-12-04T00:00:00.000+00:00\\x20INFO\\x20gpt_api::proxy:\\x20x\\u001b]0;pwned\\u0007\\u0000\\r\\t\\\\"
        );
        assert!(!shown.chars().any(char::is_control));
        assert_eq!(text("a b\u{2028}c\u{85}").to_string(), "a b\\u2028c\\u0085");
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary_with_a_marker() {
        let long = "é".repeat(200); // 400 bytes
        let shown = field(&long).to_string();
        assert!(shown.starts_with(&"é".repeat(128)));
        assert!(shown.ends_with("…(+144 bytes)"), "{shown}");
        assert_eq!(field("gpt-4o").to_string(), "gpt-4o");
        assert_eq!(cut("abc", 2), "ab");
        assert_eq!(cut("é", 1), "");
    }
}
