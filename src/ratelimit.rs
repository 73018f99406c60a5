//! Per-key limits: requests and tokens per minute over a sliding 60 s window with their OpenAI-style headers,
//! and budgets in dollars per day and month (`budget.rs`).
//!
//! [`Limiter`] is what the proxy calls; it keeps the windows in a [`LimitStore`] (`store.rs`): the in-process
//! [`MemoryStore`] (`memory.rs`), or the [`RedisStore`] shared across nodes (`redis.rs`) with the memory
//! store as its fallback.

pub mod budget;
mod memory;
mod redis;
mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use budget::{BudgetRefusal, Reservation};
pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use store::{Ask, BudgetAsk, LimitStore, Limits, Verdict};

use budget::{BudgetCheck, Period, Spent};
use chrono::{DateTime, Local};

use crate::auth::{Auth, KeyInfo};
use crate::config::OnRedisDown;
use crate::money::Usd;

/// The answer header with what is left of a key's smallest budget, this request's reservation deducted.
pub const BUDGET_REMAINING: &str = "x-budget-remaining-usd";

/// The limits of the configured keys: kept in this process's [`MemoryStore`], or in a shared store (Redis)
/// with this process's memory as the fallback while it is down (`cluster.on_redis_down`).
pub struct Limiter {
    local: Arc<MemoryStore>,
    shared: Option<Shared>,
}

/// A store shared across nodes, and what to do while it does not answer.
struct Shared {
    store: Arc<dyn LimitStore>,
    on_down: OnRedisDown,
}

/// A request admitted under its key's limits: the headers for its answer, and what it holds until it ends.
#[derive(Debug, Default)]
pub struct Admitted {
    /// `x-ratelimit-*` for a key with rpm or tpm, and `x-budget-remaining-usd` for a budgeted key.
    pub headers: Vec<(&'static str, String)>,
    /// Its concurrency slot, freed when dropped (however the request ends).
    pub slot: Option<Slot>,
    /// Its reserved cost, settled by the accounts.
    pub reservation: Option<Reservation>,
}

/// Why a request was refused, in words for its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// rpm or tpm: 429 with the message and headers (Retry-After among them).
    Rate {
        message: String,
        headers: Vec<(&'static str, String)>,
    },
    /// `max_concurrent` requests in flight: 429 at once.
    Busy { message: String },
    /// A budget is reached: 429 `insufficient_quota`.
    Budget(BudgetRefusal),
    /// The shared store is down and `on_redis_down` is `deny`: 503.
    Unavailable,
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
    #[cfg(test)]
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
    /// A limiter keeping its state in this process's memory.
    pub fn new() -> Limiter {
        Limiter::with_store(Arc::new(MemoryStore::new()))
    }

    pub fn with_store(local: Arc<MemoryStore>) -> Limiter {
        Limiter {
            local,
            shared: None,
        }
    }

    /// A limiter sharing its state through `store` (Redis); this process's memory counts alone while it is
    /// down, unless `on_down` says to refuse.
    pub fn shared(store: Arc<dyn LimitStore>, on_down: OnRedisDown) -> Limiter {
        Limiter {
            local: Arc::new(MemoryStore::new()),
            shared: Some(Shared { store, on_down }),
        }
    }

    /// Starts the shared store's connection and tasks (call once the server runs, after its daemon fork).
    pub fn start(&self) {
        if let Some(shared) = &self.shared {
            shared.store.start();
        }
    }

    /// `None` without a shared store; else whether it answers now (the `gpt_api_redis_up` gauge).
    pub fn shared_up(&self) -> Option<bool> {
        self.shared.as_ref().map(|s| s.store.is_up())
    }

    /// Call with each newly loaded config: keys still configured keep their counts (their limits are read
    /// from the [`KeyInfo`] at every check, so changed limits apply at once); removed keys are forgotten.
    pub fn update(&self, auth: &Auth) {
        let keep: Vec<&str> = auth.keys().map(|k| k.name.as_str()).collect();
        self.local.release(&keep);
        if let Some(shared) = &self.shared {
            shared.store.release(&keep);
        }
    }

    /// Checks and takes, together, what a request of `key` asks of its limits: one request in its rpm window
    /// (and its tpm not reached), a concurrency slot, and `amount` reserved under its budget (`amount`: the
    /// request's likely maximum cost; only read for a key with a budget). A key without limits costs nothing.
    pub async fn admit(
        &self,
        key: &KeyInfo,
        request_id: &str,
        amount: impl FnOnce() -> Usd,
        now: DateTime<Local>,
    ) -> Result<Admitted, Refusal> {
        if !key.is_limited() {
            return Ok(Admitted::default());
        }
        let budget = key.budget().map(|budget| BudgetAsk {
            budget,
            amount: amount(),
            period: Period::of(&now),
        });
        let ask = Ask {
            key: &key.name,
            request_id,
            limits: Limits {
                rpm: key.rpm(),
                tpm: key.tpm(),
                max_concurrent: key.max_concurrent(),
            },
            budget,
            now: Instant::now(),
        };
        let (verdict, store) = match &self.shared {
            None => (self.local.admit_now(&ask), self.local_store()),
            Some(shared) => match shared.store.admit(&ask).await {
                Ok(verdict) => (verdict, Arc::clone(&shared.store)),
                Err(_) if shared.on_down == OnRedisDown::Deny => return Err(Refusal::Unavailable),
                Err(_) => (self.local.admit_now(&ask), self.local_store()),
            },
        };
        admitted(verdict, store, &ask, now)
    }

    fn local_store(&self) -> Arc<dyn LimitStore> {
        Arc::clone(&self.local) as Arc<dyn LimitStore>
    }

    /// Where updates after admission go: the shared store while it answers, else this process's memory.
    fn current(&self) -> &dyn LimitStore {
        match &self.shared {
            Some(shared) if shared.store.is_up() => shared.store.as_ref(),
            _ => self.local.as_ref(),
        }
    }

    /// Adds the cost of a request that held no reservation (its key has no budget, yet) to the key's spend,
    /// so that a budget a reload gives the key counts what it spent before.
    pub fn spend(&self, key: &KeyInfo, cost: Usd) {
        if cost > Usd::ZERO {
            let period = Period::of(&Local::now());
            self.current()
                .settle(&key.name, "", Usd::ZERO, cost, period);
        }
    }

    /// Adds the spend of `key` read back from the records at startup (to the shared store only if it was
    /// empty for this day and month).
    pub fn seed(&self, key: &str, spent: Spent, now: DateTime<Local>) {
        self.local.seed(key, spent, Period::of(&now));
        if let Some(shared) = &self.shared {
            shared.store.seed(key, spent, Period::of(&now));
        }
    }

    /// What `key` spent today and this month by this process's count, and its reservations in flight.
    pub fn spent(&self, key: &str, now: DateTime<Local>) -> (Spent, Usd) {
        self.local.spent(key, Period::of(&now))
    }

    /// What is left of `key`'s rpm and tpm now by this process's count (the admin page's keys; with a shared
    /// store, the other nodes' requests are not in it).
    pub fn left(&self, key: &KeyInfo, now: Instant) -> Quota {
        let limits = Limits {
            rpm: key.rpm(),
            tpm: key.tpm(),
            max_concurrent: None,
        };
        self.local.left(&key.name, limits, now)
    }

    /// Adds the tokens of a finished request (from streamed or JSON usage) to the key's tpm window.
    pub fn add_tokens(&self, key: &KeyInfo, tokens: u64, now: Instant) {
        if tokens == 0 || key.tpm().is_none() {
            return;
        }
        self.current().add_tokens(&key.name, tokens, now);
    }

    /// The rpm/tpm check alone, in this process's memory (the unit tests' view of the windows).
    #[cfg(test)]
    pub fn check(&self, key: &KeyInfo, now: Instant) -> Decision {
        if key.rpm().is_none() && key.tpm().is_none() {
            return Decision::Allow(Quota::default());
        }
        let limits = Limits {
            rpm: key.rpm(),
            tpm: key.tpm(),
            max_concurrent: None,
        };
        self.local.check(&key.name, limits, now)
    }
}

/// What a verdict means for the request: what it holds and its headers, or its refusal.
fn admitted(
    verdict: Verdict,
    store: Arc<dyn LimitStore>,
    ask: &Ask<'_>,
    now: DateTime<Local>,
) -> Result<Admitted, Refusal> {
    match verdict {
        Verdict::Allow { quota, budget_left } => {
            let mut headers = headers(&Decision::Allow(quota));
            let reservation = ask.budget.zip(budget_left).map(|(b, left)| {
                headers.push((BUDGET_REMAINING, left.six_decimals()));
                Reservation::new(Arc::clone(&store), ask.key, ask.request_id, b.amount, left)
            });
            let slot = ask
                .limits
                .max_concurrent
                .map(|_| Slot::new(store, ask.key, ask.request_id));
            Ok(Admitted {
                headers,
                slot,
                reservation,
            })
        }
        Verdict::Rate(decision) => Err(Refusal::Rate {
            message: decision.message().unwrap_or_default(),
            headers: headers(&decision),
        }),
        Verdict::Busy { limit } => Err(Refusal::Busy {
            message: format!(
                "This API key already has {limit} request(s) in flight, its limit (max_concurrent); \
                 retry when one has finished."
            ),
        }),
        Verdict::Budget(BudgetCheck::Deny { reached }) => {
            Err(Refusal::Budget(BudgetRefusal::new(&reached, now)))
        }
        // A store that says "allowed" through the budget check has reserved nothing: treat as refused.
        Verdict::Budget(BudgetCheck::Allow { .. }) => Err(Refusal::Unavailable),
    }
}

/// A request's concurrency slot: freed in its store when dropped, however the request ends.
pub struct Slot {
    store: Arc<dyn LimitStore>,
    key: String,
    request_id: String,
}

impl Slot {
    fn new(store: Arc<dyn LimitStore>, key: &str, request_id: &str) -> Slot {
        Slot {
            store,
            key: key.to_owned(),
            request_id: request_id.to_owned(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.store.end(&self.key, &self.request_id);
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("key", &self.key).finish()
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
