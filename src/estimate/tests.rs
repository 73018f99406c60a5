//! Token counts against published figures (tiktoken's and the OpenAI cookbook's), and each request shape.

use super::*;
use crate::tokens::Tokenizer::{Cl100kBase as CL, O200kBase as O};

fn chat(body: &str, tok: Tokenizer) -> Option<i64> {
    prompt_tokens(ApiKind::Chat, body.as_bytes(), tok)
}

/// The OpenAI cookbook's "How to count tokens with tiktoken", section 6: the API counted 129 prompt tokens
/// for these messages on gpt-3.5-turbo and gpt-4 (cl100k_base), 124 on gpt-4o and gpt-4o-mini (o200k_base).
const COOKBOOK_MESSAGES: &str = r#"{"model": "gpt-4o", "messages": [
  {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
  {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
  {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
  {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
  {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do better."},
  {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."}
]}"#;

#[test]
fn known_text_counts() {
    // (text, cl100k_base, o200k_base): tiktoken's README and the cookbook's encoding comparison.
    let cases = [
        ("hello world", 2, 2),
        ("tiktoken is great!", 6, 6),
        ("antidisestablishmentarianism", 6, 6),
        ("2 + 2 = 4", 7, 7),
        // The encodings differ: o200k_base has "生日" as one token.
        ("お誕生日おめでとう", 9, 8),
        ("", 0, 0),
    ];
    for (text, cl, o) in cases {
        assert_eq!(text_tokens(text, CL), cl, "cl100k_base: {text}");
        assert_eq!(text_tokens(text, O), o, "o200k_base: {text}");
    }
    // Special tokens in caller text are plain text, not one token (and no error).
    assert!(text_tokens("<|endoftext|>", CL) > 1);
}

#[test]
fn cookbook_messages_match_the_api() {
    assert_eq!(chat(COOKBOOK_MESSAGES, CL), Some(129));
    assert_eq!(chat(COOKBOOK_MESSAGES, O), Some(124));
}

#[test]
fn message_overheads() {
    let t = |s| text_tokens(s, O);
    // 3 priming + per message: 3 + role + content (+ name + 1).
    let one = r#"{"messages":[{"role":"user","content":"hello world"}]}"#;
    assert_eq!(chat(one, O), Some(3 + 3 + t("user") + 2));
    let named = r#"{"messages":[{"role":"user","name":"bob","content":"hello world"}]}"#;
    assert_eq!(chat(named, O), Some(3 + 3 + t("user") + 2 + t("bob") + 1));
    // Escaped strings are unescaped before counting (the copy path), and count as the plain text does.
    let escaped = r#"{"messages":[{"role":"user","content":"hello\u0020world"}]}"#;
    assert_eq!(chat(escaped, O), chat(one, O));
    // Text parts count as their text; an image a fixed 85; audio and files nothing.
    let parts = r#"{"messages":[{"role":"user","content":[
        {"type":"text","text":"hello"},{"type":"text","text":" world"},
        {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},
        {"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}},
        {"type":"file","file":{"file_id":"f"}}]}]}"#;
    let want = 3 + 3 + t("user") + t("hello") + t(" world") + IMAGE_TOKENS;
    assert_eq!(chat(parts, O), Some(want));
}

#[test]
fn tool_calls_results_and_definitions() {
    let t = |s| text_tokens(s, CL);
    let body = r#"{"messages":[
        {"role":"user","content":"weather in Paris?"},
        {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
            "function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
        {"role":"tool","tool_call_id":"call_1","content":"18C and sunny"},
        {"role":"assistant","content":null,"function_call":{"name":"f","arguments":"{}"}}],
      "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]}"#;
    let tools =
        r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]"#;
    // The cookbook's count of one function without a description or properties: its start (10 for
    // cl100k_base), "name:", and the list's end (12).
    let definitions = 10 + t("get_weather:") + 12;
    let want = 3
        + (3 + t("user") + t("weather in Paris?"))
        + (3 + t("assistant") + t("get_weather") + t(r#"{"city":"Paris"}"#))
        + (3 + t("tool") + t("18C and sunny"))
        + (3 + t("assistant") + t("f") + t("{}"))
        + definitions;
    assert_eq!(chat(body, CL), Some(want));
    // Pretty-printed definitions count the same; `functions` the same way; empty lists nothing.
    let pretty = body.replace(r#""tools":[{"type""#, "\"tools\" : [ {\n  \"type\"");
    assert_eq!(chat(&pretty, CL), Some(want));
    let functions = body.replace("\"tools\"", "\"functions\"");
    assert_eq!(chat(&functions, CL), Some(want));
    let none = body.replace(tools, "[]");
    assert_eq!(chat(&none, CL), Some(want - definitions));
}

/// The cookbook's section 7 example with one tool: the API counted 105 prompt tokens (cl100k_base, for
/// gpt-3.5-turbo / gpt-4) and 101 (o200k_base, gpt-4o), so 71 and 68 for the tool: what `num_tokens_for_tools`
/// gives, and what the gateway counts (its JSON text would count 85 and 86, 13-18% too many).
#[test]
fn tool_definitions_against_the_api() {
    let body = r#"{"messages":[
        {"role":"system","content":"You are a helpful assistant that can answer to questions about the weather."},
        {"role":"user","content":"What's the weather like in San Francisco?"}],
      "tools":[{"type":"function","function":{"name":"get_current_weather",
        "description":"Get the current weather in a given location",
        "parameters":{"type":"object","properties":{
          "location":{"type":"string","description":"The city and state, e.g. San Francisco, CA"},
          "unit":{"type":"string","description":"The unit of temperature to return","enum":["celsius","fahrenheit"]}},
        "required":["location"]}}}]}"#;
    let (cl, o) = (chat(body, CL).unwrap(), chat(body, O).unwrap());
    let messages = body.split(",\n      \"tools\"").next().unwrap().to_owned() + "}";
    let (mcl, mo) = (chat(&messages, CL).unwrap(), chat(&messages, O).unwrap());
    assert_eq!((mcl, mo), (34, 33), "the messages alone");
    assert_eq!((cl, o), (105, 101));
    // The Responses API's flat definitions and the legacy `functions` count the same.
    let flat = body.replace(
        r#"{"type":"function","function":{"name""#,
        r#"{"type":"function","name""#,
    );
    let flat = flat.replace(
        "\"required\":[\"location\"]}}}]}",
        "\"required\":[\"location\"]}}]}",
    );
    assert_eq!(chat(&flat, CL), Some(105), "{flat}");
}

#[test]
fn completions_and_embeddings_inputs() {
    let t = |s| text_tokens(s, CL);
    for kind in [ApiKind::Completions, ApiKind::Embeddings] {
        let field = if kind == ApiKind::Completions {
            "prompt"
        } else {
            "input"
        };
        let count = |value: &str| {
            let body = format!(r#"{{"model":"m","{field}":{value}}}"#);
            prompt_tokens(kind, body.as_bytes(), CL)
        };
        assert_eq!(count(r#""hello world""#), Some(2), "{field}");
        assert_eq!(count(r#"["hello world","tiktoken is great!"]"#), Some(8));
        assert_eq!(count("[1, 2, 3]"), Some(3), "token ids count one each");
        assert_eq!(count("[[1, 2, 3], [4, 5], []]"), Some(5));
        assert_eq!(count(r#"["a", [1, 2]]"#), Some(t("a") + 2));
        assert_eq!(count("5"), None, "not a prompt");
        assert_eq!(count("null"), None);
    }
    let body = br#"{"prompt":"def f(","suffix":"    return x"}"#;
    let want = t("def f(") + t("    return x");
    assert_eq!(prompt_tokens(ApiKind::Completions, body, CL), Some(want));
}

#[test]
fn responses_inputs() {
    let t = |s| text_tokens(s, O);
    let count = |body: &str| prompt_tokens(ApiKind::Responses, body.as_bytes(), O);
    // A string input is one user message; instructions one system message.
    assert_eq!(
        count(r#"{"input":"hello world"}"#),
        Some(3 + 3 + t("user") + 2)
    );
    let with_instructions = r#"{"instructions":"be brief","input":"hello world"}"#;
    let want = 3 + (3 + t("system") + t("be brief")) + (3 + t("user") + 2);
    assert_eq!(count(with_instructions), Some(want));
    let items = r#"{"input":[
        {"role":"user","content":[{"type":"input_text","text":"look"},{"type":"input_image","image_url":"x"}]},
        {"type":"message","role":"assistant","content":[{"type":"output_text","text":"a cat"}]},
        {"type":"function_call","call_id":"c","name":"lookup","arguments":"{\"q\":1}"},
        {"type":"function_call_output","call_id":"c","output":"42"},
        {"type":"reasoning","id":"r","summary":[]}],
      "tools":[{"type":"function","name":"lookup"}]}"#;
    let want = 3
        + (3 + t("user") + t("look") + IMAGE_TOKENS)
        + (3 + t("assistant") + t("a cat"))
        + (3 + t("lookup") + t(r#"{"q":1}"#))
        + (3 + t("42"))
        + (7 + text_tokens("lookup:", O) + 12);
    assert_eq!(count(items), Some(want));
    assert_eq!(count(r#"{"model":"gpt-5"}"#), None);
}

#[test]
fn nothing_to_count() {
    for body in [
        "not json",
        "",
        "[1,2]",
        "\"text\"",
        r#"{"messages":[]}"#,
        r#"{"messages":"hi"}"#,
    ] {
        assert_eq!(chat(body, CL), None, "{body}");
    }
    assert_eq!(chat(r#"{"model":"gpt-4o"}"#, CL), None);
    assert_eq!(
        chat(r#"{"messages":[{"role":"user","content":"hi"}"#, CL),
        None,
        "cut JSON"
    );
    let body = br#"{"input":"hello"}"#;
    assert_eq!(prompt_tokens(ApiKind::Other, body, CL), None);
    assert_eq!(prompt_tokens(ApiKind::Embeddings, b"\xff\xfe", CL), None);
}

#[test]
fn cut_completions_are_scaled() {
    // Nothing cut: exact.
    assert_eq!(completion_tokens("hello world", 11, CL), 2);
    assert_eq!(
        completion_tokens("hello world", 5, CL),
        2,
        "a total below the kept text is ignored"
    );
    // Cut at a tenth: the kept count times ten.
    assert_eq!(completion_tokens("hello world", 110, CL), 20);
    // Rounded up: 2 tokens * 12 / 11.
    assert_eq!(completion_tokens("hello world", 12, CL), 3);
    // Nothing kept: bytes / 4.
    assert_eq!(completion_tokens("", 41, CL), 11);
    assert_eq!(completion_tokens("", 0, CL), 0);
}

#[test]
fn rough_counts() {
    let cases = [(0, 0), (1, 1), (4, 1), (5, 2), (4096, 1024)];
    for (bytes, want) in cases {
        assert_eq!(rough_tokens(bytes), want, "{bytes}");
    }
}

#[test]
fn usage_records() {
    let body = br#"{"messages":[{"role":"user","content":"hello world"}]}"#;
    let u = estimate(ApiKind::Chat, body, "hello world", 11, O);
    assert_eq!(
        (u.prompt, u.completion, u.total),
        (Some(9), Some(2), Some(11))
    );
    let u = estimate(ApiKind::Embeddings, br#"{"input":"hello world"}"#, "", 0, O);
    assert_eq!((u.prompt, u.completion, u.total), (Some(2), None, Some(2)));
    assert_eq!(
        estimate(ApiKind::Other, body, "x", 1, O),
        TokenUsage::default()
    );
}

#[test]
fn tokenizers_by_model() {
    let o200k = [
        "gpt-4o",
        "gpt-4o-mini-2024-07-18",
        "chatgpt-4o-latest",
        "gpt-4.1-nano",
        "gpt-4.5-preview",
        "gpt-5",
        "gpt-5.1-codex",
        "o1",
        "o1-mini",
        "o3-pro",
        "o4-mini",
        "gpt-oss-120b",
        "openai/gpt-4o",
        "openrouter/openai/gpt-5-mini",
        "ft:gpt-4o-mini:org::abc",
        "GPT-4o",
        "codex-mini-latest",
        "gpt-realtime",
    ];
    for model in o200k {
        assert_eq!(tokenizer_for(model, None), O, "{model}");
    }
    let cl100k = [
        "gpt-4",
        "gpt-4-turbo",
        "gpt-3.5-turbo",
        "text-embedding-3-small",
        "gpt-50",
        "o10",
        "claude-3-5-sonnet",
        "llama-3.1-70b",
        "",
        "gpt-4é",
    ];
    for model in cl100k {
        assert_eq!(tokenizer_for(model, None), CL, "{model}");
    }
    assert_eq!(tokenizer_for("gpt-4o", Some(CL)), CL, "configured wins");
    assert_eq!(tokenizer_for("llama", Some(O)), O);
}

#[test]
fn long_texts_are_counted_in_pieces() {
    // Prose is cut before a space, where the regex splits anyway: the same count as in one piece.
    let prose = "The quick brown fox jumps over the lazy dog. ".repeat(4000);
    assert!(prose.len() > 2 * PIECE_BYTES);
    let whole = encoder(O).encode_ordinary(&prose).len();
    assert_eq!(text_tokens(&prose, O), i64::try_from(whole).unwrap());
    // A whitespace run tiktoken-rs would panic on (its regex gives up) is counted, not lost.
    let spaces = format!("{}x", " \t".repeat(700_000));
    let n = text_tokens(&spaces, O);
    // One token per " \t" (as a short run counts) within a token per cut; the rough fallback would say 350,001.
    assert!((n - 700_000).abs() < 100, "{n}");
    // Multibyte text without a space is cut at a character boundary, within a token or two per cut.
    let jp = "お誕生日おめでとう".repeat(5000);
    let whole = i64::try_from(encoder(CL).encode_ordinary(&jp).len()).unwrap();
    let cuts = i64::try_from(jp.len() / PIECE_BYTES).unwrap();
    assert!((text_tokens(&jp, CL) - whole).abs() <= 2 * cuts);
}
