//! The whole-body side of the tap: passes a body on (or holds it for the prefix) and reads it at its end.

use super::keys;
use super::wire::{self, Envelope, Raw};
use super::{concat, prefix, ResponseTap};
use crate::endpoints::ApiKind;
use bytes::Bytes;
use serde_json::value::RawValue;

impl ResponseTap {
    pub(super) fn feed_body(&mut self, chunk: Bytes) -> Bytes {
        self.first_token |= !chunk.is_empty();
        if !self.sniffed {
            if let Some(held) = self.sniff(&chunk) {
                self.keep(&chunk);
                return concat(held, chunk);
            }
        }
        if !self.holding {
            self.keep(&chunk);
            return chunk;
        }
        self.body.extend_from_slice(&chunk);
        if self.body.len() <= self.body_cap {
            return Bytes::new();
        }
        log::warn!(
            "response body over {} bytes: special prefix not applied",
            self.body_cap
        );
        self.stop_reading();
        let held = self.body.split().freeze();
        self.keep(&held);
        held
    }

    pub(super) fn finish_body(&mut self) -> Bytes {
        if self.body_full {
            return Bytes::new();
        }
        let body = std::mem::take(&mut self.body);
        let at = self.read_body(&body);
        if !std::mem::take(&mut self.holding) {
            self.body = body;
            return Bytes::new();
        }
        let out = match (&self.prefix_json, at.is_empty()) {
            (Some(p), false) => Bytes::from(prefix::splice(&body, &at, p.as_bytes())),
            _ => body.freeze(),
        };
        self.stop_reading();
        self.keep(&out);
        out
    }

    /// Looks at the first byte that is not white space: a body that is not a JSON object (audio, an HTML
    /// error page) has no usage to read nor prefix to take, so only the record's bytes are kept from now on.
    /// Returns what was held for the prefix, to be sent.
    fn sniff(&mut self, chunk: &[u8]) -> Option<Bytes> {
        let first = chunk.iter().find(|b| !b.is_ascii_whitespace())?;
        self.sniffed = true;
        if *first == b'{' {
            return None;
        }
        let held = self.holding;
        self.stop_reading();
        let seen = self.body.split().freeze();
        self.keep(&seen);
        held.then_some(seen)
    }

    /// From now on the body is only kept for the record, not read nor held.
    fn stop_reading(&mut self) {
        self.holding = false;
        self.body_full = true;
        self.body_cap = self.opts.keep_body.unwrap_or(0);
    }

    /// Reads usage and model from a whole body; returns where the prefix goes when it is held for one.
    fn read_body(&mut self, body: &[u8]) -> Vec<usize> {
        let Ok(text) = std::str::from_utf8(body) else {
            return Vec::new();
        };
        if self.opts.kind == ApiKind::CountTokens {
            // Anthropic's `{"input_tokens": N}`: the whole body is the count, of prompt tokens only.
            let count = serde_json::from_str::<&RawValue>(text).ok().map(Raw::from);
            self.note(count, None);
            if let Some(usage) = &mut self.usage {
                usage.total = usage.total.or(usage.prompt);
            }
            return Vec::new();
        }
        if !self.holding {
            // Only usage and model are wanted: read in one pass over the top-level members, else found by
            // searches without parsing the content between them.
            let top = keys::top(text).unwrap_or_else(|| searched(text, self.opts.kind));
            self.note(top.usage.map(Raw::checked), top.model.map(Raw::checked));
            if self.opts.kind == ApiKind::Responses {
                self.note_response_id(top.id.map(Raw::checked));
            }
            return Vec::new();
        }
        let Some(env) = Envelope::parse(text) else {
            return Vec::new();
        };
        self.observe(&env, None);
        if !self.holding {
            return Vec::new();
        }
        if self.opts.kind == ApiKind::Messages {
            return messages_prefix_offset(&env, text).into_iter().collect();
        }
        let completions = self.opts.kind == ApiKind::Completions;
        let strings = env.choices.iter().flatten().filter_map(|c| {
            if completions {
                c.text
            } else {
                c.message.as_ref().and_then(|m| m.content)
            }
        });
        strings
            .filter_map(|raw| prefix::string_start(text, raw.get()))
            .collect()
    }

    /// Keeps the body's first bytes, up to the cap (more than that cannot be read at the end).
    pub(super) fn keep(&mut self, chunk: &[u8]) {
        let room = self.body_cap.saturating_sub(self.body.len());
        if chunk.len() > room {
            self.body_full = true;
        }
        if room > 0 {
            self.body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
    }
}

/// The top-level `model`, `usage` and (for the Responses API) `id` of a body the one-pass read is unsure about.
fn searched(text: &str, kind: ApiKind) -> keys::Top<'_> {
    let find = |key, from| keys::top_level(text, key, from).map(RawValue::get);
    keys::Top {
        model: find("model", keys::SearchFrom::Start),
        usage: find("usage", keys::SearchFrom::End),
        id: (kind == ApiKind::Responses)
            .then(|| find("id", keys::SearchFrom::Start))
            .flatten(),
    }
}

/// Where the prefix goes in a Messages body: its first `text` block with at least one character.
fn messages_prefix_offset(env: &Envelope, text: &str) -> Option<usize> {
    let blocks = serde_json::from_str::<Vec<wire::TextBlock>>(env.content?.get()).ok()?;
    let first = blocks.iter().find_map(|b| b.text_of("text"))?;
    prefix::string_start(text, first.get())
}
