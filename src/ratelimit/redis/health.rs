//! Whether Redis answers: starting, up or down, with one log line per change (never the URL's password).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::config::{OnRedisDown, RedisSettings};

const STARTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// The store's view of Redis. A failed or slow call marks it down; only the probe marks it up again.
#[derive(Debug)]
pub struct Health {
    state: AtomicU8,
    /// Outages so far: a connection made before the latest one is made again (its client may still hold
    /// the error of a reconnection tried while Redis was down).
    outages: AtomicU64,
    /// The URL with its user and password masked.
    shown: String,
    on_down: OnRedisDown,
    /// The URL's password, cut from any error text before it is logged.
    secrets: Vec<String>,
}

impl Health {
    pub fn new(settings: &RedisSettings) -> Health {
        let password = url::Url::parse(settings.url.expose())
            .ok()
            .and_then(|url| url.password().map(str::to_owned));
        // As written in the URL and percent-decoded, as an error might quote it.
        let decoded = password.as_deref().map(|p| {
            let bytes: Vec<u8> = url::form_urlencoded::parse(format!("p={p}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned().into_bytes())
                .unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        });
        let secrets: Vec<String> = password.into_iter().chain(decoded).collect();
        Health {
            state: AtomicU8::new(STARTING),
            outages: AtomicU64::new(0),
            shown: settings.shown(),
            on_down: settings.on_down,
            secrets: secrets
                .into_iter()
                .filter(|s: &String| s.len() >= 2)
                .collect(),
        }
    }

    /// Not known to be down: starting (its first calls are tried) or answering.
    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) != DOWN
    }

    /// Confirmed up by an answer of the probe (so its scripts are loaded).
    pub fn is_confirmed(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// How many times Redis went down so far.
    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Acquire)
    }

    /// A call failed or timed out: down. Logs one WARN line when this is news; returns whether it was.
    pub fn fail(&self, why: &str) -> bool {
        let was = self.state.swap(DOWN, Ordering::AcqRel);
        if was != DOWN {
            self.outages.fetch_add(1, Ordering::AcqRel);
            log::warn!("{}", self.down_line(why));
        }
        was != DOWN
    }

    /// The probe had an answer: up. Logs one INFO line when this is news; returns whether it was.
    pub fn answered(&self) -> bool {
        let was = self.state.swap(UP, Ordering::AcqRel);
        match was {
            STARTING => log::info!(
                "Redis {} answers: limits are shared across nodes",
                self.shown
            ),
            DOWN => log::info!(
                "Redis {} answers again: limits are shared again",
                self.shown
            ),
            _ => {}
        }
        was != UP
    }

    fn down_line(&self, why: &str) -> String {
        let then = match self.on_down {
            OnRedisDown::Local => "counting on this node alone",
            OnRedisDown::Deny => "refusing limited keys (503 limits_unavailable)",
        };
        let why = self.scrub(why);
        let why = crate::escape::text(crate::escape::cut(&why, 300));
        format!("Redis {} unavailable: {why}; {then}", self.shown)
    }

    /// `text` with the URL's user and password masked.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "***");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use std::time::Duration;

    fn health(url: &str, on_down: OnRedisDown) -> Health {
        Health::new(&RedisSettings {
            url: Secret::new(url),
            timeout: Duration::from_millis(50),
            on_down,
        })
    }

    #[test]
    fn starts_up_goes_down_on_a_failure_and_up_on_an_answer() {
        let h = health("redis://127.0.0.1:6379", OnRedisDown::Local);
        assert!(h.is_up() && !h.is_confirmed(), "starting: tried");
        assert!(h.answered());
        assert!(h.is_up() && h.is_confirmed());
        assert!(!h.answered(), "no news");
        assert_eq!(h.outages(), 0);
        assert!(h.fail("timeout"));
        assert!(!h.is_up());
        assert!(!h.fail("timeout again"), "one line per outage");
        assert_eq!(h.outages(), 1);
        assert!(h.answered());
        assert!(h.is_up());
    }

    #[test]
    fn the_down_line_says_what_happens_and_never_the_password() {
        let h = health("redis://user:hunter22@cache:6379/0", OnRedisDown::Local);
        let line = h.down_line("auth failed with hunter22\n");
        assert!(!line.contains("hunter22"), "{line}");
        assert!(line.contains("redis://***@cache:6379/0"), "{line}");
        assert!(line.ends_with("; counting on this node alone"), "{line}");
        assert!(!line.contains('\n'), "{line}");
        let h = health("redis://:pw-1@cache", OnRedisDown::Deny);
        let line = h.down_line("x pw-1");
        assert!(line.ends_with("refusing limited keys (503 limits_unavailable)"));
        assert!(!line.contains("pw-1"), "{line}");
    }
}
