//! Tests of the Responses -> chat translation: a Codex request field by field, golden answers and streams
//! (the chat fixtures of the Anthropic tests), streams split at any byte.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::dialect::anthropic::ToChat;
use crate::dialect::DialectError;
use proptest::prelude::*;
use serde_json::{json, Value};

const CODEX: &[u8] = include_bytes!("fixtures/codex_request.json");
const CHAT_ANSWER: &[u8] = include_bytes!("../anthropic/fixtures/chat_answer.json");
const CHAT_TOOLS: &[u8] = include_bytes!("../anthropic/fixtures/chat_stream_tools.sse");
const CHAT_REASONING: &[u8] = include_bytes!("../anthropic/fixtures/chat_stream_reasoning.sse");

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap()
}

fn to_chat(body: &Value) -> Result<Value, DialectError> {
    responses_to_chat(body.to_string().as_bytes(), &ToChat::default()).map(|b| json(&b))
}

fn to_responses(pieces: &[&[u8]]) -> (String, ChatToResponsesStream) {
    let mut t = ChatToResponsesStream::new(1_745_916_231);
    let mut out = Vec::new();
    for p in pieces {
        t.feed(p, &mut out).unwrap();
    }
    t.finish(&mut out);
    (String::from_utf8(out).unwrap(), t)
}

/// The `data` of each event, as JSON.
fn datas(sse: &str) -> Vec<Value> {
    sse.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[test]
fn codex_request_to_chat_field_by_field() {
    let chat = to_chat(&json(CODEX)).unwrap();
    assert_eq!(chat["model"], "gpt-5-codex");
    assert_eq!(chat["max_completion_tokens"], 2000);
    assert_eq!(chat["reasoning_effort"], "medium");
    assert_eq!(chat["parallel_tool_calls"], false);
    assert_eq!(chat["tool_choice"], "auto");
    assert_eq!(chat["stream"], true);
    assert_eq!(chat["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        chat["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}})
    );
    assert_eq!(
        chat["tools"],
        json!([{"type": "function", "function": {"name": "shell",
            "description": "Runs a shell command and returns its output.",
            "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                "required": ["command"], "additionalProperties": false}, "strict": false}}])
    );
    for dropped in [
        "store",
        "include",
        "prompt_cache_key",
        "text",
        "reasoning",
        "input",
        "instructions",
    ] {
        assert!(chat.get(dropped).is_none(), "{dropped}");
    }
    let m = chat["messages"].as_array().unwrap();
    assert_eq!(m.len(), 7, "the reasoning item has no chat form");
    assert_eq!(
        m[0],
        json!({"role": "system", "content": "You are Codex, based on GPT-5. You are running as a coding agent in the Codex CLI."})
    );
    assert_eq!(m[1]["role"], "developer");
    assert_eq!(
        m[1]["content"],
        json!([{"type": "text", "text": "<permissions instructions>Approval policy: on-request.</permissions instructions>"}])
    );
    assert_eq!(m[2]["role"], "user");
    assert_eq!(
        m[3],
        json!({"role": "user", "content": [{"type": "text", "text": "Fix the failing test"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"}}]})
    );
    assert_eq!(
        m[4],
        json!({"role": "assistant", "content": "Running the tests first.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "shell", "arguments": "{\"command\":[\"cargo\",\"test\"]}"}},
            {"id": "call_2", "type": "function", "function": {"name": "shell", "arguments": "{\"command\":[\"git\",\"status\"]}"}}]})
    );
    assert_eq!(
        m[5],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "test result: FAILED. 1 failed"})
    );
    assert_eq!(
        m[6],
        json!({"role": "tool", "tool_call_id": "call_2", "content": "nothing to commit"})
    );
}

#[test]
fn string_input_refusals_and_tool_choice() {
    let chat = to_chat(&json!({"model": "m", "input": "hi", "instructions": "Be brief.",
        "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "f"}})).unwrap();
    assert_eq!(
        chat["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    );
    assert_eq!(
        chat["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    let err = to_chat(&json!({"model": "m", "input": "hi", "previous_response_id": "resp_1"}))
        .unwrap_err();
    assert!(matches!(
        err,
        DialectError::Invalid {
            field: "previous_response_id",
            ..
        }
    ));
    assert_eq!(
        to_chat(&json!({"model": "m"})).unwrap_err(),
        DialectError::Missing("input")
    );
    assert_eq!(
        responses_to_chat(b"[]", &ToChat::default()).unwrap_err(),
        DialectError::NotObject
    );
    let only_builtin = to_chat(
        &json!({"model": "m", "input": "hi", "tools": [{"type": "web_search"}],
        "parallel_tool_calls": true}),
    )
    .unwrap();
    assert!(
        only_builtin.get("tools").is_none() && only_builtin.get("parallel_tool_calls").is_none()
    );
}

#[test]
fn chat_answer_to_response_golden() {
    let (body, usage) = chat_answer_to_response(CHAT_ANSWER, 0).unwrap();
    assert_eq!(
        json(&body),
        json(include_bytes!("fixtures/chat_answer.response.json"))
    );
    assert_eq!(
        (usage.prompt, usage.cached, usage.completion),
        (Some(1117), Some(1024), Some(46))
    );
    let cut = json!({"id": "x", "model": "m", "choices": [{"message": {"content": "par"}, "finish_reason": "length"}]});
    let (body, _) = chat_answer_to_response(cut.to_string().as_bytes(), 5).unwrap();
    let v = json(&body);
    assert_eq!(
        (v["status"].as_str(), v["created_at"].as_i64()),
        (Some("incomplete"), Some(5))
    );
    assert_eq!(
        v["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
}

#[test]
fn chat_streams_to_responses_golden() {
    let (tools, t) = to_responses(&[CHAT_TOOLS]);
    assert_eq!(
        tools,
        include_str!("fixtures/chat_stream_tools.responses.sse")
    );
    assert!(t.is_complete());
    assert_eq!(t.usage().unwrap().cached, Some(256));
    let d = datas(&tools);
    let seqs: Vec<u64> = d
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..d.len() as u64).collect::<Vec<_>>());
    let done = d.last().unwrap();
    assert_eq!(done["type"], "response.completed");
    assert_eq!(done["response"]["output"].as_array().unwrap().len(), 3);
    assert_eq!(
        done["response"]["output"][2]["arguments"],
        "{\"location\": \"Bogotá, Colombia\"}"
    );
    assert_eq!(
        done["response"]["usage"]["input_tokens_details"]["cached_tokens"],
        256
    );
    let (reasoning, _) = to_responses(&[CHAT_REASONING]);
    assert_eq!(
        reasoning,
        include_str!("fixtures/chat_stream_reasoning.responses.sse")
    );
    assert_eq!(
        datas(&reasoning).last().unwrap()["type"],
        "response.incomplete"
    );
}

#[test]
fn a_cut_stream_stays_cut() {
    let (out, t) = to_responses(&[&CHAT_TOOLS[..CHAT_TOOLS.len() / 2]]);
    assert!(!t.is_complete() && !out.contains("response.completed"));
}

/// Prints the golden outputs, to review and save after a deliberate change:
/// `cargo nextest run --lib dialect::responses::tests::dump_goldens --run-ignored only --no-capture`.
#[test]
#[ignore]
fn dump_goldens() {
    let p = |name: &str, s: &str| println!("=====FILE {name}\n{s}=====END");
    let pretty = |b: Vec<u8>| serde_json::to_string_pretty(&json(&b)).unwrap() + "\n";
    p(
        "chat_answer.response.json",
        &pretty(chat_answer_to_response(CHAT_ANSWER, 0).unwrap().0),
    );
    p(
        "chat_stream_tools.responses.sse",
        &to_responses(&[CHAT_TOOLS]).0,
    );
    p(
        "chat_stream_reasoning.responses.sse",
        &to_responses(&[CHAT_REASONING]).0,
    );
}

proptest! {
    #![proptest_config(crate::fuzz_config())]

    #[test]
    fn any_split_of_a_stream_gives_the_same_output(cuts in proptest::collection::vec(any::<usize>(), 0..40)) {
        for stream in [CHAT_TOOLS, CHAT_REASONING] {
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            at.sort_unstable();
            let mut pieces = Vec::new();
            let mut from = 0;
            for c in at {
                pieces.push(&stream[from..c]);
                from = c;
            }
            pieces.push(&stream[from..]);
            prop_assert_eq!(to_responses(&pieces).0, to_responses(&[stream]).0);
        }
    }
}

proptest! {
    #![proptest_config(crate::fuzz_config())]

    /// Pieces of real chunks mixed with junk: no panic.
    #[test]
    fn junk_streams_never_panic(pieces in proptest::collection::vec(
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            (0..CHAT_TOOLS.len(), 1usize..300).prop_map(|(at, n)| CHAT_TOOLS[at..(at + n).min(CHAT_TOOLS.len())].to_vec()),
        ], 0..30)) {
        let mut t = ChatToResponsesStream::new(0);
        let mut out = Vec::new();
        for p in &pieces {
            let _ = t.feed(p, &mut out);
        }
        t.finish(&mut out);
    }

    /// Any JSON-ish request body: an error or a translation, never a panic.
    #[test]
    fn junk_requests_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200), at in 0usize..1500) {
        let _ = responses_to_chat(&body, &ToChat::default());
        let cut = &CODEX[..at.min(CODEX.len())];
        let _ = responses_to_chat(cut, &ToChat::default());
    }
}
