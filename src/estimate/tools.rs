//! Tool definitions' prompt tokens by the OpenAI cookbook's `num_tokens_for_tools` (exact on its examples).

use serde_json::Value;

use super::text_tokens;
use crate::tokens::Tokenizer;

/// The cookbook's constants: each function's start (10 for cl100k_base models, 7 for o200k_base ones), the
/// properties' start, each property, an enum's start (it saves 3) and each enum item, and the list's end.
const PROP_INIT: i64 = 3;
const PROP_KEY: i64 = 3;
const ENUM_INIT: i64 = -3;
const ENUM_ITEM: i64 = 3;
const FUNC_END: i64 = 12;

fn func_init(tok: Tokenizer) -> i64 {
    match tok {
        Tokenizer::O200kBase => 7,
        Tokenizer::Cl100kBase => 10,
    }
}

/// The tokens of a list of tool definitions: chat's `{"type":"function","function":{...}}`, the Responses
/// API's flat `{"type":"function","name":...}` or a legacy `functions` entry. A definition that is not a
/// function with a name counts as its compact JSON text (built-in and custom tools: an estimate).
pub(super) fn tools_tokens(tools: &[Value], tok: Tokenizer) -> i64 {
    if tools.is_empty() {
        return 0;
    }
    let count = |s: &str| text_tokens(s, tok);
    let mut n = FUNC_END;
    for tool in tools {
        let function = tool.get("function").unwrap_or(tool);
        let Some(name) = function.get("name").and_then(Value::as_str) else {
            n += serde_json::to_string(tool).map_or(0, |json| count(&json));
            continue;
        };
        n += func_init(tok);
        let description = trim_period(str_of(function.get("description")));
        n += count(&format!("{name}:{description}"));
        let properties = function
            .get("parameters")
            .and_then(|p| p.get("properties"))
            .and_then(Value::as_object);
        let Some(properties) = properties.filter(|p| !p.is_empty()) else {
            continue;
        };
        n += PROP_INIT;
        for (key, property) in properties {
            n += PROP_KEY;
            if let Some(items) = property.get("enum").and_then(Value::as_array) {
                n += ENUM_INIT;
                for item in items {
                    n += ENUM_ITEM;
                    n += match item {
                        Value::String(s) => count(s),
                        other => count(&other.to_string()),
                    };
                }
            }
            let kind = str_of(property.get("type"));
            let description = trim_period(str_of(property.get("description")));
            n += count(&format!("{key}:{kind}:{description}"));
        }
    }
    n
}

fn str_of(v: Option<&Value>) -> &str {
    v.and_then(Value::as_str).unwrap_or("")
}

fn trim_period(s: &str) -> &str {
    s.strip_suffix('.').unwrap_or(s)
}
