//! Tests of the tap on whole bodies: prefix splicing, pass-through, usage, record; and the error event.

use super::*;

fn chat_body(second: &str) -> String {
    format!(
        r#"{{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[{{"index":0,"message":{{"role":"assistant","content":"A \u00e9"}},"finish_reason":"stop"}},{{"index":1,"message":{second},"finish_reason":"tool_calls"}}],"usage":{{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}}}"#
    )
}

fn body_opts(kind: ApiKind) -> TapOptions {
    TapOptions {
        prefix: Some("<think>\n".into()),
        keep_body: Some(1 << 20),
        ..opts(kind, false)
    }
}

#[test]
fn prefix_in_non_stream_bodies() {
    let body = chat_body(r#"{"role":"assistant","content":"B"}"#);
    let mut tap = ResponseTap::new(body_opts(ApiKind::Chat));
    assert!(tap.buffers_whole_body());
    let (a, b) = body.as_bytes().split_at(40);
    assert!(tap.feed(Bytes::copy_from_slice(a)).is_empty());
    assert!(tap.feed(Bytes::copy_from_slice(b)).is_empty());
    assert!(tap.saw_first_token());
    let out = tap.finish();
    let want = body
        .replace(r#""A \u00e9""#, r#""<think>\nA \u00e9""#)
        .replace(r#""B""#, r#""<think>\nB""#);
    assert_eq!(out, want.as_bytes());
    assert_eq!(tap.record_body().unwrap(), want);
    assert_eq!(tap.usage().unwrap().total, Some(7));
    assert_eq!(tap.upstream_model(), Some("gpt-4o"));

    let null = chat_body(r#"{"role":"assistant","content":null,"tool_calls":[]}"#);
    let r = run1(&body_opts(ApiKind::Chat), &null);
    assert_eq!(
        r.out,
        null.replace(r#""A \u00e9""#, r#""<think>\nA \u00e9""#)
    );

    let completions = r#"{"id":"cmpl","object":"text_completion","model":"m","choices":[{"text":"x","index":0},{"text":"","index":1}]}"#;
    let r = run1(&body_opts(ApiKind::Completions), completions);
    assert_eq!(
        r.out,
        completions
            .replace(r#""x""#, r#""<think>\nx""#)
            .replace(r#""""#, r#""<think>\n""#)
    );
}

#[test]
fn bodies_that_are_not_spliced_pass_unchanged() {
    for body in [
        "not json at all",
        r#"{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}"#,
        "{\"choices\":[{\"message\":{\"content\":\"x\"}}]",
    ] {
        assert_eq!(run1(&body_opts(ApiKind::Chat), body).out, body);
    }
    let mut tap = ResponseTap::new(opts(ApiKind::Chat, false));
    assert!(!tap.buffers_whole_body());
    let chunk = Bytes::from(chat_body("null"));
    assert_eq!(tap.feed(chunk.clone()).as_ptr(), chunk.as_ptr());
    assert!(tap.finish().is_empty());
    assert_eq!(tap.usage().unwrap().prompt, Some(3));
    assert_eq!(tap.record_body(), None);
    let responses = ResponseTap::new(body_opts(ApiKind::Responses));
    assert!(!responses.buffers_whole_body());
}

#[test]
fn non_stream_record_is_lossy_and_cut() {
    let o = TapOptions {
        keep_body: Some(4),
        ..opts(ApiKind::Other, false)
    };
    let r = run(&o, &[b"ab\xffcdef"]);
    assert_eq!(r.out.as_bytes(), "ab\u{fffd}cdef".as_bytes());
    assert_eq!(r.record.unwrap(), "ab");
    assert!(r.first);
}

#[test]
fn embeddings_and_responses_body_usage() {
    let body = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.2]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
    let r = run1(&opts(ApiKind::Embeddings, false), body);
    let want = TokenUsage {
        prompt: Some(8),
        total: Some(8),
        ..TokenUsage::default()
    };
    assert_eq!((r.out.as_str(), r.usage), (body, Some(want)));
    assert_eq!(r.model.as_deref(), Some("text-embedding-3-small"));
    let body = r#"{"id":"resp_1","object":"response","model":"o4","output":[],"usage":{"input_tokens":5,"output_tokens":6,"total_tokens":11,"output_tokens_details":{"reasoning_tokens":2}}}"#;
    let u = run1(&opts(ApiKind::Responses, false), body).usage.unwrap();
    assert_eq!(
        (u.prompt, u.completion, u.total, u.reasoning, u.cached),
        (Some(5), Some(6), Some(11), Some(2), None)
    );
}

#[test]
fn error_event_shape() {
    let e = ResponseTap::error_event("backend \"x\" broke", "upstream_error");
    let text = std::str::from_utf8(&e).unwrap();
    assert!(text.starts_with("data: {\"error\":{\"message\":") && text.ends_with("}\n\n"));
    let v: Value = serde_json::from_str(text["data: ".len()..].trim_end()).unwrap();
    let want = json!({"error": {"message": "backend \"x\" broke", "type": "api_error", "param": null, "code": "upstream_error"}});
    assert_eq!(v, want);
}

#[test]
fn a_body_that_is_not_json_is_let_go_at_its_first_byte() {
    let mut tap = ResponseTap::new(body_opts(ApiKind::Chat));
    assert!(tap.feed(Bytes::from_static(b"\r\n ")).is_empty());
    assert_eq!(tap.feed(Bytes::from_static(b"<html>")), &b"\r\n <html>"[..]);
    let rest = Bytes::from_static(b"</html>");
    assert_eq!(tap.feed(rest.clone()).as_ptr(), rest.as_ptr());
    assert!(tap.finish().is_empty());
    assert_eq!(tap.record_body().unwrap(), "\r\n <html></html>");
    assert_eq!(tap.usage(), None);

    let padded = format!(" \n{}", chat_body("null"));
    let r = run(&body_opts(ApiKind::Chat), &[b" ", &padded.as_bytes()[1..]]);
    assert_eq!(
        r.out,
        padded.replace(r#""A \u00e9""#, r#""<think>\nA \u00e9""#)
    );
    assert_eq!(r.usage.unwrap().total, Some(7));
}

#[test]
fn a_responses_answer_gives_its_id_and_others_do_not() {
    let feed = |kind, sse, text: &str| {
        let mut tap = ResponseTap::new(opts(kind, sse));
        tap.feed(Bytes::copy_from_slice(text.as_bytes()));
        tap.finish();
        tap.response_id().map(str::to_owned)
    };
    let body = r#"{"id":"resp_1","object":"response","model":"o4","output":[],"usage":null}"#;
    assert_eq!(
        feed(ApiKind::Responses, false, body).as_deref(),
        Some("resp_1")
    );
    let chat = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"m","choices":[]}"#;
    assert_eq!(feed(ApiKind::Chat, false, chat), None);
    let created = r#"{"type":"response.created","response":{"id":"resp_s","model":"o4"}}"#;
    let later = r#"{"type":"response.completed","response":{"id":"resp_other","model":"o4"}}"#;
    let stream = format!(
        "event: response.created\ndata: {created}\n\nevent: response.completed\ndata: {later}\n\n"
    );
    assert_eq!(
        feed(ApiKind::Responses, true, &stream).as_deref(),
        Some("resp_s")
    );
    let long = format!(r#"{{"id":"{}","object":"response"}}"#, "r".repeat(200));
    assert_eq!(
        feed(ApiKind::Responses, false, &long),
        None,
        "too long to be an id"
    );
}

#[test]
fn prefix_in_a_messages_body() {
    // The first text block with text gets it: not a thinking block, not an empty text.
    let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[{"type":"thinking","thinking":"hm","signature":"s"},{"type":"text","text":""},{"type":"text","text":"Hi \"x\""},{"type":"text","text":"again"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":4}}"#;
    let mut tap = ResponseTap::new(body_opts(ApiKind::Messages));
    assert!(tap.buffers_whole_body());
    assert!(tap.feed(Bytes::copy_from_slice(body.as_bytes())).is_empty());
    let want = body.replace(r#""Hi \"x\"""#, r#""<think>\nHi \"x\"""#);
    assert_eq!(tap.finish(), want.as_bytes());
    // Only tool calls: nothing to prefix, the body passes as it came.
    let tools = r#"{"type":"message","content":[{"type":"tool_use","id":"t","name":"f","input":{"text":"no"}}]}"#;
    assert_eq!(run1(&body_opts(ApiKind::Messages), tools).out, tools);
}
