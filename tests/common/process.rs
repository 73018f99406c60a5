//! Gateway processes under the test's full control: chosen arguments and port, signals, exit, HTTPS readiness.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, http_client_with_timeout, BIN};

/// How long a gateway may take to answer `/health` after it was spawned.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

/// A gateway process; killed on drop, its stderr printed when the test panics.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log_path: PathBuf,
    /// Exit status, once seen.
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns the gateway binary with these arguments; stdout and stderr go to `<dir>/<name>.{out,err}.log`.
    pub fn spawn(name: &str, args: &[OsString], env: &[(&str, &str)], dir: &Path) -> Proc {
        let log_path = dir.join(format!("{name}.err.log"));
        let mut cmd = Command::new(BIN);
        // In `dir`: relative paths (the default usage dir `database`) never land in the working tree.
        cmd.current_dir(dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("{name}.out.log"))).unwrap())
            .stderr(std::fs::File::create(&log_path).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc {
            name: name.to_string(),
            child: Some(cmd.spawn().expect("spawn gpt-api")),
            log_path,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process handle").id()
    }

    /// `kill -<signal> <pid>` (`TERM`, `QUIT`, `HUP`).
    pub fn signal(&self, signal: &str) {
        let out = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .output()
            .expect("run kill");
        assert!(
            out.status.success(),
            "kill -{signal} {} ({}) failed: {}",
            self.pid(),
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The exit status if the process has exited (it is reaped then).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.as_mut().unwrap().try_wait().unwrap();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `needle` appears in the log; panics (with the log) if the process exits first or at `timeout`.
    pub async fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited ({status}) before logging {needle:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log {needle:?} within {timeout:?}:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `ready()` holds; panics with the log when the process exits first or at [`READY_TIMEOUT`].
    /// Returns false (instead of panicking) when the process exited because its port was taken.
    pub async fn wait_ready<F, Fut>(&mut self, mut ready: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                let log = self.log();
                if log.contains("in use") {
                    return false;
                }
                panic!(
                    "{} exited ({status}) before becoming ready:\n{log}",
                    self.name
                );
            }
            if ready().await {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {READY_TIMEOUT:?}:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("----- {} stderr -----\n{}\n-----", self.name, self.log());
        }
    }
}

/// `--config CONFIG --listen 127.0.0.1:PORT [-c CONF]` plus `extra`.
pub fn gateway_args(
    config: &Path,
    port: u16,
    conf: Option<&Path>,
    extra: &[&str],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--config".into(),
        config.into(),
        "--listen".into(),
        format!("127.0.0.1:{port}").into(),
    ];
    if let Some(conf) = conf {
        args.extend(["-c".into(), conf.into()]);
    }
    args.extend(extra.iter().map(OsString::from));
    args
}

/// `GET http://127.0.0.1:PORT/health` answered 200.
pub async fn http_healthy(port: u16) -> bool {
    let url = format!("http://127.0.0.1:{port}/health");
    let client = http_client_with_timeout(Duration::from_secs(2));
    matches!(client.get(&url).send().await, Ok(r) if r.status() == 200)
}

/// `GET https://127.0.0.1:PORT/health` answered 200 by curl trusting `ca` (the gateway's self-signed certificate).
pub async fn https_healthy(port: u16, ca: &Path) -> bool {
    let out = curl(&[
        "-sS".into(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
        "--cacert".into(),
        ca.into(),
        format!("https://127.0.0.1:{port}/health").into(),
    ])
    .await;
    out.status.success() && out.stdout == b"200"
}

/// Runs curl (no proxy, 30 s limit) with these arguments.
pub async fn curl(args: &[OsString]) -> std::process::Output {
    let args = args.to_vec();
    tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["--noproxy", "*", "--max-time", "30"])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run curl")
    })
    .await
    .unwrap()
}

/// Starts a gateway on a fresh port with `make_args(port)` and waits for `ready(port)`; a port lost to another
/// process is retried with a new one. Returns the process and its port.
pub async fn start<A, R, Fut>(name: &str, dir: &Path, make_args: A, ready: R) -> (Proc, u16)
where
    A: Fn(u16) -> Vec<OsString>,
    R: Fn(u16) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..3 {
        let port = free_port();
        let mut proc = Proc::spawn(name, &make_args(port), &[], dir);
        if proc.wait_ready(|| ready(port)).await {
            return (proc, port);
        }
    }
    panic!("{name} could not bind a port after 3 attempts");
}
