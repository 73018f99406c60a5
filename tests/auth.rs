//! Gateway keys (`auth:`): 401 without a right key (in any of the three headers), keys revoked by a reload,
//! per-key model lists (403), rpm and tpm limits (429 with OpenAI's headers), the gateway key never forwarded,
//! `/v1/models` filtered per key, `/health` open, the key's name (never the key) in the record and the access
//! log, and `--check` refusing a keyless client.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::common;
use crate::common::records::{files, usage_config, wait_exact_rows, wait_rows};
use crate::common::reload::reloaded;
use crate::common::{
    chat_body, check, client, http_client, post_with, Behavior, Gateway, Mock, Resp,
};
use serde_json::{json, Value};

const RELOAD_WAIT: Duration = Duration::from_secs(10);
/// The backend's own key, configured as the client's `api_key`.
const BACKEND_KEY: &str = "sk-backend-own-key-5150";

/// A client for these exact models with its own `api_key` (required with auth on).
fn keyed_client(name: &str, mock: &Mock, models: &[&str]) -> Value {
    let mut c = client(name, &mock.base_url("/v1"), "exact", models);
    c["api_key"] = json!(BACKEND_KEY);
    c
}

/// A config with these clients and `auth.keys`.
fn auth_config(clients: Vec<Value>, keys: Vec<Value>) -> Value {
    json!({ "openai_clients": clients, "auth": { "keys": keys } })
}

fn key(name: &str, key: &str) -> Value {
    json!({ "name": name, "key": key })
}

async fn chat_with(gw: &Gateway, model: &str, headers: &[(&str, &str)]) -> Resp {
    post_with(gw, "/v1/chat/completions", &chat_body(model), headers).await
}

async fn get_with(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = http_client().get(gw.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} failed: {e:?}"));
    Resp::read(resp).await
}

/// `Authorization: Bearer <key>` as a header pair (the value lives as long as the test's string).
fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// Asserts the exact 401 the gateway answers for a missing or wrong key.
fn assert_invalid_key(r: &Resp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    let err = r.expect_error(401);
    assert_eq!(
        err["type"],
        json!("invalid_request_error"),
        "{what}: {}",
        r.text()
    );
    assert_eq!(
        err["code"],
        json!("invalid_api_key"),
        "{what}: {}",
        r.text()
    );
    assert_eq!(err["param"], Value::Null, "{what}: {}", r.text());
    let v = r.json();
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["error"],
        "{what}: only `error` at the top: {v}"
    );
}

fn assert_model_not_allowed(r: &Resp, model: &str) {
    let err = r.expect_error(403);
    assert_eq!(
        err["code"],
        json!("model_not_allowed"),
        "{model}: {}",
        r.text()
    );
    assert_eq!(err["param"], json!("model"), "{model}: {}", r.text());
    assert!(
        err["message"].as_str().unwrap().contains(model),
        "the message names {model}: {}",
        r.text()
    );
}

/// The models the mock was asked for, in order (chat requests only).
fn models_sent(mock: &Mock) -> Vec<String> {
    mock.requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.json()["model"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_key_or_a_wrong_key_is_401_and_each_header_form_is_accepted() {
    let mock = Mock::start("b").await;
    let config = auth_config(
        vec![keyed_client("a", &mock, &["m1"])],
        vec![
            key("team", "sk-gw-team-0001"),
            key("env", "${GPT_API_TEST_GATEWAY_KEY}"),
        ],
    );
    let gw = Gateway::builder(&config)
        .env("GPT_API_TEST_GATEWAY_KEY", "sk-gw-from-env-0002")
        .start()
        .await;

    let wrong: [(&str, &[(&str, &str)]); 9] = [
        ("no key", &[]),
        (
            "wrong bearer",
            &[("authorization", "Bearer sk-gw-team-000")],
        ),
        (
            "longer bearer",
            &[("authorization", "Bearer sk-gw-team-00011")],
        ),
        ("no scheme", &[("authorization", "sk-gw-team-0001")]),
        (
            "basic scheme",
            &[("authorization", "Basic sk-gw-team-0001")],
        ),
        ("empty bearer", &[("authorization", "Bearer ")]),
        ("wrong api-key", &[("api-key", "sk-nope")]),
        ("wrong x-api-key", &[("x-api-key", "SK-GW-TEAM-0001")]),
        (
            "the ${VAR} text itself",
            &[("authorization", "Bearer ${GPT_API_TEST_GATEWAY_KEY}")],
        ),
    ];
    for (what, headers) in wrong {
        assert_invalid_key(&chat_with(&gw, "m1", headers).await, what);
    }
    assert_invalid_key(
        &get_with(&gw, "/v1/models", &[]).await,
        "GET /v1/models, no key",
    );
    assert_invalid_key(
        &post_with(
            &gw,
            "/v1/embeddings",
            &json!({"model": "m1", "input": "x"}),
            &[],
        )
        .await,
        "embeddings, no key",
    );
    assert_eq!(mock.count(), 0, "a refused request reaches no backend");

    let team = bearer("sk-gw-team-0001");
    let right: [(&str, &[(&str, &str)]); 5] = [
        ("bearer", &[("authorization", team.as_str())]),
        (
            "lower-case scheme",
            &[("authorization", "bearer sk-gw-team-0001")],
        ),
        ("api-key", &[("api-key", "sk-gw-team-0001")]),
        ("x-api-key", &[("x-api-key", "sk-gw-team-0001")]),
        (
            "key from ${VAR}",
            &[("authorization", "Bearer sk-gw-from-env-0002")],
        ),
    ];
    for (what, headers) in right {
        let r = chat_with(&gw, "m1", headers).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(r.json()["model"], json!("m1"), "{what}");
    }
    assert_eq!(mock.count(), right.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_auth_section_the_gateway_is_open_and_warns() {
    let mock = Mock::start("b").await;
    let gw = Gateway::builder(
        &json!({ "openai_clients": [client("a", &mock.base_url("/v1"), "exact", &["m1"])] }),
    )
    .log_level("warn")
    .start()
    .await;
    let r = chat_with(&gw, "m1", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let log = gw.log();
    assert!(
        log.contains("WARN") && log.contains("no auth section"),
        "an open gateway warns at start:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_removed_by_a_reload_is_refused() {
    let mock = Mock::start("b").await;
    let clients = vec![keyed_client("a", &mock, &["m1"])];
    let both = auth_config(
        clients.clone(),
        vec![key("team", "sk-gw-team-1001"), key("ci", "sk-gw-ci-1002")],
    );
    let gw = Gateway::builder(&both).log_level("info").start().await;
    let team = bearer("sk-gw-team-1001");
    let ci = bearer("sk-gw-ci-1002");
    for k in [&team, &ci] {
        let r = chat_with(&gw, "m1", &[("authorization", k)]).await;
        assert_eq!(r.status, 200, "{k}: {}", r.text());
    }

    let done = reloaded("file changed");
    let before = gw.log_count(&done);
    gw.rewrite_config(&auth_config(clients, vec![key("team", "sk-gw-team-1001")]));
    gw.wait_log(&done, before + 1, RELOAD_WAIT).await;

    assert_invalid_key(
        &chat_with(&gw, "m1", &[("authorization", &ci)]).await,
        "revoked key",
    );
    assert_invalid_key(
        &chat_with(&gw, "m1", &[("x-api-key", "sk-gw-ci-1002")]).await,
        "revoked key in x-api-key",
    );
    assert_invalid_key(
        &get_with(&gw, "/v1/models", &[("authorization", &ci)]).await,
        "revoked key on /v1/models",
    );
    let r = chat_with(&gw, "m1", &[("authorization", &team)]).await;
    assert_eq!(r.status, 200, "the kept key still works: {}", r.text());
    assert_eq!(
        mock.count(),
        3,
        "the revoked key's requests reached no backend"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_outside_the_keys_list_is_403_and_reaches_no_backend() {
    let mock = Mock::start("b").await;
    let models = [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4",
        "gpt-3.5-turbo",
        "m-exact",
        "m-exact-2",
    ];
    let keys = vec![
        json!({ "name": "pattern", "key": "sk-gw-pattern-2001", "models": ["gpt-4*"] }),
        json!({ "name": "exact", "key": "sk-gw-exact-2002", "models": ["m-exact"] }),
        json!({ "name": "both", "key": "sk-gw-both-2003", "models": ["m-exact", "*-mini"] }),
    ];
    let gw = Gateway::start(&auth_config(vec![keyed_client("a", &mock, &models)], keys)).await;

    // key, model, allowed
    let cases = [
        ("sk-gw-pattern-2001", "gpt-4o", true),
        ("sk-gw-pattern-2001", "gpt-4", true),
        ("sk-gw-pattern-2001", "gpt-4o-mini", true),
        ("sk-gw-pattern-2001", "gpt-3.5-turbo", false),
        ("sk-gw-pattern-2001", "m-exact", false),
        ("sk-gw-exact-2002", "m-exact", true),
        ("sk-gw-exact-2002", "m-exact-2", false),
        ("sk-gw-exact-2002", "gpt-4o", false),
        // Refused before routing: not even a 404 tells the key about a model it may not use.
        ("sk-gw-exact-2002", "m-unrouted", false),
        ("sk-gw-both-2003", "m-exact", true),
        ("sk-gw-both-2003", "gpt-4o-mini", true),
        ("sk-gw-both-2003", "gpt-4o", false),
    ];
    let mut expected = Vec::new();
    for (k, model, allowed) in cases {
        let r = chat_with(&gw, model, &[("authorization", &bearer(k))]).await;
        if allowed {
            assert_eq!(r.status, 200, "{k} {model}: {}", r.text());
            expected.push(model.to_string());
        } else {
            assert_model_not_allowed(&r, model);
        }
    }
    assert_eq!(
        models_sent(&mock),
        expected,
        "only allowed models reach the backend"
    );
}

/// `x-ratelimit-reset-*` values: Go durations such as `59.5s`, `1m0s`, `250ms`; returns milliseconds.
fn go_duration_ms(text: &str) -> u64 {
    if let Some(ms) = text.strip_suffix("ms") {
        return ms
            .parse()
            .unwrap_or_else(|_| panic!("bad duration {text:?}"));
    }
    let (minutes, rest) = match text.split_once('m') {
        Some((m, rest)) => (m.parse::<u64>().unwrap(), rest),
        None => (0, text),
    };
    let secs: f64 = rest
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad duration {text:?}"));
    minutes * 60_000 + (secs * 1000.0).round() as u64
}

/// Retry-After as whole seconds in 1..=60 (the limiter's window is 60 s).
fn retry_after_secs(r: &Resp) -> u64 {
    let value = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {:?}", r.headers));
    let secs: u64 = value
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {value:?} is not whole seconds"));
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    secs
}

/// The 60 s window is not waited out here: `src/ratelimit/tests.rs`
/// (`rpm_allows_up_to_the_limit_then_denies_until_the_window_slides`) checks that requests are allowed again.
#[tokio::test(flavor = "multi_thread")]
async fn rpm_limit_answers_429_with_retry_after_and_ratelimit_headers() {
    let mock = Mock::start("b").await;
    let keys = vec![
        json!({ "name": "limited", "key": "sk-gw-limited-3001", "rpm": 2 }),
        key("other", "sk-gw-other-3002"),
    ];
    let gw = Gateway::start(&auth_config(vec![keyed_client("a", &mock, &["m1"])], keys)).await;
    let limited = bearer("sk-gw-limited-3001");
    let h = [("authorization", limited.as_str())];

    for remaining in ["1", "0"] {
        let r = chat_with(&gw, "m1", &h).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("2"));
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some(remaining));
        let reset = go_duration_ms(r.header("x-ratelimit-reset-requests").unwrap());
        assert!(reset <= 60_000, "reset {reset} ms");
        assert_eq!(r.header("retry-after"), None, "no Retry-After on a 200");
        assert_eq!(r.header("x-ratelimit-limit-tokens"), None, "no tpm set");
    }

    let r = chat_with(&gw, "m1", &h).await;
    let err = r.expect_error(429);
    assert_eq!(err["code"], json!("rate_limit_exceeded"), "{}", r.text());
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("requests per minute (limit 2)"),
        "{message}"
    );
    let retry = retry_after_secs(&r);
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    let reset = go_duration_ms(r.header("x-ratelimit-reset-requests").unwrap());
    assert!(
        (1..=60_000).contains(&reset),
        "reset-requests {reset} ms (Retry-After {retry} s)"
    );
    assert!(
        retry <= reset.div_ceil(1000).max(1),
        "Retry-After {retry} s vs reset-requests {reset} ms"
    );
    assert_eq!(mock.count(), 2, "the refused request reached no backend");

    // A refused request is not counted: still refused, and other keys have their own windows.
    let again = chat_with(&gw, "m1", &h).await;
    again.expect_error(429);
    retry_after_secs(&again);
    let r = chat_with(&gw, "m1", &[("authorization", &bearer("sk-gw-other-3002"))]).await;
    assert_eq!(r.status, 200, "another key is not limited: {}", r.text());
    assert_eq!(
        r.header("x-ratelimit-limit-requests"),
        None,
        "an unlimited key gets no headers"
    );
    assert_eq!(mock.count(), 3);
}

/// Windows are kept by key name across a reload, and a changed limit applies at once.
#[tokio::test(flavor = "multi_thread")]
async fn rpm_counts_survive_a_reload_and_new_limits_apply_at_once() {
    let mock = Mock::start("b").await;
    let clients = vec![keyed_client("a", &mock, &["m1"])];
    let limited =
        |rpm: u32| vec![json!({ "name": "limited", "key": "sk-gw-limited-3101", "rpm": rpm })];
    let gw = Gateway::builder(&auth_config(clients.clone(), limited(2)))
        .log_level("info")
        .start()
        .await;
    let h = [("x-api-key", "sk-gw-limited-3101")];
    for _ in 0..2 {
        let r = chat_with(&gw, "m1", &h).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    chat_with(&gw, "m1", &h).await.expect_error(429);

    let done = reloaded("file changed");
    gw.rewrite_config(&auth_config(clients, limited(3)));
    gw.wait_log(&done, 1, RELOAD_WAIT).await;
    let r = chat_with(&gw, "m1", &h).await;
    assert_eq!(r.status, 200, "one more under the new limit: {}", r.text());
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    let r = chat_with(&gw, "m1", &h).await;
    r.expect_error(429);
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("3"));
    retry_after_secs(&r);
    assert_eq!(mock.count(), 3);
}

/// Reads a stream response to its end and returns its text.
async fn stream_chat(gw: &Gateway, model: &str, auth: &str) -> (u16, String) {
    let mut body = chat_body(model);
    body["stream"] = json!(true);
    let r = post_with(
        gw,
        "/v1/chat/completions",
        &body,
        &[("authorization", auth)],
    )
    .await;
    (r.status, r.text())
}

#[tokio::test(flavor = "multi_thread")]
async fn tpm_counts_the_tokens_of_finished_requests_streamed_or_not() {
    let mock = Mock::start("b").await;
    let db = tempfile::tempdir().unwrap();
    // The default stream reports 3 prompt + 3 completion tokens (the gateway asks for usage); the JSON answer
    // 3 + 1. Each limit is reached by one request.
    let keys = vec![
        json!({ "name": "streamer", "key": "sk-gw-stream-4001", "tpm": 6 }),
        json!({ "name": "jsoner", "key": "sk-gw-json-4002", "tpm": 4 }),
        json!({ "name": "roomy", "key": "sk-gw-roomy-4003", "tpm": 1000 }),
    ];
    let mut config = usage_config(
        vec![keyed_client("a", &mock, &["m1"])],
        db.path(),
        json!({}),
    );
    config["auth"] = json!({ "keys": keys });
    let gw = Gateway::start(&config).await;
    let streamer = bearer("sk-gw-stream-4001");
    let jsoner = bearer("sk-gw-json-4002");
    let roomy = bearer("sk-gw-roomy-4003");

    let (status, text) = stream_chat(&gw, "m1", &streamer).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("data: [DONE]"), "{text}");
    let sent = mock.single().json();
    assert_eq!(
        sent["stream_options"]["include_usage"],
        json!(true),
        "the gateway asks the backend for stream usage: {sent}"
    );
    // The record is sent after the tokens are counted: once it is there, the window holds them.
    wait_rows(db.path(), 1).await;

    let r = chat_with(&gw, "m1", &[("authorization", &streamer)]).await;
    let err = r.expect_error(429);
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("tokens per minute (limit 6)"), "{message}");
    retry_after_secs(&r);
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("6"));
    assert_eq!(r.header("x-ratelimit-remaining-tokens"), Some("0"));
    let reset = go_duration_ms(r.header("x-ratelimit-reset-tokens").unwrap());
    assert!((1..=60_000).contains(&reset), "reset-tokens {reset} ms");
    assert_eq!(r.header("x-ratelimit-limit-requests"), None, "no rpm set");
    assert_eq!(mock.count(), 1, "the refused request reached no backend");

    let r = chat_with(&gw, "m1", &[("authorization", &jsoner)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("4"));
    assert_eq!(r.header("x-ratelimit-remaining-tokens"), Some("4"));
    // Refusals are recorded too (limits are checked once routed): the stream, the 429, this answer.
    wait_rows(db.path(), 3).await;
    let r = chat_with(&gw, "m1", &[("authorization", &jsoner)]).await;
    r.expect_error(429);
    retry_after_secs(&r);
    assert_eq!(r.header("x-ratelimit-remaining-tokens"), Some("0"));

    let (status, text) = stream_chat(&gw, "m1", &roomy).await;
    assert_eq!(status, 200, "{text}");
    // ... then the second 429 and this stream.
    wait_rows(db.path(), 5).await;
    let r = chat_with(&gw, "m1", &[("authorization", &roomy)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-ratelimit-remaining-tokens"),
        Some("994"),
        "the stream's 6 tokens were counted"
    );
    assert_eq!(mock.count(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_key_never_reaches_the_backend() {
    let mock = Mock::start("b").await;
    mock.set_models(vec![Mock::model_entry("m1", "b")]);
    // The first candidate of `m-fo` fails with a 500: the key must stay out of every attempt.
    let failing = Mock::start_with(
        "failing",
        Behavior::Fail {
            status: 500,
            body: r#"{"error":{"message":"boom","type":"server_error","param":null,"code":null}}"#
                .into(),
        },
    )
    .await;
    let mut first = client("first", &failing.base_url("/v1"), "exact", &["m-fo"]);
    first["api_key"] = json!("sk-first-own-key");
    first["priority"] = json!(0);
    let mut a = keyed_client("a", &mock, &["m1", "m-fo"]);
    a["priority"] = json!(1);
    let gw_key = "sk-gw-secret-5001";
    let gw = Gateway::start(&auth_config(vec![first, a], vec![key("team", gw_key)])).await;
    let authz = bearer(gw_key);
    let forms: [&[(&str, &str)]; 4] = [
        &[("authorization", authz.as_str())],
        &[("api-key", gw_key)],
        &[("x-api-key", gw_key)],
        &[
            ("authorization", authz.as_str()),
            ("api-key", gw_key),
            ("x-api-key", gw_key),
        ],
    ];
    let mut stream = chat_body("m1");
    stream["stream"] = json!(true);
    for headers in forms {
        let r = chat_with(&gw, "m1", headers).await;
        assert_eq!(r.status, 200, "{headers:?}: {}", r.text());
        let r = post_with(&gw, "/v1/chat/completions", &stream, headers).await;
        assert_eq!(r.status, 200, "{headers:?}: {}", r.text());
    }
    let r = get_with(&gw, "/v1/models", &[("authorization", &authz)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = chat_with(&gw, "m-fo", forms[3]).await;
    assert_eq!(r.status, 200, "failover: {}", r.text());
    assert_eq!(r.header("x-mock"), Some("b"));

    let requests = mock.requests();
    assert_eq!(requests.len(), 10, "9 chat requests and the model list");
    assert_eq!(mock.models_requests().len(), 1);
    let tried = failing.requests();
    assert_eq!(
        tried.iter().filter(|r| r.method == "POST").count(),
        1,
        "the failing candidate was tried once"
    );
    let checks = requests
        .iter()
        .map(|r| (r, BACKEND_KEY))
        .chain(tried.iter().map(|r| (r, "sk-first-own-key")));
    for (req, own_key) in checks {
        assert_eq!(
            req.header_all("authorization"),
            [format!("Bearer {own_key}")],
            "{} {}: the client's key replaces the caller's: {:?}",
            req.method,
            req.uri,
            req.headers
        );
        assert!(req.header("api-key").is_none(), "{:?}", req.headers);
        assert!(req.header("x-api-key").is_none(), "{:?}", req.headers);
        for (name, value) in &req.headers {
            assert!(
                !value.contains(gw_key),
                "{name}: {value} carries the gateway key"
            );
        }
        assert!(
            !String::from_utf8_lossy(&req.body).contains(gw_key),
            "the body carries the gateway key"
        );
    }
}

fn model_ids(r: &Resp) -> BTreeSet<String> {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], json!("list"), "{v}");
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn models_lists_only_the_models_the_key_may_use() {
    let mock = Mock::start("b").await;
    let keys = vec![
        json!({ "name": "pattern", "key": "sk-gw-pattern-6001", "models": ["gpt-4*"] }),
        json!({ "name": "one", "key": "sk-gw-one-6002", "models": "o1" }),
        key("all", "sk-gw-all-6003"),
        json!({ "name": "none", "key": "sk-gw-none-6004", "models": ["not-configured"] }),
    ];
    let models = ["gpt-4o", "gpt-4o-mini", "o1", "m-other"];
    let gw = Gateway::start(&auth_config(vec![keyed_client("a", &mock, &models)], keys)).await;

    let list = |k: &'static str| {
        let gw = &gw;
        async move { get_with(gw, "/v1/models", &[("authorization", &bearer(k))]).await }
    };
    assert_eq!(
        model_ids(&list("sk-gw-pattern-6001").await),
        ids(&["gpt-4o", "gpt-4o-mini"])
    );
    assert_eq!(model_ids(&list("sk-gw-one-6002").await), ids(&["o1"]));
    assert_eq!(model_ids(&list("sk-gw-all-6003").await), ids(&models));
    assert_eq!(model_ids(&list("sk-gw-none-6004").await), ids(&[]));
    // Without the /v1 prefix too, and with the key in x-api-key.
    let r = get_with(&gw, "/models", &[("x-api-key", "sk-gw-pattern-6001")]).await;
    assert_eq!(model_ids(&r), ids(&["gpt-4o", "gpt-4o-mini"]));
    assert_invalid_key(&get_with(&gw, "/models", &[]).await, "GET /models, no key");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_needs_no_key() {
    let mock = Mock::start("b").await;
    let gw = Gateway::start(&auth_config(
        vec![keyed_client("a", &mock, &["m1"])],
        vec![key("team", "sk-gw-team-7001")],
    ))
    .await;
    for headers in [&[][..], &[("authorization", "Bearer sk-wrong")][..]] {
        let r = get_with(&gw, "/health", headers).await;
        assert_eq!(r.status, 200, "{headers:?}: {}", r.text());
        assert_eq!(r.json(), json!({"status": "ok"}));
    }
    assert_invalid_key(&chat_with(&gw, "m1", &[]).await, "chat without a key");
}

/// `KeyName` of every record in `dir`, in order.
fn key_names(dir: &Path) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for file in files(dir) {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let conn = rusqlite::Connection::open_with_flags(&file, flags).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut stmt = conn
            .prepare("SELECT KeyName FROM records ORDER BY id")
            .unwrap();
        let names = stmt.query_map([], |r| r.get(0)).unwrap();
        out.extend(names.map(Result::unwrap));
    }
    out
}

/// Every byte of every file in the usage directory (the monthly files and their journals): the key must not be
/// stored anywhere, in any column.
fn raw_files(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_name_is_recorded_and_logged_never_the_key() {
    let mock = Mock::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let gw_key = "sk-gw-recorded-8001";
    let mut config = usage_config(
        vec![keyed_client("a", &mock, &["m1"])],
        db.path(),
        json!({}),
    );
    config["auth"] = json!({ "keys": [
        { "name": "ops-team-name", "key": gw_key, "models": ["m1"] },
    ] });
    let gw = Gateway::builder(&config).log_level("info").start().await;
    let authz = bearer(gw_key);

    let r = chat_with(&gw, "m1", &[("authorization", &authz)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = chat_with(&gw, "m-forbidden", &[("x-api-key", gw_key)]).await;
    assert_model_not_allowed(&r, "m-forbidden");

    let mut rows = wait_exact_rows(db.path(), 2).await;
    assert_eq!(
        key_names(db.path()),
        [
            Some("ops-team-name".to_string()),
            Some("ops-team-name".to_string())
        ]
    );
    // A request's record is written after its answer went out, so the second may land first.
    rows.sort_by_key(|r| r.status);
    assert_eq!(rows[0].status, Some(200));
    assert_eq!(rows[1].status, Some(403));
    for row in &rows {
        let dump = row.dump();
        assert!(!dump.contains(gw_key), "the key in the record: {dump}");
    }
    assert_eq!(rows[0].headers_json()["authorization"], json!("***"));
    assert_eq!(rows[1].headers_json()["x-api-key"], json!("***"));
    let raw = raw_files(db.path());
    assert!(!raw.contains(gw_key), "the key in the database file");

    // Access lines are buffered (flushed every 100 ms): wait for both.
    let count = |log: &str| {
        log.lines()
            .filter(|l| l.contains("POST /v1/chat/completions"))
            .count()
    };
    common::wait_until(Duration::from_secs(5), || count(&gw.log()) >= 2).await;
    let log = gw.log();
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("POST /v1/chat/completions"))
        .collect();
    assert_eq!(access.len(), 2, "one access line per request:\n{log}");
    assert!(!log.contains(gw_key), "the key in the log:\n{log}");
    for line in &access {
        assert!(
            line.contains("ops-team-name"),
            "the access line names the key: {line}"
        );
    }
}

#[test]
fn check_refuses_a_keyless_client_when_auth_is_on() {
    let yaml = r#"
openai_clients:
  - name: "a"
    base_url: "http://127.0.0.1:9/v1"
    model_match: { type: "exact", value: "m1" }
  - name: "b"
    api_key: "sk-backend-b"
    base_url: "http://127.0.0.1:9/v1"
    model_match: { type: "exact", value: "m2" }
auth:
  keys:
    - { name: "team", key: "sk-gw-check-9001" }
"#;
    let out = check(yaml, &[], &[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("openai_clients[0].api_key"),
        "stderr: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("openai_clients[1]"),
        "client b has its key: {}",
        out.stderr
    );
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        !all.contains("sk-gw-check-9001") && !all.contains("sk-backend-b"),
        "{all}"
    );

    // The same clients without auth: fine (a keyless client passes the caller's key through).
    let open = yaml.split("auth:").next().unwrap();
    let out = check(open, &[], &[]);
    assert_eq!(out.code, 0, "{out:?}");
}

/// `max_concurrent` on one node: requests beyond it get 429 `concurrency_limit` at once; a slot frees when its
/// request ends, whether it finished or its caller left mid-stream.
#[tokio::test(flavor = "multi_thread")]
async fn max_concurrent_refuses_at_once_and_frees_slots_when_requests_end() {
    let mock = Mock::start("b").await;
    mock.set_sse(20, Duration::from_millis(100));
    let mut team = key("team", "sk-team-concurrency-1");
    team["max_concurrent"] = json!(2);
    let gw = Gateway::start(&auth_config(
        vec![keyed_client("a", &mock, &["m1"])],
        vec![team],
    ))
    .await;
    let url = gw.url("/v1/chat/completions");
    let mut body = chat_body("m1");
    body["stream"] = json!(true);
    let auth = [("authorization", "Bearer sk-team-concurrency-1")];
    let first = common::send_json(&url, &body, &auth).await;
    let second = common::send_json(&url, &body, &auth).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let started = std::time::Instant::now();
    let third = Resp::read(common::send_json(&url, &body, &auth).await).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once, not queued"
    );
    let err = third.expect_error(429);
    assert_eq!(err["code"], "concurrency_limit");
    // The first finishes, the second's caller leaves mid-stream: both slots free again.
    first.bytes().await.unwrap();
    drop(second);
    let mut both = false;
    for _ in 0..50 {
        let (a, b) = tokio::join!(
            common::send_json(&url, &body, &auth),
            common::send_json(&url, &body, &auth)
        );
        if (a.status().as_u16(), b.status().as_u16()) == (200, 200) {
            both = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(both, "both slots freed: two streams at once admitted again");
}
