//! gpt-api: an OpenAI-compatible gateway that routes each request by its JSON `model` to a configured backend.
//!
//! Layout:
//! - `config/`   the YAML file format, `${VAR}` expansion and validation into an immutable [`config::Config`];
//! - `routing`   model -> ordered candidate clients (exact/keyword match, priority, weighted round robin);
//! - `request`   the one parse of a request body (model, stream flag);
//! - `error`     typed gateway errors and their one rendering into OpenAI-shaped JSON;
//! - `escape`    caller-controlled text made safe for log lines (control characters escaped, length cut);
//! - `dns`       asynchronous, cached resolution of backend host names;
//! - `failover`  the order of attempts: candidates by priority, then fallback models, bounded hops;
//! - `health`    passive health of each backend (failures in a row, cooldowns);
//! - `endpoints` which method+path is answered locally, routed, or an error;
//! - `models`    the `/v1/models` list;
//! - `proxy/`    the only code that touches Pingora: the `ProxyHttp` impl, body handling, server setup;
//! - `rewrite`   per-backend request rewriting (stop, caps, extra fields, model alias, stream usage);
//! - `tap`       the response tap: SSE/JSON parsing for usage, the special prefix, the recorded body;
//! - `usage`     usage records, their bounded queue, crash-safe spool, batching writer into a `Sink` (SQLite files);
//! - `secret`    a string type that never prints itself;
//! - `logging`   the logger: stderr, or rotated info and error files (the `logging:` section);
//! - `metrics`   Prometheus metrics, and their scrape service on `server.metrics_listen` (a small Pingora app);
//! - `report`    the `gpt-api usage` report: sums and latency percentiles read from a `Source` (the monthly files);
//! - `client_ip` the caller's address: the socket peer, or what a trusted proxy says it forwarded;
//! - `auth`      gateway keys: finding the caller's key in its headers, each key's model allow-list;
//! - `ratelimit` per-key requests/tokens-per-minute limits over a sliding window, and their headers.

pub mod auth;
pub mod client_ip;
pub mod config;
pub mod dns;
pub mod endpoints;
pub mod error;
pub mod escape;
pub mod failover;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod models;
pub mod proxy;
pub mod ratelimit;
pub mod report;
pub mod request;
pub mod rewrite;
pub mod routing;
pub mod secret;
pub mod tap;
pub mod usage;

/// The property tests' settings: 256 cases each (a few seconds), and no failure files written into the source tree.
#[cfg(test)]
pub(crate) fn fuzz_config() -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: 256,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
