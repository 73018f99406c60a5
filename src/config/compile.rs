//! Turns YAML text into the runtime [`Config`]: parse, expand `${VAR}`, check shapes, validate values.

use std::collections::HashSet;
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_yaml::{Mapping, Value};

use super::admin::{compile_admin, report_shared_key};
use super::auth::{compile_auth, keyless_clients, report_budgets_without_records, report_keyless};
use super::client::compile_clients;
use super::cluster::{compile_cluster, compile_postgres_url};
use super::failover::{check_fallbacks, compile_failover, ClientDefaults};
use super::file::{self, key_path, FileConfig};
use super::logging::{compile_logging, metrics_listen};
use super::pricing::compile_pricing;
use super::routing::{check_tiers, compile_routing};
use super::{env, Config, ConfigError, ConfigErrors, ServerSettings, TlsPaths, UsageSettings};
use super::{
    DEFAULT_CLIENT_TIMEOUT_MS, DEFAULT_LISTEN, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MODELS_CACHE_SECONDS, DEFAULT_MODELS_TIMEOUT_MS,
};
use crate::duration::millis;

pub(super) const MISSING: &str = "required field is missing";

pub(super) type Errors = Vec<ConfigError>;

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
    let usage = compile_usage(file.usage.unwrap_or_default(), &mut errors);
    let (failover, defaults) = compile_failover(file.failover.unwrap_or_default(), &mut errors);
    let auth = file.auth.and_then(|auth| compile_auth(auth, &mut errors));
    let logging = compile_logging(file.logging.unwrap_or_default(), &mut errors);
    let (prices, pricing_file) = compile_pricing(file.pricing, &mut errors);
    let routing = compile_routing(file.routing, &mut errors);
    let cluster = compile_cluster(file.cluster, &mut errors);
    let defaults = ClientDefaults {
        balance: routing.balance,
        ..defaults
    };
    let keyless = keyless_clients(file.openai_clients.as_deref());
    let clients = compile_clients(file.openai_clients, &defaults, &mut errors);
    if auth.is_some() {
        report_keyless(&keyless, &mut errors);
    }
    report_shared_key(server.admin.as_ref(), auth.as_ref(), &mut errors);
    if !usage.enabled {
        report_budgets_without_records(auth.as_ref(), &mut errors);
    }
    if errors.is_empty() {
        // Client indices in paths are only right when every client compiled.
        check_fallbacks(&clients, &mut errors);
        check_tiers(&clients, &mut errors);
    }
    if !errors.is_empty() {
        return Err(tidy(errors));
    }
    Ok(Config {
        server,
        clients,
        usage,
        failover,
        auth,
        logging,
        prices,
        pricing_file,
        routing,
        cluster,
    })
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

/// `Some(i)` under `openai_clients[i]`; `None` (file-wide, `server` and `usage` problems) sorts first.
fn client_index(path: &str) -> Option<usize> {
    let rest = path.strip_prefix("openai_clients[")?;
    rest[..rest.find(']')?].parse().ok()
}

/// Validation of one section (`server`, `usage`, `openai_clients[i]`): names fields relative to it and
/// remembers whether anything was wrong, while every check still runs so all problems get reported.
pub(super) struct Section<'a> {
    path: String,
    errors: &'a mut Errors,
    pub(super) failed: bool,
}

impl<'a> Section<'a> {
    pub(super) fn new(path: String, errors: &'a mut Errors) -> Self {
        Section {
            path,
            errors,
            failed: false,
        }
    }

    pub(super) fn report(&mut self, field: &str, message: impl Into<String>) {
        self.errors
            .push(ConfigError::new(key_path(&self.path, field), message));
        self.failed = true;
    }

    pub(super) fn required<T>(&mut self, field: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.report(field, MISSING);
        }
        value
    }

    pub(super) fn non_empty(&mut self, field: &str, value: &str) -> bool {
        if value.is_empty() {
            self.report(field, "must not be empty");
        }
        !value.is_empty()
    }

    /// `default` when absent; an out-of-range value is reported and replaced by `default`.
    pub(super) fn positive(&mut self, field: &str, value: Option<i64>, default: u64) -> u64 {
        match value.map(u64::try_from) {
            None => default,
            Some(Ok(n)) if n > 0 => n,
            Some(_) => {
                self.report(field, "must be a positive integer");
                default
            }
        }
    }

    pub(super) fn ok<T>(&mut self, field: &str, result: Result<T, impl Display>) -> Option<T> {
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
    let tls = server.tls.and_then(|tls| compile_tls(tls, &mut s));
    let metrics_listen = metrics_listen(&mut s, server.metrics_listen, &listen);
    let taken = [
        ("listen", Some(listen.as_str())),
        ("metrics_listen", metrics_listen.as_deref()),
    ];
    let admin = compile_admin(&mut s, server.admin_listen, server.admin_key, &taken);
    ServerSettings {
        listen,
        max_body_bytes: usize::try_from(max).unwrap_or(usize::MAX),
        expose_backend_header: server.expose_backend_header.unwrap_or(true),
        models_timeout: Duration::from_millis(s.positive(
            "models_timeout_ms",
            server.models_timeout_ms,
            DEFAULT_MODELS_TIMEOUT_MS,
        )),
        models_cache: Duration::from_secs(s.positive(
            "models_cache_seconds",
            server.models_cache_seconds,
            DEFAULT_MODELS_CACHE_SECONDS,
        )),
        tls,
        metrics_listen,
        admin,
        trusted_proxies: trusted_proxies(&mut s, server.trusted_proxies.unwrap_or_default()),
        max_header_bytes: size(
            &mut s,
            "max_header_bytes",
            server.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES,
        ),
        client_header_timeout: Duration::from_millis(s.positive(
            "client_header_timeout_ms",
            server.client_header_timeout_ms,
            DEFAULT_CLIENT_TIMEOUT_MS,
        )),
        client_body_timeout: Duration::from_millis(s.positive(
            "client_body_timeout_ms",
            server.client_body_timeout_ms,
            DEFAULT_CLIENT_TIMEOUT_MS,
        )),
        send_timeout: Duration::from_millis(s.positive(
            "send_timeout_ms",
            server.send_timeout_ms,
            DEFAULT_CLIENT_TIMEOUT_MS,
        )),
    }
}

/// Each entry an address (`10.0.0.1`, one host) or a network in CIDR notation (`10.0.0.0/8`).
fn trusted_proxies(s: &mut Section, entries: Vec<String>) -> Vec<ipnet::IpNet> {
    let mut nets = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let text = entry.trim();
        let parsed = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => nets.push(net),
            Err(_) => s.report(
                &format!("trusted_proxies[{i}]"),
                format!("expected an address or a network such as 10.0.0.0/8, not {entry:?}"),
            ),
        }
    }
    nets
}

/// Both paths are required; the files themselves are read when the listener starts (and on reload).
fn compile_tls(tls: file::TlsFile, s: &mut Section) -> Option<TlsPaths> {
    let mut path = |field: &str, value: Option<String>| {
        let value = s.required(&format!("tls.{field}"), value)?;
        s.non_empty(&format!("tls.{field}"), &value)
            .then(|| PathBuf::from(value))
    };
    let cert_path = path("cert_path", tls.cert_path);
    let key_path = path("key_path", tls.key_path);
    Some(TlsPaths {
        cert_path: cert_path?,
        key_path: key_path?,
    })
}

fn compile_usage(usage: file::UsageFile, errors: &mut Errors) -> UsageSettings {
    let defaults = UsageSettings::default();
    let s = &mut Section::new("usage".into(), errors);
    let dir = usage.dir.filter(|dir| s.non_empty("dir", dir));
    // Field order, so errors come out in the order the fields are documented.
    UsageSettings {
        dir: dir.map_or(defaults.dir, PathBuf::from),
        enabled: usage.enabled.unwrap_or(defaults.enabled),
        record_bodies: usage.record_bodies.unwrap_or(defaults.record_bodies),
        max_body_bytes: size(
            s,
            "max_body_bytes",
            usage.max_body_bytes,
            defaults.max_body_bytes,
        ),
        batch_size: size(s, "batch_size", usage.batch_size, defaults.batch_size),
        flush_interval: Duration::from_millis(s.positive(
            "flush_interval_ms",
            usage.flush_interval_ms,
            millis(defaults.flush_interval),
        )),
        queue_capacity: size(
            s,
            "queue_capacity",
            usage.queue_capacity,
            defaults.queue_capacity,
        ),
        queue_max_bytes: size(
            s,
            "queue_max_mb",
            usage.queue_max_mb,
            defaults.queue_max_bytes >> 20,
        )
        .saturating_mul(1 << 20),
        postgres_url: compile_postgres_url(usage.postgres_url, s),
    }
}

/// A positive count or size; `default` when absent or invalid.
fn size(s: &mut Section, field: &str, value: Option<i64>, default: usize) -> usize {
    let n = s.positive(field, value, u64::try_from(default).unwrap_or(u64::MAX));
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests;
