//! The `cluster:` section (this node's name, the Redis that shares limits) and `usage.postgres_url`.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::base_url::mask_userinfo;
use super::compile::{Errors, Section};
use super::file::Shape;
use crate::secret::Secret;

/// `cluster:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterFile {
    pub node: Option<String>,
    pub redis_url: Option<String>,
    pub redis_timeout_ms: Option<i64>,
    pub on_redis_down: Option<String>,
}

/// Mirrors [`ClusterFile`] (a test in `file` keeps them in step).
pub(super) const CLUSTER: Shape = Shape::Section(&[
    ("node", Shape::Str),
    ("redis_url", Shape::Str),
    ("redis_timeout_ms", Shape::Int),
    ("on_redis_down", Shape::Str),
]);

pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 50;
/// A node name goes into every record and log line: short and plain.
pub const MAX_NODE_BYTES: usize = 64;

/// What a node does with a request of a limited key while Redis does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRedisDown {
    /// Count on this node alone, with each key's full limits, until Redis answers again.
    #[default]
    Local,
    /// Refuse with 503 `limits_unavailable`.
    Deny,
}

/// `cluster.redis_url` and what goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` (TLS); may hold a password, so it is a secret (printed with
    /// [`RedisSettings::shown`]).
    pub url: Secret,
    /// A slower answer counts as Redis being unavailable.
    pub timeout: Duration,
    pub on_down: OnRedisDown,
}

impl RedisSettings {
    /// The URL with its user and password masked, for logs.
    pub fn shown(&self) -> String {
        mask_userinfo(self.url.expose()).into_owned()
    }
}

/// The `cluster:` section, validated; absent: a single node named after the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Recorded in every record's `Node` column (default: the host name).
    pub node: std::sync::Arc<str>,
    /// Limits and budgets shared through Redis; `None`: counted in this process.
    pub redis: Option<RedisSettings>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            node: host_name().into(),
            redis: None,
        }
    }
}

/// This machine's host name (Linux's), cut to [`MAX_NODE_BYTES`] of plain characters; `gpt-api` if unknown.
pub fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(MAX_NODE_BYTES)
        .collect();
    if name.is_empty() {
        "gpt-api".to_owned()
    } else {
        name
    }
}

pub(super) fn compile_cluster(file: Option<ClusterFile>, errors: &mut Errors) -> ClusterSettings {
    let Some(file) = file else {
        return ClusterSettings::default();
    };
    let s = &mut Section::new("cluster".into(), errors);
    let node = match file.node {
        None => host_name(),
        Some(node) => {
            if !valid_node(&node) {
                s.report(
                    "node",
                    format!("must be 1 to {MAX_NODE_BYTES} letters, digits, '-', '.' or '_'"),
                );
            }
            node
        }
    };
    let timeout = s.positive(
        "redis_timeout_ms",
        file.redis_timeout_ms,
        DEFAULT_REDIS_TIMEOUT_MS,
    );
    let on_down = match file.on_redis_down.as_deref() {
        None | Some("local") => OnRedisDown::Local,
        Some("deny") => OnRedisDown::Deny,
        Some(other) => {
            s.report(
                "on_redis_down",
                format!("expected \"local\" or \"deny\", not {other:?}"),
            );
            OnRedisDown::Local
        }
    };
    let redis = file.redis_url.and_then(|url| {
        let checked = check_url(&url, &["redis", "rediss"]);
        s.ok("redis_url", checked).map(|()| RedisSettings {
            url: Secret::new(url),
            timeout: Duration::from_millis(timeout),
            on_down,
        })
    });
    ClusterSettings {
        node: node.into(),
        redis,
    }
}

fn valid_node(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= MAX_NODE_BYTES
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// `usage.postgres_url`: `postgres://` or `postgresql://` (also key=value connection strings are not taken:
/// one form, checked here).
pub(super) fn compile_postgres_url(url: Option<String>, s: &mut Section) -> Option<Secret> {
    let url = url?;
    let checked = check_url(&url, &["postgres", "postgresql"]);
    s.ok("postgres_url", checked).map(|()| Secret::new(url))
}

/// A URL of one of `schemes` with a host; errors show it with its password masked.
fn check_url(text: &str, schemes: &[&str]) -> Result<(), String> {
    let shown = || mask_userinfo(text).into_owned();
    let url = Url::parse(text).map_err(|e| format!("invalid URL {:?}: {e}", shown()))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!(
            "scheme must be {}, not {:?}",
            schemes.join(" or "),
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("URL {:?} must have a host", shown()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> (ClusterSettings, Vec<String>) {
        let file: ClusterFile = serde_yaml::from_str(yaml).expect("yaml");
        let mut errors = Vec::new();
        let settings = compile_cluster(Some(file), &mut errors);
        let errors = errors.iter().map(|e| e.to_string()).collect();
        (settings, errors)
    }

    #[test]
    fn defaults_to_the_host_name_and_no_redis() {
        let (c, errors) = cluster("{}");
        assert!(errors.is_empty());
        assert_eq!(&*c.node, host_name());
        assert!(!c.node.is_empty());
        assert_eq!(c.redis, None);
        assert_eq!(ClusterSettings::default().redis, None);
    }

    #[test]
    fn reads_redis_settings() {
        let (c, errors) = cluster(
            "{node: gw-1, redis_url: 'redis://:pw@127.0.0.1:6379/0', redis_timeout_ms: 20, on_redis_down: deny}",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(&*c.node, "gw-1");
        let redis = c.redis.expect("redis");
        assert_eq!(redis.timeout, Duration::from_millis(20));
        assert_eq!(redis.on_down, OnRedisDown::Deny);
        assert_eq!(redis.shown(), "redis://***@127.0.0.1:6379/0");
        assert!(!format!("{redis:?}").contains("pw"));
    }

    #[test]
    fn reports_bad_values_at_their_paths_without_passwords() {
        let (_, errors) = cluster(
            "{node: 'a b', redis_url: 'http://u:secret@h/0', redis_timeout_ms: 0, on_redis_down: maybe}",
        );
        let text = errors.join("\n");
        assert!(text.contains("cluster.node: must be 1 to 64"), "{text}");
        assert!(
            text.contains("cluster.redis_url: scheme must be redis or rediss"),
            "{text}"
        );
        assert!(
            text.contains("cluster.redis_timeout_ms: must be a positive integer"),
            "{text}"
        );
        assert!(
            text.contains("cluster.on_redis_down: expected \"local\" or \"deny\""),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
        let (_, errors) = cluster("{redis_url: 'redis://:secret@[::1'}");
        assert!(errors[0].contains("***"), "{errors:?}");
        assert!(!errors[0].contains("secret"), "{errors:?}");
    }

    #[test]
    fn node_names_are_bounded() {
        assert!(valid_node("gw-1.example_a"));
        assert!(!valid_node(""));
        assert!(!valid_node(&"a".repeat(65)));
        assert!(!valid_node("gw<script>"));
        assert!(host_name().len() <= MAX_NODE_BYTES);
    }
}
