//! The logger: to stderr, or with `logging.dir` to an info log and an error log rotated by size and by day.
//!
//! The level comes from `RUST_LOG` when it is set, else from `logging.level`. With a directory, `info_*.log`
//! gets every line the level lets through and `error_*.log` the errors only; warnings and errors also go to
//! stderr, so `systemctl status` and `journalctl` still show problems. The access lines are buffered (64 KiB)
//! instead of one `write(2)` each on the proxy's threads: any other line (a warning, an error, a reload)
//! flushes at once with the lines before it, and the server flushes the rest every 100 ms ([`Flusher`], run as a service started after Pingora's
//! daemon fork, which would lose any thread started before it) and when it stops. Old files are removed on
//! rotation by the writing thread, for the same reason.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flexi_logger::filter::{LogLineFilter, LogLineWriter};
use flexi_logger::{
    writers::FileLogWriter, Age, Cleanup, Criterion, DeferredNow, Duplicate, FileSpec,
    FlexiLoggerError, LogSpecification, LoggerHandle, Naming, WriteMode,
};
use log::Record;

use crate::config::LoggingSettings;

/// File name stems of the two logs: `info_rCURRENT.log` is being written, `info_r<timestamp>.log` rotated.
pub const INFO_LOG: &str = "info";
pub const ERROR_LOG: &str = "error";

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log level {spec:?}: {source}")]
    Level {
        spec: String,
        source: FlexiLoggerError,
    },
    #[error("log directory {}: {source}", .dir.display())]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the logger: {0}")]
    Start(#[from] FlexiLoggerError),
}

/// How much of the log is held before it is written.
const BUFFER_BYTES: usize = 64 * 1024;
/// Longest time a buffered line waits (see [`Flusher`]).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Keeps the logger running. Drop it last: dropping flushes and closes the log files.
pub struct Logging {
    handle: LoggerHandle,
    /// Where the level came from: `RUST_LOG` wins over the config.
    from_env: bool,
}

/// Writes out buffered log lines; the server calls it every [`FLUSH_INTERVAL`] and when it stops.
#[derive(Clone)]
pub struct Flusher(LoggerHandle);

impl Flusher {
    pub fn flush(&self) {
        self.0.flush();
    }
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Flusher")
    }
}

impl Drop for Logging {
    /// The last lines (a server that stopped, an error before exiting) are written out.
    fn drop(&mut self) {
        self.handle.flush();
    }
}

impl Logging {
    pub fn flusher(&self) -> Flusher {
        Flusher(self.handle.clone())
    }

    /// Applies a new `logging.level` (e.g. after a config reload) unless `RUST_LOG` set the level.
    pub fn set_level(&self, level: &str) -> Result<(), LoggingError> {
        if self.from_env {
            return Ok(());
        }
        let spec = parse(level)?;
        self.handle.set_new_spec(spec);
        Ok(())
    }
}

/// Installs the global logger. Call once, before the server starts (and before it daemonizes).
pub fn init(settings: &LoggingSettings) -> Result<Logging, LoggingError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (spec, from_env, ignored) = choose_spec(rust_log.as_deref(), &settings.level)?;
    // Set once the logger runs: a warning or an error flushes what is buffered, so it is seen at once.
    let urgent = Arc::new(OnceLock::new());
    let logger = flexi_logger::Logger::with(spec)
        .format(line)
        .write_mode(WriteMode::BufferDontFlushWith(BUFFER_BYTES))
        .filter(Box::new(Filter {
            urgent: urgent.clone(),
        }));
    let logger = match &settings.dir {
        None => logger.log_to_stderr(),
        Some(dir) => {
            let dir = absolute(dir)?;
            logger
                .log_to_file_and_writer(
                    file_spec(&dir, INFO_LOG),
                    Box::new(error_log(&dir, settings)?),
                )
                .rotate(
                    rotation(settings.info_max_bytes),
                    Naming::Timestamps,
                    Cleanup::KeepLogFiles(settings.info_keep_files),
                )
                .cleanup_in_background_thread(false)
                .append()
                .duplicate_to_stderr(Duplicate::Warn)
        }
    };
    let handle = logger.start()?;
    let _ = urgent.set(handle.clone());
    if let Some(bad) = ignored {
        log::warn!(
            "RUST_LOG={bad:?} is not a valid log spec; using logging.level {:?}",
            settings.level
        );
    }
    Ok(Logging { handle, from_env })
}

/// Pingora's debug and trace lines dump whole request headers, `Authorization` included: they never pass,
/// whatever `RUST_LOG` asks for, so no key reaches a log; nor do its benign errors ([`is_noise`]). A warning or
/// an error is flushed at once.
struct Filter {
    urgent: Arc<OnceLock<LoggerHandle>>,
}

impl LogLineFilter for Filter {
    fn write(
        &self,
        now: &mut DeferredNow,
        record: &Record,
        writer: &dyn LogLineWriter,
    ) -> std::io::Result<()> {
        if record.level() > log::Level::Info && record.target().starts_with("pingora")
            || is_noise(record)
        {
            return Ok(());
        }
        writer.write(now, record)?;
        if !is_routine(record) {
            if let Some(handle) = self.urgent.get() {
                handle.flush();
            }
        }
        Ok(())
    }
}

/// Pingora errors that report nothing wrong, dropped so that the error log holds only what needs a look:
/// "failed to acquire reusable stream" is its upstream pool finding a pooled connection still held by that
/// connection's idle watch for a moment (a race under concurrency); it then opens a new connection.
fn is_noise(record: &Record) -> bool {
    record.target() == "pingora_core::connectors"
        && record.args().as_str() == Some("failed to acquire reusable stream")
}

/// The lines that wait for the next flush: the access lines (one per request) and anything chattier. A
/// warning, an error or a rare INFO event (start, reload) is written out at once, with what came before.
fn is_routine(record: &Record) -> bool {
    record.level() > log::Level::Info
        || (record.level() == log::Level::Info && record.target() == ACCESS_TARGET)
}

/// The target of the access lines (`src/proxy/finish.rs`, the logging phase) and of the proxy's other lines
/// about requests, as operators' filters and greps know it.
pub const ACCESS_TARGET: &str = "gpt_api::proxy";

/// `RUST_LOG` when set and valid, else the configured level. Returns the spec, whether it came from the
/// environment, and an invalid `RUST_LOG` to warn about once the logger runs.
fn choose_spec(
    rust_log: Option<&str>,
    level: &str,
) -> Result<(LogSpecification, bool, Option<String>), LoggingError> {
    match rust_log.filter(|s| !s.trim().is_empty()) {
        Some(env) => match LogSpecification::parse(env) {
            Ok(spec) => Ok((spec, true, None)),
            Err(_) => Ok((parse(level)?, false, Some(env.to_string()))),
        },
        None => Ok((parse(level)?, false, None)),
    }
}

fn parse(level: &str) -> Result<LogSpecification, LoggingError> {
    LogSpecification::parse(level).map_err(|source| LoggingError::Level {
        spec: level.to_string(),
        source,
    })
}

/// The error log: errors only, same rotation scheme with its own size and retention.
fn error_log(dir: &Path, settings: &LoggingSettings) -> Result<FileLogWriter, LoggingError> {
    let writer = FileLogWriter::builder(file_spec(dir, ERROR_LOG))
        .max_level(log::LevelFilter::Error)
        .format(line)
        .rotate(
            rotation(settings.error_max_bytes),
            Naming::Timestamps,
            Cleanup::KeepLogFiles(settings.error_keep_files),
        )
        .cleanup_in_background_thread(false)
        .append()
        .try_build()?;
    Ok(writer)
}

fn rotation(max_bytes: u64) -> Criterion {
    Criterion::AgeOrSize(Age::Day, max_bytes)
}

fn file_spec(dir: &Path, name: &str) -> FileSpec {
    FileSpec::default()
        .directory(dir)
        .basename(name)
        .suppress_timestamp()
        .suffix("log")
}

/// Created if missing, and made absolute: Pingora may change the working directory when it daemonizes.
fn absolute(dir: &Path) -> Result<PathBuf, LoggingError> {
    let fail = |source| LoggingError::Dir {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    std::path::absolute(dir).map_err(fail)
}

/// `2024-05-01T12:00:00.123+08:00 INFO  gpt_api::proxy: message`, one line per record.
fn line(w: &mut dyn Write, now: &mut DeferredNow, record: &Record) -> std::io::Result<()> {
    write!(
        w,
        "{} {:<5} {}: {}",
        now.format("%Y-%m-%dT%H:%M:%S%.3f%:z"),
        record.level(),
        record.target(),
        record.args()
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rust_log_wins_over_the_config_when_valid() {
        let (spec, from_env, ignored) = choose_spec(Some("debug"), "warn").unwrap();
        assert_eq!(
            spec.to_string(),
            LogSpecification::parse("debug").unwrap().to_string()
        );
        assert!(from_env && ignored.is_none());
        let (spec, from_env, _) = choose_spec(None, "warn,gpt_api=trace").unwrap();
        assert!(!from_env);
        assert_eq!(
            spec.to_string(),
            LogSpecification::parse("warn,gpt_api=trace")
                .unwrap()
                .to_string()
        );
        let (_, from_env, _) = choose_spec(Some("  "), "info").unwrap();
        assert!(!from_env, "an empty RUST_LOG counts as unset");
    }

    #[test]
    fn an_invalid_rust_log_falls_back_to_the_config_and_is_reported() {
        let (spec, from_env, ignored) = choose_spec(Some("info,x=loud"), "warn").unwrap();
        assert!(!from_env);
        assert_eq!(ignored.as_deref(), Some("info,x=loud"));
        assert_eq!(
            spec.to_string(),
            LogSpecification::parse("warn").unwrap().to_string()
        );
        assert!(choose_spec(None, "info,x=loud").is_err());
    }

    #[test]
    fn pingoras_benign_pool_race_is_not_logged_other_errors_are() {
        let record = |target: &'static str, args: std::fmt::Arguments<'static>| {
            let mut builder = Record::builder();
            builder.level(log::Level::Error).target(target).args(args);
            is_noise(&builder.build())
        };
        let race = format_args!("failed to acquire reusable stream");
        assert!(record("pingora_core::connectors", race));
        assert!(!record(
            "pingora_core::connectors",
            format_args!("connect failed")
        ));
        assert!(!record("gpt_api::proxy", race));
    }

    #[test]
    fn the_error_log_takes_errors_only_and_lines_carry_time_level_target() {
        let dir = tempfile::tempdir().unwrap();
        let settings = LoggingSettings::default();
        let writer = error_log(dir.path(), &settings).unwrap();
        for (level, text) in [
            (log::Level::Error, "it broke"),
            (log::Level::Warn, "careful"),
        ] {
            let args = format_args!("{text}");
            let record = Record::builder()
                .level(level)
                .target("gpt_api::x")
                .args(args)
                .build();
            flexi_logger::writers::LogWriter::write(&writer, &mut DeferredNow::new(), &record)
                .unwrap();
        }
        flexi_logger::writers::LogWriter::flush(&writer).unwrap();
        let path = dir.path().join("error_rCURRENT.log");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].ends_with(" ERROR gpt_api::x: it broke"), "{text}");
        assert!(lines[0].starts_with("20"), "starts with the date: {text}");
    }

    #[test]
    fn full_logs_are_rotated_and_old_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let settings = LoggingSettings {
            error_max_bytes: 10,
            error_keep_files: 2,
            ..LoggingSettings::default()
        };
        let writer = error_log(dir.path(), &settings).unwrap();
        for i in 0..6 {
            let args = format_args!("error number {i}");
            let record = Record::builder()
                .level(log::Level::Error)
                .args(args)
                .build();
            flexi_logger::writers::LogWriter::write(&writer, &mut DeferredNow::new(), &record)
                .unwrap();
        }
        flexi_logger::writers::LogWriter::flush(&writer).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names.len(),
            3,
            "the current file and two rotated ones: {names:?}"
        );
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("error_r") && n.ends_with(".log")),
            "{names:?}"
        );
        let current = std::fs::read_to_string(dir.path().join("error_rCURRENT.log")).unwrap();
        assert!(current.contains("error number 5"), "{current}");
    }

    #[test]
    fn a_relative_dir_is_created_and_made_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        let made = absolute(&nested).unwrap();
        assert!(made.is_absolute() && made.is_dir());
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let err = absolute(&file.join("sub")).unwrap_err().to_string();
        assert!(err.starts_with("log directory "), "{err}");
    }
}
