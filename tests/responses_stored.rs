//! Requests about a stored response (`GET`/`DELETE /v1/responses/{id}`, `GET .../input_items`, `POST
//! .../cancel`): routed to the client whose backend served that response, known from the answers the gateway
//! passed on; a 404 in OpenAI's shape for an id it does not know, one it made itself (translated), or one of
//! a model the caller's key may not use.

use crate::common::mock::Reply;
use crate::common::records::{usage_config, wait_rows};
use crate::common::{client, http_client, post_with, Behavior, Gateway, Mock, Resp};
use serde_json::{json, Value};

fn stored(id: &str) -> Value {
    json!({"id": id, "object": "response", "created_at": 1700000000, "status": "completed", "model": "m",
        "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": "Hi", "annotations": []}]}],
        "usage": {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}})
}

/// A stream whose `response.created` names `id`.
fn frames(id: &str) -> Vec<String> {
    let mut created = stored(id);
    created["status"] = json!("in_progress");
    created["output"] = json!([]);
    created.as_object_mut().unwrap().remove("usage");
    [
        ("response.created", json!({"response": created})),
        ("response.completed", json!({"response": stored(id)})),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (kind, mut data))| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(i);
        format!("event: {kind}\ndata: {data}\n\n")
    })
    .collect()
}

/// A mock backend that stores responses: every answer (and every stream) is about `id`.
async fn backend(name: &str, id: &str) -> Mock {
    let mock = Mock::start(name).await;
    mock.set_reply(Reply {
        body: Some(stored(id).to_string()),
        frames: Some(frames(id)),
        ..Reply::default()
    });
    mock
}

async fn call(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http_client().request(method, gw.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    Resp::read(req.send().await.unwrap()).await
}

fn create(model: &str, stream: bool) -> Value {
    json!({"model": model, "input": "Say hi", "stream": stream})
}

/// A 404 `response_not_found` whose message says `why`.
fn assert_not_found(r: &Resp, why: &str) {
    let e = r.expect_error(404);
    assert_eq!(e["code"], "response_not_found", "{e:?}");
    assert_eq!(e["type"], "invalid_request_error");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains(why), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_about_a_response_reach_the_client_that_served_it() {
    let (a, b) = (backend("a", "resp_a").await, backend("b", "resp_b-1").await);
    let db = tempfile::tempdir().unwrap();
    let clients = vec![
        client("a", &a.base_url("/v1"), "exact", &["m1"]),
        client("b", &b.base_url("/v1"), "exact", &["m2"]),
    ];
    let gw = Gateway::start(&usage_config(clients, db.path(), json!({}))).await;
    // One response made by a stream (its id in `response.created`), one by a JSON answer.
    let r = post_with(&gw, "/v1/responses", &create("m1", true), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_with(&gw, "/v1/responses", &create("m2", false), &[]).await;
    assert_eq!(r.json()["id"], "resp_b-1");

    let r = call(&gw, "GET", "/v1/responses/resp_a", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "resp_a");
    let r = call(&gw, "GET", "/v1/responses/resp_a/input_items?limit=5", &[]).await;
    assert_eq!(r.status, 200);
    let r = call(&gw, "POST", "/v1/responses/resp_a/cancel", &[]).await;
    assert_eq!(r.status, 200);
    let r = call(&gw, "GET", "/v1/responses/resp_b-1", &[]).await;
    assert_eq!(r.status, 200);
    let r = call(&gw, "DELETE", "/v1/responses/resp_b-1", &[]).await;
    assert_eq!(r.status, 200);

    let seen = |m: &Mock| -> Vec<(String, String)> {
        m.requests()
            .into_iter()
            .map(|r| (r.method, r.uri))
            .collect()
    };
    let s = |m: &str, u: &str| (m.to_owned(), u.to_owned());
    assert_eq!(
        seen(&a),
        [
            s("POST", "/v1/responses"),
            s("GET", "/v1/responses/resp_a"),
            s("GET", "/v1/responses/resp_a/input_items?limit=5"),
            s("POST", "/v1/responses/resp_a/cancel"),
        ]
    );
    assert_eq!(
        seen(&b),
        [
            s("POST", "/v1/responses"),
            s("GET", "/v1/responses/resp_b-1"),
            s("DELETE", "/v1/responses/resp_b-1"),
        ]
    );
    // Deleted at its backend: forgotten. Never known: the same 404, and no backend asked.
    assert_not_found(
        &call(&gw, "GET", "/v1/responses/resp_b-1", &[]).await,
        "passed on no response",
    );
    assert_not_found(
        &call(&gw, "GET", "/v1/responses/resp_unknown", &[]).await,
        "passed on no response",
    );
    assert_not_found(
        &call(&gw, "DELETE", "/responses/resp_unknown", &[]).await,
        "passed on no response",
    );
    assert_eq!((a.count(), b.count()), (4, 3));
    let r = call(&gw, "PUT", "/v1/responses/resp_a", &[]).await;
    assert_eq!(r.expect_error(405)["code"], "method_not_allowed");

    // Records: the two creations with their usage, the others `responses_get` without (no tokens twice).
    let rows = wait_rows(db.path(), 10).await;
    let gets: Vec<_> = rows
        .iter()
        .filter(|r| r.kind.as_deref() == Some("responses_get"))
        .collect();
    assert_eq!(gets.len(), 8, "{rows:?}");
    for row in &gets {
        assert_eq!(row.prompt_tokens, None, "{}", row.dump());
        assert_eq!(row.usage_estimated.unwrap_or(0), 0, "{}", row.dump());
    }
    assert_eq!(gets.iter().filter(|r| r.status == Some(404)).count(), 3);
    let made: Vec<_> = rows
        .iter()
        .filter(|r| r.kind.as_deref() == Some("responses"))
        .collect();
    assert_eq!(made.len(), 2);
    assert!(made.iter().all(|r| r.prompt_tokens == Some(5)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_the_gateway_translated_is_a_404_that_says_why() {
    let mock = Mock::start("chat").await;
    let mut c = client("a", &mock.base_url("/v1"), "exact", &["m1"]);
    c["responses"] = json!("translate");
    let gw = Gateway::start(&crate::common::config(vec![c])).await;
    let r = post_with(&gw, "/v1/responses", &create("m1", false), &[]).await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = call(&gw, "GET", &format!("/v1/responses/{id}"), &[]).await;
    assert_not_found(&r, "translated by the gateway");
    // Streamed: its id is known from the first event.
    let r = post_with(&gw, "/v1/responses", &create("m1", true), &[]).await;
    let created = r.text();
    let data = created
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    let id: Value = serde_json::from_str(data).unwrap();
    let id = id["response"]["id"].as_str().unwrap();
    let r = call(&gw, "POST", &format!("/v1/responses/{id}/cancel"), &[]).await;
    assert_not_found(&r, "translated by the gateway");
    assert_eq!(mock.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_learns_nothing_of_a_response_of_a_model_it_may_not_use() {
    let mock = backend("a", "resp_secret").await;
    let mut c = client("a", &mock.base_url("/v1"), "exact", &["m1", "m2"]);
    c["api_key"] = json!("sk-backend-own-key-1");
    let keys = json!([
        {"name": "one", "key": "sk-gw-key-one-00001", "models": ["m1"]},
        {"name": "two", "key": "sk-gw-key-two-00002", "models": ["m2"]},
    ]);
    let gw = Gateway::start(&json!({"openai_clients": [c], "auth": {"keys": keys}})).await;
    let one = [("authorization", "Bearer sk-gw-key-one-00001")];
    let two = [("authorization", "Bearer sk-gw-key-two-00002")];
    let r = post_with(&gw, "/v1/responses", &create("m1", false), &one).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let other = call(&gw, "GET", "/v1/responses/resp_secret", &two).await;
    let unknown = call(&gw, "GET", "/v1/responses/resp_nothing", &two).await;
    assert_not_found(&other, "passed on no response");
    assert_eq!(
        other.json()["error"]["message"]
            .as_str()
            .unwrap()
            .replace("resp_secret", "X"),
        unknown.json()["error"]["message"]
            .as_str()
            .unwrap()
            .replace("resp_nothing", "X"),
        "not found and not allowed read the same"
    );
    assert_eq!(
        call(&gw, "GET", "/v1/responses/resp_secret", &[])
            .await
            .status,
        401
    );
    let r = call(&gw, "GET", "/v1/responses/resp_secret", &one).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = mock.requests();
    assert_eq!(sent.len(), 2);
    // The backend gets the client's key, never the caller's gateway key.
    assert_eq!(
        sent[1].header("authorization"),
        Some("Bearer sk-backend-own-key-1")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_that_continues_another_goes_first_to_the_client_that_served_it() {
    let (a, b) = (backend("a", "resp_a").await, backend("b", "resp_b").await);
    let mut cb = client("b", &b.base_url("/v1"), "exact", &["m1"]);
    cb["priority"] = json!(1);
    let ca = client("a", &a.base_url("/v1"), "exact", &["m1"]);
    let gw = Gateway::start(&crate::common::config(vec![ca, cb])).await;
    // The first response is made by b, a having failed.
    a.set_behavior(Behavior::FailFirst {
        n: 1,
        status: 500,
        body: json!({"error": {"message": "down"}}).to_string(),
    });
    let r = post_with(&gw, "/v1/responses", &create("m1", false), &[]).await;
    assert_eq!(r.json()["id"], "resp_b");
    let mut next = create("m1", false);
    next["previous_response_id"] = json!("resp_b");
    let r = post_with(&gw, "/v1/responses", &next, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (a.count(), b.count()),
        (1, 2),
        "b, not a, got the continuation"
    );
    assert_eq!(b.requests()[1].json(), next);
    // One that continues nothing known follows the usual order.
    next["previous_response_id"] = json!("resp_elsewhere");
    post_with(&gw, "/v1/responses", &next, &[]).await;
    assert_eq!((a.count(), b.count()), (2, 2));
}
