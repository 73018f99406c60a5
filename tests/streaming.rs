//! SSE streaming: events reach the caller one by one while the backend is still writing, and arrive unchanged.

use std::time::{Duration, Instant};

use crate::common;
use crate::common::{client, config, http_client, Gateway, Mock};
use futures_util::StreamExt;
use serde_json::json;

fn stream_body(model: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": model,
        "stream": true,
        "messages": [{ "role": "user", "content": "count" }],
    }))
    .unwrap()
}

async fn start_stream(gw: &Gateway, model: &str) -> reqwest::Response {
    let resp = http_client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(stream_body(model))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp
}

#[tokio::test(flavor = "multi_thread")]
async fn first_event_arrives_while_backend_holds_the_rest() {
    let mock = Mock::start("sse").await;
    mock.set_sse(4, Duration::ZERO);
    mock.hold_after_first_event();
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["m1"],
    )]))
    .await;

    let resp = tokio::time::timeout(Duration::from_secs(10), start_stream(&gw, "m1"))
        .await
        .expect("response headers must arrive while the backend holds the stream");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"),
        "{:?}",
        resp.headers()
    );
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    let events = Mock::sse_events("m1", 4);
    let first = events[0].as_bytes();
    // The backend sends nothing more until released, so this can only finish if the gateway forwards event by event.
    let read_first = async {
        while got.len() < first.len() {
            let chunk = stream.next().await.expect("stream ended early").unwrap();
            got.extend_from_slice(&chunk);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_first)
        .await
        .expect("first SSE event not forwarded while the backend holds the rest");
    assert_eq!(&got[..], first, "first event changed");
    assert_eq!(mock.streams_finished(), 0);

    mock.release();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(
        String::from_utf8(got).unwrap(),
        events.concat(),
        "the whole stream must be unchanged"
    );
    assert_eq!(mock.count(), 1);
    let done = common::wait_until(Duration::from_secs(5), || mock.streams_finished() == 1).await;
    assert!(done, "the mock's stream never finished");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_keep_their_timing() {
    let mock = Mock::start("sse").await;
    let delay = Duration::from_millis(400);
    mock.set_sse(5, delay);
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["m1"],
    )]))
    .await;

    let t0 = Instant::now();
    let resp = start_stream(&gw, "m1").await;
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    let mut first_event_at = None;
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
        if first_event_at.is_none() && got.windows(2).any(|w| w == b"\n\n") {
            first_event_at = Some(t0.elapsed());
        }
    }
    let done_at = t0.elapsed();
    let first_event_at = first_event_at.expect("no event");
    // The backend needs 5 x 400 ms after its first event; the caller must see that first event well before the end.
    assert!(
        done_at - first_event_at >= Duration::from_millis(1400),
        "first event at {first_event_at:?}, end at {done_at:?}: the stream was buffered"
    );
    assert!(
        first_event_at < Duration::from_secs(2),
        "first event took {first_event_at:?}"
    );
    assert_eq!(
        String::from_utf8(got).unwrap(),
        Mock::sse_events("m1", 5).concat()
    );
    assert_eq!(mock.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn many_events_pass_through_unchanged() {
    let mock = Mock::start("sse").await;
    mock.set_sse(200, Duration::ZERO);
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["m1"],
    )]))
    .await;

    let resp = start_stream(&gw, "m1").await;
    let body = resp.bytes().await.unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let want = Mock::sse_events("m1", 200);
    let got: Vec<String> = text.split_inclusive("\n\n").map(str::to_string).collect();
    assert_eq!(got.len(), want.len(), "event count");
    assert_eq!(got, want);
    assert_eq!(mock.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_sse_error_status_passes_through() {
    let mock = Mock::start_with(
        "sse",
        common::Behavior::Fail {
            status: 400,
            body: r#"{"error":{"message":"bad stream"}}"#.to_string(),
        },
    )
    .await;
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["m1"],
    )]))
    .await;
    let r = common::post_bytes(&gw, "/v1/chat/completions", stream_body("m1")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), r#"{"error":{"message":"bad stream"}}"#);
    assert_eq!(mock.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn caller_leaving_mid_stream_does_not_hurt_the_gateway() {
    let mock = Mock::start("sse").await;
    mock.set_sse(3, Duration::ZERO);
    mock.hold_after_first_event();
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["m1"],
    )]))
    .await;

    let resp = start_stream(&gw, "m1").await;
    let mut stream = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("first event")
        .expect("stream ended")
        .unwrap();
    assert!(first.starts_with(b"data: "));
    drop(stream); // the caller goes away mid-stream
    mock.release();

    // A fresh stream on the same gateway works in full.
    let resp = start_stream(&gw, "m1").await;
    let body = tokio::time::timeout(Duration::from_secs(10), resp.bytes())
        .await
        .expect("second stream finished")
        .unwrap();
    assert_eq!(
        String::from_utf8(body.to_vec()).unwrap(),
        Mock::sse_events("m1", 3).concat()
    );
    assert_eq!(mock.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_streams() {
    let mock = Mock::start("sse").await;
    mock.set_sse(10, Duration::from_millis(20));
    let gw = Gateway::start(&config(vec![client(
        "a",
        &mock.base_url("/v1"),
        "exact",
        &["m1"],
    )]))
    .await;

    let want = Mock::sse_events("m1", 10).concat();
    let bodies = futures_util::future::join_all((0..50).map(|_| async {
        let resp = start_stream(&gw, "m1").await;
        String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap()
    }))
    .await;
    for body in bodies {
        assert_eq!(body, want);
    }
    assert_eq!(mock.count(), 50);
    let all_done =
        common::wait_until(Duration::from_secs(5), || mock.streams_finished() == 50).await;
    assert!(
        all_done,
        "mock finished {} of 50 streams",
        mock.streams_finished()
    );
}
