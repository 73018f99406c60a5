//! Unit tests of `routing.rs`.

#![allow(clippy::unwrap_used)]
use super::super::compile::compile;
use super::*;
use crate::config::Config;

fn no_env(_: &str) -> Option<String> {
    None
}

/// Two clients of priority 0 serving `m` and `routing:` as given (YAML flow mapping text, may be empty).
fn file(a_extra: &str, b_extra: &str, routing: &str) -> String {
    let base = "base_url: 'http://h', model_match: {type: exact, value: m}";
    let mut text = format!(
        "openai_clients:\n  - {{name: a, {base}{a_extra}}}\n  - {{name: b, {base}{b_extra}}}\n"
    );
    if !routing.is_empty() {
        text.push_str(&format!("routing: {routing}\n"));
    }
    text
}

fn config(text: &str) -> Config {
    compile(text, &no_env).unwrap()
}

fn errors(text: &str) -> Vec<String> {
    let errors = compile(text, &no_env).unwrap_err().0;
    errors.iter().map(|e| e.to_string()).collect()
}

#[test]
fn defaults_keep_weighted_and_name_the_agents_session_ids() {
    let c = config(&file("", "", ""));
    assert_eq!(c.routing, RoutingSettings::default());
    assert_eq!(c.routing.balance, Balance::Weighted);
    assert!(c.clients.iter().all(|c| c.balance == Balance::Weighted));
    assert!(!RoutingSettings::uses_affinity(&c.clients));
    let a = &c.routing.affinity;
    assert_eq!(a.keys.len(), DEFAULT_AFFINITY_KEYS.len());
    assert_eq!(
        a.keys[0],
        AffinitySource::Field(AffinityField::PromptCacheKey)
    );
    let header = |name: &'static str| AffinitySource::Header(HeaderName::from_static(name));
    for name in ["x-claude-code-session-id", "session-id", "session_id"] {
        assert!(a.keys.contains(&header(name)), "{name}");
    }
    assert!(a
        .keys
        .contains(&AffinitySource::Field(AffinityField::MetadataUserId)));
    assert_eq!(a.keys.last(), Some(&AffinitySource::Prefix));
    assert_eq!(
        (a.prefix_bytes, a.load_factor, a.ttl),
        (4096, 2.0, Duration::from_secs(3600))
    );
}

#[test]
fn routing_section_and_client_balance_compile() {
    let routing = "{balance: least_busy, affinity: {keys: ['header:X-Conv', user, prefix], \
                   prefix_bytes: 64, load_factor: 2, ttl_seconds: 5}}";
    let c = config(&file(", balance: least_busy", "", routing));
    assert_eq!(c.routing.balance, Balance::LeastBusy);
    assert_eq!(c.clients[1].balance, Balance::LeastBusy, "inherited");
    let a = &c.routing.affinity;
    assert_eq!(
        a.keys,
        [
            AffinitySource::Header(HeaderName::from_static("x-conv")),
            AffinitySource::Field(AffinityField::User),
            AffinitySource::Prefix
        ]
    );
    assert_eq!(
        (a.prefix_bytes, a.load_factor, a.ttl),
        (64, 2.0, Duration::from_secs(5))
    );
    // A client's own balance beats routing.balance; a pool at another priority may differ.
    let other =
        "  - {name: o, base_url: 'http://h', priority: 1, model_match: {type: exact, value: m}}\n";
    let text = file(", balance: affinity", ", balance: affinity", "")
        + other
        + "routing: {balance: weighted}\n";
    let c = config(&text);
    let balances: Vec<_> = c.clients.iter().map(|c| c.balance).collect();
    assert_eq!(
        balances,
        [Balance::Affinity, Balance::Affinity, Balance::Weighted]
    );
    assert!(RoutingSettings::uses_affinity(&c.clients));
}

#[test]
fn bad_routing_values_are_reported_with_their_paths() {
    let cases = [
        ("{balance: random}", "routing.balance: unknown balance \"random\", expected one of weighted, least_busy, latency, affinity"),
        ("{affinity: {keys: []}}", "routing.affinity.keys: must not be an empty list"),
        ("{affinity: {keys: [prefix, nope]}}", "routing.affinity.keys[1]: unknown key \"nope\": expected header:<name>, prefix, or one of prompt_cache_key, user, safety_identifier, metadata.user_id, conversation"),
        ("{affinity: {keys: ['header:a b']}}", "routing.affinity.keys[0]: invalid HTTP header name \"a b\""),
        ("{affinity: {keys: [user, user]}}", "routing.affinity.keys[1]: duplicate key"),
        ("{affinity: {prefix_bytes: 63}}", "routing.affinity.prefix_bytes: must be between 64 and 1048576"),
        ("{affinity: {prefix_bytes: 1048577}}", "routing.affinity.prefix_bytes: must be between 64 and 1048576"),
        ("{affinity: {load_factor: 0.99}}", "routing.affinity.load_factor: must be between 1 and 1000"),
        ("{affinity: {ttl_seconds: 0}}", "routing.affinity.ttl_seconds: must be a positive integer"),
        ("{affinity: {ttl: 5}}", "routing.affinity.ttl: unknown field, expected one of keys, prefix_bytes, load_factor, ttl_seconds"),
        ("{balanse: weighted}", "routing.balanse: unknown field, expected one of balance, affinity"),
    ];
    for (routing, expected) in cases {
        assert_eq!(errors(&file("", "", routing)), [expected], "{routing}");
    }
}

#[test]
fn clients_of_one_tier_must_agree() {
    let text = file("", ", balance: affinity", "");
    assert_eq!(
        errors(&text),
        ["openai_clients[1].balance: is \"affinity\" but openai_clients[0] (\"a\") of the same priority 0 \
          serving the same models is \"weighted\"; clients of one priority must balance alike (give one a \
          different priority)"]
    );
    // The tier's strategy set by routing.balance, one client saying the same: fine.
    config(&file("", ", balance: latency", "{balance: latency}"));
    // Equal priorities serving different models are different tiers.
    let apart = file("", ", balance: affinity", "").replacen(
        "value: m}}\n  - {name: b",
        "value: x}}\n  - {name: b",
        1,
    );
    config(&apart);
    // A keyword rule that an exact model contains overlaps it; two keyword rules always may.
    let keyword = apart.replacen("type: exact, value: x", "type: keyword, value: m", 1);
    assert_eq!(errors(&keyword).len(), 1);
    let both = keyword.replacen("type: exact, value: m", "type: keyword, value: y", 1);
    assert_eq!(errors(&both).len(), 1);
}
