//! `GET /v1/models`: backends' own lists merged with the `exact` models, filtered by routing, de-duplicated by
//! priority; failing and hanging backends skipped; the cache, its clearing on reload, and per-caller caching.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::reload::reloaded;
use crate::common::{client, free_port, http_client, Behavior, Gateway, Mock, Resp};
use serde_json::{json, Value};

/// `GET path` with this caller `Authorization` (or none).
async fn list(gw: &Gateway, path: &str, auth: Option<&str>) -> Resp {
    let mut req = http_client().get(gw.url(path));
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} failed: {e:?}"));
    Resp::read(resp).await
}

/// Checks the OpenAI list shape and returns the entries by id (each id once).
fn entries(r: &Resp) -> BTreeMap<String, Value> {
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{:?}",
        r.headers
    );
    let v = r.json();
    assert_eq!(v["object"], "list", "{v}");
    let data = v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data array: {v}"));
    let mut out = BTreeMap::new();
    for m in data {
        let id = m["id"].as_str().unwrap_or_else(|| panic!("no id: {m}"));
        assert!(
            out.insert(id.to_string(), m.clone()).is_none(),
            "{id} listed twice: {v}"
        );
    }
    out
}

fn ids(r: &Resp) -> Vec<String> {
    entries(r).into_keys().collect()
}

/// An entry the gateway made for an `exact` model of client `owner`.
fn assert_exact_entry(m: &Value, owner: &str) {
    assert_eq!(m["object"], "model", "{m}");
    assert!(
        m["created"].is_i64() || m["created"].is_u64(),
        "created not an integer: {m}"
    );
    assert_eq!(m["owned_by"], owner, "{m}");
}

fn with_server(server: Value, clients: Vec<Value>) -> Value {
    json!({ "server": server, "openai_clients": clients })
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_lists_merged_filtered_and_deduplicated_by_priority() {
    let a = Mock::start("mock-a").await;
    a.set_models(vec![
        Mock::model_entry("gpt-4o", "mock-a"),
        Mock::model_entry("gpt-3.5-turbo", "mock-a"),
        Mock::model_entry("whisper-1", "mock-a"),
        Mock::model_entry("llama-3", "mock-a"),
    ]);
    let b = Mock::start("mock-b").await;
    let odd = json!({ "id": "llama-3", "object": "model", "created": 5, "owned_by": "mock-b", "extra": [1] });
    b.set_models(vec![
        Mock::model_entry("gpt-4o", "mock-b"),
        odd.clone(),
        Mock::model_entry("mistral-large", "mock-b"),
    ]);
    // `a` comes first in the file but `b` has the smaller priority, so `b`'s entries win.
    let mut ca = client("a", &a.base_url("/v1"), "keyword", &["gpt"]);
    ca["priority"] = json!(2);
    ca["api_key"] = json!("key-a");
    ca["headers"] = json!({ "X-Org": "org-a" });
    let mut cb = client(
        "b",
        &b.base_url(""),
        "exact",
        &["gpt-4o", "llama-3", "b-only"],
    );
    cb["priority"] = json!(1);
    cb["api_key"] = json!("key-b");
    cb["headers"] = json!({ "X-Org": "org-b" });
    let gw = Gateway::start(&json!({ "openai_clients": [ca, cb] })).await;

    let r = list(&gw, "/v1/models", Some("Bearer caller-key")).await;
    let got = entries(&r);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        ["b-only", "gpt-3.5-turbo", "gpt-4o", "llama-3"],
        "whisper-1 (a does not route it) and mistral-large (b does not) must be left out: {}",
        r.text()
    );
    assert_eq!(
        got["gpt-4o"],
        Mock::model_entry("gpt-4o", "mock-b"),
        "the higher-priority client's entry wins"
    );
    assert_eq!(
        got["llama-3"], odd,
        "a backend's entry passes through as it is"
    );
    assert_eq!(
        got["gpt-3.5-turbo"],
        Mock::model_entry("gpt-3.5-turbo", "mock-a")
    );
    assert_exact_entry(&got["b-only"], "b");

    // Each backend asked exactly once, with its own key and extra headers, at base_url + /models.
    assert_eq!(a.count(), 1, "{:?}", a.requests());
    assert_eq!(b.count(), 1, "{:?}", b.requests());
    let ra = a.models_requests().remove(0);
    assert_eq!((ra.method.as_str(), ra.uri.as_str()), ("GET", "/v1/models"));
    assert_eq!(ra.header("authorization"), Some("Bearer key-a"));
    assert_eq!(ra.header("x-org"), Some("org-a"));
    let rb = b.models_requests().remove(0);
    assert_eq!((rb.method.as_str(), rb.uri.as_str()), ("GET", "/models"));
    assert_eq!(rb.header("authorization"), Some("Bearer key-b"));
    assert_eq!(rb.header("x-org"), Some("org-b"));

    // `/models` is the same endpoint (answered from the cache).
    let again = list(&gw, "/models", Some("Bearer caller-key")).await;
    assert_eq!(entries(&again), got);
    assert_eq!(a.count() + b.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn down_and_hanging_backends_are_skipped() {
    let up = Mock::start("mock-up").await;
    up.set_models(vec![
        Mock::model_entry("up-1", "mock-up"),
        Mock::model_entry("other", "mock-up"),
    ]);
    let hang = Mock::start_with("mock-hang", Behavior::Hang).await;
    let closed = format!("http://127.0.0.1:{}/v1", free_port());
    let mut c_up = client("up", &up.base_url("/v1"), "keyword", &["up-"]);
    c_up["api_key"] = json!("k-up");
    let mut c_down = client("down", &closed, "exact", &["down-1"]);
    c_down["api_key"] = json!("k-down");
    let mut c_hang = client("hang", &hang.base_url("/v1"), "exact", &["hang-1"]);
    c_hang["api_key"] = json!("k-hang");
    let gw = Gateway::start(&with_server(
        json!({ "models_timeout_ms": 500 }),
        vec![c_up, c_down, c_hang],
    ))
    .await;

    let t0 = Instant::now();
    let r = list(&gw, "/v1/models", None).await;
    let took = t0.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    let got = entries(&r);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        ["down-1", "hang-1", "up-1"],
        "{}",
        r.text()
    );
    assert_eq!(got["up-1"], Mock::model_entry("up-1", "mock-up"));
    assert_exact_entry(&got["down-1"], "down");
    assert_exact_entry(&got["hang-1"], "hang");
    assert_eq!(up.count(), 1);
    assert_eq!(hang.models_requests().len(), 1, "{:?}", hang.requests());
    assert_eq!(hang.count(), 1);

    // Both failures are logged (warn, the harness's default level), naming the backend.
    let log = gw.log();
    for name in ["down", "hang"] {
        assert!(
            log.lines()
                .any(|l| l.contains("skipped") && l.contains(&format!("backend {name}"))),
            "no log line about backend {name} being skipped:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn list_is_cached_and_a_reload_clears_the_cache() {
    let mock = Mock::start("mock").await;
    mock.set_models(vec![
        Mock::model_entry("c-1", "mock"),
        Mock::model_entry("d-1", "mock"),
    ]);
    let cfg = |values: &[&str]| {
        let mut c = client("a", &mock.base_url("/v1"), "keyword", values);
        c["api_key"] = json!("k");
        json!({ "openai_clients": [c] })
    };
    let gw = Gateway::builder(&cfg(&["c-"]))
        .log_level("info")
        .start()
        .await;

    let first = list(&gw, "/v1/models", None).await;
    assert_eq!(ids(&first), ["c-1"]);
    assert_eq!(mock.count(), 1);
    let second = list(&gw, "/v1/models", None).await;
    assert_eq!(second.body, first.body, "the cached answer");
    assert_eq!(
        mock.count(),
        1,
        "a second call within models_cache_seconds asks no backend"
    );

    // A reload by the file watch (not by the models call) clears the cache.
    gw.rewrite_config(&cfg(&["c-", "d-"]));
    gw.wait_log(&reloaded("file changed"), 1, Duration::from_secs(5))
        .await;
    let third = list(&gw, "/v1/models", None).await;
    assert_eq!(ids(&third), ["c-1", "d-1"]);
    assert_eq!(mock.count(), 2, "the next call after a reload asks again");
    let fourth = list(&gw, "/v1/models", None).await;
    assert_eq!(fourth.body, third.body);
    assert_eq!(mock.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_expires_after_models_cache_seconds() {
    let mock = Mock::start("mock").await;
    mock.set_models(vec![Mock::model_entry("e-1", "mock")]);
    let mut c = client("a", &mock.base_url("/v1"), "keyword", &["e-"]);
    c["api_key"] = json!("k");
    let gw = Gateway::start(&with_server(json!({ "models_cache_seconds": 1 }), vec![c])).await;

    let r = list(&gw, "/v1/models", None).await;
    let t0 = Instant::now();
    assert_eq!(ids(&r), ["e-1"]);
    assert_eq!(mock.count(), 1);
    let _ = list(&gw, "/v1/models", None).await;
    if t0.elapsed() < Duration::from_millis(900) {
        assert_eq!(mock.count(), 1, "asked again within models_cache_seconds");
    }
    // Each call either hits the cache or asks once: stop at the first that asks.
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.count() < 2 {
        assert!(Instant::now() < deadline, "the cache never expired");
        let r = list(&gw, "/v1/models", None).await;
        assert_eq!(ids(&r), ["e-1"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "asked again after only {:?}",
        t0.elapsed()
    );
    assert_eq!(mock.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_without_key_is_asked_with_each_callers_key_and_cached_per_caller() {
    let mock = Mock::start("mock").await;
    mock.set_models(vec![
        Mock::model_entry("p-1", "mock"),
        Mock::model_entry("q-1", "mock"),
    ]);
    let mut c = client("pass", &mock.base_url("/v1"), "keyword", &["p-"]);
    c["headers"] = json!({ "X-Extra": "yes" });
    let gw = Gateway::start(&json!({ "openai_clients": [c] })).await;

    let r1 = list(&gw, "/v1/models", Some("Bearer user-1")).await;
    assert_eq!(ids(&r1), ["p-1"]);
    let r2 = list(&gw, "/v1/models", Some("Bearer user-2")).await;
    assert_eq!(ids(&r2), ["p-1"]);
    let asked = mock.models_requests();
    assert_eq!(asked.len(), 2, "one backend GET per caller: {asked:?}");
    assert_eq!(mock.count(), 2);
    assert_eq!(asked[0].header("authorization"), Some("Bearer user-1"));
    assert_eq!(asked[1].header("authorization"), Some("Bearer user-2"));
    for r in &asked {
        assert_eq!(r.header("x-extra"), Some("yes"));
        assert_eq!(r.header_all("authorization").len(), 1, "{:?}", r.headers);
    }

    // Each caller's answer is cached for that caller.
    for auth in ["Bearer user-1", "Bearer user-2"] {
        let again = list(&gw, "/v1/models", Some(auth)).await;
        assert_eq!(ids(&again), ["p-1"]);
    }
    assert_eq!(mock.count(), 2, "{:?}", mock.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_during_a_slow_models_call_is_not_undone_by_its_answer() {
    let fast = Mock::start("fast").await;
    fast.set_models(vec![]);
    let slow = Mock::start_with("slow", Behavior::Hang).await;
    let server = json!({ "models_timeout_ms": 3000 });
    let c_fast = |values: &[&str]| {
        let mut c = client("a", &fast.base_url("/v1"), "exact", values);
        c["api_key"] = json!("k-a");
        c
    };
    let mut c_slow = client("slow", &slow.base_url("/v1"), "exact", &["slow-1"]);
    c_slow["api_key"] = json!("k-slow");
    let gw = Gateway::builder(&with_server(server.clone(), vec![c_fast(&["m1"]), c_slow]))
        .log_level("info")
        .start()
        .await;
    let gw = std::sync::Arc::new(gw);

    // Call A starts on the old config and waits for the slow backend (up to models_timeout_ms).
    let call_a = {
        let gw = gw.clone();
        tokio::spawn(async move { list(&gw, "/v1/models", None).await })
    };
    assert!(
        common::wait_until(Duration::from_secs(5), || slow.count() == 1).await,
        "the slow backend was never asked"
    );
    // While A waits, the file watch applies a config without the slow client and with a new model.
    gw.rewrite_config(&with_server(server, vec![c_fast(&["m1", "m-new"])]));
    gw.wait_log(&reloaded("file changed"), 1, Duration::from_secs(5))
        .await;
    assert!(!call_a.is_finished(), "call A ended before the reload");
    let a = call_a.await.unwrap();
    assert_eq!(a.status, 200, "{}", a.text());

    // The next call answers on the new config: A's answer, made from the old one, must not be served.
    let b = list(&gw, "/v1/models", None).await;
    assert_eq!(
        ids(&b),
        ["m-new", "m1"],
        "listed after the reload; call A (old config) answered {}",
        a.text()
    );
    assert_eq!(slow.count(), 1, "the removed client was asked again");
}
