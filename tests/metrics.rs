//! Prometheus metrics on `server.metrics_listen`: requests by model, backend and status, failovers by reason,
//! tokens, histograms, in-flight requests, the usage writer and config reloads; nothing listens without it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common::records::{usage_config, wait_exact_rows};
use crate::common::reload::{rejected, reloaded};
use crate::common::{chat_body, client, free_port, get, http_client, post_json, Gateway, Mock};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

/// One sample line of the text format: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the sample lines (comments skipped). Label values here never hold `,` `"` or `}`.
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').unwrap();
                    let labels = inner
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').unwrap();
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
            };
            Sample {
                name,
                labels,
                value,
            }
        })
        .collect()
}

/// A scrape, parsed.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the sample with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Like [`Scrape::get`], panicking with the whole scrape when the sample is missing.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape:\n{}", self.text))
    }

    fn expect(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let got = self.value(name, labels);
        assert_eq!(got, want, "{name}{labels:?}; scrape:\n{}", self.text);
    }

    /// Every sample of this metric.
    fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

async fn scrape(port: u16) -> Scrape {
    let resp = http_client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /metrics on {port}: {e:?}"));
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("text/plain"), "content-type {ct:?}");
    let text = resp.text().await.unwrap();
    let samples = parse(&text);
    Scrape { text, samples }
}

/// Scrapes until `cond` holds; panics with the last scrape after [`WAIT`].
async fn scrape_until(port: u16, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = scrape(port).await;
        if cond(&s) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} not seen within {WAIT:?}; scrape:\n{}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// TCP ports the process listens on: its socket inodes (`/proc/PID/fd`) matched with the LISTEN rows of
/// `/proc/PID/net/tcp` and `tcp6`.
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != "0A" || !inodes.contains(cols[9]) {
                continue;
            }
            let port = cols[1].rsplit_once(':').unwrap().1;
            ports.insert(u16::from_str_radix(port, 16).unwrap());
        }
    }
    ports
}

/// Polls `GET /metrics` on `port` until it answers 200 (the scrape service starts beside the proxy).
async fn metrics_up(port: u16) -> bool {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if matches!(http_client().get(&url).send().await, Ok(r) if r.status() == 200) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_failovers_tokens_usage_and_reloads() {
    let mock = Mock::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let dead_port = free_port();
    let mut dead = client(
        "dead",
        &format!("http://127.0.0.1:{dead_port}/v1"),
        "exact",
        &["m-fo"],
    );
    dead["priority"] = json!(0);
    let mut a = client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["m-ok", "m-fo", "m-stream"],
    );
    a["priority"] = json!(1);
    let clients = vec![dead, a];
    let metrics_port = free_port();
    let mut config = usage_config(clients.clone(), db.path(), json!({}));
    config["server"] = json!({ "metrics_listen": format!("127.0.0.1:{metrics_port}") });
    let gw = Gateway::builder(&config).log_level("info").start().await;
    assert!(
        metrics_up(metrics_port).await,
        "nothing answers on metrics_listen 127.0.0.1:{metrics_port}; stderr:\n{}",
        gw.log()
    );
    assert_eq!(
        listening_ports(gw.pid().unwrap()),
        BTreeSet::from([gw.port, metrics_port]),
        "the API port and the metrics port"
    );
    let not_metrics = http_client()
        .get(format!("http://127.0.0.1:{metrics_port}/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(not_metrics.status(), 404);
    // Nothing to see on the API port.
    assert_eq!(get(&gw, "/metrics").await.status, 404);

    let ok = post_json(&gw, "/v1/chat/completions", &chat_body("m-ok")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let fo = post_json(&gw, "/v1/chat/completions", &chat_body("m-fo")).await;
    assert_eq!(fo.status, 200, "{}", fo.text());
    let mut stream = chat_body("m-stream");
    stream["stream"] = json!(true);
    let st = post_json(&gw, "/v1/chat/completions", &stream).await;
    assert_eq!(st.status, 200, "{}", st.text());
    assert!(st.text().contains("data: [DONE]"), "{}", st.text());
    let unknown = post_json(&gw, "/v1/chat/completions", &chat_body("m-unknown")).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert_eq!(mock.count(), 3);
    // Three routed requests, three records (the 404 has one too).
    wait_exact_rows(db.path(), 4).await;

    let s = scrape_until(
        metrics_port,
        "4 records written and nothing in flight",
        |s| {
            s.get("gpt_api_usage_records_written_total", &[]) == Some(4.0)
                && s.get("gpt_api_requests_in_flight", &[]) == Some(0.0)
        },
    )
    .await;

    let requests = "gpt_api_requests_total";
    for model in ["m-ok", "m-fo", "m-stream"] {
        let labels = [("model", model), ("backend", "a"), ("status", "200")];
        s.expect(requests, &labels, 1.0);
        let pair = [("model", model), ("backend", "a")];
        s.expect("gpt_api_request_duration_seconds_count", &pair, 1.0);
        assert!(
            s.value("gpt_api_request_duration_seconds_sum", &pair) > 0.0,
            "{model}: latency sum"
        );
    }
    // A model no rule names is counted as `other`, answered by no backend; so is `GET /metrics` on the API port.
    s.expect(
        requests,
        &[("model", "other"), ("backend", "none"), ("status", "404")],
        2.0,
    );
    assert!(
        s.all(requests)
            .iter()
            .all(|x| x.labels["backend"] != "dead" && x.labels["model"] != "m-unknown"),
        "the failed attempt is a failover, not a request; unknown models are `other`:\n{}",
        s.text
    );
    s.expect(
        "gpt_api_failovers_total",
        &[("backend", "dead"), ("reason", "connect")],
        1.0,
    );
    assert_eq!(
        s.all("gpt_api_failovers_total").len(),
        1,
        "one failover only:\n{}",
        s.text
    );
    s.expect(
        "gpt_api_backend_consecutive_failures",
        &[("backend", "dead")],
        1.0,
    );
    assert!(
        s.get("gpt_api_backend_cooling", &[("backend", "dead")])
            .is_some(),
        "the backend's cooling gauge:\n{}",
        s.text
    );

    // The JSON answer reports 3 + 1 tokens, the stream (asked for usage by the gateway) 3 + 3.
    let tokens = |model: &str, kind: &str| {
        s.value(
            "gpt_api_tokens_total",
            &[("model", model), ("backend", "a"), ("kind", kind)],
        )
    };
    for (model, prompt, completion) in [
        ("m-ok", 3.0, 1.0),
        ("m-fo", 3.0, 1.0),
        ("m-stream", 3.0, 3.0),
    ] {
        assert_eq!(tokens(model, "prompt"), prompt, "{model}\n{}", s.text);
        assert_eq!(
            tokens(model, "completion"),
            completion,
            "{model}\n{}",
            s.text
        );
        assert_eq!(tokens(model, "cached"), 0.0, "{model}");
        assert_eq!(tokens(model, "reasoning"), 0.0, "{model}");
    }
    s.expect(
        "gpt_api_time_to_first_byte_seconds_count",
        &[("model", "m-stream"), ("backend", "a")],
        1.0,
    );

    s.expect("gpt_api_requests_in_flight", &[], 0.0);
    s.expect("gpt_api_usage_queue_depth", &[], 0.0);
    s.expect("gpt_api_usage_records_dropped_total", &[], 0.0);
    s.expect("gpt_api_usage_write_errors_total", &[], 0.0);
    s.expect(
        "gpt_api_config_reloads_total",
        &[("outcome", "applied")],
        0.0,
    );
    s.expect(
        "gpt_api_config_reloads_total",
        &[("outcome", "rejected")],
        0.0,
    );

    // A valid change is applied, an invalid one rejected; each is counted.
    let mut changed = usage_config(clients, db.path(), json!({}));
    changed["server"] = config["server"].clone();
    changed["openai_clients"][1]["model_match"]["value"] =
        json!(["m-ok", "m-fo", "m-stream", "m-new"]);
    gw.rewrite_config(&changed);
    gw.wait_log(&reloaded("file changed"), 1, WAIT).await;
    // The count follows the log line by a moment.
    let s = scrape_until(metrics_port, "the applied reload counted", |s| {
        s.get("gpt_api_config_reloads_total", &[("outcome", "applied")]) == Some(1.0)
    })
    .await;
    s.expect(
        "gpt_api_config_reloads_total",
        &[("outcome", "applied")],
        1.0,
    );
    s.expect(
        "gpt_api_config_reloads_total",
        &[("outcome", "rejected")],
        0.0,
    );

    gw.rewrite_config_yaml("openai_clients: [{name: broken}]\n");
    gw.wait_log(&rejected("file changed"), 1, WAIT).await;
    // The count follows the log line by a moment.
    let s = scrape_until(metrics_port, "the rejected reload counted", |s| {
        s.get("gpt_api_config_reloads_total", &[("outcome", "rejected")]) == Some(1.0)
    })
    .await;
    s.expect(
        "gpt_api_config_reloads_total",
        &[("outcome", "applied")],
        1.0,
    );
    s.expect(
        "gpt_api_config_reloads_total",
        &[("outcome", "rejected")],
        1.0,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_counts_a_running_stream() {
    let mock = Mock::start("b").await;
    mock.hold_after_first_event();
    let metrics_port = free_port();
    let config = json!({
        "server": { "metrics_listen": format!("127.0.0.1:{metrics_port}") },
        "openai_clients": [client("a", &mock.base_url("/v1"), "exact", &["m1"])],
    });
    let gw = Gateway::start(&config).await;
    let mut body = chat_body("m1");
    body["stream"] = json!(true);
    let resp = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    scrape_until(metrics_port, "one request in flight", |s| {
        s.get("gpt_api_requests_in_flight", &[]) == Some(1.0)
    })
    .await;
    mock.release();
    let text = resp.text().await.unwrap();
    assert!(text.contains("data: [DONE]"), "{text}");
    let s = scrape_until(metrics_port, "nothing in flight", |s| {
        s.get("gpt_api_requests_in_flight", &[]) == Some(0.0)
    })
    .await;
    s.expect(
        "gpt_api_requests_total",
        &[("model", "m1"), ("backend", "a"), ("status", "200")],
        1.0,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_metrics_listen_nothing_else_listens() {
    let mock = Mock::start("b").await;
    let config =
        json!({ "openai_clients": [client("a", &mock.base_url("/v1"), "exact", &["m1"])] });
    let gw = Gateway::start(&config).await;
    let r = post_json(&gw, "/v1/chat/completions", &chat_body("m1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        listening_ports(gw.pid().unwrap()),
        BTreeSet::from([gw.port]),
        "only the API port"
    );
    let r = get(&gw, "/metrics").await;
    assert_eq!(
        r.status,
        404,
        "metrics are not served on the API port: {}",
        r.text()
    );
}
