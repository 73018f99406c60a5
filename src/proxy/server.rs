//! Builds and runs the Pingora server: server conf (threads, pid file, upgrade socket) and the proxy service.

use pingora::proxy::http_proxy_service;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

use super::Gateway;
use crate::config::Config;

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
}

/// The server conf used without `-c`: one worker thread per core, files named after the gateway.
fn default_conf() -> Result<ServerConf, String> {
    let mut conf = ServerConf::new().ok_or("cannot build the default server conf")?;
    conf.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    conf.pid_file = "/tmp/gpt-api.pid".into();
    conf.upgrade_sock = "/tmp/gpt-api_upgrade.sock".into();
    conf.grace_period_seconds = Some(5);
    conf.graceful_shutdown_timeout_seconds = Some(30);
    Ok(conf)
}

/// Starts serving; returns only when the server stops (or at once with `test`).
pub fn run(config: Config, args: ServerArgs) -> Result<(), String> {
    let conf = match &args.conf {
        Some(path) => {
            ServerConf::load_from_yaml(path).map_err(|e| format!("server conf {path}: {e}"))?
        }
        None => default_conf()?,
    };
    let opt = Opt {
        upgrade: args.upgrade,
        daemon: args.daemon,
        nocapture: false,
        test: args.test,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Gateway::new(config));
    service.add_tcp(&args.listen);
    server.add_service(service);
    server.run_forever()
}
