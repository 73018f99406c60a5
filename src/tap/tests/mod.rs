//! Tests of the tap over recorded streams and bodies: shared recordings and helpers.

mod body;
mod bounds;
mod fuzz;
mod lanes;
mod stream;

use super::*;
use serde_json::{json, Value};

const HEAD: &str = r#"{"id":"chatcmpl-9x","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_1","choices":"#;

/// A recorded chat stream: role, reasoning, a keep-alive, content, a tool call over three chunks, the
/// finish reason, the usage-only chunk and `[DONE]`; its events end with `eol` twice.
fn chat_stream(eol: &str) -> String {
    let deltas = [
        r#"{"role":"assistant","content":""}"#,
        r#"{"reasoning_content":"The user greets."}"#,
        r#"{"content":"Hel"}"#,
        r#"{"content":"lo, \"w\u00f6rld\"\n"}"#,
        r#"{"tool_calls":[{"index":0,"id":"call_abc","type":"function","function":{"name":"get_weather","arguments":""}}]}"#,
        r#"{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}"#,
        r#"{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]}"#,
    ];
    let mut events: Vec<String> = deltas
        .iter()
        .map(|d| {
            format!(
                r#"data: {HEAD}[{{"index":0,"delta":{d},"logprobs":null,"finish_reason":null}}]}}"#
            )
        })
        .collect();
    events.insert(2, ": keep-alive".into());
    events.push(format!(
        r#"data: {HEAD}[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"tool_calls"}}]}}"#
    ));
    events.push(format!("data: {HEAD}[],{USAGE}}}"));
    events.push("data: [DONE]".into());
    events.iter().map(|e| format!("{e}{eol}{eol}")).collect()
}

const USAGE: &str = r#""usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":5}}"#;

fn chat_usage() -> TokenUsage {
    TokenUsage {
        prompt: Some(12),
        completion: Some(34),
        total: Some(46),
        cached: Some(0),
        reasoning: Some(5),
        cache_write: None,
    }
}

fn opts(kind: ApiKind, sse: bool) -> TapOptions {
    TapOptions {
        sse,
        kind,
        prefix: None,
        hide_usage_chunk: false,
        keep_body: None,
    }
}

fn all_on() -> TapOptions {
    TapOptions {
        prefix: Some("<think>\n".into()),
        hide_usage_chunk: true,
        keep_body: Some(1 << 20),
        ..opts(ApiKind::Chat, true)
    }
}

#[derive(Debug, PartialEq)]
struct Run {
    out: String,
    usage: Option<TokenUsage>,
    record: Option<String>,
    model: Option<String>,
    first: bool,
}

fn run(o: &TapOptions, pieces: &[&[u8]]) -> Run {
    let mut tap = ResponseTap::new(o.clone());
    let mut out = Vec::new();
    for piece in pieces {
        out.extend_from_slice(&tap.feed(Bytes::copy_from_slice(piece)));
    }
    out.extend_from_slice(&tap.finish());
    Run {
        out: String::from_utf8_lossy(&out).into_owned(),
        usage: tap.usage(),
        record: tap.record_body(),
        model: tap.upstream_model().map(Into::into),
        first: tap.saw_first_token(),
    }
}

fn run1(o: &TapOptions, s: &str) -> Run {
    run(o, &[s.as_bytes()])
}

fn record_json(r: &Run) -> Value {
    serde_json::from_str(r.record.as_deref().unwrap()).unwrap()
}

fn chat_event(choices: &str) -> String {
    format!(r#"data: {{"id":"c","model":"m","choices":{choices}}}"#) + "\n\n"
}
