//! Token counts estimated with OpenAI's tokenizers (tiktoken) for answers a backend reported no usage for.

// The prompt is counted from the request body (`prompt_tokens`), the completion from the text that was streamed
// (`completion_tokens`). Counting costs 0.1-2 ms per record, so it runs on the `Estimator`'s thread, never on the
// proxy's; `rough_tokens` (bytes / 4) is the fallback when that thread is busy. The two encoders are built once
// per process (tiktoken-rs' singletons: 0.2-0.4 s and ~66 MB between them, see bench/RESULTS.md).

mod prompt;
mod tools;
mod worker;

#[cfg(test)]
mod tests;

use std::panic::{catch_unwind, AssertUnwindSafe};

use tiktoken_rs::CoreBPE;

use crate::tokens::{TokenUsage, Tokenizer};

/// Named here for callers outside the crate (the benchmark).
pub use crate::endpoints::ApiKind;
pub use prompt::{prompt_tokens, IMAGE_TOKENS};
pub use worker::{Estimator, EstimatorCounts, Job};

/// Model families that use o200k_base, matched at the start of the name after any provider prefix
/// (`openai/gpt-4o`) and `ft:`, and followed by the end of the name or a separator (so `gpt-5` is not `gpt-50`).
/// gpt-oss uses o200k_harmony, which differs from o200k_base only in special tokens (never counted here).
const O200K_FAMILIES: [&str; 15] = [
    "gpt-4o",
    "chatgpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "o1",
    "o3",
    "o4",
    "gpt-oss",
    "codex-mini",
    "gpt-realtime",
    "gpt-audio",
    "gpt-image",
    "computer-use-preview",
    "omni-moderation",
];

/// Texts are counted in pieces of at most this many bytes. tiktoken's splitting regex (fancy-regex,
/// backtracking) fails on a whitespace run of about a million characters, and tiktoken-rs then panics; pieces
/// this size keep every run far below that. A text this long or shorter is counted exactly; a longer one may
/// gain a token at each cut.
const PIECE_BYTES: usize = 64 * 1024;
/// How far back from a piece's end a space is looked for to cut before (where the splitting regex cuts too).
const CUT_WINDOW: usize = 1024;

/// The tokenizer for `model`: the configured one, else o200k_base for the OpenAI families that use it, else
/// cl100k_base (also the estimate for models of other vendors, whose tokenizers are not bundled).
pub fn tokenizer_for(model: &str, configured: Option<Tokenizer>) -> Tokenizer {
    if let Some(tok) = configured {
        return tok;
    }
    let name = model.rsplit('/').next().unwrap_or(model);
    let name = name.strip_prefix("ft:").unwrap_or(name);
    let o200k = O200K_FAMILIES.iter().any(|family| {
        match (name.get(..family.len()), name.get(family.len()..)) {
            (Some(head), Some(rest)) => {
                head.eq_ignore_ascii_case(family)
                    && rest
                        .chars()
                        .next()
                        .is_none_or(|c| matches!(c, '-' | '.' | '_' | ':' | '@'))
            }
            _ => false,
        }
    });
    if o200k {
        Tokenizer::O200kBase
    } else {
        Tokenizer::Cl100kBase
    }
}

/// The tokens of `text` (special tokens such as `<|endoftext|>` count as the plain text they are).
pub fn text_tokens(text: &str, tok: Tokenizer) -> i64 {
    if text.is_empty() {
        return 0;
    }
    // Cannot panic since texts are cut into pieces (and the bundled encoders build); kept as a guard, since a
    // panic here would lose the record.
    match catch_unwind(AssertUnwindSafe(|| count(encoder(tok), text))) {
        Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Err(_) => rough_tokens(text.len()),
    }
}

/// A guess without a tokenizer, one token per 4 bytes rounded up: for when the estimator is full.
pub fn rough_tokens(bytes: usize) -> i64 {
    i64::try_from(bytes.div_ceil(4)).unwrap_or(i64::MAX)
}

/// The completion's tokens, from `kept` (its text as recorded, possibly only its start) and `total_bytes`
/// (the byte length of all of its text, of which `kept` is a prefix). Exact when nothing was cut; otherwise
/// the count of `kept` scaled by `total_bytes / kept.len()`, rounded up, or [`rough_tokens`] when nothing was
/// kept.
pub fn completion_tokens(kept: &str, total_bytes: usize, tok: Tokenizer) -> i64 {
    let counted = text_tokens(kept, tok);
    if total_bytes <= kept.len() {
        return counted;
    }
    if kept.is_empty() {
        return rough_tokens(total_bytes);
    }
    let (counted, total, kept) = (i128::from(counted), total_bytes as i128, kept.len() as i128);
    i64::try_from((counted * total + kept - 1) / kept).unwrap_or(i64::MAX)
}

/// The usage to record for an answer without one: the prompt counted from the request `body`, the completion
/// from its text (`completion`, `completion_bytes` as in [`completion_tokens`]); embeddings have no completion,
/// and other APIs no estimate. A prompt that cannot be counted stays `None`.
pub fn estimate(
    kind: ApiKind,
    body: &[u8],
    completion: &str,
    completion_bytes: usize,
    tok: Tokenizer,
) -> TokenUsage {
    let prompt = prompt_tokens(kind, body, tok);
    let completion = match kind {
        ApiKind::Chat | ApiKind::Completions | ApiKind::Responses | ApiKind::Messages => {
            Some(completion_tokens(completion, completion_bytes, tok))
        }
        ApiKind::Embeddings | ApiKind::CountTokens | ApiKind::StoredResponse | ApiKind::Other => {
            None
        }
    };
    with_total(prompt, completion)
}

fn with_total(prompt: Option<i64>, completion: Option<i64>) -> TokenUsage {
    let total = match (prompt, completion) {
        (None, None) => None,
        (p, c) => Some(p.unwrap_or(0).saturating_add(c.unwrap_or(0))),
    };
    TokenUsage {
        prompt,
        completion,
        total,
        ..TokenUsage::default()
    }
}

/// Builds both encoders (0.2-0.4 s and ~66 MB, the first time in a process) and the calling thread's regex
/// cache, so the first estimate is not slow. The estimator's thread calls it when it starts.
pub fn warm() {
    for tok in [Tokenizer::O200kBase, Tokenizer::Cl100kBase] {
        text_tokens("warm up", tok);
    }
}

/// The process-wide encoder (tiktoken-rs builds each once, from the BPE file compiled into it).
fn encoder(tok: Tokenizer) -> &'static CoreBPE {
    match tok {
        Tokenizer::O200kBase => tiktoken_rs::o200k_base_singleton(),
        Tokenizer::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
    }
}

/// Tokens of `text`, counted in pieces of at most [`PIECE_BYTES`].
fn count(bpe: &CoreBPE, text: &str) -> usize {
    let mut rest = text;
    let mut n = 0;
    while rest.len() > PIECE_BYTES {
        let at = cut_at(rest);
        n += bpe.encode_ordinary(&rest[..at]).len();
        rest = &rest[at..];
    }
    n + bpe.encode_ordinary(rest).len()
}

/// Where to end the next piece of `text` (longer than [`PIECE_BYTES`]): before the last space near the end of
/// the piece (the regex splits there too: a space starts the next word's token), else at a character boundary.
fn cut_at(text: &str) -> usize {
    let mut end = PIECE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let from = end - CUT_WINDOW;
    match text.as_bytes()[from..end].iter().rposition(|&b| b == b' ') {
        Some(i) => from + i,
        None => end,
    }
}
