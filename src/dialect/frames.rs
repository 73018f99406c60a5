//! SSE events out of a byte stream read piece by piece, for the stream translators; a partial event is capped.

use crate::dialect::DialectError;
use crate::tap::sse::{Fields, Scanner};
use std::borrow::Cow;

/// How big one event may grow before it ends, at most (a chat chunk may carry a whole tool call's arguments).
pub const EVENT_CAP: usize = 8 << 20;

/// One event's joined `data` (its `event:` name repeats the JSON `type`, which is what the translators read).
pub struct Event<'a> {
    pub data: Cow<'a, [u8]>,
    /// A comment or an event without data or name: the backend's keep-alive (`data` is empty).
    pub keep_alive: bool,
}

/// Splits a stream into events across reads: complete events are handed on from the read itself, only an
/// unfinished tail is kept (up to the cap).
pub struct Frames {
    scanner: Scanner,
    ends: Vec<usize>,
    pending: Vec<u8>,
    cap: usize,
}

impl Frames {
    pub fn new(cap: usize) -> Self {
        Frames {
            scanner: Scanner::default(),
            ends: Vec::new(),
            pending: Vec::new(),
            cap,
        }
    }

    /// Calls `each` on every event that ends in `bytes` (after what earlier reads left unfinished).
    pub fn feed<E: From<DialectError>>(
        &mut self,
        bytes: &[u8],
        mut each: impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.ends.clear();
        self.scanner.scan(bytes, 0, &mut self.ends);
        let mut start = 0;
        for i in 0..self.ends.len() {
            let end = self.ends[i];
            if self.pending.is_empty() {
                call(&bytes[start..end], &mut each)?;
            } else {
                self.pending.extend_from_slice(&bytes[start..end]);
                let event = std::mem::take(&mut self.pending);
                call(&event, &mut each)?;
                self.pending = event;
                self.pending.clear();
            }
            start = end;
        }
        self.pending.extend_from_slice(&bytes[start..]);
        if self.pending.len() > self.cap {
            self.pending = Vec::new();
            return Err(DialectError::EventTooLarge(self.cap).into());
        }
        Ok(())
    }

    /// Calls `each` on a last event the stream ended without a blank line after.
    pub fn finish<E: From<DialectError>>(
        &mut self,
        each: impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let rest = std::mem::take(&mut self.pending);
        if rest.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let mut each = each;
        call(&rest, &mut each)
    }
}

/// A stream translator reading the backend's events out of its [`Frames`]: its `feed` and `finish` are these.
pub trait OnEvents {
    fn frames(&mut self) -> &mut Frames;
    /// One backend event translated, appended to `out`.
    fn on_event(&mut self, e: Event<'_>, out: &mut Vec<u8>) -> Result<(), DialectError>;

    /// Translates the events that end in `bytes` (the frames are lent out while the events are read).
    fn feed_events(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), DialectError>
    where
        Self: Sized,
    {
        let mut frames = std::mem::replace(self.frames(), Frames::new(0));
        let result = frames.feed(bytes, |e| self.on_event(e, out));
        *self.frames() = frames;
        result
    }

    /// Translates a last event the stream ended without a blank line after. One that does not parse was cut
    /// mid-way: the stream stays cut, it is no error of ours.
    fn finish_events(&mut self, out: &mut Vec<u8>)
    where
        Self: Sized,
    {
        let mut frames = std::mem::replace(self.frames(), Frames::new(0));
        let _ = frames.finish(|e| self.on_event(e, out));
        *self.frames() = frames;
    }
}

fn call<E>(raw: &[u8], each: &mut impl FnMut(Event<'_>) -> Result<(), E>) -> Result<(), E> {
    let fields = Fields::parse(raw);
    let data = fields.data();
    let keep_alive = data.is_empty() && fields.name.is_none();
    each(Event { data, keep_alive })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn events(pieces: &[&[u8]], cap: usize) -> Result<Vec<String>, DialectError> {
        let mut frames = Frames::new(cap);
        let mut seen = Vec::new();
        for piece in pieces {
            frames.feed(piece, |e: Event<'_>| {
                if e.keep_alive {
                    seen.push("(keep-alive)".into());
                    return Ok(());
                }
                seen.push(String::from_utf8_lossy(&e.data).into_owned());
                Ok::<_, DialectError>(())
            })?;
        }
        frames.finish(|e: Event<'_>| {
            seen.push(String::from_utf8_lossy(&e.data).into_owned());
            Ok::<_, DialectError>(())
        })?;
        Ok(seen)
    }

    #[test]
    fn events_across_reads_and_a_last_one_without_blank_line() {
        let s = b": ping\n\ndata: a\n\nevent: x\ndata: b\r\n\r\ndata:\n\ndata: c";
        let whole = events(&[s], EVENT_CAP).unwrap();
        assert_eq!(whole, ["(keep-alive)", "a", "b", "(keep-alive)", "c"]);
        for i in 0..=s.len() {
            assert_eq!(
                events(&[&s[..i], &s[i..]], EVENT_CAP).unwrap(),
                whole,
                "split at {i}"
            );
        }
    }

    #[test]
    fn a_partial_event_past_the_cap_is_an_error() {
        assert_eq!(
            events(&[b"data: 0123456789"], 8),
            Err(DialectError::EventTooLarge(8))
        );
        assert!(events(&[b"data: 01\n\n"], 8).is_ok());
    }
}
