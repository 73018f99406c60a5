//! Borrowed JSON views for the request translators: a field that is a string or an array (or null).

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// `"text"` or `[item, ...]` (a message's `content`, a `system` prompt, `stop`); the text is borrowed
/// from the body when it has no escapes.
#[derive(Debug)]
pub enum TextOr<'a, T> {
    Text(Cow<'a, str>),
    List(Vec<T>),
    Null,
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for TextOr<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrVisitor(PhantomData))
    }
}

struct TextOrVisitor<'a, T>(PhantomData<(&'a (), T)>);

impl<'de: 'a, 'a, T: Deserialize<'de>> Visitor<'de> for TextOrVisitor<'a, T> {
    type Value = TextOr<'a, T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an array")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(TextOr::Text(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(TextOr::Text(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(TextOr::Text(Cow::Owned(s)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(TextOr::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(TextOr::List(items))
    }
}

/// The raw value is a JSON string (its first byte a quote).
/// `texts` joined with `sep`: the one text borrowed as it is, "" for none, a new string for several.
pub fn joined<'a: 'b, 'b>(
    mut texts: impl Iterator<Item = &'b Cow<'a, str>>,
    sep: &str,
) -> Cow<'a, str> {
    let Some(first) = texts.next() else {
        return Cow::Borrowed("");
    };
    let mut joined = first.clone();
    for t in texts {
        let s = joined.to_mut();
        s.push_str(sep);
        s.push_str(t);
    }
    joined
}

pub fn is_string(raw: &serde_json::value::RawValue) -> bool {
    raw.get().starts_with('"')
}

/// A raw value that is absent or `null`.
pub fn is_null(raw: &Option<&serde_json::value::RawValue>) -> bool {
    raw.is_none_or(|r| r.get() == "null")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn text_list_or_null_borrowed_when_it_can() {
        let t: TextOr<'_, u8> = serde_json::from_str(r#""plain""#).unwrap();
        assert!(matches!(t, TextOr::Text(Cow::Borrowed("plain"))));
        let t: TextOr<'_, u8> = serde_json::from_str(r#""a\nb""#).unwrap();
        assert!(matches!(t, TextOr::Text(Cow::Owned(s)) if s == "a\nb"));
        let t: TextOr<'_, u8> = serde_json::from_str("[1,2]").unwrap();
        assert!(matches!(t, TextOr::List(v) if v == [1, 2]));
        assert!(matches!(
            serde_json::from_str::<TextOr<'_, u8>>("null").unwrap(),
            TextOr::Null
        ));
        assert!(serde_json::from_str::<TextOr<'_, u8>>("{}").is_err());
    }
}
