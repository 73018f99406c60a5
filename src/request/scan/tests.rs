//! The scan against serde: where it answers, the answer is serde's; and it does answer the common bodies.
//!
//! The property tests run over request-shaped JSON, valid or not.

#![allow(clippy::unwrap_used)]
use super::super::{inspect, parse};
use super::*;
use proptest::prelude::*;

#[test]
fn answers_common_bodies() {
    let bench =
        r#"{"model":"fast","messages":[{"role":"user","content":"Hello! Say something short."}]}"#;
    let s = scan(bench.as_bytes()).unwrap();
    assert_eq!(s.model, "fast");
    assert!(!s.stream && !s.tool && !s.include_usage);
    let body = r#" {"model" : "m", "stream": true, "stream_options": {"include_usage": true},
        "tools": [{"type": "function"}], "max_tokens": 100, "temperature": 0.7e0,
        "messages": [{"role": "system", "content": "a\nb \"q\""}, {"role": "user", "content": null}]} "#;
    let s = scan(body.as_bytes()).unwrap();
    assert_eq!(
        (s.model, s.stream, s.include_usage, s.tool, s.max_tokens),
        ("m", true, true, true, Some(100))
    );
    assert_eq!(scan(br#"{"model":"m","input":"hi"}"#).unwrap().model, "m");
}

#[test]
fn leaves_what_it_is_not_sure_about_to_serde() {
    for body in [
        r#"{"model":"a\u00e9"}"#,
        r#"{"mod\u0065l":"m"}"#,
        r#"{"model":"m","other":{"x":"\u00e9"}}"#,
        r#"{"model":"m","model":"n"}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}"#,
        r#"{"model":"m","max_tokens":2.0}"#,
        r#"{"model":"m","max_tokens":-1}"#,
        r#"{"model":"m","stream":1}"#,
        r#"{"model":"m","stream_options":[]}"#,
        r#"{"model":null}"#,
        r#"{"model":3}"#,
        r#"{"messages":[]}"#,
        r#"{}"#,
        r#"{"model":"m"} x"#,
        r#"{"model":"m","n":01}"#,
        "\u{c}{\"model\":\"m\"}",
        "{\"model\":\"m\u{1}\"}",
    ] {
        assert_eq!(scan(body.as_bytes()), None, "{body}");
    }
    let deep = format!(
        r#"{{"model":"m","x":{}1{}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    assert_eq!(scan(deep.as_bytes()), None);
}

/// A JSON value of the shapes and oddities requests have (or break with); mostly valid.
fn value() -> impl Strategy<Value = String> {
    let valid = proptest::sample::select(vec![
        "true",
        "false",
        "null",
        "0",
        "7",
        "-3",
        "1.5",
        "2.0",
        "123456789012345678",
        "\"a\"",
        "\"\\n\\t\\\"\"",
        "\"é\"",
        "\"text\"",
        "\"image_url\"",
        "\"input_text\"",
    ]);
    let odd = proptest::sample::select(vec![
        "tru",
        "-0",
        "01",
        "1e400",
        "1.",
        "-",
        "12345678901234567890",
        "\"\\u00e9\"",
        "\"\\ud800\"",
        "\"\\x\"",
        "\"\u{1}\"",
        "",
    ]);
    let scalar = prop_oneof![8 => valid, 1 => odd].prop_map(str::to_owned);
    scalar.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec((key(), inner), 0..4).prop_map(|m| object(&m)),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    let common = proptest::sample::select(vec![
        "model",
        "stream",
        "stream_options",
        "include_usage",
        "tools",
        "functions",
        "messages",
        "input",
        "content",
        "type",
        "role",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "other",
        "",
    ]);
    prop_oneof![20 => common, 1 => Just("mo\\u0064el")].prop_map(str::to_owned)
}

fn object(members: &[(String, String)]) -> String {
    let inner: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// A request body: usually a model and some top-level members, with odd spacing or a byte changed at times.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let model = prop_oneof![
        8 => Just("\"m\""),
        1 => proptest::sample::select(vec!["\"gpt-4o\"", "null", "3", "\"a\\u00e9\""]),
    ];
    let members = proptest::collection::vec((key(), value()), 0..6);
    let space = prop_oneof![
        8 => proptest::sample::select(vec!["", " ", "\n\t"]),
        1 => proptest::sample::select(vec!["\u{c}", " x"]),
    ];
    let edit = prop_oneof![
        4 => Just(None),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(Some),
    ];
    (proptest::option::weighted(0.9, model), members, space, edit).prop_map(
        |(model, mut members, space, edit)| {
            if let Some(model) = model {
                members.insert(0, ("model".into(), model.to_owned()));
            }
            let mut bytes = format!("{space}{}{space}", object(&members)).into_bytes();
            if let Some((at, byte)) = edit {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            bytes
        },
    )
}

proptest! {
    #![proptest_config(crate::fuzz_config())]

    #[test]
    fn the_scan_says_what_serde_says(body in body()) {
        let scanned = format!("{:?}", inspect(&body));
        let parsed = format!("{:?}", parse(&body));
        prop_assert_eq!(scanned, parsed, "{}", String::from_utf8_lossy(&body));
    }
}

#[test]
fn the_property_test_reaches_the_scans_answers() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = body();
    let bodies = 2000;
    let (mut answered, mut differ) = (0, 0);
    for _ in 0..bodies {
        let body = strategy.new_tree(&mut runner).unwrap().current();
        answered += usize::from(scan(&body).is_some());
        differ += usize::from(format!("{:?}", inspect(&body)) != format!("{:?}", parse(&body)));
    }
    assert_eq!(differ, 0);
    assert!(
        answered * 10 > bodies,
        "the scan answered {answered} of {bodies}"
    );
}
