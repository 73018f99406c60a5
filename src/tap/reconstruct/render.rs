//! The rebuilt message as the record's JSON, fitted into the record's size: texts cut further where needed, each
//! cut one ending in a `…(+N bytes)` marker, so that the JSON stays valid with its usage and finish reasons.

use super::{ChoiceAcc, Reconstruction, Text};
use crate::endpoints::ApiKind;
use crate::escape::cut;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

/// Room a `…(+N bytes)` marker takes in the rendered JSON, at most.
const MARKER_ROOM: usize = 40;

impl Reconstruction {
    /// The record's JSON: the Responses API's `response` object, else a chat or completions body that fits in
    /// the record's size when it can (texts cut further, each marked), so that its usage and finish reasons stay.
    pub fn render(&self, kind: ApiKind) -> String {
        if kind == ApiKind::Responses {
            return self.response.clone().unwrap_or_default();
        }
        let completions = kind == ApiKind::Completions;
        let full = self.render_within(completions, usize::MAX);
        if full.len() <= self.limit {
            return full;
        }
        let texts = self
            .choices
            .iter()
            .map(ChoiceAcc::text_bytes)
            .sum::<usize>();
        let markers = MARKER_ROOM * self.choices.iter().map(ChoiceAcc::texts).sum::<usize>();
        let (mut allowance, mut over) = (texts, full.len() - self.limit);
        // Each pass takes at least the excess off the texts; escapes and markers may ask for one more.
        for _ in 0..4 {
            allowance = allowance.saturating_sub(over + markers);
            let out = self.render_within(completions, allowance);
            if out.len() <= self.limit {
                return out;
            }
            if allowance == 0 {
                break;
            }
            over = out.len() - self.limit;
        }
        // Not even the texts' absence makes it fit (a tiny limit): the writer cuts the JSON text.
        full
    }

    /// The chat or completions body with at most `allowance` bytes of text, given to texts in order.
    fn render_within(&self, completions: bool, allowance: usize) -> String {
        let mut allot = Allot(allowance);
        let choices = (self.choices.iter())
            .map(|c| c.render(completions, &mut allot))
            .collect();
        let out = Out {
            id: self.id.as_deref(),
            model: self.model.as_deref(),
            choices,
            usage: self.usage.as_deref(),
        };
        serde_json::to_string(&out).unwrap_or_default()
    }
}

impl ChoiceAcc {
    /// Bytes of text kept.
    pub(super) fn text_bytes(&self) -> usize {
        let texts = [&self.content, &self.reasoning];
        let own: usize = texts
            .iter()
            .flat_map(|t| t.iter())
            .map(|t| t.kept.len())
            .sum();
        let calls = self.tool_calls.iter();
        own + calls
            .map(|c| c.name.kept.len() + c.arguments.kept.len())
            .sum::<usize>()
    }

    /// How many texts the choice renders.
    fn texts(&self) -> usize {
        2 + 2 * self.tool_calls.len()
    }

    fn render<'a>(&'a self, completions: bool, allot: &mut Allot) -> OutChoice<'a> {
        let text = completions.then(|| match &self.content {
            Some(content) => allot.show(content),
            None => Shown::default(),
        });
        let message = (!completions).then(|| OutMessage {
            role: "assistant",
            content: self.content.as_ref().map(|t| allot.show(t)),
            reasoning_content: self.reasoning.as_ref().map(|t| allot.show(t)),
            tool_calls: (self.tool_calls.iter())
                .map(|c| OutCall {
                    id: c.id.as_deref(),
                    kind: c.kind.as_deref().unwrap_or("function"),
                    function: OutFunction {
                        name: allot.show(&c.name),
                        arguments: allot.show(&c.arguments),
                    },
                })
                .collect(),
        });
        OutChoice {
            index: self.index,
            message,
            text,
            finish_reason: self.finish_reason.as_deref(),
        }
    }
}

/// Text bytes still to give out while rendering.
struct Allot(usize);

impl Allot {
    fn show<'a>(&mut self, text: &'a Text) -> Shown<'a> {
        let shown = cut(&text.kept, self.0);
        self.0 -= shown.len();
        let hidden = text.kept.len() - shown.len();
        Shown {
            text: shown,
            dropped: text.dropped.saturating_add(hidden),
        }
    }
}

/// A text as the record shows it: its first bytes, and a `…(+N bytes)` marker when some were left out.
#[derive(Default)]
struct Shown<'a> {
    text: &'a str,
    dropped: usize,
}

impl Serialize for Shown<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.dropped {
            0 => s.serialize_str(self.text),
            n => s.serialize_str(&format!("{}…(+{n} bytes)", self.text)),
        }
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
    text: Option<Shown<'a>>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct OutMessage<'a> {
    role: &'static str,
    content: Option<Shown<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<Shown<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OutCall<'a>>,
}

#[derive(Serialize)]
struct OutCall<'a> {
    id: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'a str,
    function: OutFunction<'a>,
}

#[derive(Serialize)]
struct OutFunction<'a> {
    name: Shown<'a>,
    arguments: Shown<'a>,
}
