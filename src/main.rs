//! The `gpt-api` command: parse flags, load and check the gateway config, then run the Pingora server
//! (or, with the `usage` subcommand, print a usage report).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use gpt_api::config::Config;
use gpt_api::proxy::server::{self, ServerArgs};

/// mimalloc: a request allocates and frees a few hundred small blocks (Pingora's headers and sessions);
/// glibc's malloc spent about a fifth of each request's instructions on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// OpenAI-compatible API gateway: routes each request by its `model` to a configured backend.
///
/// Two files configure it: the gateway config (`--config`, the `openai_clients:` YAML: backends,
/// keys, routing) and, optionally, Pingora's server conf (`-c`: threads, pid_file, upgrade_sock,
/// grace periods). Without `-c`, one worker thread per core is used.
///
/// Without a subcommand it runs the gateway with the options below. `gpt-api usage ...` instead
/// prints requests, tokens, errors and latency from the recorded usage files and exits (see
/// `gpt-api usage --help`).
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

    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    Usage(gpt_api::report::UsageArgs),
}

/// `gpt-api usage`: the report on stdout, or the error on stderr and exit 1.
fn usage_report(args: &gpt_api::report::UsageArgs, default_config: &std::path::Path) -> ExitCode {
    let today = chrono::Local::now().date_naive();
    match gpt_api::report::run(args, default_config, today) {
        // Written, not `print!`ed: a closed pipe (`| head`) is an exit 1, not a panic.
        Ok(report) => match std::io::Write::write_all(&mut std::io::stdout(), report.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(1),
        },
        Err(e) => {
            eprintln!("gpt-api usage: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::Usage(args)) = &cli.cmd {
        return usage_report(args, &cli.config);
    }
    if !cli.check {
        server::catch_sighup_early();
    }
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
    // Kept to the end of `main`: dropping it closes the log files.
    let logging = match gpt_api::logging::init(&config.logging) {
        Ok(logging) => logging,
        Err(e) => {
            eprintln!("gpt-api: {e}");
            return ExitCode::from(1);
        }
    };
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
        log_flusher: Some(logging.flusher()),
    };
    match server::run(config, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpt-api: {e}");
            ExitCode::from(1)
        }
    }
}
