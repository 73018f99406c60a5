//! A `redis-server` for the store's tests: a free loopback port, a temp dir, nothing saved; killed on drop.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` of this test; killed when dropped.
pub struct Server {
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        Server::on(free_port())
    }

    pub fn on(port: u16) -> Server {
        install();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--dir", dir.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        let server = Server {
            port,
            child: Some(child),
            _dir: dir,
        };
        assert!(
            wait(|| server.cli(&["PING"]) == "PONG"),
            "redis-server on {port}"
        );
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("timeout")
            .args(["5", "redis-cli", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port nothing listened on a moment ago (the listener is closed before this returns).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `redis-server` from the distribution when missing (under a lock: tests run in parallel processes).
fn install() {
    let script = "command -v redis-server >/dev/null || { apt-get update -qq && \
                  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }";
    let status = Command::new("flock")
        .args(["/tmp/gpt-api-apt.lock", "sh", "-c", script])
        .status()
        .unwrap();
    assert!(status.success(), "could not install redis-server");
}

/// Polls `cond` every 10 ms for up to 5 s.
pub fn wait(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
