//! The Responses API (`POST /v1/responses`, what Codex speaks) passed through to a backend that speaks it: the
//! official OpenAI SDK's `responses.create`, plain and streaming, and the usage recorded from the answer's
//! `usage` or the stream's `response.completed` event.

use crate::common;
use crate::common::mock::Reply;
use crate::common::records::{usage_config, wait_rows};
use crate::common::{client, Gateway, Mock};
use serde_json::{json, Value};

fn response(status: &str, with_usage: bool) -> Value {
    let mut r = json!({"id": "resp_1", "object": "response", "created_at": 1700000000, "status": status,
        "model": "codex-m", "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
        "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": "Hi there", "annotations": []}]}]});
    if with_usage {
        r["usage"] = json!({"input_tokens": 5, "input_tokens_details": {"cached_tokens": 2},
            "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 8});
    } else {
        r["output"] = json!([]);
    }
    r
}

/// The event sequence of a streamed response, as the API documents it.
fn frames() -> Vec<String> {
    let item = json!({"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant", "content": []});
    let part = json!({"type": "output_text", "text": "", "annotations": []});
    let events = [
        (
            "response.created",
            json!({"response": response("in_progress", false)}),
        ),
        (
            "response.output_item.added",
            json!({"output_index": 0, "item": item}),
        ),
        (
            "response.content_part.added",
            json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "part": part}),
        ),
        (
            "response.output_text.delta",
            json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Hi"}),
        ),
        (
            "response.output_text.delta",
            json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": " there"}),
        ),
        (
            "response.output_text.done",
            json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "text": "Hi there"}),
        ),
        (
            "response.completed",
            json!({"response": response("completed", true)}),
        ),
    ];
    events
        .into_iter()
        .enumerate()
        .map(|(i, (kind, mut data))| {
            data["type"] = json!(kind);
            data["sequence_number"] = json!(i);
            format!("event: {kind}\ndata: {data}\n\n")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdks_responses_create_works_through_the_gateway_and_is_recorded() {
    let mock = Mock::start("resp").await;
    mock.set_reply(Reply {
        body: Some(response("completed", true).to_string()),
        frames: Some(frames()),
        ..Reply::default()
    });
    let db = tempfile::tempdir().unwrap();
    let cfg = usage_config(
        vec![client("a", &mock.base_url("/v1"), "exact", &["codex-m"])],
        db.path(),
        json!({}),
    );
    let gw = Gateway::start(&cfg).await;
    common::run_python_client(
        "test_responses_sdk.py",
        vec![gw.url("/v1").into(), "codex-m".into()],
    )
    .await;
    let sent = mock.requests();
    assert_eq!(sent.len(), 2);
    for r in &sent {
        assert_eq!(r.uri, "/v1/responses");
    }
    let rows = wait_rows(db.path(), 2).await;
    for row in &rows {
        assert_eq!(row.kind.as_deref(), Some("responses"), "{}", row.dump());
        assert_eq!(row.prompt_tokens, Some(5), "{}", row.dump());
        assert_eq!(row.completion_tokens, Some(3), "{}", row.dump());
        assert_eq!(row.cached_tokens, Some(2), "{}", row.dump());
    }
}
