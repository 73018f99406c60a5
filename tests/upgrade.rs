//! Pingora graceful upgrade under load: a new process takes the listening socket (`-u`), the old one drains after
//! SIGQUIT; no request fails, every stream completes, and each request leaves exactly one usage record.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::process::{gateway_args, http_healthy, start, Proc};
use crate::common::raw::{post, read_until_closed};
use crate::common::records::{rows, usage_config, wait_exact_rows};
use crate::common::{chat_body, client, wait_until, Mock};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const MODEL: &str = "m1";
/// Served by its own mock, slowly: one such stream starts on the old process before SIGQUIT and is still
/// running when that process stops accepting (Pingora's CLOSE_TIMEOUT, 5 s), then ends within the grace period.
const SLOW_MODEL: &str = "slow";
const SLOW_GAP: Duration = Duration::from_millis(300);
const STREAM_EVENTS: usize = 20;
const STREAM_GAP: Duration = Duration::from_millis(50);
const STREAM_CLIENTS: usize = 4;
const PLAIN_CLIENTS: usize = 3;
/// Pause between two requests of a plain client, to keep the load steady rather than flat out.
const PLAIN_PACE: Duration = Duration::from_millis(20);
/// Load kept up after the old process stopped accepting.
const LOAD_AFTER_STOP: Duration = Duration::from_secs(2);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the clients saw.
#[derive(Default)]
struct Tally {
    sent: AtomicUsize,
    ok: AtomicUsize,
    streams_sent: AtomicUsize,
    streams_complete: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) -> Option<Instant> {
        self.failures.lock().unwrap().push(what);
        None
    }
}

/// A client that keeps no idle connection: each request opens its own, so no pooled connection is left for
/// the old process to close under a request (see the idle keep-alive check in the test).
fn fresh_connection_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The gateway's config (`clients`, usage recorded under `dir/usage`) and server conf (below), written into
/// `dir`: their paths.
fn write_configs(dir: &Path, clients: Vec<Value>) -> (PathBuf, PathBuf) {
    let config = usage_config(clients, &dir.join("usage"), json!({}));
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, common::to_yaml(&config)).unwrap();
    (config_path, server_conf(dir))
}

/// Whether process `pid` holds the server side of the loopback TCP connection from `client` to `server` (ports),
/// that is, has accepted it: the socket's inode in `/proc/net/tcp` among the process's file descriptors.
fn holds_connection(pid: u32, server: u16, client: u16) -> bool {
    let local = format!("0100007F:{server:04X}");
    let remote = format!("0100007F:{client:04X}");
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let Some(inode) = tcp.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| fields.get(9).map(|i| format!("socket:[{i}]")))
            .flatten()
    }) else {
        return false;
    };
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == inode.as_str())
            })
        })
        .unwrap_or(false)
}

/// The server conf of both processes: the upgrade socket and pid file in `dir`, 2 s grace periods.
fn server_conf(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("server.yaml");
    let yaml = format!(
        "---\nversion: 1\nthreads: 2\npid_file: {}\nupgrade_sock: {}\ngrace_period_seconds: 2\n\
         graceful_shutdown_timeout_seconds: 2\n",
        dir.join("gpt-api.pid").display(),
        dir.join("upgrade.sock").display()
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

/// One request for `model` on a new connection; checks the whole answer. Returns when it was complete.
async fn one_request(
    http: &reqwest::Client,
    url: &str,
    model: &str,
    stream: bool,
    tally: &Tally,
) -> Option<Instant> {
    let mut body = chat_body(model);
    if stream {
        body["stream"] = json!(true);
        tally.streams_sent.fetch_add(1, Ordering::SeqCst);
    }
    tally.sent.fetch_add(1, Ordering::SeqCst);
    let started = Instant::now();
    let request = http
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap());
    let resp = match request.send().await {
        Ok(r) => r,
        Err(e) => return tally.fail(format!("{model} stream={stream}: send: {e:?}")),
    };
    let status = resp.status().as_u16();
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            let at = started.elapsed();
            return tally.fail(format!("{model} stream={stream}: body after {at:?}: {e:?}"));
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    if status != 200 {
        return tally.fail(format!("{model} stream={stream}: status {status}: {text}"));
    }
    if stream {
        if text != Mock::sse_events(model, STREAM_EVENTS).concat() {
            return tally.fail(format!("{model}: incomplete stream: {text}"));
        }
        tally.streams_complete.fetch_add(1, Ordering::SeqCst);
    } else if serde_json::from_slice::<Value>(&bytes).ok() != Some(Mock::answer_json(model)) {
        return tally.fail(format!("{model}: unexpected answer: {text}"));
    }
    tally.ok.fetch_add(1, Ordering::SeqCst);
    Some(Instant::now())
}

/// A client sending requests one after the other until `stop`, each on a fresh connection.
fn spawn_client(
    url: String,
    stream: bool,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = fresh_connection_client();
        while !stop.load(Ordering::SeqCst) {
            one_request(&http, &url, MODEL, stream, &tally).await;
            if !stream {
                tokio::time::sleep(PLAIN_PACE).await;
            }
        }
    })
}

/// When the server closed an idle connection, and the bytes it sent before closing.
type Closed = Arc<Mutex<Option<(Instant, Vec<u8>)>>>;

/// An HTTP/1.1 keep-alive connection that made one request and now sits idle; a thread reports when the
/// server closes it and what (if anything) it sent before closing.
fn idle_keepalive(port: u16) -> Closed {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: gpt-api\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).unwrap();
    let closed: Closed = Arc::default();
    let report = closed.clone();
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        *report.lock().unwrap() = Some((Instant::now(), rest));
    });
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_upgrade_under_load_loses_nothing() {
    let mock = Mock::start("upgrade").await;
    mock.set_sse(STREAM_EVENTS, STREAM_GAP);
    let slow_mock = Mock::start("slow").await;
    slow_mock.set_sse(STREAM_EVENTS, SLOW_GAP);
    let dir = tempfile::tempdir().unwrap();
    let usage_dir = dir.path().join("usage");
    let (config_path, conf) = write_configs(
        dir.path(),
        vec![
            client("a", &mock.base_url("/v1"), "exact", &[MODEL]),
            client("slow", &slow_mock.base_url("/v1"), "exact", &[SLOW_MODEL]),
        ],
    );
    let upgrade_sock = dir.path().join("upgrade.sock");

    let (mut old, port) = start(
        "old",
        dir.path(),
        |port| gateway_args(&config_path, port, Some(&conf), &[]),
        http_healthy,
    )
    .await;
    let idle_closed = idle_keepalive(port);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let clients: Vec<_> = (0..STREAM_CLIENTS + PLAIN_CLIENTS)
        .map(|i| spawn_client(url.clone(), i < STREAM_CLIENTS, stop.clone(), tally.clone()))
        .collect();
    assert!(
        wait_until(Duration::from_secs(20), || tally.ok.load(Ordering::SeqCst)
            >= 20)
        .await,
        "the load did not get going: {:?}",
        tally.failures.lock().unwrap()
    );

    // The new process waits on the upgrade socket for the old one's listening sockets.
    let args = gateway_args(&config_path, port, Some(&conf), &["-u"]);
    let mut new = Proc::spawn("new", &args, &[], dir.path());
    assert!(
        wait_until(Duration::from_secs(20), || upgrade_sock.exists()).await,
        "the new process never listened on {}:\n{}",
        upgrade_sock.display(),
        new.log()
    );
    // Only the old process accepts until it has handed its sockets over: this stream is served by it.
    let slow = {
        let (url, tally) = (url.clone(), tally.clone());
        tokio::spawn(async move {
            let http = fresh_connection_client();
            one_request(&http, &url, SLOW_MODEL, true, &tally).await
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || slow_mock.count() == 1).await,
        "the slow stream did not reach its backend"
    );
    let quit_at = Instant::now();
    old.signal("QUIT");
    new.wait_log("Bootstrap done", Duration::from_secs(20))
        .await;
    // The old process keeps accepting for Pingora's CLOSE_TIMEOUT (5 s), then stops and drains.
    old.wait_log("Graceful shutdown started", Duration::from_secs(20))
        .await;
    let stopped_accepting_at = Instant::now();
    let stopped_accepting = quit_at.elapsed();
    tokio::time::sleep(LOAD_AFTER_STOP).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let slow_done_at = slow.await.unwrap();

    let status = old.wait_exit(EXIT_TIMEOUT).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the old process did not exit by itself ({status:?}):\n{}",
        old.log()
    );
    let failures = tally.failures.lock().unwrap().clone();
    let sent = tally.sent.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {failures:#?}",
        failures.len()
    );
    assert_eq!(tally.ok.load(Ordering::SeqCst), sent);
    let streams = tally.streams_sent.load(Ordering::SeqCst);
    assert_eq!(tally.streams_complete.load(Ordering::SeqCst), streams);
    assert!(
        new.exited().is_none(),
        "the new process died:\n{}",
        new.log()
    );
    let slow_done_at = slow_done_at.expect("the slow stream failed");
    assert!(
        slow_done_at > stopped_accepting_at,
        "the slow stream ended {:?} before the old process stopped accepting: lengthen SLOW_GAP",
        stopped_accepting_at - slow_done_at
    );

    // Both processes served part of the load.
    let served = |p: &Proc| p.log().matches("/v1/chat/completions").count();
    assert!(
        served(&old) > 0 && served(&new) > 0,
        "old served {}, new {}",
        served(&old),
        served(&new)
    );

    // Idle keep-alive connections are closed a moment after the old process stops accepting (the gateway's 1 s
    // for requests of connections accepted last, then Pingora's cleanup; not at its exit, which comes a grace
    // period later), without sending a byte: a request racing that close fails on the client.
    let closed = idle_closed.lock().unwrap().clone();
    let (closed_at, rest) = closed.expect("the idle keep-alive connection is still open");
    assert!(
        rest.is_empty(),
        "bytes on the idle connection: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        closed_at < stopped_accepting_at + Duration::from_secs(2),
        "the idle connection was closed {:?} after the old process stopped accepting",
        closed_at.saturating_duration_since(stopped_accepting_at)
    );

    new.signal("TERM");
    let status = new.wait_exit(EXIT_TIMEOUT).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the new process did not stop on SIGTERM ({status:?})"
    );

    let rows = rows(&usage_dir);
    assert_eq!(
        rows.len(),
        sent,
        "one usage record per request (sent {sent}, {streams} streams)"
    );
    assert!(rows.iter().all(|r| r.status == Some(200)), "{rows:#?}");
    assert_eq!(rows.iter().filter(|r| r.stream == Some(1)).count(), streams);
    eprintln!(
        "upgrade: {sent} requests ({streams} streams), old stopped accepting {stopped_accepting:?} after SIGQUIT"
    );
}

/// A connection accepted in the accept loop's last moment whose request is still on its way when the gateway
/// stops accepting (graceful shutdown, or the old process of an upgrade) is served, not closed under its caller.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_on_a_connection_accepted_just_before_the_gateway_stops_accepting_is_served() {
    let mock = Mock::start("late").await;
    let dir = tempfile::tempdir().unwrap();
    let usage_dir = dir.path().join("usage");
    let (config_path, conf) = write_configs(
        dir.path(),
        vec![client("a", &mock.base_url("/v1"), "exact", &[MODEL])],
    );
    let (mut gw, port) = start(
        "gw",
        dir.path(),
        |port| gateway_args(&config_path, port, Some(&conf), &[]),
        http_healthy,
    )
    .await;
    // Accepted by the gateway, no byte sent yet: the state of a connection accepted just before the accept loop
    // ends, its request still on the way.
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let client_port = conn.local_addr().unwrap().port();
    assert!(
        wait_until(Duration::from_secs(10), || holds_connection(
            gw.pid(),
            port,
            client_port
        ))
        .await,
        "the gateway did not accept the connection"
    );
    gw.signal("TERM");
    // Pingora's accept loop logs this as it ends; its cleanup would close the connection right after.
    gw.wait_log(
        &format!("Shutting down 127.0.0.1:{port}"),
        Duration::from_secs(20),
    )
    .await;
    let body = serde_json::to_string(&chat_body(MODEL)).unwrap();
    conn.write_all(&post("HTTP/1.1", "Connection: close\r\n", &body))
        .await
        .unwrap();
    let answer = read_until_closed(&mut conn, Duration::from_secs(10)).await;
    let text = answer.text();
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}\n{}", gw.log());
    assert_eq!(mock.count(), 1);
    let status = gw.wait_exit(EXIT_TIMEOUT).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let rows = wait_exact_rows(&usage_dir, 1).await;
    assert_eq!(rows[0].status, Some(200));
}
