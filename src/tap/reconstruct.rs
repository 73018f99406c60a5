//! Rebuilds a stream's final message from its chunks, for the usage record's Response column.

use super::wire::{as_str, Choice, Envelope, Message};
use crate::endpoints::ApiKind;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// What a stream said so far, merged per choice `index`.
#[derive(Default)]
pub struct Reconstruction {
    id: Option<String>,
    model: Option<String>,
    usage: Option<Box<RawValue>>,
    /// The Responses API's `response` object (the last seen: `response.completed` ends a stream).
    response: Option<Box<RawValue>>,
    choices: Vec<ChoiceAcc>,
}

#[derive(Default)]
struct ChoiceAcc {
    index: u32,
    content: Option<String>,
    reasoning: Option<String>,
    tool_calls: Vec<ToolCallAcc>,
    finish_reason: Option<String>,
}

#[derive(Serialize)]
struct ToolCallAcc {
    #[serde(skip)]
    index: u32,
    id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    function: FunctionAcc,
}

#[derive(Default, Serialize)]
struct FunctionAcc {
    name: String,
    arguments: String,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    index: Option<u32>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
}

impl Reconstruction {
    pub fn observe(&mut self, env: &Envelope) {
        if self.id.is_none() {
            self.id = env.id.and_then(as_str).map(Into::into);
        }
        if self.model.is_none() {
            self.model = env.model.and_then(as_str).map(Into::into);
        }
        if let Some(usage) = env.usage {
            self.usage = Some(usage.to_owned());
        }
        for (position, choice) in env.choices.iter().flatten().enumerate() {
            self.observe_choice(choice.index_or(position), choice);
        }
    }

    pub fn set_response(&mut self, response: &RawValue) {
        self.response = Some(response.to_owned());
    }

    /// Appends to a choice's content (the prefix, spliced into what the caller got).
    pub fn push_content(&mut self, index: u32, text: &str) {
        let acc = self.choice(index);
        acc.content.get_or_insert_with(String::new).push_str(text);
    }

    fn observe_choice(&mut self, index: u32, choice: &Choice) {
        let acc = self.choice(index);
        append(&mut acc.content, choice.text);
        if let Some(delta) = &choice.delta {
            acc.observe_delta(delta);
        }
        if let Some(reason) = choice.finish_reason.and_then(as_str) {
            acc.finish_reason = Some(reason.into());
        }
    }

    fn choice(&mut self, index: u32) -> &mut ChoiceAcc {
        let at = match self.choices.binary_search_by_key(&index, |c| c.index) {
            Ok(at) => at,
            Err(at) => {
                let acc = ChoiceAcc {
                    index,
                    ..ChoiceAcc::default()
                };
                self.choices.insert(at, acc);
                at
            }
        };
        &mut self.choices[at]
    }

    /// The record's JSON: the Responses API's `response` object, else a chat or completions body.
    pub fn render(&self, kind: ApiKind) -> String {
        if kind == ApiKind::Responses {
            return self
                .response
                .as_ref()
                .map(|r| r.get().to_owned())
                .unwrap_or_default();
        }
        let completions = kind == ApiKind::Completions;
        let out = Out {
            id: self.id.as_deref(),
            model: self.model.as_deref(),
            choices: self.choices.iter().map(|c| c.render(completions)).collect(),
            usage: self.usage.as_deref(),
        };
        serde_json::to_string(&out).unwrap_or_default()
    }
}

impl ChoiceAcc {
    fn observe_delta(&mut self, delta: &Message) {
        append(&mut self.content, delta.content);
        append(
            &mut self.reasoning,
            delta.reasoning_content.or(delta.reasoning),
        );
        let calls = delta
            .tool_calls
            .map(|raw| serde_json::from_str::<Vec<ToolCallDelta>>(raw.get()));
        for (position, call) in calls.and_then(Result::ok).iter().flatten().enumerate() {
            self.merge_tool_call(position, call);
        }
    }

    fn merge_tool_call(&mut self, position: usize, call: &ToolCallDelta) {
        let index = call
            .index
            .unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX));
        let at = match self.tool_calls.iter().position(|c| c.index == index) {
            Some(at) => at,
            None => {
                self.tool_calls.push(ToolCallAcc {
                    index,
                    id: None,
                    kind: "function".into(),
                    function: FunctionAcc::default(),
                });
                self.tool_calls.len() - 1
            }
        };
        let acc = &mut self.tool_calls[at];
        if let Some(id) = call.id.and_then(as_str).filter(|s| !s.is_empty()) {
            acc.id = Some(id.into());
        }
        if let Some(kind) = call.kind.and_then(as_str).filter(|s| !s.is_empty()) {
            acc.kind = kind.into();
        }
        let Some(function) = &call.function else {
            return;
        };
        // Some backends repeat the whole name in every delta; OpenAI sends it once.
        if let Some(name) = function
            .name
            .and_then(as_str)
            .filter(|n| *n != acc.function.name)
        {
            acc.function.name.push_str(&name);
        }
        if let Some(arguments) = function.arguments.and_then(as_str) {
            acc.function.arguments.push_str(&arguments);
        }
    }

    fn render(&self, completions: bool) -> OutChoice<'_> {
        let text = completions.then(|| self.content.as_deref().unwrap_or_default());
        let message = (!completions).then(|| OutMessage {
            role: "assistant",
            content: self.content.as_deref(),
            reasoning_content: self.reasoning.as_deref(),
            tool_calls: &self.tool_calls,
        });
        OutChoice {
            index: self.index,
            message,
            text,
            finish_reason: self.finish_reason.as_deref(),
        }
    }
}

/// Appends a string delta to `into` (created on the first one, even if empty).
fn append(into: &mut Option<String>, raw: Option<&RawValue>) {
    if let Some(text) = raw.and_then(as_str) {
        into.get_or_insert_with(String::new).push_str(&text);
    }
}

#[derive(Serialize)]
struct Out<'a> {
    id: Option<&'a str>,
    model: Option<&'a str>,
    choices: Vec<OutChoice<'a>>,
    usage: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct OutChoice<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<OutMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct OutMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "no_calls")]
    tool_calls: &'a [ToolCallAcc],
}

fn no_calls(calls: &&[ToolCallAcc]) -> bool {
    calls.is_empty()
}
