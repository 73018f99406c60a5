//! Balancing benchmark: conversations replayed through gpt-api to mock vLLM instances, per `routing.balance`.
//!
//! `cargo build --release --bin gpt-api --example bench-vllm --example bench-affinity &&
//! target/release/examples/bench-affinity [--quick] [flags]`; see bench/affinity.md for the model and the flags
//! (`--help` lists them). For each strategy it starts a fresh `bench-vllm` (4 instances) and a gpt-api with that
//! `routing.balance` (no `routing:` section for `weighted`), replays the conversations at the rate that keeps the
//! instances ~70% busy, and prints the prefix hit rate, mean and p99 time to first byte, and requests per
//! instance. A second scenario makes one instance 5x slower halfway through (`latency` against `weighted`) and
//! prints the share of requests it got after the change. A strategy gpt-api rejects is reported and skipped.

#[path = "affinity/args.rs"]
mod args;
#[path = "affinity/procs.rs"]
mod procs;
#[path = "affinity/workload.rs"]
mod workload;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use args::{parse_args, Args};
use procs::{start_gateway, start_vllm};
use workload::{plan, Conversation, Plan, Rng};

/// Longest wait for one whole answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Times to first byte (ms) of the successful requests, and the number of failed ones.
type Outcome = (Vec<f64>, usize);

/// One conversation, turn after turn: each request carries the history and the previous answers.
async fn converse(
    client: reqwest::Client,
    urls: Vec<String>,
    system: Arc<str>,
    conv: Conversation,
    t0: Instant,
) -> Outcome {
    tokio::time::sleep_until((t0 + Duration::from_secs_f64(conv.start_ms / 1000.0)).into()).await;
    let key = format!("conv-{}", conv.id);
    let mut messages = vec![json!({"role": "system", "content": &*system})];
    let mut ttfb = Vec::with_capacity(conv.users.len());
    for ((user, think), url) in conv.users.into_iter().zip(conv.think_ms).zip(urls) {
        tokio::time::sleep(Duration::from_secs_f64(think / 1000.0)).await;
        messages.push(json!({"role": "user", "content": user}));
        let body =
            json!({"model": "sim", "stream": true, "prompt_cache_key": key, "messages": messages});
        let sent = Instant::now();
        let resp = client
            .post(&url)
            .header("x-session-id", &key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let Ok(mut resp) = resp else { return (ttfb, 1) };
        if !resp.status().is_success() {
            return (ttfb, 1);
        }
        let mut raw = Vec::new();
        let mut first = None;
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    first.get_or_insert_with(|| sent.elapsed());
                    raw.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(_) => return (ttfb, 1),
            }
        }
        let Some(first) = first else { return (ttfb, 1) };
        ttfb.push(first.as_secs_f64() * 1000.0);
        messages.push(json!({"role": "assistant", "content": answer(&raw)}));
    }
    (ttfb, 0)
}

/// The assistant's text from an SSE stream of chat completion chunks.
fn answer(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if let Some(c) = v
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            out.push_str(c);
        }
    }
    out
}

struct RunResult {
    strategy: String,
    ttfb: Vec<f64>,
    errors: usize,
    stats: Vec<Value>,
    secs: f64,
}

async fn run(
    a: &Args,
    p: &Plan,
    strategy: &str,
    slow: bool,
    dir: &std::path::Path,
) -> Result<Option<RunResult>, String> {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4096)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let (_vllm, addrs) = start_vllm(a, slow.then_some(p.half_ms / 1000.0))?;
    let direct = |i: usize| format!("http://{}/v1/chat/completions", addrs[i % addrs.len()]);
    let mut _gw = None;
    // Where each conversation sends its requests: the gateway, or (client-side references) straight to instances.
    let urls: Box<dyn Fn(usize) -> Vec<String>> = match strategy {
        "client-sticky" => Box::new(|id| vec![direct(id); a.turns]),
        "client-random" => Box::new(|id| {
            let mut rng = Rng(a.seed ^ (id as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
            (0..a.turns).map(|_| direct(rng.next() as usize)).collect()
        }),
        _ => {
            let Some((gw, base)) = start_gateway(a, dir, strategy, &addrs, &client).await? else {
                return Ok(None);
            };
            _gw = Some(gw);
            let url = format!("{base}/v1/chat/completions");
            Box::new(move |_| vec![url.clone(); a.turns])
        }
    };
    let t0 = Instant::now();
    let tasks: Vec<_> = p
        .conversations
        .iter()
        .map(|c| {
            let conv = Conversation {
                id: c.id,
                start_ms: c.start_ms,
                users: c.users.clone(),
                think_ms: c.think_ms.clone(),
            };
            tokio::spawn(converse(
                client.clone(),
                urls(c.id),
                p.system.clone(),
                conv,
                t0,
            ))
        })
        .collect();
    let (mut ttfb, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (v, e) = t.await.map_err(|e| e.to_string())?;
        ttfb.extend(v);
        errors += e;
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut stats = Vec::with_capacity(addrs.len());
    for addr in &addrs {
        let r = client
            .get(format!("http://{addr}/stats"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body = r.bytes().await.map_err(|e| e.to_string())?;
        stats.push(serde_json::from_slice::<Value>(&body).map_err(|e| e.to_string())?);
    }
    Ok(Some(RunResult {
        strategy: strategy.to_string(),
        ttfb,
        errors,
        stats,
        secs,
    }))
}

fn sum(stats: &[Value], field: &str) -> u64 {
    stats.iter().map(|s| s[field].as_u64().unwrap_or(0)).sum()
}

fn per_instance(stats: &[Value], field: &str) -> Vec<u64> {
    stats
        .iter()
        .map(|s| s[field].as_u64().unwrap_or(0))
        .collect()
}

fn pct(a: u64, b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * a as f64 / b as f64)
    }
}

/// Mean, p50 and p99 (nearest rank).
fn summary(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = |q: f64| s[((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1];
    (
        s.iter().sum::<f64>() / s.len() as f64,
        rank(0.5),
        rank(0.99),
    )
}

fn max_min(v: &[u64]) -> String {
    match (v.iter().max(), v.iter().min()) {
        (Some(&hi), Some(&lo)) if lo > 0 => format!("{:.2}", hi as f64 / lo as f64),
        _ => "inf".into(),
    }
}

fn main() -> std::process::ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: tokio: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench(a)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn bench(a: Args) -> Result<(), String> {
    let p = plan(&a);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let n = a.conversations * a.turns;
    println!(
        "# Balancing: {} conversations x {} turns ({n} requests), {} instances x {} slots, LRU {} prefixes",
        a.conversations, a.turns, a.instances, a.slots, a.cache_prefixes
    );
    println!();
    println!(
        "System prompt {} tokens, user messages {}-{} tokens, answers {} tokens, think time {:.0} ms (exponential).",
        a.system_tokens, a.user_min, a.user_max, a.answer_tokens, a.think_ms
    );
    println!(
        "Mock: first byte after {} ms + {} ms x uncached prompt token, then {} tokens {} ms apart. Mean slot time \
         with only the system prompt cached {:.1} ms -> {:.0} requests/s for {:.0}% busy; halfway at {:.1} s.",
        a.base_ms, a.token_ms, a.answer_tokens, a.decode_ms, p.mean_service_ms, p.rate, a.busy * 100.0,
        p.half_ms / 1000.0
    );
    println!();
    println!(
        "| strategy | prefix hit rate | cached prompt tokens | mean TTFB ms | p50 TTFB ms | p99 TTFB ms \
         | requests per instance | max/min | errors | run s | busy |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |");
    for s in &a.strategies {
        let Some(r) = run(&a, &p, s, false, dir.path()).await? else {
            continue;
        };
        let (mean, p50, p99) = summary(&r.ttfb);
        let reqs = per_instance(&r.stats, "requests");
        println!(
            "| {} | {} | {} | {mean:.1} | {p50:.1} | {p99:.1} | {reqs:?} | {} | {} | {:.1} | {:.0}% |",
            r.strategy,
            pct(sum(&r.stats, "hits"), sum(&r.stats, "eligible")),
            pct(sum(&r.stats, "cached_tokens"), sum(&r.stats, "prompt_tokens")),
            max_min(&reqs),
            r.errors,
            r.secs,
            100.0 * sum(&r.stats, "busy_us") as f64 / 1e6 / (r.secs * (a.instances * a.slots) as f64)
        );
        let _ = std::io::stdout().flush();
    }
    if a.slow_strategies.is_empty() {
        return Ok(());
    }
    println!();
    println!(
        "Instance 0 becomes {}x slower {:.1} s after the first request (halfway through the planned arrivals).",
        a.slow_factor, p.half_ms / 1000.0
    );
    println!();
    println!(
        "| strategy | slow instance's share after | requests per instance after | mean TTFB ms | p50 TTFB ms \
         | p99 TTFB ms | errors | run s |"
    );
    println!("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for s in &a.slow_strategies {
        let Some(r) = run(&a, &p, s, true, dir.path()).await? else {
            continue;
        };
        let (mean, p50, p99) = summary(&r.ttfb);
        let after = per_instance(&r.stats, "after_slow");
        println!(
            "| {} | {} | {after:?} | {mean:.1} | {p50:.1} | {p99:.1} | {} | {:.1} |",
            r.strategy,
            pct(after.first().copied().unwrap_or(0), after.iter().sum()),
            r.errors,
            r.secs
        );
        let _ = std::io::stdout().flush();
    }
    Ok(())
}
