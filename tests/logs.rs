//! Logging: with `logging.dir`, an info log holding one access line per request and an error log holding the
//! errors; and no key in any line, even at `RUST_LOG=trace`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common;
use crate::common::reload::{rejected, reloaded};
use crate::common::{
    chat_body, client, free_port, http_client, post_json, wait_until, Gateway, Mock, Resp,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);
const INFO_LOG: &str = "info_rCURRENT.log";
const ERROR_LOG: &str = "error_rCURRENT.log";

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The access lines (`... gpt_api::proxy: IP METHOD PATH STATUS model=...`) of this path in `text`.
fn access_lines<'a>(text: &'a str, method_path: &str) -> Vec<&'a str> {
    let needle = format!(" {method_path} ");
    text.lines()
        .filter(|l| l.contains("gpt_api::proxy: ") && l.contains(&needle) && l.contains(" model="))
        .collect()
}

/// Waits until `path` holds at least `n` access lines of `method_path`; returns the file's text.
async fn wait_access_lines(path: &Path, method_path: &str, n: usize, gw: &Gateway) -> String {
    let ok = wait_until(WAIT, || access_lines(&read(path), method_path).len() >= n).await;
    let text = read(path);
    assert!(
        ok,
        "{n} access line(s) of {method_path} expected in {}:\n{text}\nstderr:\n{}",
        path.display(),
        gw.log()
    );
    text
}

/// An access line's message split into its words and `key=value` fields.
#[derive(Debug)]
struct Access {
    ip: String,
    method: String,
    path: String,
    status: u16,
    fields: Vec<(String, String)>,
}

impl Access {
    fn parse(line: &str) -> Access {
        let (head, message) = line.split_once("gpt_api::proxy: ").unwrap();
        assert!(head.contains(" INFO "), "an access line is at INFO: {line}");
        let mut words = message.split(' ');
        let mut next = || {
            words
                .next()
                .unwrap_or_else(|| panic!("short access line {line}"))
                .to_string()
        };
        let (ip, method, path, status) = (next(), next(), next(), next());
        let fields = message
            .split(' ')
            .skip(4)
            .map(|w| {
                let (k, v) = w
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{w:?} in {line}"));
                (k.to_string(), v.to_string())
            })
            .collect();
        Access {
            ip,
            method,
            path,
            status: status
                .parse()
                .unwrap_or_else(|_| panic!("status in {line}")),
            fields,
        }
    }

    fn field(&self, key: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key}= in {self:?}"))
    }
}

fn stream_body(model: &str) -> Value {
    let mut body = chat_body(model);
    body["stream"] = json!(true);
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn the_info_log_has_one_access_line_per_request_and_the_error_log_the_errors() {
    let one = Mock::start("one").await;
    let two = Mock::start("two").await;
    let root = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: the gateway creates it.
    let dir: PathBuf = root.path().join("logs/gpt-api");
    let clients = vec![
        client("a", &one.base_url("/v1"), "exact", &["m1"]),
        client("b", &two.base_url("/v1"), "exact", &["m2"]),
        client(
            "dead",
            &format!("http://127.0.0.1:{}/v1", free_port()),
            "exact",
            &["m-dead"],
        ),
    ];
    // A usage directory that cannot be made (its parent is a file, so even root fails): the writer logs an ERROR.
    let not_a_dir = root.path().join("a-file");
    std::fs::write(&not_a_dir, b"not a directory").unwrap();
    let config = json!({
        "openai_clients": clients,
        "logging": { "level": "info", "dir": dir.to_str().unwrap() },
        "usage": { "dir": not_a_dir.join("records").to_str().unwrap(), "flush_interval_ms": 50 },
    });
    // The level comes from the config: no RUST_LOG.
    let gw = Gateway::builder(&config)
        .env_remove("RUST_LOG")
        .start()
        .await;
    let info = dir.join(INFO_LOG);
    let error = dir.join(ERROR_LOG);

    let requests: [(Value, u16); 6] = [
        (chat_body("m1"), 200),
        (chat_body("m2"), 200),
        (chat_body("m1"), 200),
        (stream_body("m1"), 200),
        (chat_body("m-dead"), 502),
        (chat_body("m-unknown"), 404),
    ];
    // A request's access line is written after its answer has gone out, possibly by another worker thread
    // than the next request's: each is awaited before the next request, so the lines come in request order.
    for (i, (body, status)) in requests.iter().enumerate() {
        let r = post_json(&gw, "/v1/chat/completions", body).await;
        assert_eq!(r.status, *status, "{body}: {}", r.text());
        wait_access_lines(&info, "POST /v1/chat/completions", i + 1, &gw).await;
    }
    let text = read(&info);
    let lines = access_lines(&text, "POST /v1/chat/completions");
    assert_eq!(
        lines.len(),
        requests.len(),
        "one access line per request:\n{text}"
    );
    let access: Vec<Access> = lines.iter().map(|l| Access::parse(l)).collect();
    // (model, backend, status, attempts, prompt, completion) in request order.
    let expected = [
        ("m1", "a", 200, "1", "3", "1"),
        ("m2", "b", 200, "1", "3", "1"),
        ("m1", "a", 200, "1", "3", "1"),
        ("m1", "a", 200, "1", "3", "3"),
        ("m-dead", "dead", 502, "1", "-", "-"),
        ("m-unknown", "-", 404, "0", "-", "-"),
    ];
    for (a, (model, backend, status, attempts, prompt, completion)) in access.iter().zip(expected) {
        assert_eq!(a.ip, "127.0.0.1", "{a:?}");
        assert_eq!(
            (a.method.as_str(), a.path.as_str()),
            ("POST", "/v1/chat/completions")
        );
        assert_eq!(a.status, status, "{a:?}");
        assert_eq!(a.field("model"), model, "{a:?}");
        assert_eq!(a.field("backend"), backend, "{a:?}");
        assert_eq!(a.field("attempts"), attempts, "{a:?}");
        assert_eq!(a.field("prompt"), prompt, "{a:?}");
        assert_eq!(a.field("completion"), completion, "{a:?}");
        let ms: u64 = a
            .field("ms")
            .parse()
            .unwrap_or_else(|_| panic!("ms in {a:?}"));
        assert!(ms < 30_000, "{a:?}");
        if status == 200 {
            let ttfb: u64 = a
                .field("ttfb_ms")
                .parse()
                .unwrap_or_else(|_| panic!("ttfb in {a:?}"));
            assert!(ttfb <= ms, "{a:?}");
        } else {
            assert_eq!(a.field("ttfb_ms"), "-", "{a:?}");
        }
    }
    for line in &lines {
        assert!(
            line.starts_with("20"),
            "a line starts with its date: {line}"
        );
    }
    // Each line is one record: no access line on stderr (it gets warnings and errors only), but the failed
    // attempt's warning is there, and in the info log.
    let stderr = gw.log();
    assert!(
        access_lines(&stderr, "POST /v1/chat/completions").is_empty(),
        "INFO lines on stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("WARN") && stderr.contains("m-dead"),
        "stderr:\n{stderr}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(" WARN ") && l.contains("m-dead")),
        "the warning is in the info log too:\n{text}"
    );
    assert!(
        !read(&error).contains(" WARN "),
        "warnings stay out of the error log:\n{}",
        read(&error)
    );

    // The usage writer's ERROR, in the error log.
    let usage_error = "usage records not written";
    let ok = wait_until(WAIT, || read(&error).contains(usage_error)).await;
    assert!(
        ok,
        "{usage_error:?} not in {}:\n{}\nstderr:\n{}",
        error.display(),
        read(&error),
        gw.log()
    );

    // Another ERROR: a config change that does not parse.
    gw.rewrite_config_yaml("openai_clients: [{name: broken}]\n");
    let line = rejected("file changed");
    let ok = wait_until(WAIT, || read(&error).contains(&line)).await;
    let errors = read(&error);
    assert!(
        ok,
        "{line:?} not in {}:\n{errors}\nstderr:\n{}",
        error.display(),
        gw.log()
    );
    // Every record is an ERROR line (a multi-line message continues on lines without a date).
    for record in errors.lines().filter(|l| l.starts_with("20")) {
        assert!(
            record.contains(" ERROR "),
            "errors only in the error log: {record}\n{errors}"
        );
    }
    for needle in [usage_error, line.as_str()] {
        assert!(
            errors
                .lines()
                .any(|l| l.starts_with("20") && l.contains(" ERROR ") && l.contains(needle)),
            "{needle:?} as a dated ERROR line:\n{errors}"
        );
    }
    assert!(
        access_lines(&errors, "POST /v1/chat/completions").is_empty(),
        "{errors}"
    );
    assert!(
        gw.log().contains(&line),
        "errors go to stderr too:\n{}",
        gw.log()
    );
    let ok = wait_until(WAIT, || read(&info).contains(&line)).await;
    assert!(
        ok,
        "the info log has every line, errors included:\n{}",
        read(&info)
    );

    // Still one line per request afterwards.
    let r = post_json(&gw, "/v1/chat/completions", &chat_body("m2")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = wait_access_lines(&info, "POST /v1/chat/completions", 7, &gw).await;
    assert_eq!(
        access_lines(&text, "POST /v1/chat/completions").len(),
        7,
        "{text}"
    );
}

/// Secrets the test sends or configures; none may appear in any log.
const GATEWAY_KEY: &str = "sk-gw-trace-secret-1111";
const AZURE_SECRET: &str = "azure-trace-secret-2222";
const ANTHROPIC_SECRET: &str = "anthropic-trace-secret-3333";
const BACKEND_SECRET: &str = "sk-backend-trace-secret-4444";
const DEAD_SECRET: &str = "sk-dead-trace-secret-5555";
const WRONG_KEY: &str = "sk-wrong-trace-secret-6666";
const HEADER_SECRET: &str = "configured-header-secret-7777";
const SECRETS: [&str; 7] = [
    GATEWAY_KEY,
    AZURE_SECRET,
    ANTHROPIC_SECRET,
    BACKEND_SECRET,
    DEAD_SECRET,
    WRONG_KEY,
    HEADER_SECRET,
];

fn trace_config(mock: &Mock, dead_port: u16, dir: Option<&Path>, extra_model: bool) -> Value {
    let mut models = vec!["m1"];
    if extra_model {
        models.push("m1b");
    }
    let mut good = client("a", &mock.base_url("/v1"), "exact", &models);
    good["api_key"] = json!(BACKEND_SECRET);
    good["headers"] = json!({ "x-backend-token": HEADER_SECRET });
    let mut dead = client(
        "dead",
        &format!("http://127.0.0.1:{dead_port}/v1"),
        "exact",
        &["m-dead"],
    );
    dead["api_key"] = json!(DEAD_SECRET);
    let mut config = json!({
        "openai_clients": [good, dead],
        "auth": { "keys": [{ "name": "tracer", "key": "${GPT_API_TEST_TRACE_KEY}" }] },
    });
    if let Some(dir) = dir {
        config["logging"] = json!({ "dir": dir.to_str().unwrap() });
    }
    config
}

/// Method, path, body, headers, expected status.
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a Value>,
    &'a [(&'a str, &'a str)],
    u16,
);

async fn send(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Resp {
    let client = http_client();
    let mut req = match method {
        "GET" => client.get(gw.url(path)),
        _ => client.post(gw.url(path)),
    };
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap());
    }
    Resp::read(req.send().await.unwrap()).await
}

/// `RUST_LOG=trace`, keys in every header a caller may use, backends with keys and a secret header, a failing
/// backend, a refused key, a model list and a reload: no secret in stderr nor (with `dir`) in any log file.
async fn no_secret_in_any_log_at_trace(with_dir: bool) {
    let mock = Mock::start("b").await;
    mock.set_models(vec![Mock::model_entry("m1", "b")]);
    let root = tempfile::tempdir().unwrap();
    let dir = with_dir.then(|| root.path().join("logs"));
    let dead_port = free_port();
    let config = trace_config(&mock, dead_port, dir.as_deref(), false);
    let gw = Gateway::builder(&config)
        .log_level("trace")
        .env("GPT_API_TEST_TRACE_KEY", GATEWAY_KEY)
        .start()
        .await;

    let bearer = format!("Bearer {GATEWAY_KEY}");
    let all: &[(&str, &str)] = &[
        ("authorization", &bearer),
        ("api-key", AZURE_SECRET),
        ("x-api-key", ANTHROPIC_SECRET),
        ("cookie", "session=cookie-not-checked"),
    ];
    let chat = chat_body("m1");
    let stream = stream_body("m1");
    let dead = chat_body("m-dead");
    let cases: Vec<Case> = vec![
        ("POST", "/v1/chat/completions", Some(&chat), all, 200),
        ("POST", "/v1/chat/completions", Some(&stream), all, 200),
        (
            "POST",
            "/v1/chat/completions",
            Some(&chat),
            &[("api-key", GATEWAY_KEY)],
            200,
        ),
        (
            "POST",
            "/v1/chat/completions",
            Some(&chat),
            &[("x-api-key", GATEWAY_KEY)],
            200,
        ),
        ("POST", "/v1/chat/completions", Some(&dead), all, 502),
        ("GET", "/v1/models", None, all, 200),
    ];
    for (method, path, body, headers, status) in &cases {
        let r = send(&gw, method, path, *body, headers).await;
        assert_eq!(r.status, *status, "{method} {path}: {}", r.text());
    }
    let wrong = format!("Bearer {WRONG_KEY}");
    let refused: &[(&str, &str)] = &[
        ("authorization", &wrong),
        ("api-key", WRONG_KEY),
        ("x-api-key", WRONG_KEY),
    ];
    let r = send(&gw, "POST", "/v1/chat/completions", Some(&chat), refused).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = send(&gw, "GET", "/v1/models", None, refused).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        mock.count(),
        5,
        "4 chat requests and one model list reached the backend"
    );

    // A reload re-reads the config, keys and all.
    gw.rewrite_config(&trace_config(&mock, dead_port, dir.as_deref(), true));
    let r = {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let r = send(
                &gw,
                "POST",
                "/v1/chat/completions",
                Some(&chat_body("m1b")),
                all,
            )
            .await;
            if r.status != 404 || std::time::Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(r.status, 200, "m1b after the reload: {}", r.text());

    let stderr = gw.log();
    let mut logs: Vec<(String, String)> = vec![("stderr".into(), stderr.clone())];
    match &dir {
        Some(dir) => {
            let info = dir.join(INFO_LOG);
            let text = wait_access_lines(&info, "POST /v1/chat/completions", 7, &gw).await;
            assert!(
                text.contains(&reloaded("file changed")),
                "the reload is logged:\n{text}"
            );
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
                logs.push((path.display().to_string(), text));
            }
            assert!(logs.len() >= 2, "the info log exists: {logs:?}");
        }
        None => {
            let ok = wait_until(WAIT, || {
                access_lines(&gw.log(), "POST /v1/chat/completions").len() >= 7
            })
            .await;
            assert!(ok, "7 access lines on stderr:\n{}", gw.log());
            logs[0].1 = gw.log();
        }
    }
    // Pingora's debug and trace lines dump request headers: none pass, whatever RUST_LOG says. (The gateway's
    // own debug lines are on rare failure paths, so no DEBUG line is expected here at all.)
    let everything: String = logs.iter().map(|(_, t)| t.as_str()).collect();
    for line in everything.lines() {
        let pingora_verbose =
            line.contains("pingora") && (line.contains(" DEBUG ") || line.contains(" TRACE "));
        assert!(!pingora_verbose, "a Pingora debug line passed: {line}");
    }
    assert!(
        everything.contains("INFO  pingora_core"),
        "Pingora's info lines pass:\n{everything}"
    );
    for (name, text) in &logs {
        for secret in SECRETS {
            let at = text.find(secret).map(|i| {
                let start = text[..i].rfind('\n').map_or(0, |n| n + 1);
                let end = text[i..].find('\n').map_or(text.len(), |n| i + n);
                text[start..end].to_string()
            });
            assert!(at.is_none(), "{secret} in {name}: {}", at.unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_the_log_files_or_stderr_at_trace() {
    no_secret_in_any_log_at_trace(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_on_stderr_at_trace_without_a_log_dir() {
    no_secret_in_any_log_at_trace(false).await;
}

/// Access lines are buffered, not written one `write(2)` each: a flusher started after Pingora's daemon fork
/// writes them out within a moment, and the last lines are written when the server stops.
#[tokio::test(flavor = "multi_thread")]
async fn buffered_access_lines_reach_the_file_within_a_moment_even_as_a_daemon() {
    let mock = Mock::start("d").await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let config = json!({
        "openai_clients": [client("a", &mock.base_url("/v1"), "exact", &["m"])],
        "usage": { "enabled": false },
        "logging": { "dir": logs.to_str().unwrap(), "level": "info" },
    });
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, common::to_yaml(&config)).unwrap();
    let pid_file = dir.path().join("gpt-api.pid");
    let conf = dir.path().join("server.yaml");
    std::fs::write(
        &conf,
        format!(
            "---\nversion: 1\nthreads: 1\npid_file: {}\nupgrade_sock: {}\ngrace_period_seconds: 1\n\
             graceful_shutdown_timeout_seconds: 1\n",
            pid_file.display(),
            dir.path().join("upgrade.sock").display()
        ),
    )
    .unwrap();
    let port = free_port();
    let args = common::process::gateway_args(&config_path, port, Some(&conf), &["-d"]);
    // The parent returns once it has forked; the daemon is found through its pid file.
    let _parent = common::process::Proc::spawn("daemon", &args, &[], dir.path());
    let up = wait_until(WAIT, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && pid_file.exists()
    })
    .await;
    assert!(up, "the daemon did not start listening");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    let stop = || {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
    };
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    for _ in 0..3 {
        let r = http_client()
            .post(&url)
            .header("content-type", "application/json")
            .body(chat_body("m").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let info = logs.join(INFO_LOG);
    let count = |text: &str| access_lines(text, "POST /v1/chat/completions").len();
    let flushed = wait_until(Duration::from_secs(3), || count(&read(&info)) == 3).await;
    if !flushed {
        stop();
    }
    assert!(flushed, "3 access lines within 3 s:\n{}", read(&info));
    stop();
    let exited = wait_until(WAIT, || read(&info).contains("exiting")).await;
    assert!(
        exited,
        "the last lines are written at the stop:\n{}",
        read(&info)
    );
}
