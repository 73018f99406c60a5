//! `POST /v1/messages/count_tokens` for a model whose first backend is an anthropic one: passed to its
//! count_tokens (key, version, model alias), failing over to the next anthropic backend, and counted by the
//! gateway when every anthropic one failed; recorded with the count as its prompt tokens, at no cost.

use crate::anthropic::anthropic_client;
use crate::common::mock::Reply;
use crate::common::records::{usage_config, wait_one_row};
use crate::common::{client, post_with, Behavior, Gateway, Mock};
use serde_json::{json, Value};

fn overloaded() -> Behavior {
    Behavior::Fail {
        status: 529,
        body:
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                .to_string(),
    }
}

async fn counting_mock(n: u64) -> Mock {
    let mock = Mock::start("ant").await;
    mock.set_reply(Reply::body(json!({ "input_tokens": n }).to_string()));
    mock
}

fn count_body() -> Value {
    json!({"model": "claude-x", "system": "Be brief.",
        "messages": [{"role": "user", "content": "Say hi"}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anthropic_backend_counts_and_the_count_is_recorded() {
    let ant = counting_mock(1234).await;
    let db = tempfile::tempdir().unwrap();
    let extra = json!({"model": "claude-real", "extra_body": {"top_k": 5}, "anthropic_version": "2024-01-01"});
    let mut cfg = usage_config(vec![anthropic_client(&ant, extra)], db.path(), json!({}));
    cfg["pricing"] = json!({"models": {"claude-x": {"input": 3, "output": 15}}});
    let gw = Gateway::start(&cfg).await;
    let r = post_with(&gw, "/v1/messages/count_tokens", &count_body(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"input_tokens": 1234}));
    let sent = ant.single();
    assert_eq!(sent.uri, "/v1/messages/count_tokens");
    assert_eq!(sent.header("x-api-key"), Some("sk-ant-backend-key-77"));
    assert_eq!(sent.header("anthropic-version"), Some("2024-01-01"));
    let mut want = count_body();
    want["model"] = json!("claude-real");
    assert_eq!(
        sent.json(),
        want,
        "the alias, and no extra_body (count_tokens takes none)"
    );

    let row = wait_one_row(db.path()).await;
    assert_eq!(row.kind.as_deref(), Some("count_tokens"));
    assert_eq!(row.status, Some(200));
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens),
        (Some(1234), None)
    );
    assert_eq!(row.backend.as_deref(), Some("ant"));
    assert!(
        row.cost_usd.unwrap_or(0.0) == 0.0,
        "counting is free: {row:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn count_tokens_fails_over_to_the_next_anthropic_backend_then_counts_itself() {
    let first = Mock::start_with("ant1", overloaded()).await;
    let second = counting_mock(77).await;
    let openai = Mock::start("oai").await;
    let b = anthropic_client(&second, json!({"name": "ant2", "priority": 1}));
    let mut c = client("oai", &openai.base_url("/v1"), "exact", &["claude-x"]);
    c["priority"] = json!(2);
    let cfg = crate::common::config(vec![anthropic_client(&first, json!({})), b, c]);
    let gw = Gateway::start(&cfg).await;
    let r = post_with(&gw, "/v1/messages/count_tokens", &count_body(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"input_tokens": 77}));
    assert_eq!((first.count(), second.count()), (1, 1));

    // Every anthropic backend overloaded: the gateway's own count, never an openai backend.
    second.set_behavior(overloaded());
    let r = post_with(&gw, "/v1/messages/count_tokens", &count_body(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let n = r.json()["input_tokens"].as_i64().unwrap();
    assert!((5..100).contains(&n), "{}", r.text());
    assert_eq!((first.count(), second.count()), (2, 2));
    assert_eq!(openai.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_openai_first_candidate_leaves_the_count_to_the_gateway() {
    let ant = counting_mock(5).await;
    let openai = Mock::start("oai").await;
    let mut b = anthropic_client(&ant, json!({}));
    b["priority"] = json!(1);
    let a = client("oai", &openai.base_url("/v1"), "exact", &["claude-x"]);
    let gw = Gateway::start(&crate::common::config(vec![a, b])).await;
    let r = post_with(&gw, "/v1/messages/count_tokens", &count_body(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(r.json()["input_tokens"], 5);
    assert_eq!((ant.count(), openai.count()), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_anthropic_python_sdk_counts_through_an_anthropic_backend() {
    let ant = counting_mock(4321).await;
    let gw = Gateway::start(&crate::common::config(vec![anthropic_client(
        &ant,
        json!({}),
    )]))
    .await;
    crate::common::run_python_script(
        crate::common::python::anthropic_python,
        "test_anthropic_sdk.py",
        vec![
            gw.url("").into(),
            "sk-sdk-caller".into(),
            "claude-x".into(),
            "count".into(),
            "4321".into(),
        ],
    )
    .await;
    let sent = ant.single();
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.uri, "/v1/messages/count_tokens");
    assert_eq!(sent.header("x-api-key"), Some("sk-ant-backend-key-77"));
    assert!(sent.header("anthropic-version").is_some());
    let body = sent.json();
    assert_eq!(body["model"], "claude-x");
    assert_eq!(body["system"], "Be brief.");
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(3), "{body}");
    assert_eq!(body["tools"][0]["name"], "get_weather", "{body}");
    assert!(body["tools"][0]["input_schema"].is_object(), "{body}");
}
