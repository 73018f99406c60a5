//! Per-key limits: requests and tokens per minute over a sliding 60 s window with their OpenAI-style headers,
//! and budgets in dollars per day and month (`budget.rs`).
//!
//! [`Limiter`] is what the proxy calls; it keeps the windows in a [`LimitStore`] (`store.rs`), today the
//! in-process [`MemoryStore`] (`memory.rs`). A store shared across nodes is a new file beside it.

pub mod budget;
mod memory;
mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use budget::{BudgetRefusal, Reservation};
pub use memory::MemoryStore;
pub use store::{LimitStore, Limits};

use budget::{BudgetCheck, Period, Spent};
use chrono::{DateTime, Local};

use crate::auth::{Auth, KeyInfo};
use crate::money::Usd;

/// The answer header with what is left of a key's smallest budget, this request's reservation deducted.
pub const BUDGET_REMAINING: &str = "x-budget-remaining-usd";

/// The limits of the configured keys, kept in a [`LimitStore`]; state outlives a config reload that keeps
/// the key.
pub struct Limiter {
    store: Arc<dyn LimitStore>,
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
    /// A limiter keeping its windows in this process's memory.
    pub fn new() -> Limiter {
        Limiter::with_store(Arc::new(MemoryStore::new()))
    }

    pub fn with_store(store: Arc<dyn LimitStore>) -> Limiter {
        Limiter { store }
    }

    /// Call with each newly loaded config: keys still configured keep their counts (their limits are read
    /// from the [`KeyInfo`] at every check, so changed limits apply at once); removed keys are forgotten.
    pub fn update(&self, auth: &Auth) {
        let keep: Vec<&str> = auth.keys().map(|k| k.name.as_str()).collect();
        self.store.release(&keep);
    }

    /// Counts one request for `key` if allowed (rpm), and checks tpm against tokens used in the window.
    pub fn check(&self, key: &KeyInfo, now: Instant) -> Decision {
        // A key without limits costs the store nothing, and gets no headers.
        if key.rpm().is_none() && key.tpm().is_none() {
            return Decision::Allow(Quota::default());
        }
        let limits = Limits {
            rpm: key.rpm(),
            tpm: key.tpm(),
        };
        self.store.check(&key.name, limits, now)
    }

    /// Reserves `amount` for a request of `key` under its budget: `Ok(None)` for a key without one, the 429's
    /// words when the key's spend plus its reservations has reached a budget.
    pub fn reserve(
        &self,
        key: &KeyInfo,
        amount: Usd,
        now: DateTime<Local>,
    ) -> Result<Option<Reservation>, BudgetRefusal> {
        let Some(budget) = key.budget() else {
            return Ok(None);
        };
        match self
            .store
            .reserve(&key.name, budget, amount, Period::of(&now))
        {
            BudgetCheck::Allow { remaining } => Ok(Some(Reservation::new(
                Arc::clone(&self.store),
                &key.name,
                amount,
                remaining,
            ))),
            BudgetCheck::Deny { reached } => Err(BudgetRefusal::new(&reached, now)),
        }
    }

    /// Adds the cost of a request that held no reservation (its key has no budget, yet) to the key's spend,
    /// so that a budget a reload gives the key counts what it spent before.
    pub fn spend(&self, key: &KeyInfo, cost: Usd) {
        if cost > Usd::ZERO {
            self.store
                .settle(&key.name, Usd::ZERO, cost, Period::of(&Local::now()));
        }
    }

    /// Adds the spend of `key` read back from the records at startup.
    pub fn seed(&self, key: &str, spent: Spent, now: DateTime<Local>) {
        self.store.seed(key, spent, Period::of(&now));
    }

    /// What `key` spent today and this month, and its reservations in flight.
    pub fn spent(&self, key: &str, now: DateTime<Local>) -> (Spent, Usd) {
        self.store.spent(key, Period::of(&now))
    }

    /// Adds the tokens of a finished request (from streamed or JSON usage) to the key's tpm window.
    pub fn add_tokens(&self, key: &KeyInfo, tokens: u64, now: Instant) {
        if tokens == 0 || key.tpm().is_none() {
            return;
        }
        self.store.add_tokens(&key.name, tokens, now);
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
