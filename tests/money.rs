//! Money: the cost of every record and metric, per-key budgets (the 429 at the boundary, concurrency, restarts),
//! and token counts the gateway estimates when a backend reports none (cut streams, callers who leave).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::mock::{chat_chunk, usage_chunk, usage_json, Reply};
use crate::common::records::{usage_config, wait_exact_rows, wait_one_row, wait_rows, Row};
use crate::common::{client, metrics_text, post_with, send_json, wait_until, Gateway, Mock, BIN};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "sk-team-a-0123456789";

/// One backend serving `models`, a key `team-a` (with `budget_usd` when given), records in `db`, and these
/// prices: `priced` at $1 input, $0.5 cached input, $10 output per 1M tokens; `flat` at $0 input, $10 output;
/// `gpt-4o` at $2.5 / $10.
fn money_config(base_url: &str, db: &Path, budget: Option<Value>) -> Value {
    let mut c = client(
        "a",
        base_url,
        "exact",
        &["priced", "flat", "gpt-4o", "unpriced-zz"],
    );
    c["api_key"] = json!("sk-backend");
    let mut key = json!({ "name": "team-a", "key": KEY });
    if let Some(budget) = budget {
        key["budget_usd"] = budget;
    }
    let mut config = usage_config(vec![c], db, json!({}));
    config["auth"] = json!({ "keys": [key] });
    config["pricing"] = json!({ "models": {
        "priced": { "input": 1, "cached_input": 0.5, "output": 10 },
        "flat": { "input": 0, "output": 10 },
        "gpt-4o": { "input": 2.5, "output": 10 },
    } });
    config
}

fn bearer() -> String {
    format!("Bearer {KEY}")
}

async fn ask(gw: &Gateway, body: &Value) -> crate::common::Resp {
    post_with(
        gw,
        "/v1/chat/completions",
        body,
        &[("authorization", &bearer())],
    )
    .await
}

fn chat(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "Say hello" }] })
}

/// A chat completion answer with this content and, when given, this usage.
fn answer(model: &str, content: &str, usage: Option<Value>) -> String {
    let mut v = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": model,
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": content }, "finish_reason": "stop" }],
    });
    if let Some(usage) = usage {
        v["usage"] = usage;
    }
    v.to_string()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test(flavor = "multi_thread")]
async fn json_and_stream_records_carry_their_cost_and_the_metric_counts_it() {
    let mock = Mock::start("a").await;
    let db = tempfile::tempdir().unwrap();
    let metrics_port = crate::common::free_port();
    let mut config = money_config(&mock.base_url("/v1"), db.path(), None);
    config["server"] = json!({ "metrics_listen": format!("127.0.0.1:{metrics_port}") });
    let gw = Gateway::start(&config).await;

    // 1000 prompt tokens of which 200 cached, 100 completion: 800 x $1 + 200 x $0.5 + 100 x $10 per 1M.
    let usage = json!({ "prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100,
        "prompt_tokens_details": { "cached_tokens": 200 } });
    mock.set_reply(Reply::body(answer("priced", "hi", Some(usage))));
    assert_eq!(ask(&gw, &chat("priced")).await.status, 200);
    // A stream: 10 prompt, 5 completion tokens.
    let events = vec![chat_chunk(
        "priced",
        json!([{ "index": 0, "delta": { "content": "hi" } }]),
    )];
    let usage = usage_chunk("priced", "chat.completion.chunk", usage_json(10, 5));
    mock.set_reply(Reply::stream(events, Some(usage)));
    let mut stream = chat("priced");
    stream["stream"] = json!(true);
    assert_eq!(ask(&gw, &stream).await.status, 200);
    // A model without a price.
    mock.set_reply(Reply::body(answer(
        "unpriced-zz",
        "hi",
        Some(usage_json(10, 5)),
    )));
    assert_eq!(ask(&gw, &chat("unpriced-zz")).await.status, 200);

    let rows = wait_exact_rows(db.path(), 3).await;
    let cost = |r: &Row| r.cost_usd;
    assert!(close(cost(&rows[0]).unwrap(), 0.0019), "{:?}", rows[0]);
    assert!(close(cost(&rows[1]).unwrap(), 0.00006), "{:?}", rows[1]);
    assert_eq!(cost(&rows[2]), None, "no price: NULL");
    for row in &rows {
        assert_eq!(
            row.usage_estimated,
            Some(0),
            "the backend reported usage: {row:?}"
        );
        assert_eq!(row.key_name.as_deref(), Some("team-a"));
    }

    let text = metrics_text(metrics_port).await;
    let line = text
        .lines()
        .find(|l| l.starts_with("gpt_api_cost_usd_total") && l.contains("backend=\"a\""))
        .unwrap_or_else(|| panic!("no cost series:\n{text}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(close(value, 0.00196), "{line}");
}

/// `flat` costs $10 per 1M output tokens and nothing for input: a request capped at 1000 output tokens
/// reserves exactly $0.01, and the mock's answer (1000 completion tokens) costs exactly that.
fn cent_request() -> Value {
    let mut body = chat("flat");
    body["max_tokens"] = json!(1000);
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_refuses_at_its_exact_boundary_with_insufficient_quota() {
    let mock = Mock::start("a").await;
    mock.set_reply(Reply::body(answer("flat", "hi", Some(usage_json(7, 1000)))));
    let db = tempfile::tempdir().unwrap();
    let budget = json!({ "day": 0.05, "month": 100 });
    let gw = Gateway::start(&money_config(
        &mock.base_url("/v1"),
        db.path(),
        Some(budget),
    ))
    .await;

    let lefts = ["0.040000", "0.030000", "0.020000", "0.010000", "0.000000"];
    for (i, left) in lefts.into_iter().enumerate() {
        let resp = ask(&gw, &cent_request()).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("x-budget-remaining-usd"), Some(left));
        // The next reservation must see this request's cost: it is settled before its record is queued.
        wait_rows(db.path(), i + 1).await;
    }
    let resp = ask(&gw, &cent_request()).await;
    let err = resp.expect_error(429);
    assert_eq!(err["type"], "insufficient_quota");
    assert_eq!(err["code"], "insufficient_quota");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("$0.05 per day (used $0.05"), "{message}");
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    assert_eq!(
        mock.count(),
        5,
        "the refused request never reached the backend"
    );
    let rows = wait_exact_rows(db.path(), 6).await;
    assert_eq!(rows[5].status, Some(429));
    let spent: f64 = rows.iter().filter_map(|r| r.cost_usd).sum();
    assert!(close(spent, 0.05), "{spent}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_requests_cannot_overrun_a_budget() {
    let mock = Mock::start("a").await;
    // Slow streams, so that all 50 are in flight at once.
    let events = vec![
        chat_chunk(
            "flat",
            json!([{ "index": 0, "delta": { "content": "hi" } }])
        );
        4
    ];
    let usage = usage_chunk("flat", "chat.completion.chunk", usage_json(7, 1000));
    mock.set_reply(Reply::stream(events, Some(usage)));
    mock.set_sse(4, Duration::from_millis(100));
    let db = tempfile::tempdir().unwrap();
    let budget = json!({ "month": 0.10 });
    let gw = Gateway::start(&money_config(
        &mock.base_url("/v1"),
        db.path(),
        Some(budget),
    ))
    .await;

    let mut body = cent_request();
    body["stream"] = json!(true);
    let asks = (0..50).map(|_| {
        let (url, body) = (gw.url("/v1/chat/completions"), body.clone());
        async move {
            let resp = send_json(&url, &body, &[("authorization", &bearer())]).await;
            let status = resp.status().as_u16();
            let _ = resp.bytes().await;
            status
        }
    });
    let statuses = futures_util::future::join_all(asks).await;
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((ok, refused), (10, 40), "{statuses:?}");
    let rows = wait_exact_rows(db.path(), 50).await;
    let spent: f64 = rows.iter().filter_map(|r| r.cost_usd).sum();
    assert!(spent <= 0.10 + 0.01 + 1e-9, "spent {spent}");
    assert!(close(spent, 0.10), "spent {spent}");
}

#[tokio::test(flavor = "multi_thread")]
async fn spend_survives_a_restart_and_the_report_bills_it_per_key() {
    let mock = Mock::start("a").await;
    mock.set_reply(Reply::body(answer("flat", "hi", Some(usage_json(7, 1000)))));
    let db = tempfile::tempdir().unwrap();
    let budget = json!({ "day": 0.02 });
    let config = money_config(&mock.base_url("/v1"), db.path(), Some(budget));
    let gw = Gateway::start(&config).await;
    for _ in 0..2 {
        assert_eq!(ask(&gw, &cent_request()).await.status, 200);
    }
    wait_rows(db.path(), 2).await;
    drop(gw);

    let gw = Gateway::start(&config).await;
    let resp = ask(&gw, &cent_request()).await;
    assert_eq!(
        resp.expect_error(429)["type"],
        "insufficient_quota",
        "read back after a restart"
    );
    assert_eq!(mock.count(), 2);
    wait_rows(db.path(), 3).await;

    let month = chrono::Local::now().format("%Y-%m").to_string();
    let out = Command::new(BIN)
        .args(["usage", "--dir", db.path().to_str().unwrap()])
        .args(["--by", "key", "--month", &month, "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = report.to_string();
    assert!(text.contains("team-a"), "{text}");
    let costs = find_numbers(&report, "cost_usd");
    assert!(costs.iter().any(|&c| close(c, 0.02)), "{text}");
}

/// Every number under a key named `name`, anywhere in `v`.
fn find_numbers(v: &Value, name: &str) -> Vec<f64> {
    let mut out = Vec::new();
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == name {
                    out.extend(v.as_f64());
                }
                out.extend(find_numbers(v, name));
            }
        }
        Value::Array(items) => items.iter().for_each(|i| out.extend(find_numbers(i, name))),
        _ => {}
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_without_usage_gets_its_tokens_counted_and_priced() {
    let mock = Mock::start("a").await;
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&money_config(&mock.base_url("/v1"), db.path(), None)).await;
    let fox = "The quick brown fox jumps over the lazy dog";
    mock.set_reply(Reply::body(answer("gpt-4o", fox, None)));
    assert_eq!(ask(&gw, &chat("gpt-4o")).await.status, 200);
    let pieces = ["The quick", " brown fox", " jumps over", " the lazy dog"];
    let events = pieces
        .iter()
        .map(|p| chat_chunk("gpt-4o", json!([{ "index": 0, "delta": { "content": p } }])))
        .collect();
    mock.set_reply(Reply::stream(events, None));
    let mut stream = chat("gpt-4o");
    stream["stream"] = json!(true);
    assert_eq!(ask(&gw, &stream).await.status, 200);

    let rows = wait_exact_rows(db.path(), 2).await;
    for row in &rows {
        assert_eq!(row.usage_estimated, Some(1), "{row:?}");
        // 9 tokens in o200k_base (gpt-4o's tokenizer).
        assert_eq!(row.completion_tokens, Some(9), "{row:?}");
        let prompt = row.prompt_tokens.unwrap();
        assert!((5..20).contains(&prompt), "{row:?}");
        let expected = (prompt as f64 * 2.5 + 9.0 * 10.0) / 1e6;
        assert!(close(row.cost_usd.unwrap(), expected), "{row:?}");
    }
}

/// A backend that streams `EVENTS` one-token events 10 ms apart over raw HTTP/1.1 and counts the events it
/// wrote before the gateway closed the connection.
struct CountingBackend {
    addr: std::net::SocketAddr,
    written: Arc<AtomicUsize>,
    closed_at: Arc<std::sync::Mutex<Option<Instant>>>,
}

const EVENTS: usize = 200;

impl CountingBackend {
    async fn start() -> CountingBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = Arc::new(AtomicUsize::new(0));
        let closed_at = Arc::new(std::sync::Mutex::new(None));
        let (w, c) = (written.clone(), closed_at.clone());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            read_request(&mut socket).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            socket.write_all(head.as_bytes()).await.unwrap();
            for _ in 0..EVENTS {
                let event = chat_chunk(
                    "gpt-4o",
                    json!([{ "index": 0, "delta": { "content": " hello" } }]),
                );
                let data = format!("data: {event}\n\n");
                let chunk = format!("{:x}\r\n{data}\r\n", data.len());
                if socket.write_all(chunk.as_bytes()).await.is_err() {
                    break;
                }
                w.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            *c.lock().unwrap() = Some(Instant::now());
        });
        CountingBackend {
            addr,
            written,
            closed_at,
        }
    }
}

async fn read_request(socket: &mut tokio::net::TcpStream) {
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    loop {
        let n = socket.read(&mut piece).await.unwrap();
        buf.extend_from_slice(&piece[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return;
            }
        }
        assert!(n > 0, "the gateway closed before sending the request");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_who_leaves_mid_stream_is_recorded_499_with_the_tokens_streamed_so_far() {
    let backend = CountingBackend::start().await;
    let db = tempfile::tempdir().unwrap();
    let base = format!("http://{}/v1", backend.addr);
    let gw = Gateway::start(&money_config(&base, db.path(), None)).await;
    let mut body = chat("gpt-4o");
    body["stream"] = json!(true);
    let resp = send_json(
        &gw.url("/v1/chat/completions"),
        &body,
        &[("authorization", &bearer())],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut seen = 0;
    let mut buffer = Vec::new();
    while seen < 50 {
        let chunk = stream.next().await.unwrap().unwrap();
        buffer.extend_from_slice(&chunk);
        seen = String::from_utf8_lossy(&buffer).matches("data: ").count();
    }
    let left = Instant::now();
    drop(stream);

    let row = wait_one_row(db.path()).await;
    // The gateway closed its connection to the backend soon after, so the backend stopped generating.
    wait_until(Duration::from_secs(5), || {
        backend.closed_at.lock().unwrap().is_some()
    })
    .await;
    let closed = backend
        .closed_at
        .lock()
        .unwrap()
        .expect("the backend's connection stayed open");
    assert!(
        closed - left < Duration::from_secs(2),
        "closed {:?} after the caller left",
        closed - left
    );
    let written = backend.written.load(Ordering::SeqCst);
    assert!(written < EVENTS / 2, "the backend wrote {written} events");

    assert_eq!(row.status, Some(499), "{row:?}");
    assert_eq!(row.usage_estimated, Some(1), "{row:?}");
    let completion = row.completion_tokens.unwrap() as f64;
    assert!(
        (completion - written as f64).abs() <= 0.1 * written as f64,
        "completion {completion} vs {written} one-token events written ({seen} read by the caller)"
    );
    assert!(
        row.prompt_tokens.unwrap() > 0 && row.cost_usd.unwrap() > 0.0,
        "{row:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_applies_new_prices_to_new_requests() {
    let mock = Mock::start("a").await;
    mock.set_reply(Reply::body(answer("flat", "hi", Some(usage_json(7, 1000)))));
    let db = tempfile::tempdir().unwrap();
    let mut config = money_config(&mock.base_url("/v1"), db.path(), None);
    let gw = Gateway::builder(&config).log_level("info").start().await;
    assert_eq!(ask(&gw, &chat("flat")).await.status, 200);
    config["pricing"]["models"]["flat"]["output"] = json!(20);
    gw.rewrite_config(&config);
    // The watcher sees the file change (or the signal asks): either reload applies the new price.
    gw.signal("HUP");
    gw.wait_log("config reloaded", 1, Duration::from_secs(10))
        .await;
    assert_eq!(ask(&gw, &chat("flat")).await.status, 200);
    let rows = wait_exact_rows(db.path(), 2).await;
    assert!(close(rows[0].cost_usd.unwrap(), 0.01), "{:?}", rows[0]);
    assert!(close(rows[1].cost_usd.unwrap(), 0.02), "{:?}", rows[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn editing_the_price_file_alone_reloads_the_prices() {
    let mock = Mock::start("a").await;
    mock.set_reply(Reply::body(answer(
        "filed",
        "hi",
        Some(usage_json(7, 1000)),
    )));
    let db = tempfile::tempdir().unwrap();
    let prices = db.path().join("prices.yaml");
    std::fs::write(&prices, "models:\n  filed: { input: 0, output: 10 }\n").unwrap();
    let mut c = client("a", &mock.base_url("/v1"), "exact", &["filed"]);
    c["api_key"] = json!("sk-backend");
    let mut config = usage_config(vec![c], db.path(), json!({}));
    config["pricing"] = json!({ "file": prices.to_str().unwrap() });
    let gw = Gateway::builder(&config).log_level("info").start().await;
    assert_eq!(
        crate::common::post_json(&gw, "/v1/chat/completions", &chat("filed"))
            .await
            .status,
        200
    );
    std::fs::write(&prices, "models:\n  filed: { input: 0, output: 30 }\n").unwrap();
    gw.wait_log("config reloaded (file changed)", 1, Duration::from_secs(10))
        .await;
    assert_eq!(
        crate::common::post_json(&gw, "/v1/chat/completions", &chat("filed"))
            .await
            .status,
        200
    );
    let rows = wait_exact_rows(db.path(), 2).await;
    assert!(close(rows[0].cost_usd.unwrap(), 0.01), "{:?}", rows[0]);
    assert!(close(rows[1].cost_usd.unwrap(), 0.03), "{:?}", rows[1]);
    assert_eq!(
        gw.log_count("config reloaded"),
        1,
        "one reload, none at start"
    );
}
