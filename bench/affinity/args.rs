//! bench-affinity's flags: the workload, the mock's time model, the strategies and the binaries.

use std::path::PathBuf;

#[derive(Clone)]
pub struct Args {
    pub conversations: usize,
    pub turns: usize,
    pub instances: usize,
    pub slots: usize,
    pub cache_prefixes: usize,
    pub system_tokens: usize,
    pub user_min: usize,
    pub user_max: usize,
    pub answer_tokens: u32,
    pub think_ms: f64,
    pub busy: f64,
    pub time_scale: f64,
    pub base_ms: f64,
    pub token_ms: f64,
    pub decode_ms: f64,
    pub slow_factor: f64,
    pub strategies: Vec<String>,
    pub slow_strategies: Vec<String>,
    pub gateway: PathBuf,
    pub vllm: PathBuf,
    pub gateway_threads: usize,
    pub seed: u64,
}

const HELP: &str = "bench-affinity [--quick] [--conversations 400] [--turns 8] [--instances 4] [--slots 4]
  [--cache-prefixes 2048] [--system-tokens 1500] [--user-tokens 100-300] [--answer-tokens 20] [--think-ms 100]
  [--busy 0.7] [--time-scale 1] [--base-ms 5] [--token-ms 0.02] [--decode-ms 1] [--slow-factor 5]
  [--strategies weighted,least_busy,latency,affinity] [--slow-strategies latency,weighted] (empty: skip;
  client-sticky / client-random: no gateway, the driver sends each conversation to one instance / each request
  to a random one, as references)
  [--gateway target/release/gpt-api] [--vllm target/release/examples/bench-vllm] [--gateway-threads 1] [--seed 1]
--quick: 60 conversations of 4 turns. --time-scale multiplies every mock time and the think time (slower
machine: larger). Times in ms.";

pub fn parse_args() -> Result<Args, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let list = |s: &str| {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let mut a = Args {
        conversations: 400,
        turns: 8,
        instances: 4,
        slots: 4,
        cache_prefixes: 2048,
        system_tokens: 1500,
        user_min: 100,
        user_max: 300,
        answer_tokens: 20,
        think_ms: 100.0,
        busy: 0.7,
        time_scale: 1.0,
        base_ms: 5.0,
        token_ms: 0.02,
        decode_ms: 1.0,
        slow_factor: 5.0,
        strategies: list("weighted,least_busy,latency,affinity"),
        slow_strategies: list("latency,weighted"),
        gateway: root.join("target/release/gpt-api"),
        vllm: root.join("target/release/examples/bench-vllm"),
        gateway_threads: 1,
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--quick" => {
                a.conversations = 60;
                a.turns = 4;
                continue;
            }
            "-h" | "--help" => return Err(HELP.into()),
            _ => {}
        }
        if !HELP.contains(&format!("[{flag} ")) {
            return Err(format!("unknown flag {flag}\n{HELP}"));
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {v}: {e}");
        let num = |v: &str| {
            v.parse::<f64>().map_err(|e| bad(&e)).and_then(|x| {
                if (0.0..=1e6).contains(&x) {
                    Ok(x)
                } else {
                    Err(format!("{flag} {v}: out of range"))
                }
            })
        };
        let count = |v: &str| v.parse::<usize>().map_err(|e| bad(&e));
        match flag.as_str() {
            "--conversations" => a.conversations = count(&v)?,
            "--turns" => a.turns = count(&v)?,
            "--instances" => a.instances = count(&v)?,
            "--slots" => a.slots = count(&v)?,
            "--cache-prefixes" => a.cache_prefixes = count(&v)?,
            "--system-tokens" => a.system_tokens = count(&v)?,
            "--user-tokens" => {
                let (lo, hi) = v
                    .split_once('-')
                    .ok_or_else(|| format!("{flag} {v}: want MIN-MAX"))?;
                (a.user_min, a.user_max) = (count(lo)?, count(hi)?);
            }
            "--answer-tokens" => a.answer_tokens = v.parse().map_err(|e| bad(&e))?,
            "--think-ms" => a.think_ms = num(&v)?,
            "--busy" => a.busy = num(&v)?,
            "--time-scale" => a.time_scale = num(&v)?,
            "--base-ms" => a.base_ms = num(&v)?,
            "--token-ms" => a.token_ms = num(&v)?,
            "--decode-ms" => a.decode_ms = num(&v)?,
            "--slow-factor" => a.slow_factor = num(&v)?,
            "--strategies" => a.strategies = list(&v),
            "--slow-strategies" => a.slow_strategies = list(&v),
            "--gateway" => a.gateway = v.into(),
            "--vllm" => a.vllm = v.into(),
            "--gateway-threads" => a.gateway_threads = count(&v)?,
            "--seed" => a.seed = v.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag}\n{HELP}")),
        }
    }
    let ok = (1..=10_000).contains(&a.conversations)
        && (1..=64).contains(&a.turns)
        && (1..=64).contains(&a.instances)
        && (1..=1000).contains(&a.slots)
        && a.system_tokens <= 100_000
        && (1..=100_000).contains(&a.user_min)
        && (a.user_min..=100_000).contains(&a.user_max)
        && (1..=4096).contains(&a.answer_tokens)
        && a.busy > 0.0
        && a.busy < 1.0
        && a.time_scale > 0.0
        && (1..=64).contains(&a.gateway_threads);
    if !ok {
        return Err(format!("a flag is out of range\n{HELP}"));
    }
    for t in [
        &mut a.think_ms,
        &mut a.base_ms,
        &mut a.token_ms,
        &mut a.decode_ms,
    ] {
        *t *= a.time_scale;
    }
    Ok(a)
}
