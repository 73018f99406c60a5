//! The chat completions request the translators write, and the stream chunk they read: serde structs borrowing
//! from the bytes they come from.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;

#[derive(Serialize, Default)]
pub struct Request<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a RawValue>,
    pub messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<Cow<'a, str>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

impl<'a> Request<'a> {
    /// The cap under the name the backend takes: `max_tokens` (older servers) or `max_completion_tokens`.
    pub fn set_max(&mut self, max: Option<&'a RawValue>, legacy: bool) {
        let max = max.filter(|m| m.get() != "null");
        if legacy {
            self.max_tokens = max;
        } else {
            self.max_completion_tokens = max;
        }
    }

    /// A stream, asking for the usage chunk (the translated stream's end carries the usage).
    pub fn set_stream(&mut self, stream: bool) {
        if stream {
            self.stream = Some(true);
            self.stream_options = Some(StreamOptions {
                include_usage: true,
            });
        }
    }
}

#[derive(Serialize)]
pub struct StreamOptions {
    pub include_usage: bool,
}

#[derive(Serialize)]
pub struct Message<'a> {
    pub role: &'static str,
    pub content: Content<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<Cow<'a, str>>,
}

impl<'a> Message<'a> {
    pub fn new(role: &'static str, content: Content<'a>) -> Self {
        Message {
            role,
            content,
            tool_calls: None,
            tool_call_id: None,
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum Content<'a> {
    Null,
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part<'a> {
    Text { text: Cow<'a, str> },
    ImageUrl { image_url: ImageUrl<'a> },
}

#[derive(Serialize)]
pub struct ImageUrl<'a> {
    pub url: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
pub struct ToolCall<'a> {
    pub id: Cow<'a, str>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: Call<'a>,
}

#[derive(Serialize)]
pub struct Call<'a> {
    pub name: Cow<'a, str>,
    /// The arguments' JSON text, as a string.
    pub arguments: Cow<'a, str>,
}

#[derive(Serialize)]
pub struct Tool<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: Function<'a>,
}

#[derive(Serialize)]
pub struct Function<'a> {
    pub name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum ToolChoice<'a> {
    Mode(Cow<'a, str>),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        function: Named<'a>,
    },
}

#[derive(Serialize)]
pub struct Named<'a> {
    pub name: Cow<'a, str>,
}

#[derive(Serialize)]
pub struct ResponseFormat<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<JsonSchema<'a>>,
}

#[derive(Serialize)]
pub struct JsonSchema<'a> {
    pub name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// One chunk of a chat completions stream, as the stream translators read it (borrowed, shallow).
#[derive(Deserialize)]
pub struct Chunk<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub choices: Option<Vec<ChunkChoice<'a>>>,
    #[serde(default)]
    pub usage: Option<Value>,
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Deserialize)]
pub struct ChunkChoice<'a> {
    #[serde(default)]
    pub index: u64,
    #[serde(borrow, default)]
    pub delta: Option<ChunkDelta<'a>>,
    #[serde(borrow, default)]
    pub finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub struct ChunkDelta<'a> {
    #[serde(borrow, default)]
    pub content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub reasoning: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub tool_calls: Option<Vec<ChunkToolCall<'a>>>,
}

#[derive(Deserialize)]
pub struct ChunkToolCall<'a> {
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub function: Option<ChunkFunction<'a>>,
}

#[derive(Deserialize)]
pub struct ChunkFunction<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub arguments: Option<Cow<'a, str>>,
}
