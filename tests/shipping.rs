//! Usage records shipped to PostgreSQL (#17): gateways with their own usage dirs and `cluster.node` ship every
//! row to a real PostgreSQL exactly once, through a 30 s outage under load and through a `kill -9` in the middle
//! of shipping; and `gpt-api usage --postgres` adds up to what the files say.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Local};
use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::common::postgres::{shipped, shipped_count, Postgres};
use crate::common::records::{rows, usage_config};
use crate::common::{client, free_port, metrics_text, run_bin, send_json, wait_for, Gateway, Mock};
use gpt_api::secret::Secret;
use gpt_api::usage::ship::legacy_request_id;
use gpt_api::usage::{Month, Store, TokenUsage, UsageRecord};

/// A gateway recording into `dir` as node `node`, shipping to `url`, with its metrics on `metrics`.
fn shipping_config(mock: &Mock, dir: &Path, node: &str, url: &str, metrics: u16) -> Value {
    let clients = vec![client("a", &mock.base_url("/v1"), "exact", &["m1", "m2"])];
    let mut config = usage_config(clients, dir, json!({ "postgres_url": url }));
    config["cluster"] = json!({ "node": node });
    config["server"] = json!({ "metrics_listen": format!("127.0.0.1:{metrics}") });
    config
}

/// The RequestId of every row in the files of `dirs` (rows without one get the id `legacy_node` derives).
fn recorded(dirs: &[&Path], legacy_node: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for dir in dirs {
        for row in rows(dir) {
            let id = row.request_id.clone().unwrap_or_else(|| {
                let node = row.node.clone().unwrap_or_else(|| legacy_node.into());
                let month = Month {
                    year: row.time[..4].parse().unwrap(),
                    month: row.time[5..7].parse().unwrap(),
                };
                legacy_request_id(&node, month, row.id).to_string()
            });
            ids.push(id);
        }
    }
    ids
}

/// Asserts PostgreSQL holds exactly the rows of the files of `dirs`, each once.
async fn assert_shipped_once(db: &Client, dirs: &[&Path], legacy_node: &str) {
    let files = recorded(dirs, legacy_node);
    let distinct: BTreeSet<String> = files.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        files.len(),
        "a RequestId twice in the files"
    );
    let shipped = shipped(db).await;
    let twice: Vec<_> = shipped.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "rows shipped twice: {twice:?}");
    let in_pg: BTreeSet<String> = shipped.into_keys().collect();
    let missing: Vec<_> = distinct.difference(&in_pg).take(5).collect();
    let extra: Vec<_> = in_pg.difference(&distinct).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} rows in the files, {} in PostgreSQL; missing {missing:?}, not in the files {extra:?}",
        distinct.len(),
        in_pg.len()
    );
}

/// `gpt_api_usage_ship_pending_rows` on the metrics listener at `port`.
async fn pending(port: u16) -> u64 {
    let text = metrics_text(port).await;
    let line = text
        .lines()
        .find(|l| l.starts_with("gpt_api_usage_ship_pending_rows "));
    line.and_then(|l| l.split(' ').nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no pending gauge in:\n{text}"))
}

/// Chat requests at a steady rate, round robin over the gateways, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(urls: Vec<String>, every: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let (halt, count) = (stop.clone(), answered.clone());
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            let mut sent = Vec::new();
            for i in 0usize.. {
                ticks.tick().await;
                if halt.load(Relaxed) {
                    break;
                }
                let (url, count) = (urls[i % urls.len()].clone(), count.clone());
                sent.push(tokio::spawn(async move {
                    let body = json!({ "model": "m1", "messages": [{ "role": "user", "content": i.to_string() }] });
                    let resp = send_json(&url, &body, &[]).await;
                    assert_eq!(resp.status(), 200);
                    resp.bytes().await.unwrap();
                    count.fetch_add(1, Relaxed);
                }));
            }
            for request in sent {
                request.await.unwrap();
            }
        });
        Load {
            stop,
            answered,
            task,
        }
    }

    /// Stops sending and waits for the answers; returns how many requests were answered.
    async fn finish(self) -> usize {
        self.stop.store(true, Relaxed);
        self.task.await.unwrap();
        self.answered.load(Relaxed)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_30_s_outage_under_load_ships_every_row_once_within_30_s_of_the_return() {
    let pg = Postgres::start();
    let db = pg.client().await;
    let mock = Mock::start("b").await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (metrics_a, metrics_b) = (free_port(), free_port());
    // Trust authentication takes any password: the one in the URL must not reach a log line.
    let url = pg.url().replace("postgres@", "postgres:s3cret@");
    let config_a = shipping_config(&mock, dir_a.path(), "gw-a", &url, metrics_a);
    let config_b = shipping_config(&mock, dir_b.path(), "gw-b", &url, metrics_b);
    let a = Gateway::builder(&config_a).log_level("info").start().await;
    let b = Gateway::builder(&config_b).log_level("info").start().await;
    let urls = vec![a.url("/v1/chat/completions"), b.url("/v1/chat/completions")];
    // 20 requests a second over the two gateways.
    let load = Load::start(urls, Duration::from_millis(50));
    let flowing = wait_for(Duration::from_secs(15), || async {
        shipped_count(&db).await >= 20
    })
    .await;
    assert!(flowing, "nothing shipped; gateway a:\n{}", a.log());

    pg.stop();
    let (mut most_a, mut most_b) = (0, 0);
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        most_a = most_a.max(pending(metrics_a).await);
        most_b = most_b.max(pending(metrics_b).await);
    }
    pg.start_again();
    let back = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answered = load.finish().await;
    assert!(answered >= 600, "{answered} requests answered in ~35 s");
    assert!(
        most_a >= 100 && most_b >= 100,
        "rows waiting rose during the outage: {most_a} on a, {most_b} on b"
    );

    let dirs = [dir_a.path(), dir_b.path()];
    let written = wait_for(Duration::from_secs(10), || async {
        rows(dirs[0]).len() + rows(dirs[1]).len() >= answered
    })
    .await;
    assert!(
        written,
        "not every answered request has its row in the files"
    );
    let total = rows(dirs[0]).len() + rows(dirs[1]).len();
    let db = pg.client().await;
    let caught_up = wait_for(Duration::from_secs(30), || async {
        shipped_count(&db).await >= total
    })
    .await;
    let took = back.elapsed();
    assert!(
        caught_up && took < Duration::from_secs(30),
        "{} of {total} rows in PostgreSQL {took:?} after it came back",
        shipped_count(&db).await
    );
    assert_shipped_once(&db, &dirs, "-").await;
    assert!(
        wait_for(Duration::from_secs(5), || async {
            pending(metrics_a).await == 0
        })
        .await
    );
    for gw in [&a, &b] {
        let log = gw.log();
        let warned = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("usage shipping:"))
            .count();
        assert_eq!(
            warned, 1,
            "one WARN for the outage, not one per retry:\n{log}"
        );
        assert!(
            log.contains("works again after"),
            "an INFO once it recovered:\n{log}"
        );
        assert!(!log.contains("s3cret"));
    }
    eprintln!("{total} rows; all in PostgreSQL {took:?} after its return; waiting at most {most_a} / {most_b}");
}

/// `n` records of the current month in `dir` as node `node` wrote them: bodies of about 1 KB, three keys with
/// costs, every fifth one without a request id or node (written before those columns existed).
fn prefill(dir: &Path, node: &str, n: usize) {
    let now: DateTime<FixedOffset> = Local::now().fixed_offset();
    let body = "x".repeat(1000);
    let records: Vec<UsageRecord> = (0..n)
        .map(|i| {
            let legacy = i % 5 == 0;
            UsageRecord {
                time: now,
                ip: "10.0.0.1".into(),
                model: "m1".into(),
                kind: "chat.completions".into(),
                tokens: TokenUsage {
                    prompt: Some(10),
                    completion: Some(20),
                    total: Some(30),
                    ..TokenUsage::default()
                },
                tool: false,
                multimodal: false,
                headers: r#"{"content-type":"application/json"}"#.into(),
                request: Some(format!("{{\"n\":{i},\"pad\":\"{body}\"}}")),
                response: Some(body.clone()),
                backend: Some("a".into()),
                upstream_model: Some("m1".into()),
                stream: false,
                status: 200,
                latency_ms: 5,
                first_token_ms: None,
                attempts: 1,
                error: None,
                key_name: Some(format!("team-{}", i % 3)),
                cost_usd: Some(0.001 * (i % 7) as f64),
                usage_estimated: false,
                affinity_key: None,
                request_id: (!legacy).then(|| uuid::Uuid::now_v7().to_string()),
                node: (!legacy).then(|| node.into()),
            }
        })
        .collect();
    let mut store = Store::new(dir);
    for chunk in records.chunks(2000) {
        store.write(chunk).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_shipping_then_a_restart_ships_every_row_once() {
    const ROWS: usize = 20_000;
    let pg = Postgres::start();
    let db = pg.client().await;
    let mock = Mock::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    prefill(dir.path(), "gw-k", ROWS);
    let config = shipping_config(&mock, dir.path(), "gw-k", &pg.url(), free_port());
    let gw = Gateway::builder(&config).log_level("info").start().await;
    let started = wait_for(Duration::from_secs(20), || async {
        shipped_count(&db).await > 0
    })
    .await;
    assert!(started, "nothing shipped:\n{}", gw.log());
    // Hold the table: the next batch's INSERT waits in PostgreSQL, and the gateway dies while it does. Once
    // the lock goes, that INSERT may still commit, its progress never written: the restart sends it again.
    let mut locker = pg.client().await;
    let hold = locker.transaction().await.unwrap();
    hold.batch_execute("LOCK TABLE records IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO records%'";
    let blocked = wait_for(Duration::from_secs(20), || async {
        db.query_one(waiting, &[]).await.unwrap().get::<_, i64>(0) > 0
    })
    .await;
    assert!(blocked, "no INSERT waiting for the lock:\n{}", gw.log());
    let before_kill = shipped_count(&db).await;
    let pid = gw.pid().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(gw);
    hold.rollback().await.unwrap();
    assert!(
        before_kill < ROWS,
        "killed with {before_kill} of {ROWS} rows shipped: {} waiting",
        ROWS - before_kill
    );
    // The dead gateway's INSERT goes through once the lock is gone (PostgreSQL does not look for the client
    // before it commits): rows in PostgreSQL that the file's progress does not count, sent again below.
    let orphan = wait_for(Duration::from_secs(10), || async {
        shipped_count(&db).await > before_kill
    })
    .await;
    let after_kill = shipped_count(&db).await;

    let gw = Gateway::builder(&config).log_level("info").start().await;
    let done = wait_for(Duration::from_secs(40), || async {
        shipped_count(&db).await >= ROWS
    })
    .await;
    assert!(
        done,
        "{} of {ROWS} rows after the restart:\n{}",
        shipped_count(&db).await,
        gw.log()
    );
    assert_shipped_once(&db, &[dir.path()], "gw-k").await;
    assert!(
        orphan,
        "the INSERT waiting at the kill did not commit: nothing was sent twice"
    );

    // Each key's spend, read back from PostgreSQL, is what the file says.
    let now = Local::now();
    let files = gpt_api::usage::spend_by_key(dir.path(), now).unwrap();
    let url = Secret::new(pg.url());
    let shared = gpt_api::usage::ship::spend_by_key(&url, now).await.unwrap();
    assert_eq!(shared.len(), 3, "{shared:?}");
    for (key, spend) in &files {
        let other = shared[key];
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(
            close(spend.month_usd, other.month_usd) && close(spend.day_usd, other.day_usd),
            "{key}: {spend:?} in the file, {other:?} in PostgreSQL"
        );
    }
    let blocking = gpt_api::usage::ship::spend_by_key_blocking(&url, now).unwrap();
    assert_eq!(blocking, shared);
    eprintln!(
        "killed with {before_kill} of {ROWS} rows shipped ({after_kill} once its last INSERT committed); \
         all {ROWS} there once after the restart"
    );
}

/// `gpt-api usage` with these arguments, run in `dir`: its JSON report without the `files` it read.
fn report(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["usage", "--format", "json"];
    all.extend_from_slice(args);
    let out = run_bin(&all, &[], &[], dir);
    assert_eq!(out.code, 0, "gpt-api {all:?}: {}", out.stderr);
    let mut report: Value = serde_json::from_str(&out.stdout).unwrap();
    report.as_object_mut().unwrap().remove("files");
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_from_postgres_adds_up_like_the_files() {
    let pg = Postgres::start();
    let db = pg.client().await;
    let mock = Mock::start("b").await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config_a = shipping_config(&mock, dir_a.path(), "gw-a", &pg.url(), free_port());
    let config_b = shipping_config(&mock, dir_b.path(), "gw-b", &pg.url(), free_port());
    let a = Gateway::builder(&config_a).start().await;
    let b = Gateway::builder(&config_b).start().await;
    let mut sent = 0;
    for (gw, model, stream, n) in [
        (&a, "m1", false, 6),
        (&a, "m2", true, 3),
        (&a, "nope", false, 2),
        (&b, "m1", false, 4),
        (&b, "m2", false, 1),
    ] {
        for i in 0..n {
            let body = json!({ "model": model, "stream": stream, "messages": [{ "role": "user", "content": format!("{i}") }] });
            let resp = send_json(&gw.url("/v1/chat/completions"), &body, &[]).await;
            resp.bytes().await.unwrap();
            sent += 1;
        }
    }
    let dirs = [dir_a.path(), dir_b.path()];
    let shipped_all = wait_for(Duration::from_secs(20), || async {
        rows(dirs[0]).len() + rows(dirs[1]).len() == sent && shipped_count(&db).await == sent
    })
    .await;
    assert!(
        shipped_all,
        "{} rows shipped of {sent}",
        shipped_count(&db).await
    );

    let work = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dirs[0].to_str().unwrap(), dirs[1].to_str().unwrap());
    let url = pg.url();
    for by in [
        None,
        Some("node"),
        Some("node,model"),
        Some("day,backend"),
        Some("key"),
    ] {
        let mut files = vec!["--dir", a_dir, "--dir", b_dir];
        let mut shared = vec!["--postgres", url.as_str()];
        if let Some(by) = by {
            files.extend(["--by", by]);
            shared.extend(["--by", by]);
        }
        assert_eq!(
            report(work.path(), &shared),
            report(work.path(), &files),
            "--by {by:?}"
        );
    }
    let by_node = report(work.path(), &["--postgres", &url, "--by", "node"]);
    let nodes: Vec<&str> = by_node["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["gw-a", "gw-b"]);
    assert_eq!(by_node["total"]["requests"], json!(sent));
    assert_eq!(
        by_node["rows"][0]["errors"],
        json!(2),
        "the unknown model's 404s"
    );

    // `--postgres` alone reads the config's usage.postgres_url.
    let config = work.path().join("config.yaml");
    std::fs::write(&config, crate::common::to_yaml(&config_a)).unwrap();
    let config = config.to_str().unwrap();
    let from_config = report(
        work.path(),
        &["--config", config, "--postgres", "--by", "node"],
    );
    assert_eq!(from_config, by_node);
    let out = run_bin(
        &["usage", "--postgres", &url, "--dir", a_dir],
        &[],
        &[],
        work.path(),
    );
    assert_ne!(out.code, 0, "--postgres and --dir together");
}
