//! The probes of the serde parse: each answers one question of a field's value (`stream`, `tools`, `messages`...).
//!
//! A probe accepts any shape of value: only invalid JSON is an error.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::JsonType;

/// Reads the next map value with probe `P`.
pub(super) fn probe<'de, A: MapAccess<'de>, P: Probe>(map: &mut A) -> Result<bool, A::Error> {
    Ok(map.next_value::<Lenient<P>>()?.get())
}

/// One question asked of a JSON value while it is parsed. Each hook answers for one JSON type; the defaults
/// answer `false` and skip the value, so any shape is accepted.
pub(super) trait Probe {
    fn on_bool(_: bool) -> bool {
        false
    }
    fn on_str(_: &str) -> bool {
        false
    }
    fn on_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn on_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

/// The answer of probe `P` for one value, and the value's type; only invalid JSON is an error.
pub(super) struct Lenient<P> {
    answer: bool,
    pub(super) ty: JsonType,
    probe: PhantomData<fn() -> P>,
}

impl<P> Lenient<P> {
    pub(super) fn get(&self) -> bool {
        self.answer
    }
}

impl<'de, P: Probe> Deserialize<'de> for Lenient<P> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LenientVisitor::<P>(PhantomData))
            .map(|(answer, ty)| Lenient {
                answer,
                ty,
                probe: PhantomData,
            })
    }
}

struct LenientVisitor<P>(PhantomData<fn() -> P>);

impl<'de, P: Probe> Visitor<'de> for LenientVisitor<P> {
    type Value = (bool, JsonType);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok((P::on_bool(v), JsonType::Bool))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok((false, JsonType::Number))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok((false, JsonType::Number))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok((false, JsonType::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok((P::on_str(v), JsonType::String))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok((false, JsonType::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        P::on_seq(seq).map(|answer| (answer, JsonType::Array))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        P::on_map(map).map(|answer| (answer, JsonType::Object))
    }
}

/// `true` itself.
pub(super) enum Flag {}

impl Probe for Flag {
    fn on_bool(v: bool) -> bool {
        v
    }
}

/// A list or object with at least one element.
pub(super) enum NonEmpty {}

impl Probe for NonEmpty {
    fn on_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<bool, A::Error> {
        let mut any = false;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            any = true;
        }
        Ok(any)
    }
    fn on_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<bool, A::Error> {
        let mut any = false;
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
            any = true;
        }
        Ok(any)
    }
}

/// A list with an element for which `P` holds (every element is still read, as the parser requires).
pub(super) struct AnyItem<P>(PhantomData<fn() -> P>);

impl<P: Probe> Probe for AnyItem<P> {
    fn on_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<bool, A::Error> {
        let mut any = false;
        while let Some(item) = seq.next_element::<Lenient<P>>()? {
            any |= item.get();
        }
        Ok(any)
    }
}

/// Whether `P` holds for the value of `key` in a map (any of them, if the key is repeated).
fn probe_key<'de, A: MapAccess<'de>, P: Probe>(mut map: A, key: &str) -> Result<bool, A::Error> {
    let mut found = false;
    while let Some(is_key) = map.next_key_seed(IsKey(key))? {
        if is_key {
            found |= probe::<A, P>(&mut map)?;
        } else {
            map.next_value::<IgnoredAny>()?;
        }
    }
    Ok(found)
}

/// Compares a map key with an expected name without allocating (escaped keys are unescaped by the parser).
struct IsKey<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for IsKey<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for IsKey<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

/// `stream_options` with `include_usage: true`.
pub(super) enum StreamOptions {}

impl Probe for StreamOptions {
    fn on_map<'de, A: MapAccess<'de>>(map: A) -> Result<bool, A::Error> {
        probe_key::<A, Flag>(map, "include_usage")
    }
}

/// A chat message (or, with `RESPONSES`, a Responses API input item) whose `content` has a non-text part.
pub(super) enum Message<const RESPONSES: bool> {}

impl<const RESPONSES: bool> Probe for Message<RESPONSES> {
    fn on_map<'de, A: MapAccess<'de>>(map: A) -> Result<bool, A::Error> {
        probe_key::<A, AnyItem<Part<RESPONSES>>>(map, "content")
    }
}

/// A content part whose `type` is a string naming something other than text.
pub(super) enum Part<const RESPONSES: bool> {}

impl<const RESPONSES: bool> Probe for Part<RESPONSES> {
    fn on_map<'de, A: MapAccess<'de>>(map: A) -> Result<bool, A::Error> {
        probe_key::<A, PartType<RESPONSES>>(map, "type")
    }
}

pub(super) enum PartType<const RESPONSES: bool> {}

impl<const RESPONSES: bool> Probe for PartType<RESPONSES> {
    fn on_str(kind: &str) -> bool {
        match kind {
            "text" | "refusal" => false,
            "input_text" | "output_text" => !RESPONSES,
            _ => true,
        }
    }
}
