//! Integration-test harness: a recording mock OpenAI backend, the real gateway binary on a free port, and HTTP helpers.

pub mod http;
pub mod inflight;
pub mod mock;
pub mod postgres;
pub mod process;
pub mod python;
pub mod raw;
pub mod records;
pub mod redis;
pub mod reload;
pub mod tls;

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use http::*;
pub use mock::{Behavior, Mock, Recorded};

/// Path of the gateway binary built by cargo for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_gpt-api");

/// How long the gateway may take to start answering `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

/// A loopback port that was free a moment ago (bound to port 0, read, released).
pub fn free_port() -> u16 {
    let l = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------------------------
// Config building
// ---------------------------------------------------------------------------------------------------------------

/// One `openai_clients` entry; tweak the returned value (`c["priority"] = json!(2)`) before building the config.
pub fn client(name: &str, base_url: &str, kind: &str, values: &[&str]) -> Value {
    json!({
        "name": name,
        "base_url": base_url,
        "model_match": { "type": kind, "value": values },
    })
}

/// A whole config with these clients and no `server` section (the harness passes `--listen`).
pub fn config(clients: Vec<Value>) -> Value {
    json!({ "openai_clients": clients })
}

/// A whole config with `server.max_body_bytes` set.
pub fn config_with_max_body(clients: Vec<Value>, max_body_bytes: u64) -> Value {
    json!({ "server": { "max_body_bytes": max_body_bytes }, "openai_clients": clients })
}

pub fn to_yaml(v: &Value) -> String {
    serde_yaml::to_string(v).expect("config to yaml")
}

// ---------------------------------------------------------------------------------------------------------------
// Gateway process
// ---------------------------------------------------------------------------------------------------------------

/// Starts a gateway process; see [`Gateway::builder`].
pub struct GatewayBuilder {
    yaml: String,
    env: Vec<(String, String)>,
    env_remove: Vec<String>,
    log_level: String,
    server_conf: Option<PathBuf>,
}

impl GatewayBuilder {
    /// Passes Pingora's server conf with `-c PATH` (e.g. one written by [`tls::server_conf`]).
    pub fn server_conf(mut self, path: &Path) -> Self {
        self.server_conf = Some(path.to_path_buf());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        self.env_remove.push(key.to_string());
        self
    }

    /// RUST_LOG for the child (default `warn`, or `GPT_API_TEST_LOG` when set).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// Spawns the gateway and waits until `GET /health` answers 200 `{"status":"ok"}`.
    /// A port lost to a race with another process is retried with a fresh port.
    pub async fn start(self) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, &self.yaml).expect("write config");
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let log_path = dir.path().join(format!("gateway-{port}.stderr.log"));
            let out_path = dir.path().join(format!("gateway-{port}.stdout.log"));
            let child = self.spawn(&config_path, port, &log_path, &out_path);
            let mut gw = Gateway {
                port,
                child: Some(child),
                log_path,
                config_path: config_path.clone(),
                _dir: None,
            };
            match gw.wait_ready().await {
                Ok(()) => {
                    gw._dir = Some(dir);
                    return gw;
                }
                Err(Exit::Exited(log)) if log.contains("in use") => {
                    last_log = log;
                    continue;
                }
                Err(Exit::Exited(log)) => {
                    panic!(
                        "gateway exited before becoming ready; config:\n{}\nstderr:\n{log}",
                        self.yaml
                    )
                }
                Err(Exit::Timeout(log)) => {
                    panic!(
                        "gateway not ready within {START_TIMEOUT:?}; config:\n{}\nstderr:\n{log}",
                        self.yaml
                    )
                }
            }
        }
        panic!("gateway could not bind a port after 3 attempts; stderr:\n{last_log}");
    }

    fn spawn(&self, config_path: &Path, port: u16, log_path: &Path, out_path: &Path) -> Child {
        let mut cmd = Command::new(BIN);
        // In the temp dir: relative paths (the default usage dir `database`) never land in the working tree.
        if let Some(dir) = config_path.parent() {
            cmd.current_dir(dir);
        }
        cmd.arg("--config")
            .arg(config_path)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"));
        if let Some(conf) = &self.server_conf {
            cmd.arg("-c").arg(conf);
        }
        cmd.env("RUST_LOG", &self.log_level)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(out_path).expect("create stdout log"))
            .stderr(std::fs::File::create(log_path).expect("create stderr log"));
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.spawn().expect("spawn gpt-api")
    }
}

enum Exit {
    Exited(String),
    Timeout(String),
}

/// A running gateway process, killed on drop. Its stderr is printed when the test panics.
pub struct Gateway {
    pub port: u16,
    child: Option<Child>,
    log_path: PathBuf,
    pub config_path: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Gateway {
    pub fn builder(config: &Value) -> GatewayBuilder {
        Self::builder_yaml(&to_yaml(config))
    }

    pub fn builder_yaml(yaml: &str) -> GatewayBuilder {
        GatewayBuilder {
            yaml: yaml.to_string(),
            env: Vec::new(),
            env_remove: Vec::new(),
            server_conf: None,
            log_level: std::env::var("GPT_API_TEST_LOG").unwrap_or_else(|_| "warn".to_string()),
        }
    }

    pub async fn start(config: &Value) -> Gateway {
        Self::builder(config).start().await
    }

    /// `http://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Everything the gateway wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    async fn wait_ready(&mut self) -> Result<(), Exit> {
        let deadline = Instant::now() + START_TIMEOUT;
        let http = http_client_with_timeout(Duration::from_secs(2));
        let url = self.url("/health");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(Exit::Exited(format!("(exit {status})\n{}", self.log())));
                }
            }
            if Instant::now() > deadline {
                return Err(Exit::Timeout(self.log()));
            }
            if tokio::net::TcpStream::connect(self.addr()).await.is_ok() {
                if let Ok(resp) = http.get(&url).send().await {
                    if resp.status() == 200 {
                        let body = resp.bytes().await.unwrap_or_default();
                        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        if v == json!({"status": "ok"}) {
                            return Ok(());
                        }
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- gateway stderr (port {}) -----\n{}\n-----",
                self.port,
                self.log()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// `--check`
// ---------------------------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct CheckOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `gpt-api --config <file> --check` on this YAML with extra env vars (and `env_remove` names unset).
pub fn check(yaml: &str, env: &[(&str, &str)], env_remove: &[&str]) -> CheckOutput {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).expect("write config");
    run_bin(
        &["--config", path.to_str().unwrap(), "--check"],
        env,
        env_remove,
        dir.path(),
    )
}

/// Runs the binary with these args to completion (20 s limit), output captured through files.
pub fn run_bin(
    args: &[&str],
    env: &[(&str, &str)],
    env_remove: &[&str],
    dir: &Path,
) -> CheckOutput {
    let out_path = dir.join("run.stdout");
    let err_path = dir.join("run.stderr");
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for k in env_remove {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn gpt-api");
    let deadline = Instant::now() + START_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "gpt-api {args:?} did not exit within {START_TIMEOUT:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(POLL);
    };
    CheckOutput {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// `n` bytes of base64-alphabet filler (deterministic), for big request bodies.
pub fn filler(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            ALPHABET[(x % 64) as usize] as char
        })
        .collect()
}

/// A chat request body of exactly `len` bytes with `model` as the LAST key (built by hand to control the order).
pub fn chat_body_exact_len(model: &str, len: usize) -> Vec<u8> {
    let head = r#"{"messages":[{"role":"user","content":""#;
    let tail = format!(r#""}}],"model":"{model}"}}"#);
    let pad = len
        .checked_sub(head.len() + tail.len())
        .expect("len too small");
    let body = format!("{head}{}{tail}", filler(pad));
    assert_eq!(body.len(), len);
    body.into_bytes()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls the async `done` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_for<F, Fut>(timeout: Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if done().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Stopping the gateway
// ---------------------------------------------------------------------------------------------------------------

impl Gateway {
    /// The gateway's process id, while the harness still owns the process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM (`kill -TERM <pid>`) and waits up to `timeout` for the process to exit by itself.
    /// Returns its exit status, or None when it is still running at the deadline (it is then killed on drop).
    pub async fn terminate_and_wait(
        &mut self,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let pid = self.pid().expect("the gateway process is not running");
        let out = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .output()
            .expect("run kill");
        assert!(
            out.status.success(),
            "kill -TERM {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().expect("wait for the gateway") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Runs `tests/python/<script>` with `args` (the official OpenAI SDK as a real client, loopback only) and
/// fails the test with its output when it does not exit 0.
pub async fn run_python_client(script: &str, args: Vec<std::ffi::OsString>) {
    run_python_script(python::python, script, args).await
}

/// Runs `tests/python/<script>` with `args` under the interpreter `python` gives (a virtualenv's, made on
/// first use: see `python.rs`).
pub async fn run_python_script(
    python: fn() -> std::path::PathBuf,
    script: &str,
    args: Vec<std::ffi::OsString>,
) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(path)
            .args(&args)
            .env("NO_PROXY", "*")
            .env("no_proxy", "*")
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `text` compressed with the HTTP content coding `encoding` (gzip, deflate, br, zstd).
pub fn compress(encoding: &str, text: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match encoding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(text).unwrap();
            e.finish().unwrap()
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(text).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            {
                let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                e.write_all(text).unwrap();
            }
            out
        }
        "zstd" => zstd::encode_all(text, 3).unwrap(),
        other => panic!("no encoder for {other}"),
    }
}
