//! The integration tests: one test crate (`cargo nextest run --test integration`), so the harness in `common/`
//! builds once and the gateway's library is linked into one test binary instead of one per file. Each module is
//! one area, tested by starting the real `gpt-api` binary against mock backends (`common/`). A new file in
//! `tests/` needs its `mod` line here: Cargo.toml sets `autotests = false`, so Cargo no longer finds it alone.
// Test helpers fail loudly by design: a panic is the test's failure report.
#![allow(clippy::unwrap_used)]

mod common;

mod admin;
mod anthropic;
mod anthropic_count;
mod anthropic_ping;
mod anthropic_requests;
mod auth;
mod balancing;
mod bodies;
mod check;
mod claude_code;
mod cluster;
mod compression;
mod edge;
mod errors;
mod failover;
mod logs;
mod messages;
mod metrics;
mod models;
mod money;
mod reload;
mod report;
mod request_encoding;
mod request_id;
mod responses;
mod responses_stored;
mod responses_translate;
mod rewriting;
mod robustness_stream;
mod routing;
mod sdk;
mod security;
mod shipping;
mod slow_callers;
mod spool;
mod streaming;
mod tls_edge;
mod tls_upstream;
mod upgrade;
mod usage;
