//! Unit tests of `file.rs`.

#![allow(clippy::unwrap_used)]
use super::*;

fn section_fields(shape: &Shape) -> Vec<&'static str> {
    match shape {
        Shape::Section(fields) => fields.iter().map(|(name, _)| *name).collect(),
        _ => Vec::new(),
    }
}

fn conformed(yaml: &str) -> (Value, Vec<String>) {
    let mut tree: Value = serde_yaml::from_str(yaml).unwrap();
    let mut errors = Vec::new();
    conform(&mut tree, &ROOT, "", &mut errors);
    (tree, errors.iter().map(|e| e.to_string()).collect())
}

const FULL: &str = r#"
openai_clients:
  - name: a
    api_key: k
    base_url: http://h
    priority: -1
    weight: 2
    balance: affinity
    model_match: {type: keyword, value: gpt}
    fallback: other
    special_prefix: "<think>"
    stop: "</s>"
    max_tokens: 10
    extra_body: {top_k: 5, nested: {x: [1, null]}}
    model: m
    headers: {X-Api-Key: v}
    connect_timeout_ms: 1
    read_timeout_ms: 2
    failure_threshold: 8
    cooldown_seconds: 9
    retry_on: [500]
    protocol: anthropic
    anthropic_version: "2023-06-01"
    responses: passthrough
server: {listen: "127.0.0.1:1", max_body_bytes: 3, expose_backend_header: false, models_timeout_ms: 4, models_cache_seconds: 5, tls: {cert_path: c.pem, key_path: k.pem}, metrics_listen: "127.0.0.1:2", max_header_bytes: 6, client_header_timeout_ms: 7, client_body_timeout_ms: 8, send_timeout_ms: 9, admin_listen: "127.0.0.1:3", admin_key: adm}
failover: {max_fallback_hops: 1, failure_threshold: 2, cooldown_seconds: 3, retry_on: [429]}
usage:
  dir: db
  enabled: true
  record_bodies: false
  max_body_bytes: 4
  batch_size: 5
  flush_interval_ms: 6
  queue_capacity: 7
  queue_max_mb: 8
  postgres_url: "postgres://h/db"
auth:
  keys:
    - {name: team, key: sk-team, models: ["gpt-4*"], rpm: 1, tpm: 2, budget_usd: {day: 1, month: 2.5}, max_concurrent: 3}
logging: {level: info, dir: logs, info_max_mb: 1, info_keep_files: 2, error_max_mb: 3, error_keep_files: 4}
pricing: {file: prices.yaml, models: {"m*": {input: 1}}}
routing: {balance: latency, affinity: {keys: [prefix], prefix_bytes: 100, load_factor: 1.5, ttl_seconds: 60}}
cluster: {node: gw-1, redis_url: "redis://h/0", redis_timeout_ms: 5, on_redis_down: deny}
"#;

/// Catches the schema and the structs drifting apart: a field missing from the schema would be dropped as
/// unknown, one missing from the structs would fail `deny_unknown_fields`.
#[test]
fn schema_and_structs_agree() {
    let (tree, errors) = conformed(FULL);
    assert_eq!(errors, Vec::<String>::new());
    let file: FileConfig = serde_yaml::from_value(tree).unwrap();
    let clients = file.openai_clients.unwrap();
    let c = clients[0].as_ref().unwrap();
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("None"),
        "every client field should be set: {debug}"
    );
    assert_eq!(
        c.model_match.as_ref().unwrap().kind.as_deref(),
        Some("keyword")
    );
    assert_eq!(c.fallback, Some(FallbackFile::Model("other".into())));
    assert_eq!(c.stop, Some(OneOrMany::One("</s>".into())));
    let server = file.server.unwrap();
    assert_eq!(server.max_body_bytes, Some(3));
    assert_eq!(
        section_fields(&SERVER),
        [
            "listen",
            "max_body_bytes",
            "expose_backend_header",
            "models_timeout_ms",
            "models_cache_seconds",
            "tls",
            "metrics_listen",
            "trusted_proxies",
            "max_header_bytes",
            "client_header_timeout_ms",
            "client_body_timeout_ms",
            "send_timeout_ms",
            "admin_listen",
            "admin_key"
        ]
    );
    assert_eq!(server.expose_backend_header, Some(false));
    let tls = format!("{:?}", server.tls.as_ref().unwrap());
    assert!(!tls.contains("None"), "every tls field: {tls}");
    assert_eq!(section_fields(&TLS), ["cert_path", "key_path"]);
    let usage = format!("{:?}", file.usage.unwrap());
    assert!(!usage.contains("None"), "every usage field: {usage}");
    assert_eq!(section_fields(&USAGE).len(), 9);
    let failover = format!("{:?}", file.failover.unwrap());
    assert!(
        !failover.contains("None"),
        "every failover field: {failover}"
    );
    assert_eq!(section_fields(&FAILOVER).len(), 4);
    assert_eq!(section_fields(&CLIENT).len(), 22);
    let auth = file.auth.unwrap().keys.unwrap();
    let key = format!("{:?}", auth[0].as_ref().unwrap());
    assert!(!key.contains("None"), "every auth key field: {key}");
    assert_eq!(section_fields(&AUTH_KEY).len(), 7);
    assert_eq!(section_fields(&BUDGET), ["day", "month"]);
    let logging = format!("{:?}", file.logging.unwrap());
    assert!(!logging.contains("None"), "every logging field: {logging}");
    assert_eq!(section_fields(&LOGGING).len(), 6);
    let pricing = format!("{:?}", file.pricing.unwrap());
    assert!(!pricing.contains("None"), "every pricing field: {pricing}");
    let routing = format!("{:?}", file.routing.unwrap());
    assert!(!routing.contains("None"), "every routing field: {routing}");
    let cluster = format!("{:?}", file.cluster.unwrap());
    assert!(!cluster.contains("None"), "every cluster field: {cluster}");
}

#[test]
fn unknown_keys_and_wrong_types_are_reported_at_their_paths_and_removed() {
    let (tree, errors) = conformed(
            "openai_clients:\n  - {name: a, model_matc: x, priority: high, model_match: {type: 5, valu: [a]}}\n  - 7\nserver: {lisen: x}\nextra: 1\nusage: {record_bodies: 'yes', batch: 1}\n",
        );
    assert_eq!(
            errors,
            [
                "openai_clients[0].model_matc: unknown field, expected one of name, api_key, base_url, priority, weight, balance, model_match, fallback, special_prefix, stop, max_tokens, extra_body, model, headers, connect_timeout_ms, read_timeout_ms, failure_threshold, cooldown_seconds, retry_on, protocol, anthropic_version, responses",
                "openai_clients[0].priority: expected an integer",
                "openai_clients[0].model_match.type: expected a string",
                "openai_clients[0].model_match.valu: unknown field, expected one of type, value",
                "openai_clients[1]: expected a mapping",
                "server.lisen: unknown field, expected one of listen, max_body_bytes, expose_backend_header, models_timeout_ms, models_cache_seconds, tls, metrics_listen, trusted_proxies, max_header_bytes, client_header_timeout_ms, client_body_timeout_ms, send_timeout_ms, admin_listen, admin_key",
                "extra: unknown field, expected one of openai_clients, server, usage, failover, auth, logging, pricing, routing, cluster",
                "usage.record_bodies: expected true or false",
                "usage.batch: unknown field, expected one of dir, enabled, record_bodies, max_body_bytes, batch_size, flush_interval_ms, queue_capacity, queue_max_mb, postgres_url",
            ]
        );
    let file: FileConfig = serde_yaml::from_value(tree).unwrap();
    let clients = file.openai_clients.unwrap();
    assert_eq!(
        clients.len(),
        2,
        "a bad entry keeps its slot so later indices stay right"
    );
    assert!(clients[1].is_none());
    assert_eq!(clients[0].as_ref().unwrap().priority, None);
}

#[test]
fn lists_maps_and_fallbacks_are_checked_inside() {
    let (tree, errors) = conformed(
            "openai_clients:\n  - stop: [a, 1]\n    fallback: true\n    headers: {ok: v, n: 5, 3: x}\n    extra_body: {a: !t 1, b: {2: x}, c: [1]}\n  - fallback: False\n    model_match: {value: [x, y]}\n",
        );
    assert_eq!(
        errors,
        [
            "openai_clients[0].stop[1]: expected a string",
            "openai_clients[0].fallback: expected a model name or false",
            "openai_clients[0].headers.n: expected a string",
            "openai_clients[0].headers.3: keys must be strings",
            "openai_clients[0].extra_body.a: YAML tag !t has no JSON equivalent",
            "openai_clients[0].extra_body.b: nested key 2 must be a string",
        ]
    );
    let file: FileConfig = serde_yaml::from_value(tree).unwrap();
    let clients = file.openai_clients.unwrap();
    let first = clients[0].as_ref().unwrap();
    assert_eq!(first.stop, None);
    assert_eq!(first.headers.as_ref().unwrap().len(), 1);
    assert_eq!(first.extra_body.as_ref().unwrap().len(), 1);
    let second = clients[1].as_ref().unwrap();
    assert_eq!(second.fallback, Some(FallbackFile::Off(false)));
    let values = second.model_match.as_ref().unwrap().value.clone();
    assert_eq!(values, Some(OneOrMany::Many(vec!["x".into(), "y".into()])));
}

#[test]
fn numbers_and_maps_of_user_keys() {
    let (tree, errors) = conformed(
        "pricing:\n  models:\n    gpt-4.1: {input: 2, output: 8.5, cached: 1}\n    x: {input: '2'}\n    3: {}\n    y: 5\n",
    );
    assert_eq!(
        errors,
        [
            "pricing.models.\"gpt-4.1\".cached: unknown field, expected one of input, cached_input, \
             cache_write, output, reasoning, per_request, tokenizer, source, read",
            "pricing.models.\"x\".input: expected a number",
            "pricing.models.\"3\": keys must be strings",
            "pricing.models.\"y\": expected a mapping",
        ]
    );
    let models = tree["pricing"]["models"].as_mapping().unwrap();
    let keys: Vec<_> = models.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(
        keys,
        ["gpt-4.1", "x", "y"],
        "file order, the bad key dropped"
    );
    assert_eq!(models["gpt-4.1"]["output"].as_f64(), Some(8.5));
    assert!(models["y"].is_null());
}

#[test]
fn nulls_mean_absent() {
    let (tree, errors) =
        conformed("openai_clients:\n  - name: a\n    fallback:\n    stop: ~\nserver:\nusage:\n");
    assert!(errors.is_empty(), "{errors:?}");
    let file: FileConfig = serde_yaml::from_value(tree).unwrap();
    assert!(file.server.is_none());
    assert!(file.usage.is_none());
}
