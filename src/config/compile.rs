//! Turns YAML text into the runtime [`Config`]: parse, expand `${VAR}`, check shapes, validate values.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde_yaml::{Mapping, Value};

use super::file::{self, index_path, key_path, ClientFile, FallbackFile, FileConfig, OneOrMany};
use super::{env, BaseUrl, Client, Config, ConfigError, ConfigErrors, MatchKind, ModelMatch};
use super::{ServerSettings, DEFAULT_READ_TIMEOUT_MS};
use super::{DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_LISTEN, DEFAULT_MAX_BODY_BYTES};
use crate::secret::Secret;

/// Headers the proxy sets itself or that only mean something on one hop; a configured value would break framing.
const MANAGED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

const MISSING: &str = "required field is missing";

type Errors = Vec<ConfigError>;

pub(super) fn compile(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut tree = parse(text)?;
    let mut errors = Vec::new();
    // Shapes first, so an unknown key is reported as such rather than for the `${VAR}` in its value.
    file::conform(&mut tree, &file::ROOT, "", &mut errors);
    env::expand_tree(&mut tree, "", env, &mut errors);
    // `conform` removed everything serde could reject, so this only fails if schema and structs disagree.
    let file: FileConfig = serde_yaml::from_value(tree)
        .map_err(|e| single(format!("internal error, schema and structs disagree: {e}")))?;
    let server = compile_server(file.server.unwrap_or_default(), &mut errors);
    let clients = compile_clients(file.openai_clients, &mut errors);
    if !errors.is_empty() {
        return Err(tidy(errors));
    }
    Ok(Config { server, clients })
}

/// YAML syntax errors carry serde_yaml's line/column; merge keys (`<<: *defaults`) are applied so clients can
/// share settings through anchors.
fn parse(text: &str) -> Result<Value, ConfigErrors> {
    let mut tree: Value = serde_yaml::from_str(text).map_err(|e| single(e.to_string()))?;
    tree.apply_merge().map_err(|e| single(e.to_string()))?;
    match tree {
        Value::Null => Ok(Value::Mapping(Mapping::new())),
        Value::Mapping(_) => Ok(tree),
        _ => Err(single(
            "expected a mapping with openai_clients at the top level".into(),
        )),
    }
}

/// A problem with the file as a whole, so no field path.
fn single(message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError::new("", message)])
}

/// One problem per field is enough: a field whose `${VAR}` failed or whose type was wrong would otherwise also
/// be reported as missing or invalid by the later steps. Grouped by client, which reads better than by step.
fn tidy(errors: Errors) -> ConfigErrors {
    let mut seen = HashSet::new();
    let mut errors: Errors = errors
        .into_iter()
        .filter(|e| seen.insert(e.path.clone()))
        .collect();
    errors.sort_by_key(|e| client_index(&e.path));
    ConfigErrors(errors)
}

/// `Some(i)` under `openai_clients[i]`; `None` (file-wide and `server` problems) sorts first.
fn client_index(path: &str) -> Option<usize> {
    let rest = path.strip_prefix("openai_clients[")?;
    rest[..rest.find(']')?].parse().ok()
}

/// Validation of one section (`server`, `openai_clients[i]`): names fields relative to it and remembers
/// whether anything was wrong, while every check still runs so all problems get reported.
struct Section<'a> {
    path: String,
    errors: &'a mut Errors,
    failed: bool,
}

impl<'a> Section<'a> {
    fn new(path: String, errors: &'a mut Errors) -> Self {
        Section {
            path,
            errors,
            failed: false,
        }
    }

    fn report(&mut self, field: &str, message: impl Into<String>) {
        self.errors
            .push(ConfigError::new(key_path(&self.path, field), message));
        self.failed = true;
    }

    fn required<T>(&mut self, field: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.report(field, MISSING);
        }
        value
    }

    fn non_empty(&mut self, field: &str, value: &str) -> bool {
        if value.is_empty() {
            self.report(field, "must not be empty");
        }
        !value.is_empty()
    }

    /// `default` when absent; an out-of-range value is reported and replaced by `default`.
    fn positive(&mut self, field: &str, value: Option<i64>, default: u64) -> u64 {
        match value.map(u64::try_from) {
            None => default,
            Some(Ok(n)) if n > 0 => n,
            Some(_) => {
                self.report(field, "must be a positive integer");
                default
            }
        }
    }

    fn ok<T>(&mut self, field: &str, result: Result<T, impl Display>) -> Option<T> {
        result.map_err(|e| self.report(field, e.to_string())).ok()
    }
}

fn compile_server(server: file::ServerFile, errors: &mut Errors) -> ServerSettings {
    let mut s = Section::new("server".into(), errors);
    let listen = server.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    if listen.parse::<SocketAddr>().is_err() {
        s.report(
            "listen",
            format!("expected an address such as 0.0.0.0:8000, not {listen:?}"),
        );
    }
    let max = s.positive(
        "max_body_bytes",
        server.max_body_bytes,
        DEFAULT_MAX_BODY_BYTES as u64,
    );
    ServerSettings {
        listen,
        max_body_bytes: usize::try_from(max).unwrap_or(usize::MAX),
    }
}

fn compile_clients(list: Option<Vec<Option<ClientFile>>>, errors: &mut Errors) -> Vec<Arc<Client>> {
    let Some(list) = list else {
        errors.push(ConfigError::new("openai_clients", MISSING));
        return Vec::new();
    };
    check_unique_names(&list, errors);
    let mut clients = Vec::with_capacity(list.len());
    for (i, entry) in list.into_iter().enumerate() {
        let path = index_path("openai_clients", i);
        match entry {
            Some(client) => clients.extend(compile_client(client, path, errors).map(Arc::new)),
            None => errors.push(ConfigError::new(path, "expected a mapping")),
        }
    }
    clients
}

fn check_unique_names(list: &[Option<ClientFile>], errors: &mut Errors) {
    let mut first_index: HashMap<&str, usize> = HashMap::new();
    for (i, client) in list.iter().enumerate() {
        let name = client.as_ref().and_then(|c| c.name.as_deref());
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            continue;
        };
        if let Some(first) = first_index.get(name) {
            let path = key_path(&index_path("openai_clients", i), "name");
            let message =
                format!("duplicate client name {name:?} (also used by openai_clients[{first}])");
            errors.push(ConfigError::new(path, message));
        } else {
            first_index.insert(name, i);
        }
    }
}

/// Validates one client; `None` (with its errors pushed) when anything is wrong.
fn compile_client(c: ClientFile, path: String, errors: &mut Errors) -> Option<Client> {
    let s = &mut Section::new(path, errors);
    let name = s
        .required("name", c.name)
        .filter(|n| s.non_empty("name", n));
    let api_key = api_key(c.api_key.unwrap_or_default(), s);
    let base_url = s.required("base_url", c.base_url);
    let base_url = base_url.and_then(|url| s.ok("base_url", BaseUrl::parse(&url)));
    let model_match = s.required("model_match", c.model_match);
    let model_match = model_match.and_then(|m| compile_match(m, s));
    let weight = s.positive("weight", c.weight, 1);
    let weight = u32::try_from(weight).map_err(|_| format!("must be at most {}", u32::MAX));
    let weight = s.ok("weight", weight);
    let stop = c.stop.map(|stop| strings(stop, "stop", true, s));
    let max_tokens = c.max_tokens.map(|n| s.positive("max_tokens", Some(n), 0));
    let headers = compile_headers(c.headers.unwrap_or_default(), s);
    let connect_ms = s.positive(
        "connect_timeout_ms",
        c.connect_timeout_ms,
        DEFAULT_CONNECT_TIMEOUT_MS,
    );
    let read_ms = s.positive(
        "read_timeout_ms",
        c.read_timeout_ms,
        DEFAULT_READ_TIMEOUT_MS,
    );
    if s.failed {
        return None;
    }
    Some(Client {
        name: name?,
        api_key,
        base_url: base_url?,
        priority: c.priority.unwrap_or(0),
        weight: weight?,
        model_match: model_match?,
        fallback: compile_fallback(c.fallback),
        special_prefix: c.special_prefix.filter(|p| !p.is_empty()),
        stop: stop.unwrap_or_default(),
        max_tokens,
        extra_body: c.extra_body.unwrap_or_default(),
        model: c.model.filter(|m| !m.is_empty()),
        headers,
        connect_timeout: Duration::from_millis(connect_ms),
        read_timeout: Duration::from_millis(read_ms),
    })
}

/// Checked here so a stray newline from an env file is a config error, not a failed request later.
fn api_key(key: String, s: &mut Section) -> Secret {
    if HeaderValue::from_str(&key).is_err() {
        s.report(
            "api_key",
            "contains characters not allowed in an HTTP header",
        );
    }
    Secret::new(key)
}

fn compile_match(model_match: file::ModelMatchFile, s: &mut Section) -> Option<ModelMatch> {
    let kind = s.required("model_match.type", model_match.kind);
    let kind = kind.and_then(|kind| match_kind(&kind, s));
    let values = s.required("model_match.value", model_match.value);
    let values = values.map(|values| strings(values, "model_match.value", false, s));
    Some(ModelMatch {
        kind: kind?,
        values: values?,
    })
}

fn match_kind(kind: &str, s: &mut Section) -> Option<MatchKind> {
    match kind {
        "exact" => Some(MatchKind::Exact),
        "keyword" => Some(MatchKind::Keyword),
        _ => {
            s.report("model_match.type", r#"expected "exact" or "keyword""#);
            None
        }
    }
}

/// A string or list of strings as a list; empty strings are always errors, an empty list only when allowed.
fn strings(value: OneOrMany, field: &str, allow_empty_list: bool, s: &mut Section) -> Vec<String> {
    match value {
        OneOrMany::One(one) => {
            s.non_empty(field, &one);
            vec![one]
        }
        OneOrMany::Many(list) => {
            if list.is_empty() && !allow_empty_list {
                s.report(field, "must not be an empty list");
            }
            for (i, item) in list.iter().enumerate() {
                s.non_empty(&index_path(field, i), item);
            }
            list
        }
    }
}

/// `false`, null and "" (e.g. an unset `${FALLBACK:-}`) all mean no fallback; `true` never gets here.
fn compile_fallback(fallback: Option<FallbackFile>) -> Option<String> {
    match fallback {
        Some(FallbackFile::Model(model)) if !model.is_empty() => Some(model),
        _ => None,
    }
}

fn compile_headers(
    headers: BTreeMap<String, String>,
    s: &mut Section,
) -> Vec<(HeaderName, Secret)> {
    let mut compiled: Vec<(HeaderName, Secret)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let field = key_path("headers", &name);
        let Some(header) = s.ok(&field, header(&name, value)) else {
            continue;
        };
        if compiled.iter().any(|(seen, _)| *seen == header.0) {
            s.report(&field, "duplicate header (names are case-insensitive)");
        } else {
            compiled.push(header);
        }
    }
    compiled
}

/// The value is never echoed in an error: it may be a key.
fn header(name: &str, value: String) -> Result<(HeaderName, Secret), &'static str> {
    match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
        Err(_) => Err("invalid HTTP header name"),
        Ok(name) if MANAGED_HEADERS.contains(&name.as_str()) => {
            Err("is managed by the gateway and cannot be set")
        }
        Ok(_) if HeaderValue::from_str(&value).is_err() => {
            Err("invalid HTTP header value (control characters?)")
        }
        Ok(name) => Ok((name, Secret::new(value))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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

    /// A valid one-client file with `fields` added to (or overriding, via replace) the client.
    fn client(fields: &str) -> String {
        let base = "name: a, base_url: 'http://h', model_match: {type: exact, value: m}";
        format!("openai_clients:\n  - {{{base}, {fields}}}\n")
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
    }

    #[test]
    fn the_example_file_compiles_with_no_environment() {
        let text = include_str!("../../config/config.example.yaml");
        let config = compile(text, &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert!(config.clients.len() >= 4);
        assert!(config.clients.iter().all(|c| c.api_key.is_empty()));
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

    #[test]
    fn unset_variable_names_the_field() {
        let text = USERS_FILE.replace("${DEEPSEEK_API_KEY}", "${DEEPSEEK_API_KEY:-}");
        let message = "environment variable OPENAI_API_KEY is not set (use ${OPENAI_API_KEY:-default} for a default)";
        let expected = ConfigError::new("openai_clients[0].api_key", message);
        assert_eq!(compile(&text, &no_env).unwrap_err().0, [expected]);
    }

    /// Each line: a client field to add (or "old=>new", a change to the base client) | the error it gives.
    const BAD_VALUES: &str = r#"
        type: exact=>type: regex | model_match.type: expected "exact" or "keyword"
        value: m=>value: [] | model_match.value: must not be an empty list
        value: m=>value: [''] | model_match.value[0]: must not be empty
        value: m=>value: m, valu: m | model_match.valu: unknown field, expected one of type, value
        model_matc: '${NOPE}' | model_matc: unknown field, expected one of name, api_key, base_url, priority, weight, model_match, fallback, special_prefix, stop, max_tokens, extra_body, model, headers, connect_timeout_ms, read_timeout_ms
        name: a=>name: '' | name: must not be empty
        priority: high | priority: expected an integer
        fallback: true | fallback: expected a model name or false
        weight: 0 | weight: must be a positive integer
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
        'http://h'=>'https://h/v1?x=1' | base_url: URL must not contain a query (?...)
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
        let text = "server: {listen: 'localhost', lisen: 1}\nopenai_clients: []\nx: 1";
        let expected = [
            "server.lisen: unknown field, expected one of listen, max_body_bytes",
            "x: unknown field, expected one of openai_clients, server",
            "server.listen: expected an address such as 0.0.0.0:8000, not \"localhost\"",
        ];
        assert_eq!(errors(text), expected);
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
}
