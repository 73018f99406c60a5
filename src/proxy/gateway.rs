//! The gateway's shared state: the config in force (swapped whole on reload) and the services requests use.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use pingora::connectors::ConnectorOptions;

use super::models::{ModelLists, ModelsCache};
use super::reload::{Reload, Reloader};
use crate::accounting::Accountant;
use crate::auth::Auth;
use crate::config::{Config, OnRedisDown};
use crate::dns::DnsCache;
use crate::metrics::Metrics;
use crate::ratelimit::{Limiter, RedisStore};
use crate::routing::responses_ids::ResponseIds;
use crate::routing::Router;
use crate::usage::UsageQueue;

const DNS_TTL: Duration = Duration::from_secs(60);

/// One loaded config and the routing table built from it; swapped whole on reload.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    pub router: Router,
    /// Gateway keys; `None` when the config has no `auth` section (the gateway is open).
    pub auth: Option<Arc<Auth>>,
    /// `/v1/models` answers made with this config; a reload starts with an empty cache, and a slow
    /// answer from before it can only land in the old one.
    pub(super) models_cache: ArcSwap<ModelsCache>,
}

impl Runtime {
    /// Builds the routing table; health state carries over by client name from `previous`.
    pub fn new(config: Config, previous: Option<&Runtime>) -> Self {
        let router = Router::new(&config, previous.map(|p| &p.router));
        let auth = config.auth.as_ref().map(|a| Arc::new(Auth::from_config(a)));
        Runtime {
            config: Arc::new(config),
            router,
            auth,
            models_cache: ArcSwap::default(),
        }
    }
}

/// The gateway's shared state: the current runtime behind an atomic pointer, and the services every
/// request may use (DNS, the usage queue, metrics, rate limits, model lists, reloads).
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    dns: DnsCache,
    usage: UsageQueue,
    metrics: Arc<Metrics>,
    /// Per-key request and token windows and budgets; kept across reloads by key name.
    limiter: Arc<Limiter>,
    /// Settles each request's accounts: cost, budget, counted tokens.
    accountant: Arc<Accountant>,
    models: ModelLists,
    reloader: Reloader,
    /// Which client served each Responses API id passed on by this node (kept across reloads).
    response_ids: ResponseIds,
}

/// What the gateway needs beyond its config.
pub struct GatewayParts {
    pub usage: UsageQueue,
    /// The config file, re-read on reload.
    pub config_path: std::path::PathBuf,
    /// Fingerprint of the file contents the config was loaded from.
    pub fingerprint: u64,
    /// Upstream TLS settings (the server conf's `ca_file`).
    pub connector: ConnectorOptions,
    pub metrics: Arc<Metrics>,
}

impl Gateway {
    /// Fails only on a `cluster.redis_url` the Redis client does not take.
    pub fn new(config: Config, parts: GatewayParts) -> Result<Self, String> {
        let runtime = Runtime::new(config, None);
        let limiter = Arc::new(limiter_for(&runtime.config)?);
        if limiter.shared_up().is_some() {
            let limits = Arc::clone(&limiter);
            parts
                .metrics
                .watch_redis(move || limits.shared_up() == Some(true));
        }
        note_auth(&runtime, &limiter);
        let accountant = Arc::new(Accountant::new(
            Arc::clone(&limiter),
            Arc::clone(&parts.metrics),
        ));
        parts
            .metrics
            .set_known_models(crate::metrics::known_models(&runtime.config));
        Ok(Gateway {
            runtime: ArcSwap::from_pointee(runtime),
            dns: DnsCache::new(DNS_TTL),
            usage: parts.usage,
            metrics: parts.metrics,
            limiter,
            accountant,
            models: ModelLists::new(parts.connector),
            reloader: Reloader::new(parts.config_path, parts.fingerprint),
            response_ids: ResponseIds::default(),
        })
    }

    /// The config in force now.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn dns(&self) -> &DnsCache {
        &self.dns
    }

    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    pub fn accountant(&self) -> &Arc<Accountant> {
        &self.accountant
    }

    pub fn response_ids(&self) -> &ResponseIds {
        &self.response_ids
    }

    pub fn usage_queue(&self) -> &UsageQueue {
        &self.usage
    }

    /// Re-reads the config file and applies it when it changed (or always, with `force`) and is valid.
    pub async fn reload(&self, force: bool, why: &str) -> Reload {
        self.reloader
            .reload(&self.runtime, &self.metrics, force, why)
            .await
    }

    /// The `/v1/models` body for a caller under `rt`, from its cache while fresh.
    pub async fn models_body(&self, rt: &Runtime, caller_auth: Option<&str>) -> Bytes {
        self.models.body(rt, &self.dns, caller_auth).await
    }
}

/// Limits in this process's memory, or shared through Redis when `cluster.redis_url` is set (it connects
/// once started; not answering then is no error).
fn limiter_for(config: &Config) -> Result<Limiter, String> {
    let Some(redis) = &config.cluster.redis else {
        return Ok(Limiter::new());
    };
    let store = RedisStore::new(redis).map_err(|e| e.to_string())?;
    let on_down = match redis.on_down {
        OnRedisDown::Local => "count on each node alone",
        OnRedisDown::Deny => "refuse limited keys",
    };
    log::info!(
        "limits shared through Redis {} (timeout {} ms; while it is down: {on_down})",
        redis.shown(),
        redis.timeout.as_millis(),
    );
    Ok(Limiter::shared(Arc::new(store), redis.on_down))
}

/// Points the limiter at the runtime's keys; an open gateway is worth a warning at start.
fn note_auth(runtime: &Runtime, limiter: &Limiter) {
    match &runtime.auth {
        Some(auth) => limiter.update(auth),
        None => {
            log::warn!(target: crate::logging::ACCESS_TARGET, "no auth section: anyone who can reach the gateway can use its backends")
        }
    }
}
