//! Config reload without a restart: by the file watch, by SIGHUP and by `GET /v1/models`; invalid versions
//! rejected while serving goes on; running requests finish on their config; no request fails across reloads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::reload::{rejected, reloaded};
use crate::common::{
    chat_body, client, error_object, free_port, get, http_client, post_json, Gateway, Mock, Resp,
};
use futures_util::StreamExt;
use serde_json::{json, Value};

const RELOAD_WAIT: Duration = Duration::from_secs(5);

async fn chat(gw: &Gateway, model: &str) -> Resp {
    post_json(gw, "/v1/chat/completions", &chat_body(model)).await
}

fn assert_model_not_found(r: &Resp, model: &str) {
    let err = r.expect_error(404);
    assert_eq!(err["code"], "model_not_found", "{model}: {}", r.text());
}

/// Sends requests for `model` until one is not a 404 (a 404 reaches no backend); panics after `RELOAD_WAIT`.
async fn wait_routed(gw: &Gateway, model: &str) -> Resp {
    let deadline = Instant::now() + RELOAD_WAIT;
    loop {
        let r = chat(gw, model).await;
        if r.status != 404 {
            return r;
        }
        assert_model_not_found(&r, model);
        assert!(
            Instant::now() < deadline,
            "{model} still not routed {RELOAD_WAIT:?} after the config change; stderr:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn clients(list: Vec<Value>) -> Value {
    json!({ "openai_clients": list })
}

fn keyed(mut c: Value, key: &str) -> Value {
    c["api_key"] = json!(key);
    c
}

async fn start_info(config: &Value) -> Gateway {
    Gateway::builder(config).log_level("info").start().await
}

#[tokio::test(flavor = "multi_thread")]
async fn file_watch_adds_a_client_and_a_model() {
    let one = Mock::start("one").await;
    let two = Mock::start("two").await;
    let gw = Gateway::start(&clients(vec![client(
        "a",
        &one.base_url("/v1"),
        "exact",
        &["m1"],
    )]))
    .await;
    assert_model_not_found(&chat(&gw, "m2").await, "m2");
    assert_model_not_found(&chat(&gw, "m1b").await, "m1b");

    gw.rewrite_config(&clients(vec![
        client("a", &one.base_url("/v1"), "exact", &["m1", "m1b"]),
        client("b", &two.base_url("/v1"), "exact", &["m2"]),
    ]));
    let r = wait_routed(&gw, "m2").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mock"), Some("two"));
    let r = chat(&gw, "m1b").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mock"), Some("one"));
    let r = chat(&gw, "m1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(two.count(), 1);
    assert_eq!(one.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_rereads_the_file() {
    let mock = Mock::start("mock").await;
    let v1 = clients(vec![client("a", &mock.base_url("/v1"), "exact", &["m1"])]);
    let gw = start_info(&v1).await;
    assert_eq!(chat(&gw, "m1").await.status, 200);
    // The watch loop (which also listens for SIGHUP) is running once it has applied a change; before that
    // a SIGHUP could meet the default action and end the process.
    gw.rewrite_config(&clients(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["m1", "m0"],
    )]));
    gw.wait_log(&reloaded("file changed"), 1, RELOAD_WAIT).await;

    // Forced even though the file did not change.
    gw.signal("HUP");
    gw.wait_log(&reloaded("SIGHUP"), 1, RELOAD_WAIT).await;
    assert_eq!(chat(&gw, "m1").await.status, 200);

    // A change followed by SIGHUP: once the SIGHUP reload is logged, the new file is in force.
    gw.rewrite_config(&clients(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["m1", "m2"],
    )]));
    gw.signal("HUP");
    gw.wait_log(&reloaded("SIGHUP"), 2, RELOAD_WAIT).await;
    let r = chat(&gw, "m2").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.count(), 3);
    assert_eq!(gw.log_count("rejected"), 0, "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn get_models_rereads_a_changed_file_and_answers_on_it() {
    let mock = Mock::start("mock").await;
    mock.set_models(vec![]);
    let cfg = |values: &[&str]| {
        clients(vec![keyed(
            client("a", &mock.base_url("/v1"), "exact", values),
            "k",
        )])
    };
    let gw = start_info(&cfg(&["m1"])).await;

    // Catch a file-watch tick, so that the next one is about a second away.
    gw.rewrite_config(&cfg(&["m1", "m-first"]));
    gw.wait_log(&reloaded("file changed"), 1, RELOAD_WAIT).await;

    gw.rewrite_config(&cfg(&["m1", "m-first", "m-new"]));
    let r = get(&gw, "/v1/models").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"m-new"),
        "the change is listed in the same answer: {v}"
    );
    assert_eq!(
        gw.log_count(&reloaded("GET /v1/models")),
        1,
        "the models call did the reload; stderr:\n{}",
        gw.log()
    );
    let r = chat(&gw, "m-new").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_change_is_rejected_and_serving_goes_on() {
    let mock = Mock::start("mock").await;
    let gw = start_info(&clients(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["m1"],
    )]))
    .await;

    let mut bad = client("a", &mock.base_url("/v1"), "exact", &["m1", "m2"]);
    bad["model_match"]["type"] = json!("regex");
    gw.rewrite_config(&clients(vec![bad]));
    // Requests keep succeeding on the old config while the bad file is noticed.
    let mut sent = 0;
    let deadline = Instant::now() + RELOAD_WAIT;
    while gw.log_count(&rejected("file changed")) == 0 {
        assert!(
            Instant::now() < deadline,
            "no rejection logged; stderr:\n{}",
            gw.log()
        );
        let r = chat(&gw, "m1").await;
        sent += 1;
        assert_eq!(r.status, 200, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = gw.log();
    assert!(
        log.contains("openai_clients[0].model_match.type"),
        "the error names its field path:\n{log}"
    );
    assert_eq!(gw.log_count("config reloaded"), 0, "{log}");
    assert_eq!(chat(&gw, "m1").await.status, 200);
    assert_model_not_found(&chat(&gw, "m2").await, "m2");
    // SIGHUP on the same bad file is rejected too.
    gw.signal("HUP");
    gw.wait_log(&rejected("SIGHUP"), 1, RELOAD_WAIT).await;
    assert_eq!(chat(&gw, "m1").await.status, 200);
    assert_eq!(mock.count(), sent + 2);

    // A valid version afterwards is applied.
    gw.rewrite_config(&clients(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["m1", "m2"],
    )]));
    let r = wait_routed(&gw, "m2").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.count(), sent + 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_api_key_and_headers_take_effect() {
    let mock = Mock::start("mock").await;
    let cfg = |key: &str, team: &str| {
        let mut c = keyed(client("a", &mock.base_url("/v1"), "exact", &["m1"]), key);
        c["headers"] = json!({ "X-Team": team });
        clients(vec![c])
    };
    let gw = start_info(&cfg("old-key", "t1")).await;
    assert_eq!(chat(&gw, "m1").await.status, 200);
    let first = mock.single();
    assert_eq!(first.header("authorization"), Some("Bearer old-key"));
    assert_eq!(first.header("x-team"), Some("t1"));

    gw.rewrite_config(&cfg("new-key", "t2"));
    gw.wait_log(&reloaded("file changed"), 1, RELOAD_WAIT).await;
    assert_eq!(chat(&gw, "m1").await.status, 200);
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].header("authorization"), Some("Bearer new-key"));
    assert_eq!(reqs[1].header("x-team"), Some("t2"));
    assert!(!gw.log().contains("new-key"), "a key reached the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_removed_while_its_stream_runs_completes_the_stream() {
    let held = Mock::start("held").await;
    held.set_sse(4, Duration::ZERO);
    held.hold_after_first_event();
    let other = Mock::start("other").await;
    let gw = start_info(&clients(vec![
        client("a", &held.base_url("/v1"), "exact", &["m1"]),
        client("b", &other.base_url("/v1"), "exact", &["m2"]),
    ]))
    .await;

    let resp = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(
            serde_json::to_vec(&json!({ "model": "m1", "stream": true, "messages": [] })).unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = Mock::sse_events("m1", 4);
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    while got.len() < events[0].len() {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("first event in time")
            .expect("stream ended before the first event")
            .unwrap();
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, events[0].as_bytes());

    gw.rewrite_config(&clients(vec![client(
        "b",
        &other.base_url("/v1"),
        "exact",
        &["m2"],
    )]));
    gw.wait_log(&reloaded("file changed"), 1, RELOAD_WAIT).await;
    assert_model_not_found(&chat(&gw, "m1").await, "m1");
    assert_eq!(chat(&gw, "m2").await.status, 200);

    held.release();
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.next().await {
            got.extend_from_slice(&chunk.expect("stream body error"));
        }
    })
    .await;
    assert!(
        rest.is_ok(),
        "the stream did not finish; got {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        String::from_utf8_lossy(&got),
        events.concat(),
        "all events, unchanged"
    );
    assert_eq!(held.count(), 1);
    assert_eq!(held.streams_finished(), 1);
    assert_eq!(other.count(), 1);
}

/// Two valid versions: clients added and removed, keys and priorities changed; m1 and m2 route in both.
fn version(n: usize, one: &Mock, two: &Mock) -> Value {
    if n.is_multiple_of(2) {
        clients(vec![
            keyed(
                client("a", &one.base_url("/v1"), "exact", &["m1"]),
                "key-even",
            ),
            keyed(
                client("b", &two.base_url("/v1"), "exact", &["m2"]),
                "key-even",
            ),
        ])
    } else {
        let mut c = keyed(
            client("c", &two.base_url("/v1"), "keyword", &["m"]),
            "key-odd",
        );
        c["priority"] = json!(1);
        clients(vec![
            keyed(
                client("a", &one.base_url("/v1"), "exact", &["m1", "m2"]),
                "key-odd",
            ),
            c,
        ])
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_request_fails_across_ten_reloads() {
    const TOTAL: usize = 500;
    const RELOADS: usize = 10;
    let one = Mock::start("one").await;
    let two = Mock::start("two").await;
    for m in [&one, &two] {
        m.set_sse(3, Duration::from_millis(50));
    }
    let gw = Arc::new(start_info(&version(0, &one, &two)).await);

    let launched = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let load = {
        let gw = gw.clone();
        let launched = launched.clone();
        let finished = finished.clone();
        let failures = failures.clone();
        tokio::spawn(async move {
            let http = http_client();
            let permits = Arc::new(tokio::sync::Semaphore::new(100));
            // Paced over about twelve seconds, longer than the ten reloads (about one a second), so that
            // every reload lands among requests in flight.
            let mut pace = tokio::time::interval(Duration::from_millis(25));
            let mut tasks = Vec::new();
            for i in 0..TOTAL {
                pace.tick().await;
                let permit = permits.clone().acquire_owned().await.unwrap();
                launched.fetch_add(1, Ordering::SeqCst);
                let (http, url, failures, finished) = (
                    http.clone(),
                    gw.url("/v1/chat/completions"),
                    failures.clone(),
                    finished.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let model = if i % 2 == 0 { "m1" } else { "m2" };
                    let stream = i % 4 >= 2;
                    let body = json!({ "model": model, "stream": stream, "messages": [] });
                    let outcome = one_request(&http, &url, &body, model, stream).await;
                    if let Err(e) = outcome {
                        failures.lock().unwrap().push(format!("#{i} {body}: {e}"));
                    }
                    finished.fetch_add(1, Ordering::SeqCst);
                    drop(permit);
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        })
    };

    // Requests in flight when each reload was seen in the log.
    let mut in_flight = Vec::new();
    for n in 1..=RELOADS {
        let want = (n - 1) * TOTAL / (RELOADS + 2) + 10;
        assert!(
            common::wait_until(Duration::from_secs(30), || launched.load(Ordering::SeqCst)
                >= want)
            .await,
            "the load stalled"
        );
        gw.rewrite_config(&version(n, &one, &two));
        gw.wait_log(&reloaded("file changed"), n, RELOAD_WAIT).await;
        in_flight.push(launched.load(Ordering::SeqCst) - finished.load(Ordering::SeqCst));
    }
    tokio::time::timeout(Duration::from_secs(120), load)
        .await
        .expect("the load did not finish")
        .unwrap();

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {TOTAL} requests failed:\n{}\nstderr:\n{}",
        failures.len(),
        failures.join("\n"),
        gw.log()
    );
    assert!(
        in_flight.iter().all(|&n| n > 0),
        "a reload did not overlap the load (requests in flight at each reload: {in_flight:?})"
    );
    assert_eq!(gw.log_count("config reloaded"), RELOADS, "{}", gw.log());
    assert_eq!(gw.log_count("rejected"), 0, "{}", gw.log());
    assert_eq!(
        one.count() + two.count(),
        TOTAL,
        "each request reached a backend exactly once"
    );
    for r in one.requests().into_iter().chain(two.requests()) {
        let auth = r.header("authorization").unwrap_or("");
        assert!(
            auth == "Bearer key-even" || auth == "Bearer key-odd",
            "unexpected Authorization {auth:?}"
        );
    }
}

/// One request through the gateway, checked in full: 200 and the whole answer (every event for a stream).
async fn one_request(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    model: &str,
    stream: bool,
) -> Result<(), String> {
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap())
        .send()
        .await
        .map_err(|e| format!("send: {e:?}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| format!("body: {e:?}"))?;
    if status != 200 {
        return Err(format!("status {status}: {text}"));
    }
    if stream {
        let want = Mock::sse_events(model, 3).concat();
        if text != want {
            return Err(format!("stream body {text:?}"));
        }
    } else {
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("not JSON ({e}): {text}"))?;
        if v["model"] != model {
            return Err(format!("answer {v}"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_client_is_no_longer_routed() {
    let mock = Mock::start("mock").await;
    let gw = start_info(&clients(vec![
        client("a", &mock.base_url("/v1"), "exact", &["m1"]),
        client("b", &mock.base_url("/v1"), "exact", &["m2"]),
    ]))
    .await;
    gw.rewrite_config(&clients(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["m1"],
    )]));
    gw.wait_log(&reloaded("file changed"), 1, RELOAD_WAIT).await;
    let r = chat(&gw, "m2").await;
    let err = error_object(&r.json());
    assert_eq!(err["code"], "model_not_found");
    assert_eq!(r.status, 404);
    assert_eq!(mock.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_base_url_path_and_special_prefix_take_effect() {
    let mock = Mock::start("mock").await;
    let cfg = |path: &str, prefix: &str| {
        let mut c = client("a", &mock.base_url(path), "exact", &["m1"]);
        c["special_prefix"] = json!(prefix);
        clients(vec![c])
    };
    let gw = start_info(&cfg("/v1", "<one>")).await;
    let content = |r: &Resp| r.json()["choices"][0]["message"]["content"].clone();

    let r = chat(&gw, "m1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(content(&r), "<one>hi", "{}", r.text());
    assert_eq!(mock.single().uri, "/v1/chat/completions");

    gw.rewrite_config(&cfg("/alt/v1", "<two>"));
    gw.wait_log(&reloaded("file changed"), 1, RELOAD_WAIT).await;
    let r = chat(&gw, "m1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(content(&r), "<two>hi", "{}", r.text());
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].uri, "/alt/v1/chat/completions");
}

/// A chat request for `m1` with this gateway key (`None`: no key at all).
async fn chat_keyed(gw: &Gateway, key: Option<&str>) -> Resp {
    let mut req = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let resp = req
        .body(serde_json::to_vec(&chat_body("m1")).unwrap())
        .send()
        .await
        .unwrap();
    Resp::read(resp).await
}

/// A config whose one client has its own key, with these gateway keys (`None`: no `auth:` section).
fn auth_config(mock: &Mock, metrics_port: u16, keys: Option<Value>) -> Value {
    let mut config = clients(vec![keyed(
        client("a", &mock.base_url("/v1"), "exact", &["m1"]),
        "sk-backend-own",
    )]);
    config["server"] = json!({ "metrics_listen": format!("127.0.0.1:{metrics_port}") });
    if let Some(keys) = keys {
        config["auth"] = json!({ "keys": keys });
    }
    config
}

/// Polls `/metrics` until `gpt_api_config_reloads_total{outcome}` is `want`; panics with the scrape after `RELOAD_WAIT`.
async fn wait_reload_count(port: u16, outcome: &str, want: u32) {
    let series = format!("gpt_api_config_reloads_total{{outcome=\"{outcome}\"}} {want}");
    let deadline = Instant::now() + RELOAD_WAIT;
    loop {
        let url = format!("http://127.0.0.1:{port}/metrics");
        let text = match http_client().get(&url).send().await {
            Ok(resp) => resp.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.lines().any(|l| l == series) {
            return;
        }
        assert!(Instant::now() < deadline, "no {series:?} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_without_auth_is_rejected_and_the_keys_stay_required() {
    let mock = Mock::start("mock").await;
    let metrics_port = free_port();
    let keys = json!([{ "name": "team", "key": "sk-gw-team-7001" }]);
    let gw = start_info(&auth_config(&mock, metrics_port, Some(keys))).await;
    assert_eq!(chat_keyed(&gw, None).await.status, 401);
    assert_eq!(chat_keyed(&gw, Some("sk-gw-team-7001")).await.status, 200);

    // A truncated write or a bad merge: the same config without its `auth:` section.
    gw.rewrite_config(&auth_config(&mock, metrics_port, None));
    gw.wait_log(&rejected("file changed"), 1, RELOAD_WAIT).await;
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains(&rejected("file changed")))
        .unwrap();
    assert!(line.contains(" ERROR "), "{log}");
    assert!(
        line.contains("would turn off gateway keys; opening the gateway takes a restart"),
        "{log}"
    );
    assert_eq!(gw.log_count("config reloaded"), 0, "{log}");
    let r = chat_keyed(&gw, None).await;
    assert_eq!(r.status, 401, "still closed: {}", r.text());
    let r = chat_keyed(&gw, Some("sk-gw-team-7001")).await;
    assert_eq!(r.status, 200, "the key still works: {}", r.text());

    // Forced by SIGHUP, the same file is refused again; each refusal is counted.
    gw.signal("HUP");
    gw.wait_log(&rejected("SIGHUP"), 1, RELOAD_WAIT).await;
    assert_eq!(chat_keyed(&gw, None).await.status, 401);
    wait_reload_count(metrics_port, "rejected", 2).await;
    wait_reload_count(metrics_port, "applied", 0).await;
    assert_eq!(
        mock.count(),
        2,
        "only the two keyed requests reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_changes_keys_logs_their_names_not_the_keys() {
    let mock = Mock::start("mock").await;
    let metrics_port = free_port();
    let before = json!([
        { "name": "a", "key": "sk-gw-a-7101" },
        { "name": "c", "key": "sk-gw-c-7103" },
    ]);
    let gw = start_info(&auth_config(&mock, metrics_port, Some(before))).await;

    let after = json!([
        { "name": "c", "key": "sk-gw-c-7103" },
        { "name": "b", "key": "sk-gw-b-7102" },
    ]);
    gw.rewrite_config(&auth_config(&mock, metrics_port, Some(after)));
    gw.wait_log(&reloaded("file changed"), 1, RELOAD_WAIT).await;
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("gateway keys changed (file changed)"))
        .unwrap_or_else(|| panic!("no key change logged:\n{log}"));
    assert!(line.contains(" INFO "), "{log}");
    assert!(
        line.contains(r#"1 added ["b"], 1 removed ["a"], 0 replaced []"#),
        "{log}"
    );
    for key in ["sk-gw-a-7101", "sk-gw-b-7102", "sk-gw-c-7103"] {
        assert!(!log.contains(key), "{key} logged:\n{log}");
    }
    assert_eq!(chat_keyed(&gw, Some("sk-gw-a-7101")).await.status, 401);
    assert_eq!(chat_keyed(&gw, Some("sk-gw-b-7102")).await.status, 200);
}
