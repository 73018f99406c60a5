//! Reload helpers: rewrite a running gateway's config file, signal the process, read its reload log lines.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::{to_yaml, wait_until, Gateway};

/// The log line of a reload that took effect, for this trigger (`file changed`, `SIGHUP`, `GET /v1/models`).
pub fn reloaded(why: &str) -> String {
    format!("config reloaded ({why})")
}

/// The log line of a reload that was refused, for this trigger.
pub fn rejected(why: &str) -> String {
    format!("config reload ({why}) rejected")
}

impl Gateway {
    /// Replaces the config file with this config, atomically (a sibling file renamed over it), so the gateway
    /// never reads half a file.
    pub fn rewrite_config(&self, config: &Value) {
        self.rewrite_config_yaml(&to_yaml(config));
    }

    pub fn rewrite_config_yaml(&self, yaml: &str) {
        let tmp = self.config_path.with_extension("yaml.new");
        std::fs::write(&tmp, yaml).expect("write new config");
        std::fs::rename(&tmp, &self.config_path).expect("rename new config over the old");
    }

    /// `kill -<signal> <pid>` (e.g. `HUP`).
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the gateway process is not running");
        let out = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .output()
            .expect("run kill");
        assert!(
            out.status.success(),
            "kill -{signal} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// How often `needle` occurs in the gateway's stderr so far.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits until `needle` occurs at least `n` times in stderr; panics with the log after `timeout`.
    pub async fn wait_log(&self, needle: &str, n: usize, timeout: Duration) {
        if !wait_until(timeout, || self.log_count(needle) >= n).await {
            panic!(
                "{needle:?} not logged {n} time(s) within {timeout:?} (got {}); stderr:\n{}",
                self.log_count(needle),
                self.log()
            );
        }
    }
}
