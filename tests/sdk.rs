//! The official OpenAI Python SDK (pinned, in a virtualenv under target/) against the gateway: chat, streaming chat,
//! models, 404; and chat (plain, streamed, with a tool) with a model served by an Anthropic backend.

use crate::anthropic::{anthropic_client, anthropic_mock, BACKEND_KEY};
use crate::common;
use crate::common::mock::Reply;
use crate::common::{client, config, Gateway, Mock};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn openai_python_sdk_works_against_gateway() {
    let mock = Mock::start("sdk").await;
    mock.set_sse(5, std::time::Duration::ZERO);
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["sdk-model"],
    )]))
    .await;

    let base_url = gw.url("/v1");
    let expected = Mock::sse_text(5);
    common::run_python_client(
        "test_sdk.py",
        vec![base_url.into(), "sdk-model".into(), expected.into()],
    )
    .await;
    let requests = mock.requests();
    let chats: Vec<_> = requests.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(
        chats.len(),
        2,
        "one plain and one streaming chat completion"
    );
    for r in &chats {
        assert_eq!(r.uri, "/v1/chat/completions");
    }
    // models.list() makes the gateway ask the backend for its list, with the caller's key (no api_key).
    for r in &requests {
        assert!(
            r.method == "POST" || r.uri == "/v1/models",
            "{} {}",
            r.method,
            r.uri
        );
        assert_eq!(r.header("authorization"), Some("Bearer sk-sdk-caller"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_python_sdk_chats_with_an_anthropic_backend() {
    let mock = anthropic_mock().await;
    let gw = Gateway::start(&config(vec![anthropic_client(&mock, json!({}))])).await;
    let run = |mode: &'static str| {
        let args = vec![gw.url("/v1").into(), "claude-x".into(), mode.into()];
        common::run_python_script(common::python::python, "test_openai_to_anthropic.py", args)
    };
    run("text").await;
    let sent = mock.requests();
    assert_eq!(sent.len(), 2, "one plain and one streaming call");
    for (r, stream) in sent.iter().zip([false, true]) {
        assert_eq!(
            (r.method.as_str(), r.uri.as_str()),
            ("POST", "/v1/messages")
        );
        assert_eq!(r.header("x-api-key"), Some(BACKEND_KEY));
        assert_eq!(r.header("authorization"), None);
        assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
        let body = r.json();
        assert_eq!(body["model"], "claude-x");
        assert_eq!(body["max_tokens"], 64);
        assert_eq!(body["system"], "Be brief.");
        assert_eq!(body["messages"], json!([{"role": "user", "content": "Hi"}]));
        assert_eq!(body["stream"].as_bool().unwrap_or(false), stream, "{body}");
        assert!(body.get("stream_options").is_none(), "{body}");
    }

    let answer = json!({"id": "msg_3", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 30, "output_tokens": 12}});
    mock.set_reply(Reply::body(answer.to_string()));
    run("tool").await;
    let sent = mock.requests();
    assert_eq!(sent.len(), 3);
    let body = sent[2].json();
    assert_eq!(sent[2].uri, "/v1/messages");
    assert_eq!(
        body["tools"],
        json!([{"name": "get_weather", "description": "The weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]),
        "tools in Anthropic's shape"
    );
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": "Weather in Paris?"}])
    );
}
