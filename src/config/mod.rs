//! The gateway config: `file` mirrors the YAML users write, `compile` validates it into the immutable [`Config`].
//!
//! Layout: `file.rs` (serde structs, strict: unknown keys are errors), `env.rs` (`${VAR}` / `${VAR:-default}`
//! expansion), `base_url.rs` (parsing `base_url` and joining request paths onto it), `compile.rs` (validation
//! with field paths, producing the runtime types below; `client.rs` validates each `openai_clients` entry;
//! `auth.rs` the `auth:` gateway keys; `logging.rs` the `logging:` section and `server.metrics_listen`;
//! `pricing.rs` the `pricing:` section, the price file format and the shipped `config/prices.yaml`;
//! `routing.rs` the `routing:` section and each client's `balance`; `cluster.rs` the `cluster:` section and
//! `usage.postgres_url`; `admin.rs` `server.admin_listen` and `server.admin_key`).

mod admin;
mod auth;
mod base_url;
mod client;
mod cluster;
mod compile;
mod env;
mod failover;
mod file;
mod logging;
mod pricing;
mod routing;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use admin::AdminSettings;
pub use auth::{AuthSettings, Budget, KeyChanges, KeySettings};
pub use base_url::{mask_userinfo, BaseUrl, BaseUrlError};
pub use cluster::{ClusterSettings, OnRedisDown, RedisSettings};
pub use logging::{LoggingSettings, DEFAULT_LOG_LEVEL};
pub use routing::{
    AffinityField, AffinitySettings, AffinitySource, Balance, RoutingSettings,
    DEFAULT_AFFINITY_KEYS,
};

use crate::secret::Secret;

/// Default listen address when neither `server.listen` nor `--listen` is given.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8000";
/// Default `server.max_body_bytes`: 32 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 600_000;

/// The validated, immutable gateway config. Built once per load; shared behind an `Arc`.
#[derive(Debug)]
pub struct Config {
    pub server: ServerSettings,
    /// Clients in file order (routing sorts by priority itself).
    pub clients: Vec<Arc<Client>>,
    pub usage: UsageSettings,
    pub failover: FailoverSettings,
    /// `None`: no `auth:` section, the gateway is open to every caller.
    pub auth: Option<AuthSettings>,
    /// Read at startup (the logger is set up once).
    pub logging: LoggingSettings,
    /// `pricing.models`, then `pricing.file` (read with the config, so a reload reads it again) or the
    /// shipped table.
    pub prices: Arc<crate::pricing::Prices>,
    /// `pricing.file`, when given: watched with the config file, so editing it alone reloads.
    pub pricing_file: Option<PathBuf>,
    /// The `routing:` section: the default balance and the affinity settings.
    pub routing: RoutingSettings,
    /// The `cluster:` section: this node's name, and the Redis that shares limits across nodes.
    pub cluster: ClusterSettings,
}

/// The `failover:` section, as far as it is not folded into each client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverSettings {
    /// How many fallback models one request may move through.
    pub max_fallback_hops: u32,
}

pub const DEFAULT_MAX_FALLBACK_HOPS: u32 = 3;
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
pub const DEFAULT_COOLDOWN_SECONDS: u64 = 30;
/// Statuses that move a request on to the next candidate unless the config says otherwise.
pub const DEFAULT_RETRY_ON: [u16; 9] = [401, 403, 404, 408, 429, 500, 502, 503, 504];

/// When a client is put aside, and for how long. Defined here, not in `health`, so that config depends on
/// nothing above it; `health` applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    pub failure_threshold: u32,
    pub cooldown: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `host:port`, as written (validated to parse as a socket address).
    pub listen: String,
    pub max_body_bytes: usize,
    /// Name the answering client in an `x-gpt-api-backend` response header.
    pub expose_backend_header: bool,
    /// How long `/v1/models` waits for each backend's own list.
    pub models_timeout: Duration,
    /// How long a merged `/v1/models` answer is reused.
    pub models_cache: Duration,
    /// `server.tls`: serve HTTPS with this certificate; `None` for plain HTTP.
    pub tls: Option<TlsPaths>,
    /// `server.metrics_listen`: where Prometheus metrics are served (`GET /metrics`); `None`: not served.
    /// Read at startup only.
    pub metrics_listen: Option<String>,
    /// `server.admin_listen` and `server.admin_key`: the admin page; `None`: not served. The address
    /// is read at startup; the key is the config's in force (a reload that changes it ends every session).
    pub admin: Option<AdminSettings>,
    /// `server.trusted_proxies`: peers whose `X-Forwarded-For` is believed (empty: none, the socket peer is
    /// the caller).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `server.max_header_bytes`: the most a request line and its headers may take (431 beyond).
    pub max_header_bytes: usize,
    /// `server.client_header_timeout_ms`: the whole request head must arrive within this.
    pub client_header_timeout: Duration,
    /// `server.client_body_timeout_ms`: the body must arrive within this (plus 1 s per 64 KiB received).
    pub client_body_timeout: Duration,
    /// `server.send_timeout_ms`: a write to a caller that reads nothing fails after this.
    pub send_timeout: Duration,
}

/// The PEM files of `server.tls` (relative paths are relative to the working directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// Certificate chain, leaf first.
    pub cert_path: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

pub const DEFAULT_MODELS_TIMEOUT_MS: u64 = 5_000;
/// nginx's `large_client_header_buffers 4 8k` allows 32 KiB; 64 KiB leaves room for long bearer tokens.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// nginx's default for `client_header_timeout`, `client_body_timeout` and `send_timeout`.
pub const DEFAULT_CLIENT_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_MODELS_CACHE_SECONDS: u64 = 60;

/// The `usage:` section: where and how usage records are stored. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSettings {
    /// Directory of the monthly `record_YYYYMM.db` files (created on demand).
    pub dir: PathBuf,
    /// Whether request and response bodies go into the record.
    /// Off: no records at all (no queue, no files).
    pub enabled: bool,
    pub record_bodies: bool,
    /// A recorded body longer than this is cut (at a character boundary).
    pub max_body_bytes: usize,
    /// Records written in one transaction at most.
    pub batch_size: usize,
    /// Longest time a record waits before being written.
    pub flush_interval: Duration,
    /// Records accepted and not yet written (queued, or waiting for a failing store); beyond this they are
    /// dropped and counted.
    pub queue_capacity: usize,
    /// The same bound in bytes (`queue_max_mb`): records hold bodies and headers of up to `max_body_bytes`.
    pub queue_max_bytes: usize,
    /// Every record is also shipped to this PostgreSQL (`usage::ship`); `None`: records stay on this node.
    pub postgres_url: Option<crate::secret::Secret>,
}

impl Default for UsageSettings {
    fn default() -> Self {
        UsageSettings {
            dir: PathBuf::from("database"),
            enabled: true,
            record_bodies: true,
            max_body_bytes: 1024 * 1024,
            batch_size: 512,
            flush_interval: Duration::from_millis(200),
            queue_capacity: 65536,
            queue_max_bytes: 256 << 20,
            postgres_url: None,
        }
    }
}

/// How a client's `model_match` compares a requested model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// The model equals one of the values.
    Exact,
    /// The model contains one of the values as a substring.
    Keyword,
}

#[derive(Debug, Clone)]
pub struct ModelMatch {
    pub kind: MatchKind,
    /// Never empty; each value non-empty.
    pub values: Vec<String>,
}

impl ModelMatch {
    pub fn matches(&self, model: &str) -> bool {
        match self.kind {
            MatchKind::Exact => self.values.iter().any(|v| v == model),
            MatchKind::Keyword => self.values.iter().any(|v| model.contains(v.as_str())),
        }
    }
}

/// One backend (`openai_clients[i]`), validated.
#[derive(Debug)]
pub struct Client {
    pub name: String,
    /// Empty: the caller's own `Authorization` passes through.
    pub api_key: Secret,
    pub base_url: BaseUrl,
    /// Smaller is tried first.
    pub priority: i64,
    /// Share among clients of equal priority (>= 1).
    pub weight: u32,
    /// How clients of this priority share requests: the client's own `balance`, else `routing.balance`
    /// (all clients of one priority serving a model agree).
    pub balance: Balance,
    pub model_match: ModelMatch,
    /// Model to retry with when this client fails (`false` / absent: none).
    pub fallback: Option<String>,
    pub special_prefix: Option<String>,
    /// Stop words merged into requests (a single string becomes a one-element list).
    pub stop: Vec<String>,
    /// Cap for `max_tokens` / `max_completion_tokens`.
    pub max_tokens: Option<u64>,
    /// Fields added to the request body when it lacks them.
    pub extra_body: serde_json::Map<String, serde_json::Value>,
    /// Model name sent upstream instead of the caller's.
    pub model: Option<String>,
    /// Extra upstream request headers, names lower-cased; values may be secrets (e.g. Azure `api-key`).
    pub headers: Vec<(http::HeaderName, Secret)>,
    /// What every upstream request gets, built once: `Host`, `Authorization: Bearer <api_key>` (when a key
    /// is set) and `headers`; values marked sensitive so that Debug never prints them.
    pub fixed_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Backend statuses that move a request on to the next candidate (client's, else global, else default).
    pub retry_on: Vec<u16>,
    /// When consecutive failures put this client aside, and for how long.
    pub health_policy: HealthPolicy,
    /// The API dialect the backend speaks.
    pub protocol: Protocol,
    /// For an anthropic backend: the `anthropic-version` sent when the caller sends none (else 2023-06-01).
    pub anthropic_version: Option<String>,
    /// How a Responses API request reaches this backend (`responses:`).
    pub responses: ResponsesMode,
}

/// The API dialect a backend speaks (`protocol:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// OpenAI's APIs (chat completions, ...): the default.
    #[default]
    OpenAi,
    /// Anthropic's Messages API: key in `x-api-key`, an `anthropic-version` header.
    Anthropic,
}

/// How a Responses API request (`/v1/responses`) reaches a backend (`responses:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResponsesMode {
    /// As it came, to the backend's `/v1/responses`: the default.
    #[default]
    Passthrough,
    /// Translated to chat completions, the answer translated back: for a backend that serves only chat.
    Translate,
}

impl Client {
    /// A Responses API request goes to this backend translated to chat completions (for an anthropic backend,
    /// then on to Messages).
    pub fn translates_responses(&self) -> bool {
        self.protocol == Protocol::Anthropic || self.responses == ResponsesMode::Translate
    }

    /// The model name this client sends upstream for `requested`: a fallback model being served, else the
    /// client's `model` alias, else the requested name. A key's model list is checked against this name.
    pub fn outgoing_model<'a>(&'a self, requested: &'a str, fallback: Option<&'a str>) -> &'a str {
        fallback.or(self.model.as_deref()).unwrap_or(requested)
    }
}

/// One validation problem, with the path of the offending field (`openai_clients[2].model_match.type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config file (validation does not stop at the first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl Config {
    /// Reads, expands and validates the file at `path` against the process environment.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Self::parse(&text, &|name| std::env::var(name).ok())
    }

    /// Parses and validates YAML text, and reads the price file it names; `env` looks up `${VAR}` values
    /// (injected for tests).
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        compile::compile(text, env)
    }

    /// One-line summary for `--check` and the startup log.
    pub fn summary(&self) -> String {
        let models: usize = self
            .clients
            .iter()
            .map(|c| c.model_match.values.len())
            .sum();
        format!(
            "{} client(s), {} model rule value(s), listen {}",
            self.clients.len(),
            models,
            self.server.listen
        )
    }
}
