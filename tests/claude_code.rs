//! The request Claude Code sends (system blocks with `cache_control`, tools, `thinking`; the dialect's fixture)
//! streamed through the gateway to an OpenAI-compatible backend: the chat request the backend gets, the
//! caller's Messages events one by one (a text block, then a tool_use block, usage in the last delta), the record.

use crate::common::mock::{chat_chunk, usage_chunk, usage_json, Reply};
use crate::common::read_events;
use crate::common::records::{usage_config, wait_one_row};
use crate::common::{client, send_json, Gateway, Mock};
use serde_json::{json, Value};

const CLAUDE_CODE: &str =
    include_str!("../src/dialect/anthropic/fixtures/claude_code_request.json");
const MODEL: &str = "claude-sonnet-4-5-20250929";
/// The gateway key Claude Code sends (`ANTHROPIC_API_KEY`), in `x-api-key`.
const KEY: &str = "sk-gateway-key-for-claude-code";

/// What an OpenAI backend streams for it: a role chunk, two text pieces, then a `Bash` tool call whose arguments
/// come in two pieces, `finish_reason: tool_calls`.
fn text_then_tool_call() -> Vec<String> {
    let delta =
        |d: Value| json!([{"index": 0, "delta": d, "logprobs": null, "finish_reason": null}]);
    let call = json!({"tool_calls": [{"index": 0, "id": "call_7", "type": "function",
        "function": {"name": "Bash", "arguments": ""}}]});
    let args = |a: &str| json!({"tool_calls": [{"index": 0, "function": {"arguments": a}}]});
    vec![
        chat_chunk(MODEL, delta(json!({"role": "assistant", "content": ""}))),
        chat_chunk(MODEL, delta(json!({"content": "The build log says "}))),
        chat_chunk(MODEL, delta(json!({"content": "`x` is undefined."}))),
        chat_chunk(MODEL, delta(call)),
        chat_chunk(MODEL, delta(args("{\"command\": \"grep -n x "))),
        chat_chunk(MODEL, delta(args("src/main.rs\"}"))),
        chat_chunk(
            MODEL,
            json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "tool_calls"}]),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_claude_code_request_streams_from_an_openai_backend_event_by_event() {
    let mock = Mock::start("oai").await;
    let usage = usage_chunk(MODEL, "chat.completion.chunk", usage_json(1500, 42));
    mock.set_reply(Reply {
        piece_bytes: Some(29),
        ..Reply::stream(text_then_tool_call(), Some(usage))
    });
    let db = tempfile::tempdir().unwrap();
    let mut backend = client("oai", &mock.base_url("/v1"), "exact", &[MODEL]);
    backend["api_key"] = json!("sk-openai-backend");
    let mut cfg = usage_config(vec![backend], db.path(), json!({}));
    cfg["auth"] = json!({"keys": [{"name": "claude-code", "key": KEY}]});
    let gw = Gateway::start(&cfg).await;
    let request: Value = serde_json::from_str(CLAUDE_CODE).unwrap();
    assert_eq!(request["stream"], true);
    let headers = [
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", "interleaved-thinking-2025-05-14"),
        ("x-api-key", KEY),
    ];
    let resp = send_json(&gw.url("/v1/messages"), &request, &headers).await;
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let events = read_events(resp).await;

    // The chat request the backend got.
    let sent = mock.single();
    assert_eq!(sent.uri, "/v1/chat/completions");
    assert_eq!(sent.header("x-api-key"), None, "the gateway key stays here");
    assert_eq!(
        sent.header("authorization"),
        Some("Bearer sk-openai-backend")
    );
    assert_eq!(sent.header("anthropic-version"), None);
    let chat = sent.json();
    assert_eq!(chat["model"], MODEL);
    assert_eq!(chat["stream"], true);
    assert_eq!(chat["stream_options"], json!({"include_usage": true}));
    assert_eq!(chat["max_completion_tokens"], 32000);
    assert_eq!(
        chat["reasoning_effort"], "high",
        "thinking with a 31999-token budget"
    );
    assert_eq!(
        chat["messages"][0],
        json!({"role": "system", "content": "You are Claude Code, Anthropic's official CLI for Claude.\n\n\
            You are an interactive CLI tool that helps users with software engineering tasks."})
    );
    let roles: Vec<&str> = chat["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
    let tools: Vec<&str> = chat["tools"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|t| assert_eq!(t["type"], "function", "{t}"))
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        ["Bash", "Read", "Edit"],
        "web_search has no chat form"
    );
    assert!(chat["tools"][0]["function"]["parameters"]["properties"]["command"].is_object());
    let text = String::from_utf8_lossy(&sent.body).into_owned();
    for dropped in ["cache_control", "\"thinking\"", "signature", "web_search"] {
        assert!(!text.contains(dropped), "{dropped} sent on: {text}");
    }

    // The caller's events, in order.
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ],
        "{events:#?}"
    );
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str(), "each data names its event");
    }
    let start = &events[0].1["message"];
    assert_eq!(start["type"], "message");
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["content"], json!([]));
    assert_eq!(
        events[1].1,
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    let text: Vec<&Value> = events[2..4].iter().map(|(_, d)| d).collect();
    assert_eq!(
        text,
        [
            &json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "The build log says "}}),
            &json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "`x` is undefined."}}),
        ]
    );
    assert_eq!(
        events[4].1,
        json!({"type": "content_block_stop", "index": 0})
    );
    let tool = &events[5].1;
    assert_eq!(tool["index"], 1);
    assert_eq!(tool["content_block"]["type"], "tool_use");
    assert_eq!(tool["content_block"]["id"], "call_7");
    assert_eq!(tool["content_block"]["name"], "Bash");
    assert_eq!(tool["content_block"]["input"], json!({}));
    let mut arguments = String::new();
    for (_, d) in &events[6..8] {
        assert_eq!(d["index"], 1, "{d}");
        assert_eq!(d["delta"]["type"], "input_json_delta", "{d}");
        arguments.push_str(d["delta"]["partial_json"].as_str().unwrap());
    }
    assert_eq!(arguments, "{\"command\": \"grep -n x src/main.rs\"}");
    assert_eq!(
        events[8].1,
        json!({"type": "content_block_stop", "index": 1})
    );
    let delta = &events[9].1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"]["input_tokens"], 1500);
    assert_eq!(delta["usage"]["output_tokens"], 42);
    assert_eq!(events[10].1, json!({"type": "message_stop"}));

    let row = wait_one_row(db.path()).await;
    assert_eq!(row.kind.as_deref(), Some("messages"));
    assert_eq!(row.stream, Some(1));
    assert_eq!(row.status, Some(200));
    assert_eq!(row.model.as_deref(), Some(MODEL));
    assert_eq!(row.backend.as_deref(), Some("oai"));
    assert_eq!(row.key_name.as_deref(), Some("claude-code"));
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens, row.total_tokens),
        (Some(1500), Some(42), Some(1542))
    );
    assert_eq!(row.tool, Some(1), "{row:#?}");
    assert_eq!(row.usage_estimated, Some(0), "{row:#?}");
}
