//! Small helpers for the metrics: registering collectors, adding series once, raising counters to a total.

use foldhash::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, Registry};

use super::DURATION_BUCKETS;

/// Adds `value` under `key` unless another thread was first; returns what the map holds then.
pub(super) fn insert<T>(
    map: &ArcSwap<HashMap<String, Arc<T>>>,
    key: &str,
    value: Arc<T>,
) -> Arc<T> {
    let mut kept = value.clone();
    map.rcu(|old| {
        let mut new = HashMap::clone(old);
        kept = new
            .entry(key.to_owned())
            .or_insert_with(|| value.clone())
            .clone();
        new
    });
    kept
}

/// Moves a counter up to a total counted elsewhere.
pub(super) fn raise(counter: &IntCounter, total: u64) {
    let shown = counter.get();
    if total > shown {
        counter.inc_by(total - shown);
    }
}

pub(super) fn histogram(name: &str, help: &str) -> Result<HistogramVec, prometheus::Error> {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    HistogramVec::new(opts, &["model", "backend"])
}

/// Registers collectors and hands them back for use.
pub(super) struct Reg<'a>(pub(super) &'a Registry);

impl Reg<'_> {
    pub(super) fn add<C: Collector + Clone + 'static>(
        &self,
        collector: C,
    ) -> Result<C, prometheus::Error> {
        self.0.register(Box::new(collector.clone()))?;
        Ok(collector)
    }
}
