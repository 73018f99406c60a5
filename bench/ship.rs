//! Shipping throughput: a month file of N realistic records (~1.2 KB of headers and bodies each) shipped by the
//! gateway's own `usage::ship::Shipper` into a PostgreSQL table, rows/s from its start to the last row committed.
//!
//! `bench/ship.sh` starts a throwaway PostgreSQL, runs it and stops it; by hand:
//! `cargo build --release --example bench-ship && target/release/examples/bench-ship --postgres URL
//! [--rows N] [--drop-table]` (default 100000 rows). `--drop-table` first drops the table `records` of that
//! database: give it a scratch database only. Prints rows/s, MB/s of text, and the shipping thread's CPU µs per
//! row (Linux's schedstat of the `usage-ship` thread: SQLite read, conversion, encoding; PostgreSQL's own work
//! is in its server process, not counted).

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset};
use gpt_api::config::UsageSettings;
use gpt_api::secret::Secret;
use gpt_api::usage::ship::Shipper;
use gpt_api::usage::{Store, TokenUsage, UsageRecord};

/// Mid-month, so the rows stay in one monthly file.
const START: &str = "2026-11-10T08:00:00.000+08:00";
const MODELS: &[&str] = &["gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3-mini", "gpt-4o"];

struct Args {
    url: String,
    rows: usize,
    drop_table: bool,
}

fn parse_args() -> Result<Args, String> {
    let usage = "usage: bench-ship --postgres URL [--rows N] [--drop-table]";
    let (mut url, mut rows, mut drop_table) = (None, 100_000, false);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--postgres" => url = args.next(),
            "--rows" => {
                let n = args.next().ok_or(usage)?;
                rows = n.parse().map_err(|e| format!("--rows {n}: {e}"))?;
            }
            "--drop-table" => drop_table = true,
            _ => return Err(usage.into()),
        }
    }
    let url = url.ok_or(usage)?;
    if rows == 0 {
        return Err("--rows must be positive".into());
    }
    Ok(Args {
        url,
        rows,
        drop_table,
    })
}

/// A row as a busy gateway writes it: an OpenAI SDK's headers, a short chat request with a system prompt, its
/// answer, a request id, a node.
fn record(start: DateTime<FixedOffset>, i: usize) -> UsageRecord {
    let n = i64::try_from(i).unwrap_or(i64::MAX);
    let headers = format!(
        r#"{{"host":"gateway.internal:8080","accept-encoding":"gzip, deflate","connection":"keep-alive","accept":"application/json","content-type":"application/json","user-agent":"OpenAI/Python 1.54.4","x-stainless-lang":"python","x-stainless-runtime-version":"3.12.7","authorization":"***","content-length":"488","x-forwarded-for":"203.0.113.{}"}}"#,
        i % 256
    );
    let request = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"system","content":"You are a helpful assistant. Answer briefly and precisely, and say so when you do not know."}},{{"role":"user","content":"Question {i}: what is the capital of the country whose flag is red and white with a maple leaf, and how many people live there? Please answer in one sentence, with the figure rounded."}}],"temperature":0.2,"max_tokens":200}}"#
    );
    let response = format!(
        r#"{{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ{i:07}","object":"chat.completion","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[{{"index":0,"message":{{"role":"assistant","content":"The capital of Canada is Ottawa; the country has about 40 million people.","refusal":null}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":64,"completion_tokens":18,"total_tokens":82}},"service_tier":"default","system_fingerprint":"fp_fc9f1d7035"}}"#
    );
    UsageRecord {
        time: start + chrono::Duration::microseconds(n * 300),
        ip: format!("10.0.{}.{}", i / 256 % 256, i % 256),
        model: MODELS[i % MODELS.len()].to_string(),
        kind: "chat.completions".to_string(),
        tokens: TokenUsage {
            prompt: Some(64 + n % 37),
            completion: Some(18 + n % 50),
            total: Some(82 + n % 37 + n % 50),
            cached: Some(0),
            reasoning: Some(0),
            cache_write: None,
        },
        tool: i.is_multiple_of(7),
        multimodal: false,
        headers,
        request: Some(request),
        response: Some(response),
        backend: Some("openai".to_string()),
        upstream_model: Some("gpt-4o-2024-08-06".to_string()),
        stream: false,
        status: 200,
        latency_ms: 300 + u64::try_from(i % 700).unwrap_or(0),
        first_token_ms: None,
        attempts: 1,
        error: None,
        key_name: Some("team-a".to_string()),
        cost_usd: Some(0.000_35),
        usage_estimated: false,
        affinity_key: None,
        request_id: Some(uuid::Uuid::now_v7().to_string()),
        node: Some("bench".into()),
    }
}

/// Writes `rows` records into the month file under `dir`; returns the bytes of text per row.
fn fill(dir: &Path, rows: usize) -> Result<usize, String> {
    let start = DateTime::parse_from_rfc3339(START).map_err(|e| format!("{START}: {e}"))?;
    let mut store = Store::new(dir);
    let mut bytes = 0;
    let mut batch = Vec::with_capacity(4096);
    for i in 0..rows {
        let r = record(start, i);
        bytes += r.headers.len() + r.request.as_ref().map_or(0, String::len);
        bytes += r.response.as_ref().map_or(0, String::len);
        batch.push(r);
        if batch.len() == 4096 || i + 1 == rows {
            store.write(&batch).map_err(|e| e.to_string())?;
            batch.clear();
        }
    }
    Ok(bytes / rows)
}

/// CPU time of the shipper's thread (named `usage-ship`), from Linux's schedstat.
fn shipper_cpu() -> Option<Duration> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "usage-ship" {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            let nanos = stat.split_whitespace().next()?.parse().ok()?;
            return Some(Duration::from_nanos(nanos));
        }
    }
    None
}

/// Runs one statement on `url`, for `--drop-table` and the final count.
fn query_count(url: &str, drop_table: bool) -> Result<i64, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let target = gpt_api::usage::ship::Target::parse(url).map_err(|e| e.to_string())?;
        let client = target.connect().await.map_err(|e| e.to_string())?;
        if drop_table {
            let dropped = client
                .batch_execute("DROP TABLE IF EXISTS records CASCADE")
                .await;
            dropped.map_err(|e| e.to_string())?;
            return Ok(0);
        }
        let row = client.query_one("SELECT count(*) FROM records", &[]).await;
        row.map(|r| r.get(0)).map_err(|e| e.to_string())
    })
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    if args.drop_table {
        query_count(&args.url, true)?;
    }
    let temp = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let filled = Instant::now();
    let text_bytes = fill(temp.path(), args.rows)?;
    eprintln!(
        "bench-ship: {} rows written to the month file in {:.1} s",
        args.rows,
        filled.elapsed().as_secs_f64()
    );
    let settings = UsageSettings {
        dir: temp.path().to_path_buf(),
        postgres_url: Some(Secret::new(args.url.clone())),
        ..UsageSettings::default()
    };
    let shipper = Shipper::new(&settings, "bench".into())
        .map_err(|e| e.to_string())?
        .ok_or("no shipper")?;
    let stats = shipper.stats();
    let want = u64::try_from(args.rows).unwrap_or(u64::MAX);
    let start = Instant::now();
    shipper.start().map_err(|e| e.to_string())?;
    while stats.shipped.load(Relaxed) < want {
        if start.elapsed() > Duration::from_secs(600) {
            return Err(format!(
                "{} of {want} rows in 600 s",
                stats.shipped.load(Relaxed)
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let wall = start.elapsed();
    let cpu = shipper_cpu();
    shipper.stop(Duration::from_secs(5));
    let count = query_count(&args.url, false)?;
    if count < i64::try_from(args.rows).unwrap_or(i64::MAX) {
        return Err(format!(
            "{count} rows in PostgreSQL, expected {}",
            args.rows
        ));
    }
    let n = args.rows as f64;
    let seconds = wall.as_secs_f64();
    let cpu = cpu.map_or("n/a".to_string(), |c| {
        format!("{:.2}", c.as_secs_f64() * 1e6 / n)
    });
    println!(
        "bench-ship rows={} text_bytes_per_row={text_bytes} batch={} seconds={seconds:.3} rows_per_s={:.0} \
         text_mb_per_s={:.1} shipper_cpu_us_per_row={cpu} rows_in_postgres={count}",
        args.rows,
        gpt_api::usage::ship::BATCH_ROWS,
        n / seconds,
        n * text_bytes as f64 / seconds / 1e6,
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench-ship: {message}");
            ExitCode::FAILURE
        }
    }
}
