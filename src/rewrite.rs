//! Per-backend request rewriting: stop words, token cap, extra fields, model alias, stream usage.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use crate::config::Client;
use crate::endpoints::ApiKind;
use crate::json::Cursor;
use crate::request::RequestInfo;

/// What to change in a request body for one client (and, later, one fallback model).
///
/// `None`: nothing changes, send the original bytes. Otherwise only the top level is re-written: keys and
/// values that are not changed are copied byte for byte, in their order; new fields go at the end.
pub fn rewrite(
    body: &[u8],
    info: &RequestInfo,
    client: &Client,
    kind: ApiKind,
    model_override: Option<&str>,
) -> Option<Bytes> {
    let plan = Plan::new(info, client, kind, model_override);
    if plan.is_empty() {
        return None;
    }
    if plan.only_usage() {
        if let Some(body) = append_usage(body) {
            return Some(body);
        }
    }
    let mut obj = serde_json::from_slice::<Object>(body).ok()?;
    // extra_body first: it fills in what the caller left out, and the rules below then apply to it too.
    let mut changed = plan.extra.is_some_and(|extra| add_missing(&mut obj, extra));
    if let Some(model) = plan.model {
        changed |= obj.set("model", Value::from(model).to_string());
    }
    changed |= merge_stop(&mut obj, plan.stop_field, &plan.stop);
    if let Some(cap) = plan.cap {
        changed |= cap_tokens(&mut obj, cap, cap_fields(kind));
    }
    if plan.usage {
        changed |= ask_usage(&mut obj);
    }
    changed.then(|| Bytes::from(obj.to_text()))
}

/// The model name sent upstream: model_override, else client.model, else the requested one.
pub fn upstream_model<'a>(
    info: &'a RequestInfo,
    client: &'a Client,
    model_override: Option<&'a str>,
) -> &'a str {
    client.outgoing_model(&info.model, model_override)
}

/// The rules that apply to one request, decided without looking at the body.
struct Plan<'a> {
    /// The client's stop words; empty when there are none or the API has no stop field.
    stop: Vec<&'a str>,
    /// `stop`, or Messages' `stop_sequences`.
    stop_field: &'static str,
    cap: Option<u64>,
    /// None for count_tokens, which takes no sampling fields (Anthropic refuses unknown ones).
    extra: Option<&'a Map<String, Value>>,
    /// Set only when it differs from the requested model.
    model: Option<&'a str>,
    usage: bool,
}

impl<'a> Plan<'a> {
    fn new(
        info: &'a RequestInfo,
        client: &'a Client,
        kind: ApiKind,
        model_override: Option<&'a str>,
    ) -> Self {
        let model = upstream_model(info, client, model_override);
        let words = client.stop.iter().map(String::as_str);
        let (stop, stop_field) = match kind {
            ApiKind::Chat | ApiKind::Completions => (words.collect(), "stop"),
            // Anthropic refuses an empty or whitespace-only stop sequence.
            ApiKind::Messages => (
                words.filter(|w| !w.trim().is_empty()).collect(),
                "stop_sequences",
            ),
            _ => (Vec::new(), "stop"),
        };
        Plan {
            stop,
            stop_field,
            cap: client.max_tokens.filter(|_| !cap_fields(kind).is_empty()),
            extra: Some(&client.extra_body)
                .filter(|extra| !extra.is_empty() && kind != ApiKind::CountTokens),
            model: (model != info.model).then_some(model),
            usage: kind.streams_usage_option() && info.stream && !info.include_usage,
        }
    }

    /// Only stream usage is asked for: the usual rewrite of a streaming request.
    fn only_usage(&self) -> bool {
        self.usage
            && self.stop.is_empty()
            && self.cap.is_none()
            && self.extra.is_none()
            && self.model.is_none()
    }

    fn is_empty(&self) -> bool {
        self.stop.is_empty()
            && self.cap.is_none()
            && self.extra.is_none()
            && self.model.is_none()
            && !self.usage
    }
}

/// The token limit fields of an API, the one to add first.
fn cap_fields(kind: ApiKind) -> &'static [&'static str] {
    match kind {
        ApiKind::Chat | ApiKind::Completions => &["max_tokens", "max_completion_tokens"],
        ApiKind::Responses => &["max_output_tokens"],
        ApiKind::Messages => &["max_tokens"],
        // count_tokens is never sent.
        ApiKind::Embeddings | ApiKind::CountTokens | ApiKind::StoredResponse | ApiKind::Other => {
            &[]
        }
    }
}

/// Adds each `extra_body` field the request lacks (a field present as `null` is not lacking).
fn add_missing(obj: &mut Object, extra: &Map<String, Value>) -> bool {
    let mut changed = false;
    for (name, value) in extra {
        if obj.get(name).is_none() {
            obj.push(name, value.to_string());
            changed = true;
        }
    }
    changed
}

/// `field` (`stop`, or Messages' `stop_sequences`) becomes the client's words then the caller's, without
/// repeats. A caller's value that is neither a string, a list of strings nor null is left for the backend to
/// reject.
fn merge_stop(obj: &mut Object, field: &str, words: &[&str]) -> bool {
    if words.is_empty() {
        return false;
    }
    let caller = match obj.get(field) {
        None => Some(Vec::new()),
        Some(raw) => parse_stop(raw),
    };
    let Some(caller) = caller else {
        return false;
    };
    let mut merged: Vec<&str> = Vec::with_capacity(words.len() + caller.len());
    for word in words
        .iter()
        .copied()
        .chain(caller.iter().map(String::as_str))
    {
        if !merged.contains(&word) {
            merged.push(word);
        }
    }
    obj.set_value(field, &Value::from(merged))
}

fn parse_stop(raw: &str) -> Option<Vec<String>> {
    match serde_json::from_str::<Option<String>>(raw) {
        Ok(one) => Some(one.into_iter().collect()),
        Err(_) => serde_json::from_str::<Vec<String>>(raw).ok(),
    }
}

/// Numbers above `cap` in any of `fields` become `cap`; when none of them holds a value, the first one found
/// as `null` (which means "no limit"), else `fields[0]`, is set to `cap`. Other values are left alone.
fn cap_tokens(obj: &mut Object, cap: u64, fields: &[&str]) -> bool {
    let mut changed = false;
    let mut limited = false;
    for &name in fields {
        let values = || obj.values(name).filter(|raw| *raw != "null");
        if values().next().is_none() {
            continue;
        }
        limited = true;
        // Every copy of a repeated key is capped: parsers disagree on which one counts.
        if values().any(|raw| above(raw, cap)) {
            changed |= obj.set(name, cap.to_string());
        }
    }
    if limited {
        return changed;
    }
    let target = fields.iter().find(|name| obj.get(name).is_some());
    match target.or(fields.first()) {
        Some(name) => obj.set(name, cap.to_string()),
        None => false,
    }
}

/// Whether `raw` is a JSON number larger than `cap` (fractions and exponents included).
fn above(raw: &str, cap: u64) -> bool {
    let Ok(n) = serde_json::from_str::<Number>(raw) else {
        return false;
    };
    match (n.as_u64(), n.as_i64(), n.as_f64()) {
        (Some(v), _, _) => v > cap,
        (None, Some(_), _) => false,
        (None, None, Some(f)) => f > cap as f64,
        (None, None, None) => false,
    }
}

/// The member [`ask_usage`] adds when the request has no `stream_options`.
const USAGE_MEMBER: &[u8] = br#""stream_options":{"include_usage":true}"#;

/// The body with [`USAGE_MEMBER`] added, written as [`Object::to_text`] writes it, when it is a JSON object the
/// checking skim reads and without `stream_options` (a streaming request's usual shape); else None. The same
/// bytes as [`ask_usage`] on an [`Object`], without building one.
fn append_usage(body: &[u8]) -> Option<Bytes> {
    let text = std::str::from_utf8(body).ok()?;
    let mut out = Vec::with_capacity(body.len() + USAGE_MEMBER.len() + 1);
    out.push(b'{');
    let mut cursor = Cursor::new(text);
    cursor.object(|c, key| {
        if key == b"stream_options" {
            return None;
        }
        if out.len() > 1 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key);
        out.extend_from_slice(b"\":");
        out.extend_from_slice(c.raw()?.as_bytes());
        Some(())
    })?;
    cursor.end()?;
    if out.len() > 1 {
        out.push(b',');
    }
    out.extend_from_slice(USAGE_MEMBER);
    out.push(b'}');
    Some(Bytes::from(out))
}

/// Makes `stream_options.include_usage` true, keeping the object's other keys. A `stream_options` that is not
/// an object or null is left for the backend to reject.
fn ask_usage(obj: &mut Object) -> bool {
    let new = match obj.get("stream_options") {
        None | Some("null") => r#"{"include_usage":true}"#.to_owned(),
        Some(raw) => match serde_json::from_str::<Object>(raw) {
            Ok(mut options) => {
                if !options.set("include_usage", "true".into()) {
                    return false;
                }
                options.to_text()
            }
            Err(_) => return false,
        },
    };
    obj.set("stream_options", new)
}

/// A JSON object read one level deep: raw key and value text borrowed from the body, in order, duplicates kept.
struct Object<'a> {
    fields: Vec<Field<'a>>,
}

struct Field<'a> {
    /// The key as written, quotes and escapes included.
    raw_key: Cow<'a, str>,
    /// The key unescaped, to compare with.
    name: Cow<'a, str>,
    value: Cow<'a, str>,
}

impl<'a> Object<'a> {
    /// The value of `name` (the last one if repeated, as most JSON parsers read it).
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|f| f.name == name)
            .map(|f| f.value.as_ref())
    }

    fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.fields
            .iter()
            .filter(move |f| f.name == name)
            .map(|f| f.value.as_ref())
    }

    /// Sets every `name` to `value` (JSON text), or appends it; whether the text changed.
    fn set(&mut self, name: &str, value: String) -> bool {
        let mut found = false;
        let mut changed = false;
        for field in self.fields.iter_mut().filter(|f| f.name == name) {
            found = true;
            if field.value != value.as_str() {
                field.value = Cow::Owned(value.clone());
                changed = true;
            }
        }
        if !found {
            self.push(name, value);
        }
        changed || !found
    }

    /// Like `set`, but a value equal to the present one as JSON (whatever its spacing) is no change.
    fn set_value(&mut self, name: &str, value: &Value) -> bool {
        let same = self
            .get(name)
            .and_then(|raw| serde_json::from_str::<Value>(raw).ok())
            .is_some_and(|old| old == *value);
        !same && self.set(name, value.to_string())
    }

    fn push(&mut self, name: &str, value: String) {
        self.fields.push(Field {
            raw_key: Cow::Owned(Value::from(name).to_string()),
            name: Cow::Owned(name.to_owned()),
            value: Cow::Owned(value),
        });
    }

    fn to_text(&self) -> String {
        let len: usize = self
            .fields
            .iter()
            .map(|f| f.raw_key.len() + f.value.len() + 2)
            .sum();
        let mut out = String::with_capacity(len + 2);
        out.push('{');
        for (i, field) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&field.raw_key);
            out.push(':');
            out.push_str(&field.value);
        }
        out.push('}');
        out
    }
}

/// The key without its quotes, unescaped only when it has escapes.
fn unescape_key(raw: &str) -> Cow<'_, str> {
    if raw.contains('\\') {
        if let Ok(key) = serde_json::from_str::<String>(raw) {
            return Cow::Owned(key);
        }
    }
    let bare = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"'));
    Cow::Borrowed(bare.unwrap_or(raw))
}

impl<'de> Deserialize<'de> for Object<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ObjectVisitor)
    }
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Object<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object<'de>, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
        while let Some((key, value)) = map.next_entry::<&'de RawValue, &'de RawValue>()? {
            fields.push(Field {
                raw_key: Cow::Borrowed(key.get()),
                name: unescape_key(key.get()),
                value: Cow::Borrowed(value.get()),
            });
        }
        Ok(Object { fields })
    }
}

#[cfg(test)]
mod tests;
