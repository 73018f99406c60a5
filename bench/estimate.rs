//! What estimating the tokens of an answer without usage costs: the encoders' one-time build, and each estimate.
//!
//! `cargo build --release --example bench-estimate && target/release/examples/bench-estimate [--rounds N]`
//! prints the build time and resident memory of each encoder (tiktoken-rs' singletons, built once per
//! process), then the CPU time of one estimate (prompt from the request body + completion from its text;
//! median of N rounds, each estimating 200 times) for a 2 KB chat request with a 500-token completion and a
//! 32 KB request, per encoding, and what `Estimator::submit` costs the submitting thread.

use std::process::ExitCode;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use gpt_api::estimate::{self, ApiKind, Estimator};
use gpt_api::tokens::Tokenizer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SENTENCES: [&str; 8] = [
    "The gateway routes each request to a backend chosen by its model name.",
    "When a stream is cut before its final event, the usage it would have carried never arrives.",
    "Counting the tokens again from the text is slower than reading a number, but it is honest.",
    "Prices differ between models by two orders of magnitude, so the tokenizer matters less than the model.",
    "A short answer, a long answer, and a refusal all cost something; the record should say how much.",
    "Workers on a shared machine see their timings move by ten percent from one run to the next.",
    "The queue is bounded in jobs and in bytes, and a full queue falls back to counting bytes.",
    "Numbers such as 3.14159, 2048 and 1,000,000 split into several tokens each.",
];

/// About `bytes` of English prose, one sentence after another.
fn prose(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + 128);
    let mut i = 0;
    while text.len() < bytes {
        text.push_str(SENTENCES[i % SENTENCES.len()]);
        text.push(' ');
        i += 1;
    }
    text
}

/// A chat request of about `bytes`: a system prompt, then user and assistant turns.
fn chat_request(bytes: usize) -> Vec<u8> {
    let turns = (bytes / 400).max(2);
    let mut messages = vec![serde_json::json!({"role": "system", "content": prose(300)})];
    for i in 0..turns {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(serde_json::json!({"role": role, "content": prose(bytes / turns - 60)}));
    }
    let body = serde_json::json!({"model": "gpt-4o", "stream": true, "messages": messages});
    serde_json::to_vec(&body).expect("JSON")
}

/// Prose of exactly `tokens` tokens or just over, in `tok`.
fn completion(tokens: i64, tok: Tokenizer) -> String {
    let mut bytes = usize::try_from(tokens).expect("tokens") * 4;
    loop {
        let text = prose(bytes);
        if estimate::text_tokens(&text, tok) >= tokens {
            return text;
        }
        bytes += 64;
    }
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    kb / 1024.0
}

/// Median over `rounds` of the µs of one call of `f` (each round calls it `repeat` times).
fn median_us(rounds: usize, repeat: usize, mut f: impl FnMut() -> i64) -> f64 {
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..repeat {
                std::hint::black_box(f());
            }
            start.elapsed().as_secs_f64() * 1e6 / repeat as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let rounds = match args.as_slice() {
        [_] => 15,
        [_, flag, n] if flag == "--rounds" => match n.parse() {
            Ok(n) if n > 0 => n,
            _ => return usage(),
        },
        _ => return usage(),
    };

    println!("| encoder | build ms (once per process) | RSS before MB | RSS after MB | added MB |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, tok) in [
        ("cl100k_base", Tokenizer::Cl100kBase),
        ("o200k_base", Tokenizer::O200kBase),
    ] {
        let before = rss_mb();
        let start = Instant::now();
        estimate::text_tokens("warm up", tok);
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let after = rss_mb();
        println!(
            "| {name} | {ms:.0} | {before:.1} | {after:.1} | {:.1} |",
            after - before
        );
    }

    println!();
    println!("| request | encoding | request bytes | prompt tokens | completion tokens | µs per estimate |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    let cases = [
        ("2 KB chat + 500-token completion", 2 * 1024, 500),
        ("32 KB chat + 500-token completion", 32 * 1024, 500),
        ("32 KB chat, no completion", 32 * 1024, 0),
    ];
    for (name, bytes, completion_tokens) in cases {
        let body = chat_request(bytes);
        for (label, tok) in [
            ("cl100k_base", Tokenizer::Cl100kBase),
            ("o200k_base", Tokenizer::O200kBase),
        ] {
            let text = if completion_tokens > 0 {
                completion(completion_tokens, tok)
            } else {
                String::new()
            };
            let usage = estimate::estimate(ApiKind::Chat, &body, &text, text.len(), tok);
            let us = median_us(rounds, 200, || {
                let u = estimate::estimate(ApiKind::Chat, &body, &text, text.len(), tok);
                u.total.unwrap_or(0)
            });
            let (p, c) = (usage.prompt.unwrap_or(-1), usage.completion.unwrap_or(-1));
            println!(
                "| {name} | {label} | {} | {p} | {c} | {us:.1} |",
                body.len()
            );
        }
    }

    // What the submitting thread pays: the lock, the push and the wake-up of an idle estimator thread.
    let estimator = Estimator::start(4096, 64 << 20);
    let mut times = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let (done, is_done) = channel();
        let start = Instant::now();
        let queued = estimator.submit(
            1,
            Box::new(move || {
                let _ = done.send(());
            }),
        );
        times.push(start.elapsed().as_secs_f64() * 1e9);
        if queued.is_err() || is_done.recv_timeout(Duration::from_secs(10)).is_err() {
            eprintln!("the estimator did not run a job");
            return ExitCode::FAILURE;
        }
    }
    estimator.close(Duration::from_secs(10));
    times.sort_by(f64::total_cmp);
    let (p50, p99) = (times[times.len() / 2], times[times.len() * 99 / 100]);
    println!();
    println!("Estimator::submit to an idle thread (2,000 calls): p50 {p50:.0} ns, p99 {p99:.0} ns");
    println!("RSS at the end: {:.1} MB", rss_mb());
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("usage: bench-estimate [--rounds N]");
    ExitCode::from(2)
}
