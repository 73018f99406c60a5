//! Unit tests of one client's validation: protocols, the Responses mode, field errors at their paths.

#![allow(clippy::unwrap_used)]
use super::super::compile::compile;
use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

/// A valid one-client file with `fields` added to (or overriding, via replace) the client.
fn client(fields: &str) -> String {
    let base = "name: a, base_url: 'http://h', model_match: {type: exact, value: m}";
    format!("openai_clients:\n  - {{{base}, {fields}}}\n")
}

fn errors(text: &str) -> Vec<String> {
    let errors = compile(text, &no_env).unwrap_err().0;
    errors.iter().map(|e| e.to_string()).collect()
}

#[test]
fn protocol_anthropic_sends_its_key_in_x_api_key_and_retries_529() {
    let text = client("protocol: anthropic, api_key: sk-a, anthropic_version: '2024-01-01'");
    let config = compile(&text, &no_env).unwrap();
    let c = &config.clients[0];
    assert_eq!(c.protocol, Protocol::Anthropic);
    assert_eq!(c.anthropic_version.as_deref(), Some("2024-01-01"));
    assert!(c.retry_on.contains(&529), "{:?}", c.retry_on);
    assert_eq!(
        c.base_url.join("/v1/messages"),
        "/v1/messages",
        "/v1 added to a bare base_url"
    );
    let names: Vec<&str> = c.fixed_headers.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"x-api-key") && !names.contains(&"authorization"),
        "{names:?}"
    );
    let own = compile(&client("protocol: anthropic, retry_on: [500]"), &no_env).unwrap();
    assert_eq!(
        own.clients[0].retry_on,
        [500],
        "a client's own list is kept as it is"
    );
    let openai = compile(&client("protocol: openai"), &no_env).unwrap();
    assert_eq!(openai.clients[0].protocol, Protocol::OpenAi);
    assert!(!openai.clients[0].retry_on.contains(&529));
}

#[test]
fn protocol_errors_name_their_field() {
    let e = errors(&client("protocol: grpc"));
    assert_eq!(
        e,
        [r#"openai_clients[0].protocol: expected "openai" or "anthropic""#]
    );
    let e = errors(&client("anthropic_version: '2023-06-01'"));
    assert_eq!(
        e,
        ["openai_clients[0].anthropic_version: only for a client with protocol: anthropic"]
    );
    let e = errors(&client("protocol: anthropic, anthropic_version: ''"));
    assert_eq!(
        e,
        ["openai_clients[0].anthropic_version: expected a version such as 2023-06-01"]
    );
}

#[test]
fn responses_is_passthrough_unless_an_openai_client_translates() {
    let plain = compile(&client(""), &no_env).unwrap();
    assert_eq!(plain.clients[0].responses, ResponsesMode::Passthrough);
    assert!(!plain.clients[0].translates_responses());
    let explicit = compile(&client("responses: passthrough"), &no_env).unwrap();
    assert_eq!(explicit.clients[0].responses, ResponsesMode::Passthrough);
    let translate = compile(&client("responses: translate"), &no_env).unwrap();
    assert!(translate.clients[0].translates_responses());
    assert_eq!(
        errors(&client("responses: chat")),
        [r#"openai_clients[0].responses: expected "passthrough" or "translate""#]
    );
    assert_eq!(
        errors(&client("protocol: anthropic, responses: translate")),
        ["openai_clients[0].responses: only for a client with protocol: openai"]
    );
}

#[test]
fn every_optional_field_compiles() {
    let fields = "api_key: '', weight: 3, stop: '</s>', max_tokens: 100, extra_body: {top_k: 5}, \
                  model: up, headers: {Api-Key: '${KEY:-secret}'}, connect_timeout_ms: 5, fallback: null";
    let text = client(fields).replace("type: exact", "type: '${TYPE:-keyword}'")
        + "server: {listen: '[::1]:9000', max_body_bytes: 1024}\n";
    let config = compile(&text, &no_env).unwrap();
    let c = &config.clients[0];
    assert!(c.api_key.is_empty());
    assert_eq!(c.model_match.kind, MatchKind::Keyword);
    assert_eq!(c.model_match.values, ["m"], "a single string is one value");
    assert_eq!((c.weight, c.max_tokens), (3, Some(100)));
    assert_eq!(
        (c.model.as_deref(), c.stop.as_slice()),
        (Some("up"), &["</s>".into()][..])
    );
    assert_eq!(c.extra_body["top_k"], 5);
    assert_eq!(c.headers[0].0.as_str(), "api-key");
    assert_eq!(c.headers[0].1.expose(), "secret");
    assert_eq!(c.connect_timeout, Duration::from_millis(5));
    assert_eq!(config.server.listen, "[::1]:9000");
    assert_eq!(config.server.max_body_bytes, 1024);
}

/// Each line: a client field to add (or "old=>new", a change to the base client) | the error it gives.
const BAD_VALUES: &str = r#"
    type: exact=>type: regex | model_match.type: expected "exact" or "keyword"
    value: m=>value: [] | model_match.value: must not be an empty list
    value: m=>value: [''] | model_match.value[0]: must not be empty
    value: m=>value: m, valu: m | model_match.valu: unknown field, expected one of type, value
    model_matc: '${NOPE}' | model_matc: unknown field, expected one of name, api_key, base_url, priority, weight, balance, model_match, fallback, special_prefix, stop, max_tokens, extra_body, model, headers, connect_timeout_ms, read_timeout_ms, failure_threshold, cooldown_seconds, retry_on, protocol, anthropic_version, responses
    name: a=>name: '' | name: must not be empty
    priority: high | priority: expected an integer
    fallback: true | fallback: expected a model name or false
    weight: 0 | weight: must be a positive integer
    balance: fastest | balance: unknown balance "fastest", expected one of weighted, least_busy, latency, affinity
    weight: 5000000000 | weight: must be at most 4294967295
    max_tokens: 0 | max_tokens: must be a positive integer
    read_timeout_ms: -1 | read_timeout_ms: must be a positive integer
    stop: [a, ''] | stop[1]: must not be empty
    api_key: "k\n" | api_key: contains characters not allowed in an HTTP header
    headers: {Host: x} | headers.Host: is managed by the gateway and cannot be set
    headers: {'a b': x} | headers.a b: invalid HTTP header name
    headers: {x: "a\x01"} | headers.x: invalid HTTP header value (control characters?)
    headers: {x: a, X: b} | headers.x: duplicate header (names are case-insensitive)
    'http://h'=>'ftp://h' | base_url: scheme must be http or https, not "ftp"
    'http://h'=>'https://h/v1#x' | base_url: URL must not contain a fragment (#...)
    'http://h'=>'h.com' | base_url: invalid URL "h.com": relative URL without a base
    'http://h'=>null | base_url: required field is missing
"#;

#[test]
fn bad_values_are_reported_with_their_paths() {
    for line in BAD_VALUES.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (change, expected) = line.split_once(" | ").unwrap();
        let text = match change.split_once("=>") {
            Some((old, new)) => client("").replacen(old, new, 1),
            None => client(change),
        };
        assert_eq!(
            errors(&text),
            [format!("openai_clients[0].{expected}")],
            "{change}"
        );
    }
}

#[test]
fn anchors_and_merge_keys_share_settings() {
    let text = "openai_clients:\n  - &base {name: a, base_url: 'http://h', model_match: {type: exact, value: m}}\n  \
                - {<<: *base, name: b, priority: 2}\n";
    let config = compile(text, &no_env).unwrap();
    assert_eq!(
        (
            config.clients[1].name.as_str(),
            config.clients[1].base_url.host.as_str()
        ),
        ("b", "h")
    );
}
