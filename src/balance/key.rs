//! A request's affinity key: the first present source (a header, a body field, the prompt's prefix), hashed.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::{AffinityField, AffinitySource};

/// A header value or body field longer than this is cut before hashing: callers choose them.
pub const MAX_VALUE_BYTES: usize = 4096;

/// The hash of what identifies a conversation. Never the raw value (that may be a user's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AffinityKey(pub u64);

impl AffinityKey {
    /// 12 hex digits for the usage record.
    pub fn short(&self) -> String {
        format!("{:012x}", self.0 >> 16)
    }
}

/// The first of `sources` present in the request, hashed; `None` when none is. The body is parsed only
/// when a body source is reached, and then once (borrowed: strings are not copied).
pub fn affinity_key(
    sources: &[AffinitySource],
    headers: &http::HeaderMap,
    body: &[u8],
    model: &str,
    prefix_bytes: usize,
) -> Option<AffinityKey> {
    let mut parsed: Option<Body<'_>> = None;
    for source in sources {
        let found = match source {
            AffinitySource::Header(name) => headers
                .get(name)
                .map(|v| v.as_bytes())
                .filter(|v| !v.is_empty())
                .map(|v| hash_value(b'h', v)),
            AffinitySource::Field(field) => {
                let body = parsed.get_or_insert_with(|| Body::parse(body));
                body.field(*field).map(|v| hash_value(b'f', v.as_bytes()))
            }
            AffinitySource::Prefix => {
                let body = parsed.get_or_insert_with(|| Body::parse(body));
                body.prefix(model, prefix_bytes)
            }
        };
        if found.is_some() {
            return found.map(AffinityKey);
        }
    }
    None
}

fn hash_value(kind: u8, value: &[u8]) -> u64 {
    let mut h = Fnv::new();
    h.write(&[kind]);
    h.write(&value[..value.len().min(MAX_VALUE_BYTES)]);
    h.finish()
}

/// The fields of a chat, Responses or Anthropic Messages body that keys are read from; anything may be
/// missing or of another type (an unparsable body has none).
#[derive(Default, Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    prompt_cache_key: Option<&'a RawValue>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
    #[serde(borrow)]
    safety_identifier: Option<&'a RawValue>,
    #[serde(borrow)]
    conversation: Option<&'a RawValue>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
    /// Responses API system prompt.
    #[serde(borrow)]
    instructions: Option<&'a RawValue>,
    /// Anthropic Messages system prompt.
    #[serde(borrow)]
    system: Option<&'a RawValue>,
    /// Chat turns; read only for `prefix`, and then only up to the first user turn.
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    /// Responses turns (or one string).
    #[serde(borrow)]
    input: Option<&'a RawValue>,
}

impl<'a> Body<'a> {
    fn parse(body: &'a [u8]) -> Body<'a> {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// A field's JSON text when it is a non-empty string (or, for `conversation`, an object).
    fn field(&self, field: AffinityField) -> Option<&'a str> {
        let value = match field {
            AffinityField::PromptCacheKey => self.prompt_cache_key,
            AffinityField::User => self.user,
            AffinityField::SafetyIdentifier => self.safety_identifier,
            AffinityField::Conversation => {
                return self
                    .conversation
                    .map(RawValue::get)
                    .filter(|v| (v.starts_with('"') && *v != "\"\"") || v.starts_with('{'))
            }
            AffinityField::MetadataUserId => {
                #[derive(Deserialize)]
                struct Metadata<'a> {
                    #[serde(borrow)]
                    user_id: Option<&'a RawValue>,
                }
                let metadata: Metadata<'a> = serde_json::from_str(self.metadata?.get()).ok()?;
                metadata.user_id
            }
        };
        value
            .map(RawValue::get)
            .filter(|v| v.starts_with('"') && *v != "\"\"")
    }

    /// The model, the system prompt and the first user message, cut at `limit` bytes together; `None`
    /// without a system prompt or user message (all requests to a model would share one key).
    fn prefix(&self, model: &str, limit: usize) -> Option<u64> {
        let turns: Option<Turns<'a>> = self
            .messages
            .or(self.input)
            .and_then(|raw| serde_json::from_str(raw.get()).ok());
        let mut parts: Vec<&str> = Vec::new();
        parts.extend(self.instructions.map(RawValue::get));
        parts.extend(self.system.map(RawValue::get));
        if let Some(turns) = &turns {
            parts.extend(turns.system.iter().map(AsRef::as_ref));
            parts.extend(turns.first_user.as_deref());
        }
        if parts.is_empty() {
            return None;
        }
        let mut h = Fnv::new();
        h.write(b"p");
        let mut left = limit;
        for part in std::iter::once(model).chain(parts) {
            let take = part.len().min(left);
            h.write(&part.as_bytes()[..take]);
            h.write(&[0xff]);
            left -= take;
            if left == 0 {
                break;
            }
        }
        Some(h.finish())
    }
}

/// `messages` or `input`: the contents (as JSON text) of the system/developer turns before the first
/// user turn, and of that turn. A string `input` is the user turn. The rest is skipped unread.
#[derive(Default)]
struct Turns<'a> {
    system: Vec<Cow<'a, str>>,
    first_user: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Turn<'a> {
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for Turns<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TurnsVisitor)
    }
}

struct TurnsVisitor;

impl<'de> Visitor<'de> for TurnsVisitor {
    type Value = Turns<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a list of turns")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Turns {
            system: Vec::new(),
            first_user: Some(Cow::Borrowed(v)),
        })
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Turns {
            system: Vec::new(),
            first_user: Some(Cow::Owned(v.to_owned())),
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut turns = Turns::default();
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            // Lenient: a turn of another shape is skipped, not an error.
            let Ok(Turn {
                role: Some(role),
                content: Some(content),
            }) = serde_json::from_str::<Turn<'de>>(raw.get())
            else {
                continue;
            };
            match role.get() {
                "\"system\"" | "\"developer\"" => turns.system.push(Cow::Borrowed(content.get())),
                "\"user\"" => {
                    turns.first_user = Some(Cow::Borrowed(content.get()));
                    break;
                }
                _ => {}
            }
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(turns)
    }
}

/// 64-bit FNV-1a with a final mix: fixed, so keys (and so placements) are the same in every process
/// and Rust version, unlike `std::hash`.
pub(super) struct Fnv(u64);

impl Fnv {
    pub(super) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub(super) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(super) fn finish(&self) -> u64 {
        mix(self.0)
    }
}

/// MurmurHash3's 64-bit finalizer: every input bit moves every output bit.
pub(super) fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}
