//! gpt-api: an OpenAI-compatible gateway that routes each request by its JSON `model` to a configured backend.
//!
//! Layout:
//! - `config/`   the YAML file format, `${VAR}` expansion and validation into an immutable [`config::Config`];
//! - `routing`   model -> ordered candidate clients (exact/keyword match, priority, weighted round robin);
//! - `request`   the one parse of a request body (model, stream flag);
//! - `error`     typed gateway errors and their one rendering into OpenAI-shaped JSON;
//! - `dns`       asynchronous, cached resolution of backend host names;
//! - `failover`  the order of attempts: candidates by priority, then fallback models, bounded hops;
//! - `health`    passive health of each backend (failures in a row, cooldowns);
//! - `endpoints` which method+path is answered locally, routed, or an error;
//! - `models`    the `/v1/models` list;
//! - `proxy/`    the only code that touches Pingora: the `ProxyHttp` impl, body handling, server setup;
//! - `rewrite`   per-backend request rewriting (stop, caps, extra fields, model alias, stream usage);
//! - `tap`       the response tap: SSE/JSON parsing for usage, the special prefix, the recorded body;
//! - `usage`     usage records and their batching writer into monthly SQLite files;
//! - `secret`    a string type that never prints itself.

pub mod config;
pub mod dns;
pub mod endpoints;
pub mod error;
pub mod failover;
pub mod health;
pub mod models;
pub mod proxy;
pub mod request;
pub mod rewrite;
pub mod routing;
pub mod secret;
pub mod tap;
pub mod usage;
