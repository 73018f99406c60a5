//! The searches and the one-pass read against a full parse.

#![allow(clippy::unwrap_used)]
use super::*;
use proptest::prelude::*;

/// What a full parse says: the reference the search must agree with.
fn parsed(text: &str, key: &str) -> Option<String> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).ok()?;
    map.get(key).map(|v| v.to_string())
}

fn found(text: &str, key: &str, from: SearchFrom) -> Option<String> {
    top_level(text, key, from).map(|raw| {
        serde_json::from_str::<serde_json::Value>(raw.get())
            .unwrap()
            .to_string()
    })
}

#[test]
fn agrees_with_a_full_parse() {
    let bodies = [
        r#"{"id":"c","model":"m1","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3}}"#,
        r#"{"usage" : {"total_tokens":1} , "model" :"m2"}"#,
        r#"{"choices":[{"usage":{"x":1},"model":"inner"}],"model":"outer","usage":{"y":2}}"#,
        r#"{"choices":[{"message":{"content":"\"usage\":{\"fake\":1} \"model\":\"no\""}}],"usage":null}"#,
        r#"{"a":"\\","usage":{"z":3},"b":{"usage":{"deeper":4}},"c":"}}]]"}"#,
        r#"{"a":"x\\\"usage\":1","usage":[1,{"q":"}"}]}"#,
        r#"{"model":"m","choices":[]}"#,
        r#"{"nested":{"model":"n"}}"#,
        r#"  {"model":"spaced"}  "#,
        r#"{"object":"response","model":"gpt","output":[{"content":[{"text":"{[\"usage\""}]}],"usage":{"input_tokens":5}}"#,
    ];
    for body in bodies {
        for key in ["model", "usage"] {
            for from in [SearchFrom::Start, SearchFrom::End] {
                assert_eq!(
                    found(body, key, from),
                    parsed(body, key),
                    "{key} {from:?} in {body}"
                );
            }
        }
    }
}

#[test]
fn null_or_absent_never_hides_a_value() {
    let bodies = [
        (
            r#"{"id":"c","choices":[{"delta":{"content":"x"}}],"usage":null}"#,
            true,
        ),
        (r#"{"id":"c","choices":[]}"#, true),
        (r#"{"choices":[],"usage":{"prompt_tokens":1}}"#, false),
        (r#"{"usage" : null , "model":"m"}"#, true),
        (r#"{"choices":[{"usage":{"x":1}}],"usage":null}"#, true),
        (r#"{"usage":null,"choices":[{"usage":{"x":1}}]}"#, false),
        (r#"{"c":"\"usage\":{\"fake\":1}","usage":null}"#, true),
        (r#"{"c":"usage","d":"\"usage\""}"#, true),
        (r#"{"usage":0}"#, false),
        (r#"[{"usage":null}]"#, false),
        (r#"{"usage":{"prompt_tokens":5},"k\"usage":null}"#, false),
        (r#" {"a":"\\","usage":null} "#, true),
        (r#"{"a":{"usage":null}}"#, true),
        ("not json", false),
    ];
    for (body, want) in bodies {
        assert_eq!(null_or_absent(body.as_bytes(), "usage"), want, "{body}");
        if want {
            // Never true where a full parse finds a value.
            let found = parsed(body, "usage");
            assert!(found.is_none_or(|v| v == "null"), "{body}");
        }
    }
}

#[test]
fn members_are_read_like_a_full_parse() {
    let objects = [
        r#"{"a":1,"b":"x\"}","c":{"d":[1,{"e":"]"}]},"f":null , "g" : -2.5e3 ,"h":[]}"#,
        r#" { } "#,
        r#"{"only":true}"#,
    ];
    for text in objects {
        let mut got = Vec::new();
        members(text, |k, v| got.push((k.to_owned(), v.to_owned()))).unwrap();
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).unwrap();
        let want: Vec<(String, String)> = map
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        let got: Vec<(String, String)> = (got.into_iter())
            .map(|(k, v)| {
                (
                    k,
                    serde_json::from_str::<serde_json::Value>(&v)
                        .unwrap()
                        .to_string(),
                )
            })
            .collect();
        assert_eq!(got, want, "{text}");
    }
    for not_object in ["[1]", "null", "\"s\"", "", "{\"a\"}"] {
        assert!(members(not_object, |_, _| {}).is_none(), "{not_object}");
    }
}

#[test]
fn not_an_object_has_no_keys() {
    assert!(top_level(r#"["usage",{"usage":1}]"#, "usage", SearchFrom::End).is_none());
    assert!(top_level("usage", "usage", SearchFrom::End).is_none());
    assert!(top_level("", "model", SearchFrom::Start).is_none());
}

#[test]
fn one_pass_reads_answers() {
    let body = r#"{"choices":[{"message":{"content":"Hello! \"usage\":1"}}],"created":1,"id":"c","model":"fast",
        "usage" : {"prompt_tokens":9} }"#;
    let want = Top {
        model: Some(r#""fast""#),
        usage: Some(r#"{"prompt_tokens":9}"#),
        id: Some(r#""c""#),
    };
    assert_eq!(top(body), Some(want));
    for unsure in [
        r#"{"mod\u0065l":"m"}"#,
        r#"{"model":"m""#,
        "[1]",
        r#"{"a":01}"#,
    ] {
        assert_eq!(top(unsure), None, "{unsure}");
    }
}

/// An answer body: top-level members of the keys the tap reads (given twice at times, or hidden in strings and
/// nested objects), with odd spacing or a byte changed at times.
fn answer() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        12 => proptest::sample::select(vec!["model", "usage", "id", "choices", "object"]),
        1 => proptest::sample::select(vec![r#"\"usage\""#, r#"mo\u0064el"#, r#"usage\"#]),
    ];
    let valid = proptest::sample::select(vec![
        "null",
        "1",
        "-2.5e3",
        "\"m\"",
        "\"a\\\"usage\\\":{\"",
        "\"}]\\\\\"",
        "\"\\u00e9\"",
        "{\"prompt_tokens\":9}",
    ]);
    let leaf = prop_oneof![12 => valid, 1 => proptest::sample::select(vec!["tru", "01"])]
        .prop_map(str::to_owned);
    let value = leaf.prop_recursive(3, 16, 4, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec((key_of_nested(), inner), 0..4).prop_map(|m| {
                let members: Vec<String> = m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    });
    let space = prop_oneof![
        12 => proptest::sample::select(vec!["", " ", "\n\t"]),
        1 => Just("\u{a0}"),
    ];
    let edit = proptest::option::weighted(0.05, (any::<prop::sample::Index>(), any::<u8>()));
    (proptest::collection::vec((key, value), 0..7), space, edit).prop_map(
        |(members, space, edit)| {
            let members: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("\"{k}\"{space}:{space}{v}"))
                .collect();
            let mut text = format!("{space}{{{}}}{space}", members.join(","));
            if let Some((at, byte)) = edit {
                let mut bytes = text.into_bytes();
                let at = at.index(bytes.len());
                bytes[at] = byte;
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            text
        },
    )
}

fn key_of_nested() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(vec!["model", "usage", "id", "x"])
}

proptest! {
    #![proptest_config(crate::fuzz_config())]

    #[test]
    fn one_pass_finds_what_the_searches_find(text in answer()) {
        if let Some(t) = top(&text) {
            let search = |key, from| top_level(&text, key, from).map(RawValue::get);
            prop_assert_eq!(t.model, search("model", SearchFrom::Start), "{}", text);
            prop_assert_eq!(t.usage, search("usage", SearchFrom::End), "{}", text);
            prop_assert_eq!(t.id, search("id", SearchFrom::Start), "{}", text);
        } else {
            // Unsure only about what serde_json refuses or an escaped key.
            let serde = serde_json::from_str::<serde::de::IgnoredAny>(&text);
            prop_assert!(serde.is_err() || text.contains('\\') || !text.trim().starts_with('{'), "{}", text);
        }
    }
}

#[test]
fn the_property_test_reaches_the_one_pass_read() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = answer();
    let (bodies, mut read, mut with_usage) = (2000, 0, 0);
    for _ in 0..bodies {
        let text = strategy.new_tree(&mut runner).unwrap().current();
        let t = top(&text);
        read += usize::from(t.is_some());
        with_usage += usize::from(t.is_some_and(|t| t.usage.is_some()));
    }
    assert!(
        read * 4 > bodies,
        "the one-pass read answered {read} of {bodies}"
    );
    assert!(
        with_usage * 8 > bodies,
        "{with_usage} of {bodies} had a usage"
    );
}
