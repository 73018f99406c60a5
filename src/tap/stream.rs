//! The SSE side of the tap: holds a partial event, reads each complete one once, splices the prefix, hides usage.
//!
//! Most events of a long stream say nothing the tap still needs: once the model and the first token are known
//! and neither the prefix nor the record wants the deltas, an event is only searched for a top-level `usage`
//! (or, where the API has one, a `response`) and parsed only when it has one ([`ResponseTap::quiet`]). A chunk
//! that is one whole `data:` event, the usual shape, skips the framing: passed on when quiet, else read at once.
//! An event that must be read is read by the checking skim ([`wire::Envelope::parse`]; serde_json where the
//! skim is unsure).

use std::sync::LazyLock;

use super::{concat, keys, prefix, sse, wire, ResponseTap, PREFIXED_CHOICES};
use crate::endpoints::ApiKind;
use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;
use wire::Envelope;

/// An event held longer than this is passed on unread, so a stream without blank lines cannot grow memory.
pub(super) const EVENT_CAP: usize = 16 << 20;

/// Whether an event's data is known not to be quiet ([`ResponseTap::quiet`] said no) or yet to be asked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quiet {
    Checked,
    Unknown,
}

/// What becomes of one complete event.
enum Action {
    Keep,
    Drop,
    Replace(Vec<u8>),
}

impl ResponseTap {
    pub(super) fn feed_sse(&mut self, chunk: Bytes) -> Bytes {
        if self.recon.is_none() {
            self.keep(&chunk);
        }
        if let Some(seen) = &mut self.seen {
            seen.add(&chunk);
        }
        let held = self.pending.len();
        if held == 0 && !self.skipping && self.scanner.at_line_start() {
            if let Some(value) = sse::one_data_event(&chunk) {
                // The usual chunk: one whole `data:` event. Passed on without the framing when it says nothing
                // new; else read as the framing would read it (it would find this one event and leave its
                // state as it is), without the framing.
                if self.quiet(&chunk[value.clone()]) {
                    return chunk;
                }
                let fields = sse::Fields::lone(&chunk, value);
                return match self.on_fields(&chunk, &fields, true, Quiet::Checked) {
                    Action::Keep => chunk,
                    Action::Drop => Bytes::new(),
                    Action::Replace(bytes) => Bytes::from(bytes),
                };
            }
        }
        self.ends.clear();
        self.scanner.scan(&chunk, held, &mut self.ends);
        let complete = self.ends.last().copied().unwrap_or(0);
        let head = if held > 0 {
            self.pending.extend_from_slice(&chunk);
            self.pending.split_to(complete).freeze()
        } else if complete == chunk.len() {
            chunk
        } else {
            self.pending.extend_from_slice(&chunk[complete..]);
            chunk.slice(..complete)
        };
        let out = self.transform(head);
        if !self.skipping && self.pending.len() <= EVENT_CAP {
            return out;
        }
        if !self.skipping {
            log::warn!("SSE event over {EVENT_CAP} bytes: passed on unread");
        }
        self.skipping = true;
        concat(out, self.pending.split().freeze())
    }

    pub(super) fn finish_sse(&mut self) -> Bytes {
        let tail = self.pending.split().freeze();
        if !self.skipping && !tail.is_empty() {
            // A last event without its blank line: read for usage, sent as it came.
            self.on_event(&tail, false);
        }
        tail
    }

    /// `head` (complete events, ending at `self.ends`) as the caller gets it; the same bytes when unchanged.
    fn transform(&mut self, head: Bytes) -> Bytes {
        let ends = std::mem::take(&mut self.ends);
        let mut out: Option<BytesMut> = None;
        let mut start = 0;
        for &end in &ends {
            let event = &head[start..end];
            let action = if std::mem::take(&mut self.skipping) {
                Action::Keep
            } else {
                self.on_event(event, true)
            };
            match (action, &mut out) {
                (Action::Keep, None) => {}
                (Action::Keep, Some(out)) => out.extend_from_slice(event),
                (action, out) => {
                    let out = out.get_or_insert_with(|| start_copy(&head, start));
                    if let Action::Replace(bytes) = action {
                        out.extend_from_slice(&bytes);
                    }
                }
            }
            start = end;
        }
        self.ends = ends;
        out.map_or(head, BytesMut::freeze)
    }

    /// Reads one event; `live` when its bytes are still to be sent (and so may change).
    fn on_event(&mut self, event: &[u8], live: bool) -> Action {
        let fields = sse::Fields::parse(event);
        self.on_fields(event, &fields, live, Quiet::Unknown)
    }

    /// Reads one event from its fields; `quiet`: whether [`ResponseTap::quiet`] already said no for its data.
    fn on_fields(
        &mut self,
        event: &[u8],
        fields: &sse::Fields,
        live: bool,
        quiet: Quiet,
    ) -> Action {
        let data = fields.data();
        if *data == *b"[DONE]" {
            self.done_passed |= live;
            return Action::Keep;
        }
        if data.is_empty() {
            return Action::Keep;
        }
        if quiet == Quiet::Unknown && self.quiet(&data) {
            return Action::Keep;
        }
        let Ok(text) = std::str::from_utf8(&data) else {
            return Action::Keep;
        };
        let Some(env) = Envelope::parse(text) else {
            return Action::Keep;
        };
        let at = if live {
            self.prefix_offsets(&env, text)
        } else {
            Vec::new()
        };
        self.observe(&env, fields.name);
        if live && self.opts.hide_usage_chunk && env.usage_only() {
            return Action::Drop;
        }
        let Some(prefix) = self.prefix_json.as_ref().filter(|_| !at.is_empty()) else {
            return Action::Keep;
        };
        let at: Vec<usize> = at.iter().filter_map(|&o| fields.event_offset(o)).collect();
        Action::Replace(prefix::splice(event, &at, prefix.as_bytes()))
    }

    /// Where in the event's data the prefix goes: the first non-empty content (chat) or text (completions)
    /// of each choice not prefixed yet.
    fn prefix_offsets(&mut self, env: &Envelope, text: &str) -> Vec<usize> {
        let mut at = Vec::new();
        if self.prefix_json.is_some() && self.opts.kind == ApiKind::Messages {
            return self.messages_prefix_offset(env, text).into_iter().collect();
        }
        let (Some(prefix), Some(choices)) = (&self.opts.prefix, &env.choices) else {
            return at;
        };
        if self.prefix_json.is_none() {
            return at;
        }
        for (position, choice) in choices.iter().enumerate() {
            let target = match self.opts.kind {
                ApiKind::Chat => choice.delta.as_ref().and_then(|d| d.content),
                ApiKind::Completions => choice.text,
                _ => None,
            };
            let index = choice.index_or(position);
            let full = self.prefixed.len() >= PREFIXED_CHOICES;
            if full || self.prefixed.contains(&index) || !target.is_some_and(wire::nonempty_str) {
                continue;
            }
            let Some(offset) = target.and_then(|raw| prefix::string_start(text, raw.get())) else {
                continue;
            };
            self.prefixed.push(index);
            at.push(offset);
            if let Some(recon) = &mut self.recon {
                recon.push_content(index, prefix);
            }
        }
        at
    }
}

impl ResponseTap {
    /// Where the prefix goes in a Messages stream: the first non-empty `text_delta` of the answer (a Messages
    /// answer is one message, so once is all).
    fn messages_prefix_offset(&mut self, env: &Envelope, text: &str) -> Option<usize> {
        if !self.prefixed.is_empty() {
            return None;
        }
        let delta = serde_json::from_str::<wire::TextBlock>(env.delta?.get()).ok()?;
        let offset = prefix::string_start(text, delta.text_of("text_delta")?.get())?;
        self.prefixed.push(0);
        Some(offset)
    }
}

/// `"response"` anywhere in an event: a Responses API `response` object may carry usage and model (searched
/// for only where the API may send one: [`ResponseTap::responses`]).
static RESPONSE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"response\""));

impl ResponseTap {
    /// Whether parsing the event's `data` could change nothing: the model and the first token are known, the
    /// record rebuilds no message, no prefix is left to splice, and the event is a JSON object without a
    /// top-level `usage` that is not null and, where the API may send one, without `"response"`. Such an
    /// event passes on unparsed; any other is parsed whole, as before.
    fn quiet(&self, data: &[u8]) -> bool {
        #[cfg(test)]
        if self.always_parse {
            return false;
        }
        let settled = self.model.is_some() && self.first_token && self.recon.is_none();
        settled
            && self.prefix_done(data)
            && !(self.responses && RESPONSE_KEY.find(data).is_some())
            && keys::null_or_absent(data, "usage")
    }

    /// Whether the prefix has nothing left to do in the event `data`: there is none, every choice it may get
    /// has it, or the event names at least one `"index"` and each one it names already has it. (An event that
    /// names none is read whole, so a choice known by its position is found; one without an index beside
    /// choices with one, which no backend sends, would not be.)
    fn prefix_done(&self, data: &[u8]) -> bool {
        if self.prefix_json.is_none() || self.prefixed.len() >= PREFIXED_CHOICES {
            return true;
        }
        if self.opts.kind == ApiKind::Messages {
            return !self.prefixed.is_empty();
        }
        let mut named = 0;
        for at in memchr::memmem::find_iter(data, b"\"index\"") {
            let rest = data[at + 7..].trim_ascii_start();
            let digits = rest.strip_prefix(b":").unwrap_or(b"x").trim_ascii_start();
            let end = digits
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(digits.len());
            let index = std::str::from_utf8(&digits[..end])
                .ok()
                .and_then(|d| d.parse::<u32>().ok());
            match index {
                Some(index) if self.prefixed.contains(&index) => named += 1,
                _ => return false,
            }
        }
        named > 0
    }
}

/// A buffer for the changed output, starting with the unchanged events before `start`.
fn start_copy(head: &Bytes, start: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(head.len() + 64);
    out.extend_from_slice(&head[..start]);
    out
}
