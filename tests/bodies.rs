//! Request bodies: big Content-Length and chunked bodies arrive byte-identical, the size limit answers 413, many in parallel.

use crate::common;
use crate::common::{
    chat_body, chat_body_exact_len, client, config, config_with_max_body, http_client, post_bytes,
    Gateway, Mock,
};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;

/// Sends `body` with `Transfer-Encoding: chunked` through reqwest, in pieces of `piece` bytes.
async fn post_chunked(gw: &Gateway, body: Vec<u8>, piece: usize) -> common::Resp {
    let pieces: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(piece)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let stream = futures_util::stream::iter(pieces);
    let resp = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    common::Resp::read(resp).await
}

/// Sends a file with curl and `Transfer-Encoding: chunked`; returns (status, body).
async fn curl_chunked(gw: &Gateway, body: &[u8]) -> (u16, String) {
    common::http::curl_chunked(&gw.url("/v1/chat/completions"), body, false).await
}

#[tokio::test(flavor = "multi_thread")]
async fn five_mb_content_length_body_byte_identical_model_last() {
    let mock = Mock::start("m").await;
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["big-model"],
    )]))
    .await;

    let body = chat_body_exact_len("big-model", 5 * 1024 * 1024);
    let r = post_bytes(&gw, "/v1/chat/completions", body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "big-model");
    let got = mock.single();
    assert_eq!(got.body.len(), body.len());
    assert!(got.body == body, "5 MB body changed on the way");
    assert_eq!(
        got.header("content-length"),
        Some(body.len().to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_mb_chunked_body_via_curl_byte_identical() {
    let mock = Mock::start("m").await;
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["chunky"],
    )]))
    .await;

    let body = chat_body_exact_len("chunky", 1024 * 1024);
    let (status, text) = curl_chunked(&gw, &body).await;
    assert_eq!(status, 200, "{text}");
    let got = mock.single();
    assert_eq!(got.body.len(), body.len());
    assert!(got.body == body, "1 MB chunked body changed on the way");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_mb_chunked_body_via_reqwest_stream_byte_identical() {
    let mock = Mock::start("m").await;
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["chunky"],
    )]))
    .await;

    let body = chat_body_exact_len("chunky", 1024 * 1024);
    let r = post_chunked(&gw, body.clone(), 16 * 1024 + 7).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = mock.single();
    assert!(got.body == body, "chunked body changed on the way");
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_body_forwarded_with_content_length() {
    let mock = Mock::start("m").await;
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["chunky"],
    )]))
    .await;

    let body = chat_body_exact_len("chunky", 200 * 1024);
    let r = post_chunked(&gw, body.clone(), 4096).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = mock.single();
    assert!(got.body == body);
    assert!(
        got.header("transfer-encoding").is_none(),
        "caller's Transfer-Encoding forwarded: {:?}",
        got.headers
    );
    assert_eq!(
        got.header("content-length"),
        Some(body.len().to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn small_chunked_body_byte_identical() {
    let mock = Mock::start("m").await;
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["m1"],
    )]))
    .await;

    let body = serde_json::to_vec(&chat_body("m1")).unwrap();
    let r = post_chunked(&gw, body.clone(), 5).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.single().body, body);
}

#[tokio::test(flavor = "multi_thread")]
async fn body_at_limit_works_and_over_limit_is_413() {
    let mock = Mock::start("m").await;
    let gw = Gateway::start(&config_with_max_body(
        vec![client("a", &mock.base_url("/v1"), "exact", &["m1"])],
        1024,
    ))
    .await;

    let at = chat_body_exact_len("m1", 1024);
    let r = post_bytes(&gw, "/v1/chat/completions", at.clone()).await;
    assert_eq!(
        r.status,
        200,
        "a body of exactly max_body_bytes must pass: {}",
        r.text()
    );
    assert_eq!(mock.single().body, at);

    let over = chat_body_exact_len("m1", 1025);
    let r = post_bytes(&gw, "/v1/chat/completions", over).await;
    r.expect_error(413);

    let big = chat_body_exact_len("m1", 8000);
    let r = post_bytes(&gw, "/v1/chat/completions", big).await;
    r.expect_error(413);
    assert_eq!(mock.count(), 1, "no oversized body may reach the backend");
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_over_limit_is_413() {
    let mock = Mock::start("m").await;
    let gw = Gateway::start(&config_with_max_body(
        vec![client("a", &mock.base_url("/v1"), "exact", &["m1"])],
        1024,
    ))
    .await;

    let r = post_chunked(&gw, chat_body_exact_len("m1", 4000), 500).await;
    r.expect_error(413);

    let at = chat_body_exact_len("m1", 1024);
    let r = post_chunked(&gw, at.clone(), 100).await;
    assert_eq!(
        r.status,
        200,
        "a chunked body of exactly max_body_bytes must pass: {}",
        r.text()
    );
    assert_eq!(mock.single().body, at);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_requests_two_models() {
    let a = Mock::start("a").await;
    let b = Mock::start("b").await;
    let gw = Gateway::start(&config(vec![
        client("a", &a.base_url("/v1"), "exact", &["model-a"]),
        client("b", &b.base_url("/v1"), "exact", &["model-b"]),
    ]))
    .await;

    let http = http_client();
    let url = gw.url("/v1/chat/completions");
    let results = futures_util::stream::iter(0..200)
        .map(|i| {
            let http = http.clone();
            let url = url.clone();
            async move {
                let model = if i % 2 == 0 { "model-a" } else { "model-b" };
                let body = json!({ "model": model, "messages": [{ "role": "user", "content": format!("req {i}") }] });
                let resp = http.post(&url).body(serde_json::to_vec(&body).unwrap()).send().await;
                match resp {
                    Ok(resp) => {
                        let r = common::Resp::read(resp).await;
                        (model, r.status, r.header("x-mock").map(str::to_string), r.text())
                    }
                    Err(e) => (model, 0, None, format!("{e:?}")),
                }
            }
        })
        .buffer_unordered(200)
        .collect::<Vec<_>>()
        .await;

    for (model, status, mock_name, text) in &results {
        assert_eq!(*status, 200, "{model}: {text}");
        let want = if *model == "model-a" { "a" } else { "b" };
        assert_eq!(
            mock_name.as_deref(),
            Some(want),
            "{model} answered by the wrong backend"
        );
    }
    assert_eq!(a.count(), 100);
    assert_eq!(b.count(), 100);
    let mut seen: Vec<String> = a
        .requests()
        .iter()
        .chain(b.requests().iter())
        .map(|r| {
            r.json()["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 200, "every request arrived exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn five_mb_body_via_curl_with_expect_100_continue() {
    let mock = Mock::start("m").await;
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["big"],
    )]))
    .await;

    let body = chat_body_exact_len("big", 5 * 1024 * 1024);
    let url = gw.url("/v1/chat/completions");
    let (status, _) = common::http::curl_upload(&url, &body, "Expect: 100-continue", false).await;
    assert_eq!(status, 200);
    let got = mock.single();
    assert!(got.body == body, "body changed on the way");
    assert!(
        got.header("expect").is_none(),
        "Expect must not be forwarded: {:?}",
        got.headers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_connection_survives_error_answers() {
    let mock = Mock::start("m").await;
    let gw = Gateway::start(&config_with_max_body(
        vec![client("a", &mock.base_url("/v1"), "exact", &["m1"])],
        1024,
    ))
    .await;

    // One client, one pooled connection at a time: each request follows an answer on the same connection.
    let http = http_client();
    let url = gw.url("/v1/chat/completions");
    let good = serde_json::to_vec(&chat_body("m1")).unwrap();
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (good.clone(), 200),
        (chat_body_exact_len("m1", 4000), 413),
        (good.clone(), 200),
        (b"not json".to_vec(), 400),
        (good.clone(), 200),
        (serde_json::to_vec(&chat_body("nope")).unwrap(), 404),
        (good.clone(), 200),
    ];
    for (i, (body, want)) in cases.into_iter().enumerate() {
        let resp = http.post(&url).body(body).send().await.unwrap();
        let r = common::Resp::read(resp).await;
        assert_eq!(r.status, want, "request {i}: {}", r.text());
    }
    assert_eq!(mock.count(), 4);
    assert!(mock.requests().iter().all(|r| r.body == good));
}
