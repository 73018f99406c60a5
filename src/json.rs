//! A checking skim of JSON text: an object's members read as raw text, every byte checked as serde_json checks it.
//!
//! serde_json's derive builds what it reads and matches each key by name, a few thousand instructions for a
//! stream's event; the tap wants a handful of its members as raw text, and the rewrite a body's top-level
//! members. [`Cursor`] walks the text once and checks each value the way serde_json's parser does when it
//! skips one (strings without control characters and with known escapes, numbers by the JSON grammar, the
//! three literals, matching brackets, JSON whitespace only), so a text it reads to its end is one serde_json
//! accepts. Where it cannot be sure to read what serde_json reads (an escaped key, nesting deeper than
//! [`MAX_DEPTH`]) it answers None, and the caller lets serde_json decide. [`Cursor::strict`] also leaves every
//! `\u` escape to serde_json (the request body scan's choice: serde_json refuses a lone surrogate in a string it
//! reads). [`unescape`] reads an escaped string as serde_json does, or says it is unsure.

/// Nesting deeper than this is left to serde_json (whose own limit is 128).
const MAX_DEPTH: u32 = 64;

/// A position in JSON text, read forwards; every method answers None when the text is not what it reads (or
/// when unsure), and the cursor is then of no further use.
pub struct Cursor<'a> {
    text: &'a str,
    at: usize,
    depth: u32,
    /// Every `\u` escape answers None.
    strict: bool,
}

impl<'a> Cursor<'a> {
    pub fn new(text: &'a str) -> Self {
        Cursor {
            text,
            at: 0,
            depth: 0,
            strict: false,
        }
    }

    /// A cursor that answers None at any `\u` escape, even in a string it skips.
    pub fn strict(text: &'a str) -> Self {
        Cursor {
            strict: true,
            ..Cursor::new(text)
        }
    }

    /// The next byte after JSON whitespace (which is skipped).
    #[inline(always)]
    fn peek(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes();
        // Backends send compact JSON: no whitespace is the usual case.
        match bytes.get(self.at) {
            Some(&b) if b > b' ' => return Some(b),
            None => return None,
            _ => {}
        }
        while let Some(&b) = bytes.get(self.at) {
            if !matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    /// The text is read to its end: nothing but whitespace is left.
    pub fn end(mut self) -> Option<()> {
        self.peek().is_none().then_some(())
    }

    /// Reads an object: `each` gets the cursor at each member's value, with its key's bytes as written, and must read
    /// the value. An escaped key makes the answer None (serde_json matches keys unescaped).
    pub fn object(&mut self, each: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.members(true, each)
    }

    /// Reads an array: `each` gets the cursor at each element and must read it.
    pub fn array(&mut self, mut each: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.open(b'[')?;
        if self.peek()? == b']' {
            return self.close();
        }
        loop {
            each(self)?;
            match self.peek()? {
                b',' => self.at += 1,
                b']' => return self.close(),
                _ => return None,
            }
        }
    }

    /// The next value's raw text (checked).
    pub fn raw(&mut self) -> Option<&'a str> {
        let first = self.peek()?;
        let start = self.at;
        self.skip_from(first)?;
        self.text.get(start..self.at)
    }

    /// The next value's raw text, or None for `null` (as serde reads an `Option`).
    pub fn nullable(&mut self) -> Option<Option<&'a str>> {
        let first = self.peek()?;
        let start = self.at;
        self.skip_from(first)?;
        let raw = self.text.get(start..self.at)?;
        Some((raw != "null").then_some(raw))
    }

    /// Whether the next value is `null` (then read).
    pub fn is_null(&mut self) -> Option<bool> {
        if self.peek()? != b'n' {
            return Some(false);
        }
        self.literal(*b"null")?;
        Some(true)
    }

    /// Whether the next value opens an object (nothing is read).
    pub fn at_object(&mut self) -> Option<bool> {
        Some(self.peek()? == b'{')
    }

    /// The next value's first byte (nothing is read).
    pub fn first_byte(&mut self) -> Option<u8> {
        self.peek()
    }

    /// The next value when it is a string without escapes: its text between the quotes.
    pub fn plain_string(&mut self) -> Option<&'a str> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.at + 1;
        match self.string()? {
            false => self.text.get(start..self.at - 1),
            true => None,
        }
    }

    fn members(
        &mut self,
        plain_keys: bool,
        mut each: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        self.open(b'{')?;
        if self.peek()? == b'}' {
            return self.close();
        }
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            let start = self.at + 1;
            let escaped = self.string()?;
            if plain_keys && escaped {
                return None;
            }
            let key = self.text.as_bytes().get(start..self.at - 1)?;
            if self.peek()? != b':' {
                return None;
            }
            self.at += 1;
            each(self, key)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => return self.close(),
                _ => return None,
            }
        }
    }

    fn open(&mut self, bracket: u8) -> Option<()> {
        if self.peek()? != bracket || self.depth >= MAX_DEPTH {
            return None;
        }
        self.at += 1;
        self.depth += 1;
        Some(())
    }

    /// Past the closing bracket the caller found.
    fn close(&mut self) -> Option<()> {
        self.at += 1;
        self.depth -= 1;
        Some(())
    }

    /// Skips the next value, checking it.
    fn skip(&mut self) -> Option<()> {
        let first = self.peek()?;
        self.skip_from(first)
    }

    /// Skips the value that starts with `first`, the byte at the cursor.
    #[inline(always)]
    fn skip_from(&mut self, first: u8) -> Option<()> {
        match first {
            b'"' => self.string().map(drop),
            b'{' => self.members(false, |c, _| c.skip()),
            b'[' => self.array(Self::skip),
            b't' => self.literal(*b"true"),
            b'f' => self.literal(*b"false"),
            b'n' => self.literal(*b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// Past `word` at the cursor (compared as an array: no call to `memcmp`).
    fn literal<const N: usize>(&mut self, word: [u8; N]) -> Option<()> {
        let bytes = self.text.as_bytes().get(self.at..self.at + N)?;
        (<[u8; N]>::try_from(bytes).ok()? == word).then(|| self.at += N)
    }

    /// Past the string whose quote is at the cursor; whether it had an escape.
    #[inline(always)]
    fn string(&mut self) -> Option<bool> {
        let bytes = self.text.as_bytes();
        let mut i = self.at + 1;
        let mut escaped = false;
        loop {
            i = plain_run(bytes, i);
            match *bytes.get(i)? {
                b'"' => {
                    self.at = i + 1;
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    i += match bytes.get(i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                        b'u' if self.strict => return None,
                        b'u' => hex4(bytes.get(i + 2..i + 6)?).map(|_| 6)?,
                        _ => return None,
                    };
                }
                // serde_json refuses control characters in strings, even in one it skips.
                _ => return None,
            }
        }
    }

    /// Past the number at the cursor: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let bytes = self.text.as_bytes();
        let digits = |from: usize| {
            from + bytes
                .get(from..)
                .map_or(0, |r| r.iter().take_while(|b| b.is_ascii_digit()).count())
        };
        let mut i = self.at + usize::from(bytes.get(self.at) == Some(&b'-'));
        i = match bytes.get(i)? {
            b'0' => i + 1,
            b'1'..=b'9' => digits(i + 1),
            _ => return None,
        };
        if bytes.get(i) == Some(&b'.') {
            let end = digits(i + 1);
            (end > i + 1).then_some(())?;
            i = end;
        }
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            i += 1 + usize::from(matches!(bytes.get(i + 1), Some(b'+' | b'-')));
            let end = digits(i);
            (end > i).then_some(())?;
            i = end;
        }
        self.at = i;
        Some(())
    }
}

/// Where the run of plain string bytes from `i` ends: the first quote, backslash or control character, or the
/// end. Eight bytes at a time (strings are short: keys, tokens, a prompt; a vector search's set-up costs more).
#[inline(always)]
fn plain_run(bytes: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES * 0x80;
    while let Some(word) = bytes
        .get(i..i + 8)
        .and_then(|w| <[u8; 8]>::try_from(w).ok())
    {
        let x = u64::from_le_bytes(word);
        let quote = x ^ (ONES * u64::from(b'"'));
        let slash = x ^ (ONES * u64::from(b'\\'));
        // Each term marks the lowest byte it looks for exactly (any above it may be marked wrongly).
        let found = (quote.wrapping_sub(ONES) & !quote
            | slash.wrapping_sub(ONES) & !slash
            | x.wrapping_sub(ONES * 0x20) & !x)
            & HIGH;
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while bytes.get(i).is_some_and(|&b| STOP[usize::from(b)] == 0) {
        i += 1;
    }
    i
}

/// The bytes that end a run of plain string bytes: control characters, the quote and the backslash (1).
static STOP: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = 1;
        b += 1;
    }
    table[b'"' as usize] = 1;
    table[b'\\' as usize] = 1;
    table
};

/// Whether `bytes` holds a byte below 0x20 (a pass over all of them, which the compiler vectorises).
fn has_control(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |any, &b| any | (b < 0x20))
}

/// The value of four hex digits.
fn hex4(digits: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(digits).ok()?;
    if text.len() != 4 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(text, 16).ok()
}

/// The text of a JSON string given without its quotes, read as serde_json reads it into a `String`; None
/// when the text is not a string serde_json reads the same way for sure (a lone surrogate, a bad escape, a
/// quote or control character): the caller then asks serde_json.
pub fn unescape(inner: &str) -> Option<String> {
    let bytes = inner.as_bytes();
    let mut out = String::with_capacity(inner.len());
    let mut i = 0;
    while i < bytes.len() {
        let n = memchr::memchr2(b'"', b'\\', &bytes[i..]).unwrap_or(bytes.len() - i);
        let plain = &bytes[i..i + n];
        if has_control(plain) {
            return None;
        }
        out.push_str(inner.get(i..i + n)?);
        i += n;
        if i == bytes.len() {
            break;
        }
        if bytes[i] == b'"' {
            return None;
        }
        let (c, len) = match bytes.get(i + 1)? {
            b'"' => ('"', 2),
            b'\\' => ('\\', 2),
            b'/' => ('/', 2),
            b'b' => ('\u{8}', 2),
            b'f' => ('\u{c}', 2),
            b'n' => ('\n', 2),
            b'r' => ('\r', 2),
            b't' => ('\t', 2),
            b'u' => unicode(bytes, i)?,
            _ => return None,
        };
        out.push(c);
        i += len;
    }
    Some(out)
}

/// The character of the `\u` escape at `i` (a surrogate pair is two escapes) and the bytes it takes.
fn unicode(bytes: &[u8], i: usize) -> Option<(char, usize)> {
    let first = hex4(bytes.get(i + 2..i + 6)?)?;
    if !(0xD800..0xDC00).contains(&first) {
        return char::from_u32(u32::from(first)).map(|c| (c, 6));
    }
    if bytes.get(i + 6..i + 8)? != b"\\u" {
        return None;
    }
    let second = hex4(bytes.get(i + 8..i + 12)?)?;
    if !(0xDC00..0xE000).contains(&second) {
        return None;
    }
    let code = 0x10000 + ((u32::from(first) - 0xD800) << 10) + (u32::from(second) - 0xDC00);
    char::from_u32(code).map(|c| (c, 12))
}

#[cfg(test)]
mod tests;
