//! Tests of which events the tap reads, and how: whole `data:` chunks without the framing, the quiet check, and
//! the `response` member only where the API has one.

use super::stream::RESPONSES;
use super::*;

#[test]
fn events_one_per_chunk_are_read_as_the_framing_reads_them() {
    // A chunk that is one whole `data:` event is read without the framing: the same answer, prefix spliced
    // and usage chunk hidden alike, as when the framing cuts the events out of one chunk.
    let prefix_only = TapOptions {
        prefix: Some("<think>\n".into()),
        hide_usage_chunk: true,
        ..opts(ApiKind::Chat, true)
    };
    for s in [chat_stream("\n"), chat_stream("\r\n")] {
        let events: Vec<&[u8]> = s.as_bytes().split_inclusive(|&b| b == b'\n').collect();
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        for line in events {
            match chunks.last_mut() {
                Some(last) if !last.ends_with(b"\n\n") && !last.ends_with(b"\r\n\r\n") => {
                    last.extend_from_slice(line)
                }
                _ => chunks.push(line.to_vec()),
            }
        }
        let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        for o in [all_on(), opts(ApiKind::Chat, true), prefix_only.clone()] {
            let whole = run(&o, &[s.as_bytes()]);
            assert_eq!(run(&o, &chunks), whole);
        }
        let hidden = run(&prefix_only, &chunks);
        assert!(hidden.out.contains("<think>") && !hidden.out.contains("prompt_tokens"));
    }
}

#[test]
fn responses_stream_usage_without_a_record() {
    // No record: the events after the first token go through the quiet check, which must still find the
    // `response` object of `response.completed` (usage) among the deltas, chunk by chunk.
    let delta = r#"event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"!"}

"#;
    let mut events: Vec<&str> = RESPONSES.split_inclusive("\n\n").collect();
    events.splice(3..3, [delta, delta]);
    let mut tap = ResponseTap::new(opts(ApiKind::Responses, true));
    let mut out = Vec::new();
    for event in &events {
        out.extend_from_slice(&tap.feed(Bytes::copy_from_slice(event.as_bytes())));
    }
    out.extend_from_slice(&tap.finish());
    assert_eq!(out, events.concat().as_bytes());
    let tokens = tap.usage().unwrap();
    assert_eq!((tokens.prompt, tokens.completion), (Some(11), Some(2)));
    assert_eq!(tap.upstream_model(), Some("gpt-4.1-2025-04-14"));
    assert_eq!(tap.response_id(), Some("resp_1"));
}

#[test]
fn a_response_member_is_read_only_where_the_api_has_one() {
    // Chat chunks have no top-level `response` by the API's definition: one there is not read, whether the
    // event is quiet or parsed; an answer of a kind the tap does not know still has it read.
    let response =
        r#""response":{"model":"other","usage":{"prompt_tokens":7,"completion_tokens":8}}"#;
    // After the usage chunk: the last usage read wins, so one read from a `response` would show.
    let s = [
        chat_event(r#"[{"index":0,"delta":{"content":"A"}}]"#),
        chat_event(r#"[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4}"#),
        format!(r#"data: {{"choices":[{{"index":0,"delta":{{"content":"B"}}}}],{response}}}"#)
            + "\n\n",
        format!("data: {{{response}}}\n\n"),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    for keep_body in [None, Some(1 << 20)] {
        let o = TapOptions {
            keep_body,
            ..opts(ApiKind::Chat, true)
        };
        let r = run1(&o, &s);
        assert_eq!(r.out, s);
        let tokens = r.usage.unwrap();
        assert_eq!((tokens.prompt, tokens.completion), (Some(3), Some(4)));
        assert_eq!(r.model.as_deref(), Some("m"));
    }
    let without_usage = s.replace(r#","usage":{"prompt_tokens":3,"completion_tokens":4}"#, "");
    let r = run1(&opts(ApiKind::Other, true), &without_usage);
    let tokens = r.usage.unwrap();
    assert_eq!((tokens.prompt, tokens.completion), (Some(7), Some(8)));
}
