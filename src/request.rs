//! The single parse of a request body: `model`, `stream` and a few flags, without copying the rest.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::GatewayError;
use probe::{probe, AnyItem, Flag, Lenient, Message, NonEmpty, StreamOptions};

/// Longest `model` accepted, in bytes (OpenAI's limit for the field): the name goes into logs, records,
/// metrics labels and error bodies.
pub const MAX_MODEL_BYTES: usize = 256;

/// What routing, rewriting and usage records need from a JSON request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub model: String,
    pub stream: bool,
    /// The caller asked for stream usage (`stream_options.include_usage: true`).
    pub include_usage: bool,
    /// `tools` or `functions` present and non-empty (a non-empty list or object).
    pub tool: bool,
    /// A content part that is not text: in `messages[].content` (chat: parts whose `type` is not "text", e.g.
    /// image_url, input_audio, file) or the Responses API `input[].content[]` parts whose type is not
    /// "input_text"/"output_text"/"text". A "refusal" part counts as text in both.
    pub multimodal: bool,
    /// The caller's cap on output tokens: `max_completion_tokens`, else `max_tokens`, else the Responses API's
    /// `max_output_tokens` (a non-negative integer; anything else reads as absent and the backend judges it).
    pub max_tokens: Option<u64>,
}

/// The top level of a request. Everything but `model` is read leniently: a field of an unexpected shape
/// reads as `false` instead of failing the request, and big fields are skipped, not copied.
#[derive(Default)]
struct Peek<'a> {
    model: Option<&'a RawValue>,
    stream: bool,
    include_usage: bool,
    tool: bool,
    multimodal: bool,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    /// A field the gateway acts on had a type it must refuse (read as `false` would skip usage accounting).
    wrong_type: Option<WrongType>,
}

/// `param` was expected to be `expected` (or null) but was `got`.
#[derive(Debug, Clone, Copy)]
struct WrongType {
    param: &'static str,
    expected: &'static str,
    got: JsonType,
}

/// The JSON type of a value read by a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl JsonType {
    /// As OpenAI's errors name it.
    fn name(self) -> &'static str {
        match self {
            JsonType::Null => "null",
            JsonType::Bool => "a boolean",
            JsonType::Number => "a number",
            JsonType::String => "a string",
            JsonType::Array => "an array",
            JsonType::Object => "an object",
        }
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum TopKey {
    Model,
    Stream,
    StreamOptions,
    Tools,
    Functions,
    Messages,
    Input,
    MaxTokens,
    MaxCompletionTokens,
    MaxOutputTokens,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for Peek<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(PeekVisitor)
    }
}

struct PeekVisitor;

impl<'de> Visitor<'de> for PeekVisitor {
    type Value = Peek<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    /// A repeated key is no error (JSON parsers mostly keep the last), except `model`: routing on one copy
    /// while the backend reads another would be wrong.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Peek<'de>, A::Error> {
        let mut p = Peek::default();
        while let Some(key) = map.next_key::<TopKey>()? {
            match key {
                TopKey::Model if p.model.is_some() => {
                    return Err(de::Error::duplicate_field("model"))
                }
                TopKey::Model => p.model = Some(map.next_value()?),
                // A `stream` the gateway would read as false while a lenient backend streams (`1`, "true")
                // would skip the usage it injects: both fields are typed strictly, as OpenAI does.
                TopKey::Stream => {
                    let v = map.next_value::<Lenient<Flag>>()?;
                    p.stream = v.get();
                    p.check(v.ty, JsonType::Bool, "stream");
                }
                TopKey::StreamOptions => {
                    let v = map.next_value::<Lenient<StreamOptions>>()?;
                    p.include_usage = v.get();
                    p.check(v.ty, JsonType::Object, "stream_options");
                }
                TopKey::Tools | TopKey::Functions => p.tool |= probe::<A, NonEmpty>(&mut map)?,
                TopKey::Messages => p.multimodal |= probe::<A, AnyItem<Message<false>>>(&mut map)?,
                TopKey::Input => p.multimodal |= probe::<A, AnyItem<Message<true>>>(&mut map)?,
                TopKey::MaxTokens => p.max_tokens = map.next_value::<Count>()?.0,
                TopKey::MaxCompletionTokens => {
                    p.max_completion_tokens = map.next_value::<Count>()?.0
                }
                TopKey::MaxOutputTokens => p.max_output_tokens = map.next_value::<Count>()?.0,
                TopKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(p)
    }
}

impl Peek<'_> {
    /// Notes the first field whose type is neither `want` nor null.
    fn check(&mut self, got: JsonType, want: JsonType, param: &'static str) {
        if got != want && got != JsonType::Null && self.wrong_type.is_none() {
            self.wrong_type = Some(WrongType {
                param,
                expected: want.name(),
                got,
            });
        }
    }
}

/// Validates that `body` is a JSON object with a string `model`; other fields are left untouched.
pub fn inspect(body: &[u8]) -> Result<RequestInfo, GatewayError> {
    // Most bodies are read by a shallow scan (no serde); whatever it is not sure about is parsed.
    let Some(s) = scan::scan(body) else {
        return parse(body);
    };
    Ok(RequestInfo {
        model: checked_model(s.model.to_owned())?,
        stream: s.stream,
        include_usage: s.include_usage,
        tool: s.tool,
        multimodal: false,
        max_tokens: s
            .max_completion_tokens
            .or(s.max_tokens)
            .or(s.max_output_tokens),
    })
}

/// The model name, unless it is too long.
fn checked_model(model: String) -> Result<String, GatewayError> {
    if model.len() > MAX_MODEL_BYTES {
        return Err(GatewayError::ModelTooLong {
            len: model.len(),
            max: MAX_MODEL_BYTES,
        });
    }
    Ok(model)
}

/// [`inspect`] by serde: every body the scan leaves, and the reference it is tested against.
fn parse(body: &[u8]) -> Result<RequestInfo, GatewayError> {
    // Valid JSON of the wrong shape and invalid JSON get different messages, so check the shape first.
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => {
            return Err(match serde_json::from_slice::<IgnoredAny>(body) {
                Ok(_) => GatewayError::BodyNotObject,
                Err(e) => GatewayError::InvalidJson(e.to_string()),
            });
        }
        None => return Err(GatewayError::InvalidJson("the body is empty".into())),
    }
    let peek: Peek =
        serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
    let raw = peek.model.ok_or(GatewayError::ModelMissing)?;
    let model = match serde_json::from_str::<Option<String>>(raw.get()) {
        Ok(Some(m)) => checked_model(m)?,
        Ok(None) => return Err(GatewayError::ModelMissing),
        Err(_) => return Err(GatewayError::ModelNotString),
    };
    if let Some(w) = peek.wrong_type {
        return Err(GatewayError::InvalidType {
            param: w.param,
            expected: w.expected,
            got: w.got.name(),
        });
    }
    Ok(RequestInfo {
        model,
        stream: peek.stream,
        include_usage: peek.include_usage,
        tool: peek.tool,
        multimodal: peek.multimodal,
        max_tokens: peek
            .max_completion_tokens
            .or(peek.max_tokens)
            .or(peek.max_output_tokens),
    })
}

/// A count of tokens: a non-negative integer (also written as `100.0`); any other value reads as `None`.
struct Count(Option<u64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CountVisitor).map(Count)
    }
}

struct CountVisitor;

impl<'de> Visitor<'de> for CountVisitor {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(v).ok())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        let whole = v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < u64::MAX as f64;
        Ok(whole.then_some(v as u64))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

mod probe;
mod scan;
#[cfg(test)]
mod tests;
