//! What an anthropic backend receives and answers through the gateway: the client's `stop` as
//! `stop_sequences` and its `special_prefix` on the answer (passed through and translated), and thinking
//! blocks it would refuse (unsigned: from an openai backend's reasoning) taken out.

use crate::anthropic::{anthropic_client, anthropic_mock, messages_body, read_all};
use crate::common::{post_with, send_json, Gateway};
use serde_json::{json, Value};

fn rewriting_client(mock: &crate::common::Mock) -> Value {
    anthropic_client(
        mock,
        json!({"stop": ["</s>", "\n"], "special_prefix": "<p>\n"}),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clients_stop_and_prefix_apply_to_a_messages_caller() {
    let mock = anthropic_mock().await;
    let gw = Gateway::start(&crate::common::config(vec![rewriting_client(&mock)])).await;
    let mut body = messages_body(false);
    body["stop_sequences"] = json!(["END"]);
    let r = post_with(&gw, "/v1/messages", &body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["content"][0]["text"], "<p>\nHi there");
    let sent = mock.single().json();
    assert_eq!(
        sent["stop_sequences"],
        json!(["</s>", "END"]),
        "the client's words first; Anthropic refuses a blank one"
    );
    assert_eq!(sent["messages"], body["messages"]);

    let resp = send_json(&gw.url("/v1/messages"), &messages_body(true), &[]).await;
    let text = read_all(resp).await;
    assert!(text.contains(r#""text":"<p>\nHello""#), "{text}");
    assert_eq!(text.matches("<p>").count(), 1, "{text}");
    assert_eq!(mock.requests()[1].json()["stop_sequences"], json!(["</s>"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clients_stop_and_prefix_apply_to_a_translated_chat_caller() {
    let mock = anthropic_mock().await;
    let gw = Gateway::start(&crate::common::config(vec![rewriting_client(&mock)])).await;
    let chat = json!({"model": "claude-x", "stop": ["X", " "],
        "messages": [{"role": "user", "content": "Hi"}]});
    let r = post_with(&gw, "/v1/chat/completions", &chat, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "<p>\nHi there"
    );
    assert_eq!(mock.single().json()["stop_sequences"], json!(["</s>", "X"]));

    let mut stream = chat.clone();
    stream["stream"] = json!(true);
    let resp = send_json(&gw.url("/v1/chat/completions"), &stream, &[]).await;
    let text = read_all(resp).await;
    let content: String = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| {
            let v: Value = serde_json::from_str(d).ok()?;
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content, "<p>\nHello!");
}

/// A conversation an openai backend served first: its reasoning came back as a thinking block with an empty
/// signature.
fn conversation_with_thinking() -> Value {
    json!({"model": "claude-x", "max_tokens": 50, "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "The user greets.", "signature": ""},
            {"type": "text", "text": "Hello"}]},
        {"role": "user", "content": "And now?"}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_thinking_blocks_are_taken_out_for_an_anthropic_backend() {
    let mock = anthropic_mock().await;
    let gw = Gateway::start(&crate::common::config(vec![anthropic_client(
        &mock,
        json!({}),
    )]))
    .await;
    let r = post_with(&gw, "/v1/messages", &conversation_with_thinking(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = mock.single().json();
    assert_eq!(
        sent["messages"][1],
        json!({"role": "assistant", "content": [{"type": "text", "text": "Hello"}]})
    );
    assert_eq!(sent["messages"][2]["content"], "And now?");

    // Signed ones are Anthropic's own: the body goes as received.
    let mut signed = conversation_with_thinking();
    signed["messages"][1]["content"][0]["signature"] = json!("EqQBCkYIBRgC");
    let r = post_with(&gw, "/v1/messages", &signed, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.requests()[1].body, signed.to_string().into_bytes());
}

#[tokio::test(flavor = "multi_thread")]
async fn thinking_blocks_never_reach_an_openai_backend_as_text() {
    let openai = crate::common::Mock::start("oai").await;
    let cfg = crate::common::config(vec![crate::common::client(
        "oai",
        &openai.base_url("/v1"),
        "exact",
        &["claude-x"],
    )]);
    let gw = Gateway::start(&cfg).await;
    let r = post_with(&gw, "/v1/messages", &conversation_with_thinking(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = openai.single().json();
    assert!(!sent.to_string().contains("The user greets."), "{sent}");
    assert_eq!(
        sent["messages"][1],
        json!({"role": "assistant", "content": "Hello"})
    );
}
