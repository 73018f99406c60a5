//! Validation of one `openai_clients` entry into a [`Client`], with every problem reported at its field path.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::compile::{Errors, Section, MISSING};
use super::failover::{health_policy, retry_on, ClientDefaults};
use super::file::{self, index_path, key_path, ClientFile, FallbackFile, OneOrMany};
use super::routing::balance;
use super::{BaseUrl, Client, ConfigError, MatchKind, ModelMatch, Protocol, ResponsesMode};
use super::{DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_READ_TIMEOUT_MS};
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

pub(super) fn compile_clients(
    list: Option<Vec<Option<ClientFile>>>,
    defaults: &ClientDefaults,
    errors: &mut Errors,
) -> Vec<Arc<Client>> {
    let Some(list) = list else {
        errors.push(ConfigError::new("openai_clients", MISSING));
        return Vec::new();
    };
    check_unique_names(&list, errors);
    let mut clients = Vec::with_capacity(list.len());
    for (i, entry) in list.into_iter().enumerate() {
        let path = index_path("openai_clients", i);
        match entry {
            Some(client) => {
                clients.extend(compile_client(client, defaults, path, errors).map(Arc::new))
            }
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
fn compile_client(
    c: ClientFile,
    defaults: &ClientDefaults,
    path: String,
    errors: &mut Errors,
) -> Option<Client> {
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
    let balance = match c.balance {
        Some(name) => balance(s, "balance", &name),
        None => Some(defaults.balance),
    };
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
    let protocol = protocol(c.protocol.as_deref(), s);
    let anthropic_version = c.anthropic_version.filter(|v| {
        let ok = !v.is_empty() && HeaderValue::from_str(v).is_ok();
        if !ok {
            s.report("anthropic_version", "expected a version such as 2023-06-01");
        } else if protocol != Some(Protocol::Anthropic) {
            s.report(
                "anthropic_version",
                "only for a client with protocol: anthropic",
            );
        }
        ok
    });
    // An overloaded Anthropic backend answers 529: another one should be tried.
    let mut default_retry = defaults.retry_on.clone();
    if protocol == Some(Protocol::Anthropic) && !default_retry.contains(&529) {
        default_retry.push(529);
    }
    let responses = responses(c.responses.as_deref(), protocol, s);
    let retry_on = retry_on(s, c.retry_on, &default_retry);
    let health_policy = health_policy(s, c.failure_threshold, c.cooldown_seconds, defaults.policy);
    if s.failed {
        return None;
    }
    let mut base_url = base_url?;
    let protocol = protocol?;
    if protocol == Protocol::Anthropic && !base_url.path.ends_with("/v1") {
        // Anthropic's API lives under /v1 (`https://api.anthropic.com`): a base_url without it gets it.
        base_url.path.push_str("/v1");
    }
    let fixed_headers = fixed_headers(&base_url, &api_key, &headers, protocol)?;
    Some(Client {
        name: name?,
        api_key,
        base_url,
        priority: c.priority.unwrap_or(0),
        weight: weight?,
        balance: balance?,
        model_match: model_match?,
        fallback: compile_fallback(c.fallback),
        special_prefix: c.special_prefix.filter(|p| !p.is_empty()),
        stop: stop.unwrap_or_default(),
        max_tokens,
        extra_body: c.extra_body.unwrap_or_default(),
        model: c.model.filter(|m| !m.is_empty()),
        headers,
        fixed_headers,
        connect_timeout: Duration::from_millis(connect_ms),
        read_timeout: Duration::from_millis(read_ms),
        retry_on,
        health_policy,
        protocol,
        anthropic_version,
        responses: responses?,
    })
}

fn protocol(name: Option<&str>, s: &mut Section) -> Option<Protocol> {
    match name {
        None | Some("openai") => Some(Protocol::OpenAi),
        Some("anthropic") => Some(Protocol::Anthropic),
        Some(_) => {
            s.report("protocol", r#"expected "openai" or "anthropic""#);
            None
        }
    }
}

fn responses(
    name: Option<&str>,
    protocol: Option<Protocol>,
    s: &mut Section,
) -> Option<ResponsesMode> {
    match name {
        None | Some("passthrough") => Some(ResponsesMode::Passthrough),
        // Translation goes to chat completions, which an anthropic backend does not serve.
        Some("translate") if protocol == Some(Protocol::Anthropic) => {
            s.report("responses", "only for a client with protocol: openai");
            None
        }
        Some("translate") => Some(ResponsesMode::Translate),
        Some(_) => {
            s.report("responses", r#"expected "passthrough" or "translate""#);
            None
        }
    }
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

/// The header values every upstream request of a client gets, in the order they are set. All were
/// validated above (`None` cannot happen for a client without errors).
pub(crate) fn fixed_headers(
    base_url: &BaseUrl,
    api_key: &Secret,
    headers: &[(HeaderName, Secret)],
    protocol: Protocol,
) -> Option<Vec<(HeaderName, HeaderValue)>> {
    let sensitive = |text: &str| {
        let mut value = HeaderValue::from_str(text).ok()?;
        value.set_sensitive(true);
        Some(value)
    };
    let mut fixed = vec![
        (
            http::header::HOST,
            HeaderValue::from_str(&base_url.host_header).ok()?,
        ),
        // The tap reads usage from the answer: ask for it uncompressed (one that comes compressed anyway is
        // decoded, at a cost). A caller's own Accept-Encoding is replaced.
        (
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        ),
    ];
    match protocol {
        _ if api_key.is_empty() => {}
        Protocol::OpenAi => {
            let bearer = sensitive(&format!("Bearer {}", api_key.expose()))?;
            fixed.push((http::header::AUTHORIZATION, bearer));
        }
        Protocol::Anthropic => {
            let key = sensitive(api_key.expose())?;
            fixed.push((HeaderName::from_static("x-api-key"), key));
        }
    }
    for (name, value) in headers {
        fixed.push((name.clone(), sensitive(value.expose())?));
    }
    Some(fixed)
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
mod tests;
