//! Compressed request bodies (`Content-Encoding: zstd`, gzip, deflate, br, as the Codex client sends): routed by
//! their decoded `model`, sent on as they came unless the gateway changed them, and refused clearly when they
//! cannot be decoded, are of an unknown coding, or decode past `server.max_body_bytes`.

use crate::common::{
    client, compress, config, config_with_max_body, http_client, Gateway, Mock, Resp,
};
use serde_json::json;

async fn post_encoded(gw: &Gateway, encoding: &str, body: Vec<u8>) -> Resp {
    let resp = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("content-encoding", encoding)
        .body(body)
        .send()
        .await
        .unwrap();
    Resp::read(resp).await
}

fn chat(model: &str) -> Vec<u8> {
    let body = json!({ "model": model, "messages": [{ "role": "user", "content": "hello ".repeat(200) }] });
    serde_json::to_vec(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compressed_body_is_routed_by_its_model_and_sent_as_it_came_unless_changed() {
    let mock = Mock::start("a").await;
    let mut aliased = client("b", &mock.base_url("/v1"), "exact", &["alias"]);
    aliased["model"] = json!("upstream-model");
    let gw = Gateway::start(&config(vec![
        client("a", &mock.base_url("/v1"), "exact", &["m"]),
        aliased,
    ]))
    .await;
    for encoding in ["zstd", "gzip", "deflate", "br"] {
        // Unchanged: the very bytes, with their Content-Encoding.
        let sent = compress(encoding, &chat("m"));
        let r = post_encoded(&gw, encoding, sent.clone()).await;
        assert_eq!(r.status, 200, "{encoding}: {}", r.text());
        let got = mock.requests().last().unwrap().clone();
        assert_eq!(got.body, sent, "{encoding}: passed on as received");
        assert_eq!(got.header("content-encoding"), Some(encoding));
        assert_eq!(
            got.header("content-length"),
            Some(sent.len().to_string().as_str())
        );

        // Changed (the client's model alias): decoded, rewritten, sent without the coding.
        let r = post_encoded(&gw, encoding, compress(encoding, &chat("alias"))).await;
        assert_eq!(r.status, 200, "{encoding}: {}", r.text());
        let got = mock.requests().last().unwrap().clone();
        assert_eq!(got.header("content-encoding"), None, "{encoding}");
        let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(body["model"], "upstream-model", "{encoding}");
        assert_eq!(
            got.header("content-length"),
            Some(got.body.len().to_string().as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn undecodable_unknown_and_oversized_bodies_get_clear_errors() {
    let mock = Mock::start("a").await;
    let gw = Gateway::start(&config_with_max_body(
        vec![client("a", &mock.base_url("/v1"), "exact", &["m"])],
        64 * 1024,
    ))
    .await;

    let r = post_encoded(&gw, "compress", chat("m")).await;
    let err = r.expect_error(415);
    assert_eq!(err["code"], "unsupported_content_encoding", "{err:?}");
    assert!(
        err["message"].as_str().unwrap().contains("`compress`"),
        "{err:?}"
    );

    let mut cut = compress("gzip", &chat("m"));
    cut.truncate(cut.len() / 2);
    let err = post_encoded(&gw, "gzip", cut).await.expect_error(400);
    assert_eq!(err["code"], "invalid_body_encoding", "{err:?}");
    let err = post_encoded(&gw, "zstd", b"{\"model\":\"m\"}".to_vec())
        .await
        .expect_error(400);
    assert_eq!(err["code"], "invalid_body_encoding", "{err:?}");

    // 8 MiB of JSON in a few KiB of zstd: refused at the 64 KiB cap, not decoded whole.
    let big = format!("{{\"model\":\"m\",\"pad\":\"{}\"}}", "a".repeat(8 << 20));
    let bomb = compress("zstd", big.as_bytes());
    assert!(bomb.len() < 64 * 1024);
    let err = post_encoded(&gw, "zstd", bomb).await.expect_error(413);
    assert_eq!(err["code"], "request_too_large", "{err:?}");

    // A caller's hostile coding name is cut and escaped in the answer.
    let name = format!("x\u{1b}[31m{}", "y".repeat(500));
    let r = post_encoded(&gw, &name.replace('\u{1b}', ""), chat("m")).await;
    let err = r.expect_error(415);
    assert!(err["message"].as_str().unwrap().len() < 300, "{err:?}");
    assert_eq!(mock.count(), 0, "nothing reached the backend");
}
