//! A real `redis-server` for the cluster tests: a free loopback port, a temp dir, nothing saved; killed on drop,
//! and killed and restarted (empty) on the same port on demand. Installed from the distribution when missing.

use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use super::free_port;

/// How long a started redis-server may take to answer `PING`.
const READY: Duration = Duration::from_secs(10);

/// A running (or killed) redis-server of one test.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one on a fresh port (another when a racing process took it).
    pub fn start() -> Redis {
        install();
        let mut redis = Redis {
            port: 0,
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for _ in 0..3 {
            redis.port = free_port();
            if redis.spawn() {
                return redis;
            }
        }
        panic!("redis-server could not bind a port after 3 attempts");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: no goodbye to its clients) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty (nothing was saved).
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server could not bind {} again",
            self.port
        );
    }

    /// `redis-cli` with these arguments (5 s at most); its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("timeout")
            .args(["5", "redis-cli", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Whole-number value of a Redis key (0 when absent).
    pub fn number(&self, key: &str) -> i64 {
        self.cli(&["GET", key]).parse().unwrap_or(0)
    }

    /// Spawns on `self.port` and waits for `PONG`; false when the port was taken.
    fn spawn(&mut self) -> bool {
        let log = self.dir.path().join(format!("redis-{}.log", self.port));
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("redis log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + READY;
        loop {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(text.contains("in use"), "redis-server exited:\n{text}");
                return false;
            }
            if self.cli(&["PING"]) == "PONG" {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server not ready within {READY:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-server` from the distribution when missing, once per test process, under a lock shared with the
/// other test processes (`.ci/run` installs it too).
fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let script = "command -v redis-server >/dev/null || { apt-get update -qq && \
                      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }";
        let status = Command::new("flock")
            .args(["/tmp/gpt-api-apt.lock", "sh", "-c", script])
            .status()
            .expect("run flock");
        assert!(status.success(), "could not install redis-server");
    });
}
