//! The `gpt-api` command: parse flags, load and check the gateway config, then run the Pingora server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use gpt_api::config::Config;
use gpt_api::proxy::server::{self, ServerArgs};

/// OpenAI-compatible API gateway: routes each request by its `model` to a configured backend.
///
/// Two files configure it: the gateway config (`--config`, the `openai_clients:` YAML: backends,
/// keys, routing) and, optionally, Pingora's server conf (`-c`: threads, pid_file, upgrade_sock,
/// grace periods). Without `-c`, one worker thread per core is used.
#[derive(Debug, Parser)]
#[command(name = "gpt-api", version)]
struct Cli {
    /// Gateway config (the `openai_clients:` YAML).
    #[arg(long, value_name = "PATH", default_value = "config/config.yaml")]
    config: PathBuf,

    /// Listen address, overriding `server.listen` (default 0.0.0.0:8000).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,

    /// Validate the gateway config and exit: 0 with a summary, 1 with the errors (like `nginx -t`).
    #[arg(long)]
    check: bool,

    /// Pingora server conf (YAML: threads, pid_file, upgrade_sock, grace_period_seconds...).
    #[arg(short = 'c', long = "conf", value_name = "PATH")]
    conf: Option<String>,

    /// Run in the background (Pingora daemon mode).
    #[arg(short, long)]
    daemon: bool,

    /// Take over the listening sockets of a running instance (Pingora graceful upgrade).
    #[arg(short, long)]
    upgrade: bool,

    /// Test the Pingora server conf and exit.
    #[arg(short, long)]
    test: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!(
                "gpt-api: invalid config {}:\n{errors}",
                cli.config.display()
            );
            return ExitCode::from(1);
        }
    };
    if cli.check {
        println!(
            "gpt-api: {} is valid: {}",
            cli.config.display(),
            config.summary()
        );
        return ExitCode::SUCCESS;
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    log::info!(
        "gpt-api {} starting: {}",
        env!("CARGO_PKG_VERSION"),
        config.summary()
    );
    let args = ServerArgs {
        listen: cli.listen.unwrap_or_else(|| config.server.listen.clone()),
        config_path: cli.config.clone(),
        conf: cli.conf,
        daemon: cli.daemon,
        upgrade: cli.upgrade,
        test: cli.test,
    };
    match server::run(config, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpt-api: {e}");
            ExitCode::from(1)
        }
    }
}
