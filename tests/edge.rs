//! The HTTP edge against hostile or odd callers: busy ports at start, request framing, header size and
//! deadlines, slow callers, HTTP/1.0 and pipelining. Raw sockets on loopback, every wait with a deadline.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{client, config, free_port, run_bin, to_yaml};
use serde_json::json;

/// The longest a busy port may keep a second instance alive.
const BIND_FAILS_WITHIN: Duration = Duration::from_secs(5);

/// Runs the gateway on `listen` with this config; returns its exit code, stderr and how long it lived.
fn run_to_exit(config: &serde_json::Value, listen: &str) -> (i32, String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, to_yaml(config)).unwrap();
    let conf = dir.path().join("server.yaml");
    std::fs::write(
        &conf,
        format!(
            "---\nversion: 1\nthreads: 1\npid_file: {}\nupgrade_sock: {}\n",
            dir.path().join("pid").display(),
            dir.path().join("upgrade.sock").display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = run_bin(
        &[
            "--config",
            path.to_str().unwrap(),
            "--listen",
            listen,
            "-c",
            conf.to_str().unwrap(),
        ],
        &[],
        &[],
        dir.path(),
    );
    (out.code, out.stderr, started.elapsed())
}

fn one_client() -> serde_json::Value {
    config(vec![client("a", "http://127.0.0.1:9/v1", "exact", &["m1"])])
}

#[test]
fn busy_listen_port_is_exit_1_at_once() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr, lived) = run_to_exit(&one_client(), &addr);
    assert_eq!(code, 1, "stderr:\n{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("in use"),
        "stderr does not name the busy address:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
    assert!(lived < BIND_FAILS_WITHIN, "lived {lived:?}:\n{stderr}");
}

#[test]
fn busy_metrics_port_is_exit_1_at_once() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = taken.local_addr().unwrap().to_string();
    let mut cfg = one_client();
    cfg["server"] = json!({ "metrics_listen": metrics });
    let listen = format!("127.0.0.1:{}", free_port());
    let (code, stderr, lived) = run_to_exit(&cfg, &listen);
    assert_eq!(code, 1, "stderr:\n{stderr}");
    assert!(
        stderr.contains(&metrics) && stderr.contains("in use"),
        "stderr does not name the busy address:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
    assert!(lived < BIND_FAILS_WITHIN, "lived {lived:?}:\n{stderr}");
}
