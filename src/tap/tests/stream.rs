//! Tests of the tap on SSE streams: split invariance, prefix, hidden usage, record, robustness.

use super::*;

#[test]
fn every_split_gives_the_same_result() {
    for s in [chat_stream("\n"), chat_stream("\r\n")] {
        let s = s.as_bytes();
        for o in [all_on(), opts(ApiKind::Chat, true)] {
            let whole = run(&o, &[s]);
            for i in 0..=s.len() {
                assert_eq!(run(&o, &[&s[..i], &s[i..]]), whole, "split at {i}");
            }
            let bytes: Vec<&[u8]> = s.chunks(1).collect();
            assert_eq!(run(&o, &bytes), whole);
        }
    }
}

#[test]
fn untouched_stream_is_forwarded_byte_for_byte_without_copy() {
    let s = chat_stream("\r\n");
    let o = TapOptions {
        keep_body: Some(100),
        ..opts(ApiKind::Chat, true)
    };
    let mut tap = ResponseTap::new(o);
    let input = Bytes::from(s.clone());
    let out = tap.feed(input.clone());
    assert_eq!(out.as_ptr(), input.as_ptr());
    assert_eq!(out.len(), input.len());
    assert!(tap.finish().is_empty());
    assert_eq!(tap.usage(), Some(chat_usage()));
    assert_eq!(tap.upstream_model(), Some("gpt-4o-2024-08-06"));
    assert_eq!(tap.record_body().unwrap().len(), 100);
}

#[test]
fn prefix_and_hidden_usage_in_a_chat_stream() {
    let s = chat_stream("\n");
    let r = run1(&all_on(), &s);
    let usage_event = format!("data: {HEAD}[],{USAGE}}}\n\n");
    let want = s
        .replace(r#"{"content":"Hel"}"#, r#"{"content":"<think>\nHel"}"#)
        .replace(&usage_event, "");
    assert_eq!(r.out, want);
    assert_eq!(r.usage, Some(chat_usage()));
    assert!(r.first);
    let shown = run1(
        &TapOptions {
            hide_usage_chunk: false,
            ..all_on()
        },
        &s,
    );
    assert!(shown.out.contains(&usage_event));
    assert_eq!(shown.usage, Some(chat_usage()));
}

#[test]
fn chat_stream_is_rebuilt_for_the_record() {
    let r = run1(&all_on(), &chat_stream("\r\n"));
    let want = json!({
        "id": "chatcmpl-9x",
        "model": "gpt-4o-2024-08-06",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "<think>\nHello, \"wörld\"\n",
                "reasoning_content": "The user greets.",
                "tool_calls": [{"id": "call_abc", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]
            },
            "finish_reason": "tool_calls"
        }],
        "usage": serde_json::from_str::<Value>(&format!("{{{USAGE}}}")).unwrap()["usage"],
    });
    assert_eq!(record_json(&r), want);
    let cut = run1(
        &TapOptions {
            keep_body: Some(20),
            ..all_on()
        },
        &chat_stream("\n"),
    );
    assert_eq!(cut.record.unwrap(), r#"{"id":"chatcmpl-9x","#);
    assert_eq!(
        run1(
            &TapOptions {
                keep_body: None,
                ..all_on()
            },
            ""
        )
        .record,
        None
    );
}

#[test]
fn first_token_waits_for_content() {
    let s = chat_stream("\n");
    let role_only = s.split_inclusive("\n\n").next().unwrap();
    assert!(!run1(&all_on(), role_only).first);
    let reasoning: String = s.split_inclusive("\n\n").take(2).collect();
    assert!(run1(&all_on(), &reasoning).first);
}

fn completions_event(index: u32, text: &str, finish: &str) -> String {
    format!(
        r#"data: {{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{{"text":{text},"index":{index},"logprobs":null,"finish_reason":{finish}}}]}}"#
    ) + "\n\n"
}

#[test]
fn prefix_in_a_completions_stream() {
    let s = [
        completions_event(0, r#""""#, "null"),
        completions_event(0, r#""Once""#, "null"),
        completions_event(0, r#"" upon""#, r#""length""#),
        "data: [DONE]\n\n".into(),
    ]
    .concat();
    let o = TapOptions {
        kind: ApiKind::Completions,
        ..all_on()
    };
    let r = run1(&o, &s);
    assert_eq!(r.out, s.replace(r#""Once""#, r#""<think>\nOnce""#));
    let rec = record_json(&r);
    assert_eq!(rec["choices"][0]["text"], "<think>\nOnce upon");
    assert_eq!(rec["choices"][0]["finish_reason"], "length");
    assert!(rec["choices"][0].get("message").is_none());
}

#[test]
fn each_choice_gets_the_prefix_once() {
    let s = [
        chat_event(r#"[{"index":0,"delta":{"role":"assistant"}},{"index":1,"delta":{"role":"assistant","content":""}}]"#),
        chat_event(r#"[{"index":1,"delta":{"content":"B1"}}]"#),
        chat_event(r#"[{"index":0,"delta":{"content":"A1"}},{"index":1,"delta":{"content":"B2"}}]"#),
        chat_event(r#"[{"index":0,"delta":{"content":"A2"}}]"#),
    ]
    .concat();
    let o = TapOptions {
        prefix: Some("P".into()),
        ..all_on()
    };
    let r = run1(&o, &s);
    let want = s
        .replace(r#""B1""#, r#""PB1""#)
        .replace(r#""A1""#, r#""PA1""#);
    assert_eq!(r.out, want);
    let rec = record_json(&r);
    assert_eq!(rec["choices"][0]["message"]["content"], "PA1A2");
    assert_eq!(rec["choices"][1]["message"]["content"], "PB1B2");
}

#[test]
fn without_a_record_every_prefix_still_due_is_spliced() {
    // Without a record, events the tap need not read pass unparsed: never one that may owe a choice its prefix.
    let s = [
        chat_event(r#"[{"index":1,"delta":{"content":"B1"}}]"#),
        chat_event(r#"[{"index":1,"delta":{"content":"B2"}}]"#),
        chat_event(r#"[{"delta":{"content":"A1"}}]"#),
        chat_event(r#"[{"index":1,"delta":{"content":"B3"}}]"#),
        chat_event(r#"[{"index":2,"delta":{"content":"C1"}}]"#),
        chat_event(r#"[{"index":2,"delta":{"content":"C2"}}],"usage":null"#),
    ]
    .concat();
    let o = TapOptions {
        prefix: Some("P".into()),
        keep_body: None,
        ..all_on()
    };
    let want = s
        .replace(r#""B1""#, r#""PB1""#)
        .replace(r#""A1""#, r#""PA1""#)
        .replace(r#""C1""#, r#""PC1""#);
    assert_eq!(run1(&o, &s).out, want);
}

#[test]
fn without_a_record_usage_is_read_from_any_chunk() {
    let usage = r#""usage":{"prompt_tokens":3,"completion_tokens":4}"#;
    let s = [
        chat_event(r#"[{"index":0,"delta":{"content":"A"}}],"usage":null"#),
        chat_event(r#"[{"index":0,"delta":{"content":"B"}}],"usage":null"#),
        chat_event(&format!(
            r#"[{{"index":0,"delta":{{}},"finish_reason":"stop"}}],{usage}"#
        )),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let r = run1(&opts(ApiKind::Chat, true), &s);
    assert_eq!(r.out, s);
    let tokens = r.usage.unwrap();
    assert_eq!((tokens.prompt, tokens.completion), (Some(3), Some(4)));
}

#[test]
fn both_choices_in_one_event_and_multiline_data() {
    let one =
        chat_event(r#"[{"index":0,"delta":{"content":"A"}},{"index":1,"delta":{"content":"B"}}]"#);
    let o = TapOptions {
        prefix: Some("\"q\"".into()),
        ..all_on()
    };
    let r = run1(&o, &one);
    assert_eq!(
        r.out,
        one.replace(r#""A""#, r#""\"q\"A""#)
            .replace(r#""B""#, r#""\"q\"B""#)
    );
    let split = "event: x\r\ndata: {\"choices\":[{\"index\":0,\r\ndata: \"delta\":{\"content\":\r\ndata:\"Hi\"}}]}\r\n\r\n";
    let r = run1(&o, split);
    assert_eq!(r.out, split.replace(r#"data:"Hi""#, r#"data:"\"q\"Hi""#));
}

pub(super) const RESPONSES: &str = concat!(
    "event: response.created\n",
    r#"data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","status":"in_progress","model":"gpt-4.1-2025-04-14","output":[],"usage":null}}"#,
    "\n\n",
    ": ping\n\n",
    "event: response.output_text.delta\n",
    r#"data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi"}"#,
    "\n\n",
    "event: response.completed\n",
    r#"data: {"type":"response.completed","sequence_number":9,"response":{"id":"resp_1","object":"response","status":"completed","model":"gpt-4.1-2025-04-14","output":[{"type":"message","content":[{"type":"output_text","text":"Hi"}]}],"usage":{"input_tokens":11,"input_tokens_details":{"cached_tokens":3},"output_tokens":2,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":13}}}"#,
    "\n\n",
);

#[test]
fn responses_stream_usage_and_record() {
    let o = TapOptions {
        prefix: Some("ignored".into()),
        hide_usage_chunk: true,
        keep_body: Some(1 << 20),
        ..opts(ApiKind::Responses, true)
    };
    let created: String = RESPONSES.split_inclusive("\n\n").take(2).collect();
    let r = run1(&o, &created);
    assert!(!r.first && r.usage.is_none());
    assert_eq!(r.model.as_deref(), Some("gpt-4.1-2025-04-14"));
    let r = run1(&o, RESPONSES);
    assert_eq!(r.out, RESPONSES);
    assert!(r.first);
    let want = TokenUsage {
        prompt: Some(11),
        completion: Some(2),
        total: Some(13),
        cached: Some(3),
        reasoning: Some(0),
        cache_write: None,
    };
    assert_eq!(r.usage, Some(want));
    let record = record_json(&r);
    assert_eq!(record["status"], "completed");
    assert_eq!(record["output"][0]["content"][0]["text"], "Hi");
}

#[test]
fn null_usage_does_not_clear_and_last_wins() {
    let s = [
        chat_event(r#"[]"#).replace(
            "\"choices\":[]",
            r#""choices":[],"usage":{"prompt_tokens":1}"#,
        ),
        chat_event(r#"[{"index":0,"delta":{"content":"x"}}]"#)
            .replace("\"choices\"", r#""usage":null,"choices""#),
    ]
    .concat();
    assert_eq!(
        run1(&opts(ApiKind::Chat, true), &s).usage.unwrap().prompt,
        Some(1)
    );
    let later = s.clone()
        + &chat_event("[]").replace(
            "\"choices\":[]",
            r#""choices":[],"usage":{"prompt_tokens":2}"#,
        );
    assert_eq!(
        run1(&opts(ApiKind::Chat, true), &later)
            .usage
            .unwrap()
            .prompt,
        Some(2)
    );
}

#[test]
fn partial_last_event_is_returned_as_is_and_read() {
    let s = format!("data: {HEAD}[],{USAGE}}}");
    let mut tap = ResponseTap::new(all_on());
    assert!(tap.feed(Bytes::from(s.clone())).is_empty());
    assert_eq!(tap.finish(), s.as_bytes());
    assert_eq!(tap.usage(), Some(chat_usage()));
    assert!(tap.finish().is_empty());
}

#[test]
fn an_oversized_event_passes_unread() {
    let big = format!(
        "data: {{\"x\":\"{}\"}}\n\n",
        "a".repeat(crate::tap::stream::EVENT_CAP + 10)
    );
    let s = big.clone()
        + &chat_event("[]").replace(
            "\"choices\":[]",
            r#""choices":[],"usage":{"prompt_tokens":1}"#,
        );
    let pieces: Vec<&[u8]> = s.as_bytes().chunks(1 << 20).collect();
    let r = run(&all_on(), &pieces);
    assert_eq!(r.out, big);
    assert_eq!(r.usage.unwrap().prompt, Some(1));
}

/// A small deterministic generator, so the robustness test needs no crate.
fn lcg(state: &mut u64) -> usize {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*state >> 33) as usize
}

#[test]
fn never_panics_and_split_invariant_on_mangled_input() {
    let mut base =
        (chat_stream("\r\n") + RESPONSES + "data: {\"choices\":[{\"index\":4294967296}]}\n\n")
            .into_bytes();
    base.push(0xff);
    let mut seed = 7;
    for round in 0..300 {
        let mut s = base.clone();
        for _ in 0..(round % 8) {
            let at = lcg(&mut seed) % s.len();
            s[at] = [b'\n', b'\r', b'"', b'{', b'\\', 0xff, b':', b'['][lcg(&mut seed) % 8];
        }
        for kind in [
            ApiKind::Chat,
            ApiKind::Completions,
            ApiKind::Responses,
            ApiKind::Other,
        ] {
            for sse in [true, false] {
                let o = TapOptions {
                    kind,
                    sse,
                    ..all_on()
                };
                let whole = run(&o, &[&s]);
                let cut = lcg(&mut seed) % s.len();
                assert_eq!(
                    run(&o, &[&s[..cut], &s[cut..]]),
                    whole,
                    "round {round} cut {cut}"
                );
            }
        }
    }
}

#[test]
fn prefix_in_a_messages_stream() {
    let events = [
        r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude","usage":{"input_tokens":5,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me see."}}"#,
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":""}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hel"}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"lo"}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#,
    ];
    let stream: String = events
        .iter()
        .map(|e| format!("event: x\ndata: {e}\n\n"))
        .collect();
    let o = TapOptions {
        prefix: Some("<think>\n".into()),
        ..opts(ApiKind::Messages, true)
    };
    let want = stream.replacen(r#""text":"Hel""#, r#""text":"<think>\nHel""#, 1);
    // Split at every byte: the prefix goes in once, at the first text.
    for at in 0..stream.len() {
        let r = run(&o, &[&stream.as_bytes()[..at], &stream.as_bytes()[at..]]);
        assert_eq!(r.out, want, "split at {at}");
    }
}
