//! Prometheus metrics: requests, latency, tokens, cost, failovers, backend health, usage queue and shipping,
//! reloads; and their scraping.
//!
//! Everything lives in the [`Metrics`] value's own registry, so tests and servers never share series. Label
//! values are bounded: a model is its own label only when it equals a configured `model_match` value (else
//! [`OTHER_MODEL`]), backends are client names, statuses are HTTP codes and failover reasons a fixed list.
//!
//! The hot path ([`Metrics::request_finished`], [`Metrics::add_cost`]) takes no lock: the series of each
//! (model, backend) pair are created once and found again through lock-free copy-on-write maps ([`ArcSwap`]).
//!
//! `serve.rs` is the scrape endpoint (the only Pingora code here); `tests.rs` the unit tests.

use foldhash::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{
    Counter, CounterVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::usage::ship::ShipStats;
use crate::usage::{TokenUsage, UsageStats};
use registry::{histogram, insert, raise, Reg};

mod registry;
mod serve;
pub use serve::service;

/// The model label of every model the config does not name.
pub const OTHER_MODEL: &str = "other";
/// The backend label of a request answered without a backend (bad request, unknown model).
pub const NO_BACKEND: &str = "none";
/// Latency and time-to-first-byte buckets, in seconds: 5 ms up to the default 600 s read timeout.
const DURATION_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// The `kind` label of `gpt_api_tokens_total`, in [`TokenUsage`] field order.
const TOKEN_KINDS: [&str; 4] = ["prompt", "completion", "cached", "reasoning"];
/// The failover reasons reported as such; anything else counts as "other".
const FAILOVER_REASONS: [&str; 6] = ["connect", "timeout", "429", "4xx", "5xx", "other"];

/// The failover reason for a backend status: "429", "4xx", "5xx" or "other".
pub fn status_reason(status: u16) -> &'static str {
    match status {
        429 => "429",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// The model names a config reports under their own label: every `model_match` value (exact and keyword).
/// A requested model equal to one of them keeps its name; any other is [`OTHER_MODEL`].
pub fn known_models(config: &crate::config::Config) -> Vec<String> {
    let values = config.clients.iter().flat_map(|c| &c.model_match.values);
    let mut models: Vec<String> = values.cloned().collect();
    models.sort();
    models.dedup();
    models
}

/// The gateway's metrics. Create one per server, share it behind the `Arc`.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    ttfb: HistogramVec,
    tokens: IntCounterVec,
    cost: CounterVec,
    failovers: IntCounterVec,
    backend_failures: IntGaugeVec,
    backend_cooling: IntGaugeVec,
    in_flight: IntGauge,
    reloads_applied: IntCounter,
    reloads_rejected: IntCounter,
    usage_queued: IntGauge,
    usage_queued_bytes: IntGauge,
    usage_written: IntCounter,
    usage_dropped: IntCounter,
    usage_write_errors: IntCounter,
    ship_pending: IntGauge,
    shipped: IntCounter,
    /// Configured model -> its series; replaced whole by `set_known_models`.
    models: ArcSwap<HashMap<String, Arc<ModelSeries>>>,
    other: Arc<ModelSeries>,
    backends: ArcSwap<HashMap<String, Arc<BackendSeries>>>,
    /// Counts owned elsewhere, copied in at scrape time (only `render` locks this).
    sources: Mutex<Sources>,
}

/// The series of one model label, per backend.
struct ModelSeries {
    label: String,
    backends: ArcSwap<HashMap<String, Arc<Series>>>,
}

/// The series of one (model, backend) pair.
struct Series {
    model: String,
    backend: String,
    latency: Histogram,
    ttfb: Histogram,
    tokens: [IntCounter; 4],
    /// Created with the first known cost: a pair whose model has no price shows no cost, rather than 0.
    cost: OnceLock<Counter>,
    /// Request counters by status, created on first use (a handful per pair).
    statuses: ArcSwap<Vec<(u16, IntCounter)>>,
}

/// The series of one backend.
struct BackendSeries {
    failures: IntGauge,
    cooling: IntGauge,
    /// Failover counters by reason (index into [`FAILOVER_REASONS`]), created on first use.
    failovers: [OnceLock<IntCounter>; FAILOVER_REASONS.len()],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

type Counts = Box<dyn Fn() -> (u64, u64) + Send + Sync>;

#[derive(Default)]
struct Sources {
    usage: Option<Arc<UsageStats>>,
    shipping: Option<Arc<ShipStats>>,
    reloads: Option<Counts>,
    /// `gpt_api_redis_up` and what it shows.
    redis: Option<(IntGauge, Box<dyn Fn() -> bool + Send + Sync>)>,
}

impl Metrics {
    /// A fresh registry with every metric family in it. Fails only if a metric definition here is invalid
    /// (a unit test builds one), hence no fallback.
    pub fn new() -> Result<Arc<Metrics>, prometheus::Error> {
        let registry = Registry::new();
        let reg = Reg(&registry);
        let reloads = reg.add(IntCounterVec::new(
            Opts::new("gpt_api_config_reloads_total", "Config reloads by outcome."),
            &["outcome"],
        )?)?;
        let requests = reg.add(IntCounterVec::new(
            Opts::new(
                "gpt_api_requests_total",
                "Finished requests by model, backend and status.",
            ),
            &["model", "backend", "status"],
        )?)?;
        let metrics = Metrics {
            latency: reg.add(histogram(
                "gpt_api_request_duration_seconds",
                "Time from request to the end of the response, by model and backend.",
            )?)?,
            ttfb: reg.add(histogram(
                "gpt_api_time_to_first_byte_seconds",
                "Time from request to the first response byte from the backend, by model and backend.",
            )?)?,
            tokens: reg.add(IntCounterVec::new(
                Opts::new("gpt_api_tokens_total", "Tokens reported by backends, by model, backend and kind."),
                &["model", "backend", "kind"],
            )?)?,
            cost: reg.add(CounterVec::new(
                Opts::new("gpt_api_cost_usd_total", "What requests cost in USD by the price table, by model and backend."),
                &["model", "backend"],
            )?)?,
            failovers: reg.add(IntCounterVec::new(
                Opts::new("gpt_api_failovers_total", "Attempts that moved on from a backend, by reason."),
                &["backend", "reason"],
            )?)?,
            backend_failures: reg.add(IntGaugeVec::new(
                Opts::new("gpt_api_backend_consecutive_failures", "Failures in a row of each backend."),
                &["backend"],
            )?)?,
            backend_cooling: reg.add(IntGaugeVec::new(
                Opts::new("gpt_api_backend_cooling", "1 while a backend is set aside after failures."),
                &["backend"],
            )?)?,
            in_flight: reg.add(IntGauge::new("gpt_api_requests_in_flight", "Requests being served.")?)?,
            reloads_applied: reloads.with_label_values(&["applied"]),
            reloads_rejected: reloads.with_label_values(&["rejected"]),
            usage_queued: reg.add(IntGauge::new(
                "gpt_api_usage_queue_depth",
                "Usage records accepted and not yet committed (queued, or waiting for a failing store).",
            )?)?,
            usage_queued_bytes: reg.add(IntGauge::new(
                "gpt_api_usage_queue_bytes",
                "Approximate bytes held by the usage records counted in gpt_api_usage_queue_depth.",
            )?)?,
            usage_written: reg.add(IntCounter::new(
                "gpt_api_usage_records_written_total",
                "Usage records committed.",
            )?)?,
            usage_dropped: reg.add(IntCounter::new(
                "gpt_api_usage_records_dropped_total",
                "Usage records lost (queue full, writes failing, shutdown).",
            )?)?,
            usage_write_errors: reg.add(IntCounter::new(
                "gpt_api_usage_write_errors_total",
                "Failed usage write attempts.",
            )?)?,
            ship_pending: reg.add(IntGauge::new(
                "gpt_api_usage_ship_pending_rows",
                "Usage rows in the monthly files not yet shipped to PostgreSQL (usage.postgres_url).",
            )?)?,
            shipped: reg.add(IntCounter::new(
                "gpt_api_usage_shipped_rows_total",
                "Usage rows shipped to PostgreSQL (a row sent again after a crash counts again).",
            )?)?,
            requests,
            models: ArcSwap::from_pointee(HashMap::default()),
            other: Arc::new(ModelSeries::new(OTHER_MODEL)),
            backends: ArcSwap::from_pointee(HashMap::default()),
            sources: Mutex::new(Sources::default()),
            registry,
        };
        Ok(Arc::new(metrics))
    }

    /// The model names reported under their own label; every other model is [`OTHER_MODEL`]. Call at start
    /// and on each reload. Series of models no longer configured keep their counts.
    pub fn set_known_models(&self, models: impl IntoIterator<Item = String>) {
        let old = self.models.load();
        let new: HashMap<String, Arc<ModelSeries>> = models
            .into_iter()
            .map(|name| {
                let series = old.get(&name).cloned();
                let series = series.unwrap_or_else(|| Arc::new(ModelSeries::new(&name)));
                (name, series)
            })
            .collect();
        self.models.store(Arc::new(new));
    }

    /// A request arrived (in-flight +1). Pair each call with one [`Metrics::request_finished`].
    pub fn request_started(&self) {
        self.in_flight.inc();
    }

    /// A request ended (in-flight -1): counts it, its latency, time to first byte and tokens.
    /// `backend` is the client that answered last (`None`: answered by the gateway itself).
    pub fn request_finished(
        &self,
        model: &str,
        backend: Option<&str>,
        status: u16,
        latency: Duration,
        ttfb: Option<Duration>,
        tokens: &TokenUsage,
    ) {
        self.with_series(model, backend, |s| {
            s.record(self, status, latency, ttfb, tokens);
        });
        // Last, so that a scrape that no longer sees the request in flight sees it counted.
        self.in_flight.dec();
    }

    /// What a request cost in USD, under the same (model, backend) labels as its
    /// [`Metrics::request_finished`]; at most once per request, and only when its cost is known. It may come
    /// later than the request's end, from another thread. A cost that is negative, infinite or not a number
    /// is ignored (a counter only goes up).
    #[allow(dead_code, reason = "the proxy calls it once it prices requests (#16)")]
    pub fn add_cost(&self, model: &str, backend: Option<&str>, usd: f64) {
        if !(usd.is_finite() && usd >= 0.0) {
            return;
        }
        self.with_series(model, backend, |s| {
            let counter = s.cost.get_or_init(|| {
                self.cost
                    .with_label_values(&[s.model.as_str(), s.backend.as_str()])
            });
            counter.inc_by(usd);
        });
    }

    /// Adds the tokens the gateway counted for a request whose backend reported none (they arrive after
    /// [`Metrics::request_finished`], from the estimator's thread).
    pub fn add_tokens(&self, model: &str, backend: Option<&str>, tokens: &TokenUsage) {
        self.with_series(model, backend, |s| s.count_tokens(tokens));
    }

    /// Runs `f` on the series of `model` (or [`OTHER_MODEL`]) and `backend` (or [`NO_BACKEND`]), created on first use.
    fn with_series(&self, model: &str, backend: Option<&str>, f: impl FnOnce(&Series)) {
        let models = self.models.load();
        let model = models.get(model).unwrap_or(&self.other);
        let backend = backend.unwrap_or(NO_BACKEND);
        let series = model.backends.load();
        match series.get(backend) {
            Some(s) => f(s),
            None => f(&model.add(self, backend)),
        }
    }

    /// One attempt moved on from `backend`. `reason`: "connect", "timeout", a status class from
    /// [`status_reason`] ("429", "4xx", "5xx"), or a status code (mapped the same way); else "other".
    pub fn failover(&self, backend: &str, reason: &str) {
        let reason = match reason.parse::<u16>() {
            Ok(status) => status_reason(status),
            Err(_) => reason,
        };
        let index = FAILOVER_REASONS.iter().position(|r| *r == reason);
        let index = index.unwrap_or(FAILOVER_REASONS.len() - 1);
        self.with_backend(backend, |b| {
            b.failovers[index]
                .get_or_init(|| {
                    self.failovers
                        .with_label_values(&[backend, FAILOVER_REASONS[index]])
                })
                .inc();
        });
    }

    /// The passive health of `backend` after an outcome: failures in a row, and whether it is set aside.
    pub fn backend_health(&self, backend: &str, failures: u32, cooling: bool) {
        self.with_backend(backend, |b| {
            b.failures.set(i64::from(failures));
            b.cooling.set(i64::from(cooling));
        });
    }

    /// A config reload was applied (`true`) or rejected (`false`). Not needed with [`Metrics::watch_reloads`].
    pub fn reload(&self, applied: bool) {
        if applied {
            self.reloads_applied.inc();
        } else {
            self.reloads_rejected.inc();
        }
    }

    /// Reads the usage queue's counters at each scrape.
    pub fn watch_usage(&self, stats: Arc<UsageStats>) {
        self.sources().usage = Some(stats);
    }

    /// Reads the shipper's counts (rows waiting, rows shipped) at each scrape.
    pub fn watch_shipping(&self, stats: Arc<ShipStats>) {
        self.sources().shipping = Some(stats);
    }

    /// Shows `gpt_api_redis_up` from now on, `up()` read at each scrape (absent without Redis).
    pub fn watch_redis(&self, up: impl Fn() -> bool + Send + Sync + 'static) {
        let help = "1 while Redis, where the nodes share limits and budgets, answers; else 0.";
        let gauge =
            IntGauge::new("gpt_api_redis_up", help).and_then(|g| Reg(&self.registry).add(g));
        match gauge {
            Ok(gauge) => self.sources().redis = Some((gauge, Box::new(up))),
            Err(e) => log::warn!("metrics: cannot add gpt_api_redis_up: {e}"),
        }
    }

    /// Reads the reload counts `(applied, rejected)` at each scrape, e.g. from the reloader's `ReloadStats`.
    /// Each counter shows the larger of these counts and the calls to [`Metrics::reload`], so using both
    /// does not count twice. Nothing in the gateway uses it today (the reloader calls [`Metrics::reload`]);
    /// kept for its test until a reloader keeps counts of its own.
    #[cfg(test)]
    pub fn watch_reloads(&self, counts: impl Fn() -> (u64, u64) + Send + Sync + 'static) {
        self.sources().reloads = Some(Box::new(counts));
    }

    /// Every series in the Prometheus text format (what the scrape service answers).
    pub fn render(&self) -> String {
        self.read_sources();
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            log::warn!("metrics: cannot render: {e}");
        }
        out
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies the counts owned elsewhere; under the lock so two scrapes never add the same difference.
    fn read_sources(&self) {
        let sources = self.sources();
        if let Some(usage) = &sources.usage {
            let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            self.usage_queued.set(gauge(usage.waiting.load(Relaxed)));
            self.usage_queued_bytes
                .set(gauge(usage.waiting_bytes.load(Relaxed)));
            raise(&self.usage_written, usage.written.load(Relaxed));
            raise(&self.usage_dropped, usage.dropped.load(Relaxed));
            raise(&self.usage_write_errors, usage.write_errors.load(Relaxed));
        }
        if let Some(ship) = &sources.shipping {
            let pending = ship.pending.load(Relaxed);
            self.ship_pending
                .set(i64::try_from(pending).unwrap_or(i64::MAX));
            raise(&self.shipped, ship.shipped.load(Relaxed));
        }
        if let Some((gauge, up)) = &sources.redis {
            gauge.set(i64::from(up()));
        }
        if let Some(counts) = &sources.reloads {
            let (applied, rejected) = counts();
            raise(&self.reloads_applied, applied);
            raise(&self.reloads_rejected, rejected);
        }
    }

    fn with_backend(&self, backend: &str, f: impl FnOnce(&BackendSeries)) {
        if let Some(b) = self.backends.load().get(backend) {
            return f(b);
        }
        let created = Arc::new(BackendSeries {
            failures: self.backend_failures.with_label_values(&[backend]),
            cooling: self.backend_cooling.with_label_values(&[backend]),
            failovers: Default::default(),
        });
        f(&insert(&self.backends, backend, created))
    }
}

impl ModelSeries {
    fn new(label: &str) -> Self {
        ModelSeries {
            label: label.to_owned(),
            backends: ArcSwap::from_pointee(HashMap::default()),
        }
    }

    /// The first request of this model from `backend`: creates its series.
    fn add(&self, m: &Metrics, backend: &str) -> Arc<Series> {
        let labels = [self.label.as_str(), backend];
        let tokens =
            TOKEN_KINDS.map(|kind| m.tokens.with_label_values(&[labels[0], backend, kind]));
        let series = Arc::new(Series {
            model: self.label.clone(),
            backend: backend.to_owned(),
            latency: m.latency.with_label_values(&labels),
            ttfb: m.ttfb.with_label_values(&labels),
            tokens,
            cost: OnceLock::new(),
            statuses: ArcSwap::from_pointee(Vec::new()),
        });
        insert(&self.backends, backend, series)
    }
}

impl Series {
    fn record(
        &self,
        m: &Metrics,
        status: u16,
        latency: Duration,
        ttfb: Option<Duration>,
        tokens: &TokenUsage,
    ) {
        self.count_status(m, status);
        self.latency.observe(latency.as_secs_f64());
        if let Some(ttfb) = ttfb {
            self.ttfb.observe(ttfb.as_secs_f64());
        }
        self.count_tokens(tokens);
    }

    fn count_tokens(&self, tokens: &TokenUsage) {
        let counts = [
            tokens.prompt,
            tokens.completion,
            tokens.cached,
            tokens.reasoning,
        ];
        for (counter, count) in self.tokens.iter().zip(counts) {
            match count.map(u64::try_from) {
                Some(Ok(n)) if n > 0 => counter.inc_by(n),
                _ => {}
            }
        }
    }

    fn count_status(&self, m: &Metrics, status: u16) {
        if let Some((_, c)) = self.statuses.load().iter().find(|(s, _)| *s == status) {
            return c.inc();
        }
        let code = status.to_string();
        let counter = m
            .requests
            .with_label_values(&[&self.model, &self.backend, &code]);
        counter.inc();
        self.statuses.rcu(|list| {
            let mut list = Vec::clone(list);
            if !list.iter().any(|(s, _)| *s == status) {
                list.push((status, counter.clone()));
            }
            list
        });
    }
}

#[cfg(test)]
mod tests;
