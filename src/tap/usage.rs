//! Token counts from a backend's `usage` object, in the chat/completions/embeddings or the Responses API shape.

use super::keys;
use crate::usage::TokenUsage;

/// Both shapes at once: `prompt_tokens`/`completion_tokens` or `input_tokens`/`output_tokens`. Counts stay
/// raw text so that one odd value (a float, a string) loses only itself.
#[derive(Default)]
struct Wire<'a> {
    prompt_tokens: Option<&'a str>,
    completion_tokens: Option<&'a str>,
    input_tokens: Option<&'a str>,
    output_tokens: Option<&'a str>,
    total_tokens: Option<&'a str>,
    prompt_tokens_details: Option<&'a str>,
    completion_tokens_details: Option<&'a str>,
    input_tokens_details: Option<&'a str>,
    output_tokens_details: Option<&'a str>,
}

#[derive(Default)]
struct Details<'a> {
    cached_tokens: Option<&'a str>,
    reasoning_tokens: Option<&'a str>,
}

/// The counts in a `usage` value (its checked JSON text); None when it is not an object or reports no count at all. Read member by
/// member from the (valid) raw JSON, without building it; like a typed parse, a field given twice spoils it.
pub fn parse(raw: &str) -> Option<TokenUsage> {
    let mut w = Wire::default();
    let mut twice = false;
    keys::members(raw, |key, value| {
        let slot = match key {
            "prompt_tokens" => &mut w.prompt_tokens,
            "completion_tokens" => &mut w.completion_tokens,
            "input_tokens" => &mut w.input_tokens,
            "output_tokens" => &mut w.output_tokens,
            "total_tokens" => &mut w.total_tokens,
            "prompt_tokens_details" => &mut w.prompt_tokens_details,
            "completion_tokens_details" => &mut w.completion_tokens_details,
            "input_tokens_details" => &mut w.input_tokens_details,
            "output_tokens_details" => &mut w.output_tokens_details,
            _ => return,
        };
        twice |= slot.replace(value).is_some();
    })?;
    if twice {
        return None;
    }
    // As a typed parse reads them: a null is no value, so the other shape's details are taken instead.
    let prompt_details = details(given(w.prompt_tokens_details).or(w.input_tokens_details));
    let completion_details =
        details(given(w.completion_tokens_details).or(w.output_tokens_details));
    let usage = TokenUsage {
        prompt: count(w.prompt_tokens).or_else(|| count(w.input_tokens)),
        completion: count(w.completion_tokens).or_else(|| count(w.output_tokens)),
        total: count(w.total_tokens),
        cached: prompt_details.and_then(|d| count(d.cached_tokens)),
        reasoning: completion_details.and_then(|d| count(d.reasoning_tokens)),
        cache_write: None,
    };
    (usage != TokenUsage::default()).then_some(usage)
}

/// A member's value unless it is `null` (a typed parse reads a null as absent).
fn given(value: Option<&str>) -> Option<&str> {
    value.filter(|v| v.trim() != "null")
}

fn details(raw: Option<&str>) -> Option<Details<'_>> {
    let mut d = Details::default();
    let mut twice = false;
    keys::members(raw?, |key, value| {
        let slot = match key {
            "cached_tokens" => &mut d.cached_tokens,
            "reasoning_tokens" => &mut d.reasoning_tokens,
            _ => return,
        };
        twice |= slot.replace(value).is_some();
    })?;
    (!twice).then_some(d)
}

/// A count: an integer, or a float with no fraction (some backends send `12.0`).
fn count(raw: Option<&str>) -> Option<i64> {
    let text = raw?;
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
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    fn usage(text: &str) -> Option<TokenUsage> {
        parse(serde_json::from_str::<Box<RawValue>>(text).unwrap().get())
    }

    /// The typed parse this reader replaced: the reference it must agree with.
    mod reference {
        use super::super::count;
        use crate::usage::TokenUsage;
        use serde::Deserialize;
        use serde_json::value::RawValue;

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

        /// The one difference kept on purpose: serde also reads a struct from an array, by position
        /// (`"prompt_tokens_details": [5]` as 5 cached tokens); the reader takes only objects.
        fn details(raw: Option<&RawValue>) -> Option<Details<'_>> {
            let raw = raw?.get();
            raw.starts_with('{')
                .then(|| serde_json::from_str(raw).ok())?
        }

        fn n(raw: Option<&RawValue>) -> Option<i64> {
            count(Some(raw?.get()))
        }

        pub fn parse(raw: &RawValue) -> Option<TokenUsage> {
            let w: Wire = serde_json::from_str(raw.get()).ok()?;
            let pd = details(w.prompt_tokens_details.or(w.input_tokens_details));
            let cd = details(w.completion_tokens_details.or(w.output_tokens_details));
            let usage = TokenUsage {
                prompt: n(w.prompt_tokens).or_else(|| n(w.input_tokens)),
                completion: n(w.completion_tokens).or_else(|| n(w.output_tokens)),
                total: n(w.total_tokens),
                cached: pd.and_then(|d| n(d.cached_tokens)),
                reasoning: cd.and_then(|d| n(d.reasoning_tokens)),
                cache_write: None,
            };
            (usage != TokenUsage::default()).then_some(usage)
        }
    }

    fn member() -> impl Strategy<Value = String> {
        let key = proptest::sample::select(vec![
            "prompt_tokens",
            "completion_tokens",
            "input_tokens",
            "output_tokens",
            "total_tokens",
            "prompt_tokens_details",
            "completion_tokens_details",
            "input_tokens_details",
            "output_tokens_details",
            "cached_tokens",
            "reasoning_tokens",
            "other",
            "prompt_tokens ",
        ]);
        let leaf = prop_oneof![
            Just("null".to_owned()),
            any::<i32>().prop_map(|n| n.to_string()),
            Just("12.0".to_owned()),
            Just("1.5".to_owned()),
            Just("\"7\"".to_owned()),
            Just("[1,{\"a\":\"}\"}]".to_owned()),
        ];
        let value = leaf.prop_recursive(2, 8, 4, |inner| {
            proptest::collection::vec(
                (
                    proptest::sample::select(vec!["cached_tokens", "reasoning_tokens", "x"]),
                    inner,
                ),
                0..4,
            )
            .prop_map(|m| {
                format!(
                    "{{{}}}",
                    m.iter()
                        .map(|(k, v)| format!("\"{k}\" : {v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                )
            })
        });
        (key, value).prop_map(|(k, v)| format!("\"{k}\":{v}"))
    }

    proptest! {
        #![proptest_config(crate::fuzz_config())]

        #[test]
        fn agrees_with_the_typed_parse(members in proptest::collection::vec(member(), 0..8)) {
            let text = format!("{{ {} }}", members.join(" , "));
            let raw = serde_json::from_str::<Box<RawValue>>(&text).unwrap();
            prop_assert_eq!(parse(raw.get()), reference::parse(&raw), "{}", text);
        }
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
        // A null chat-shaped details object leaves the Responses-shaped one to be read (found by the fuzz test).
        let u = usage(
            r#"{"completion_tokens_details":null,"output_tokens_details":{"reasoning_tokens":0}}"#,
        );
        assert_eq!(u.and_then(|u| u.reasoning), Some(0));
        let u =
            usage(r#"{"prompt_tokens_details":null,"input_tokens_details":{"cached_tokens":3}}"#);
        assert_eq!(u.and_then(|u| u.cached), Some(3));
        // As a typed parse: a count given twice spoils the whole usage, a null count is no count.
        assert_eq!(usage(r#"{"prompt_tokens":1,"prompt_tokens":2}"#), None);
        let u = usage(r#"{"prompt_tokens":null,"input_tokens":4,"prompt_tokens_details":null}"#)
            .unwrap();
        assert_eq!((u.prompt, u.cached), (Some(4), None));
    }
}
