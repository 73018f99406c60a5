//! Unit tests of `compile.rs`.

#![allow(clippy::unwrap_used)]
use super::*;
use crate::config::{MatchKind, DEFAULT_READ_TIMEOUT_MS};

const USERS_FILE: &str = r#"
openai_clients:
  - name: "official_openai"
    api_key: "${OPENAI_API_KEY}"          # ${VAR} is read from the environment
    base_url: "https://api.openai.com/v1"
    priority: 1                          # smaller = tried first
    model_match:
      type: "keyword"                    # "exact": model equals a value; "keyword": model contains a value
      value: ["gpt-4", "gpt-3.5-turbo"]  # a list or a single string
    fallback: "deepseek-chat-fallback"   # a model name, or false / absent
  - name: "deepseek_api"
    api_key: "${DEEPSEEK_API_KEY}"
    base_url: "https://api.deepseek.com"
    priority: 2
    model_match: { type: "exact", value: ["deepseek-chat", "deepseek-reasoner"] }
    special_prefix: "<think>"
    stop: ["<|endoftext|>"]
  - name: "deepseek_api_fallback_client"
    api_key: "${DEEPSEEK_API_KEY}"
    base_url: "https://api.deepseek.com"
    priority: 999
    model_match:
      type: "exact"
      value: ["deepseek-chat-fallback"]
    fallback: False          # note capital F: YAML bool; also accept false, and absent/null
"#;

fn users_env(name: &str) -> Option<String> {
    let value = match name {
        "OPENAI_API_KEY" => "sk-openai",
        "DEEPSEEK_API_KEY" => "sk-deepseek",
        _ => return None,
    };
    Some(value.to_string())
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn errors(text: &str) -> Vec<String> {
    let errors = compile(text, &users_env).unwrap_err().0;
    errors.iter().map(|e| e.to_string()).collect()
}

#[test]
fn the_users_file_compiles() {
    let config = compile(USERS_FILE, &users_env).unwrap();
    let [openai, deepseek, fallback] = &config.clients[..] else {
        panic!("expected 3 clients");
    };
    assert_eq!(openai.name, "official_openai");
    assert_eq!(openai.api_key.expose(), "sk-openai");
    assert_eq!(openai.base_url.to_string(), "https://api.openai.com/v1");
    assert_eq!((openai.priority, openai.weight), (1, 1));
    assert_eq!(openai.model_match.kind, MatchKind::Keyword);
    assert!(openai.model_match.matches("gpt-4o-mini"));
    assert_eq!(openai.fallback.as_deref(), Some("deepseek-chat-fallback"));
    assert_eq!(deepseek.api_key.expose(), "sk-deepseek");
    assert_eq!(deepseek.model_match.kind, MatchKind::Exact);
    assert_eq!(
        deepseek.model_match.values,
        ["deepseek-chat", "deepseek-reasoner"]
    );
    assert_eq!(deepseek.special_prefix.as_deref(), Some("<think>"));
    assert_eq!(deepseek.stop, ["<|endoftext|>"]);
    assert_eq!((deepseek.priority, deepseek.fallback.as_deref()), (2, None));
    assert_eq!(
        (fallback.priority, fallback.fallback.as_deref()),
        (999, None)
    );
    assert_eq!(
        fallback.read_timeout,
        Duration::from_millis(DEFAULT_READ_TIMEOUT_MS)
    );
    assert_eq!(config.server.listen, DEFAULT_LISTEN);
    assert_eq!(config.server.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    assert_eq!(config.usage, UsageSettings::default());
}

#[test]
fn edge_limits_default_and_must_be_positive() {
    let config = compile("openai_clients: []\n", &no_env).unwrap();
    assert_eq!(config.server.max_header_bytes, DEFAULT_MAX_HEADER_BYTES);
    let sixty = Duration::from_secs(60);
    assert_eq!(config.server.client_header_timeout, sixty);
    assert_eq!(config.server.client_body_timeout, sixty);
    assert_eq!(config.server.send_timeout, sixty);
    let text = "openai_clients: []\nserver: {max_header_bytes: 0, client_header_timeout_ms: 0, \
                    client_body_timeout_ms: -1, send_timeout_ms: 0}\n";
    assert_eq!(
        errors(text),
        [
            "server.max_header_bytes: must be a positive integer",
            "server.client_header_timeout_ms: must be a positive integer",
            "server.client_body_timeout_ms: must be a positive integer",
            "server.send_timeout_ms: must be a positive integer",
        ]
    );
}

#[test]
fn the_example_file_compiles_with_no_environment() {
    let text = include_str!("../../../config/config.example.yaml");
    let config = compile(text, &no_env).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.clients.len() >= 4);
    assert!(config.clients.iter().all(|c| c.api_key.is_empty()));
    assert_eq!(config.usage, UsageSettings::default());
}

/// The config of `deploy/cluster/docker-compose.yml`'s nodes, with the environment compose gives them.
#[test]
fn the_cluster_example_compiles_with_its_environment() {
    let text = include_str!("../../../deploy/cluster/config.yaml");
    let env = |name: &str| match name {
        "GPT_API_NODE" => Some("gw-2".to_owned()),
        "USAGE_PG_URL" => Some("postgres://gpt_api:pw@postgres:5432/gpt_api".to_owned()),
        "TEAM_KEY" => Some("sk-team-0123456789abcdef".to_owned()),
        "OPENAI_API_KEY" => Some("sk-openai".to_owned()),
        _ => None,
    };
    let config = compile(text, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&*config.cluster.node, "gw-2");
    let redis = config.cluster.redis.expect("redis_url");
    assert_eq!(redis.shown(), "redis://redis:6379/0");
    assert!(config.usage.postgres_url.is_some());
    let auth = config.auth.expect("auth");
    let team = auth.keys.iter().find(|k| k.name == "team").expect("team");
    assert_eq!((team.rpm, team.max_concurrent), (Some(600), Some(16)));
}

#[test]
fn every_usage_field_compiles() {
    let text =
        "openai_clients: []\nusage: {dir: '${DB_DIR:-/var/lib/gpt-api}/db', record_bodies: false, \
                    max_body_bytes: 10, batch_size: 20, flush_interval_ms: 30, queue_capacity: 40, \
                    queue_max_mb: 50}\n";
    let usage = compile(text, &no_env).unwrap().usage;
    let expected = UsageSettings {
        dir: PathBuf::from("/var/lib/gpt-api/db"),
        enabled: true,
        record_bodies: false,
        max_body_bytes: 10,
        batch_size: 20,
        flush_interval: Duration::from_millis(30),
        queue_capacity: 40,
        queue_max_bytes: 50 << 20,
        postgres_url: None,
    };
    assert_eq!(usage, expected);
    let empty = compile("openai_clients: []\nusage: {}\n", &no_env).unwrap();
    assert_eq!(empty.usage, UsageSettings::default());
}

#[test]
fn unset_variable_names_the_field() {
    let text = USERS_FILE.replace("${DEEPSEEK_API_KEY}", "${DEEPSEEK_API_KEY:-}");
    let message = "environment variable OPENAI_API_KEY is not set (use ${OPENAI_API_KEY:-default} for a default)";
    let expected = ConfigError::new("openai_clients[0].api_key", message);
    assert_eq!(compile(&text, &no_env).unwrap_err().0, [expected]);
}

#[test]
fn bad_server_and_usage_values_are_reported_with_their_paths() {
    let text = "server: {listen: 'localhost', lisen: 1}\nopenai_clients: []\nx: 1";
    let expected = [
            "server.lisen: unknown field, expected one of listen, max_body_bytes, expose_backend_header, models_timeout_ms, models_cache_seconds, tls, metrics_listen, trusted_proxies, max_header_bytes, client_header_timeout_ms, client_body_timeout_ms, send_timeout_ms, admin_listen, admin_key",
            "x: unknown field, expected one of openai_clients, server, usage, failover, auth, logging, pricing, routing, cluster",
            "server.listen: expected an address such as 0.0.0.0:8000, not \"localhost\"",
        ];
    assert_eq!(errors(text), expected);
    let text =
            "openai_clients: []\nusage: {dir: '${DB:-}', record_bodies: 1, max_body_bytes: 0, \
                    batch_size: -1, flush_interval_ms: 0, queue_capacity: 0, queue_max_mb: 0, batch: 5}\n";
    let expected = [
            "usage.record_bodies: expected true or false",
            "usage.batch: unknown field, expected one of dir, enabled, record_bodies, max_body_bytes, batch_size, flush_interval_ms, queue_capacity, queue_max_mb, postgres_url",
            "usage.dir: must not be empty",
            "usage.max_body_bytes: must be a positive integer",
            "usage.batch_size: must be a positive integer",
            "usage.flush_interval_ms: must be a positive integer",
            "usage.queue_capacity: must be a positive integer",
            "usage.queue_max_mb: must be a positive integer",
        ];
    assert_eq!(errors(text), expected);
    assert_eq!(
        errors("openai_clients: []\nusage: [db]\n"),
        ["usage: expected a mapping"]
    );
}

#[test]
fn server_tls_needs_both_paths() {
    let text = "openai_clients: []\nserver: {tls: {cert_path: '${CERTS:-/etc/gpt-api}/cert.pem', key_path: k.pem}}\n";
    let tls = compile(text, &no_env).unwrap().server.tls;
    let expected = TlsPaths {
        cert_path: PathBuf::from("/etc/gpt-api/cert.pem"),
        key_path: PathBuf::from("k.pem"),
    };
    assert_eq!(tls, Some(expected));
    assert_eq!(
        compile("openai_clients: []\n", &no_env).unwrap().server.tls,
        None
    );
    let text = "openai_clients: []\nserver: {tls: {cert_path: '', pem: x}}\n";
    let expected = [
        "server.tls.pem: unknown field, expected one of cert_path, key_path",
        "server.tls.cert_path: must not be empty",
        "server.tls.key_path: required field is missing",
    ];
    assert_eq!(errors(text), expected);
    assert_eq!(
        errors("openai_clients: []\nserver: {tls: cert.pem}\n"),
        ["server.tls: expected a mapping"]
    );
}

#[test]
fn duplicate_names_are_reported_at_the_later_client() {
    let text = USERS_FILE.replace("deepseek_api_fallback_client", "official_openai");
    let expected = r#"openai_clients[2].name: duplicate client name "official_openai" (also used by openai_clients[0])"#;
    assert_eq!(errors(&text), [expected]);
}

#[test]
fn every_clients_errors_are_reported_together() {
    let text = "openai_clients:\n  - {name: '', base_url: 'ftp://x', model_match: {type: exact, value: m}}\n  - 7\n  \
                    - {name: b, base_url: 'http://h', priority: high, model_match: {type: regex, value: m}, api_key: '${NOPE}'}\n\
                    server: {max_body_bytes: 0}\n";
    let expected = [
            "server.max_body_bytes: must be a positive integer",
            "openai_clients[0].name: must not be empty",
            "openai_clients[0].base_url: scheme must be http or https, not \"ftp\"",
            "openai_clients[1]: expected a mapping",
            "openai_clients[2].priority: expected an integer",
            "openai_clients[2].api_key: environment variable NOPE is not set (use ${NOPE:-default} for a default)",
            "openai_clients[2].model_match.type: expected \"exact\" or \"keyword\"",
        ];
    assert_eq!(errors(text), expected);
}

#[test]
fn syntax_and_top_level_errors() {
    let syntax = compile("openai_clients: [", &no_env).unwrap_err().0;
    assert_eq!((syntax.len(), syntax[0].path.as_str()), (1, ""));
    assert!(syntax[0].message.contains("line "), "{}", syntax[0].message);
    assert_eq!(errors(""), ["openai_clients: required field is missing"]);
    assert_eq!(
        errors("- a"),
        ["expected a mapping with openai_clients at the top level"]
    );
    assert!(compile("openai_clients: []", &no_env)
        .unwrap()
        .clients
        .is_empty());
}

#[test]
fn odd_input_never_panics() {
    let inputs = [
        "~",
        "[]",
        "'x'",
        "{a: {b: [}",
        "openai_clients: 5",
        "openai_clients: [[], {}, null]",
    ];
    for text in inputs
        .into_iter()
        .chain(["? [a]\n: b", "\u{0}", "a: &x [*x]", "<<: 5"])
    {
        let _ = compile(text, &no_env);
    }
}
