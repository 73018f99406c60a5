//! Config reload without a restart (asked for by the file watcher, SIGHUP and `GET /v1/models`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::watch::files_fingerprint;
use super::Runtime;
use crate::config::{Config, KeyChanges};
use crate::metrics::Metrics;

/// What a reload attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The file is as it was last read.
    Unchanged,
    Applied,
    /// Invalid or unreadable: the running config stays.
    Rejected,
}

/// Re-reads the config file on request; owns what it needs to tell a changed file from an unchanged one.
pub(super) struct Reloader {
    config_path: PathBuf,
    /// Fingerprint of the config file contents last read.
    fingerprint: AtomicU64,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// `fingerprint`: of the file contents the running config was loaded from.
    pub(super) fn new(config_path: PathBuf, fingerprint: u64) -> Self {
        Reloader {
            config_path,
            fingerprint: AtomicU64::new(fingerprint),
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// Re-reads the config file; swaps a new runtime into `runtime` when it changed (or always, with `force`)
    /// and is valid. Requests already running keep the config they started with; new ones see the new one.
    pub(super) async fn reload(
        &self,
        runtime: &ArcSwap<Runtime>,
        metrics: &Metrics,
        force: bool,
        why: &str,
    ) -> Reload {
        let _one_at_a_time = self.one_at_a_time.lock().await;
        let bytes = match tokio::fs::read(&self.config_path).await {
            Ok(b) => b,
            Err(e) => {
                if force {
                    log::error!(
                        "config reload ({why}): cannot read {}: {e}",
                        self.config_path.display()
                    );
                }
                return Reload::Rejected;
            }
        };
        let pricing_file = runtime.load().config.pricing_file.clone();
        let print = files_fingerprint(&bytes, pricing_file.as_deref());
        if !force && self.fingerprint.load(Ordering::Relaxed) == print {
            return Reload::Unchanged;
        }
        // Remember even an invalid version, so it is reported once rather than at every poll.
        self.fingerprint.store(print, Ordering::Relaxed);
        let text = String::from_utf8_lossy(&bytes);
        let outcome = match Config::parse(&text, &|name| std::env::var(name).ok()) {
            Ok(config) => {
                let refused = refusal(&runtime.load().config, &config);
                if let Some(reason) = refused {
                    log::error!(
                        "config reload ({why}) rejected, the running config stays: {reason}"
                    );
                    Reload::Rejected
                } else {
                    apply(runtime, config, why);
                    Reload::Applied
                }
            }
            Err(errors) => {
                log::error!("config reload ({why}) rejected, the running config stays:\n{errors}");
                Reload::Rejected
            }
        };
        metrics.reload(outcome == Reload::Applied);
        outcome
    }
}

fn apply(runtime: &ArcSwap<Runtime>, config: Config, why: &str) {
    let old = runtime.load_full();
    if config.server.listen != old.config.server.listen {
        log::warn!(
            "server.listen changed to {}: this takes a restart",
            config.server.listen
        );
    }
    if config.usage != old.config.usage {
        log::warn!("the usage section changed: this takes a restart");
    }
    if config.cluster.redis != old.config.cluster.redis {
        log::warn!(
            "cluster.redis_url, redis_timeout_ms or on_redis_down changed: a restart applies it"
        );
    }
    let summary = config.summary();
    let keys = KeyChanges::between(old.config.auth.as_ref(), config.auth.as_ref());
    runtime.store(Arc::new(Runtime::new(config, Some(&old))));
    if !keys.is_empty() {
        log::info!("gateway keys changed ({why}): {keys}");
    }
    log::info!("config reloaded ({why}): {summary}");
}

/// Why a valid `new` config must still not replace the `running` one. Keys that vanish from the file are
/// far more often a truncated write or a bad merge than a decision to let every caller in, so a reload
/// never opens the gateway; a restart, which logs the open gateway's warning, does.
fn refusal(running: &Config, new: &Config) -> Option<&'static str> {
    // `auth.keys` cannot be an empty list (a config error), so no section is the only way to have no keys.
    (running.auth.is_some() && new.auth.is_none()).then_some(
        "the new config has no auth section, which would turn off gateway keys; \
         opening the gateway takes a restart",
    )
}
