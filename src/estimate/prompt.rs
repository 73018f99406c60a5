//! A request's prompt tokens, counted from its JSON body as each API turns it into the model's input.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::text_tokens;
use crate::endpoints::ApiKind;
use crate::tokens::Tokenizer;

/// Tokens counted for each image part: what OpenAI bills for an image at `detail: low` on GPT-4o-class models.
/// A `high` or `auto` image costs more (per 512-pixel tile), which cannot be known without decoding the image.
pub const IMAGE_TOKENS: i64 = 85;
/// Each message is wrapped in `<|start|>{role}<|message|>...<|end|>`: 3 tokens besides the role's.
const PER_MESSAGE: i64 = 3;
/// A `name` costs one token more than its text.
const PER_NAME: i64 = 1;
/// Every reply is primed with `<|start|>assistant<|message|>`.
const REPLY_PRIMING: i64 = 3;

/// The prompt tokens of a request `body` to an API of `kind`: chat `messages` (and `tools`/`functions`),
/// completions `prompt` (and `suffix`), embeddings `input`, responses `instructions` and `input` (and `tools`).
/// `None` when the body is not a JSON object, or has none of the fields its API counts, or for other APIs.
///
/// Chat follows the OpenAI cookbook's `num_tokens_from_messages` (3 tokens per message, its role and content,
/// a name and 1 more, 3 for priming the reply), which matches what the API reports for plain messages. The
/// rest is an estimate: a tool call counts its name and arguments, function definitions the cookbook's
/// `num_tokens_for_tools` (exact on its example; nested parameters are not counted), other tool definitions
/// their compact JSON text, an image a fixed [`IMAGE_TOKENS`], audio and files nothing. The Responses API's overheads are not
/// published: its instructions and input items are counted as the chat messages they correspond to.
pub fn prompt_tokens(kind: ApiKind, body: &[u8], tok: Tokenizer) -> Option<i64> {
    // Anthropic's bodies are counted once translated to chat (the proxy does that).
    if matches!(
        kind,
        ApiKind::Other | ApiKind::Messages | ApiKind::CountTokens | ApiKind::StoredResponse
    ) {
        return None;
    }
    let body: Body = serde_json::from_slice(body).ok()?;
    let count = Count(tok);
    match kind {
        ApiKind::Chat => count.chat(&body),
        ApiKind::Completions => {
            let prompt = count.prompt(body.prompt.as_ref()?)?;
            Some(prompt + count.text(body.suffix.as_ref()))
        }
        ApiKind::Embeddings => count.prompt(body.input.as_ref()?),
        ApiKind::Responses => count.responses(&body),
        ApiKind::Messages | ApiKind::CountTokens | ApiKind::StoredResponse | ApiKind::Other => None,
    }
}

/// The fields counted, of every API (a field another API would count is parsed and ignored). Tool definitions
/// are re-serialised compactly, so they are read into `serde_json::Value` (small, copied); the rest borrows.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Body<'a> {
    #[serde(borrow)]
    messages: Option<Json<'a>>,
    #[serde(borrow)]
    prompt: Option<Json<'a>>,
    #[serde(borrow)]
    suffix: Option<Json<'a>>,
    #[serde(borrow)]
    input: Option<Json<'a>>,
    #[serde(borrow)]
    instructions: Option<Json<'a>>,
    tools: Option<serde_json::Value>,
    functions: Option<serde_json::Value>,
}

/// Counting with one tokenizer. Every method is lenient: a field of an unexpected shape counts nothing.
#[derive(Clone, Copy)]
struct Count(Tokenizer);

impl Count {
    fn str(self, s: &str) -> i64 {
        text_tokens(s, self.0)
    }

    /// The tokens of a string field; 0 when absent or not a string.
    fn text(self, v: Option<&Json>) -> i64 {
        v.and_then(Json::as_str).map_or(0, |s| self.str(s))
    }

    fn chat(self, body: &Body) -> Option<i64> {
        let messages = body.messages.as_ref()?.items()?;
        if messages.is_empty() {
            return None;
        }
        let mut n = REPLY_PRIMING + self.tools(body);
        for m in messages {
            n += PER_MESSAGE + self.text(m.get("role")) + self.content(m.get("content"));
            n += self.text(m.get("refusal"));
            if let Some(name) = m.get("name").and_then(Json::as_str) {
                n += self.str(name) + PER_NAME;
            }
            for call in m
                .get("tool_calls")
                .and_then(Json::items)
                .unwrap_or_default()
            {
                n += self.call(call.get("function").or_else(|| call.get("custom")));
            }
            n += self.call(m.get("function_call"));
        }
        Some(n)
    }

    /// A tool call's name and its `arguments` (a function's) or `input` (a custom tool's).
    fn call(self, f: Option<&Json>) -> i64 {
        f.map_or(0, |f| {
            self.text(f.get("name")) + self.text(f.get("arguments")) + self.text(f.get("input"))
        })
    }

    /// A message's `content`: a string, or parts (text, refusal, image; audio and files count nothing).
    fn content(self, v: Option<&Json>) -> i64 {
        match v {
            Some(Json::Str(s)) => self.str(s),
            Some(Json::Array { items, .. }) => items.iter().map(|part| self.part(part)).sum(),
            _ => 0,
        }
    }

    fn part(self, part: &Json) -> i64 {
        match part.get("type").and_then(Json::as_str) {
            Some("image_url" | "input_image" | "image") => IMAGE_TOKENS,
            Some("refusal") => self.text(part.get("refusal")),
            // text, input_text, output_text...: the part's text; or the part is a bare string.
            _ => self.text(part.get("text")) + self.text(Some(part)),
        }
    }

    /// `tools` and `functions` by the cookbook's rules for function definitions (see `tools.rs`); a value
    /// that is not a list counts as its compact JSON text.
    fn tools(self, body: &Body) -> i64 {
        [&body.tools, &body.functions]
            .into_iter()
            .flatten()
            .map(|v| match v {
                serde_json::Value::Array(list) => super::tools::tools_tokens(list, self.0),
                serde_json::Value::Object(o) if o.is_empty() => 0,
                serde_json::Value::Object(_) => {
                    serde_json::to_string(v).map_or(0, |json| self.str(&json))
                }
                _ => 0,
            })
            .sum()
    }

    /// A completions `prompt` or embeddings `input`: a string, strings, token ids, or arrays of token ids
    /// (whose length is their count). `None` for any other shape.
    fn prompt(self, v: &Json) -> Option<i64> {
        match v {
            Json::Str(s) => Some(self.str(s)),
            Json::Array { numbers, items } => {
                let nested = items.iter().map(|item| match item {
                    Json::Str(s) => self.str(s),
                    Json::Array { numbers, .. } => count_of(*numbers),
                    _ => 0,
                });
                Some(count_of(*numbers) + nested.sum::<i64>())
            }
            _ => None,
        }
    }

    fn responses(self, body: &Body) -> Option<i64> {
        if body.instructions.is_none() && body.input.is_none() {
            return None;
        }
        let mut n = REPLY_PRIMING + self.tools(body);
        if let Some(instructions) = body.instructions.as_ref().and_then(Json::as_str) {
            n += PER_MESSAGE + self.str("system") + self.str(instructions);
        }
        match &body.input {
            Some(Json::Str(s)) => n += PER_MESSAGE + self.str("user") + self.str(s),
            Some(Json::Array { items, .. }) => n += items.iter().map(|i| self.item(i)).sum::<i64>(),
            _ => {}
        }
        Some(n)
    }

    /// One Responses `input` item: a message (`type` "message" or none), a function or custom tool's call,
    /// or a call's output. Other items (reasoning, references to stored items, built-in tools' calls) count 0.
    fn item(self, item: &Json) -> i64 {
        let kind = item.get("type").and_then(Json::as_str);
        let body = match kind {
            None | Some("message") => {
                self.text(item.get("role")) + self.content(item.get("content"))
            }
            Some("function_call") => self.text(item.get("name")) + self.text(item.get("arguments")),
            Some("custom_tool_call") => self.text(item.get("name")) + self.text(item.get("input")),
            Some("function_call_output" | "custom_tool_call_output") => {
                self.content(item.get("output"))
            }
            Some(_) => return 0,
        };
        PER_MESSAGE + body
    }
}

fn count_of(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A JSON value of the body: strings borrowed where they hold no escape, and arrays keeping only how many
/// numbers they hold (token ids), so a long token array costs no memory per id.
enum Json<'a> {
    /// null, a boolean, or a number outside an array.
    Scalar,
    Str(Cow<'a, str>),
    Array {
        numbers: usize,
        items: Vec<Json<'a>>,
    },
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An array's items other than numbers.
    fn items(&self) -> Option<&[Json<'a>]> {
        match self {
            Json::Array { items, .. } => Some(items),
            _ => None,
        }
    }

    /// An object's field (the first, if repeated).
    fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Json<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor(PhantomData))
    }
}

/// A value read as a number (kept only as a count in arrays) or as any other [`Json`].
enum Item<'a> {
    Number,
    Value(Json<'a>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Item<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ItemVisitor(PhantomData))
    }
}

/// An object's key, borrowed from the body where it holds no escape.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_str(JsonVisitor(PhantomData))? {
            Json::Str(s) => Ok(Key(s)),
            _ => Err(serde::de::Error::custom("a key that is not a string")),
        }
    }
}

struct JsonVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for JsonVisitor<'a> {
    type Value = Json<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json<'a>, E> {
        Ok(Json::Scalar)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Json<'a>, E> {
        Ok(Json::Scalar)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Json<'a>, E> {
        Ok(Json::Scalar)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Json<'a>, E> {
        Ok(Json::Scalar)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Json<'a>, E> {
        Ok(Json::Scalar)
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'a>, E> {
        Ok(Json::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json<'a>, E> {
        Ok(Json::Str(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Json<'a>, E> {
        Ok(Json::Str(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'a>, A::Error> {
        let (mut numbers, mut items) = (0, Vec::new());
        while let Some(item) = seq.next_element::<Item<'a>>()? {
            match item {
                Item::Number => numbers += 1,
                Item::Value(v) => items.push(v),
            }
        }
        Ok(Json::Array { numbers, items })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'a>, A::Error> {
        let mut fields = Vec::new();
        while let Some((Key(k), v)) = map.next_entry::<Key<'a>, Json<'a>>()? {
            fields.push((k, v));
        }
        Ok(Json::Object(fields))
    }
}

struct ItemVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ItemVisitor<'a> {
    type Value = Item<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_i64<E>(self, _: i64) -> Result<Item<'a>, E> {
        Ok(Item::Number)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Item<'a>, E> {
        Ok(Item::Number)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Item<'a>, E> {
        Ok(Item::Number)
    }

    fn visit_unit<E>(self) -> Result<Item<'a>, E> {
        Ok(Item::Value(Json::Scalar))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Item<'a>, E> {
        Ok(Item::Value(Json::Scalar))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Item<'a>, E> {
        Ok(Item::Value(Json::Str(Cow::Borrowed(s))))
    }

    fn visit_str<E>(self, s: &str) -> Result<Item<'a>, E> {
        Ok(Item::Value(Json::Str(Cow::Owned(s.to_owned()))))
    }

    fn visit_string<E>(self, s: String) -> Result<Item<'a>, E> {
        Ok(Item::Value(Json::Str(Cow::Owned(s))))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Item<'a>, A::Error> {
        JsonVisitor(PhantomData).visit_seq(seq).map(Item::Value)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Item<'a>, A::Error> {
        JsonVisitor(PhantomData).visit_map(map).map(Item::Value)
    }
}
