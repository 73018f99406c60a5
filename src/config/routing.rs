//! The `routing:` section (how clients of one priority share requests) and each client's `balance`.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::compile::{Errors, Section};
use super::file::{index_path, key_path, Shape};
use super::{Client, ConfigError, MatchKind};

/// `routing:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoutingFile {
    pub balance: Option<String>,
    pub affinity: Option<AffinityFile>,
}

/// `routing.affinity`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AffinityFile {
    pub keys: Option<Vec<String>>,
    pub prefix_bytes: Option<i64>,
    pub load_factor: Option<f64>,
    pub ttl_seconds: Option<i64>,
}

const AFFINITY: Shape = Shape::Section(&[
    ("keys", Shape::ListOf(&Shape::Str)),
    ("prefix_bytes", Shape::Int),
    ("load_factor", Shape::Number),
    ("ttl_seconds", Shape::Int),
]);

/// Mirrors [`RoutingFile`] (a test in `file` keeps them in step).
pub(super) const ROUTING: Shape =
    Shape::Section(&[("balance", Shape::Str), ("affinity", AFFINITY)]);

/// How a request picks among the clients of one priority that serve its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Round robin in proportion to `weight` (the behaviour before `routing:` existed).
    #[default]
    Weighted,
    /// The fewest requests in flight relative to `weight`.
    LeastBusy,
    /// Power of two choices over a peak-EWMA of time to first byte times requests in flight.
    Latency,
    /// A consistent hash of the conversation's key, with bounded load and remembered placement.
    Affinity,
}

impl Balance {
    pub const NAMES: [&'static str; 4] = ["weighted", "least_busy", "latency", "affinity"];

    pub fn parse(name: &str) -> Option<Balance> {
        match name {
            "weighted" => Some(Balance::Weighted),
            "least_busy" => Some(Balance::LeastBusy),
            "latency" => Some(Balance::Latency),
            "affinity" => Some(Balance::Affinity),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Balance::Weighted => "weighted",
            Balance::LeastBusy => "least_busy",
            Balance::Latency => "latency",
            Balance::Affinity => "affinity",
        }
    }
}

/// A body field an affinity key can be read from (string values; others count as absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityField {
    /// OpenAI's cache routing hint; Codex sets it to its conversation id.
    PromptCacheKey,
    /// OpenAI's end-user id.
    User,
    /// OpenAI's replacement for `user`.
    SafetyIdentifier,
    /// Anthropic's `metadata.user_id`; Claude Code puts its session id in it.
    MetadataUserId,
    /// The Responses API's `conversation` (an id or `{id}`).
    Conversation,
}

impl AffinityField {
    pub const ALL: [AffinityField; 5] = [
        AffinityField::PromptCacheKey,
        AffinityField::User,
        AffinityField::SafetyIdentifier,
        AffinityField::MetadataUserId,
        AffinityField::Conversation,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AffinityField::PromptCacheKey => "prompt_cache_key",
            AffinityField::User => "user",
            AffinityField::SafetyIdentifier => "safety_identifier",
            AffinityField::MetadataUserId => "metadata.user_id",
            AffinityField::Conversation => "conversation",
        }
    }
}

/// One entry of `routing.affinity.keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AffinitySource {
    Field(AffinityField),
    /// `header:<name>`, the name lower-cased.
    Header(HeaderName),
    /// A hash of the model, the system prompt and the first user message.
    Prefix,
}

impl AffinitySource {
    /// `prompt_cache_key`, `header:session-id`, `prefix`: as written in the config.
    pub fn parse(text: &str) -> Result<AffinitySource, String> {
        if text == "prefix" {
            return Ok(AffinitySource::Prefix);
        }
        if let Some(name) = text.strip_prefix("header:") {
            return HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map(AffinitySource::Header)
                .map_err(|_| format!("invalid HTTP header name {name:?}"));
        }
        match AffinityField::ALL.iter().find(|f| f.name() == text) {
            Some(field) => Ok(AffinitySource::Field(*field)),
            None => {
                let fields: Vec<&str> = AffinityField::ALL.iter().map(|f| f.name()).collect();
                Err(format!(
                    "unknown key {text:?}: expected header:<name>, prefix, or one of {}",
                    fields.join(", ")
                ))
            }
        }
    }
}

/// The default `routing.affinity.keys`, most specific first. Codex sends `prompt_cache_key` (its
/// conversation id) and the same id as a `session-id` header (`session_id` before 2026); Claude Code
/// sends `x-claude-code-session-id` (since 2.1.86) and its session inside `metadata.user_id`.
pub const DEFAULT_AFFINITY_KEYS: [&str; 8] = [
    "prompt_cache_key",
    "header:x-claude-code-session-id",
    "header:session-id",
    "header:session_id",
    "header:x-session-id",
    "metadata.user_id",
    "user",
    "prefix",
];
pub const DEFAULT_PREFIX_BYTES: usize = 4096;
/// 2, not the 1.25 of the literature's large loads: a few requests in flight per backend vary too much for it
/// (bench-affinity: at 1.25, 15% of turns moved, 85% prefix hits and a p99 no better than `weighted`; at 2,
/// 99% hits and half of `weighted`'s p99).
pub const DEFAULT_LOAD_FACTOR: f64 = 2.0;
pub const DEFAULT_AFFINITY_TTL_SECONDS: u64 = 3600;
const PREFIX_BYTES: std::ops::RangeInclusive<i64> = 64..=(1 << 20);
/// A factor this high is no bound at all; it is a typo.
const MAX_LOAD_FACTOR: f64 = 1000.0;

/// `routing.affinity`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AffinitySettings {
    /// Where a request's affinity key comes from; the first present wins. Never empty.
    pub keys: Vec<AffinitySource>,
    /// How much of the model, system prompt and first user message `prefix` hashes.
    pub prefix_bytes: usize,
    /// A client takes at most `ceil(load_factor * (in flight in its tier + 1) / clients)`; >= 1.
    pub load_factor: f64,
    /// How long a conversation's placement is remembered after its last request.
    pub ttl: Duration,
}

impl Default for AffinitySettings {
    fn default() -> Self {
        AffinitySettings {
            keys: DEFAULT_AFFINITY_KEYS
                .iter()
                .filter_map(|k| AffinitySource::parse(k).ok())
                .collect(),
            prefix_bytes: DEFAULT_PREFIX_BYTES,
            load_factor: DEFAULT_LOAD_FACTOR,
            ttl: Duration::from_secs(DEFAULT_AFFINITY_TTL_SECONDS),
        }
    }
}

/// The `routing:` section, validated. Each client's own strategy is [`Client::balance`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoutingSettings {
    /// What clients without their own `balance` use.
    pub balance: Balance,
    pub affinity: AffinitySettings,
}

impl RoutingSettings {
    /// Whether some client balances by affinity (only then is a request's body read for a key).
    pub fn uses_affinity(clients: &[Arc<Client>]) -> bool {
        clients.iter().any(|c| c.balance == Balance::Affinity)
    }
}

pub(super) fn compile_routing(file: Option<RoutingFile>, errors: &mut Errors) -> RoutingSettings {
    let file = file.unwrap_or_default();
    let s = &mut Section::new("routing".into(), errors);
    let balance = file.balance.and_then(|name| balance(s, "balance", &name));
    let affinity = compile_affinity(file.affinity.unwrap_or_default(), s);
    RoutingSettings {
        balance: balance.unwrap_or_default(),
        affinity,
    }
}

/// A strategy name; `None` (reported) when unknown.
pub(super) fn balance(s: &mut Section, field: &str, name: &str) -> Option<Balance> {
    let parsed = Balance::parse(name);
    if parsed.is_none() {
        let message = format!(
            "unknown balance {name:?}, expected one of {}",
            Balance::NAMES.join(", ")
        );
        s.report(field, message);
    }
    parsed
}

fn compile_affinity(a: AffinityFile, s: &mut Section) -> AffinitySettings {
    let defaults = AffinitySettings::default();
    let keys = match a.keys {
        None => defaults.keys,
        Some(keys) => affinity_keys(s, &keys),
    };
    let prefix_bytes = match a.prefix_bytes {
        None => defaults.prefix_bytes,
        Some(n) if PREFIX_BYTES.contains(&n) => usize::try_from(n).unwrap_or(DEFAULT_PREFIX_BYTES),
        Some(_) => {
            s.report("affinity.prefix_bytes", "must be between 64 and 1048576");
            defaults.prefix_bytes
        }
    };
    let load_factor = match a.load_factor {
        None => defaults.load_factor,
        Some(f) if (1.0..=MAX_LOAD_FACTOR).contains(&f) => f,
        Some(_) => {
            s.report("affinity.load_factor", "must be between 1 and 1000");
            defaults.load_factor
        }
    };
    let ttl = s.positive(
        "affinity.ttl_seconds",
        a.ttl_seconds,
        DEFAULT_AFFINITY_TTL_SECONDS,
    );
    AffinitySettings {
        keys,
        prefix_bytes,
        load_factor,
        ttl: Duration::from_secs(ttl),
    }
}

fn affinity_keys(s: &mut Section, keys: &[String]) -> Vec<AffinitySource> {
    if keys.is_empty() {
        s.report("affinity.keys", "must not be an empty list");
    }
    let mut sources: Vec<AffinitySource> = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let path = index_path("affinity.keys", i);
        match AffinitySource::parse(key) {
            Ok(source) if sources.contains(&source) => s.report(&path, "duplicate key"),
            Ok(source) => sources.push(source),
            Err(message) => s.report(&path, message),
        }
    }
    sources
}

/// Clients of equal priority that may serve the same model form one tier, which one strategy orders:
/// each must have the same `balance`. `clients` are in file order (only called when every client compiled).
pub(super) fn check_tiers(clients: &[Arc<Client>], errors: &mut Errors) {
    for (i, client) in clients.iter().enumerate() {
        let clash = clients[..i].iter().enumerate().find(|(_, other)| {
            other.priority == client.priority
                && other.balance != client.balance
                && may_overlap(other, client)
        });
        if let Some((j, other)) = clash {
            let path = key_path(&index_path("openai_clients", i), "balance");
            let message = format!(
                "is {:?} but openai_clients[{j}] ({:?}) of the same priority {} serving the same models is {:?}; \
                 clients of one priority must balance alike (give one a different priority)",
                client.balance.name(),
                other.name,
                client.priority,
                other.balance.name(),
            );
            errors.push(ConfigError::new(path, message));
        }
    }
}

/// Whether some model name matches both clients. Two keyword rules always may (a name can contain both).
fn may_overlap(a: &Client, b: &Client) -> bool {
    let (am, bm) = (&a.model_match, &b.model_match);
    match (am.kind, bm.kind) {
        (MatchKind::Exact, _) => am.values.iter().any(|v| bm.matches(v)),
        (_, MatchKind::Exact) => bm.values.iter().any(|v| am.matches(v)),
        (MatchKind::Keyword, MatchKind::Keyword) => true,
    }
}

#[cfg(test)]
mod tests;
