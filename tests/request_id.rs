//! Request ids: every answer (proxied, local errors, 429s, /health) carries the gateway's own UUIDv7 as
//! `x-request-id`, recorded as `RequestId` with the node's name; a caller's or a backend's id is kept aside.

use crate::common;
use crate::common::records::{usage_config, wait_rows};
use crate::common::{client, http_client, Behavior, Gateway, Mock};
use serde_json::json;

/// The gateway's id from an answer's headers, checked to be a UUIDv7.
fn gateway_id(resp: &reqwest::Response) -> String {
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let parsed = uuid::Uuid::parse_str(&id).unwrap_or_else(|e| panic!("{id:?}: {e}"));
    assert_eq!(parsed.get_version_num(), 7, "{id}");
    assert_eq!(id, parsed.hyphenated().to_string(), "lower-case hyphenated");
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_carries_a_gateway_request_id_recorded_with_the_node() {
    let mock = Mock::start("b").await;
    let answer = json!({"id": "x", "object": "chat.completion", "model": "m1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}});
    mock.set_behavior(Behavior::FailWithHeaders {
        status: 200,
        body: answer.to_string(),
        headers: vec![("x-request-id".into(), "req_backend_1".into())],
    });
    let db = tempfile::tempdir().unwrap();
    let mut backend = client("a", &mock.base_url("/v1"), "exact", &["m1"]);
    backend["api_key"] = json!("sk-backend");
    let mut config = usage_config(vec![backend], db.path(), json!({}));
    config["cluster"] = json!({"node": "gw-test"});
    config["auth"] = json!({"keys": [{"name": "team", "key": "sk-team-0123456789", "rpm": 1}]});
    let gw = Gateway::start(&config).await;
    let chat = json!({"model": "m1", "messages": [{"role": "user", "content": "hello"}]});
    let send = |key: &'static str| {
        http_client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(key)
            .header("x-request-id", "caller-chosen")
            .header("content-type", "application/json")
            .body(chat.to_string())
            .send()
    };

    let ok = send("sk-team-0123456789").await.unwrap();
    assert_eq!(ok.status(), 200);
    let ok_id = gateway_id(&ok);
    assert_eq!(ok.headers()["x-upstream-request-id"], "req_backend_1");
    let limited = send("sk-team-0123456789").await.unwrap();
    assert_eq!(limited.status(), 429);
    let limited_id = gateway_id(&limited);
    let unknown = send("sk-wrong-0123456789").await.unwrap();
    assert_eq!(unknown.status(), 401);
    let unknown_id = gateway_id(&unknown);
    let health = http_client().get(gw.url("/health")).send().await.unwrap();
    let health_id = gateway_id(&health);
    let mut ids = vec![&ok_id, &limited_id, &unknown_id, &health_id];
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "one id per request");
    // The backend saw the caller's id, not the gateway's.
    assert_eq!(
        mock.requests()[0].header("x-request-id"),
        Some("caller-chosen")
    );

    // Both routed requests are recorded (the 429 too: limits are checked once routed), with their ids.
    let rows = wait_rows(db.path(), 2).await;
    assert_eq!(rows[0].request_id.as_deref(), Some(ok_id.as_str()));
    assert_eq!(rows[1].request_id.as_deref(), Some(limited_id.as_str()));
    assert_eq!(rows[1].status, Some(429));
    for row in &rows {
        assert_eq!(row.node.as_deref(), Some("gw-test"));
        assert_eq!(row.headers_json()["x-request-id"], "caller-chosen");
    }
    common::wait_until(std::time::Duration::from_millis(300), || false).await;
    assert_eq!(
        common::records::rows(db.path()).len(),
        2,
        "no record for the 401"
    );
}

/// Without `cluster:`, the node is the host name.
#[tokio::test(flavor = "multi_thread")]
async fn the_node_defaults_to_the_host_name() {
    let mock = Mock::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let config = usage_config(
        vec![client("a", &mock.base_url("/v1"), "exact", &["m1"])],
        db.path(),
        json!({}),
    );
    let gw = Gateway::start(&config).await;
    let url = gw.url("/v1/chat/completions");
    let resp = common::send_json(&url, &common::chat_body("m1"), &[]).await;
    assert_eq!(resp.status(), 200);
    let id = gateway_id(&resp);
    let rows = wait_rows(db.path(), 1).await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(rows[0].node.as_deref(), Some(host.trim()));
    assert_eq!(rows[0].request_id.as_deref(), Some(id.as_str()));
}
