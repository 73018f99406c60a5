//! What a compressed backend answer costs: bytes on the wire per encoding, and CPU to decode it in the tap.
//!
//! `cargo build --release --example bench-decode && target/release/examples/bench-decode [--rounds N]` prints,
//! for a small chat completion (JSON) and a 20-event SSE stream, the bytes on the wire as identity, gzip,
//! deflate, br and zstd (level 6 / 5 / 3: what servers commonly use), and the CPU time to decode each answer with
//! `gpt_api::tap::decode` (median of N rounds, each decoding the answer 1,000 times in the pieces a stream
//! arrives in). It backs the design choice of asking backends for `identity` (README, "Routing and rewriting").

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use gpt_api::tap::decode::{Decoder, Encoding};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn json_answer() -> String {
    r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"The image shows a wooden boardwalk path running through a lush green field or meadow. The sky is bright blue with some scattered clouds.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1117,"completion_tokens":46,"total_tokens":1163,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_fc9f1d7035"}"#.to_string()
}

/// 20 content events, the usage chunk and `[DONE]`, as OpenAI streams them (one event per piece).
fn sse_events() -> Vec<String> {
    let mut events: Vec<String> = (0..20)
        .map(|i| {
            format!(
                "data: {{\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_fc9f1d7035\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" word{i}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
            )
        })
        .collect();
    events.push("data: {\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":1117,\"completion_tokens\":20,\"total_tokens\":1137}}\n\n".into());
    events.push("data: [DONE]\n\n".into());
    events
}

/// `pieces` compressed as a server streaming them would: one flush per piece, so each can be sent at once.
fn compress(encoding: Encoding, pieces: &[String]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    match encoding {
        Encoding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            for p in pieces {
                e.write_all(p.as_bytes()).expect("gzip");
                e.flush().expect("gzip flush");
                out.push(std::mem::take(e.get_mut()));
            }
            out.push(e.finish().expect("gzip end"));
        }
        Encoding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
            for p in pieces {
                e.write_all(p.as_bytes()).expect("zlib");
                e.flush().expect("zlib flush");
                out.push(std::mem::take(e.get_mut()));
            }
            out.push(e.finish().expect("zlib end"));
        }
        Encoding::Brotli => {
            let mut e = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
            for p in pieces {
                e.write_all(p.as_bytes()).expect("br");
                e.flush().expect("br flush");
                out.push(std::mem::take(e.get_mut()));
            }
            out.push(e.into_inner());
        }
        Encoding::Zstd => {
            let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd");
            for p in pieces {
                e.write_all(p.as_bytes()).expect("zstd");
                e.flush().expect("zstd flush");
                out.push(std::mem::take(e.get_mut()));
            }
            out.push(e.finish().expect("zstd end"));
        }
    }
    out
}

/// Median over `rounds` of the µs to decode the answer once.
fn decode_us(encoding: Encoding, pieces: &[Vec<u8>], rounds: usize) -> f64 {
    const REPEAT: usize = 1000;
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..REPEAT {
                let mut d = Decoder::new(encoding).expect("decoder");
                let mut n = 0;
                for (i, p) in pieces.iter().enumerate() {
                    n += d.decode(p, i + 1 == pieces.len()).expect("decodes").len();
                }
                std::hint::black_box(n);
            }
            start.elapsed().as_secs_f64() * 1e6 / REPEAT as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let rounds = match args.as_slice() {
        [_] => 7,
        [_, flag, n] if flag == "--rounds" => match n.parse() {
            Ok(n) if n > 0 => n,
            _ => return usage(),
        },
        _ => return usage(),
    };
    let answers = [
        ("JSON answer", vec![json_answer()]),
        ("20-event stream", sse_events()),
    ];
    println!("| answer | encoding | bytes on the wire | decode µs per answer |");
    println!("| --- | --- | ---: | ---: |");
    for (name, pieces) in &answers {
        let plain: usize = pieces.iter().map(String::len).sum();
        println!("| {name} | identity | {plain} | 0 |");
        let codings = [
            ("gzip", Encoding::Gzip),
            ("deflate", Encoding::Deflate),
            ("br", Encoding::Brotli),
            ("zstd", Encoding::Zstd),
        ];
        for (label, encoding) in codings {
            let compressed = compress(encoding, pieces);
            let bytes: usize = compressed.iter().map(Vec::len).sum();
            let us = decode_us(encoding, &compressed, rounds);
            println!("| {name} | {label} | {bytes} | {us:.2} |");
        }
    }
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("usage: bench-decode [--rounds N]");
    ExitCode::from(2)
}
