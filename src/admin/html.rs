//! HTML built by one writer that escapes every value, and numbers written for people.

// HTML built by one writer that escapes every value: markup only from `&'static str` literals, text and attribute
// values always escaped; and numbers written for people (1.2M tokens, $3.40, 850 ms).

use std::fmt::Write;

/// An HTML (or SVG) document being written. Recorded strings can only enter through [`Html::text`] and the
/// attribute values of [`Html::open`], which escape them: a model named `<script>` is shown as text.
#[derive(Debug, Default)]
pub struct Html(String);

impl Html {
    pub fn new() -> Html {
        Html(String::with_capacity(16 * 1024))
    }

    /// Markup written by this program (a literal: never anything recorded or received).
    pub fn raw(&mut self, markup: &'static str) -> &mut Html {
        self.0.push_str(markup);
        self
    }

    /// Text content, escaped.
    pub fn text(&mut self, text: &str) -> &mut Html {
        escape_into(&mut self.0, text);
        self
    }

    /// `<tag name="value" ...>`, each value escaped; a value of `None` leaves the attribute out.
    pub fn open(&mut self, tag: &'static str, attrs: &[(&'static str, Option<&str>)]) -> &mut Html {
        self.0.push('<');
        self.0.push_str(tag);
        for (name, value) in attrs {
            let Some(value) = value else { continue };
            self.0.push(' ');
            self.0.push_str(name);
            self.0.push_str("=\"");
            escape_into(&mut self.0, value);
            self.0.push('"');
        }
        self.0.push('>');
        self
    }

    pub fn close(&mut self, tag: &'static str) -> &mut Html {
        self.0.push_str("</");
        self.0.push_str(tag);
        self.0.push('>');
        self
    }

    /// `<tag attrs>text</tag>`.
    pub fn el(
        &mut self,
        tag: &'static str,
        attrs: &[(&'static str, Option<&str>)],
        text: &str,
    ) -> &mut Html {
        self.open(tag, attrs).text(text).close(tag)
    }

    pub fn finish(self) -> String {
        self.0
    }
}

/// `&`, `<`, `>`, `"` and `'` as entities: safe in text and in quoted attribute values.
pub fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text);
    out
}

/// A count for people: `950`, `12.3k`, `1.2M`, `3.4B`.
pub fn count(n: i64) -> String {
    let x = n as f64;
    let (value, unit) = match n.unsigned_abs() {
        0..=9_999 => return n.to_string(),
        10_000..=999_999 => (x / 1e3, "k"),
        1_000_000..=999_999_999 => (x / 1e6, "M"),
        _ => (x / 1e9, "B"),
    };
    if value.abs() < 100.0 {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.0}{unit}")
    }
}

/// Dollars for people: `$3.40`, `$1,234.56`, small amounts with enough digits to tell (`$0.0042`).
pub fn usd(amount: f64) -> String {
    if amount == 0.0 {
        return "$0.00".into();
    }
    if amount.abs() < 0.01 {
        return format!("${amount:.4}");
    }
    let cents = (amount * 100.0).round() as i64;
    let mut whole = String::new();
    for (i, digit) in (cents.abs() / 100).to_string().chars().rev().enumerate() {
        if i > 0 && i % 3 == 0 {
            whole.push(',');
        }
        whole.push(digit);
    }
    let whole: String = whole.chars().rev().collect();
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}${whole}.{:02}", cents.abs() % 100)
}

/// A duration in milliseconds for people: `850 ms`, `1.5 s`, `2 min 5 s`.
pub fn millis(ms: i64) -> String {
    match ms {
        ..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1e3),
        _ => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
    }
}

/// A share as a percentage: `0%`, `0.42%`, `12.5%`.
pub fn percent(part: i64, whole: i64) -> String {
    if whole <= 0 || part <= 0 {
        return "0%".into();
    }
    let p = part as f64 * 100.0 / whole as f64;
    let mut out = String::new();
    let _ = match p {
        p if p < 1.0 => write!(out, "{p:.2}%"),
        p if p < 100.0 => write!(out, "{p:.1}%"),
        p => write!(out, "{p:.0}%"),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_strings_are_escaped_in_text_and_attributes() {
        let mut h = Html::new();
        h.open(
            "a",
            &[
                ("href", Some("/x?m=\"><img onerror=alert(1)>")),
                ("id", None),
            ],
        )
        .text("<script>alert('x')</script> & co")
        .close("a");
        assert_eq!(
            h.finish(),
            "<a href=\"/x?m=&quot;&gt;&lt;img onerror=alert(1)&gt;\">\
             &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co</a>"
        );
    }

    #[test]
    fn numbers_for_people() {
        assert_eq!(count(950), "950");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(count(1_234_567), "1.2M");
        assert_eq!(count(250_000_000), "250M");
        assert_eq!(count(3_400_000_000), "3.4B");
        assert_eq!(usd(3.4), "$3.40");
        assert_eq!(usd(1234.567), "$1,234.57");
        assert_eq!(usd(0.00423), "$0.0042");
        assert_eq!(usd(0.0), "$0.00");
        assert_eq!(millis(850), "850 ms");
        assert_eq!(millis(1500), "1.5 s");
        assert_eq!(millis(125_000), "2 min 5 s");
        assert_eq!(percent(1, 3), "33.3%");
        assert_eq!(percent(1, 1000), "0.10%");
        assert_eq!(percent(0, 0), "0%");
    }
}
