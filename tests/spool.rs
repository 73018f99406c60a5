//! The usage spool: after `kill -9` under load, every request that got its whole answer has its record once the
//! gateway is started again on the same usage directory, none twice; a SIGTERM'd gateway leaves no spool behind.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::records::{fast_shutdown_conf, rows, usage_config, RECORD_TIMEOUT};
use crate::common::{client, http_client, wait_until, Gateway, Mock};
use serde_json::json;

/// Each request carries its number in this header, which lands in the record's Headers column.
const ID: &str = "x-spool-test";

/// How many rows each request number has in `dir`.
fn rows_by_id(dir: &Path) -> BTreeMap<u64, usize> {
    let mut ids = BTreeMap::new();
    for row in rows(dir) {
        let headers = row.headers_json();
        let id = headers[ID].as_str().and_then(|v| v.parse().ok());
        *ids.entry(id.expect("every row has its request's number"))
            .or_default() += 1;
    }
    ids
}

/// The files in `<dir>/spool`.
fn spool_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("spool")) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// Sends request `id` (a stream every fifth one); true when its whole 200 answer arrived.
async fn request(http: reqwest::Client, url: String, id: u64) -> bool {
    let body = json!({
        "model": "m1",
        "stream": id.is_multiple_of(5),
        "user": format!("user-{id}"),
        "messages": [{ "role": "user", "content": "hi" }],
    });
    let sent = http
        .post(url)
        .header("content-type", "application/json")
        .header(ID, id.to_string())
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await;
    let Ok(resp) = sent else { return false };
    resp.status() == 200 && resp.bytes().await.is_ok()
}

/// Asserts each of `ids` has exactly one row in `dir`, and no request has two.
fn assert_once(dir: &Path, ids: &[u64]) -> BTreeMap<u64, usize> {
    let rows = rows_by_id(dir);
    let missing: Vec<&u64> = ids.iter().filter(|id| !rows.contains_key(id)).collect();
    let twice: Vec<(&u64, &usize)> = rows.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "{} answered request(s) without a row: {missing:?}; rows twice: {twice:?}",
        missing.len()
    );
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_loses_no_answered_request_and_imports_none_twice() {
    let mock = Mock::start("b").await;
    mock.set_sse(2, Duration::ZERO);
    let db = tempfile::tempdir().unwrap();
    // Written once a second: without the spool, a kill loses about a second of records.
    let cfg = usage_config(
        vec![client("a", &mock.base_url("/v1"), "exact", &["m1"])],
        db.path(),
        json!({ "flush_interval_ms": 1000 }),
    );
    let gw = Gateway::start(&cfg).await;
    let pid = gw.pid().unwrap();

    // About 150 requests a second for 2 s, each on its own task; the gateway dies after 1.5 s.
    let http = http_client();
    let answered = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_micros(6_667));
    let (mut tasks, mut killed_after) = (Vec::new(), None);
    for id in 0.. {
        ticks.tick().await;
        if start.elapsed() >= Duration::from_secs(2) {
            break;
        }
        if killed_after.is_none() && start.elapsed() >= Duration::from_millis(1500) {
            let out = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .output()
                .unwrap();
            assert!(out.status.success(), "kill -9 {pid}");
            killed_after = Some(id);
        }
        let (http, url, answered) = (
            http.clone(),
            gw.url("/v1/chat/completions"),
            answered.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if request(http, url, id).await {
                answered.lock().unwrap().push(id);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    let killed_after = killed_after.unwrap();
    assert!(answered.len() > 100, "{} answered", answered.len());
    assert!(
        answered.iter().all(|id| *id < killed_after),
        "the gateway was killed after request {killed_after}"
    );
    eprintln!(
        "{} requests answered before kill -9, {} rows written by then, spool: {:?}",
        answered.len(),
        rows_by_id(db.path()).len(),
        spool_files(db.path())
    );

    // Started again on the same usage directory: it imports what the dead one left.
    let conf_dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::builder(&cfg)
        .server_conf(&fast_shutdown_conf(conf_dir.path()))
        .start()
        .await;
    let imported = wait_until(RECORD_TIMEOUT, || {
        let rows = rows_by_id(db.path());
        answered.iter().all(|id| rows.contains_key(id)) && spool_files(db.path()).is_empty()
    })
    .await;
    let rows = assert_once(db.path(), &answered);
    assert!(imported, "spool left: {:?}", spool_files(db.path()));
    eprintln!("{} rows after the restart", rows.len());

    // A graceful stop of the new gateway writes everything and leaves no spool.
    let more: Vec<u64> = (1_000_000..1_000_100).collect();
    for id in &more {
        assert!(request(http.clone(), gw.url("/v1/chat/completions"), *id).await);
    }
    let status = gw.terminate_and_wait(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}; log:\n{}",
        gw.log()
    );
    let all: Vec<u64> = answered.iter().chain(&more).copied().collect();
    assert_once(db.path(), &all);
    assert!(
        !db.path().join("spool").exists(),
        "SIGTERM leaves no spool: {:?}",
        spool_files(db.path())
    );
}
