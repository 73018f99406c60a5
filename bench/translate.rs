//! What translating between Anthropic's Messages API and OpenAI's chat completions costs: per request, per
//! whole answer, per stream event.
//!
//! `cargo build --release --example bench-translate && target/release/examples/bench-translate [--rounds N]`
//! prints the CPU time of one translation (this thread's, from /proc/thread-self/schedstat; median of N rounds,
//! each translating 2,000 times) of a 2 KB request each way (a Claude Code style Messages request: system blocks with
//! cache_control, tools, thinking, a tool call and its result; a chat request of the same content), a whole
//! answer each way, a 2 KB Codex style Responses request and a chat answer as a response, and a stream each
//! way (and chat -> Responses) per event (text deltas and a tool call's argument pieces, fed as
//! one read and as 1,460-byte reads like TCP segments).

use std::process::ExitCode;
use std::time::Instant;

use gpt_api::dialect::anthropic::{
    chat_answer_to_messages, chat_to_messages, messages_answer_to_chat, messages_to_chat,
    strip_unsigned_thinking, ChatToMessagesStream, MessagesToChatStream, ToChat, ToMessages,
};
use gpt_api::dialect::responses::{
    chat_answer_to_response, responses_to_chat, ChatToResponsesStream,
};
use serde_json::json;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLAUDE_CODE: &[u8] =
    include_bytes!("../src/dialect/anthropic/fixtures/claude_code_request.json");
const CHAT_REQUEST: &[u8] = include_bytes!("../src/dialect/anthropic/fixtures/chat_request.json");
const CHAT_ANSWER: &[u8] = include_bytes!("../src/dialect/anthropic/fixtures/chat_answer.json");
const MESSAGES_ANSWER: &[u8] =
    include_bytes!("../src/dialect/anthropic/fixtures/messages_answer.json");
const CODEX: &[u8] = include_bytes!("../src/dialect/responses/fixtures/codex_request.json");

/// A named translation of an input, giving its output's length (0 when it failed).
type Case<'a> = (&'a str, &'a [u8], &'a dyn Fn(&[u8]) -> usize);

/// The words of the streamed text (about 5 bytes a token, like an English answer).
const WORDS: [&str; 8] = [
    " The",
    " gateway",
    " routes",
    " each",
    " request",
    " by",
    " its",
    " model,\n",
];

/// This thread's CPU time so far in ns (`/proc/thread-self/schedstat`), so that other processes on the shared
/// machine do not count; None where it cannot be read.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// Median over `rounds` of the CPU µs of one call of `f` (each round calls it `repeat` times); wall time
/// where the CPU time cannot be read.
fn median_us(rounds: usize, repeat: usize, mut f: impl FnMut() -> usize) -> f64 {
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let (cpu, start) = (thread_cpu_ns(), Instant::now());
            for _ in 0..repeat {
                std::hint::black_box(f());
            }
            let ns = match (cpu, thread_cpu_ns()) {
                (Some(a), Some(b)) => (b - a) as f64,
                _ => start.elapsed().as_secs_f64() * 1e9,
            };
            ns / 1e3 / repeat as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// A chat completions stream: the role chunk, `text` content chunks, one tool call in `args` pieces, the
/// finish chunk, the usage chunk, `[DONE]`; and its number of events.
fn chat_stream(text: usize, args: usize) -> (Vec<u8>, usize) {
    let head = r#"{"id":"chatcmpl-BQfK2mPvYcr0yBWbMDnL3Zlc","object":"chat.completion.chunk","created":1745916231,"model":"gpt-4.1-2025-04-14","system_fingerprint":"fp_b38e740b47","choices":"#;
    let mut out = Vec::new();
    let mut push = |choices: serde_json::Value, usage: serde_json::Value| {
        out.extend_from_slice(format!("data: {head}{choices},\"usage\":{usage}}}\n\n").as_bytes());
    };
    let delta = |d: serde_json::Value| json!([{"index": 0, "delta": d, "logprobs": null, "finish_reason": null}]);
    push(
        delta(json!({"role": "assistant", "content": ""})),
        json!(null),
    );
    for i in 0..text {
        push(
            delta(json!({"content": WORDS[i % WORDS.len()]})),
            json!(null),
        );
    }
    push(
        delta(
            json!({"tool_calls": [{"index": 0, "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "type": "function",
        "function": {"name": "Edit", "arguments": ""}}]}),
        ),
        json!(null),
    );
    for i in 0..args {
        let piece = if i == 0 {
            "{\"file_path\": \"src/lib.rs\", \"new_string\": \""
        } else {
            WORDS[i % WORDS.len()]
        };
        push(
            delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})),
            json!(null),
        );
    }
    push(
        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "tool_calls"}]),
        json!(null),
    );
    push(
        json!([]),
        json!({"prompt_tokens": 312, "completion_tokens": 58, "total_tokens": 370,
        "prompt_tokens_details": {"cached_tokens": 256}}),
    );
    out.extend_from_slice(b"data: [DONE]\n\n");
    (out, text + args + 5)
}

/// The same answer as Messages events; and its number of events.
fn messages_stream(text: usize, args: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut push = |v: serde_json::Value| {
        let name = v["type"].as_str().unwrap_or("").to_owned();
        out.extend_from_slice(format!("event: {name}\ndata: {v}\n\n").as_bytes());
    };
    push(
        json!({"type": "message_start", "message": {"id": "msg_01K2JbSUMYhez5RHoK9ZCj9U", "type": "message",
        "role": "assistant", "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": null,
        "stop_sequence": null, "usage": {"input_tokens": 472, "cache_creation_input_tokens": 1200,
        "cache_read_input_tokens": 9000, "output_tokens": 2}}}),
    );
    push(
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    for i in 0..text {
        push(json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": WORDS[i % WORDS.len()]}}));
    }
    push(json!({"type": "content_block_stop", "index": 0}));
    push(
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use",
        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "Edit", "input": {}}}),
    );
    for i in 0..args {
        let piece = if i == 0 {
            "{\"file_path\": \"src/lib.rs\", \"new_string\": \""
        } else {
            WORDS[i % WORDS.len()]
        };
        push(json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": piece}}));
    }
    push(json!({"type": "content_block_stop", "index": 1}));
    push(
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
        "usage": {"output_tokens": 89}}),
    );
    push(json!({"type": "message_stop"}));
    (out, text + args + 7)
}

/// A request of about `bytes` made from `base` by repeating its last user text.
fn sized(base: &[u8], bytes: usize, path: &str) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(base).expect("fixture");
    let len = serde_json::to_vec(&v).expect("JSON").len();
    let pad =
        "Please keep the answer short and show the diff. ".repeat(bytes.saturating_sub(len) / 48);
    if let Some(text) = v.pointer_mut(path) {
        *text = format!("{}{pad}", text.as_str().unwrap_or("")).into();
    }
    serde_json::to_vec(&v).expect("JSON")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let rounds = match args.as_slice() {
        [_] => 15,
        [_, flag, n] if flag == "--rounds" => match n.parse() {
            Ok(n) if n > 0 => n,
            _ => return usage(),
        },
        _ => return usage(),
    };
    let messages_req = sized(CLAUDE_CODE, 2048, "/messages/0/content/1/text");
    let chat_req = sized(CHAT_REQUEST, 2048, "/messages/6/content");
    let codex_req = sized(CODEX, 2048, "/input/2/content/0/text");
    let (to_chat_opts, to_messages_opts) = (ToChat::default(), ToMessages::default());

    println!("| translation | input bytes | output bytes | µs per translation |");
    println!("| --- | ---: | ---: | ---: |");
    let cases: [Case<'_>; 6] = [
        (
            "request, Messages (Claude Code style) -> chat",
            &messages_req,
            &|b| messages_to_chat(b, &to_chat_opts).map_or(0, |o| o.len()),
        ),
        ("request, chat -> Messages", &chat_req, &|b| {
            chat_to_messages(b, &to_messages_opts).map_or(0, |o| o.len())
        }),
        ("answer, chat -> Messages", CHAT_ANSWER, &|b| {
            chat_answer_to_messages(b).map_or(0, |o| o.0.len())
        }),
        ("answer, Messages -> chat", MESSAGES_ANSWER, &|b| {
            messages_answer_to_chat(b, 1_745_916_231).map_or(0, |o| o.0.len())
        }),
        (
            "request, Responses (Codex style) -> chat",
            &codex_req,
            &|b| responses_to_chat(b, &to_chat_opts).map_or(0, |o| o.len()),
        ),
        ("answer, chat -> Responses", CHAT_ANSWER, &|b| {
            chat_answer_to_response(b, 1_745_916_231).map_or(0, |o| o.0.len())
        }),
    ];
    for (name, input, f) in cases {
        let out = f(input);
        if out == 0 {
            eprintln!("{name}: the translation failed");
            return ExitCode::FAILURE;
        }
        let us = median_us(rounds, 2000, || f(input));
        println!("| {name} | {} | {out} | {us:.2} |", input.len());
    }

    println!();
    println!("| thinking blocks checked for an anthropic backend | input bytes | output bytes | µs per request |");
    println!("| --- | ---: | ---: | ---: |");
    let big_req = sized(CLAUDE_CODE, 100_000, "/messages/0/content/1/text");
    for (name, req) in [
        ("Claude Code style", &messages_req),
        ("the same, 100 KB", &big_req),
    ] {
        let signed = r#""signature":"EqQBCgIYAhIM""#;
        let unsigned = String::from_utf8_lossy(req).replace(signed, r#""signature":"""#);
        for (what, input) in [
            ("signed: kept", req.as_slice()),
            ("unsigned: dropped", unsigned.as_bytes()),
        ] {
            let f = || strip_unsigned_thinking(input).map_or(0, |o| o.len());
            let us = median_us(rounds, 2000, f);
            println!("| {name}, {what} | {} | {} | {us:.2} |", input.len(), f());
        }
    }

    println!();
    println!("| stream | events | bytes in | bytes out | read size | µs per event |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let (chat, chat_events) = chat_stream(200, 50);
    let (messages, messages_events) = messages_stream(200, 50);
    for read in [usize::MAX, 1460] {
        let label = if read == usize::MAX {
            "whole".to_owned()
        } else {
            read.to_string()
        };
        let to_messages = || {
            let mut t = ChatToMessagesStream::new();
            let mut out = Vec::with_capacity(64 << 10);
            for piece in chat.chunks(read.min(chat.len())) {
                if t.feed(piece, &mut out).is_err() {
                    return 0;
                }
            }
            t.finish(&mut out);
            out.len()
        };
        let out = to_messages();
        let us = median_us(rounds, 20, to_messages) / chat_events as f64;
        println!(
            "| chat -> Messages | {chat_events} | {} | {out} | {label} | {us:.3} |",
            chat.len()
        );
        let to_chat = || {
            let mut t = MessagesToChatStream::new(1_745_916_231, true);
            let mut out = Vec::with_capacity(64 << 10);
            for piece in messages.chunks(read.min(messages.len())) {
                if t.feed(piece, &mut out).is_err() {
                    return 0;
                }
            }
            t.finish(&mut out);
            out.len()
        };
        let out = to_chat();
        let us = median_us(rounds, 20, to_chat) / messages_events as f64;
        println!(
            "| Messages -> chat | {messages_events} | {} | {out} | {label} | {us:.3} |",
            messages.len()
        );
        let to_responses = || {
            let mut t = ChatToResponsesStream::new(1_745_916_231);
            let mut out = Vec::with_capacity(128 << 10);
            for piece in chat.chunks(read.min(chat.len())) {
                if t.feed(piece, &mut out).is_err() {
                    return 0;
                }
            }
            t.finish(&mut out);
            out.len()
        };
        let out = to_responses();
        let us = median_us(rounds, 20, to_responses) / chat_events as f64;
        println!(
            "| chat -> Responses | {chat_events} | {} | {out} | {label} | {us:.3} |",
            chat.len()
        );
    }
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("usage: bench-translate [--rounds N]");
    ExitCode::from(2)
}
