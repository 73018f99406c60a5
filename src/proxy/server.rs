//! Builds and runs the Pingora server: server conf (threads, pid file, upgrade socket), the proxy service,
//! the usage writer, whose last records are written after the server has stopped, and the shipper of those
//! records to PostgreSQL, which ships them last.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::proxy::http_proxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use tokio::sync::Mutex;

use super::edge::Edge;
use super::listen::Prebound;
use super::watch::{files_fingerprint, Watcher};
use super::{Gateway, GatewayParts, Proxy};
use crate::config::Config;
use crate::logging;
use crate::metrics::Metrics;
use crate::money::Usd;
use crate::ratelimit::budget::Spent;
use crate::usage::ship::Shipper;
use crate::usage::{self, Writer};
use pingora::connectors::ConnectorOptions;

pub mod tls;

/// How long the token estimates still queued at shutdown may take.
const ESTIMATE_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the shipper's last pass may take at shutdown.
const SHIP_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts the usage shipper's own thread once the server runs (after a daemon's fork).
struct ShipperService(Arc<Shipper>);

#[async_trait]
impl BackgroundService for ShipperService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        if let Err(e) = self.0.start() {
            log::error!("usage shipping: cannot start its thread: {e}");
        }
    }
}

/// Runs the usage writer's batching loop on its own Pingora runtime.
struct UsageWriterService(Arc<Mutex<Writer>>);

#[async_trait]
impl BackgroundService for UsageWriterService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.lock().await.run(shutdown).await;
    }
}

/// Writes out the buffered log every [`logging::FLUSH_INTERVAL`], and once more when the server stops.
struct LogFlushService(logging::Flusher);

#[async_trait]
impl BackgroundService for LogFlushService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticks = tokio::time::interval(logging::FLUSH_INTERVAL);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.0.flush(),
                _ = shutdown.changed() => break,
            }
        }
        self.0.flush();
    }
}

/// Starts the shared limit store (its thread, connection and probe) once the server runs: after Pingora's
/// daemon fork, which would lose a thread started before it.
struct SharedLimits(Arc<Gateway>);

#[async_trait]
impl BackgroundService for SharedLimits {
    async fn start(&self, _shutdown: ShutdownWatch) {
        self.0.limiter().start();
    }
}

/// Pingora's own command-line options, next to the gateway's `--config`.
#[derive(Debug, Clone, Default)]
pub struct ServerArgs {
    /// Pingora server conf (`-c`): threads, pid_file, upgrade_sock, grace periods.
    pub conf: Option<String>,
    pub daemon: bool,
    pub upgrade: bool,
    /// Test the server conf and exit (`-t`).
    pub test: bool,
    /// Address to listen on (already resolved from `--listen` or `server.listen`).
    pub listen: String,
    /// The gateway config file, re-read on reload.
    pub config_path: std::path::PathBuf,
    /// Flushes the buffered log (run as a service, so it works after Pingora's daemon fork).
    pub log_flusher: Option<logging::Flusher>,
}

/// The server conf used without `-c`: one worker thread per core without work stealing, files named after
/// the gateway.
fn default_conf() -> Result<ServerConf, String> {
    let mut conf = ServerConf::new().ok_or("cannot build the default server conf")?;
    conf.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // One runtime per worker thread (see conf/gpt-api.yaml): cheaper per request than work stealing.
    conf.work_stealing = false;
    conf.pid_file = "/tmp/gpt-api.pid".into();
    conf.upgrade_sock = "/tmp/gpt-api_upgrade.sock".into();
    conf.grace_period_seconds = Some(5);
    conf.graceful_shutdown_timeout_seconds = Some(30);
    conf.fast_timeout_to_tokio_threshold_seconds = Some(TOKIO_TIMERS_FROM_SECS);
    Ok(conf)
}

/// Timeouts of at least a second (all of the gateway's) run on tokio's timers instead of Pingora's "fast" ones.
/// Each worker thread has a runtime of its own, so tokio's timer wheel is not shared; a fast timer costs more per
/// request (measured: ~1.2k instructions for a small request, bench/RESULTS.md #21.2), and its entries stay in
/// its tree until they would have fired (a keep-alive wait's for 75 s), cancelled or not.
const TOKIO_TIMERS_FROM_SECS: u64 = 0;

/// A server conf file, with the tokio timers above unless it sets `fast_timeout_to_tokio_threshold_seconds`.
fn load_conf(path: &str) -> Result<ServerConf, String> {
    let mut conf =
        ServerConf::load_from_yaml(path).map_err(|e| format!("server conf {path}: {e}"))?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("server conf {path}: {e}"))?;
    let sets_threshold = serde_yaml::from_str::<serde_yaml::Mapping>(&text)
        .is_ok_and(|m| m.contains_key("fast_timeout_to_tokio_threshold_seconds"));
    if !sets_threshold {
        conf.fast_timeout_to_tokio_threshold_seconds = Some(TOKIO_TIMERS_FROM_SECS);
    }
    Ok(conf)
}

/// Starts serving; returns only when the server stops (or at once with `test`).
pub fn run(config: Config, args: ServerArgs) -> Result<(), String> {
    let conf = match &args.conf {
        Some(path) => load_conf(path)?,
        None => default_conf()?,
    };
    let opt = Opt {
        upgrade: args.upgrade,
        daemon: args.daemon,
        nocapture: false,
        test: args.test,
        conf: None,
    };
    // Read before taking over the sockets (-u), so a bad certificate stops an upgrade while the old process serves.
    let certs = match &config.server.tls {
        Some(paths) => Some(Arc::new(
            tls::CertStore::load(paths).map_err(|e| format!("server.tls: {e}"))?,
        )),
        None => None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let (queue, writer) = usage::channel(&config.usage);
    let writer = Arc::new(Mutex::new(writer));
    server.add_service(background_service(
        "usage writer",
        UsageWriterService(writer.clone()),
    ));
    if let Some(flusher) = args.log_flusher.clone() {
        server.add_service(background_service("log flush", LogFlushService(flusher)));
    }
    let bytes = std::fs::read(&args.config_path)
        .map_err(|e| format!("cannot read {}: {e}", args.config_path.display()))?;
    let metrics = Metrics::new().map_err(|e| format!("metrics: {e}"))?;
    metrics.watch_usage(queue.stats());
    let shipper = Shipper::new(&config.usage, Arc::clone(&config.cluster.node))
        .map_err(|e| e.to_string())?
        .map(Arc::new);
    if let Some(shipper) = &shipper {
        metrics.watch_shipping(shipper.stats());
        server.add_service(background_service(
            "usage shipper",
            ShipperService(Arc::clone(shipper)),
        ));
    }
    if let Some(addr) = &config.server.metrics_listen {
        let service = crate::metrics::service(metrics.clone(), addr);
        server.add_service(Prebound::new(service, args.upgrade)?);
    }
    let parts = GatewayParts {
        usage: queue,
        config_path: args.config_path.clone(),
        fingerprint: files_fingerprint(&bytes, config.pricing_file.as_deref()),
        connector: ConnectorOptions::from_server_conf(&server.configuration),
        metrics,
    };
    let spend_source = config.usage.enabled.then(|| SpendSource {
        dir: config.usage.dir.clone(),
        postgres: config.usage.postgres_url.clone(),
    });
    let gateway = Arc::new(Gateway::new(config, parts)?);
    if let Some(source) = spend_source {
        seed_spend(&gateway, &source);
    }
    if gateway.limiter().shared_up().is_some() {
        server.add_service(background_service(
            "shared limits",
            SharedLimits(gateway.clone()),
        ));
    }
    server.add_service(background_service(
        "file watcher",
        Watcher {
            gateway: gateway.clone(),
            certs: certs.clone(),
        },
    ));
    if let Some(admin) = &gateway.runtime().config.server.admin {
        let service = super::admin::service(gateway.clone(), &admin.listen, admin.is_loopback());
        server.add_service(Prebound::new(service, args.upgrade)?);
    }
    let proxy = http_proxy(&server.configuration, Proxy(gateway.clone()));
    let mut service = Service::new(
        "Pingora HTTP Proxy Service".to_string(),
        Edge::new(proxy, gateway.clone()),
    );
    match certs {
        Some(store) => service.add_tls_with_settings(&args.listen, None, store.settings()?),
        // No read buffer under plain HTTP: Pingora reads heads and bodies into buffers of its own, and the
        // default 64 KiB one was most of what an idle keep-alive connection costs. (TLS keeps it: rustls reads
        // 16 KiB records, where the buffer saves syscalls.)
        None => service.add_listener(
            ListenerConfig::tcp(args.listen.clone()).l4_buffer(L4BufferSettings::default().read(0)),
        ),
    }
    server.add_service(Prebound::new(service, args.upgrade)?);
    server.run(RunArgs::default());
    // Every request has ended (or was dropped with its runtime, leaving its record): count the tokens still
    // to be counted, whose records then join the queue, and write what is queued.
    let dropped = gateway.accountant().drain(ESTIMATE_DRAIN);
    if dropped > 0 {
        log::error!("{dropped} token estimate(s) not finished in {ESTIMATE_DRAIN:?}: their records are lost");
    }
    writer.blocking_lock().drain_now();
    if let Some(shipper) = shipper {
        shipper.stop(SHIP_DRAIN);
    }
    log::info!("usage records written; exiting");
    Ok(())
}

/// Where the spend of each key is read back from at startup.
struct SpendSource {
    /// This node's monthly files.
    dir: std::path::PathBuf,
    /// The records of every node, when shipped there: the spend of the whole cluster.
    postgres: Option<crate::secret::Secret>,
}

/// Reads back what each key spent this month and today, for its budgets: from PostgreSQL when records are
/// shipped there (every node's spend; this node's files if it cannot be read), else from this node's files.
/// A shared limit store (Redis) takes it only if no node did for this day and month. (Records still in a
/// previous process's spool are imported after this and not counted until the next start.)
fn seed_spend(gateway: &Gateway, source: &SpendSource) {
    let now = chrono::Local::now();
    let shared = source.postgres.as_ref().and_then(|url| {
        usage::ship::spend_by_key_blocking(url, now)
            .map_err(|e| log::warn!("budgets: cannot read the spend from PostgreSQL ({e}); reading this node's files"))
            .ok()
    });
    let (spend, from) = match shared {
        Some(spend) => (Ok(spend), "PostgreSQL"),
        None => (usage::spend_by_key(&source.dir, now), "this node's records"),
    };
    let spend: std::collections::HashMap<String, usage::Spend> = match spend {
        Ok(spend) => spend,
        Err(e) => {
            log::error!("budgets: cannot read back this month's spend: {e}");
            return;
        }
    };
    for (key, spent) in spend {
        let spent = Spent {
            day: Usd::from_f64(spent.day_usd),
            month: Usd::from_f64(spent.month_usd),
        };
        gateway.limiter().seed(&key, spent, now);
        log::info!(
            "budgets: key {} spent {} today, {} this month (from {from})",
            crate::escape::field(&key),
            spent.day.display(),
            spent.month.display()
        );
    }
}

/// SIGHUP means "reload", but its default action ends the process: take it over before the server
/// starts, so one sent before the reload service runs is not fatal. Tokio keeps a registered handler for
/// the life of the process (across Pingora's daemon fork too).
pub fn catch_sighup_early() {
    let registered = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| {
            rt.block_on(async {
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map(drop)
            })
        });
    if !matches!(registered, Ok(Ok(()))) {
        eprintln!("gpt-api: could not take over SIGHUP early; one sent during start-up may stop the process");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn conf_with(extra: &str) -> ServerConf {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("---\nversion: 1\nthreads: 2\n{extra}")).unwrap();
        load_conf(file.path().to_str().unwrap()).unwrap()
    }

    #[test]
    fn timeouts_run_on_tokio_timers_unless_the_conf_says_otherwise() {
        assert_eq!(
            default_conf()
                .unwrap()
                .fast_timeout_to_tokio_threshold_seconds,
            Some(0)
        );
        let plain = conf_with("");
        assert_eq!(plain.threads, 2);
        assert_eq!(plain.fast_timeout_to_tokio_threshold_seconds, Some(0));
        let set = conf_with("fast_timeout_to_tokio_threshold_seconds: 120\n");
        assert_eq!(set.fast_timeout_to_tokio_threshold_seconds, Some(120));
        let off = conf_with("fast_timeout_to_tokio_threshold_seconds:\n");
        assert_eq!(off.fast_timeout_to_tokio_threshold_seconds, None);
    }
}
