//! Tests of what the tap keeps: bounded by the record's size however long the stream, and when the caller has it all.

use super::*;

/// A chat chunk event with these choices (JSON).
fn chunk_event(choices: &str) -> String {
    format!("data: {HEAD}{choices}}}\n\n")
}

fn content(index: u32, text: &str) -> String {
    let text = serde_json::to_string(text).unwrap();
    chunk_event(&format!(
        r#"[{{"index":{index},"delta":{{"content":{text}}},"finish_reason":null}}]"#
    ))
}

fn keeping(limit: usize) -> TapOptions {
    TapOptions {
        keep_body: Some(limit),
        ..opts(ApiKind::Chat, true)
    }
}

/// Feeds `events` one by one, checking after each that the tap holds no more than its bound.
fn feed_all(tap: &mut ResponseTap, o: &TapOptions, events: impl Iterator<Item = String>) {
    let bound = ResponseTap::held_bound(o);
    for event in events {
        tap.feed(Bytes::from(event));
        assert!(tap.held() <= bound, "{} > {bound}", tap.held());
        if let Some(recon) = &tap.recon {
            recon.assert_bounded();
        }
    }
}

#[test]
fn a_long_stream_is_kept_within_the_record_size_with_its_usage_and_finish_reason() {
    let limit = 4096;
    let o = keeping(limit);
    let mut tap = ResponseTap::new(o.clone());
    let delta = "0123456789".repeat(10);
    feed_all(&mut tap, &o, (0..5000).map(|_| content(0, &delta)));
    // The record's bytes, and the stream's first bytes kept for counting until usage arrives.
    let counting = crate::tap::text::SEEN_CAP;
    assert!(tap.held() < 2 * limit + counting, "held {}", tap.held());
    let end = chunk_event(r#"[{"index":0,"delta":{},"finish_reason":"stop"}]"#)
        + &chunk_event(&format!("[],{USAGE}"))
        + "data: [DONE]\n\n";
    tap.feed(Bytes::from(end));
    tap.finish();
    assert_eq!(tap.usage(), Some(chat_usage()));
    let record = tap.record_body().unwrap();
    assert!(record.len() <= limit, "{} > {limit}", record.len());
    let v: Value = serde_json::from_str(&record).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 46);
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    let (kept, marker) = text.split_once('…').unwrap();
    assert!(kept.starts_with(&delta) && kept.len() > limit / 2, "{text}");
    assert_eq!(
        marker,
        format!("(+{} bytes)", 5000 * delta.len() - kept.len())
    );
}

#[test]
fn a_stream_that_fits_is_not_marked() {
    let o = keeping(1 << 20);
    let mut tap = ResponseTap::new(o);
    tap.feed(Bytes::from(content(0, "h\u{e9}llo")));
    tap.finish();
    let v: Value = serde_json::from_str(&tap.record_body().unwrap()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "h\u{e9}llo");
}

#[test]
fn many_choices_and_tool_calls_stay_within_the_record_size() {
    let limit = 2048;
    let o = keeping(limit);
    let mut tap = ResponseTap::new(o.clone());
    let choices = (0..20_000).map(|i| content(i, "x"));
    feed_all(&mut tap, &o, choices);
    let call = |i: u32| {
        chunk_event(&format!(
            r#"[{{"index":0,"delta":{{"tool_calls":[{{"index":{i},"id":"{}","type":"function","function":{{"name":"f","arguments":"{{}}"}}}}]}}}}]"#,
            "i".repeat(1000)
        ))
    };
    feed_all(&mut tap, &o, (0..20_000).map(call));
    tap.finish();
    let record = tap.record_body().unwrap();
    assert!(record.len() <= limit, "{} > {limit}", record.len());
}

#[test]
fn a_responses_object_and_the_model_name_are_cut() {
    let limit = 1000;
    let o = TapOptions {
        keep_body: Some(limit),
        ..opts(ApiKind::Responses, true)
    };
    let mut tap = ResponseTap::new(o);
    let long = "m".repeat(100_000);
    let event = format!(
        "event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"model\":\"{long}\",\"output\":[],\"usage\":{{\"input_tokens\":1,\"output_tokens\":2}}}}}}\n\n"
    );
    tap.feed(Bytes::from(event));
    assert!(tap.held() < 2 * limit, "held {}", tap.held());
    assert_eq!(
        tap.upstream_model().map(str::len),
        Some(crate::request::MAX_MODEL_BYTES)
    );
    assert_eq!(tap.usage().and_then(|u| u.completion), Some(2));
    assert_eq!(tap.record_body().unwrap().len(), limit);
}

#[test]
fn the_answer_is_delivered_once_done_or_the_body_end_is_sent() {
    let mut tap = ResponseTap::new(opts(ApiKind::Chat, true));
    let first = tap.feed(Bytes::from(content(0, "a")));
    assert!(!tap.delivered(u64::MAX), "no end seen yet");
    let done = tap.feed(Bytes::from(content(0, "b") + "data: [DONE]\n\n"));
    let end = (first.len() + done.len()) as u64;
    assert!(!tap.delivered(end - 1) && tap.delivered(end));
    assert!(tap.finish().is_empty());
    assert!(tap.delivered(end), "the body's end adds nothing");

    // A `[DONE]` still held (no blank line yet) is not delivered; the body's end is, once sent.
    let mut tap = ResponseTap::new(opts(ApiKind::Chat, true));
    let head = tap.feed(Bytes::from_static(b"data: [DONE]"));
    assert!(head.is_empty() && !tap.delivered(u64::MAX));
    tap.abandon();
    assert!(
        !tap.delivered(u64::MAX),
        "a stream cut short is never delivered"
    );
    let mut tap = ResponseTap::new(opts(ApiKind::Chat, true));
    tap.feed(Bytes::from_static(b"data: [DONE]"));
    let rest = tap.finish();
    assert!(tap.delivered(rest.len() as u64) && !tap.delivered(rest.len() as u64 - 1));

    // A whole body: delivered when its end was handed on.
    let mut tap = ResponseTap::new(opts(ApiKind::Chat, false));
    let body = tap.feed(Bytes::from_static(b"{\"x\":1}"));
    assert!(!tap.delivered(u64::MAX));
    tap.finish();
    assert!(tap.delivered(body.len() as u64));
}
