//! Unit tests of request rewriting: each rule, and what must stay byte for byte.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::config::{BaseUrl, MatchKind, ModelMatch};
use crate::request::inspect;
use crate::secret::Secret;

fn client() -> Client {
    Client {
        name: "c".into(),
        api_key: Secret::new(""),
        base_url: BaseUrl::parse("http://127.0.0.1:1").unwrap(),
        priority: 0,
        weight: 1,
        balance: crate::config::Balance::Weighted,
        model_match: ModelMatch {
            kind: MatchKind::Exact,
            values: vec!["m".into()],
        },
        fallback: None,
        special_prefix: None,
        stop: Vec::new(),
        max_tokens: None,
        extra_body: Map::new(),
        model: None,
        headers: Vec::new(),
        fixed_headers: Vec::new(),
        protocol: crate::config::Protocol::OpenAi,
        anthropic_version: None,
        responses: crate::config::ResponsesMode::Passthrough,
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(1),
        retry_on: Vec::new(),
        health_policy: crate::config::HealthPolicy {
            failure_threshold: 3,
            cooldown: Duration::from_secs(30),
        },
    }
}

fn with_stop(words: &[&str]) -> Client {
    Client {
        stop: words.iter().map(|w| w.to_string()).collect(),
        ..client()
    }
}

fn with_cap(cap: u64) -> Client {
    Client {
        max_tokens: Some(cap),
        ..client()
    }
}

/// The rewritten body as text, `None` when unchanged.
fn run(body: &str, client: &Client, kind: ApiKind) -> Option<String> {
    run_with(body, client, kind, None)
}

fn run_with(body: &str, client: &Client, kind: ApiKind, over: Option<&str>) -> Option<String> {
    let info = inspect(body.as_bytes()).unwrap();
    let out = rewrite(body.as_bytes(), &info, client, kind, over)?;
    Some(String::from_utf8(out.to_vec()).unwrap())
}

fn field(text: &str, name: &str) -> Value {
    serde_json::from_str::<Value>(text).unwrap()[name].clone()
}

#[test]
fn stop_merge() {
    let c = with_stop(&["</s>", "<|end|>"]);
    let out = run(r#"{"model":"m","stop":"x"}"#, &c, ApiKind::Chat).unwrap();
    assert_eq!(out, r#"{"model":"m","stop":["</s>","<|end|>","x"]}"#);
    let out = run(
        r#"{"model":"m","stop":["x","</s>","x","y"]}"#,
        &c,
        ApiKind::Completions,
    );
    assert_eq!(
        field(&out.unwrap(), "stop"),
        json!(["</s>", "<|end|>", "x", "y"])
    );
    let out = run(r#"{"model":"m"}"#, &c, ApiKind::Chat).unwrap();
    assert_eq!(out, r#"{"model":"m","stop":["</s>","<|end|>"]}"#);
    let out = run(r#"{"stop":null,"model":"m"}"#, &c, ApiKind::Chat).unwrap();
    assert_eq!(out, r#"{"stop":["</s>","<|end|>"],"model":"m"}"#);
    let dup = with_stop(&["a", "a"]);
    let out = run(r#"{"model":"m"}"#, &dup, ApiKind::Chat).unwrap();
    assert_eq!(field(&out, "stop"), json!(["a"]));
}

#[test]
fn stop_left_alone() {
    let c = with_stop(&["a", "b"]);
    // Already merged, whatever the spacing.
    assert_eq!(
        run(r#"{"model":"m","stop":["a", "b"]}"#, &c, ApiKind::Chat),
        None
    );
    // Malformed: the backend's 400 says so better than a silent fix.
    assert_eq!(run(r#"{"model":"m","stop":3}"#, &c, ApiKind::Chat), None);
    assert_eq!(
        run(r#"{"model":"m","stop":["a",1]}"#, &c, ApiKind::Chat),
        None
    );
    // No stop in these APIs.
    assert_eq!(run(r#"{"model":"m"}"#, &c, ApiKind::Responses), None);
    assert_eq!(run(r#"{"model":"m"}"#, &c, ApiKind::Embeddings), None);
}

#[test]
fn stop_sequences_in_messages() {
    // The client's words go first into Messages' `stop_sequences`; Anthropic refuses a blank one.
    let c = with_stop(&["</s>", " \n", "", "END"]);
    let body = r#"{"model":"m","max_tokens":9,"stop_sequences":["END","x"],"messages":[]}"#;
    let out = run(body, &c, ApiKind::Messages).unwrap();
    assert_eq!(field(&out, "stop_sequences"), json!(["</s>", "END", "x"]));
    assert_eq!(field(&out, "stop"), Value::Null);
    let out = run(r#"{"model":"m","messages":[]}"#, &c, ApiKind::Messages).unwrap();
    assert_eq!(
        out,
        r#"{"model":"m","messages":[],"stop_sequences":["</s>","END"]}"#
    );
    // Already merged, or only blank words: nothing changes.
    let body = r#"{"model":"m","stop_sequences":["</s>","END"]}"#;
    assert_eq!(run(body, &c, ApiKind::Messages), None);
    let blank = with_stop(&["\n\n", " "]);
    assert_eq!(run(r#"{"model":"m"}"#, &blank, ApiKind::Messages), None);
    // A chat request keeps its whitespace words (OpenAI takes them).
    let out = run(r#"{"model":"m"}"#, &blank, ApiKind::Chat).unwrap();
    assert_eq!(field(&out, "stop"), json!(["\n\n", " "]));
}

#[test]
fn max_tokens_cap() {
    let c = with_cap(100);
    let out = run(r#"{"model":"m","max_tokens":500}"#, &c, ApiKind::Chat).unwrap();
    assert_eq!(out, r#"{"model":"m","max_tokens":100}"#);
    assert_eq!(
        run(r#"{"model":"m","max_tokens":50}"#, &c, ApiKind::Chat),
        None
    );
    assert_eq!(
        run(r#"{"model":"m","max_tokens":100}"#, &c, ApiKind::Chat),
        None
    );
    let out = run(r#"{"model":"m"}"#, &c, ApiKind::Completions).unwrap();
    assert_eq!(out, r#"{"model":"m","max_tokens":100}"#);
    let out = run(
        r#"{"model":"m","max_completion_tokens":1e4}"#,
        &c,
        ApiKind::Chat,
    );
    assert_eq!(out.unwrap(), r#"{"model":"m","max_completion_tokens":100}"#);
    assert_eq!(
        run(
            r#"{"model":"m","max_completion_tokens":7}"#,
            &c,
            ApiKind::Chat
        ),
        None
    );
    let both = r#"{"model":"m","max_tokens":5,"max_completion_tokens":5000}"#;
    let out = run(both, &c, ApiKind::Chat).unwrap();
    assert_eq!(
        out,
        r#"{"model":"m","max_tokens":5,"max_completion_tokens":100}"#
    );
    // null means "no limit": capped in place.
    let out = run(
        r#"{"model":"m","max_completion_tokens":null}"#,
        &c,
        ApiKind::Chat,
    );
    assert_eq!(out.unwrap(), r#"{"model":"m","max_completion_tokens":100}"#);
    // Not a number, or negative: for the backend to judge.
    assert_eq!(
        run(r#"{"model":"m","max_tokens":"lots"}"#, &c, ApiKind::Chat),
        None
    );
    assert_eq!(
        run(r#"{"model":"m","max_tokens":-1}"#, &c, ApiKind::Chat),
        None
    );
    assert_eq!(run(r#"{"model":"m"}"#, &c, ApiKind::Embeddings), None);
    assert_eq!(run(r#"{"model":"m"}"#, &c, ApiKind::Other), None);
}

#[test]
fn responses_max_output_tokens() {
    let c = with_cap(100);
    let out = run(r#"{"model":"m","input":"hi"}"#, &c, ApiKind::Responses).unwrap();
    assert_eq!(out, r#"{"model":"m","input":"hi","max_output_tokens":100}"#);
    let out = run(
        r#"{"model":"m","max_output_tokens":101}"#,
        &c,
        ApiKind::Responses,
    );
    assert_eq!(out.unwrap(), r#"{"model":"m","max_output_tokens":100}"#);
    let small = r#"{"model":"m","max_output_tokens":99}"#;
    assert_eq!(run(small, &c, ApiKind::Responses), None);
}

#[test]
fn extra_body_only_when_absent() {
    let mut c = client();
    c.extra_body.insert("top_k".into(), json!(5));
    c.extra_body
        .insert("chat_template_kwargs".into(), json!({"thinking": false}));
    let out = run(r#"{"model":"m","top_k":null}"#, &c, ApiKind::Chat).unwrap();
    assert_eq!(
        out,
        r#"{"model":"m","top_k":null,"chat_template_kwargs":{"thinking":false}}"#
    );
    let full = r#"{"model":"m","top_k":1,"chat_template_kwargs":{}}"#;
    assert_eq!(run(full, &c, ApiKind::Chat), None);
    let out = run(r#"{"model":"m"}"#, &c, ApiKind::Embeddings).unwrap();
    assert_eq!(field(&out, "top_k"), json!(5));
}

#[test]
fn extra_body_then_cap() {
    let mut c = with_cap(100);
    c.extra_body.insert("max_tokens".into(), json!(4096));
    let out = run(r#"{"model":"m"}"#, &c, ApiKind::Chat).unwrap();
    assert_eq!(out, r#"{"model":"m","max_tokens":100}"#);
}

#[test]
fn model_alias_and_override() {
    let c = Client {
        model: Some("org/big-model".into()),
        ..client()
    };
    let body = r#"{"model":"m","messages":[]}"#;
    let out = run(body, &c, ApiKind::Chat).unwrap();
    assert_eq!(out, r#"{"model":"org/big-model","messages":[]}"#);
    let out = run_with(body, &c, ApiKind::Chat, Some("fallback")).unwrap();
    assert_eq!(out, r#"{"model":"fallback","messages":[]}"#);
    let out = run_with(body, &client(), ApiKind::Other, Some("f\"b")).unwrap();
    assert_eq!(out, r#"{"model":"f\"b","messages":[]}"#);
    // Alias equal to the request: nothing to do.
    let same = Client {
        model: Some("m".into()),
        ..client()
    };
    assert_eq!(run(body, &same, ApiKind::Chat), None);
    assert_eq!(run_with(body, &client(), ApiKind::Chat, Some("m")), None);
}

#[test]
fn upstream_model_order() {
    let info = inspect(br#"{"model":"asked"}"#).unwrap();
    let aliased = Client {
        model: Some("alias".into()),
        ..client()
    };
    assert_eq!(upstream_model(&info, &client(), None), "asked");
    assert_eq!(upstream_model(&info, &aliased, None), "alias");
    assert_eq!(upstream_model(&info, &aliased, Some("over")), "over");
}

#[test]
fn include_usage_injection() {
    let c = client();
    let out = run(r#"{"model":"m","stream":true}"#, &c, ApiKind::Chat).unwrap();
    assert_eq!(
        out,
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
    );
    let other = r#"{"model":"m","stream_options":{"continuous_usage_stats":true, "include_usage":false},"stream":true}"#;
    let out = run(other, &c, ApiKind::Completions).unwrap();
    assert_eq!(
        out,
        r#"{"model":"m","stream_options":{"continuous_usage_stats":true,"include_usage":true},"stream":true}"#
    );
    let keys = r#"{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":1.0e0}}"#;
    let out = run(keys, &c, ApiKind::Chat).unwrap();
    assert!(
        out.ends_with(r#""stream_options":{"continuous_usage_stats":1.0e0,"include_usage":true}}"#)
    );
    let null = r#"{"model":"m","stream":true,"stream_options":null}"#;
    let out = run(null, &c, ApiKind::Chat).unwrap();
    assert_eq!(
        field(&out, "stream_options"),
        json!({"include_usage": true})
    );
    let already = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
    assert_eq!(run(already, &c, ApiKind::Chat), None);
    assert_eq!(
        run(r#"{"model":"m","stream":false}"#, &c, ApiKind::Chat),
        None
    );
    assert_eq!(
        run(r#"{"model":"m","stream":true}"#, &c, ApiKind::Responses),
        None
    );
    // A `stream_options` that is not an object never reaches a rewrite: the parse refuses it.
    let odd = r#"{"model":"m","stream":true,"stream_options":"x"}"#;
    assert!(inspect(odd.as_bytes()).is_err());
}

#[test]
fn nothing_to_change() {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[],"seed":1}"#;
    assert_eq!(run(body, &client(), ApiKind::Chat), None);
    let info = inspect(body.as_bytes()).unwrap();
    // Not even parsed: a broken body gives None, not an error or a panic.
    assert_eq!(
        rewrite(b"[1]", &info, &with_cap(5), ApiKind::Chat, None),
        None
    );
    assert_eq!(
        rewrite(b"{x", &info, &with_cap(5), ApiKind::Chat, None),
        None
    );
    assert_eq!(rewrite(b"", &info, &with_cap(5), ApiKind::Chat, None), None);
}

#[test]
fn untouched_text_is_kept() {
    let body = "{ \"z\" : 1.0e3 ,\"messages\":[{\"content\":\"a\\u00e9 \\\"q\\\"\"}], \"model\":\"m\",\
        \"caf\\u00e9\":{\"k\" : [1, 2]},\"\u{e9}t\u{e9}\":\"\u{1f600}\",\"n\":-0.50,\"tools\":[{\"type\":\"function\"}],\
        \"response_format\":{\"type\":\"json_object\"},\"top_p\":1E-2,\"logprobs\":true}";
    let c = Client {
        model: Some("up".into()),
        ..with_cap(10)
    };
    let out = run(body, &c, ApiKind::Chat).unwrap();
    let want = "{\"z\":1.0e3,\"messages\":[{\"content\":\"a\\u00e9 \\\"q\\\"\"}],\"model\":\"up\",\
        \"caf\\u00e9\":{\"k\" : [1, 2]},\"\u{e9}t\u{e9}\":\"\u{1f600}\",\"n\":-0.50,\"tools\":[{\"type\":\"function\"}],\
        \"response_format\":{\"type\":\"json_object\"},\"top_p\":1E-2,\"logprobs\":true,\"max_tokens\":10}";
    assert_eq!(out, want);
}

#[test]
fn escaped_keys_are_matched() {
    let c = with_cap(10);
    let body = r#"{"model":"m","max\u005ftokens":50}"#;
    let out = run(body, &c, ApiKind::Chat).unwrap();
    assert_eq!(out, r#"{"model":"m","max\u005ftokens":10}"#);
    let mut extra = client();
    extra.extra_body.insert("caf\u{e9}".into(), json!(1));
    assert_eq!(
        run(r#"{"model":"m","caf\u00e9":0}"#, &extra, ApiKind::Chat),
        None
    );
    let out = run(r#"{"model":"m"}"#, &extra, ApiKind::Chat).unwrap();
    assert_eq!(out, "{\"model\":\"m\",\"caf\u{e9}\":1}");
}

#[test]
fn duplicate_keys_all_set() {
    let c = with_cap(10);
    let out = run(
        r#"{"model":"m","max_tokens":50,"max_tokens":5}"#,
        &c,
        ApiKind::Chat,
    );
    assert_eq!(
        out.unwrap(),
        r#"{"model":"m","max_tokens":10,"max_tokens":10}"#
    );
}

#[test]
fn big_image_is_copied_as_is() {
    let image = "A".repeat(5 * 1024 * 1024);
    let messages = format!(
        r#"[{{"role":"user","content":[{{"type":"text","text":"x\n"}},{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{image}"}}}}]}}]"#
    );
    let body = format!(r#"{{"model":"m","messages":{messages},"stream":true}}"#);
    let info = inspect(body.as_bytes()).unwrap();
    assert!(info.multimodal && info.stream && !info.tool);
    let out = run(&body, &with_cap(9), ApiKind::Chat).unwrap();
    let want = format!(
        r#"{{"model":"m","messages":{messages},"stream":true,"max_tokens":9,"stream_options":{{"include_usage":true}}}}"#
    );
    assert!(out == want);
}

/// What the general path writes when only stream usage is asked for: the reference of [`append_usage`].
fn usage_by_object(body: &str) -> Option<String> {
    let mut obj = serde_json::from_slice::<Object>(body.as_bytes()).ok()?;
    ask_usage(&mut obj).then(|| obj.to_text())
}

#[test]
fn usage_appended_as_the_object_path_writes_it() {
    let bodies = [
        r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"Hi"}]}"#,
        r#" { "model" : "m" , "stream":true, "messages" : [ {"content":"a \"q\" \u00e9"} ] } "#,
        r#"{}"#,
        r#"{"model":"m","model":"n","stream":true}"#,
        r#"{"model":"m","stream":true,"x":{"stream_options":null}}"#,
    ];
    for body in bodies {
        let fast = append_usage(body.as_bytes()).map(|b| String::from_utf8(b.to_vec()).unwrap());
        assert!(fast.is_some(), "{body}");
        assert_eq!(fast, usage_by_object(body), "{body}");
    }
    // Left to the general path: stream_options present, an escaped key, not an object, not JSON.
    let general = [
        r#"{"model":"m","stream_options":null}"#,
        r#"{"model":"m","stream_options":{"continuous_usage_stats":true}}"#,
        r#"{"mod\u0065l":"m","stream":true}"#,
        r#"[1]"#,
        r#"{"model":"m",}"#,
        "{\"model\":\"m\"} x",
    ];
    for body in general {
        assert_eq!(append_usage(body.as_bytes()), None, "{body}");
    }
    let client = client();
    let body = r#"{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":true}}"#;
    let out = run(body, &client, ApiKind::Chat).unwrap();
    assert_eq!(
        field(&out, "stream_options"),
        json!({"continuous_usage_stats": true, "include_usage": true})
    );
    let out = run(r#"{"model":"m","stream":true}"#, &client, ApiKind::Chat).unwrap();
    assert_eq!(
        out,
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
    );
}
