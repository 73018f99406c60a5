//! Routing and forwarding: model matching, priority, round robin, upstream URL, headers, `${VAR}` keys, /v1/models, /health.

use crate::common;
use crate::common::{
    chat_body, client, config, get, http_client, post_json, raw_http, Gateway, Mock,
};
use serde_json::{json, Value};

/// Which mock answered a response (the mock tags every answer with `x-mock`).
fn answered_by(resp: &common::Resp) -> String {
    resp.header("x-mock").unwrap_or("<none>").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_and_keyword_routing() {
    let exact = Mock::start("exact").await;
    let keyword = Mock::start("keyword").await;
    let mut kw = client("kw", &keyword.base_url("/v1"), "keyword", &[]);
    kw["model_match"]["value"] = json!("claude"); // a single string is allowed
    let gw = Gateway::start(&config(vec![
        client("ex", &exact.base_url("/v1"), "exact", &["m-one", "m-two"]),
        kw,
    ]))
    .await;

    for (model, want) in [
        ("m-one", "exact"),
        ("m-two", "exact"),
        ("claude-3-opus", "keyword"),
        ("my-claude", "keyword"),
    ] {
        let r = post_json(&gw, "/v1/chat/completions", &chat_body(model)).await;
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        assert_eq!(answered_by(&r), want, "model {model}");
        assert_eq!(r.json()["model"], model);
    }
    // Exact means exact: a longer name does not match.
    let r = post_json(&gw, "/v1/chat/completions", &chat_body("m-one-x")).await;
    assert_eq!(r.status, 404, "{}", r.text());

    assert_eq!(exact.count(), 2);
    assert_eq!(keyword.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn priority_lowest_first() {
    let first = Mock::start("first").await;
    let second = Mock::start("second").await;
    let mut c2 = client("second", &second.base_url("/v1"), "keyword", &["gpt"]);
    c2["priority"] = json!(2);
    let mut c1 = client("first", &first.base_url("/v1"), "exact", &["gpt-4o"]);
    c1["priority"] = json!(1);
    // Listed in the "wrong" order on purpose: priority decides, not file order.
    let gw = Gateway::start(&config(vec![c2, c1])).await;

    for _ in 0..4 {
        let r = post_json(&gw, "/v1/chat/completions", &chat_body("gpt-4o")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(answered_by(&r), "first");
    }
    // Only the lower-priority client matches this one.
    let r = post_json(&gw, "/v1/chat/completions", &chat_body("gpt-4o-mini")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(answered_by(&r), "second");

    assert_eq!(first.count(), 4);
    assert_eq!(second.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_equal_priority_alternates() {
    let a = Mock::start("a").await;
    let b = Mock::start("b").await;
    let gw = Gateway::start(&config(vec![
        client("a", &a.base_url("/v1"), "exact", &["m"]),
        client("b", &b.base_url("/v1"), "exact", &["m"]),
    ]))
    .await;

    let mut order = Vec::new();
    for _ in 0..6 {
        let r = post_json(&gw, "/v1/chat/completions", &chat_body("m")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        order.push(answered_by(&r));
    }
    for w in order.windows(2) {
        assert_ne!(w[0], w[1], "equal weights must alternate: {order:?}");
    }
    assert_eq!(a.count(), 3);
    assert_eq!(b.count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_weights_two_to_one() {
    let heavy = Mock::start("heavy").await;
    let light = Mock::start("light").await;
    let mut h = client("heavy", &heavy.base_url("/v1"), "exact", &["m"]);
    h["weight"] = json!(2);
    let gw = Gateway::start(&config(vec![
        h,
        client("light", &light.base_url("/v1"), "exact", &["m"]),
    ]))
    .await;

    for _ in 0..30 {
        let r = post_json(&gw, "/v1/chat/completions", &chat_body("m")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(heavy.count(), 20, "weight 2 of 3");
    assert_eq!(light.count(), 10, "weight 1 of 3");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_path_joining_and_query() {
    let with_v1 = Mock::start("with_v1").await;
    let bare = Mock::start("bare").await;
    let prefixed = Mock::start("prefixed").await;
    let gw = Gateway::start(&config(vec![
        client("with_v1", &with_v1.base_url("/v1"), "exact", &["v1"]),
        client("bare", &bare.base_url(""), "exact", &["bare"]),
        client(
            "prefixed",
            &prefixed.base_url("/api/openai"),
            "exact",
            &["pre"],
        ),
        client(
            "azure",
            &prefixed.base_url("/openai/deployments/d1?api-version=2024-10-21"),
            "exact",
            &["az"],
        ),
    ]))
    .await;

    let cases = [
        (
            "v1",
            "/v1/chat/completions",
            &with_v1,
            "/v1/chat/completions",
        ),
        ("v1", "/chat/completions", &with_v1, "/v1/chat/completions"),
        ("v1", "/v1/completions", &with_v1, "/v1/completions"),
        ("v1", "/v1/embeddings", &with_v1, "/v1/embeddings"),
        (
            "v1",
            "/v1/chat/completions?api-version=2024-02-01&x=1",
            &with_v1,
            "/v1/chat/completions?api-version=2024-02-01&x=1",
        ),
        (
            "v1",
            "/v1/some/other/thing?q=a%20b",
            &with_v1,
            "/v1/some/other/thing?q=a%20b",
        ),
        ("bare", "/v1/chat/completions", &bare, "/chat/completions"),
        ("bare", "/chat/completions", &bare, "/chat/completions"),
        ("bare", "/v1/embeddings?k=v", &bare, "/embeddings?k=v"),
        (
            "pre",
            "/v1/chat/completions",
            &prefixed,
            "/api/openai/chat/completions",
        ),
        (
            "az",
            "/v1/chat/completions",
            &prefixed,
            "/openai/deployments/d1/chat/completions?api-version=2024-10-21",
        ),
        (
            "az",
            "/v1/chat/completions?x=1&api-version=2025-01-01",
            &prefixed,
            "/openai/deployments/d1/chat/completions?x=1&api-version=2025-01-01",
        ),
    ];
    for (model, path, mock, want) in cases {
        let before = mock.count();
        let r = post_json(&gw, path, &chat_body(model)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(
            mock.count(),
            before + 1,
            "{path} should reach {}",
            mock.name
        );
        let got = mock.requests().last().unwrap().clone();
        assert_eq!(got.method, "POST");
        assert_eq!(got.uri, want, "request path {path}");
    }
    assert_eq!(with_v1.count(), 6);
    assert_eq!(bare.count(), 3);
    assert_eq!(prefixed.count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_key_replaces_caller_authorization() {
    let mock = Mock::start("m").await;
    let mut c = client("keyed", &mock.base_url("/v1"), "exact", &["m"]);
    c["api_key"] = json!("sk-config-key");
    let gw = Gateway::start(&config(vec![c])).await;

    let resp = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", "Bearer sk-caller")
        .body(serde_json::to_vec(&chat_body("m")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = mock.single();
    assert_eq!(
        got.header_all("authorization"),
        vec!["Bearer sk-config-key"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_or_absent_api_key_passes_caller_authorization() {
    let absent = Mock::start("absent").await;
    let empty = Mock::start("empty").await;
    let mut e = client("empty", &empty.base_url("/v1"), "exact", &["e"]);
    e["api_key"] = json!("");
    let gw = Gateway::start(&config(vec![
        client("absent", &absent.base_url("/v1"), "exact", &["a"]),
        e,
    ]))
    .await;

    for model in ["a", "e"] {
        let resp = http_client()
            .post(gw.url("/v1/chat/completions"))
            .header("authorization", "Bearer sk-caller-123")
            .body(serde_json::to_vec(&chat_body(model)).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(
        absent.single().header_all("authorization"),
        vec!["Bearer sk-caller-123"]
    );
    assert_eq!(
        empty.single().header_all("authorization"),
        vec!["Bearer sk-caller-123"]
    );

    // No key anywhere: no Authorization upstream.
    let r = post_json(&gw, "/v1/chat/completions", &chat_body("a")).await;
    assert_eq!(r.status, 200);
    assert_eq!(absent.count(), 2);
    assert!(absent.requests()[1].header("authorization").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn env_var_api_key_expanded() {
    let mock = Mock::start("m").await;
    let var = "GPT_API_TEST_KEY_ROUTING_1";
    let mut c = client("envkey", &mock.base_url("/v1"), "exact", &["m"]);
    c["api_key"] = json!(format!("${{{var}}}"));
    let gw = Gateway::builder(&config(vec![c]))
        .env(var, "sk-from-env")
        .start()
        .await;

    let r = post_json(&gw, "/v1/chat/completions", &chat_body("m")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        mock.single().header_all("authorization"),
        vec!["Bearer sk-from-env"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn env_var_default_used_when_unset() {
    let mock = Mock::start("m").await;
    let var = "GPT_API_TEST_UNSET_ROUTING_2";
    let mut c = client("envdefault", &mock.base_url("/v1"), "exact", &["m"]);
    c["api_key"] = json!(format!("${{{var}:-sk-default}}"));
    let gw = Gateway::builder(&config(vec![c]))
        .env_remove(var)
        .start()
        .await;

    let r = post_json(&gw, "/v1/chat/completions", &chat_body("m")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        mock.single().header_all("authorization"),
        vec!["Bearer sk-default"]
    );
}

#[test]
fn env_var_unset_without_default_fails_check() {
    let var = "GPT_API_TEST_UNSET_ROUTING_3";
    let mut c = client("envmissing", "http://127.0.0.1:9/v1", "exact", &["m"]);
    c["api_key"] = json!(format!("${{{var}}}"));
    let yaml = common::to_yaml(&config(vec![c]));

    let out = common::check(&yaml, &[], &[var]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(var),
        "stderr should name {var}: {}",
        out.stderr
    );

    let out = common::check(&yaml, &[(var, "sk-x")], &[]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_host_xff_extra_and_custom() {
    let mock = Mock::start("m").await;
    let mut c = client("h", &mock.base_url("/v1"), "exact", &["m"]);
    c["headers"] = json!({ "x-extra": "v", "OpenAI-Organization": "org-1" });
    let gw = Gateway::start(&config(vec![c])).await;

    let resp = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-custom", "1")
        .header("user-agent", "routing-test/1")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&chat_body("m")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let got = mock.single();
    assert_eq!(got.header_all("x-extra"), vec!["v"]);
    assert_eq!(got.header_all("openai-organization"), vec!["org-1"]);
    assert_eq!(got.header_all("x-custom"), vec!["1"]);
    assert_eq!(got.header("user-agent"), Some("routing-test/1"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header_all("host"), vec![mock.addr.to_string()]);
    assert_eq!(xff_chain(&got), vec!["127.0.0.1"]);
}

/// X-Forwarded-For values, all header lines joined, split on commas.
fn xff_chain(r: &common::Recorded) -> Vec<String> {
    r.header_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn x_forwarded_for_appends_caller() {
    let mock = Mock::start("m").await;
    // A trusted proxy's list is appended to; anyone else's is replaced (tests/security.rs).
    let mut cfg = config(vec![client("h", &mock.base_url("/v1"), "exact", &["m"])]);
    cfg["server"] = json!({ "trusted_proxies": ["127.0.0.1"] });
    let gw = Gateway::start(&cfg).await;

    let resp = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-forwarded-for", "10.1.2.3")
        .body(serde_json::to_vec(&chat_body("m")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(xff_chain(&mock.single()), vec!["10.1.2.3", "127.0.0.1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_stripped() {
    let mock = Mock::start("m").await;
    let gw = Gateway::start(&config(vec![client(
        "h",
        &mock.base_url("/v1"),
        "exact",
        &["m"],
    )]))
    .await;

    let body = serde_json::to_vec(&chat_body("m")).unwrap();
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close, x-hop-secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
         Proxy-Connection: keep-alive\r\nX-Hop-Secret: drop-me\r\nX-Custom: 1\r\n\r\n",
        gw.port,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let resp = raw_http(gw.addr(), req).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));

    let got = mock.single();
    for h in [
        "keep-alive",
        "te",
        "proxy-connection",
        "x-hop-secret",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(
            got.header(h).is_none(),
            "{h} must not be forwarded: {:?}",
            got.headers
        );
    }
    // A Connection header upstream may only be the proxy's own, never naming the caller's tokens.
    for v in got.header_all("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-hop-secret"),
            "caller Connection forwarded: {v}"
        );
    }
    assert_eq!(got.header_all("x-custom"), vec!["1"]);
    assert_eq!(
        got.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(got.body, body);
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_header_not_forwarded() {
    let mock = Mock::start("m").await;
    let gw = Gateway::start(&config(vec![client(
        "h",
        &mock.base_url("/v1"),
        "exact",
        &["m"],
    )]))
    .await;

    let body = serde_json::to_vec(&chat_body("m")).unwrap();
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\nUpgrade: h2c\r\n\r\n",
        gw.port,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let resp = raw_http(gw.addr(), req).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let got = mock.single();
    assert!(
        got.header("upgrade").is_none(),
        "Upgrade forwarded: {:?}",
        got.headers
    );
    assert_eq!(got.body, body);
}

#[tokio::test(flavor = "multi_thread")]
async fn models_list_exact_values_deduplicated() {
    let mock = Mock::start("m").await;
    let gw = Gateway::start(&config(vec![
        client("a", &mock.base_url("/v1"), "exact", &["m1", "m2"]),
        client("b", &mock.base_url("/v1"), "exact", &["m2", "m3"]),
        client("c", &mock.base_url("/v1"), "keyword", &["gpt"]),
    ]))
    .await;

    for path in ["/v1/models", "/models"] {
        let r = get(&gw, path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(r
            .header("content-type")
            .unwrap_or("")
            .starts_with("application/json"));
        let v = r.json();
        assert_eq!(v["object"], "list");
        let data = v["data"].as_array().expect("data array");
        let mut ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
        ids.sort();
        assert_eq!(ids, vec!["m1", "m2", "m3"], "{path}: {v}");
        for m in data {
            assert_eq!(m["object"], "model");
            assert!(
                m["created"].is_i64() || m["created"].is_u64(),
                "created must be an integer: {m}"
            );
            let owner = m["owned_by"].as_str().unwrap();
            match m["id"].as_str().unwrap() {
                "m1" => assert_eq!(owner, "a"),
                "m3" => assert_eq!(owner, "b"),
                _ => assert!(owner == "a" || owner == "b", "{m}"),
            }
        }
    }
    assert_eq!(mock.count(), 0, "the models list is answered locally");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_ok() {
    let mock = Mock::start("m").await;
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["m1"],
    )]))
    .await;
    let r = get(&gw, "/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"status": "ok"}));
    assert_eq!(mock.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn response_passes_through_unchanged() {
    let mock = Mock::start("m").await;
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["m1"],
    )]))
    .await;
    let r = post_json(&gw, "/v1/chat/completions", &chat_body("m1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-mock"), Some("m"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let want = Mock::answer_json("m1").to_string();
    assert_eq!(
        r.text(),
        want,
        "body must be byte-identical to the backend's"
    );
    let _: Value = r.json();
    assert_eq!(mock.count(), 1);
}
