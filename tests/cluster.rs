//! Many gateways as one (`cluster.redis_url`): rpm, tpm, concurrency and budgets shared through a real Redis;
//! Redis killed (each node counts alone, or refuses with `deny`) and back (shared again within 5 s); spend
//! seeded once into a flushed Redis.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::inflight::InFlight;
use crate::common::mock::{usage_json, Reply};
use crate::common::records::{usage_config, wait_rows};
use crate::common::redis::Redis;
use crate::common::{client, free_port, http_client, metrics_text, wait_until, Gateway, Mock};
use serde_json::{json, Value};

const KEY: &str = "sk-cluster-team-0123456789";
/// How soon a node must share again once Redis answers.
const BACK_WITHIN: Duration = Duration::from_secs(5);

/// One gateway of the cluster, with its metrics port (and its records, when it owns them).
struct Node {
    gw: Gateway,
    metrics: u16,
    _dir: Option<tempfile::TempDir>,
}

/// The key `team` with `limits` merged in, one client for `m1` and `flat` (priced $10 per 1M output tokens)
/// at `base`, records in `dir`, Redis at `redis_url`, /metrics on port `metrics`.
fn node_config(base: &str, redis_url: &str, limits: &Value, dir: &Path, metrics: u16) -> Value {
    let mut c = client("a", base, "exact", &["m1", "flat"]);
    c["api_key"] = json!("sk-backend");
    let mut key = json!({ "name": "team", "key": KEY });
    for (k, v) in limits.as_object().unwrap() {
        key[k] = v.clone();
    }
    let free = json!({ "name": "free", "key": "sk-cluster-free-0123456789" });
    let mut config = usage_config(vec![c], dir, json!({}));
    config["auth"] = json!({ "keys": [key, free] });
    // Debug builds on a loaded 2-core CI machine miss the default 50 ms now and then, and a node that thinks
    // Redis is down counts alone; the timeout itself is tested in src/ratelimit/redis/tests.rs.
    config["cluster"] = json!({ "redis_url": redis_url, "redis_timeout_ms": 500 });
    config["server"] = json!({ "metrics_listen": format!("127.0.0.1:{metrics}") });
    config["pricing"] = json!({ "models": { "flat": { "input": 0, "output": 10 } } });
    config
}

async fn start_node(name: &str, base: &str, redis_url: &str, limits: &Value) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start_node_in(name, base, redis_url, limits, dir.path(), |_| {}).await;
    node._dir = Some(dir);
    node
}

/// A node recording into `dir`, its config changed by `tweak` last.
async fn start_node_in(
    name: &str,
    base: &str,
    redis_url: &str,
    limits: &Value,
    dir: &Path,
    tweak: impl FnOnce(&mut Value),
) -> Node {
    let metrics = free_port();
    let mut config = node_config(base, redis_url, limits, dir, metrics);
    config["cluster"]["node"] = json!(name);
    tweak(&mut config);
    let gw = Gateway::start(&config).await;
    Node {
        gw,
        metrics,
        _dir: None,
    }
}

async fn start_nodes(n: usize, base: &str, redis: &Redis, limits: Value) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(start_node(&format!("gw-{i}"), base, &redis.url(), &limits).await);
    }
    nodes
}

/// POSTs a chat request for `model` with `key`; the status and the response (its body read to the end).
async fn ask(
    http: &reqwest::Client,
    node: &Node,
    body: &Value,
    key: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = post(http, &node.gw.url("/v1/chat/completions"), body, key)
        .send()
        .await
        .unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, resp.text().await.unwrap_or_default())
}

fn post(http: &reqwest::Client, url: &str, body: &Value, key: &str) -> reqwest::RequestBuilder {
    http.post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap())
}

async fn status(http: &reqwest::Client, node: &Node) -> u16 {
    ask(http, node, &chat("m1"), KEY).await.0
}

fn chat(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] })
}

/// `gpt_api_redis_up` on the node's /metrics, when shown.
async fn redis_up(node: &Node) -> Option<i64> {
    let text = metrics_text(node.metrics).await;
    let line = text.lines().find(|l| l.starts_with("gpt_api_redis_up "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until every node shows `gpt_api_redis_up` = `up`; false at `within`.
async fn wait_redis_up(nodes: &[&Node], up: i64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let mut all = true;
        for node in nodes {
            all &= redis_up(node).await == Some(up);
        }
        if all {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls a Redis number until it is `value` (updates after admission are sent in the background).
async fn wait_number(redis: &Redis, key: &str, value: i64) -> i64 {
    let mut seen = redis.number(key);
    wait_until(Duration::from_secs(5), || {
        seen = redis.number(key);
        seen == value
    })
    .await;
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn three_gateways_share_one_rpm_limit() {
    let mock = Mock::start("a").await;
    let redis = Redis::start();
    let nodes = start_nodes(3, &mock.base_url("/v1"), &redis, json!({ "rpm": 600 })).await;
    // Start just after a whole second (Redis's clock is this machine's): the window's first second then holds
    // nearly all of that second's requests and leaves the window only after the last request is sent.
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let to_next = Duration::from_secs(1) - Duration::from_nanos(since_epoch.subsec_nanos().into());
    let start = tokio::time::Instant::now() + to_next + Duration::from_millis(20);
    let clients = nodes.iter().map(|node| async move {
        let http = http_client();
        let mut ticks = tokio::time::interval_at(start, Duration::from_millis(50));
        let mut sent = tokio::task::JoinSet::new();
        for _ in 0..1200 {
            ticks.tick().await;
            let (http, url) = (http.clone(), node.gw.url("/v1/chat/completions"));
            sent.spawn(async move {
                let resp = post(&http, &url, &chat("m1"), KEY).send().await;
                resp.map_or(0, |r| r.status().as_u16())
            });
        }
        sent.join_all().await
    });
    let statuses: Vec<u16> = futures_util::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    eprintln!("{ok} of 3600 answered, {limited} refused (rpm 600 over 3 gateways)");
    assert_eq!(ok + limited, 3600, "only 200 and 429");
    assert!(
        (594..=606).contains(&ok),
        "{ok} answered in 60 s for an rpm of 600"
    );
    assert_eq!(mock.count(), ok);
}

/// A key whose rpm is large enough for grants (each node admits from blocks counted in Redis ahead of its
/// requests): 960 requests over 3 gateways are admitted with few script calls; 840 more admit the rest of the
/// rpm of 1200 and no more; Redis counts what was admitted once the grants' leftovers are given back.
#[tokio::test(flavor = "multi_thread")]
async fn three_gateways_share_a_large_rpm_through_grants() {
    let mock = Mock::start("a").await;
    let redis = Redis::start();
    let nodes = start_nodes(3, &mock.base_url("/v1"), &redis, json!({ "rpm": 1200 })).await;
    let calls = || -> u64 {
        let stats = redis.cli(&["INFO", "commandstats"]);
        let line = stats.lines().find(|l| l.starts_with("cmdstat_evalsha:"));
        let n = line.and_then(|l| l.split("calls=").nth(1)?.split(',').next()?.parse().ok());
        n.unwrap_or(0)
    };
    // Each node: `rounds` of 8 requests at once, as fast as they are answered.
    let send = |rounds: usize| {
        let clients = nodes.iter().map(move |node| async move {
            let http = http_client();
            let url = node.gw.url("/v1/chat/completions");
            let mut statuses = Vec::new();
            for _ in 0..rounds {
                let round = (0..8).map(|_| {
                    let (http, url) = (http.clone(), url.clone());
                    async move {
                        let resp = post(&http, &url, &chat("m1"), KEY).send().await;
                        resp.map_or(0, |r| r.status().as_u16())
                    }
                });
                statuses.extend(futures_util::future::join_all(round).await);
            }
            statuses
        });
        async move {
            let all = futures_util::future::join_all(clients).await;
            all.into_iter().flatten().collect::<Vec<u16>>()
        }
    };
    let before = calls();
    let first = send(40).await;
    let sent = calls() - before;
    eprintln!("960 requests under the rpm in {sent} script calls");
    assert!(first.iter().all(|&s| s == 200), "all under the rpm");
    assert!(sent < 240, "{sent} script calls for 960 requests");

    let statuses = send(35).await;
    let ok = first.len() + statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    eprintln!("{ok} of 1800 answered, {limited} refused (rpm 1200 over 3 gateways)");
    assert_eq!(ok + limited, 1800, "only 200 and 429");
    assert!(
        (1188..=1200).contains(&ok),
        "{ok} answered for an rpm of 1200"
    );
    assert_eq!(mock.count(), ok);
    let counted = || redis.cli(&["HGET", "gpt-api:{team}:requests", "sum"]);
    let back = wait_until(Duration::from_secs(5), || counted() == ok.to_string()).await;
    assert!(back, "Redis counts {} for {ok} admitted", counted());
}

#[tokio::test(flavor = "multi_thread")]
async fn three_gateways_share_one_tpm_limit() {
    let mock = Mock::start("a").await;
    let answer = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "m1",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": "hi" }, "finish_reason": "stop" }],
        "usage": usage_json(10, 10),
    });
    mock.set_reply(Reply::body(answer.to_string()));
    let redis = Redis::start();
    let nodes = start_nodes(3, &mock.base_url("/v1"), &redis, json!({ "tpm": 100 })).await;
    let http = http_client();
    let sum = || {
        redis
            .cli(&["HGET", "gpt-api:{team}:tokens", "sum"])
            .parse()
            .unwrap_or(0)
    };
    let mut admitted = 0;
    for i in 0..10 {
        let (status, headers, body) = ask(&http, &nodes[i % 3], &chat("m1"), KEY).await;
        if status == 429 {
            assert!(body.contains("tokens per minute (limit 100)"), "{body}");
            assert_eq!(headers["x-ratelimit-remaining-tokens"], "0");
            break;
        }
        assert_eq!(status, 200, "{body}");
        admitted += 1;
        // The next check must see this request's 20 tokens, counted on whichever node served it.
        assert!(wait_until(Duration::from_secs(5), || sum() == 20 * admitted).await);
    }
    assert_eq!(
        admitted, 5,
        "100 tokens a minute across the nodes, 20 per request"
    );
    for node in &nodes {
        assert_eq!(
            status(&http, node).await,
            429,
            "every node sees the shared tokens"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn max_concurrent_holds_across_gateways_and_slots_come_back() {
    let backend = InFlight::start(10, Duration::from_millis(100)).await;
    let redis = Redis::start();
    let limits = json!({ "max_concurrent": 4 });
    let nodes = start_nodes(3, &backend.base_url(), &redis, limits).await;
    let http = http_client();
    let mut stream = chat("m1");
    stream["stream"] = json!(true);
    let burst = |n: usize| {
        let (http, stream, nodes) = (&http, &stream, &nodes);
        futures_util::future::join_all((0..n).map(move |i| async move {
            let (status, _, body) = ask(http, &nodes[i % 3], stream, KEY).await;
            (status, body)
        }))
    };
    let answers = burst(12).await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 4, "{answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*status, 429);
        assert!(body.contains("concurrency_limit"), "{body}");
    }
    assert_eq!(
        backend.most(),
        4,
        "never more than 4 in flight across the nodes"
    );
    let slots = || redis.cli(&["ZCARD", "gpt-api:{team}:slots"]);
    assert!(
        wait_until(BACK_WITHIN, || slots() == "0").await,
        "slots freed at the end"
    );
    assert!(burst(4).await.iter().all(|(s, _)| *s == 200));
    // Their slots are freed after the answers end, sent to Redis in the background.
    assert!(
        wait_until(BACK_WITHIN, || slots() == "0").await,
        "slots freed at the end"
    );

    // Callers who leave mid-stream free their slots too.
    let mut open = Vec::new();
    for i in 0..4 {
        let url = nodes[i % 3].gw.url("/v1/chat/completions");
        let resp = post(&http, &url, &stream, KEY).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        open.push(resp);
    }
    assert_eq!(slots(), "4");
    assert_eq!(status(&http, &nodes[2]).await, 429);
    drop(open);
    assert!(
        wait_until(BACK_WITHIN, || slots() == "0").await,
        "left: {}",
        slots()
    );
    assert!(wait_until(BACK_WITHIN, || backend.now() == 0).await);
    assert!(burst(4).await.iter().all(|(s, _)| *s == 200));
    assert_eq!(backend.most(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_each_node_counts_alone_then_shares_again() {
    let mock = Mock::start("a").await;
    let mut redis = Redis::start();
    let nodes = start_nodes(2, &mock.base_url("/v1"), &redis, json!({ "rpm": 4 })).await;
    let both: Vec<&Node> = nodes.iter().collect();
    let http = http_client();
    let shared_limit_holds = || async {
        for i in 0..4 {
            assert_eq!(status(&http, &nodes[i % 2]).await, 200, "request {i}");
        }
        for node in &nodes {
            assert_eq!(status(&http, node).await, 429, "4 a minute in all");
        }
    };
    shared_limit_holds().await;
    assert!(wait_redis_up(&both, 1, BACK_WITHIN).await);

    redis.kill();
    for node in &nodes {
        for i in 0..4 {
            assert_eq!(
                status(&http, node).await,
                200,
                "node's own limit, request {i}"
            );
        }
        assert_eq!(
            status(&http, node).await,
            429,
            "each node's own limit holds"
        );
    }
    assert!(wait_redis_up(&both, 0, Duration::from_secs(2)).await);
    let log = nodes[0].gw.log();
    assert!(
        log.contains("unavailable") && log.contains("counting on this node alone"),
        "{log}"
    );
    // No error of the gateway's own (Pingora may log a pooled connection it could not reuse).
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("gpt_api"))
        .collect();
    assert!(errors.is_empty(), "{log}");

    redis.restart();
    let restarted = Instant::now();
    assert!(
        wait_redis_up(&both, 1, BACK_WITHIN).await,
        "sharing again within 5 s"
    );
    eprintln!(
        "shared again {:?} after Redis restarted",
        restarted.elapsed()
    );
    // The restarted Redis is empty: 4 more in all.
    shared_limit_holds().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_deny_limited_keys_get_503_while_redis_is_down() {
    let mock = Mock::start("a").await;
    let mut redis = Redis::start();
    // Down before the node starts: not a startup error.
    redis.kill();
    let limits = json!({ "rpm": 100 });
    let dir = tempfile::tempdir().unwrap();
    let deny = |c: &mut Value| c["cluster"]["on_redis_down"] = json!("deny");
    let url = redis.url();
    let node = start_node_in(
        "gw-deny",
        &mock.base_url("/v1"),
        &url,
        &limits,
        dir.path(),
        deny,
    )
    .await;
    let http = http_client();
    let (status, _, body) = ask(&http, &node, &chat("m1"), KEY).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("limits_unavailable"), "{body}");
    let free = ask(&http, &node, &chat("m1"), "sk-cluster-free-0123456789").await;
    assert_eq!(free.0, 200, "a key without limits needs no Redis");
    assert_eq!(redis_up(&node).await, Some(0));

    redis.restart();
    assert!(wait_redis_up(&[&node], 1, BACK_WITHIN).await);
    assert_eq!(ask(&http, &node, &chat("m1"), KEY).await.0, 200);
    assert_eq!(mock.count(), 2);

    // Another Redis takes a restart: a reload says so and keeps the one in use.
    let yaml = std::fs::read_to_string(&node.gw.config_path).unwrap();
    node.gw
        .rewrite_config_yaml(&yaml.replace(&url, "redis://127.0.0.1:1"));
    let warning = "redis_url, redis_timeout_ms or on_redis_down changed: a restart applies it";
    node.gw.wait_log(warning, 1, Duration::from_secs(10)).await;
    assert_eq!(ask(&http, &node, &chat("m1"), KEY).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn budgets_are_shared_and_seeded_once_into_a_flushed_redis() {
    let mock = Mock::start("a").await;
    let answer = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "flat",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": "hi" }, "finish_reason": "stop" }],
        "usage": usage_json(7, 1000),
    });
    mock.set_reply(Reply::body(answer.to_string()));
    let redis = Redis::start();
    let base = mock.base_url("/v1");
    let limits = json!({ "budget_usd": { "day": 0.05 } });
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = redis.url();
    let a = start_node_in("gw-a", &base, &url, &limits, dir_a.path(), |_| {}).await;
    let b = start_node_in("gw-b", &base, &url, &limits, dir_b.path(), |_| {}).await;
    let spent = format!(
        "gpt-api:{{team}}:spent:{}",
        chrono::Local::now().format("%Y-%m-%d")
    );
    // A cent a request: 1000 output tokens at $10 per 1M, and a cent reserved (max_tokens 1000).
    let mut cent = chat("flat");
    cent["max_tokens"] = json!(1000);
    let http = http_client();
    for _ in 0..2 {
        assert_eq!(ask(&http, &a, &cent, KEY).await.0, 200);
    }
    assert_eq!(wait_number(&redis, &spent, 20_000_000).await, 20_000_000);
    let (status, headers, _) = ask(&http, &b, &cent, KEY).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["x-budget-remaining-usd"], "0.020000",
        "b sees a's spend"
    );
    assert_eq!(wait_number(&redis, &spent, 30_000_000).await, 30_000_000);
    for _ in 0..2 {
        assert_eq!(ask(&http, &a, &cent, KEY).await.0, 200);
    }
    assert_eq!(wait_number(&redis, &spent, 50_000_000).await, 50_000_000);
    let (status, _, body) = ask(&http, &b, &cent, KEY).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("insufficient_quota"), "{body}");

    // A flushed Redis is seeded from a's records ($0.04) when a starts again; a second node with the same
    // records (a copy) adds nothing: its seed is sent before its request's cost, so the cost lands on $0.04.
    wait_rows(dir_a.path(), 4).await;
    drop((a, b));
    let copy = tempfile::tempdir().unwrap();
    for file in std::fs::read_dir(dir_a.path()).unwrap() {
        let path = file.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    redis.cli(&["FLUSHALL"]);
    let a = start_node_in("gw-a", &base, &url, &limits, dir_a.path(), |_| {}).await;
    assert_eq!(
        wait_number(&redis, &spent, 40_000_000).await,
        40_000_000,
        "seeded"
    );
    let c = start_node_in("gw-c", &base, &url, &limits, copy.path(), |_| {}).await;
    let (status, headers, _) = ask(&http, &c, &cent, KEY).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-budget-remaining-usd"], "0.000000");
    assert_eq!(
        wait_number(&redis, &spent, 50_000_000).await,
        50_000_000,
        "not doubled"
    );
    assert_eq!(ask(&http, &a, &cent, KEY).await.0, 429);
}
