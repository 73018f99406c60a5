//! Incremental SSE framing: finds where events end across chunks and reads an event's `event` and `data` fields.

use std::borrow::Cow;
use std::ops::Range;

/// What the line in progress holds so far; a line is blank when it is empty or a lone `\r` before its `\n`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Line {
    #[default]
    Empty,
    Cr,
    Text,
}

/// Finds event ends in a byte stream fed piece by piece, remembering the line in progress between pieces,
/// so an event (or a `\r\n`) split at any byte is found without rescanning what was held.
#[derive(Debug, Default)]
pub struct Scanner {
    line: Line,
}

impl Scanner {
    /// Whether the next byte starts a line: the bytes scanned so far end with a line end (or there were none).
    pub fn at_line_start(&self) -> bool {
        self.line == Line::Empty
    }

    /// Scans `buf`, the bytes that follow everything scanned before, and pushes `base + offset` of the byte
    /// just past each blank line (the end of an event).
    pub fn scan(&mut self, buf: &[u8], base: usize, ends: &mut Vec<usize>) {
        let mut pos = 0;
        while let Some(n) = memchr::memchr(b'\n', &buf[pos..]) {
            let line = &buf[pos..pos + n];
            let blank = match self.line {
                Line::Empty => line.is_empty() || line == b"\r",
                Line::Cr => line.is_empty(),
                Line::Text => false,
            };
            self.line = Line::Empty;
            pos += n + 1;
            if blank {
                ends.push(base + pos);
            }
        }
        self.line = match (self.line, &buf[pos..]) {
            (line, []) => line,
            (Line::Empty, b"\r") => Line::Cr,
            _ => Line::Text,
        };
    }
}

/// The fields of one event the tap reads. `data` lines stay ranges into the event, so an offset in the
/// joined data maps back to the event's bytes.
pub struct Fields<'a> {
    event: &'a [u8],
    /// The `event:` field (the Responses API names its events so).
    pub name: Option<&'a [u8]>,
    first: Option<Range<usize>>,
    more: Vec<Range<usize>>,
}

impl<'a> Fields<'a> {
    /// Reads the lines of `event` up to its blank line (or its end, for a partial last event).
    pub fn parse(event: &'a [u8]) -> Self {
        let mut fields = Fields {
            event,
            name: None,
            first: None,
            more: Vec::new(),
        };
        match lone_data(event) {
            Some(value) => fields.first = Some(value),
            None => fields.read_lines(),
        }
        fields
    }

    /// The fields of `event` when [`one_data_event`] found it to be one `data` line (its value at `value`):
    /// what [`Fields::parse`] reads from it, without a second look.
    pub fn lone(event: &'a [u8], value: Range<usize>) -> Self {
        Fields {
            event,
            name: None,
            first: Some(value),
            more: Vec::new(),
        }
    }

    fn read_lines(&mut self) {
        let event = self.event;
        let mut pos = 0;
        while pos < event.len() {
            let nl = memchr::memchr(b'\n', &event[pos..]);
            let end = nl.map_or(event.len(), |n| pos + n);
            let line_end = if end > pos && event[end - 1] == b'\r' {
                end - 1
            } else {
                end
            };
            if line_end == pos {
                break;
            }
            self.field(pos, line_end);
            pos = end + 1;
        }
    }

    fn field(&mut self, start: usize, end: usize) {
        let line = &self.event[start..end];
        let (name, mut value) = match memchr::memchr(b':', line) {
            Some(0) => return, // a comment
            Some(c) => (&line[..c], start + c + 1),
            None => (line, end),
        };
        if value < end && self.event[value] == b' ' {
            value += 1;
        }
        match name {
            b"data" if self.first.is_none() => self.first = Some(value..end),
            b"data" => self.more.push(value..end),
            b"event" => self.name = Some(&self.event[value..end]),
            _ => {}
        }
    }

    /// The event's data: its `data` lines joined with `\n` (borrowed when there is one).
    pub fn data(&self) -> Cow<'a, [u8]> {
        let event = self.event;
        match &self.first {
            None => Cow::Borrowed(&[]),
            Some(first) if self.more.is_empty() => Cow::Borrowed(&event[first.clone()]),
            Some(first) => {
                let mut joined = event[first.clone()].to_vec();
                for range in &self.more {
                    joined.push(b'\n');
                    joined.extend_from_slice(&event[range.clone()]);
                }
                Cow::Owned(joined)
            }
        }
    }

    /// The offset in the event of offset `off` in [`Fields::data`] (an offset at a line's end stays on that line).
    pub fn event_offset(&self, off: usize) -> Option<usize> {
        let mut base = 0;
        for range in self.first.iter().chain(&self.more) {
            let len = range.end - range.start;
            if off <= base + len {
                return off.checked_sub(base).map(|o| range.start + o);
            }
            base += len + 1;
        }
        None
    }
}

/// The value of the `data` line of `bytes` when they are exactly one whole event of that one line and its blank
/// line: what [`Scanner::scan`] would find to be one event (starting at a line's start) and [`Fields::data`]
/// would read from it, found with one search for its line end.
pub fn one_data_event(bytes: &[u8]) -> Option<Range<usize>> {
    let value = lone_data(bytes)?;
    // `lone_data` takes a line without its blank line too (a partial last event); not here.
    matches!(bytes.last(), Some(b'\n')).then_some(())?;
    let tail = &bytes[value.end..];
    matches!(tail, b"\n\n" | b"\n\r\n" | b"\r\n\n" | b"\r\n\r\n").then_some(value)
}

/// The value of an event that is a single `data` line and its blank line, the usual shape: found without
/// reading it line by line. None for any other event (which [`Fields::read_lines`] reads).
fn lone_data(event: &[u8]) -> Option<Range<usize>> {
    const DATA: usize = b"data:".len();
    let rest = event.strip_prefix(b"data:")?;
    let nl = memchr::memchr(b'\n', rest)?;
    if !matches!(&rest[nl + 1..], b"" | b"\n" | b"\r\n") {
        return None;
    }
    let mut end = DATA + nl;
    if end > DATA && event[end - 1] == b'\r' {
        end -= 1;
    }
    let start = match event.get(DATA) {
        Some(b' ') if DATA < end => DATA + 1,
        _ => DATA,
    };
    Some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends_of(pieces: &[&[u8]]) -> Vec<usize> {
        let mut scanner = Scanner::default();
        let (mut ends, mut base) = (Vec::new(), 0);
        for piece in pieces {
            scanner.scan(piece, base, &mut ends);
            base += piece.len();
        }
        ends
    }

    #[test]
    fn finds_ends_with_any_line_endings_and_splits() {
        let s = b"data: a\n\ndata: b\r\n\r\ndata: c\n\r\n: x\r\n\n";
        let whole = ends_of(&[s]);
        assert_eq!(whole, vec![9, 20, 30, 36]);
        for i in 0..=s.len() {
            assert_eq!(ends_of(&[&s[..i], &s[i..]]), whole, "split at {i}");
        }
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(ends_of(&bytes), whole);
    }

    #[test]
    fn a_lone_cr_inside_a_line_is_not_blank() {
        assert!(ends_of(&[b"data: a\r", b"x\n"]).is_empty());
        assert_eq!(ends_of(&[b"data: a\n\r", b"\n"]), vec![10]);
    }

    #[test]
    fn reads_fields_and_joins_data_lines() {
        let e = b"event: done\r\n: comment\r\ndata:{\"a\":\r\ndata: 1}\r\nid: 3\r\n\r\n";
        let f = Fields::parse(e);
        assert_eq!(f.name, Some(&b"done"[..]));
        assert_eq!(&*f.data(), b"{\"a\":\n1}");
        let at = f.event_offset(6).unwrap();
        assert_eq!(&e[at..at + 2], b"1}");
        let at = f.event_offset(5).unwrap();
        assert_eq!(e[at - 1], b':');
    }

    #[test]
    fn a_lone_data_line_reads_as_the_line_by_line_reading_does() {
        let events: [&[u8]; 12] = [
            b"data: {\"a\":1}\n\n",
            b"data:{\"a\":1}\r\n\r\n",
            b"data: x\n",
            b"data:\n\n",
            b"data:\r\n\r\n",
            b"data: \n\n",
            b"data: a\rb\n\n",
            b"data: a\ndata: b\n\n",
            b"data: a\nevent: e\n\n",
            b"data: a",
            b"event: e\ndata: a\n\n",
            b"datax: a\n\n",
        ];
        for event in events {
            let fast = Fields::parse(event);
            let mut slow = Fields {
                event,
                name: None,
                first: None,
                more: Vec::new(),
            };
            slow.read_lines();
            let shown = String::from_utf8_lossy(event);
            assert_eq!(fast.first, slow.first, "{shown:?}");
            assert_eq!(
                (fast.name, &fast.more),
                (slow.name, &slow.more),
                "{shown:?}"
            );
        }
    }

    #[test]
    fn one_data_event_is_what_scanning_and_reading_find() {
        let events: [&[u8]; 12] = [
            b"data: {\"a\":1}\n\n",
            b"data:{\"a\":1}\r\n\r\n",
            b"data: x\r\n\n",
            b"data: x\n\r\n",
            b"data: x\n",
            b"data: x",
            b"data: x\n\nmore",
            b"data: x\n\n\n",
            b"data: a\ndata: b\n\n",
            b"event: e\ndata: a\n\n",
            b"data: a\rb\n\n",
            b"data:\n\n",
        ];
        for event in events {
            let mut ends = Vec::new();
            Scanner::default().scan(event, 0, &mut ends);
            let whole = ends == [event.len()];
            let fields = Fields::parse(event);
            let lone = fields.more.is_empty() && fields.name.is_none();
            let want = (whole && lone).then(|| fields.data().into_owned());
            let got = one_data_event(event).map(|r| event[r].to_vec());
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(event));
        }
    }

    #[test]
    fn data_without_colon_or_value() {
        assert_eq!(&*Fields::parse(b"data\n\n").data(), b"");
        assert_eq!(&*Fields::parse(b"data:x").data(), b"x");
        assert!(Fields::parse(b"").data().is_empty());
    }
}
