//! HTTPS at the edge (`server.tls`): the OpenAI SDK over TLS, HTTP/2 through ALPN with bodies byte-identical
//! upstream, and the certificate replaced while the gateway runs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common;
use crate::common::process::{curl, gateway_args, https_healthy, start, Proc};
use crate::common::tls::SelfSigned;
use crate::common::{chat_body, chat_body_exact_len, client, config, Mock};
use serde_json::{json, Value};

/// A gateway serving HTTPS with `cert`, routing `m1` to `mock`; its files live in the returned tempdir.
async fn https_gateway(mock: &Mock, cert: &SelfSigned) -> (Proc, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(&cert.cert, &cert_path).unwrap();
    std::fs::copy(&cert.key, &key_path).unwrap();
    let mut cfg = config(vec![client("a", &mock.base_url("/v1"), "exact", &["m1"])]);
    cfg["server"] = json!({ "tls": { "cert_path": cert_path, "key_path": key_path } });
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, common::to_yaml(&cfg)).unwrap();
    let ca = cert.cert.clone();
    let (gw, port) = start(
        "gateway",
        dir.path(),
        |port| gateway_args(&config_path, port, None, &[]),
        |port| {
            let ca = ca.clone();
            async move { https_healthy(port, &ca).await }
        },
    )
    .await;
    (gw, port, dir)
}

fn url(port: u16, path: &str) -> String {
    format!("https://127.0.0.1:{port}{path}")
}

/// What curl reported: `%{http_version} %{http_code}` and the response body.
struct CurlResult {
    version_and_status: String,
    body: Vec<u8>,
}

/// POSTs the file `body` with curl trusting `ca`; `http` is `--http2` or `--http1.1`; `extra` adds arguments.
async fn curl_post<S: AsRef<str>>(
    http: &str,
    ca: &Path,
    port: u16,
    body: &Path,
    extra: &[S],
) -> CurlResult {
    let out_file = body.with_extension("response");
    let mut args: Vec<OsString> = vec![
        http.into(),
        "-sS".into(),
        "--cacert".into(),
        ca.into(),
        "-o".into(),
        out_file.clone().into(),
        "-w".into(),
        "%{http_version} %{http_code}".into(),
        "-H".into(),
        "content-type: application/json".into(),
    ];
    args.extend(extra.iter().map(|a| OsString::from(a.as_ref())));
    args.push(url(port, "/v1/chat/completions").into());
    let out = curl(&args).await;
    assert!(
        out.status.success(),
        "curl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    CurlResult {
        version_and_status: String::from_utf8_lossy(&out.stdout).into_owned(),
        body: std::fs::read(&out_file).unwrap_or_default(),
    }
}

fn write_body(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_python_sdk_over_https() {
    let cert = SelfSigned::localhost();
    let mock = Mock::start("sdk").await;
    mock.set_sse(5, Duration::ZERO);
    let (_gw, port, _dir) = https_gateway(&mock, &cert).await;

    let args: Vec<OsString> = vec![
        url(port, "/v1").into(),
        cert.cert.clone().into(),
        "m1".into(),
        Mock::sse_text(5).into(),
    ];
    common::run_python_client("test_sdk_https.py", args).await;
    assert_eq!(
        mock.count(),
        2,
        "one plain and one streaming chat completion"
    );
    assert!(mock
        .requests()
        .iter()
        .all(|r| r.uri == "/v1/chat/completions"));
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_posts_reach_the_backend_byte_identical() {
    let cert = SelfSigned::localhost();
    let mock = Mock::start("h2").await;
    mock.set_sse(5, Duration::from_millis(20));
    let (_gw, port, dir) = https_gateway(&mock, &cert).await;
    let small = serde_json::to_vec(&chat_body("m1")).unwrap();
    let big = chat_body_exact_len("m1", 1024 * 1024);

    for (name, bytes) in [("small.json", &small), ("big.json", &big)] {
        let file = write_body(dir.path(), name, bytes);
        let r = curl_post(
            "--http2",
            &cert.cert,
            port,
            &file,
            &["--data-binary", &format!("@{}", file.display())],
        )
        .await;
        assert_eq!(
            r.version_and_status,
            "2 200",
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let answer: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(answer, Mock::answer_json("m1"), "{name}");
        let got = mock.requests().pop().unwrap();
        assert_eq!(got.body.len(), bytes.len(), "{name}: body length upstream");
        assert!(
            got.body == bytes[..],
            "{name}: the backend received different bytes"
        );
        let length = bytes.len().to_string();
        assert_eq!(
            got.header("content-length"),
            Some(length.as_str()),
            "{name}"
        );
    }

    // HTTP/1.1 callers are still served on the same listener.
    let file = write_body(dir.path(), "big11.json", &big);
    let r = curl_post(
        "--http1.1",
        &cert.cert,
        port,
        &file,
        &["--data-binary", &format!("@{}", file.display())],
    )
    .await;
    assert_eq!(r.version_and_status, "1.1 200");
    assert!(mock.requests().pop().unwrap().body == big[..]);

    // A stream over HTTP/2 arrives whole, event by event, ending with [DONE].
    let mut stream_req = chat_body("m1");
    stream_req["stream"] = json!(true);
    let file = write_body(
        dir.path(),
        "stream.json",
        &serde_json::to_vec(&stream_req).unwrap(),
    );
    let r = curl_post(
        "--http2",
        &cert.cert,
        port,
        &file,
        &["-N", "--data-binary", &format!("@{}", file.display())],
    )
    .await;
    assert_eq!(r.version_and_status, "2 200");
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        Mock::sse_events("m1", 5).concat()
    );
    assert_eq!(mock.count(), 4);
}

/// HTTP/2 has no chunked encoding: a body sent without Content-Length is read like a chunked HTTP/1 body.
/// Up to 64 KiB it is forwarded; beyond, src/proxy/body.rs cannot replay it on an HTTP/2 stream (its replay
/// rebuilds an HTTP/1 session) and answers 411 rather than hanging. This pins that behaviour.
#[tokio::test(flavor = "multi_thread")]
async fn http2_bodies_without_content_length() {
    let cert = SelfSigned::localhost();
    let mock = Mock::start("h2-nocl").await;
    let (_gw, port, dir) = https_gateway(&mock, &cert).await;
    let small = serde_json::to_vec(&chat_body("m1")).unwrap();
    let file = write_body(dir.path(), "small.json", &small);
    let r = curl_post("--http2", &cert.cert, port, &file, &streamed_upload(&file)).await;
    assert_eq!(
        r.version_and_status,
        "2 200",
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let got = mock.single();
    assert!(got.body == small[..]);

    let big = chat_body_exact_len("m1", 300 * 1024);
    let file = write_body(dir.path(), "big.json", &big);
    let r = curl_post("--http2", &cert.cert, port, &file, &streamed_upload(&file)).await;
    assert_eq!(
        r.version_and_status,
        "2 411",
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let error: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(error["error"]["code"], "length_required", "{error}");
    assert_eq!(mock.count(), 1, "nothing more reached the backend");
}

/// curl arguments uploading `file` as a POST without Content-Length (`-T` with the header removed).
fn streamed_upload(file: &Path) -> Vec<String> {
    let file = file.display().to_string();
    ["-X", "POST", "-T", &file, "-H", "content-length:"]
        .map(String::from)
        .to_vec()
}

/// Whether a handshake trusting only `ca` succeeds (curl checks the certificate and the IP SAN).
async fn trusts(port: u16, ca: &Path) -> bool {
    https_healthy(port, ca).await
}

/// Replaces `dst` by `src`'s contents atomically (a sibling renamed over it).
fn replace_file(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("new");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_files_are_re_read_while_running() {
    let first = SelfSigned::localhost();
    let second = SelfSigned::localhost();
    let mock = Mock::start("reload").await;
    let (mut gw, port, dir) = https_gateway(&mock, &first).await;
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    assert!(
        !trusts(port, &second.cert).await,
        "the second certificate is not served yet"
    );

    // A broken certificate is refused and the running one stays.
    std::fs::write(cert_path.with_extension("bad"), "not a certificate").unwrap();
    replace_file(&cert_path.with_extension("bad"), &cert_path);
    gw.wait_log("TLS certificate reload rejected", Duration::from_secs(10))
        .await;
    assert!(
        trusts(port, &first.cert).await,
        "the first certificate still serves"
    );

    // The renewed pair is picked up (key first: a new certificate with the old key would be refused too).
    replace_file(&second.key, &key_path);
    replace_file(&second.cert, &cert_path);
    gw.wait_log("TLS certificate reloaded", Duration::from_secs(10))
        .await;
    assert!(
        trusts(port, &second.cert).await,
        "new handshakes present the renewed certificate"
    );
    assert!(
        !trusts(port, &first.cert).await,
        "the old certificate is gone"
    );
    assert!(gw.exited().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_certificate_stops_the_start_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let mut cfg = config(vec![client("a", "http://127.0.0.1:9/v1", "exact", &["m1"])]);
    cfg["server"] = json!({ "tls": { "cert_path": missing, "key_path": missing } });
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, common::to_yaml(&cfg)).unwrap();
    let mut gw = Proc::spawn(
        "gateway",
        &gateway_args(&config_path, common::free_port(), None, &[]),
        &[],
        dir.path(),
    );
    let status = gw.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{}", gw.log());
    let log = gw.log();
    assert!(log.contains("server.tls: cert_path"), "{log}");
    assert!(log.contains("missing.pem"), "{log}");
}
