//! Token counts from a backend's `usage` object, in the chat/completions/embeddings or the Responses API shape.

use crate::usage::TokenUsage;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Both shapes at once: `prompt_tokens`/`completion_tokens` or `input_tokens`/`output_tokens`. Counts stay
/// raw so that one odd value (a float, a string) loses only itself.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    prompt_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    completion_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    input_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    output_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    total_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    prompt_tokens_details: Option<&'a RawValue>,
    #[serde(borrow)]
    completion_tokens_details: Option<&'a RawValue>,
    #[serde(borrow)]
    input_tokens_details: Option<&'a RawValue>,
    #[serde(borrow)]
    output_tokens_details: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Details<'a> {
    #[serde(borrow)]
    cached_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    reasoning_tokens: Option<&'a RawValue>,
}

/// The counts in a `usage` value; None when it is not an object or reports no count at all.
pub fn parse(raw: &RawValue) -> Option<TokenUsage> {
    let wire: Wire = serde_json::from_str(raw.get()).ok()?;
    let prompt_details = details(wire.prompt_tokens_details.or(wire.input_tokens_details));
    let completion_details = details(
        wire.completion_tokens_details
            .or(wire.output_tokens_details),
    );
    let usage = TokenUsage {
        prompt: count(wire.prompt_tokens).or_else(|| count(wire.input_tokens)),
        completion: count(wire.completion_tokens).or_else(|| count(wire.output_tokens)),
        total: count(wire.total_tokens),
        cached: prompt_details.and_then(|d| count(d.cached_tokens)),
        reasoning: completion_details.and_then(|d| count(d.reasoning_tokens)),
        cache_write: None,
    };
    (usage != TokenUsage::default()).then_some(usage)
}

fn details(raw: Option<&RawValue>) -> Option<Details<'_>> {
    serde_json::from_str(raw?.get()).ok()
}

/// A count: an integer, or a float with no fraction (some backends send `12.0`).
fn count(raw: Option<&RawValue>) -> Option<i64> {
    let text = raw?.get();
    if let Ok(n) = text.parse::<i64>() {
        return Some(n);
    }
    let f = text.parse::<f64>().ok()?;
    let whole = f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15;
    whole.then_some(f as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(text: &str) -> Option<TokenUsage> {
        parse(&serde_json::from_str::<Box<RawValue>>(text).unwrap())
    }

    #[test]
    fn chat_shape_with_details() {
        let u = usage(
            r#"{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30,
            "prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":7}}"#,
        );
        let want = TokenUsage {
            prompt: Some(10),
            completion: Some(20),
            total: Some(30),
            cached: Some(4),
            reasoning: Some(7),
            cache_write: None,
        };
        assert_eq!(u, Some(want));
    }

    #[test]
    fn responses_shape() {
        let u = usage(
            r#"{"input_tokens":5,"input_tokens_details":{"cached_tokens":0},"output_tokens":8,
            "output_tokens_details":{"reasoning_tokens":2},"total_tokens":13}"#,
        )
        .unwrap();
        assert_eq!(
            (u.prompt, u.completion, u.total),
            (Some(5), Some(8), Some(13))
        );
        assert_eq!((u.cached, u.reasoning), (Some(0), Some(2)));
    }

    #[test]
    fn missing_and_odd_fields_stay_none() {
        let u = usage(r#"{"prompt_tokens":3,"total_tokens":3.0,"completion_tokens":"x","prompt_tokens_details":null}"#)
            .unwrap();
        assert_eq!((u.prompt, u.total), (Some(3), Some(3)));
        assert_eq!((u.completion, u.cached, u.reasoning), (None, None, None));
        assert_eq!(usage("{}"), None);
        assert_eq!(usage("[1]"), None);
        assert_eq!(usage(r#"{"prompt_tokens":1.5}"#), None);
    }
}
