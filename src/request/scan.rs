//! A shallow scan of a request body without serde: what `inspect` would say, or None ("not sure": serde decides).
//!
//! It validates the whole body as JSON, but only ever answers where serde's answer is certain to be the same:
//! anything it does not expect (a `\u` escape, an escaped key, a number serde would read as a float where it reads
//! numbers, a repeated `model`, a content part list, a nesting deeper than [`MAX_DEPTH`]) makes it give up.
//! Where serde reads a value (the fields the gateway acts on, and what its probes look into) a number must be a
//! plain integer; where serde only skips one (`IgnoredAny`), any JSON number will do, as for serde.

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

/// Deeper than this, the serde parse decides (its own limit is 128).
const MAX_DEPTH: usize = 64;

/// The request's fields, when the body is a JSON object the scan is sure about (see the module notes).
/// `multimodal` is always false here: a message whose `content` is a list is left to serde.
pub(super) fn scan(body: &[u8]) -> Option<Scanned<'_>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut s = Scanner {
        text,
        b: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    let mut out = Scanned::default();
    let mut model = None;
    s.space();
    s.expect(b'{')?;
    s.space();
    if s.peek()? == b'}' {
        return None; // no `model`: serde says which error
    }
    loop {
        s.space();
        let key = s.key()?;
        s.space();
        s.expect(b':')?;
        s.space();
        match key {
            "model" if model.is_some() => return None,
            "model" => model = Some(s.plain_string()?),
            "stream" => out.stream = s.flag()?,
            "stream_options" => out.include_usage = s.stream_options()?,
            "tools" | "functions" => out.tool |= s.non_empty()?,
            "messages" | "input" => s.messages()?,
            "max_tokens" => out.max_tokens = s.count()?,
            "max_completion_tokens" => out.max_completion_tokens = s.count()?,
            "max_output_tokens" => out.max_output_tokens = s.count()?,
            _ => s.skip(false)?,
        }
        s.space();
        match s.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    s.space();
    if s.i != s.b.len() {
        return None;
    }
    out.model = model?;
    Some(out)
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    depth: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// JSON's white space (not form feeds).
    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A string from its opening quote; its text between the quotes, and whether it has escapes.
    fn string(&mut self) -> Option<(&'a str, bool)> {
        self.expect(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i = crate::json::plain_run(self.b, self.i);
            match self.next()? {
                b'"' => return Some((self.text.get(start..self.i - 1)?, escaped)),
                // `\u` escapes are left to serde: it refuses lone surrogates where it reads a string.
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => escaped = true,
                    _ => return None,
                },
                _ => return None, // a control character
            }
        }
    }

    /// A string without escapes (a key, the model: compared or kept as written).
    fn plain_string(&mut self) -> Option<&'a str> {
        match self.string()? {
            (text, false) => Some(text),
            (_, true) => None,
        }
    }

    fn key(&mut self) -> Option<&'a str> {
        self.plain_string()
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// A number by JSON's grammar; with `read`, only an integer of at most 18 digits (one serde reads exactly).
    /// Its digits when it is a non-negative integer.
    fn number(&mut self, read: bool) -> Option<Option<&'a str>> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let digits_at = self.i;
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let digits_end = self.i;
        let mut whole = true;
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.at_least_one_digit()?;
            whole = false;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.at_least_one_digit()?;
            whole = false;
        }
        if matches!(self.peek(), Some(b'0'..=b'9')) {
            return None; // a leading zero followed by digits
        }
        if read && (!whole || digits_end - digits_at > 18) {
            return None;
        }
        Some((whole && !negative).then(|| &self.text[digits_at..digits_end]))
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    fn at_least_one_digit(&mut self) -> Option<()> {
        self.next().filter(u8::is_ascii_digit)?;
        self.digits();
        Some(())
    }

    /// Any value. `read`: serde reads this one (not `IgnoredAny`), so a number must be one it reads exactly;
    /// what it holds is only skipped either way.
    fn skip(&mut self, read: bool) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.each_member(|s, _| s.skip(false)),
            b'[' => self.each_item(|s| s.skip(false)).map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(read).map(drop),
        }
    }

    /// The members of an object, each value read by `value` (which gets the key).
    fn each_member(
        &mut self,
        mut value: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.enter()?;
        self.expect(b'{')?;
        self.space();
        if self.peek()? == b'}' {
            self.i += 1;
            return self.leave();
        }
        loop {
            self.space();
            let key = self.key()?;
            self.space();
            self.expect(b':')?;
            self.space();
            value(self, key)?;
            self.space();
            match self.next()? {
                b',' => {}
                b'}' => return self.leave(),
                _ => return None,
            }
        }
    }

    /// The items of an array, each read by `item`; how many there were.
    fn each_item(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<usize> {
        self.enter()?;
        self.expect(b'[')?;
        self.space();
        if self.peek()? == b']' {
            self.i += 1;
            self.leave()?;
            return Some(0);
        }
        let mut n = 0;
        loop {
            self.space();
            item(self)?;
            n += 1;
            self.space();
            match self.next()? {
                b',' => {}
                b']' => {
                    self.leave()?;
                    return Some(n);
                }
                _ => return None,
            }
        }
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn leave(&mut self) -> Option<()> {
        self.depth -= 1;
        Some(())
    }

    /// `stream`: true, false or null (any other type is an error serde reports).
    fn flag(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|()| true),
            b'f' => self.literal(b"false").map(|()| false),
            b'n' => self.literal(b"null").map(|()| false),
            _ => None,
        }
    }

    /// `stream_options`: an object with `include_usage: true` (any of them, if repeated), or null.
    fn stream_options(&mut self) -> Option<bool> {
        if self.peek()? == b'n' {
            return self.literal(b"null").map(|()| false);
        }
        if self.peek()? != b'{' {
            return None;
        }
        let mut include = false;
        self.each_member(|s, key| match key {
            "include_usage" if s.peek()? == b't' => {
                s.literal(b"true")?;
                include = true;
                Some(())
            }
            "include_usage" => s.skip(true),
            _ => s.skip(false),
        })?;
        Some(include)
    }

    /// `tools`, `functions`: a non-empty list or object.
    fn non_empty(&mut self) -> Option<bool> {
        match self.peek()? {
            b'[' => self.each_item(|s| s.skip(false)).map(|n| n > 0),
            b'{' => {
                let mut any = false;
                self.each_member(|s, _| {
                    any = true;
                    s.skip(false)
                })?;
                Some(any)
            }
            _ => self.skip(true).map(|()| false),
        }
    }

    /// `messages`, `input`: a list of messages whose `content` is no list (one that is goes to serde).
    fn messages(&mut self) -> Option<()> {
        if self.peek()? != b'[' {
            return self.skip(true);
        }
        self.each_item(|s| match s.peek()? {
            b'{' => s.each_member(|s, key| match key {
                "content" if s.peek()? == b'[' => None,
                "content" => s.skip(true),
                _ => s.skip(false),
            }),
            _ => s.skip(true),
        })
        .map(drop)
    }

    /// A token count: a non-negative integer, else None (a float, or a negative number, is left to serde).
    fn count(&mut self) -> Option<Option<u64>> {
        match self.peek()? {
            b'-' => None,
            b'0'..=b'9' => Some(self.number(true)?.and_then(|d| d.parse().ok())),
            _ => self.skip(true).map(|()| None),
        }
    }
}

#[cfg(test)]
mod tests;
