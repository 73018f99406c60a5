//! gpt-api: an OpenAI-compatible gateway that routes each request by its JSON `model` to a configured backend.
//!
//! Layout, from the bottom layer up. Dependencies point down: each module imports only modules listed before
//! it, and nothing but `main` imports `proxy` (`.ci/imports.py` lists the imports and fails on a circle).
//! - `secret`    a string type that never prints itself;
//! - `escape`    caller-controlled text made safe for log lines (control characters escaped, length cut);
//! - `json`      a checking skim of JSON text: an object's members as raw text, checked as serde_json checks them;
//! - `money`     amounts of dollars as whole nano-dollars (budgets, spend, reservations);
//! - `tokens`    the token counts of one request (reported or estimated);
//! - `pricing`   model prices: the table, matching a model to its price (exact, then `*` patterns), a call's cost;
//! - `duration`  the one `Duration` -> whole milliseconds conversion;
//! - `error`     typed gateway errors and their one rendering into OpenAI-shaped JSON;
//! - `endpoints` which method+path is answered locally, routed, or an error; the one `/v1` strip;
//! - `client_ip` the caller's address: the socket peer, or what a trusted proxy says it forwarded;
//! - `dns`       asynchronous, cached resolution of backend host names;
//! - `request`   the one parse of a request body (model, stream flag);
//! - `request_id` the gateway's UUIDv7 id of each request (`x-request-id`, the record's `RequestId`);
//! - `config/`   the YAML file format, `${VAR}` expansion and validation into an immutable [`config::Config`];
//! - `auth`      gateway keys: finding the caller's key in its headers, each key's model allow-list;
//! - `health`    passive health of each backend (failures in a row, cooldowns);
//! - `balance`   the order to try the clients of one priority: weighted, least busy, latency (peak-EWMA,
//!   two choices), affinity (a conversation's key hashed over the clients, bounded load, remembered);
//! - `logging`   the logger: stderr, or rotated info and error files (the `logging:` section);
//! - `models`    the `/v1/models` list;
//! - `estimate`  token counts by OpenAI's tokenizers for answers without usage, on a thread of their own;
//! - `rewrite`   per-backend request rewriting (stop, caps, extra fields, model alias, stream usage);
//! - `usage`     usage records, their bounded queue, crash-safe spool, batching writer into a `Sink` (SQLite files),
//!   and the shipper of those files' rows to a shared PostgreSQL table (`usage::ship`);
//! - `ratelimit` per-key requests/tokens-per-minute limits over a sliding window, their store, their headers;
//! - `routing`   model -> ordered candidate clients (exact/keyword match, priority, weighted round robin), and
//!   which client served each Responses API id (`routing::responses_ids`);
//! - `metrics`   Prometheus metrics, and their scrape service on `server.metrics_listen` (a small Pingora app);
//! - `report`    the `gpt-api usage` report: sums and latency percentiles read from a `Source` (the monthly files,
//!   or the shared PostgreSQL table);
//! - `tap`       the response tap: SSE/JSON parsing for usage, the special prefix, the recorded body;
//! - `dialect`   translation between API dialects: Anthropic's Messages <-> chat completions, and the Responses
//!   API -> chat completions (requests, answers, streams as they arrive, errors), and the relay that takes an
//!   answer to the caller in its dialect (`dialect::relay`);
//! - `failover`  the order of attempts (candidates by priority, then fallback models, bounded hops) and the
//!   attempt's life as one state machine (`failover::attempt`);
//! - `accounting` what a finished request cost: tokens counted when none were reported, price, budget, metric;
//! - `admin/`    the admin page on `server.admin_listen`: overview, requests, backends, keys, and its JSON API,
//!   read from the monthly files (their hourly rollup) and the running gateway (`admin::Live`);
//! - `proxy/`    the only code that touches Pingora: the `ProxyHttp` hooks handing off to one module per phase
//!   (admit, attempt, response, finish), the per-request state, the edge loop, server and services.

pub(crate) mod accounting;
pub mod admin;
pub(crate) mod auth;
pub mod balance;
pub(crate) mod client_ip;
pub mod config;
pub mod dialect;
pub(crate) mod dns;
pub(crate) mod duration;
pub(crate) mod endpoints;
pub(crate) mod error;
pub(crate) mod escape;
pub mod estimate;
pub(crate) mod failover;
pub(crate) mod health;
pub(crate) mod json;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod models;
pub mod money;
pub mod pricing;
pub mod proxy;
pub(crate) mod ratelimit;
pub mod report;
pub(crate) mod request;
pub(crate) mod request_id;
pub(crate) mod rewrite;
pub(crate) mod routing;
pub mod secret;
pub mod tap;
pub mod tokens;
pub mod usage;

/// The property tests' settings: 256 cases each (a few seconds; `FUZZ_CASES=N` for more, to hunt rare failures),
/// and no failure files written into the source tree.
#[cfg(test)]
pub(crate) fn fuzz_config() -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: std::env::var("FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
