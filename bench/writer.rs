//! Usage-writer throughput: N realistic records through the gateway's own queue, writer and store into a temp dir.
//!
//! `cargo build --release --example bench-writer && taskset -c 0 target/release/examples/bench-writer
//! [--records N]` (default 200000) prints records/s, wall-clock µs per record and the thread's CPU µs per
//! record (steadier on a shared machine). The records (a small chat completion: ~330-byte headers, ~90-byte
//! request, ~410-byte response) are built before the clock starts, in the form requests hand them over (raw
//! headers and bodies), so the figures are the writer's alone: queue hand-off (with its spool append), rendering
//! the Headers JSON and the bodies, batching (512 per transaction), SQLite insert into a monthly file, and freeing
//! the record.
//!
//! It also times the spool append alone (what `UsageQueue::send` adds to a request before queueing: the frame
//! and one write(2) into `<dir>/spool/`), wall-clock and thread CPU, kernel time included.
//!
//! Instructions per record, free of machine noise: run it under `valgrind --tool=callgrind` with two counts
//! (e.g. 20000 and 60000) and divide the difference of the totals by 40000; that figure also counts building
//! the records (~1,800 instructions each, copies of prepared texts), which the timed figures leave out.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, FixedOffset};
use gpt_api::config::UsageSettings;
use gpt_api::usage::spool::Spool;
use gpt_api::usage::{
    self, capture_headers, CapturedHeaders, CapturedRecord, Month, RawBody, RawTexts, TokenUsage,
    UsageRecord,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::watch;

/// The gateway's allocator (src/main.rs), so records are allocated and freed as they are there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The gateway's default batch size.
const BATCH: usize = 512;
/// Mid-month, so a run of any length stays within one monthly file like a day of traffic does.
const START: &str = "2026-11-10T08:00:00.000+08:00";
/// Distinct header sets, requests and responses: a prime, so neighbouring records always differ.
const DISTINCT: usize = 251;
const MODELS: &[&str] = &["gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3-mini", "gpt-4o"];

fn parse_records() -> Result<usize, String> {
    let mut records = 200_000;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--records", Some(n)) => {
                records = n.parse().map_err(|e| format!("--records {n}: {e}"))?;
            }
            _ => return Err("usage: bench-writer [--records N]".into()),
        }
    }
    if records == 0 {
        return Err("--records must be positive".into());
    }
    Ok(records)
}

/// The bodies and headers records are made of, each built once and copied into the records: making them is
/// the proxy's work, not the writer's, and would weigh on the callgrind difference of two runs.
struct Texts {
    headers: Vec<CapturedHeaders>,
    requests: Vec<Bytes>,
    responses: Vec<Bytes>,
}

impl Texts {
    fn new() -> Texts {
        Texts {
            headers: (0..DISTINCT).map(headers).collect(),
            requests: (0..DISTINCT).map(|i| Bytes::from(request(i))).collect(),
            responses: (0..DISTINCT).map(|i| Bytes::from(response(i))).collect(),
        }
    }
}

/// The headers an OpenAI Python SDK sends, as the proxy captures them (~330 bytes of JSON once rendered).
fn headers(i: usize) -> CapturedHeaders {
    let forwarded = format!("203.0.113.{i}");
    let pairs: [(&str, &str); 11] = [
        ("host", "gateway.internal:8080"),
        ("accept-encoding", "gzip, deflate"),
        ("connection", "keep-alive"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("user-agent", "OpenAI/Python 1.54.4"),
        ("x-stainless-lang", "python"),
        ("x-stainless-runtime-version", "3.12.7"),
        ("authorization", "Bearer sk-not-recorded"),
        ("content-length", "88"),
        ("x-forwarded-for", &forwarded),
    ];
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    capture_headers(&map)
}

/// A small chat completion request (~90 bytes).
fn request(i: usize) -> String {
    format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"Hello! Say something short ({i})."}}]}}"#
    )
}

/// Its answer (~410 bytes).
fn response(i: usize) -> String {
    format!(
        r#"{{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ{i:05}","object":"chat.completion","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[{{"index":0,"message":{{"role":"assistant","content":"Hello! How can I help you today?","refusal":null}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":14,"completion_tokens":10,"total_tokens":24}},"service_tier":"default","system_fingerprint":"fp_fc9f1d7035"}}"#
    )
}

fn record(start: DateTime<FixedOffset>, texts: &Texts, i: usize) -> CapturedRecord {
    let n = i64::try_from(i).unwrap_or(i64::MAX);
    let u = u64::try_from(i).unwrap_or(u64::MAX);
    let row = UsageRecord {
        // A few records a millisecond, as from a busy gateway.
        time: start + chrono::Duration::microseconds(n * 300),
        ip: format!("10.0.{}.{}", i / 256 % 256, i % 256),
        model: MODELS[i % MODELS.len()].to_string(),
        kind: "chat.completions".to_string(),
        tokens: TokenUsage {
            prompt: Some(14 + n % 37),
            completion: Some(10 + n % 50),
            total: Some(24 + n % 37 + n % 50),
            cached: Some(0),
            reasoning: Some(0),
            cache_write: None,
        },
        tool: i.is_multiple_of(7),
        multimodal: false,
        // Rendered by the writer from the raw texts below.
        headers: String::new(),
        request: None,
        response: None,
        backend: Some("openai".to_string()),
        upstream_model: Some("gpt-4o-2024-08-06".to_string()),
        stream: false,
        status: 200,
        latency_ms: 300 + u % 700,
        first_token_ms: None,
        attempts: 1,
        error: None,
        key_name: Some("team-a".to_string()),
        cost_usd: None,
        usage_estimated: false,
        affinity_key: None,
        request_id: None,
        node: None,
    };
    // Copies, as the proxy hands over copies of the request's headers and body and the tap's own buffer.
    let raw = RawTexts {
        headers: texts.headers[i % DISTINCT].clone(),
        request: Some(Bytes::copy_from_slice(&texts.requests[i % DISTINCT])),
        response: Some(RawBody::Bytes(Bytes::copy_from_slice(
            &texts.responses[i % DISTINCT],
        ))),
        max_body: 1 << 20,
    };
    CapturedRecord {
        row,
        raw: Some(Box::new(raw)),
    }
}

/// Wall-clock and CPU time of a run.
struct Took {
    wall: Duration,
    /// `None` where the thread's CPU time cannot be read.
    cpu: Option<Duration>,
}

/// CPU time of the calling thread so far, from Linux's schedstat. On a shared machine this is steadier than
/// the wall clock, which also counts the time other processes hold the core.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// Sends every record through the queue to a running writer, as requests do, and returns when the writer has
/// written them all and stopped. Everything runs on this thread (the runtime has no other, nor has SQLite).
fn write_all(settings: &UsageSettings, records: Vec<CapturedRecord>) -> Result<Took, String> {
    let n = records.len();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let (queue, mut writer) = usage::channel(settings);
    let stats = writer.stats();
    let (start, cpu_start) = (Instant::now(), thread_cpu());
    runtime.block_on(async move {
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(async move { writer.run(shutdown).await });
        for (i, record) in records.into_iter().enumerate() {
            queue.send(record);
            // A full batch has woken the writer: let it run, as a worker thread would.
            if (i + 1).is_multiple_of(BATCH) {
                tokio::task::yield_now().await;
            }
        }
        // Queues gone, then the shutdown signal: the writer takes the rest at once and returns.
        drop(queue);
        let _ = stop.send(true);
        task.await.map_err(|e| format!("writer task: {e}"))
    })?;
    let took = Took {
        wall: start.elapsed(),
        cpu: thread_cpu().zip(cpu_start).map(|(end, start)| end - start),
    };
    let (written, dropped) = (stats.written.load(Relaxed), stats.dropped.load(Relaxed));
    if dropped > 0 || written != u64::try_from(n).unwrap_or(u64::MAX) {
        return Err(format!(
            "{written} records written, {dropped} dropped, of {n}"
        ));
    }
    Ok(took)
}

/// Rows in the month's file, from the AUTOINCREMENT counter: the table starts empty and is only appended to.
fn rows_written(dir: &Path, start: &DateTime<FixedOffset>) -> Result<i64, String> {
    let path = dir.join(Month::of(start).file_name());
    let connection = rusqlite::Connection::open(&path).map_err(|e| format!("{e}"))?;
    connection
        .query_row("SELECT MAX(id) FROM records", [], |row| row.get(0))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn run() -> Result<(), String> {
    let n = parse_records()?;
    let start = DateTime::parse_from_rfc3339(START).map_err(|e| format!("{START}: {e}"))?;
    let texts = Texts::new();
    let records: Vec<CapturedRecord> = (0..n).map(|i| record(start, &texts, i)).collect();
    let text = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
    let body = |b: &Option<RawBody>| match b {
        Some(RawBody::Bytes(b)) => b.len(),
        _ => 0,
    };
    let bytes: usize = records
        .iter()
        .filter_map(|r| r.raw.as_deref())
        .map(|raw| {
            let headers: usize = raw.headers.iter().map(|(n, v)| n.len() + v.len() + 6).sum();
            headers + text(&raw.request) + body(&raw.response)
        })
        .sum();
    let temp = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let settings = UsageSettings {
        dir: temp.path().to_path_buf(),
        batch_size: BATCH,
        ..UsageSettings::default()
    };
    let spool = spool_append(&records)?;
    let took = write_all(&settings, records)?;
    let rows = rows_written(temp.path(), &start)?;
    if usize::try_from(rows).ok() != Some(n) {
        return Err(format!("{rows} rows in the file, expected {n}"));
    }
    let seconds = took.wall.as_secs_f64();
    let cpu = took.cpu.map_or("n/a".to_string(), |cpu| {
        format!("{:.2}", cpu.as_secs_f64() * 1e6 / n as f64)
    });
    println!(
        "bench-writer records={n} batch={BATCH} text_bytes_per_record={} seconds={seconds:.3} \
         records_per_s={:.0} us_per_record={:.2} cpu_us_per_record={cpu}",
        bytes / n,
        n as f64 / seconds,
        seconds * 1e6 / n as f64,
    );
    println!(
        "bench-writer spool append alone (frame + write(2) on the request's thread): us_per_record={:.2} \
         cpu_us_per_record={}",
        spool.wall.as_secs_f64() * 1e6 / n as f64,
        spool.cpu.map_or("n/a".to_string(), |cpu| format!(
            "{:.2}",
            cpu.as_secs_f64() * 1e6 / n as f64
        )),
    );
    Ok(())
}

/// Appends every record to a spool of its own, as `UsageQueue::send` does before queueing: what spooling adds
/// to a request, kernel time included (the CPU figure counts both).
fn spool_append(records: &[CapturedRecord]) -> Result<Took, String> {
    let temp = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let spool = Spool::new(temp.path());
    let (start, cpu_start) = (Instant::now(), thread_cpu());
    for record in records {
        if spool.shard().append(record).is_none() {
            return Err("a record could not be spooled".into());
        }
    }
    Ok(Took {
        wall: start.elapsed(),
        cpu: thread_cpu().zip(cpu_start).map(|(end, start)| end - start),
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench-writer: {message}");
            ExitCode::FAILURE
        }
    }
}
