//! One watcher for the files the gateway reads at run time: the config (with its price file) and the TLS
//! certificate, each re-read when its contents change (polled) and on SIGHUP (forced).

use std::hash::{DefaultHasher, Hasher};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use super::server::tls::CertStore;
use super::Gateway;

/// Bytes of the price file that count for its fingerprint (the config refuses larger files).
const PRICE_FILE_WATCHED: u64 = 8 << 20;
/// How often the files are checked for changes.
const POLL: Duration = Duration::from_secs(1);
/// The target of the config reload's lines.
const RELOAD_LOG: &str = "gpt_api::proxy::reload";
/// The target of the certificate's lines, as before the watchers were one.
const TLS_LOG: &str = "gpt_api::proxy::server::tls";

/// Identifies file contents, so an unchanged file is not parsed again.
pub(super) fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

/// The config file's contents and its price file's (`pricing.file`, read as far as the config reads it): a
/// change to either reloads the config.
pub(super) fn files_fingerprint(config: &[u8], pricing_file: Option<&Path>) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(config);
    if let Some(path) = pricing_file {
        let mut prices = Vec::new();
        let read = std::fs::File::open(path)
            .and_then(|f| f.take(PRICE_FILE_WATCHED).read_to_end(&mut prices));
        match read {
            Ok(_) => h.write(&prices),
            // A missing file is a state of its own: its return is a change.
            Err(_) => h.write_u8(0xff),
        }
    }
    h.finish()
}

/// Re-reads the config, then the certificate (whose paths the config may just have changed), every
/// [`POLL`] and on SIGHUP, for the life of the server.
pub(super) struct Watcher {
    pub gateway: Arc<Gateway>,
    /// The listener's certificate, when it serves HTTPS.
    pub certs: Option<Arc<CertStore>>,
}

#[async_trait]
impl BackgroundService for Watcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!(target: RELOAD_LOG, "cannot listen for SIGHUP: {e}");
                None
            }
        };
        let mut ticks = tokio::time::interval(POLL);
        let mut certs = self.certs.clone().map(CertCheck::new);
        loop {
            let force = tokio::select! {
                _ = ticks.tick() => false,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
                _ = shutdown.changed() => return,
            };
            let why = if force { "SIGHUP" } else { "file changed" };
            self.gateway.reload(force, why).await;
            if let Some(check) = certs.as_mut() {
                check.run(&self.gateway, force);
            }
        }
    }
}

/// The certificate's part of a watch round.
struct CertCheck {
    store: Arc<CertStore>,
    /// `server.tls` was removed from the config and that was said once.
    warned_removed: bool,
}

impl CertCheck {
    fn new(store: Arc<CertStore>) -> Self {
        CertCheck {
            store,
            warned_removed: false,
        }
    }

    /// Re-reads the certificate when its files changed (or always, with `force`), at the paths the config in
    /// force names. Handshakes after a reload present the new certificate.
    fn run(&mut self, gateway: &Gateway, force: bool) {
        let Some(paths) = gateway.runtime().config.server.tls.clone() else {
            if !self.warned_removed {
                log::warn!(
                    target: TLS_LOG,
                    "server.tls was removed from the config: the listener serves HTTPS until a restart"
                );
                self.warned_removed = true;
            }
            return;
        };
        self.warned_removed = false;
        match self.store.reload(&paths, force) {
            Ok(true) => log::info!(
                target: TLS_LOG,
                "TLS certificate reloaded from {}",
                paths.cert_path.display()
            ),
            Ok(false) => {}
            Err(e) => {
                log::error!(target: TLS_LOG, "TLS certificate reload rejected, the running one stays: {e}")
            }
        }
    }
}
