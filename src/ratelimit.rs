//! Per-key requests- and tokens-per-minute limits over a sliding 60 s window, and their OpenAI-style headers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::auth::{Auth, KeyInfo};

/// The window, in seconds; one bucket per second.
const WINDOW: u64 = 60;

/// The state of every key, by key name, so it outlives a config reload that keeps the key.
///
/// The map is read through an atomic pointer (no lock); each key has its own lock, held for a few dozen
/// additions, so requests of different keys never wait on each other.
pub struct Limiter {
    /// Bucket seconds count from here.
    origin: Instant,
    windows: ArcSwap<HashMap<String, Arc<Mutex<Window>>>>,
}

/// What a check decided, with the numbers for the response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Quota),
    Deny { retry_after: Duration, quota: Quota },
}

/// A key's limits and what is left of them. Each field is `None` when the key has no such limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quota {
    pub limit_requests: Option<u32>,
    pub remaining_requests: Option<u32>,
    /// Time until every request now in the window has left it.
    pub reset_requests: Option<Duration>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    /// Time until every token now in the window has left it.
    pub reset_tokens: Option<Duration>,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    pub fn quota(&self) -> &Quota {
        match self {
            Decision::Allow(quota) | Decision::Deny { quota, .. } => quota,
        }
    }

    /// For the 429 body: which limit was reached and when to retry. `None` when allowed.
    pub fn message(&self) -> Option<String> {
        let Decision::Deny { retry_after, quota } = self else {
            return None;
        };
        let mut reached = Vec::new();
        if let (Some(limit), Some(0)) = (quota.limit_requests, quota.remaining_requests) {
            reached.push(format!("requests per minute (limit {limit})"));
        }
        if let (Some(limit), Some(0)) = (quota.limit_tokens, quota.remaining_tokens) {
            reached.push(format!("tokens per minute (limit {limit})"));
        }
        Some(format!(
            "Rate limit reached for this API key on {}. Please try again in {}.",
            reached.join(" and "),
            format_duration(round_up_to_second(*retry_after))
        ))
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

impl Limiter {
    pub fn new() -> Limiter {
        Limiter {
            origin: Instant::now(),
            windows: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// Call with each newly loaded config: keys still configured keep their counts (their limits are read
    /// from the [`KeyInfo`] at every check, so changed limits apply at once); removed keys are forgotten.
    pub fn update(&self, auth: &Auth) {
        self.windows.rcu(|old| {
            auth.keys()
                .map(|k| {
                    (
                        k.name.clone(),
                        old.get(&k.name).cloned().unwrap_or_default(),
                    )
                })
                .collect::<HashMap<_, _>>()
        });
    }

    /// Counts one request for `key` if allowed (rpm), and checks tpm against tokens used in the window.
    pub fn check(&self, key: &KeyInfo, now: Instant) -> Decision {
        if key.rpm().is_none() && key.tpm().is_none() {
            return Decision::Allow(Quota::default());
        }
        let window = self.window(&key.name);
        let mut window = window.lock().unwrap_or_else(PoisonError::into_inner);
        window.check(key.rpm(), key.tpm(), self.since_origin(now))
    }

    /// Adds the tokens of a finished request (from streamed or JSON usage) to the key's tpm window.
    pub fn add_tokens(&self, key: &KeyInfo, tokens: u64, now: Instant) {
        if tokens == 0 || key.tpm().is_none() {
            return;
        }
        let window = self.window(&key.name);
        let mut window = window.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = window.bucket(self.since_origin(now).as_secs());
        bucket.tokens = bucket.tokens.saturating_add(tokens);
    }

    fn since_origin(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.origin)
    }

    /// The key's state; created on first use (a key checked before [`Limiter::update`] saw it, e.g. during a
    /// reload, still gets limited).
    fn window(&self, name: &str) -> Arc<Mutex<Window>> {
        if let Some(window) = self.windows.load().get(name) {
            return Arc::clone(window);
        }
        let mut created = Arc::default();
        self.windows.rcu(|old| {
            let mut map = HashMap::clone(old);
            created = Arc::clone(map.entry(name.to_owned()).or_default());
            map
        });
        created
    }
}

/// Counts of one second.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Seconds since the limiter's origin.
    second: u64,
    requests: u64,
    tokens: u64,
}

impl Bucket {
    /// When this bucket leaves the window.
    fn expiry(&self) -> Duration {
        Duration::from_secs(self.second.saturating_add(WINDOW))
    }
}

/// One key's last 60 seconds: bucket `s % 60` holds second `s`.
#[derive(Debug)]
struct Window {
    buckets: [Bucket; WINDOW as usize],
}

impl Default for Window {
    fn default() -> Self {
        Window {
            buckets: [Bucket::default(); WINDOW as usize],
        }
    }
}

impl Window {
    fn check(&mut self, rpm: Option<u32>, tpm: Option<u64>, at: Duration) -> Decision {
        let now = at.as_secs();
        let (mut requests, tokens) = self.totals(now);
        let requests_over = rpm.is_some_and(|limit| requests >= u64::from(limit));
        let tokens_over = tpm.is_some_and(|limit| tokens >= limit);
        if !requests_over && !tokens_over {
            let bucket = self.bucket(now);
            bucket.requests = bucket.requests.saturating_add(1);
            requests += 1;
        }
        let quota = Quota {
            limit_requests: rpm,
            remaining_requests: rpm.map(|limit| {
                let left = u64::from(limit).saturating_sub(requests);
                u32::try_from(left).unwrap_or(limit)
            }),
            reset_requests: rpm.map(|_| self.reset(at, |b| b.requests)),
            limit_tokens: tpm,
            remaining_tokens: tpm.map(|limit| limit.saturating_sub(tokens)),
            reset_tokens: tpm.map(|_| self.reset(at, |b| b.tokens)),
        };
        if !requests_over && !tokens_over {
            return Decision::Allow(quota);
        }
        let mut retry_after = Duration::ZERO;
        if let Some(limit) = rpm.filter(|_| requests_over) {
            let excess = requests - u64::from(limit) + 1;
            retry_after = retry_after.max(self.wait(at, excess, |b| b.requests));
        }
        if let Some(limit) = tpm.filter(|_| tokens_over) {
            let excess = tokens - limit + 1;
            retry_after = retry_after.max(self.wait(at, excess, |b| b.tokens));
        }
        Decision::Deny { retry_after, quota }
    }

    /// Buckets of the window ending at second `now` (a bucket a concurrent caller stamped a second later
    /// counts too).
    fn live(&self, now: u64) -> impl Iterator<Item = &Bucket> {
        self.buckets
            .iter()
            .filter(move |b| b.expiry().as_secs() > now && (b.requests > 0 || b.tokens > 0))
    }

    fn totals(&self, now: u64) -> (u64, u64) {
        self.live(now).fold((0, 0), |(r, t), b| {
            (r.saturating_add(b.requests), t.saturating_add(b.tokens))
        })
    }

    /// The bucket of `second`, emptied first if it still held a second that has left the window.
    fn bucket(&mut self, second: u64) -> &mut Bucket {
        let slot = &mut self.buckets[(second % WINDOW) as usize];
        // A later second in the slot means this caller is a minute late: count it there rather than lose it.
        if slot.second < second {
            *slot = Bucket {
                second,
                ..Bucket::default()
            };
        }
        slot
    }

    /// Time until the newest bucket holding some of `amount` leaves the window.
    fn reset(&self, at: Duration, amount: impl Fn(&Bucket) -> u64) -> Duration {
        let newest = self.live(at.as_secs()).filter(|b| amount(b) > 0);
        let expiry = newest.map(Bucket::expiry).max().unwrap_or_default();
        expiry.saturating_sub(at)
    }

    /// Time until at least `excess` of `amount` has left the window (oldest first), and at least a second.
    fn wait(&self, at: Duration, excess: u64, amount: impl Fn(&Bucket) -> u64) -> Duration {
        let mut live: Vec<&Bucket> = self.live(at.as_secs()).collect();
        live.sort_by_key(|b| b.second);
        let mut freed = 0u64;
        let mut expiry = Duration::from_secs(WINDOW) + at;
        for bucket in live {
            freed = freed.saturating_add(amount(bucket));
            if freed >= excess {
                expiry = bucket.expiry();
                break;
            }
        }
        expiry.saturating_sub(at).max(Duration::from_secs(1))
    }
}

/// OpenAI-style headers for a decision: x-ratelimit-limit-requests, x-ratelimit-remaining-requests,
/// x-ratelimit-reset-requests (e.g. "1s", "6m0s" as OpenAI formats durations), and the -tokens variants
/// (each only when the key has that limit), plus Retry-After (whole seconds, rounded up) on Deny.
pub fn headers(decision: &Decision) -> Vec<(&'static str, String)> {
    let q = decision.quota();
    let mut out = Vec::with_capacity(7);
    let mut push = |name: &'static str, value: Option<String>| {
        if let Some(value) = value {
            out.push((name, value));
        }
    };
    push(
        "x-ratelimit-limit-requests",
        q.limit_requests.map(|n| n.to_string()),
    );
    push(
        "x-ratelimit-remaining-requests",
        q.remaining_requests.map(|n| n.to_string()),
    );
    push(
        "x-ratelimit-reset-requests",
        q.reset_requests.map(format_duration),
    );
    push(
        "x-ratelimit-limit-tokens",
        q.limit_tokens.map(|n| n.to_string()),
    );
    push(
        "x-ratelimit-remaining-tokens",
        q.remaining_tokens.map(|n| n.to_string()),
    );
    push(
        "x-ratelimit-reset-tokens",
        q.reset_tokens.map(format_duration),
    );
    if let Decision::Deny { retry_after, .. } = decision {
        let seconds = round_up_to_second(*retry_after).as_secs().max(1);
        push("retry-after", Some(seconds.to_string()));
    }
    out
}

fn round_up_to_second(d: Duration) -> Duration {
    let whole = Duration::from_secs(d.as_secs());
    if whole < d {
        whole + Duration::from_secs(1)
    } else {
        whole
    }
}

/// Like Go's `time.Duration` (which OpenAI's headers use), to the millisecond, rounded up: "0s", "250ms",
/// "1s", "1.5s", "6m0s", "1h2m3s".
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        ms += 1;
    }
    match ms {
        0 => "0s".to_owned(),
        1..=999 => format!("{ms}ms"),
        _ => {
            let (hours, minutes) = (ms / 3_600_000, ms / 60_000 % 60);
            let (seconds, millis) = (ms / 1000 % 60, ms % 1000);
            let mut s = seconds.to_string();
            if millis > 0 {
                s.push_str(format!(".{millis:03}").trim_end_matches('0'));
            }
            match (hours, minutes) {
                (0, 0) => format!("{s}s"),
                (0, m) => format!("{m}m{s}s"),
                (h, m) => format!("{h}h{m}m{s}s"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
