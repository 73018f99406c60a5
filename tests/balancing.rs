//! Balancing among clients of equal priority: a conversation stays on the backend that has its prefix cached
//! (affinity), moves once when that backend fails and stays moved; least_busy spreads concurrent requests.

use std::time::Duration;

use crate::common::mock::Reply;
use crate::common::records::{usage_config, wait_exact_rows};
use crate::common::{client, post_with, send_json, Behavior, Gateway, Mock};
use serde_json::{json, Value};

/// `n` mocks, one client each serving `sim`, equal priority, recording into `db`, balanced by `balance`.
async fn pool(n: usize, balance: &str, db: &std::path::Path) -> (Vec<Mock>, Gateway) {
    let mut mocks = Vec::new();
    for i in 0..n {
        mocks.push(Mock::start(&format!("m{i}")).await);
    }
    let clients = mocks
        .iter()
        .map(|m| {
            let mut c = client(&m.name, &m.base_url("/v1"), "exact", &["sim"]);
            c["retry_on"] = json!([500, 502, 503]);
            c
        })
        .collect();
    let mut config = usage_config(clients, db, json!({}));
    config["routing"] = json!({ "balance": balance });
    config["failover"] = json!({ "failure_threshold": 1, "cooldown_seconds": 1 });
    let gw = Gateway::start(&config).await;
    (mocks, gw)
}

fn turn(conversation: &str, n: usize) -> Value {
    let mut messages = vec![json!({ "role": "system", "content": "You are a helpful assistant." })];
    for i in 0..=n {
        messages.push(json!({ "role": "user", "content": format!("turn {i}") }));
    }
    json!({ "model": "sim", "prompt_cache_key": conversation, "messages": messages })
}

/// Which mock answered, by the `x-mock` header the mocks set.
async fn ask(gw: &Gateway, body: &Value) -> String {
    let resp = post_with(gw, "/v1/chat/completions", body, &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.header("x-mock").unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conversation_stays_on_its_backend_moves_once_when_it_fails_and_stays_moved() {
    let db = tempfile::tempdir().unwrap();
    let (mocks, gw) = pool(3, "affinity", db.path()).await;
    let mut served = Vec::new();
    for n in 0..10 {
        served.push(ask(&gw, &turn("conversation-a", n)).await);
    }
    let home = served[0].clone();
    assert!(served.iter().all(|s| *s == home), "{served:?}");
    // Other conversations spread over the pool (rendezvous hashing, not one favourite backend).
    let mut others = std::collections::BTreeSet::new();
    for c in 0..30 {
        others.insert(ask(&gw, &turn(&format!("conversation-{c}"), 0)).await);
    }
    assert_eq!(others.len(), 3, "{others:?}");

    // The home backend fails: the conversation moves to one other backend and stays there, also once
    // the home backend is back.
    let failing = mocks.iter().find(|m| m.name == home).unwrap();
    failing.set_behavior(Behavior::Fail {
        status: 503,
        body: r#"{"error":{"message":"down"}}"#.into(),
    });
    let mut moved = Vec::new();
    for n in 10..15 {
        moved.push(ask(&gw, &turn("conversation-a", n)).await);
    }
    failing.set_behavior(Behavior::Answer);
    // Past the home backend's cooldown: only the remembered move keeps the conversation away from it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in 15..20 {
        moved.push(ask(&gw, &turn("conversation-a", n)).await);
    }
    let new_home = moved[0].clone();
    assert_ne!(new_home, home);
    assert!(moved.iter().all(|s| *s == new_home), "{moved:?}");

    // The record names the conversation by a short hash, never by its key.
    let rows = wait_exact_rows(db.path(), 50).await;
    let key = rows[0].affinity_key.clone().expect("AffinityKey");
    assert_eq!(key.len(), 12, "{key}");
    assert!(key.chars().all(|c| c.is_ascii_hexdigit()), "{key}");
    assert!(rows[..10]
        .iter()
        .all(|r| r.affinity_key.as_deref() == Some(key.as_str())));
    assert!(rows
        .iter()
        .all(|r| r.affinity_key.as_deref() != Some("conversation-a")));
}

#[tokio::test(flavor = "multi_thread")]
async fn least_busy_spreads_concurrent_slow_requests_evenly() {
    let db = tempfile::tempdir().unwrap();
    let (mocks, gw) = pool(4, "least_busy", db.path()).await;
    for m in &mocks {
        m.set_reply(Reply::default());
        m.set_sse(3, Duration::from_millis(150));
    }
    let asks = (0..20).map(|i| stream_once(gw.url("/v1/chat/completions"), i));
    let served = futures_util::future::join_all(asks).await;
    for m in &mocks {
        let n = served.iter().filter(|s| **s == m.name).count();
        assert!((4..=6).contains(&n), "{} got {n}: {served:?}", m.name);
    }
}

/// A stream request to `gw`; returns the mock that answered once the whole answer arrived.
async fn stream_once(url: String, i: usize) -> String {
    let body = json!({ "model": "sim", "stream": true, "messages": [{ "role": "user", "content": format!("q{i}") }] });
    let resp = send_json(&url, &body, &[]).await;
    assert_eq!(resp.status(), 200);
    let mock = resp.headers()["x-mock"].to_str().unwrap().to_string();
    let _ = resp.bytes().await;
    mock
}

#[tokio::test(flavor = "multi_thread")]
async fn least_busy_gives_less_to_a_backend_whose_requests_last_longer() {
    let db = tempfile::tempdir().unwrap();
    let (mocks, gw) = pool(3, "least_busy", db.path()).await;
    // m0 takes 10 x 60 ms per answer, the others 10 x 6 ms.
    for (i, m) in mocks.iter().enumerate() {
        let delay = if i == 0 { 60 } else { 6 };
        m.set_sse(10, Duration::from_millis(delay));
    }
    // Three callers, ten requests each, one after the other: round robin would give each backend 10.
    let callers = (0..3).map(|c| {
        let url = gw.url("/v1/chat/completions");
        async move {
            let mut served = Vec::new();
            for i in 0..10 {
                served.push(stream_once(url.clone(), c * 10 + i).await);
            }
            served
        }
    });
    let served: Vec<String> = futures_util::future::join_all(callers)
        .await
        .into_iter()
        .flatten()
        .collect();
    let slow = served.iter().filter(|s| **s == mocks[0].name).count();
    assert!(slow <= 5, "the slow backend got {slow} of 30: {served:?}");
}
