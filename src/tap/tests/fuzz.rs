//! Property tests ("fuzz") of the tap: random SSE-ish bytes split at random places, under random options, never
//! panic, hold no more than the caps, give the same answer however they are split, and keep a record within size.

use super::*;
use crate::tap::reconstruct::Reconstruction;
use crate::tap::stream::EVENT_CAP;
use proptest::prelude::*;

/// A JSON string of `text`.
fn js(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// One piece of a backend's answer: an event of each shape the tap reads, line ends, or plain noise.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    let index = prop_oneof![0u32..3, any::<u32>()];
    let text = any::<String>();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        (index.clone(), text).prop_map(|(i, t)| format!(
            "data: {{\"id\":\"c\",\"model\":{m},\"choices\":[{{\"index\":{i},\"delta\":{{\"content\":{m}}},\"finish_reason\":null}}]}}\n\n",
            m = js(&t)
        )
        .into_bytes()),
        (index.clone(), text).prop_map(|(i, t)| format!(
            "data: {{\"choices\":[{{\"index\":{i},\"text\":{},\"finish_reason\":\"stop\"}}]}}\r\n\r\n",
            js(&t)
        )
        .into_bytes()),
        (index, any::<u32>(), text).prop_map(|(i, j, t)| format!(
            "data: {{\"choices\":[{{\"index\":{i},\"delta\":{{\"reasoning_content\":{t},\"tool_calls\":[{{\"index\":{j},\"id\":{t},\"type\":{t},\"function\":{{\"name\":{t},\"arguments\":{t}}}}}]}}}}]}}\n\n",
            t = js(&t)
        )
        .into_bytes()),
        (any::<u32>(), any::<u32>()).prop_map(|(p, c)| format!(
            "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c}}}}}\n\n"
        )
        .into_bytes()),
        text.prop_map(|t| format!(
            "event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"model\":{t},\"output\":[{t}],\"usage\":{{\"input_tokens\":1}}}}}}\n\n",
            t = js(&t)
        )
        .into_bytes()),
        (proptest::option::of(0u32..3), text).prop_map(|(i, t)| format!(
            "data: {{\"model\":\"m\",\"choices\":[{{{}\"delta\":{{\"content\":{}}}}}],\"usage\":null}}\n\n",
            i.map_or(String::new(), |i| format!("\"index\":{i},")),
            js(&t)
        )
        .into_bytes()),
        (any::<u32>(), text).prop_map(|(p, t)| format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":{}}}}}],\"usage\":{{\"prompt_tokens\":{p}}}}}\n\n",
            js(&t)
        )
        .into_bytes()),
        Just(b"data: [DONE]\n\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b": keep-alive\r".to_vec()),
    ]
}

fn options() -> impl Strategy<Value = TapOptions> {
    let kinds = [
        ApiKind::Chat,
        ApiKind::Completions,
        ApiKind::Responses,
        ApiKind::Embeddings,
        ApiKind::Other,
    ];
    let prefix = prop_oneof![
        Just(None),
        Just(Some("<think>\n".to_owned())),
        any::<String>().prop_map(Some)
    ];
    let keep = prop_oneof![
        Just(None),
        (0usize..400).prop_map(Some),
        Just(Some(1 << 20))
    ];
    (any::<bool>(), 0..kinds.len(), prefix, any::<bool>(), keep).prop_map(
        move |(sse, kind, prefix, hide_usage_chunk, keep_body)| TapOptions {
            sse,
            kind: kinds[kind],
            prefix,
            hide_usage_chunk,
            keep_body,
        },
    )
}

/// `bytes` cut at the given places.
fn split(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for end in at.into_iter().chain([bytes.len()]) {
        pieces.push(bytes[start..end].to_vec());
        start = end;
    }
    pieces
}

/// The caps the tap's buffers stay within: a partial event, the kept body, the rebuilt message and the rest.
fn assert_within_caps(tap: &ResponseTap, o: &TapOptions) {
    let kept = o.keep_body.unwrap_or(0);
    assert!(tap.pending.len() <= EVENT_CAP);
    let body_cap = if o.sse { kept } else { kept.max(BODY_CAP) };
    assert!(
        tap.body.len() <= body_cap,
        "{} > {body_cap}",
        tap.body.len()
    );
    if let Some(recon) = &tap.recon {
        recon.assert_bounded();
    }
    let rest = tap.held() - tap.pending.len() - tap.body.len();
    let rest_cap = Reconstruction::held_bound(kept) + MAX_MODEL_BYTES + PREFIXED_CHOICES * 4;
    assert!(rest <= rest_cap, "{rest} > {rest_cap}");
}

/// Feeds the pieces, checking the caps after each, and ends the body.
fn run_checked(o: &TapOptions, pieces: &[Vec<u8>]) -> Run {
    run_with(o, pieces, false)
}

/// As [`run_checked`]; `always_parse`: every event is parsed whole (no quiet path).
fn run_with(o: &TapOptions, pieces: &[Vec<u8>], always_parse: bool) -> Run {
    let mut tap = ResponseTap::new(o.clone());
    tap.always_parse = always_parse;
    let mut out = Vec::new();
    for piece in pieces {
        out.extend_from_slice(&tap.feed(Bytes::copy_from_slice(piece)));
        assert_within_caps(&tap, o);
    }
    out.extend_from_slice(&tap.finish());
    assert_within_caps(&tap, o);
    assert!(
        tap.delivered(out.len() as u64),
        "the whole body was handed on"
    );
    let record = tap.record_body();
    if let (Some(record), Some(kept)) = (&record, o.keep_body) {
        assert!(record.len() <= kept, "record {} > {kept}", record.len());
    }
    Run {
        out: String::from_utf8_lossy(&out).into_owned(),
        usage: tap.usage(),
        record,
        model: tap.upstream_model().map(Into::into),
        first: tap.saw_first_token(),
    }
}

proptest! {
    #![proptest_config(crate::fuzz_config())]

    #[test]
    fn random_answers_split_anywhere(
        o in options(),
        fragments in proptest::collection::vec(fragment(), 0..24),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let bytes = fragments.concat();
        let whole = run_checked(&o, std::slice::from_ref(&bytes));
        let pieces = split(&bytes, &cuts);
        prop_assert_eq!(run_checked(&o, &pieces), whole);
    }

    #[test]
    fn events_passed_on_unparsed_change_nothing(
        o in options(),
        fragments in proptest::collection::vec(fragment(), 0..24),
    ) {
        let bytes = fragments.concat();
        let whole = std::slice::from_ref(&bytes);
        prop_assert_eq!(run_with(&o, whole, false), run_with(&o, whole, true));
    }

    #[test]
    fn an_answer_cut_anywhere_is_read_without_panic(
        o in options(),
        fragments in proptest::collection::vec(fragment(), 0..24),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 1..8),
    ) {
        // The caller leaves (or the backend breaks) after some pieces: the tap reads what arrived.
        let bytes = fragments.concat();
        let pieces = split(&bytes, &cuts);
        let mut tap = ResponseTap::new(o.clone());
        for piece in &pieces[..pieces.len() - 1] {
            tap.feed(Bytes::copy_from_slice(piece));
        }
        tap.abandon();
        assert_within_caps(&tap, &o);
        prop_assert!(!tap.delivered(u64::MAX) || o.sse, "a body cut short is not delivered");
        let _ = tap.record_body();
    }
}
