//! Config reload without a restart: on a file change (polled), on SIGHUP, and on `GET /v1/models`.

use std::hash::{DefaultHasher, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use super::{Gateway, Runtime};
use crate::config::{Config, KeyChanges};

/// How often the config file is checked for changes.
const POLL: Duration = Duration::from_secs(1);

/// What a reload attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The file is as it was last read.
    Unchanged,
    Applied,
    /// Invalid or unreadable: the running config stays.
    Rejected,
}

/// Identifies file contents, so an unchanged file is not parsed again.
pub(super) fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

impl Gateway {
    /// Re-reads the config file; applies it when it changed (or always, with `force`) and is valid.
    /// Requests already running keep the config they started with; new ones see the new one at once.
    pub async fn reload(&self, force: bool, why: &str) -> Reload {
        let _one_at_a_time = self.reload_lock.lock().await;
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
        let print = fingerprint(&bytes);
        if !force && self.fingerprint.load(Ordering::Relaxed) == print {
            return Reload::Unchanged;
        }
        // Remember even an invalid version, so it is reported once rather than at every poll.
        self.fingerprint.store(print, Ordering::Relaxed);
        let text = String::from_utf8_lossy(&bytes);
        let outcome = match Config::parse(&text, &|name| std::env::var(name).ok()) {
            Ok(config) => {
                let refused = refusal(&self.runtime.load().config, &config);
                if let Some(reason) = refused {
                    log::error!(
                        "config reload ({why}) rejected, the running config stays: {reason}"
                    );
                    Reload::Rejected
                } else {
                    self.apply(config, why);
                    Reload::Applied
                }
            }
            Err(errors) => {
                log::error!("config reload ({why}) rejected, the running config stays:\n{errors}");
                Reload::Rejected
            }
        };
        self.metrics.reload(outcome == Reload::Applied);
        outcome
    }

    fn apply(&self, config: Config, why: &str) {
        let old = self.runtime.load_full();
        if config.server.listen != old.config.server.listen {
            log::warn!(
                "server.listen changed to {}: this takes a restart",
                config.server.listen
            );
        }
        if config.usage != old.config.usage {
            log::warn!("the usage section changed: this takes a restart");
        }
        let summary = config.summary();
        let keys = KeyChanges::between(old.config.auth.as_ref(), config.auth.as_ref());
        self.runtime
            .store(Arc::new(Runtime::new(config, Some(&old))));
        if !keys.is_empty() {
            log::info!("gateway keys changed ({why}): {keys}");
        }
        log::info!("config reloaded ({why}): {summary}");
    }
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

/// Watches the config file and SIGHUP for the life of the server.
pub(super) struct ReloadService(pub Arc<Gateway>);

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        let mut ticks = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    self.0.reload(false, "file changed").await;
                }
                Some(()) = async { hangup.as_mut()?.recv().await } => {
                    self.0.reload(true, "SIGHUP").await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
