//! Unit tests of the request parse: errors, flags, and leniency about odd shapes.

use super::*;

fn info(body: &str) -> RequestInfo {
    inspect(body.as_bytes()).unwrap()
}

#[test]
fn reads_model_and_stream() {
    let r = info(r#"{"messages":[{"role":"user","content":"x"}],"model":"gpt-4o","stream":true}"#);
    assert_eq!(
        r,
        RequestInfo {
            model: "gpt-4o".into(),
            stream: true,
            include_usage: false,
            tool: false,
            multimodal: false,
            max_tokens: None,
        }
    );
    let r = info(r#" {"model":"a\u00e9"} "#);
    assert_eq!(r.model, "a\u{e9}");
    assert!(!r.stream);
    assert!(!info(r#"{"model":"m","stream":null}"#).stream);
    // Repeated keys other than `model` are no error; the last `stream` counts.
    let twice = r#"{"stream":true,"model":"m","stream":false,"messages":[],"messages":3}"#;
    assert!(!info(twice).stream);
    assert!(info(r#"{"stream":false,"model":"m","stream":true}"#).stream);
}

#[test]
fn reads_the_output_cap() {
    let cap = |body: &str| info(body).max_tokens;
    assert_eq!(cap(r#"{"model":"m","max_tokens":100}"#), Some(100));
    assert_eq!(
        cap(r#"{"model":"m","max_tokens":100,"max_completion_tokens":50}"#),
        Some(50)
    );
    assert_eq!(
        cap(r#"{"max_completion_tokens":7,"model":"m","max_tokens":100}"#),
        Some(7)
    );
    assert_eq!(cap(r#"{"model":"m","max_output_tokens":3000}"#), Some(3000));
    assert_eq!(cap(r#"{"model":"m","max_tokens":2.0}"#), Some(2));
    for odd in [
        "-1",
        "2.5",
        "\"9\"",
        "null",
        "true",
        "[1]",
        "{\"a\":1}",
        "1e400",
    ] {
        let body = format!(r#"{{"model":"m","max_tokens":{odd}}}"#);
        assert_eq!(
            inspect(body.as_bytes()).ok().and_then(|i| i.max_tokens),
            None,
            "{odd}"
        );
    }
}

#[test]
fn rejects_bad_shapes() {
    assert_eq!(inspect(b"[1,2]"), Err(GatewayError::BodyNotObject));
    assert_eq!(inspect(b"\"x\""), Err(GatewayError::BodyNotObject));
    assert!(matches!(
        inspect(b"{nope"),
        Err(GatewayError::InvalidJson(_))
    ));
    assert!(matches!(inspect(b""), Err(GatewayError::InvalidJson(_))));
    assert!(matches!(
        inspect(b"nope"),
        Err(GatewayError::InvalidJson(_))
    ));
    assert_eq!(inspect(b"{}"), Err(GatewayError::ModelMissing));
    assert_eq!(
        inspect(br#"{"model":null}"#),
        Err(GatewayError::ModelMissing)
    );
    assert_eq!(
        inspect(br#"{"model":3}"#),
        Err(GatewayError::ModelNotString)
    );
    assert_eq!(
        inspect(br#"{"model":["a"]}"#),
        Err(GatewayError::ModelNotString)
    );
    assert!(matches!(
        inspect(br#"{"model":"a","model":"b"}"#),
        Err(GatewayError::InvalidJson(_))
    ));
    // Invalid JSON inside a leniently read field is still invalid JSON.
    assert!(matches!(
        inspect(br#"{"model":"m","messages":[{"content":[}]}"#),
        Err(GatewayError::InvalidJson(_))
    ));
}

#[test]
fn include_usage() {
    let on = r#"{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":true,"include_usage":true}}"#;
    assert!(info(on).include_usage);
    for off in [
        r#"{"model":"m","stream":true}"#,
        r#"{"model":"m","stream_options":null}"#,
        r#"{"model":"m","stream_options":{"include_usage":false}}"#,
        r#"{"model":"m","stream_options":{"include_usage":"true"}}"#,
    ] {
        assert!(!info(off).include_usage, "{off}");
    }
}

/// A `stream` read as false while a lenient backend streams would skip the usage the gateway injects.
#[test]
fn stream_and_stream_options_are_typed_strictly() {
    let cases = [
        (r#"{"model":"m","stream":1}"#, "stream", "a number"),
        (r#"{"model":"m","stream":"true"}"#, "stream", "a string"),
        (r#"{"model":"m","stream":[true]}"#, "stream", "an array"),
        (
            r#"{"model":"m","stream":true,"stream_options":[true]}"#,
            "stream_options",
            "an array",
        ),
        (
            r#"{"model":"m","stream_options":"include_usage"}"#,
            "stream_options",
            "a string",
        ),
    ];
    for (body, param, got) in cases {
        let err = inspect(body.as_bytes()).unwrap_err();
        assert!(
            matches!(err, GatewayError::InvalidType { param: p, got: g, .. } if p == param && g == got),
            "{body}: {err:?}"
        );
        assert_eq!(err.status(), 400);
    }
}

#[test]
fn model_names_are_bounded() {
    let ok = format!(r#"{{"model":"{}"}}"#, "m".repeat(MAX_MODEL_BYTES));
    assert_eq!(info(&ok).model.len(), MAX_MODEL_BYTES);
    let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(MAX_MODEL_BYTES + 1));
    assert_eq!(
        inspect(long.as_bytes()),
        Err(GatewayError::ModelTooLong {
            len: MAX_MODEL_BYTES + 1,
            max: MAX_MODEL_BYTES
        })
    );
}

#[test]
fn tools() {
    let t = r#"{"model":"m","tools":[{"type":"function","function":{"name":"f"}}]}"#;
    assert!(info(t).tool);
    assert!(info(r#"{"model":"m","functions":[{"name":"f"}]}"#).tool);
    for no in [
        r#"{"model":"m"}"#,
        r#"{"model":"m","tools":null,"functions":null}"#,
        r#"{"model":"m","tools":[]}"#,
        r#"{"model":"m","tools":"x"}"#,
    ] {
        assert!(!info(no).tool, "{no}");
    }
}

#[test]
fn multimodal_chat() {
    let image = r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[
        {"type":"text","text":"what?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}"#;
    assert!(info(image).multimodal);
    let audio =
        r#"{"model":"m","messages":[{"content":[{"type":"input_audio","input_audio":{}}]}]}"#;
    assert!(info(audio).multimodal);
    let escaped_key = r#"{"model":"m","messages":[{"\u0063ontent":[{"type":"file"}]}]}"#;
    assert!(info(escaped_key).multimodal);
    for text in [
        r#"{"model":"m","messages":[{"role":"user","content":"just text"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        r#"{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[{"type":"function"}]}]}"#,
        r#"{"model":"m","messages":[{"role":"assistant","content":[{"type":"refusal","refusal":"no"}]}]}"#,
    ] {
        assert!(!info(text).multimodal, "{text}");
    }
}

#[test]
fn malformed_messages_are_not_errors() {
    for odd in [
        r#"{"model":"m","messages":3}"#,
        r#"{"model":"m","messages":{"content":[{"type":"image_url"}]}}"#,
        r#"{"model":"m","messages":[{"role":"user","content":42}]}"#,
        r#"{"model":"m","messages":[1,"x",null,[{"type":"image_url"}]]}"#,
        r#"{"model":"m","messages":[{"content":[7,"x",{"type":5},{"text":"no type"}]}]}"#,
        r#"{"model":"m","messages":[{"content":{"type":"image_url"}}]}"#,
        r#"{"model":"m","input":{"content":[{"type":"input_image"}]}}"#,
    ] {
        let r = inspect(odd.as_bytes()).unwrap_or_else(|e| panic!("{odd}: {e}"));
        assert!(!r.multimodal, "{odd}");
    }
}

#[test]
fn multimodal_responses_input() {
    let image = r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"what?"},
        {"type":"input_image","image_url":"data:image/png;base64,AAAA"}]}]}"#;
    assert!(info(image).multimodal);
    for text in [
        r#"{"model":"m","input":"plain string"}"#,
        r#"{"model":"m","input":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"a"}]},
            {"type":"message","role":"assistant","content":[{"type":"output_text","text":"b"}]},
            {"type":"function_call_output","call_id":"c","output":"{}"}]}"#,
    ] {
        assert!(!info(text).multimodal, "{text}");
    }
    // Responses part names are not chat ones.
    let chat = r#"{"model":"m","messages":[{"content":[{"type":"input_text","text":"a"}]}]}"#;
    assert!(info(chat).multimodal);
}

mod fuzz {
    //! Property tests ("fuzz") of the inspector: any bytes, any JSON object, never a panic, and the answer
    //! agrees with a full parse.

    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    /// Keys the inspector reads, and keys it reads inside them, with some it does not.
    const KEYS: &[&str] = &[
        "model",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "include_usage",
        "messages",
        "input",
        "tools",
        "functions",
        "content",
        "type",
        "image_url",
        "x",
    ];

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => proptest::sample::select(KEYS).prop_map(str::to_owned),
            1 => any::<String>(),
        ]
    }

    /// Any JSON value, a few levels deep.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
            (0usize..400).prop_map(|n| Value::from("m".repeat(n))),
        ];
        leaf.prop_recursive(3, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((key(), inner), 0..4)
                    .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
            ]
        })
    }

    /// What `inspect` must answer for this object, read with a full parse.
    fn expected(body: &Map<String, Value>) -> Option<RequestInfo> {
        let model = body.get("model")?.as_str()?;
        let typed =
            |key: &str, ok: fn(&Value) -> bool| body.get(key).is_none_or(|v| v.is_null() || ok(v));
        let count = |key: &str| {
            let v = body.get(key)?;
            v.as_u64().or_else(|| {
                let f = v.as_f64()?;
                (f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64).then_some(f as u64)
            })
        };
        let valid = model.len() <= MAX_MODEL_BYTES
            && typed("stream", Value::is_boolean)
            && typed("stream_options", Value::is_object);
        valid.then(|| RequestInfo {
            model: model.to_owned(),
            stream: body.get("stream") == Some(&Value::Bool(true)),
            include_usage: body
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                == Some(&Value::Bool(true)),
            tool: false,
            multimodal: false,
            max_tokens: count("max_completion_tokens")
                .or_else(|| count("max_tokens"))
                .or_else(|| count("max_output_tokens")),
        })
    }

    proptest! {
        #![proptest_config(crate::fuzz_config())]

        #[test]
        fn any_bytes_are_answered_without_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = inspect(&body);
        }

        #[test]
        fn any_object_is_read_as_a_full_parse_reads_it(
            pairs in proptest::collection::vec((key(), value()), 0..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let body: Map<String, Value> = pairs.into_iter().collect();
            let text = serde_json::to_vec(&body).unwrap();
            let got = inspect(&text).ok().map(|i| RequestInfo { tool: false, multimodal: false, ..i });
            prop_assert_eq!(got, expected(&body));
            // Cut anywhere: an error (or, cut after the last brace, the same answer), never a panic.
            let _ = inspect(&text[..cut.index(text.len() + 1)]);
        }
    }
}
