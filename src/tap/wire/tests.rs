//! The views read by the skim and by serde_json: the same fields, the same strings.

use super::*;

#[test]
fn reads_a_chunk_shallowly() {
    let text = r#"{"id":"c1","model":"m","choices":[{"index":1,"delta":{"content":"a\"b","x":[1]},
        "logprobs":null,"finish_reason":null}],"usage":null,"extra":{"deep":[{}]}}"#;
    let env: Envelope = serde_json::from_str(text).unwrap();
    assert_eq!(Envelope::read(text).as_ref(), Some(&env));
    let choices = env.choices.as_ref().unwrap();
    assert_eq!(choices[0].index_or(0), 1);
    let content = choices[0].delta.as_ref().unwrap().content.unwrap();
    assert_eq!(as_str(content).unwrap(), "a\"b");
    assert!(env.usage.is_none() && choices[0].finish_reason.is_none());
    assert!(env.has_token() && !env.usage_only());
}

#[test]
fn strings_are_read_like_serde_reads_them() {
    for text in [
        r#""plain""#,
        r#""""#,
        r#""caf\u00e9 \"q\" \\ \n""#,
        r#""日本""#,
    ] {
        let raw: &RawValue = serde_json::from_str(text).unwrap();
        let expected: String = serde_json::from_str(text).unwrap();
        assert_eq!(as_str(raw.into()).unwrap(), expected, "{text}");
    }
    for text in ["null", "1", "[\"a\"]", "{}"] {
        let raw: &RawValue = serde_json::from_str(text).unwrap();
        assert!(as_str(raw.into()).is_none(), "{text}");
    }
}

#[test]
fn empty_values_are_not_tokens() {
    let text = r#"{"choices":[{"delta":{"role":"assistant","content":"","tool_calls":[]}}]}"#;
    let env: Envelope = serde_json::from_str(text).unwrap();
    assert!(!env.has_token());
    let env: Envelope = serde_json::from_str(r#"{"choices":[],"usage":{}}"#).unwrap();
    assert!(env.usage_only());
}

/// What serde_json reads: the reference the skim must agree with.
fn serde(text: &str) -> Option<Envelope<'_>> {
    serde_json::from_str(text).ok()
}

#[test]
fn the_skim_reads_what_serde_reads() {
    let events = [
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"c","choices":[{"index":0,"delta":{"content":"caf\u00e9 \"q\" \ud83d\ude00"},"finish_reason":null}]}"#,
        r#"{"id":"c","model":"m","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,"prompt_tokens_details":{"cached_tokens":0}}}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]}}]}"#,
        r#"{"choices":[{"text":"x","index":2,"finish_reason":"stop","logprobs":{"tokens":["x"]}}],"model":"m"}"#,
        r#"{"type":"response.completed","sequence_number":9,"response":{"id":"resp_1","model":"m","usage":{"input_tokens":1}}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
        r#" { "choices" : null , "usage" : null , "model" : null } "#,
        r#"{"choices":[{"delta":null,"message":{"content":"m","reasoning":"r","function_call":{"name":"f"}}}]}"#,
        r#"{}"#,
    ];
    for text in events {
        let skim = Envelope::read(text);
        assert!(skim.is_some(), "{text}");
        assert_eq!(skim, serde(text), "{text}");
    }
}

#[test]
fn the_skim_leaves_to_serde_what_it_is_unsure_of() {
    let unsure = [
        r#"{"model":"a","model":"b"}"#,
        r#"{"usage":null,"usage":{"prompt_tokens":1}}"#,
        r#"{"choices":[],"choices":[]}"#,
        r#"{"choices":[{"index":0,"index":1}]}"#,
        r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
        r#"{"mod\u0065l":"m"}"#,
        r#"{"choices":[[0,{"content":"positional"}]]}"#,
        r#"{"choices":[{"index":-1}]}"#,
        r#"{"choices":[{"index":1.0}]}"#,
        r#"{"choices":[{"index":4294967296}]}"#,
        r#"{"choices":5}"#,
        r#"{"choices":[{"delta":"x"}]}"#,
        r#"{"model":"m"} trailing"#,
        r#"{"model":"m",}"#,
        r#"{"model":"ctl	tab"}"#,
        r#"[1]"#,
    ];
    for text in unsure {
        assert_eq!(Envelope::read(text), None, "{text}");
        // Where serde_json reads it, the caller still gets its view.
        assert_eq!(Envelope::parse(text), serde(text), "{text}");
    }
    assert!(serde(r#"{"mod\u0065l":"m"}"#).is_some_and(|e| e.model.is_some()));
}

/// A member of an event: a known key (or an odd one) with a value of any shape, valid or not.
fn member() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let key = proptest::sample::select(vec![
        "type",
        "id",
        "model",
        "usage",
        "response",
        "delta",
        "content",
        "choices",
        "index",
        "text",
        "finish_reason",
        "message",
        "reasoning",
        "tool_calls",
        "x",
        "mod\\u0065l",
    ]);
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("\"\"".to_owned()),
        Just("\"a\\\"b\\u00e9\"".to_owned()),
        Just("\"\\ud83d\"".to_owned()),
        proptest::sample::select(vec!["0", "7", "-1", "1.5", "4294967296", "1e2", "01"])
            .prop_map(String::from),
        Just("{}".to_owned()),
        Just("[]".to_owned()),
        Just("tru".to_owned()),
        Just("\"ctl\u{1}\"".to_owned()),
    ];
    let value = leaf.prop_recursive(3, 24, 4, move |inner| {
        let key = proptest::sample::select(vec![
            "index",
            "delta",
            "content",
            "text",
            "tool_calls",
            "finish_reason",
            "message",
            "y",
        ]);
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec((key, inner), 0..4).prop_map(|m| {
                let members: Vec<String> = m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    });
    (key, value).prop_map(|(k, v)| format!("\"{k}\" : {v}"))
}

proptest::proptest! {
    #![proptest_config(crate::fuzz_config())]

    #[test]
    fn the_skim_never_disagrees_with_serde(
        members in proptest::collection::vec(member(), 0..7),
        tail in proptest::sample::select(vec!["", " ", "\n", "x", ","]),
    ) {
        let text = format!("{{{}}}{tail}", members.join(","));
        let reference = serde(&text);
        if let Some(skim) = Envelope::read(&text) {
            proptest::prop_assert_eq!(Some(skim), reference, "{}", text);
        }
        proptest::prop_assert_eq!(Envelope::parse(&text), serde(&text), "{}", text);
    }
}
