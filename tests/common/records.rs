//! Usage records: a config with a `usage:` section, the rows of `<dir>/record_YYYYMM.db` read with rusqlite
//! (read-only), waiting for them, and a Pingora server conf that shuts down fast.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Value};

/// How long a test waits for records to be written (the writer flushes every 50 ms in these configs).
pub const RECORD_TIMEOUT: Duration = Duration::from_secs(15);

/// A config with these clients recording into `dir`, flushed every 50 ms; `usage` fields in `extra` are added
/// or replace the defaults (e.g. `json!({"record_bodies": false})`).
pub fn usage_config(clients: Vec<Value>, dir: &Path, extra: Value) -> Value {
    let mut usage = json!({ "dir": dir.to_str().unwrap(), "flush_interval_ms": 50 });
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            usage[k] = v;
        }
    }
    json!({ "openai_clients": clients, "usage": usage })
}

/// One row of `records`, every column.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: i64,
    pub time: String,
    pub ip: Option<String>,
    pub model: Option<String>,
    pub kind: Option<String>,
    pub completion_tokens: Option<i64>,
    pub prompt_tokens: Option<i64>,
    pub total_tokens: Option<i64>,
    pub tool: Option<i64>,
    pub multimodal: Option<i64>,
    pub headers: Option<String>,
    pub request: Option<String>,
    pub response: Option<String>,
    pub backend: Option<String>,
    pub upstream_model: Option<String>,
    pub stream: Option<i64>,
    pub status: Option<i64>,
    pub latency_ms: Option<i64>,
    pub first_token_ms: Option<i64>,
    pub attempts: Option<i64>,
    pub cached_tokens: Option<i64>,
    pub reasoning_tokens: Option<i64>,
    pub error: Option<String>,
    pub key_name: Option<String>,
    pub cost_usd: Option<f64>,
    pub usage_estimated: Option<i64>,
    pub affinity_key: Option<String>,
    pub request_id: Option<String>,
    pub node: Option<String>,
    pub cache_write_tokens: Option<i64>,
}

impl Row {
    /// The whole row as text, to search for strings that must not be there.
    pub fn dump(&self) -> String {
        format!("{self:?}")
    }

    pub fn headers_json(&self) -> Value {
        serde_json::from_str(self.headers.as_deref().expect("Headers is NULL")).unwrap()
    }

    pub fn response_json(&self) -> Value {
        let text = self.response.as_deref().expect("Response is NULL");
        serde_json::from_str(text).unwrap_or_else(|e| panic!("Response is not JSON ({e}): {text}"))
    }
}

/// The monthly files in `dir` (`record_*.db`), sorted by name.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("record_") && name.ends_with(".db")
        })
        .collect();
    files.sort();
    files
}

const SELECT: &str = "SELECT id, Time, IP, Model, Type, CompletionTokens, PromptTokens, TotalTokens, Tool, \
     Multimodal, Headers, Request, Response, Backend, UpstreamModel, Stream, Status, LatencyMs, FirstTokenMs, \
     Attempts, CachedTokens, ReasoningTokens, Error, KeyName, CostUsd, UsageEstimated, AffinityKey, RequestId, Node, \
     CacheWriteTokens FROM records ORDER BY id";

fn read_file(path: &Path) -> rusqlite::Result<Vec<Row>> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut stmt = conn.prepare(SELECT)?;
    let rows = stmt.query_map([], |r| {
        Ok(Row {
            id: r.get(0)?,
            time: r.get(1)?,
            ip: r.get(2)?,
            model: r.get(3)?,
            kind: r.get(4)?,
            completion_tokens: r.get(5)?,
            prompt_tokens: r.get(6)?,
            total_tokens: r.get(7)?,
            tool: r.get(8)?,
            multimodal: r.get(9)?,
            headers: r.get(10)?,
            request: r.get(11)?,
            response: r.get(12)?,
            backend: r.get(13)?,
            upstream_model: r.get(14)?,
            stream: r.get(15)?,
            status: r.get(16)?,
            latency_ms: r.get(17)?,
            first_token_ms: r.get(18)?,
            attempts: r.get(19)?,
            cached_tokens: r.get(20)?,
            reasoning_tokens: r.get(21)?,
            error: r.get(22)?,
            key_name: r.get(23)?,
            cost_usd: r.get(24)?,
            usage_estimated: r.get(25)?,
            affinity_key: r.get(26)?,
            request_id: r.get(27)?,
            node: r.get(28)?,
            cache_write_tokens: r.get(29)?,
        })
    })?;
    rows.collect()
}

/// Every row of every monthly file in `dir`, oldest file first. A file being created (no table yet) reads
/// as empty.
pub fn rows(dir: &Path) -> Vec<Row> {
    let mut out = Vec::new();
    for file in files(dir) {
        match read_file(&file) {
            Ok(rows) => out.extend(rows),
            Err(e) if e.to_string().contains("no such table") => {}
            Err(e) => panic!("cannot read {}: {e}", file.display()),
        }
    }
    out
}

/// Polls (every 20 ms) until `dir` holds at least `n` rows, then returns them all; panics after
/// [`RECORD_TIMEOUT`] with what is there.
pub async fn wait_rows(dir: &Path, n: usize) -> Vec<Row> {
    let deadline = std::time::Instant::now() + RECORD_TIMEOUT;
    loop {
        let rows = rows(dir);
        if rows.len() >= n {
            return rows;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "{} usage row(s) in {} after {RECORD_TIMEOUT:?}, expected {n}: {rows:#?}",
                rows.len(),
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`wait_rows`], then asserts there are exactly `n` and returns them.
pub async fn wait_exact_rows(dir: &Path, n: usize) -> Vec<Row> {
    let rows = wait_rows(dir, n).await;
    assert_eq!(rows.len(), n, "usage rows: {rows:#?}");
    rows
}

/// Waits for exactly one row and returns it.
pub async fn wait_one_row(dir: &Path) -> Row {
    wait_exact_rows(dir, 1).await.pop().unwrap()
}

/// A Pingora server conf (`-c`) in `dir`: 2 threads, pid file and upgrade socket inside `dir`, and 1 s grace
/// periods so that SIGTERM stops the server within a few seconds.
pub fn fast_shutdown_conf(dir: &Path) -> PathBuf {
    let path = dir.join("server.yaml");
    let yaml = format!(
        "---\nversion: 1\nthreads: 2\npid_file: {}\nupgrade_sock: {}\ngrace_period_seconds: 1\n\
         graceful_shutdown_timeout_seconds: 1\n",
        dir.join("gpt-api.pid").display(),
        dir.join("upgrade.sock").display()
    );
    std::fs::write(&path, yaml).unwrap();
    path
}
