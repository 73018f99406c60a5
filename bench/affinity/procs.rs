//! bench-affinity's processes: a bench-vllm and a gpt-api per run, killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::args::Args;

/// A child process killed (and reaped) when dropped.
pub struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_vllm(a: &Args, slow_after_secs: Option<f64>) -> Result<(Proc, Vec<String>), String> {
    let mut cmd = Command::new(&a.vllm);
    cmd.args([
        "--instances",
        &a.instances.to_string(),
        "--slots",
        &a.slots.to_string(),
    ])
    .args(["--cache-prefixes", &a.cache_prefixes.to_string()])
    .args([
        "--base-ms",
        &a.base_ms.to_string(),
        "--token-ms",
        &a.token_ms.to_string(),
    ])
    .args([
        "--answer-tokens",
        &a.answer_tokens.to_string(),
        "--decode-ms",
        &a.decode_ms.to_string(),
    ]);
    if let Some(s) = slow_after_secs {
        cmd.args([
            "--slow-instance",
            "0",
            "--slow-after-secs",
            &format!("{s:.3}"),
        ])
        .args(["--slow-factor", &a.slow_factor.to_string()]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", a.vllm.display()))?;
    let stdout = child.stdout.take().ok_or("bench-vllm: no stdout")?;
    let proc = Proc(child);
    let mut addrs = Vec::with_capacity(a.instances);
    for line in BufReader::new(stdout).lines().take(a.instances) {
        let line = line.map_err(|e| format!("bench-vllm: {e}"))?;
        let addr = line
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("bench-vllm said {line:?}"))?;
        addrs.push(addr.to_string());
    }
    if addrs.len() != a.instances {
        return Err("bench-vllm exited before listening".into());
    }
    Ok((proc, addrs))
}

fn gateway_config(strategy: &str, port: u16, addrs: &[String]) -> String {
    let mut c = format!("server:\n  listen: \"127.0.0.1:{port}\"\nusage:\n  enabled: false\n");
    if strategy != "weighted" {
        // BENCH_LOAD_FACTOR: a routing.affinity.load_factor other than the gateway's default (a sweep).
        let load_factor = std::env::var("BENCH_LOAD_FACTOR")
            .map(|f| format!("\n    load_factor: {f}"))
            .unwrap_or_default();
        c += &format!(
            "routing:\n  balance: \"{strategy}\"\n  affinity:\n    keys: [\"prompt_cache_key\", \
             \"header:x-session-id\", \"header:session_id\", \"user\", \"prefix\"]\n    \
             prefix_bytes: 4096{load_factor}\n    ttl_seconds: 3600\n"
        );
    }
    c += "openai_clients:\n";
    for (i, addr) in addrs.iter().enumerate() {
        c += &format!(
            "  - name: \"sim{i}\"\n    base_url: \"http://{addr}/v1\"\n    priority: 1\n    \
             model_match: {{type: exact, value: [sim]}}\n"
        );
    }
    c
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Starts gpt-api with `strategy`; `Ok(None)` when its `--check` rejects the config (the strategy is not built).
pub async fn start_gateway(
    a: &Args,
    dir: &std::path::Path,
    strategy: &str,
    addrs: &[String],
    client: &reqwest::Client,
) -> Result<Option<(Proc, String)>, String> {
    let port = free_port()?;
    let config = dir.join(format!("{strategy}.yaml"));
    let write = |p: &std::path::Path, s: &str| {
        std::fs::write(p, s).map_err(|e| format!("{}: {e}", p.display()))
    };
    write(&config, &gateway_config(strategy, port, addrs))?;
    let check = Command::new(&a.gateway)
        .arg("--config")
        .arg(&config)
        .arg("--check")
        .output();
    let check = check.map_err(|e| format!("{}: {e}", a.gateway.display()))?;
    if !check.status.success() {
        let why = String::from_utf8_lossy(&check.stdout).to_string()
            + &String::from_utf8_lossy(&check.stderr);
        eprintln!(
            "bench: gpt-api rejects balance {strategy:?}, skipped: {}",
            why.trim()
        );
        return Ok(None);
    }
    let server = dir.join(format!("{strategy}-server.yaml"));
    let d = dir.display();
    write(
        &server,
        &format!(
            "---\nversion: 1\nthreads: {}\nwork_stealing: false\npid_file: {d}/{strategy}.pid\n\
             upgrade_sock: {d}/{strategy}.sock\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\n",
            a.gateway_threads
        ),
    )?;
    let log =
        std::fs::File::create(dir.join(format!("{strategy}.log"))).map_err(|e| e.to_string())?;
    let child = Command::new(&a.gateway)
        .arg("--config")
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}"), "-c"])
        .arg(&server)
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", a.gateway.display()))?;
    let proc = Proc(child);
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                return Ok(Some((proc, base)));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "gpt-api ({strategy}) not ready after 10 s; log in {}",
        dir.display()
    ))
}
