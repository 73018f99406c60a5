//! HTTPS backends: SNI and Host from `base_url`, certificates verified against Pingora's `ca_file` or the system roots.

use std::time::Duration;

use crate::common::tls::{server_conf, SelfSigned};
use crate::common::{chat_body, client, config, post_json, wait_until, Gateway, Mock};
use serde_json::Value;

/// A TLS mock with a self-signed `localhost` certificate, and a gateway routing `m1` to `https://localhost:PORT/v1`
/// whose server conf trusts that certificate or not.
async fn tls_setup(trust_cert: bool) -> (SelfSigned, Mock, Gateway) {
    let cert = SelfSigned::localhost();
    let mock = Mock::start_tls("tls", cert.acceptor()).await;
    let base_url = mock.url_with_host("localhost", "/v1");
    let conf = server_conf(cert.dir.path(), trust_cert.then_some(cert.cert.as_path()));
    let gw = Gateway::builder(&config(vec![client(
        "tlsclient",
        &base_url,
        "exact",
        &["m1"],
    )]))
    .server_conf(&conf)
    // Only the system roots (or the ca_file) may decide, not a test environment's override.
    .env_remove("SSL_CERT_FILE")
    .env_remove("SSL_CERT_DIR")
    .start()
    .await;
    (cert, mock, gw)
}

#[tokio::test(flavor = "multi_thread")]
async fn https_backend_trusted_via_ca_file() {
    let (_cert, mock, gw) = tls_setup(true).await;

    let r = post_json(&gw, "/v1/chat/completions", &chat_body("m1")).await;
    assert_eq!(r.status, 200, "body: {}", r.text());
    assert_eq!(r.json(), Mock::answer_json("m1"));
    assert_eq!(r.header("x-mock"), Some("tls"));

    let req = mock.single();
    assert_eq!(req.method, "POST");
    assert_eq!(req.uri, "/v1/chat/completions");
    let host = format!("localhost:{}", mock.addr.port());
    assert_eq!(req.header("host"), Some(host.as_str()));
    assert_eq!(req.json()["model"], "m1");
    assert_eq!(mock.connections(), 1, "exactly one upstream connection");
    assert_eq!(mock.sni(), vec![Some("localhost".to_string())]);
    assert_eq!(mock.tls_failures(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn https_backend_untrusted_is_502() {
    let (_cert, mock, gw) = tls_setup(false).await;

    let r = post_json(&gw, "/v1/chat/completions", &chat_body("m1")).await;
    let e = r.expect_error(502);
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("m1"), "message should name the model: {msg}");
    assert!(
        msg.contains("tlsclient"),
        "message should name the client: {msg}"
    );
    assert_eq!(e["type"], "api_error", "{e:?}");
    assert_eq!(e["param"], Value::Null, "{e:?}");

    // One handshake, aborted by the gateway because no trusted root issued the certificate; no request got through.
    assert!(
        wait_until(Duration::from_secs(5), || mock.tls_failures() >= 1).await,
        "no failed handshake recorded (connections {})",
        mock.connections()
    );
    assert_eq!(mock.tls_errors(), vec!["received fatal alert: UnknownCA"]);
    assert_eq!(mock.connections(), 1, "exactly one upstream connection");
    assert_eq!(mock.sni(), Vec::<Option<String>>::new());
    assert_eq!(mock.count(), 0);
}
