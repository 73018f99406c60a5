//! Whole answers and streams both ways against golden outputs; streams split at any byte; stream errors.

use super::*;
use proptest::prelude::*;
use serde_json::json;

#[test]
fn chat_answer_to_messages_golden() {
    let (body, usage) = chat_answer_to_messages(CHAT_ANSWER).unwrap();
    assert_eq!(
        json(&body),
        json(include_str!("../fixtures/chat_answer.messages.json").as_bytes())
    );
    assert_eq!(usage.prompt, Some(1117));
    assert_eq!(usage.cached, Some(1024));
    assert_eq!(usage.completion, Some(46));
    let reasoning = json!({"id": "x", "model": "m", "choices": [{"message": {"content": "42",
        "reasoning_content": "think"}, "finish_reason": "length"}]});
    let (body, _) = chat_answer_to_messages(reasoning.to_string().as_bytes()).unwrap();
    let v = json(&body);
    assert_eq!(
        v["content"][0],
        json!({"type": "thinking", "thinking": "think", "signature": ""})
    );
    assert_eq!(v["stop_reason"], "max_tokens");
    assert!(chat_answer_to_messages(b"{\"choices\":[]}").is_err());
}

#[test]
fn messages_answer_to_chat_golden() {
    let (body, usage) = messages_answer_to_chat(MESSAGES_ANSWER, 1_745_916_231).unwrap();
    assert_eq!(
        json(&body),
        json(include_str!("../fixtures/messages_answer.chat.json").as_bytes())
    );
    // OpenAI's meaning: prompt = input + cache reads + cache writes.
    assert_eq!(usage.prompt, Some(2095 + 2051));
    assert_eq!(usage.cached, Some(0));
    assert_eq!(usage.cache_write, Some(2051));
    assert_eq!(usage.total, Some(2095 + 2051 + 503));
}

#[test]
fn finish_and_stop_reasons_both_ways() {
    for (finish, stop) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ] {
        assert_eq!(stop_reason(finish), stop);
        assert_eq!(finish_reason(stop), finish);
    }
    assert_eq!(finish_reason("stop_sequence"), "stop");
    assert_eq!(finish_reason("pause_turn"), "stop");
}

#[test]
fn messages_streams_to_chat_golden() {
    let (text, t) = to_chat(&[MESSAGES_TEXT], true);
    assert_eq!(
        text,
        include_str!("../fixtures/messages_stream_text.chat.sse")
    );
    assert!(t.is_complete());
    assert_eq!(t.usage().unwrap().completion, Some(15));
    let (tools, t) = to_chat(&[MESSAGES_TOOLS], true);
    assert_eq!(
        tools,
        include_str!("../fixtures/messages_stream_tools.chat.sse")
    );
    let u = t.usage().unwrap();
    assert_eq!(
        (u.prompt, u.cached, u.cache_write, u.completion),
        (Some(10672), Some(9000), Some(1200), Some(89))
    );
    // Without include_usage the usage chunk is left out, the rest is the same.
    let (plain, _) = to_chat(&[MESSAGES_TOOLS], false);
    let d = datas(&plain);
    assert_eq!(d.len(), datas(&tools).len() - 1);
    assert!(d.iter().all(|c| c.get("usage").is_none()));
}

#[test]
fn chat_streams_to_messages_golden() {
    let (tools, t) = to_messages(&[CHAT_TOOLS]);
    assert_eq!(
        tools,
        include_str!("../fixtures/chat_stream_tools.messages.sse")
    );
    assert!(t.is_complete());
    let u = t.usage().unwrap();
    assert_eq!(
        (u.prompt, u.cached, u.completion),
        (Some(312), Some(256), Some(58))
    );
    let (reasoning, _) = to_messages(&[CHAT_REASONING]);
    assert_eq!(
        reasoning,
        include_str!("../fixtures/chat_stream_reasoning.messages.sse")
    );
}

#[test]
fn message_delta_waits_for_the_usage_chunk() {
    let text = std::str::from_utf8(CHAT_TOOLS).unwrap();
    let usage_at = text
        .find("data: {\"id\"")
        .and_then(|_| text.rfind("data: {"))
        .unwrap();
    assert!(
        text[usage_at..].contains("\"choices\":[]"),
        "the fixture's last chunk is the usage chunk"
    );
    let mut t = ChatToMessagesStream::new();
    let mut out = Vec::new();
    t.feed(&CHAT_TOOLS[..usage_at], &mut out).unwrap();
    let before = String::from_utf8(out.clone()).unwrap();
    assert!(before.ends_with(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n"
    ));
    assert!(
        !before.contains("message_delta"),
        "message_delta before the usage chunk"
    );
    t.feed(&CHAT_TOOLS[usage_at..], &mut out).unwrap();
    assert!(String::from_utf8(out)
        .unwrap()
        .contains("\"output_tokens\":58"));
}

#[test]
fn a_cut_stream_stays_cut_and_a_finished_one_closes_without_done() {
    let cut = &CHAT_TOOLS[..CHAT_TOOLS.len() / 2];
    let (out, t) = to_messages(&[cut]);
    assert!(!t.is_complete() && !out.contains("message_stop"));
    let no_done = &CHAT_REASONING[..CHAT_REASONING.len() - b"data: [DONE]\n\n".len()];
    let (out, t) = to_messages(&[no_done]);
    assert!(
        t.is_complete()
            && out.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
    );
    let cut = &MESSAGES_TOOLS[..MESSAGES_TOOLS.len() / 2];
    let (out, t) = to_chat(&[cut], true);
    assert!(!t.is_complete() && !out.contains("[DONE]"));
}

#[test]
fn stream_errors_in_the_callers_dialect() {
    let (out, t) = to_messages(&[b"data: {\"error\":{\"message\":\"Rate limit\",\"type\":\"requests\",\"code\":\"rate_limit_exceeded\"}}\n\n"]);
    assert!(t.is_complete());
    assert_eq!(out, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"Rate limit\"}}\n\n");
    let (out, _) = to_chat(&[b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"], true);
    assert_eq!(
        datas(&out),
        [
            json!({"error": {"message": "Overloaded", "type": "api_error", "param": null, "code": "overloaded"}})
        ]
    );
    let mut t = ChatToMessagesStream::with_cap(64);
    assert_eq!(
        t.feed(&[b'x'; 65], &mut Vec::new()),
        Err(DialectError::EventTooLarge(64))
    );
    assert!(ChatToMessagesStream::new()
        .feed(b"data: {oops\n\n", &mut Vec::new())
        .is_err());
}

#[test]
fn ping_only_while_open() {
    let mut t = ChatToMessagesStream::new();
    let mut out = Vec::new();
    t.ping(&mut out);
    assert!(out.is_empty());
    t.feed(
        &CHAT_TOOLS[..CHAT_TOOLS.iter().position(|b| *b == b'\n').unwrap() + 2],
        &mut out,
    )
    .unwrap();
    out.clear();
    t.ping(&mut out);
    assert_eq!(out, b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
}

#[test]
fn a_backends_keep_alive_becomes_a_ping_and_a_ping_a_comment() {
    let first = CHAT_TOOLS.iter().position(|b| *b == b'\n').unwrap() + 2;
    let mut t = ChatToMessagesStream::new();
    let mut out = Vec::new();
    // Before message_start there is no Messages stream to ping in yet.
    t.feed(b": keep-alive\n\n", &mut out).unwrap();
    assert!(out.is_empty());
    t.feed(&CHAT_TOOLS[..first], &mut out).unwrap();
    for keep_alive in [
        &b": OPENROUTER PROCESSING\n\n"[..],
        b"data:\n\n",
        b":\r\n\r\n",
    ] {
        out.clear();
        t.feed(keep_alive, &mut out).unwrap();
        assert_eq!(out, b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
    }

    let mut t = MessagesToChatStream::new(1, false);
    let mut out = Vec::new();
    t.feed(
        b"event: ping\ndata: {\"type\": \"ping\"}\n\n: idle\n\n",
        &mut out,
    )
    .unwrap();
    assert_eq!(out, b": ping\n\n: ping\n\n");
}

/// Splits `s` at these (sorted, deduplicated) offsets.
fn pieces<'a>(s: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (s.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts {
        out.push(&s[at..c]);
        at = c;
    }
    out.push(&s[at..]);
    out
}

proptest! {
    #![proptest_config(crate::fuzz_config())]

    #[test]
    fn any_split_of_a_stream_gives_the_same_output(cuts in proptest::collection::vec(any::<usize>(), 0..40)) {
        for stream in [CHAT_TOOLS, CHAT_REASONING] {
            let whole = to_messages(&[stream]).0;
            prop_assert_eq!(to_messages(&pieces(stream, &cuts)).0, whole);
        }
        for stream in [MESSAGES_TEXT, MESSAGES_TOOLS] {
            let whole = to_chat(&[stream], true).0;
            prop_assert_eq!(to_chat(&pieces(stream, &cuts), true).0, whole);
        }
    }
}

/// Prints the golden outputs, to review and save after a deliberate change:
/// `cargo nextest run --lib dialect::anthropic::tests::streams::dump_goldens --run-ignored only --no-capture`.
#[test]
#[ignore]
fn dump_goldens() {
    let p = |name: &str, s: &str| println!("=====FILE {name}\n{s}=====END");
    let pretty = |b: Vec<u8>| serde_json::to_string_pretty(&json(&b)).unwrap() + "\n";
    p(
        "chat_answer.messages.json",
        &pretty(chat_answer_to_messages(CHAT_ANSWER).unwrap().0),
    );
    p(
        "messages_answer.chat.json",
        &pretty(
            messages_answer_to_chat(MESSAGES_ANSWER, 1_745_916_231)
                .unwrap()
                .0,
        ),
    );
    p(
        "messages_stream_text.chat.sse",
        &to_chat(&[MESSAGES_TEXT], true).0,
    );
    p(
        "messages_stream_tools.chat.sse",
        &to_chat(&[MESSAGES_TOOLS], true).0,
    );
    p(
        "chat_stream_tools.messages.sse",
        &to_messages(&[CHAT_TOOLS]).0,
    );
    p(
        "chat_stream_reasoning.messages.sse",
        &to_messages(&[CHAT_REASONING]).0,
    );
}

#[test]
fn a_tool_call_whose_id_repeats_in_each_piece_stays_one_block() {
    let piece = |args: &str| {
        let delta = json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": args}}]});
        let chunk = json!({"id": "c", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": null}]});
        format!("data: {chunk}\n\n")
    };
    let stream = format!("{}{}data: [DONE]\n\n", piece("{\"a\":"), piece("1}"));
    let (out, _) = to_messages(&[stream.as_bytes()]);
    assert_eq!(out.matches("content_block_start").count(), 2, "{out}");
    assert_eq!(out.matches("input_json_delta").count(), 2);
}

proptest! {
    #![proptest_config(crate::fuzz_config())]

    /// Whatever a backend sends (pieces of real events mixed with junk), the translators neither panic nor
    /// keep more than the cap.
    #[test]
    fn junk_streams_never_panic(pieces in proptest::collection::vec(
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            (0..CHAT_TOOLS.len(), 1usize..300).prop_map(|(at, n)| CHAT_TOOLS[at..(at + n).min(CHAT_TOOLS.len())].to_vec()),
            (0..MESSAGES_TOOLS.len(), 1usize..300).prop_map(|(at, n)| MESSAGES_TOOLS[at..(at + n).min(MESSAGES_TOOLS.len())].to_vec()),
        ], 0..30)) {
        let mut to_m = ChatToMessagesStream::with_cap(1024);
        let mut to_c = MessagesToChatStream::with_cap(0, true, 1024);
        let mut out = Vec::new();
        for p in &pieces {
            let _ = to_m.feed(p, &mut out);
            let _ = to_c.feed(p, &mut out);
        }
        to_m.finish(&mut out);
        to_c.finish(&mut out);
    }
}

#[test]
fn answers_with_any_field_of_the_wrong_type_never_panic() {
    let odd = [
        json!(null),
        json!(1),
        json!("x"),
        json!([]),
        json!({}),
        json!([1]),
    ];
    let cases: [Fixture<'_>; 3] = [
        (CHAT_ANSWER, &|b| chat_answer_to_messages(b).is_ok()),
        (MESSAGES_ANSWER, &|b| messages_answer_to_chat(b, 0).is_ok()),
        (CHAT_ANSWER, &|b| {
            crate::dialect::responses::chat_answer_to_response(b, 0).is_ok()
        }),
    ];
    for (fixture, translate) in cases {
        let base = json(fixture);
        let mut all = Vec::new();
        super::requests::pointers(&base, String::new(), &mut all);
        for at in all.iter().filter(|p| !p.is_empty()) {
            for v in &odd {
                let mut body = base.clone();
                *body.pointer_mut(at).unwrap() = v.clone();
                translate(body.to_string().as_bytes());
            }
        }
    }
}
