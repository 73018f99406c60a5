//! Keep-alives across dialects while a backend pauses mid-stream: a chat backend's SSE comment reaches a
//! Messages caller as `event: ping`, an anthropic backend's `ping` reaches a chat caller as an SSE comment,
//! each while the backend still holds the rest of its answer.

use std::time::Duration;

use crate::anthropic::{anthropic_client, anthropic_frames, messages_body};
use crate::common::mock::{chat_chunk, Reply};
use crate::common::{client, send_json, Gateway, Mock};
use futures_util::StreamExt;
use serde_json::json;

/// Reads the stream until `until` has arrived (the backend is holding the rest), then releases the mock and
/// reads to the end; both parts.
async fn read_around_a_pause(
    resp: reqwest::Response,
    until: &str,
    mock: &Mock,
) -> (String, String) {
    let mut body = resp.bytes_stream();
    let mut before = String::new();
    while !before.contains(until) {
        let piece = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .unwrap_or_else(|_| panic!("{until:?} did not come while the backend paused: {before}"))
            .unwrap()
            .unwrap();
        before.push_str(std::str::from_utf8(&piece).unwrap());
    }
    mock.release();
    let mut after = String::new();
    while let Some(piece) = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("stream stalled")
    {
        after.push_str(std::str::from_utf8(&piece.unwrap()).unwrap());
    }
    (before, after)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chat_backends_keep_alive_reaches_a_messages_caller_as_a_ping() {
    let mock = Mock::start("oai").await;
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        let choices =
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        format!("data: {}\n\n", chat_chunk("claude-x", choices))
    };
    let role = chunk(json!({"role": "assistant", "content": ""}), json!(null));
    mock.set_reply(Reply {
        frames: Some(vec![
            // The backend's first event, then its keep-alive while it thinks; then it pauses.
            format!("{role}: OPENROUTER PROCESSING\n\n"),
            chunk(json!({"content": "Hello"}), json!(null)),
            chunk(json!({}), json!("stop")),
            "data: [DONE]\n\n".into(),
        ]),
        ..Reply::default()
    });
    mock.hold_after_first_event();
    let cfg = crate::common::config(vec![client(
        "oai",
        &mock.base_url("/v1"),
        "exact",
        &["claude-x"],
    )]);
    let gw = Gateway::start(&cfg).await;
    let resp = send_json(&gw.url("/v1/messages"), &messages_body(true), &[]).await;
    let (before, after) = read_around_a_pause(resp, "event: ping\n", &mock).await;
    assert!(before.starts_with("event: message_start\n"), "{before}");
    assert!(
        before.ends_with("event: ping\ndata: {\"type\":\"ping\"}\n\n"),
        "{before}"
    );
    assert!(after.contains("\"text\":\"Hello\""), "{after}");
    assert!(after.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anthropic_ping_reaches_a_chat_caller_as_a_comment() {
    let mock = Mock::start("ant").await;
    let frames = anthropic_frames();
    // message_start, content_block_start and the ping come first; then the backend pauses.
    let mut held = vec![frames[..3].concat()];
    held.extend(frames[3..].iter().cloned());
    assert!(held[0].contains("event: ping"));
    mock.set_reply(Reply {
        frames: Some(held),
        ..Reply::default()
    });
    mock.hold_after_first_event();
    let gw = Gateway::start(&crate::common::config(vec![anthropic_client(
        &mock,
        json!({}),
    )]))
    .await;
    let chat = json!({"model": "claude-x", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
    let resp = send_json(&gw.url("/v1/chat/completions"), &chat, &[]).await;
    let (before, after) = read_around_a_pause(resp, ": ping\n\n", &mock).await;
    assert!(before.starts_with("data: {"), "{before}");
    assert!(before.ends_with("\n\n: ping\n\n"), "{before}");
    assert!(after.contains("\"content\":\"Hello\""), "{after}");
    assert!(after.trim_end().ends_with("data: [DONE]"), "{after}");
}
