//! The `logging:` section (level, log directory, rotation and retention) and `server.metrics_listen`.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::compile::{Errors, Section};
use super::file::LoggingFile;

/// `logging.level` when absent (the `RUST_LOG` environment variable overrides it).
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// The `logging:` section, read at startup: a reload does not reopen the logs (only `level` can be re-applied,
/// with `crate::logging::Logging::set_level`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingSettings {
    /// A `RUST_LOG`-style spec: `info`, or `warn,gpt_api=debug`.
    pub level: String,
    /// `None`: everything goes to stderr. Else an info log and an error log in this directory (created if
    /// missing), and warnings and errors also to stderr.
    pub dir: Option<PathBuf>,
    /// The info log is rotated daily and when it reaches this size.
    pub info_max_bytes: u64,
    /// Rotated info logs kept; older ones are deleted.
    pub info_keep_files: usize,
    /// The error log is rotated daily and when it reaches this size.
    pub error_max_bytes: u64,
    /// Rotated error logs kept.
    pub error_keep_files: usize,
}

const MB: u64 = 1024 * 1024;

impl Default for LoggingSettings {
    /// What the Python gateway kept: info logs of at most 100 MB for 10 days, error logs daily for 30 days.
    fn default() -> Self {
        LoggingSettings {
            level: DEFAULT_LOG_LEVEL.to_string(),
            dir: None,
            info_max_bytes: 100 * MB,
            info_keep_files: 10,
            error_max_bytes: 100 * MB,
            error_keep_files: 30,
        }
    }
}

pub(super) fn compile_logging(f: LoggingFile, errors: &mut Errors) -> LoggingSettings {
    let defaults = LoggingSettings::default();
    let s = &mut Section::new("logging".into(), errors);
    let level = f.level.filter(|level| valid_level(s, level));
    let dir = f.dir.filter(|dir| s.non_empty("dir", dir));
    let megabytes = |s: &mut Section, field: &str, value: Option<i64>, default: u64| {
        s.positive(field, value, default / MB).saturating_mul(MB)
    };
    let count = |s: &mut Section, field: &str, value: Option<i64>, default: usize| {
        let n = s.positive(field, value, u64::try_from(default).unwrap_or(u64::MAX));
        usize::try_from(n).unwrap_or(usize::MAX)
    };
    LoggingSettings {
        level: level.unwrap_or(defaults.level),
        dir: dir.map(PathBuf::from),
        info_max_bytes: megabytes(s, "info_max_mb", f.info_max_mb, defaults.info_max_bytes),
        info_keep_files: count(
            s,
            "info_keep_files",
            f.info_keep_files,
            defaults.info_keep_files,
        ),
        error_max_bytes: megabytes(s, "error_max_mb", f.error_max_mb, defaults.error_max_bytes),
        error_keep_files: count(
            s,
            "error_keep_files",
            f.error_keep_files,
            defaults.error_keep_files,
        ),
    }
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `RUST_LOG` syntax, but stricter: a bare word must be a level name, because `RUST_LOG` reads `verbose` or
/// `warning` as a module logged at trace level, which silently turns everything else off.
fn valid_level(s: &mut Section, spec: &str) -> bool {
    let problem = if spec.trim().is_empty() {
        Some("must not be empty".to_string())
    } else {
        level_problem(spec)
    };
    if let Some(message) = &problem {
        s.report("level", message.as_str());
    }
    problem.is_none()
}

fn level_problem(spec: &str) -> Option<String> {
    let directives = spec.split(',').map(str::trim).filter(|d| !d.is_empty());
    for directive in directives {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, level)| level);
        let level = level.trim().to_ascii_lowercase();
        if !LEVELS.contains(&level.as_str()) {
            return Some(format!(
                "{directive:?}: expected a level ({}) or module=level, as in \"info,pingora=warn\"",
                LEVELS.join(", ")
            ));
        }
    }
    let parsed = flexi_logger::LogSpecification::parse(spec);
    parsed.err().map(|e| format!("not a valid log spec: {e}"))
}

/// `server.metrics_listen`: an address other than the API's own.
pub(super) fn metrics_listen(
    s: &mut Section,
    value: Option<String>,
    listen: &str,
) -> Option<String> {
    let addr = value?;
    match addr.parse::<SocketAddr>() {
        Err(_) => s.report(
            "metrics_listen",
            format!("expected an address such as 127.0.0.1:9100, not {addr:?}"),
        ),
        Ok(parsed) if listen.parse::<SocketAddr>() == Ok(parsed) => {
            s.report("metrics_listen", "must differ from server.listen")
        }
        Ok(_) => return Some(addr),
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::Config;
    use super::*;

    fn compile(text: &str) -> Result<Config, Vec<String>> {
        let env = |name: &str| (name == "LOG_DIR").then(|| "/var/log".to_string());
        Config::parse(text, &env).map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn every_logging_field_compiles() {
        let text = "openai_clients: []\nlogging: {level: 'warn,gpt_api=debug', dir: '${LOG_DIR}/gpt-api', \
                    info_max_mb: 5, info_keep_files: 2, error_max_mb: 7, error_keep_files: 3}\n";
        let expected = LoggingSettings {
            level: "warn,gpt_api=debug".into(),
            dir: Some(PathBuf::from("/var/log/gpt-api")),
            info_max_bytes: 5 * MB,
            info_keep_files: 2,
            error_max_bytes: 7 * MB,
            error_keep_files: 3,
        };
        assert_eq!(compile(text).unwrap().logging, expected);
        let defaults = compile("openai_clients: []\nlogging: {}\n")
            .unwrap()
            .logging;
        assert_eq!(defaults, LoggingSettings::default());
        assert_eq!(defaults.level, "info");
        assert_eq!(defaults.info_max_bytes, 100 * MB);
        assert_eq!(
            (defaults.info_keep_files, defaults.error_keep_files),
            (10, 30)
        );
        assert_eq!(compile("openai_clients: []\n").unwrap().logging, defaults);
        let example = include_str!("../../config/config.example.yaml");
        let example = Config::parse(example, &|_| None).unwrap();
        assert_eq!(
            example.logging, defaults,
            "the example documents the defaults"
        );
    }

    #[test]
    fn bad_logging_values_are_reported_with_their_paths() {
        let text = "openai_clients: []\nlogging: {level: 'info,x=loud', dir: '', info_max_mb: 0, \
                    info_keep_files: -1, error_max_mb: big, error_keep_files: 0, keep: 1}\n";
        let errors = compile(text).unwrap_err();
        assert_eq!(errors.len(), 7, "{errors:#?}");
        assert_eq!(errors[0], "logging.error_max_mb: expected an integer");
        assert_eq!(
            errors[1],
            "logging.keep: unknown field, expected one of level, dir, info_max_mb, info_keep_files, \
             error_max_mb, error_keep_files"
        );
        assert_eq!(
            errors[2],
            "logging.level: \"x=loud\": expected a level (off, error, warn, info, debug, trace) or \
             module=level, as in \"info,pingora=warn\""
        );
        assert_eq!(
            errors[3..],
            [
                "logging.dir: must not be empty",
                "logging.info_max_mb: must be a positive integer",
                "logging.info_keep_files: must be a positive integer",
                "logging.error_keep_files: must be a positive integer",
            ]
        );
        assert_eq!(
            compile("openai_clients: []\nlogging: {level: ' '}\n").unwrap_err(),
            ["logging.level: must not be empty"]
        );
        for word in ["verbose", "warning", "gpt_api"] {
            let text = format!("openai_clients: []\nlogging: {{level: {word}}}\n");
            let errors = compile(&text).unwrap_err();
            assert!(errors[0].starts_with(&format!("logging.level: \"{word}\": expected a level")));
        }
        for good in [
            "WARN",
            "info, pingora = warn",
            "off",
            "gpt_api::proxy=trace,error",
        ] {
            let text = format!("openai_clients: []\nlogging: {{level: '{good}'}}\n");
            assert_eq!(compile(&text).unwrap().logging.level, good);
        }
    }

    #[test]
    fn metrics_listen_is_an_address_of_its_own() {
        let config =
            compile("openai_clients: []\nserver: {metrics_listen: '127.0.0.1:9100'}\n").unwrap();
        assert_eq!(
            config.server.metrics_listen.as_deref(),
            Some("127.0.0.1:9100")
        );
        assert_eq!(
            compile("openai_clients: []\n")
                .unwrap()
                .server
                .metrics_listen,
            None
        );
        assert_eq!(
            compile("openai_clients: []\nserver: {metrics_listen: localhost}\n").unwrap_err(),
            ["server.metrics_listen: expected an address such as 127.0.0.1:9100, not \"localhost\""]
        );
        let text = "openai_clients: []\nserver: {listen: '0.0.0.0:8000', metrics_listen: '0.0.0.0:8000'}\n";
        assert_eq!(
            compile(text).unwrap_err(),
            ["server.metrics_listen: must differ from server.listen"]
        );
    }
}
