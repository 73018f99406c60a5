//! The `failover:` section, and the checks across clients: each fallback names a served model, no cycles.

use std::sync::Arc;
use std::time::Duration;

use super::compile::{Errors, Section};
use super::file::{index_path, key_path, FailoverFile};
use super::{Client, ConfigError, FailoverSettings, HealthPolicy};
use super::{
    DEFAULT_COOLDOWN_SECONDS, DEFAULT_FAILURE_THRESHOLD, DEFAULT_MAX_FALLBACK_HOPS,
    DEFAULT_RETRY_ON,
};

/// What a client inherits when it does not set its own `retry_on`, `failure_threshold`, `cooldown_seconds`,
/// `balance` (the last from `routing.balance`, set by `compile`).
#[derive(Debug, Clone)]
pub(super) struct ClientDefaults {
    pub retry_on: Vec<u16>,
    pub policy: HealthPolicy,
    pub balance: super::Balance,
}

pub(super) fn compile_failover(
    f: FailoverFile,
    errors: &mut Errors,
) -> (FailoverSettings, ClientDefaults) {
    let s = &mut Section::new("failover".into(), errors);
    let hops = match f.max_fallback_hops.map(u32::try_from) {
        None => DEFAULT_MAX_FALLBACK_HOPS,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            s.report("max_fallback_hops", "must be a non-negative integer");
            DEFAULT_MAX_FALLBACK_HOPS
        }
    };
    let base = ClientDefaults {
        retry_on: DEFAULT_RETRY_ON.to_vec(),
        policy: HealthPolicy {
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            cooldown: Duration::from_secs(DEFAULT_COOLDOWN_SECONDS),
        },
        balance: super::Balance::default(),
    };
    let defaults = ClientDefaults {
        retry_on: retry_on(s, f.retry_on, &base.retry_on),
        policy: health_policy(s, f.failure_threshold, f.cooldown_seconds, base.policy),
        balance: base.balance,
    };
    (
        FailoverSettings {
            max_fallback_hops: hops,
        },
        defaults,
    )
}

/// A status list (each 100..=599); `default` when absent.
pub(super) fn retry_on(s: &mut Section, list: Option<Vec<i64>>, default: &[u16]) -> Vec<u16> {
    let Some(list) = list else {
        return default.to_vec();
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, code) in list.into_iter().enumerate() {
        match u16::try_from(code) {
            Ok(code) if (100..=599).contains(&code) => out.push(code),
            _ => s.report(
                &index_path("retry_on", i),
                "expected an HTTP status code (100-599)",
            ),
        }
    }
    out
}

pub(super) fn health_policy(
    s: &mut Section,
    threshold: Option<i64>,
    cooldown_seconds: Option<i64>,
    default: HealthPolicy,
) -> HealthPolicy {
    let threshold = s.positive(
        "failure_threshold",
        threshold,
        u64::from(default.failure_threshold),
    );
    let cooldown = s.positive(
        "cooldown_seconds",
        cooldown_seconds,
        default.cooldown.as_secs(),
    );
    HealthPolicy {
        failure_threshold: u32::try_from(threshold).unwrap_or(u32::MAX),
        cooldown: Duration::from_secs(cooldown),
    }
}

/// Every `fallback` must name a model some client serves, and following fallbacks must never come back to
/// where it started. `clients` are in file order (only called when every client compiled).
pub(super) fn check_fallbacks(clients: &[Arc<Client>], errors: &mut Errors) {
    for (i, client) in clients.iter().enumerate() {
        let Some(start) = client.fallback.as_deref() else {
            continue;
        };
        let path = key_path(&index_path("openai_clients", i), "fallback");
        if !clients.iter().any(|c| c.model_match.matches(start)) {
            errors.push(ConfigError::new(
                path,
                format!("no client serves the fallback model {start:?}"),
            ));
        } else if let Some(cycle) = find_cycle(clients, start) {
            errors.push(ConfigError::new(
                path,
                format!("fallback cycle: {}", cycle.join(" -> ")),
            ));
        }
    }
}

/// Follows every fallback reachable from `start`; returns the chain that leads back to a model on it.
fn find_cycle(clients: &[Arc<Client>], start: &str) -> Option<Vec<String>> {
    let mut chain = vec![start.to_owned()];
    walk(clients, &mut chain)
}

fn walk(clients: &[Arc<Client>], chain: &mut Vec<String>) -> Option<Vec<String>> {
    let model = chain.last()?.clone();
    let mut next: Vec<&str> = clients
        .iter()
        .filter(|c| c.model_match.matches(&model))
        .filter_map(|c| c.fallback.as_deref())
        .collect();
    next.dedup();
    for fallback in next {
        let seen = chain.iter().any(|m| m == fallback);
        chain.push(fallback.to_owned());
        if seen {
            return Some(chain.clone());
        }
        if let Some(cycle) = walk(clients, chain) {
            return Some(cycle);
        }
        chain.pop();
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn errors(yaml: &str) -> Vec<String> {
        match Config::parse(yaml, &|_| None) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn defaults_and_overrides() {
        let cfg = Config::parse(
            "failover: {max_fallback_hops: 1, retry_on: [500], failure_threshold: 5, cooldown_seconds: 7}
openai_clients:
  - {name: a, base_url: 'http://h', model_match: {type: exact, value: m}}
  - {name: b, base_url: 'http://h', retry_on: [429], cooldown_seconds: 1, model_match: {type: exact, value: n}}",
            &|_| None,
        )
        .unwrap();
        assert_eq!(cfg.failover.max_fallback_hops, 1);
        assert_eq!(cfg.clients[0].retry_on, [500]);
        assert_eq!(cfg.clients[0].health_policy.failure_threshold, 5);
        assert_eq!(cfg.clients[0].health_policy.cooldown.as_secs(), 7);
        assert_eq!(cfg.clients[1].retry_on, [429]);
        assert_eq!(cfg.clients[1].health_policy.failure_threshold, 5);
        assert_eq!(cfg.clients[1].health_policy.cooldown.as_secs(), 1);
        let plain = Config::parse(
            "openai_clients: [{name: a, base_url: 'http://h', model_match: {type: exact, value: m}}]",
            &|_| None,
        )
        .unwrap();
        assert_eq!(plain.clients[0].retry_on, crate::config::DEFAULT_RETRY_ON);
        assert_eq!(plain.failover.max_fallback_hops, 3);
        assert!(plain.server.expose_backend_header);
    }

    #[test]
    fn bad_values_name_their_field() {
        let e = errors(
            "failover: {retry_on: [700], max_fallback_hops: -1}
openai_clients:
  - {name: a, base_url: 'http://h', failure_threshold: 0, model_match: {type: exact, value: m}}",
        );
        assert!(
            e.contains(&"failover.retry_on[0]: expected an HTTP status code (100-599)".to_owned()),
            "{e:?}"
        );
        assert!(
            e.contains(&"failover.max_fallback_hops: must be a non-negative integer".to_owned()),
            "{e:?}"
        );
        assert!(
            e.contains(
                &"openai_clients[0].failure_threshold: must be a positive integer".to_owned()
            ),
            "{e:?}"
        );
    }

    #[test]
    fn fallback_must_be_served_and_acyclic() {
        let e = errors(
            "openai_clients:
  - {name: a, base_url: 'http://h', fallback: nowhere, model_match: {type: exact, value: m}}",
        );
        assert_eq!(
            e,
            [r#"openai_clients[0].fallback: no client serves the fallback model "nowhere""#]
        );
        let e = errors(
            "openai_clients:
  - {name: a, base_url: 'http://h', fallback: n, model_match: {type: exact, value: m}}
  - {name: b, base_url: 'http://h', fallback: m, model_match: {type: keyword, value: n}}",
        );
        assert_eq!(
            e,
            [
                "openai_clients[0].fallback: fallback cycle: n -> m -> n",
                "openai_clients[1].fallback: fallback cycle: m -> n -> m"
            ]
        );
        let chain = errors(
            "openai_clients:
  - {name: a, base_url: 'http://h', fallback: n, model_match: {type: exact, value: m}}
  - {name: b, base_url: 'http://h', fallback: o, model_match: {type: exact, value: n}}
  - {name: c, base_url: 'http://h', model_match: {type: exact, value: o}}",
        );
        assert!(chain.is_empty(), "{chain:?}");
    }
}
