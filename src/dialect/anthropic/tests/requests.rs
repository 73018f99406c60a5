//! Requests both ways, checked field by field (a Claude Code request among them).

use super::*;
use serde_json::json;

#[test]
fn claude_code_request_to_chat_field_by_field() {
    let chat = json(&messages_to_chat(CLAUDE_CODE, &ToChat::default()).unwrap());
    assert_eq!(chat["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(chat["max_completion_tokens"], 32000);
    assert_eq!(chat["temperature"], 1);
    assert_eq!(chat["stream"], true);
    assert_eq!(chat["stream_options"], json!({"include_usage": true}));
    assert_eq!(chat["user"], "user_5a1c_account_9f2e_session_0b7d");
    assert_eq!(chat["reasoning_effort"], "high");
    let m = chat["messages"].as_array().unwrap();
    assert_eq!(m.len(), 5);
    assert_eq!(
        m[0],
        json!({"role": "system", "content": "You are Claude Code, Anthropic's official CLI for Claude.\n\n\
            You are an interactive CLI tool that helps users with software engineering tasks."})
    );
    assert_eq!(
        m[1],
        json!({"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>As you answer, use the tools.</system-reminder>"},
            {"type": "text", "text": "Why does the build fail?"}]})
    );
    assert_eq!(
        m[2],
        json!({"role": "assistant", "content": "Let me look at the log.", "tool_calls": [{
            "id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function": {"name": "Bash",
            // The input's JSON text as the caller wrote it.
            "arguments": "{\"command\": \"cargo build 2>&1 | tail -20\", \"description\": \"Build\"}"}}]})
    );
    assert_eq!(
        m[3],
        json!({"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9",
            "content": "error[E0425]: cannot find value `x`"})
    );
    assert_eq!(
        m[4],
        json!({"role": "user", "content": [
            {"type": "text", "text": "Also check the screenshot."},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]})
    );
    let tools = chat["tools"].as_array().unwrap();
    assert_eq!(
        tools.len(),
        3,
        "the server tool (web_search) has no chat form"
    );
    assert_eq!(tools[0]["type"], "function");
    assert_eq!(tools[0]["function"]["name"], "Bash");
    assert_eq!(
        tools[0]["function"]["description"],
        "Executes a given bash command."
    );
    assert_eq!(
        tools[0]["function"]["parameters"]["required"],
        json!(["command"])
    );
    assert_eq!(tools[2]["function"]["name"], "Edit");
    let text =
        String::from_utf8(messages_to_chat(CLAUDE_CODE, &ToChat::default()).unwrap()).unwrap();
    for dropped in [
        "cache_control",
        "thinking",
        "signature",
        "metadata",
        "budget_tokens",
        "web_search",
    ] {
        assert!(!text.contains(dropped), "{dropped} left in {text}");
    }
    let legacy = ToChat {
        legacy_max_tokens: true,
    };
    assert_eq!(
        json(&messages_to_chat(CLAUDE_CODE, &legacy).unwrap())["max_tokens"],
        32000
    );
}

#[test]
fn messages_request_details_to_chat() {
    let body = json!({"model": "m", "max_tokens": 10, "system": "Be terse.", "stop_sequences": ["\n\nHuman:"],
        "top_p": 0.5, "top_k": 5, "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": true},
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]});
    let chat = json(&messages_to_chat(body.to_string().as_bytes(), &ToChat::default()).unwrap());
    assert_eq!(
        chat["messages"][0],
        json!({"role": "system", "content": "Be terse."})
    );
    assert_eq!(
        chat["messages"][1]["content"][0]["image_url"]["url"],
        "https://x/y.png"
    );
    assert_eq!(chat["messages"][2]["content"], Value::Null);
    assert_eq!(
        chat["messages"][2]["tool_calls"][0]["function"]["arguments"],
        "{}"
    );
    assert_eq!(
        chat["messages"][3],
        json!({"role": "tool", "tool_call_id": "t1", "content": "ok"})
    );
    assert_eq!(chat["stop"], json!(["\n\nHuman:"]));
    assert_eq!(chat["top_p"], 0.5);
    assert!(chat.get("top_k").is_none() && chat.get("stream").is_none());
    assert_eq!(
        chat["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    assert_eq!(chat["parallel_tool_calls"], false);
    assert_eq!(chat["reasoning_effort"], "low");
    for (choice, want) in [
        ("auto", json!("auto")),
        ("any", json!("required")),
        ("none", json!("none")),
    ] {
        let mut b = body.clone();
        b["tool_choice"] = json!({"type": choice});
        let chat = json(&messages_to_chat(b.to_string().as_bytes(), &ToChat::default()).unwrap());
        assert_eq!(chat["tool_choice"], want);
    }
}

#[test]
fn bad_messages_requests_are_caller_errors() {
    for body in [
        &b"nope"[..],
        b"[1]",
        br#"{"model":"m"}"#,
        br#"{"messages":[{"role":"system","content":"x"}]}"#,
        br#"{"messages":[{"role":"user","content":[{"type":"image","source":{"type":"file"}}]}]}"#,
    ] {
        let err = messages_to_chat(body, &ToChat::default()).unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
    }
}

#[test]
fn chat_request_to_messages_field_by_field() {
    let msg = json(&chat_to_messages(CHAT_REQUEST, &ToMessages::default()).unwrap());
    assert_eq!(msg["model"], "claude-sonnet-4-5");
    assert_eq!(
        msg["system"],
        "You are a helpful assistant.\n\nAnswer briefly."
    );
    assert_eq!(msg["max_tokens"], 1000);
    assert_eq!(msg["stop_sequences"], json!(["END"]));
    assert_eq!(
        msg["temperature"], 1.0,
        "OpenAI's 1.4 clamped to Anthropic's 0..1"
    );
    assert_eq!(msg["top_p"], 0.9);
    assert_eq!(msg["metadata"], json!({"user_id": "user-1234"}));
    assert_eq!(msg["stream"], true);
    assert_eq!(
        msg["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        msg["tools"],
        json!([{"name": "get_weather", "input_schema": {"type": "object", "properties": {"location":
            {"type": "string"}}, "required": ["location"]}, "description": "Weather at a place"},
            {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}])
    );
    for dropped in [
        "stream_options",
        "response_format",
        "seed",
        "parallel_tool_calls",
        "user",
        "stop",
        "n",
    ] {
        assert!(msg.get(dropped).is_none(), "{dropped}");
    }
    let m = msg["messages"].as_array().unwrap();
    assert_eq!(m.len(), 3);
    assert_eq!(
        m[0],
        json!({"role": "user", "content": [
            {"type": "text", "text": "What is the weather where this photo was taken?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/paris.jpg"}}]})
    );
    assert_eq!(
        m[1],
        json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_abc", "name": "get_weather", "input": {"location": "Paris"}},
            {"type": "tool_use", "id": "call_def", "name": "get_time", "input": {}}]})
    );
    assert_eq!(
        m[2],
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_abc", "content": "18 C, cloudy"},
            {"type": "tool_result", "tool_use_id": "call_def", "content": "14:05"},
            {"type": "text", "text": "Thanks. And tomorrow?"}]})
    );
}

#[test]
fn max_tokens_the_callers_else_the_cap_else_4096() {
    let base = |extra: &str| {
        format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#)
    };
    let max = |body: &str, cap| {
        json(
            &chat_to_messages(
                body.as_bytes(),
                &ToMessages {
                    default_max_tokens: cap,
                },
            )
            .unwrap(),
        )["max_tokens"]
            .clone()
    };
    assert_eq!(max(&base(""), None), 4096);
    assert_eq!(max(&base(""), Some(700)), 700);
    assert_eq!(max(&base(r#","max_tokens":50"#), Some(700)), 50);
    assert_eq!(
        max(
            &base(r#","max_completion_tokens":60,"max_tokens":50"#),
            None
        ),
        60
    );
    assert_eq!(max(&base(r#","max_tokens":null"#), None), 4096);
    let bad = chat_to_messages(
        base(r#","max_tokens":-1"#).as_bytes(),
        &ToMessages::default(),
    );
    assert_eq!(bad.unwrap_err().status(), 400);
    let n = chat_to_messages(base(r#","n":2"#).as_bytes(), &ToMessages::default());
    assert!(matches!(n, Err(DialectError::Invalid { field: "n", .. })));
}

#[test]
fn reasoning_effort_and_thinking_bands() {
    let req = |extra: &str| {
        let body = format!(
            r#"{{"model":"m","temperature":0.2,"messages":[{{"role":"user","content":"hi"}}]{extra}}}"#
        );
        json(&chat_to_messages(body.as_bytes(), &ToMessages::default()).unwrap())
    };
    let high = req(r#","reasoning_effort":"high","max_tokens":30000"#);
    assert_eq!(
        high["thinking"],
        json!({"type": "enabled", "budget_tokens": 24576})
    );
    assert!(
        high.get("temperature").is_none(),
        "Anthropic refuses temperature with thinking"
    );
    assert_eq!(
        req(r#","reasoning_effort":"medium""#)["thinking"]["budget_tokens"],
        4095,
        "under max_tokens"
    );
    assert!(req(r#","reasoning_effort":"low","max_tokens":1000"#)
        .get("thinking")
        .is_none());
    assert!(req(r#","reasoning_effort":"none""#)
        .get("thinking")
        .is_none());
    assert_eq!(req("")["temperature"], 0.2);
    for (budget, effort) in [
        (1024, "low"),
        (4095, "low"),
        (4096, "medium"),
        (16383, "medium"),
        (16384, "high"),
    ] {
        assert_eq!(effort_for_budget(budget), effort);
    }
    for effort in ["low", "medium", "high"] {
        assert_eq!(
            effort_for_budget(budget_for_effort(effort).unwrap()),
            effort
        );
    }
}

/// Every JSON pointer in `v`.
pub(super) fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => map
            .iter()
            .for_each(|(k, v)| pointers(v, format!("{at}/{k}"), out)),
        Value::Array(list) => list
            .iter()
            .enumerate()
            .for_each(|(i, v)| pointers(v, format!("{at}/{i}"), out)),
        _ => {}
    }
    out.push(at);
}

#[test]
fn any_field_of_the_wrong_type_is_an_error_or_a_translation_never_a_panic() {
    let odd = [
        json!(null),
        json!(1),
        json!(-1.5),
        json!("x"),
        json!([]),
        json!({}),
        json!(true),
        json!([{}]),
    ];
    let cases: [Fixture<'_>; 3] = [
        (CLAUDE_CODE, &|b| {
            messages_to_chat(b, &ToChat::default()).is_ok()
        }),
        (CHAT_REQUEST, &|b| {
            chat_to_messages(b, &ToMessages::default()).is_ok()
        }),
        (
            include_bytes!("../../responses/fixtures/codex_request.json"),
            &|b| crate::dialect::responses::responses_to_chat(b, &ToChat::default()).is_ok(),
        ),
    ];
    for (fixture, translate) in cases {
        let base = json(fixture);
        let mut all = Vec::new();
        pointers(&base, String::new(), &mut all);
        for at in all.iter().filter(|p| !p.is_empty()) {
            for v in &odd {
                let mut body = base.clone();
                *body.pointer_mut(at).unwrap() = v.clone();
                translate(body.to_string().as_bytes());
            }
        }
    }
}

#[test]
fn blank_stop_words_are_not_sent_to_anthropic() {
    let chat =
        br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":["\n"," ","END",""]}"#;
    let msg = json(&chat_to_messages(chat, &ToMessages::default()).unwrap());
    assert_eq!(msg["stop_sequences"], json!(["END"]));
    let chat = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":"\n\n"}"#;
    let msg = json(&chat_to_messages(chat, &ToMessages::default()).unwrap());
    assert!(msg.get("stop_sequences").is_none());
}

#[test]
fn thinking_sent_back_never_reaches_a_chat_backend_as_text() {
    let body = br#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"Hi"},
        {"role":"assistant","content":[{"type":"thinking","thinking":"secret plan","signature":"EqQB"},
            {"type":"redacted_thinking","data":"EmwK"},{"type":"text","text":"Hello"}]},
        {"role":"assistant","content":[{"type":"thinking","thinking":"only thoughts","signature":""}]},
        {"role":"user","content":"More"}]}"#;
    let chat = json(&messages_to_chat(body, &ToChat::default()).unwrap());
    let text = chat.to_string();
    assert!(
        !text.contains("secret plan") && !text.contains("only thoughts") && !text.contains("EmwK")
    );
    let m = chat["messages"].as_array().unwrap();
    assert_eq!(m[1], json!({"role": "assistant", "content": "Hello"}));
    assert!(m[1].get("reasoning_content").is_none());
    assert_eq!(
        m[2]["content"], "",
        "a turn of thoughts only is an empty assistant turn"
    );
}
