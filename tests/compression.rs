//! Backends that compress their answers (gzip, deflate, br, zstd) whatever they are asked: the usage, the prefix,
//! the hidden usage chunk and the recorded body still work, and the caller gets a body it can read.

use std::sync::{Arc, Mutex};

use crate::common::records::{usage_config, wait_rows};
use crate::common::{client, compress, http_client, Gateway};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ENCODINGS: [&str; 4] = ["gzip", "deflate", "br", "zstd"];
const PREFIX: &str = "[gw] ";

fn chunk(model: &str, delta: Value) -> String {
    let v = json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": null}]});
    format!("data: {v}\n\n")
}

/// The stream a backend sends: content in three pieces, the usage-only chunk, `[DONE]`.
fn sse_text(model: &str) -> String {
    let usage = json!({"id": "c1", "object": "chat.completion.chunk", "model": model, "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}});
    [
        chunk(model, json!({"role": "assistant", "content": ""})),
        chunk(model, json!({"content": "Hel"})),
        chunk(model, json!({"content": "lo"})),
        format!("data: {usage}\n\n"),
        "data: [DONE]\n\n".to_string(),
    ]
    .concat()
}

fn answer_json(model: &str) -> String {
    json!({"id": "c1", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})
    .to_string()
}

/// A backend that always compresses with `encoding` (named by the model: `<encoding>-...`), sending a stream
/// as chunks of 7 compressed bytes; it records each request's head.
async fn compressing_backend() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 65536];
                loop {
                    let (head, body) = loop {
                        let text = String::from_utf8_lossy(&got).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len = text[..end]
                                .to_lowercase()
                                .lines()
                                .find_map(|l| {
                                    l.strip_prefix("content-length:")
                                        .map(|v| v.trim().to_string())
                                })
                                .and_then(|v| v.parse::<usize>().ok())
                                .unwrap_or(0);
                            if got.len() >= end + 4 + len {
                                let body = got[end + 4..end + 4 + len].to_vec();
                                let head = text[..end].to_string();
                                got.drain(..end + 4 + len);
                                break (head, body);
                            }
                        }
                        let n = sock.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                    };
                    seen.lock().unwrap().push(head);
                    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let model = req["model"].as_str().unwrap_or("gzip").to_string();
                    let encoding = model.split('-').next().unwrap().to_string();
                    let stream = req["stream"] == json!(true);
                    let out = if stream {
                        let compressed = compress(&encoding, sse_text(&model).as_bytes());
                        let mut out = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: {encoding}\r\n\
                             transfer-encoding: chunked\r\n\r\n"
                        )
                        .into_bytes();
                        for piece in compressed.chunks(7) {
                            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                            out.extend_from_slice(piece);
                            out.extend_from_slice(b"\r\n");
                        }
                        out.extend_from_slice(b"0\r\n\r\n");
                        out
                    } else {
                        let compressed = compress(&encoding, answer_json(&model).as_bytes());
                        let mut out = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: {encoding}\r\n\
                             content-length: {}\r\n\r\n",
                            compressed.len()
                        )
                        .into_bytes();
                        out.extend_from_slice(&compressed);
                        out
                    };
                    if sock.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, heads)
}

async fn gateway(port: u16, dir: &std::path::Path, prefix: bool) -> Gateway {
    let mut c = client(
        "z",
        &format!("http://127.0.0.1:{port}/v1"),
        "keyword",
        &["-"],
    );
    if prefix {
        c["special_prefix"] = json!(PREFIX);
    }
    Gateway::start(&usage_config(vec![c], dir, json!({}))).await
}

async fn send(gw: &Gateway, body: Value) -> (u16, Option<String>, String) {
    let resp = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let coding = resp
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = resp.bytes().await.unwrap();
    let text = String::from_utf8(bytes.to_vec()).expect("the caller gets plain UTF-8");
    (status, coding, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn compressed_json_answers_keep_their_usage_prefix_and_record() {
    let (port, heads) = compressing_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(port, dir.path(), true).await;
    for encoding in ENCODINGS {
        let model = format!("{encoding}-json");
        let (status, coding, text) = send(&gw, json!({"model": model, "messages": []})).await;
        assert_eq!(status, 200, "{encoding}: {text}");
        assert_eq!(coding, None, "{encoding}: the caller gets it decoded");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            json!(format!("{PREFIX}Hello")),
            "{encoding}"
        );
    }
    let rows = wait_rows(dir.path(), ENCODINGS.len()).await;
    for (row, encoding) in rows.iter().zip(ENCODINGS) {
        assert_eq!(
            (row.prompt_tokens, row.completion_tokens),
            (Some(9), Some(3)),
            "{encoding}: {row:?}"
        );
        assert_eq!(
            row.response_json()["usage"]["total_tokens"],
            json!(12),
            "{encoding}"
        );
        assert_eq!(
            row.upstream_model.as_deref(),
            Some(format!("{encoding}-json").as_str())
        );
    }
    for head in heads.lock().unwrap().iter() {
        let head = head.to_lowercase();
        assert!(
            head.contains("\r\naccept-encoding: identity"),
            "backends are asked for identity: {head}"
        );
        assert!(!head.contains("gzip"), "{head}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn compressed_streams_keep_their_usage_prefix_and_hidden_usage_chunk() {
    let (port, _) = compressing_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(port, dir.path(), true).await;
    for encoding in ENCODINGS {
        let model = format!("{encoding}-stream");
        let (status, coding, text) =
            send(&gw, json!({"model": model, "stream": true, "messages": []})).await;
        assert_eq!(status, 200, "{encoding}: {text}");
        assert_eq!(coding, None, "{encoding}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{encoding}: {text}");
        assert!(
            !text.contains("\"usage\""),
            "{encoding}: the usage chunk is hidden: {text}"
        );
        assert!(
            text.contains(&format!("\"content\":\"{PREFIX}Hel\"")),
            "{encoding}: {text}"
        );
    }
    let rows = wait_rows(dir.path(), ENCODINGS.len()).await;
    for (row, encoding) in rows.iter().zip(ENCODINGS) {
        assert_eq!(row.total_tokens, Some(12), "{encoding}: {row:?}");
        let message = row.response_json();
        assert_eq!(
            message["choices"][0]["message"]["content"],
            json!(format!("{PREFIX}Hello")),
            "{encoding}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undecodable_body_ends_the_answer_as_an_error() {
    // A body that claims gzip but is not: the caller does not get garbage passed off as a complete answer.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = sock.read(&mut buf).await;
                let body = "not gzip at all, but long enough to be read as a header";
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n\
                     content-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.read(&mut buf).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(port, dir.path(), false).await;
    let resp = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(json!({"model": "gzip-bad", "messages": []}).to_string())
        .send()
        .await
        .unwrap();
    let body = resp.bytes().await;
    assert!(
        body.as_ref().map_or(true, |b| !b.starts_with(b"not gzip")),
        "{body:?}"
    );
    let rows = wait_rows(dir.path(), 1).await;
    assert!(
        rows[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("gzip"),
        "{:?}",
        rows[0]
    );
}
