//! Seeds a usage directory with a month of realistic records through the gateway's own store.

// Seeds a usage directory with a month of realistic records through the gateway's own store (so the rollup and
// indexes are what a gateway writes), for the admin page's speed figures (bench/RESULTS.md).
//
// `cargo build --release --example bench-admin-seed && target/release/examples/bench-admin-seed --dir DIR [--records
// N] [--month YYYY-MM]` (default 1,000,000 records in 2026-11, spread evenly over the month: 6 models, 12 keys, 2
// backends per model, ~3% errors, half streamed, ~1.2 KB of headers and bodies each).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use chrono::{DateTime, Duration, FixedOffset, NaiveDate};
use gpt_api::usage::{Store, TokenUsage, UsageRecord};

const MODELS: [&str; 6] = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "o3-mini",
    "claude-sonnet",
    "llama-70b",
];
const BATCH: usize = 512;

struct Args {
    dir: PathBuf,
    records: usize,
    month: (i32, u32),
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        dir: PathBuf::new(),
        records: 1_000_000,
        month: (2026, 11),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--dir" => out.dir = PathBuf::from(value),
            "--records" => out.records = value.parse().map_err(|e| format!("--records: {e}"))?,
            "--month" => {
                let (y, m) = value.split_once('-').ok_or("--month YYYY-MM")?;
                out.month = (
                    y.parse().map_err(|_| "--month")?,
                    m.parse().map_err(|_| "--month")?,
                );
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if out.dir.as_os_str().is_empty() {
        return Err("usage: bench-admin-seed --dir DIR [--records N] [--month YYYY-MM]".into());
    }
    Ok(out)
}

/// xorshift64*: reproducible figures without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn record(i: usize, time: DateTime<FixedOffset>, rng: &mut Rng) -> UsageRecord {
    let m = rng.below(MODELS.len() as u64) as usize;
    let model = MODELS[m];
    let key = format!("team-{:02}", rng.below(12));
    let backend = format!(
        "{}-{}",
        model.split('-').next().unwrap_or("x"),
        rng.below(2)
    );
    let roll = rng.below(100);
    let status = match roll {
        0 => 500,
        1 => 429,
        2 => 400,
        _ => 200,
    };
    let stream = rng.below(2) == 0;
    let prompt = 50 + rng.below(2000) as i64;
    let completion = 10 + rng.below(800) as i64;
    let ok = status == 200;
    let latency = 80
        + rng.below(400)
        + if rng.below(20) == 0 {
            rng.below(20_000)
        } else {
            0
        };
    let request = format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"Question number {i}: summarise the quarterly report in three bullet points, please, and keep it short."}}]}}"#
    );
    let response = format!(
        r#"{{"id":"chatcmpl-{i}","object":"chat.completion","model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"- Revenue grew 12%.\n- Costs fell.\n- Outlook steady."}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{}}}}}"#,
        prompt + completion
    );
    UsageRecord {
        time,
        ip: "10.1.2.3".into(),
        model: model.into(),
        kind: "chat.completions".into(),
        tokens: TokenUsage {
            prompt: ok.then_some(prompt),
            completion: ok.then_some(completion),
            total: ok.then_some(prompt + completion),
            cached: ok.then_some(prompt / 4),
            reasoning: (ok && model.starts_with('o')).then_some(completion / 2),
            cache_write: None,
        },
        tool: false,
        multimodal: false,
        headers: r#"{"host":"gpt.example.com","user-agent":"OpenAI/Python 1.60.0","content-type":"application/json","authorization":"***","accept":"application/json","x-stainless-lang":"python","x-stainless-package-version":"1.60.0","x-stainless-os":"Linux","x-stainless-arch":"x64","x-stainless-runtime":"CPython"}"#.into(),
        request: Some(request),
        response: Some(response),
        backend: Some(backend),
        upstream_model: Some(model.into()),
        stream,
        status,
        latency_ms: latency,
        first_token_ms: stream.then_some(latency / 3),
        attempts: 1 + u32::from(status == 429),
        error: (!ok).then(|| format!("backend answered {status}")),
        key_name: Some(key),
        cost_usd: ok.then(|| (prompt as f64 * 2.5 + completion as f64 * 10.0) / 1e6),
        usage_estimated: false,
        affinity_key: None,
        request_id: Some(uuid::Uuid::now_v7().hyphenated().to_string()),
        node: None,
    }
}

fn main() -> ExitCode {
    let args = match args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(offset) = FixedOffset::east_opt(8 * 3600) else {
        return ExitCode::FAILURE;
    };
    let (year, month) = args.month;
    let Some(first) = NaiveDate::from_ymd_opt(year, month, 1).and_then(|d| d.and_hms_opt(0, 0, 0))
    else {
        eprintln!("bad month");
        return ExitCode::FAILURE;
    };
    let start = match first.and_local_timezone(offset).single() {
        Some(t) => t,
        None => return ExitCode::FAILURE,
    };
    let span_ms = 29 * 24 * 3600 * 1000 + 23 * 3600 * 1000;
    let mut store = Store::new(&args.dir);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let clock = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..args.records {
        let at = start + Duration::milliseconds((i as i64) * span_ms / args.records.max(1) as i64);
        batch.push(record(i, at, &mut rng));
        if batch.len() == BATCH || i + 1 == args.records {
            if let Err(e) = store.write(&batch) {
                eprintln!("write: {e}");
                return ExitCode::FAILURE;
            }
            batch.clear();
        }
    }
    let secs = clock.elapsed().as_secs_f64();
    println!(
        "{} records into {} in {secs:.1} s ({:.0}/s)",
        args.records,
        args.dir.display(),
        args.records as f64 / secs
    );
    ExitCode::SUCCESS
}
