//! The config file format: serde structs mirroring the YAML, and the schema that checks a tree against them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

use super::ConfigError;

/// The whole file. Every field is an `Option` because required fields and ranges are checked in `compile`,
/// which knows the defaults and reports every missing field at once instead of serde's first.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    /// `None` entries were not mappings (already reported); kept so later indices stay right.
    pub openai_clients: Option<Vec<Option<ClientFile>>>,
    pub server: Option<ServerFile>,
    pub usage: Option<UsageFile>,
    pub failover: Option<FailoverFile>,
    pub auth: Option<AuthFile>,
    pub logging: Option<LoggingFile>,
    pub pricing: Option<super::pricing::PricingFile>,
    pub routing: Option<super::routing::RoutingFile>,
    pub cluster: Option<super::cluster::ClusterFile>,
}

/// `logging:`: level, and the log files' directory, rotation and retention.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoggingFile {
    pub level: Option<String>,
    pub dir: Option<String>,
    pub info_max_mb: Option<i64>,
    pub info_keep_files: Option<i64>,
    pub error_max_mb: Option<i64>,
    pub error_keep_files: Option<i64>,
}

/// `auth:`: the gateway keys callers must present.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthFile {
    /// `None` entries were not mappings (already reported); kept so later indices stay right.
    pub keys: Option<Vec<Option<KeyFile>>>,
}

/// `auth.keys[i]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyFile {
    pub name: Option<String>,
    pub key: Option<String>,
    pub models: Option<OneOrMany>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub budget_usd: Option<BudgetFile>,
    pub max_concurrent: Option<i64>,
}

/// `auth.keys[i].budget_usd`: dollars per local calendar day and month.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BudgetFile {
    pub day: Option<f64>,
    pub month: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServerFile {
    pub listen: Option<String>,
    pub max_body_bytes: Option<i64>,
    pub expose_backend_header: Option<bool>,
    pub models_timeout_ms: Option<i64>,
    pub models_cache_seconds: Option<i64>,
    pub tls: Option<TlsFile>,
    pub metrics_listen: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub max_header_bytes: Option<i64>,
    pub client_header_timeout_ms: Option<i64>,
    pub client_body_timeout_ms: Option<i64>,
    pub send_timeout_ms: Option<i64>,
    pub admin_listen: Option<String>,
    pub admin_key: Option<String>,
}

/// `server.tls`: serve HTTPS (HTTP/2 and HTTP/1.1 through ALPN) with this PEM certificate chain and key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsFile {
    pub cert_path: Option<String>,
    pub key_path: Option<String>,
}

/// `failover:`: the chain length, and the defaults of the per-client health and retry keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FailoverFile {
    pub max_fallback_hops: Option<i64>,
    pub failure_threshold: Option<i64>,
    pub cooldown_seconds: Option<i64>,
    pub retry_on: Option<Vec<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UsageFile {
    pub dir: Option<String>,
    pub enabled: Option<bool>,
    pub record_bodies: Option<bool>,
    pub max_body_bytes: Option<i64>,
    pub batch_size: Option<i64>,
    pub flush_interval_ms: Option<i64>,
    pub queue_capacity: Option<i64>,
    pub queue_max_mb: Option<i64>,
    pub postgres_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClientFile {
    pub name: Option<String>,
    pub api_key: Option<String>,
    pub base_url: Option<String>,
    pub priority: Option<i64>,
    pub weight: Option<i64>,
    pub balance: Option<String>,
    pub model_match: Option<ModelMatchFile>,
    pub fallback: Option<FallbackFile>,
    pub special_prefix: Option<String>,
    pub stop: Option<OneOrMany>,
    pub max_tokens: Option<i64>,
    pub extra_body: Option<serde_json::Map<String, serde_json::Value>>,
    pub model: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub connect_timeout_ms: Option<i64>,
    pub read_timeout_ms: Option<i64>,
    pub failure_threshold: Option<i64>,
    pub cooldown_seconds: Option<i64>,
    pub retry_on: Option<Vec<i64>>,
    /// "openai" (default) or "anthropic"; checked in `compile`.
    pub protocol: Option<String>,
    /// The `anthropic-version` sent to an anthropic backend when the caller sends none.
    pub anthropic_version: Option<String>,
    /// "passthrough" (default) or "translate": how `/v1/responses` reaches this backend; checked in `compile`.
    pub responses: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ModelMatchFile {
    /// "exact" or "keyword"; checked in `compile`, after `${VAR}` expansion.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub value: Option<OneOrMany>,
}

/// `value: "gpt-4"` or `value: ["gpt-4", "gpt-3.5-turbo"]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `fallback: "model-name"`, or `fallback: false` (YAML also reads `False`) for none.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub(super) enum FallbackFile {
    Model(String),
    Off(bool),
}

/// What a value in the tree must look like. `null` fits every shape: it means "absent".
pub(super) enum Shape {
    Str,
    Int,
    /// An integer or a decimal number.
    Number,
    Bool,
    StrOrList,
    ModelOrFalse,
    /// String keys to string values (`headers`).
    StrMap,
    /// Anything JSON can hold (`extra_body`): string keys, no YAML tags.
    JsonMap,
    Section(&'static [(&'static str, Shape)]),
    ListOf(&'static Shape),
    /// String keys of the user's choosing (model names: shown quoted in paths) to values of one shape.
    MapOf(&'static Shape),
}

const SERVER: Shape = Shape::Section(&[
    ("listen", Shape::Str),
    ("max_body_bytes", Shape::Int),
    ("expose_backend_header", Shape::Bool),
    ("models_timeout_ms", Shape::Int),
    ("models_cache_seconds", Shape::Int),
    ("tls", TLS),
    ("metrics_listen", Shape::Str),
    ("trusted_proxies", Shape::ListOf(&Shape::Str)),
    ("max_header_bytes", Shape::Int),
    ("client_header_timeout_ms", Shape::Int),
    ("client_body_timeout_ms", Shape::Int),
    ("send_timeout_ms", Shape::Int),
    ("admin_listen", Shape::Str),
    ("admin_key", Shape::Str),
]);

const TLS: Shape = Shape::Section(&[("cert_path", Shape::Str), ("key_path", Shape::Str)]);

const FAILOVER: Shape = Shape::Section(&[
    ("max_fallback_hops", Shape::Int),
    ("failure_threshold", Shape::Int),
    ("cooldown_seconds", Shape::Int),
    ("retry_on", Shape::ListOf(&Shape::Int)),
]);

const USAGE: Shape = Shape::Section(&[
    ("dir", Shape::Str),
    ("enabled", Shape::Bool),
    ("record_bodies", Shape::Bool),
    ("max_body_bytes", Shape::Int),
    ("batch_size", Shape::Int),
    ("flush_interval_ms", Shape::Int),
    ("queue_capacity", Shape::Int),
    ("queue_max_mb", Shape::Int),
    ("postgres_url", Shape::Str),
]);

const MODEL_MATCH: Shape = Shape::Section(&[("type", Shape::Str), ("value", Shape::StrOrList)]);

const CLIENT: Shape = Shape::Section(&[
    ("name", Shape::Str),
    ("api_key", Shape::Str),
    ("base_url", Shape::Str),
    ("priority", Shape::Int),
    ("weight", Shape::Int),
    ("balance", Shape::Str),
    ("model_match", MODEL_MATCH),
    ("fallback", Shape::ModelOrFalse),
    ("special_prefix", Shape::Str),
    ("stop", Shape::StrOrList),
    ("max_tokens", Shape::Int),
    ("extra_body", Shape::JsonMap),
    ("model", Shape::Str),
    ("headers", Shape::StrMap),
    ("connect_timeout_ms", Shape::Int),
    ("read_timeout_ms", Shape::Int),
    ("failure_threshold", Shape::Int),
    ("cooldown_seconds", Shape::Int),
    ("retry_on", Shape::ListOf(&Shape::Int)),
    ("protocol", Shape::Str),
    ("anthropic_version", Shape::Str),
    ("responses", Shape::Str),
]);

const AUTH_KEY: Shape = Shape::Section(&[
    ("name", Shape::Str),
    ("key", Shape::Str),
    ("models", Shape::StrOrList),
    ("rpm", Shape::Int),
    ("tpm", Shape::Int),
    ("budget_usd", BUDGET),
    ("max_concurrent", Shape::Int),
]);

const BUDGET: Shape = Shape::Section(&[("day", Shape::Number), ("month", Shape::Number)]);

const AUTH: Shape = Shape::Section(&[("keys", Shape::ListOf(&AUTH_KEY))]);

const LOGGING: Shape = Shape::Section(&[
    ("level", Shape::Str),
    ("dir", Shape::Str),
    ("info_max_mb", Shape::Int),
    ("info_keep_files", Shape::Int),
    ("error_max_mb", Shape::Int),
    ("error_keep_files", Shape::Int),
]);

/// The whole file; mirrors [`FileConfig`] field for field (a test keeps them in step).
pub(super) const ROOT: Shape = Shape::Section(&[
    ("openai_clients", Shape::ListOf(&CLIENT)),
    ("server", SERVER),
    ("usage", USAGE),
    ("failover", FAILOVER),
    ("auth", AUTH),
    ("logging", LOGGING),
    ("pricing", super::pricing::PRICING),
    ("routing", super::routing::ROUTING),
    ("cluster", super::cluster::CLUSTER),
]);

impl Shape {
    fn expected(&self) -> &'static str {
        match self {
            Shape::Str => "expected a string",
            Shape::Int => "expected an integer",
            Shape::Number => "expected a number",
            Shape::Bool => "expected true or false",
            Shape::StrOrList => "expected a string or a list of strings",
            Shape::ModelOrFalse => "expected a model name or false",
            Shape::StrMap => "expected a mapping of names to strings",
            Shape::JsonMap | Shape::Section(_) | Shape::MapOf(_) => "expected a mapping",
            Shape::ListOf(_) => "expected a list",
        }
    }
}

/// Checks `value` against `shape`, reporting each problem at its path.
///
/// serde stops at the first error and does not say where it was, so this walk runs first. Unknown keys are
/// removed and ill-typed values become `null`: the rest then deserializes into [`FileConfig`] without error
/// and still gets validated, so one mistake does not hide the others.
pub(super) fn conform(value: &mut Value, shape: &Shape, path: &str, errors: &mut Vec<ConfigError>) {
    if value.is_null() {
        return;
    }
    let fits = match shape {
        Shape::Str => value.is_string(),
        Shape::Int => value.is_i64(),
        Shape::Number => value.is_number(),
        Shape::Bool => value.is_bool(),
        Shape::ModelOrFalse => value.is_string() || value.as_bool() == Some(false),
        Shape::StrOrList => conform_str_or_list(value, path, errors),
        Shape::StrMap => conform_entries(value, path, errors, string_problem),
        Shape::JsonMap => conform_entries(value, path, errors, json_problem),
        Shape::Section(fields) => conform_section(value, fields, path, errors),
        Shape::ListOf(item) => conform_list(value, item, path, errors),
        Shape::MapOf(item) => conform_map(value, item, path, errors),
    };
    if !fits {
        errors.push(ConfigError::new(path, shape.expected()));
        *value = Value::Null;
    }
}

/// Returns false (nothing reported yet) when `value` is not a mapping at all.
fn conform_section(
    value: &mut Value,
    fields: &[(&str, Shape)],
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> bool {
    let Value::Mapping(map) = value else {
        return false;
    };
    map.retain(|key, child| {
        let child_path = key_path(path, &key_text(key));
        let known = fields.iter().find(|(name, _)| key.as_str() == Some(*name));
        match known {
            Some((_, shape)) => conform(child, shape, &child_path, errors),
            None => errors.push(ConfigError::new(child_path, unknown_field(fields))),
        }
        known.is_some()
    });
    true
}

fn unknown_field(fields: &[(&str, Shape)]) -> String {
    let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
    format!("unknown field, expected one of {}", names.join(", "))
}

fn conform_list(
    value: &mut Value,
    item: &Shape,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> bool {
    let Value::Sequence(items) = value else {
        return false;
    };
    for (i, element) in items.iter_mut().enumerate() {
        conform(element, item, &index_path(path, i), errors);
    }
    true
}

/// Entries with a non-string key are reported and dropped.
fn conform_map(value: &mut Value, item: &Shape, path: &str, errors: &mut Vec<ConfigError>) -> bool {
    let Value::Mapping(map) = value else {
        return false;
    };
    map.retain(|key, child| {
        let child_path = quoted_key_path(path, &key_text(key));
        if key.is_string() {
            conform(child, item, &child_path, errors);
        } else {
            errors.push(ConfigError::new(child_path, "keys must be strings"));
        }
        key.is_string()
    });
    true
}

/// A list with a non-string element is reported per element and then dropped whole.
fn conform_str_or_list(value: &mut Value, path: &str, errors: &mut Vec<ConfigError>) -> bool {
    let items = match value {
        Value::String(_) => return true,
        Value::Sequence(items) => items,
        _ => return false,
    };
    let before = errors.len();
    for (i, item) in items.iter().enumerate() {
        if !item.is_string() {
            errors.push(ConfigError::new(index_path(path, i), Shape::Str.expected()));
        }
    }
    if errors.len() > before {
        *value = Value::Null;
    }
    true
}

/// For free-form mappings: every key must be a string and every value pass `check`; bad entries are dropped.
fn conform_entries(
    value: &mut Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
    check: impl Fn(&Value) -> Result<(), String>,
) -> bool {
    let Value::Mapping(map) = value else {
        return false;
    };
    map.retain(|key, child| {
        let child_path = key_path(path, &key_text(key));
        let checked = match key.as_str() {
            Some(_) => check(child),
            None => Err("keys must be strings".to_string()),
        };
        if let Err(message) = &checked {
            errors.push(ConfigError::new(child_path, message.as_str()));
        }
        checked.is_ok()
    });
    true
}

fn string_problem(value: &Value) -> Result<(), String> {
    match value {
        Value::String(_) => Ok(()),
        _ => Err(Shape::Str.expected().to_string()),
    }
}

/// Whether a YAML value can become JSON: serde_json objects need string keys and YAML tags have no JSON form.
fn json_problem(value: &Value) -> Result<(), String> {
    match value {
        Value::Tagged(tagged) => Err(format!("YAML tag {} has no JSON equivalent", tagged.tag)),
        Value::Sequence(items) => items.iter().try_for_each(json_problem),
        Value::Mapping(map) => map.iter().try_for_each(json_entry_problem),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => Ok(()),
    }
}

fn json_entry_problem((key, value): (&Value, &Value)) -> Result<(), String> {
    if !key.is_string() {
        return Err(format!("nested key {} must be a string", key_text(key)));
    }
    json_problem(value)
}

/// `parent.key`, or just `key` at the top level.
pub(super) fn key_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent."key"`: a key of the user's choosing, quoted since it may hold dots (`models."gpt-4.1"`).
pub(super) fn quoted_key_path(parent: &str, key: &str) -> String {
    key_path(parent, &format!("{key:?}"))
}

/// `parent[i]`.
pub(super) fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// A mapping key as it would appear in a path (YAML allows non-string keys; they are errors, but need naming).
pub(super) fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => "<complex key>".into(),
    }
}

#[cfg(test)]
mod tests;
