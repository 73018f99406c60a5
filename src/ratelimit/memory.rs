//! The in-process limit store: one sliding 60 s window of one-second buckets per key, in this node's memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;

use super::budget::{BudgetCheck, Period, Spent};
use super::store::{Ask, LimitStore, Limits, Unavailable, Verdict};
use super::{Decision, Quota};
use crate::config::Budget;
use crate::money::Usd;

/// The window, in seconds; one bucket per second.
pub(super) const WINDOW: u64 = 60;

/// The state of every key, by key name.
///
/// The map is read through an atomic pointer (no lock); each key has its own lock, held for a few dozen
/// additions, so requests of different keys never wait on each other.
pub struct MemoryStore {
    /// Bucket seconds count from here.
    pub(super) origin: Instant,
    pub(super) windows: ArcSwap<HashMap<String, Arc<Mutex<Window>>>>,
    /// Spend and reservations per key (never released: config-bounded, and a key added back keeps its spend).
    spend: ArcSwap<HashMap<String, Arc<Mutex<Spending>>>>,
    /// Requests in flight per key, of keys with `max_concurrent`.
    slots: ArcSwap<HashMap<String, Arc<AtomicU32>>>,
}

/// One key's spend in its current day and month, and its requests' reservations.
#[derive(Debug, Default)]
struct Spending {
    period: Option<Period>,
    spent: Spent,
    reserved: Usd,
}

impl Spending {
    /// Moves to `period`: a new day starts the day's spend at zero, a new month the month's. A period older
    /// than the one held (a request that started before midnight settling after) counts in the current one.
    fn roll(&mut self, period: Period) {
        let Some(held) = self.period else {
            self.period = Some(period);
            return;
        };
        if period.day > held.day {
            self.spent.day = Usd::ZERO;
            self.period = Some(Period {
                day: period.day,
                ..held
            });
        }
        if period.month > held.month {
            self.spent.month = Usd::ZERO;
            self.period = Some(period);
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore {
            origin: Instant::now(),
            windows: ArcSwap::from_pointee(HashMap::new()),
            spend: ArcSwap::from_pointee(HashMap::new()),
            slots: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    fn since_origin(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.origin)
    }

    /// The key's state; created on first use (a key checked before [`LimitStore::release`] saw it, e.g.
    /// during a reload, still gets limited).
    fn window(&self, name: &str) -> Arc<Mutex<Window>> {
        entry(&self.windows, name)
    }

    /// Runs `f` on the key's spending, moved to `period`.
    fn spending<T>(&self, name: &str, period: Period, f: impl FnOnce(&mut Spending) -> T) -> T {
        let spending = entry(&self.spend, name);
        let mut spending = spending.lock().unwrap_or_else(PoisonError::into_inner);
        spending.roll(period);
        f(&mut spending)
    }
}

/// The state of `name` in `map`, created on first use (copy on write: reads take no lock).
fn entry<T: Default>(map: &ArcSwap<HashMap<String, Arc<T>>>, name: &str) -> Arc<T> {
    if let Some(found) = map.load().get(name) {
        return Arc::clone(found);
    }
    let mut created = Arc::default();
    map.rcu(|old| {
        let mut map = HashMap::clone(old);
        created = Arc::clone(map.entry(name.to_owned()).or_default());
        map
    });
    created
}

/// The store's own operations, synchronous: this node's memory answers at once.
impl MemoryStore {
    /// Checks every limit of `ask` and takes what it asks only when all allow: a slot first, then the
    /// reservation, then the request counted in the window; a later refusal gives back what was taken.
    pub fn admit_now(&self, ask: &Ask<'_>) -> Verdict {
        let key = ask.key;
        if let Some(limit) = ask.limits.max_concurrent {
            if !self.take_slot(key, limit) {
                return Verdict::Busy { limit };
            }
        }
        let give_back_slot = || {
            if ask.limits.max_concurrent.is_some() {
                self.free_slot(key);
            }
        };
        let mut budget_left = None;
        if let Some(b) = ask.budget {
            match self.reserve(key, b.budget, b.amount, b.period) {
                BudgetCheck::Allow { remaining } => budget_left = Some(remaining),
                refused => {
                    give_back_slot();
                    return Verdict::Budget(refused);
                }
            }
        }
        let decision = match ask.limits.rpm.is_some() || ask.limits.tpm.is_some() {
            true => self.check(key, ask.limits, ask.now),
            false => Decision::Allow(Quota::default()),
        };
        match decision {
            Decision::Allow(quota) => Verdict::Allow { quota, budget_left },
            refused => {
                if let Some(b) = ask.budget {
                    self.settle(key, b.amount, Usd::ZERO, b.period);
                }
                give_back_slot();
                Verdict::Rate(refused)
            }
        }
    }

    /// Takes one of `limit` slots of `key`; false when all are taken.
    fn take_slot(&self, key: &str, limit: u32) -> bool {
        entry(&self.slots, key)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    fn free_slot(&self, key: &str) {
        let _ = entry(&self.slots, key)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Requests of `key` in flight (under a concurrency limit).
    #[cfg(test)]
    pub fn in_flight(&self, key: &str) -> u32 {
        self.slots
            .load()
            .get(key)
            .map_or(0, |n| n.load(Ordering::Acquire))
    }

    /// Counts one request for `key` unless an rpm or tpm limit is reached (a denied request is not counted),
    /// and says what is left.
    pub fn check(&self, key: &str, limits: Limits, now: Instant) -> Decision {
        let window = self.window(key);
        let mut window = window.lock().unwrap_or_else(PoisonError::into_inner);
        window.check(limits.rpm, limits.tpm, self.since_origin(now))
    }

    pub fn add_tokens(&self, key: &str, tokens: u64, now: Instant) {
        let window = self.window(key);
        let mut window = window.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = window.bucket(self.since_origin(now).as_secs());
        bucket.tokens = bucket.tokens.saturating_add(tokens);
    }

    /// What is left of `key`'s rpm and tpm now, counting nothing (the admin page's keys).
    pub fn left(&self, key: &str, limits: Limits, now: Instant) -> Quota {
        let window = self.window(key);
        let window = window.lock().unwrap_or_else(PoisonError::into_inner);
        let (requests, tokens) = window.totals(self.since_origin(now).as_secs());
        Quota {
            limit_requests: limits.rpm,
            remaining_requests: limits.rpm.map(|limit| {
                u32::try_from(u64::from(limit).saturating_sub(requests)).unwrap_or(limit)
            }),
            limit_tokens: limits.tpm,
            remaining_tokens: limits.tpm.map(|limit| limit.saturating_sub(tokens)),
            ..Quota::default()
        }
    }

    /// Also makes the kept keys' windows, so that a new key's first request does not copy the map. Slots
    /// in use are kept for every key (their requests still end).
    pub fn release(&self, keep: &[&str]) {
        self.windows.rcu(|old| {
            keep.iter()
                .map(|&name| (name.to_owned(), old.get(name).cloned().unwrap_or_default()))
                .collect::<HashMap<_, _>>()
        });
    }

    /// Reserves `amount` unless the key's spend plus its reservations has reached `budget` in `period`.
    pub fn reserve(&self, key: &str, budget: Budget, amount: Usd, period: Period) -> BudgetCheck {
        self.spending(key, period, |s| {
            let check = BudgetCheck::decide(budget, s.spent, s.reserved, amount);
            if let BudgetCheck::Allow { .. } = check {
                s.reserved = s.reserved.saturating_add(amount);
            }
            check
        })
    }

    pub fn settle(&self, key: &str, reserved: Usd, cost: Usd, period: Period) {
        self.spending(key, period, |s| {
            s.reserved = s.reserved.saturating_sub(reserved);
            s.spent.day = s.spent.day.saturating_add(cost);
            s.spent.month = s.spent.month.saturating_add(cost);
        });
    }

    pub fn seed(&self, key: &str, spent: Spent, period: Period) {
        self.spending(key, period, |s| {
            s.spent.day = s.spent.day.saturating_add(spent.day);
            s.spent.month = s.spent.month.saturating_add(spent.month);
        });
    }

    /// What `key` spent in `period`, and its reservations in flight.
    pub fn spent(&self, key: &str, period: Period) -> (Spent, Usd) {
        self.spending(key, period, |s| (s.spent, s.reserved))
    }
}

#[async_trait]
impl LimitStore for MemoryStore {
    async fn admit(&self, ask: &Ask<'_>) -> Result<Verdict, Unavailable> {
        Ok(self.admit_now(ask))
    }

    fn end(&self, key: &str, _request_id: &str) {
        self.free_slot(key);
    }

    fn add_tokens(&self, key: &str, tokens: u64, now: Instant) {
        MemoryStore::add_tokens(self, key, tokens, now);
    }

    fn settle(&self, key: &str, _request_id: &str, reserved: Usd, cost: Usd, period: Period) {
        MemoryStore::settle(self, key, reserved, cost, period);
    }

    fn seed(&self, key: &str, spent: Spent, period: Period) {
        MemoryStore::seed(self, key, spent, period);
    }

    fn release(&self, keep: &[&str]) {
        MemoryStore::release(self, keep);
    }
}

/// Counts of one second.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Seconds since the store's origin.
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
pub(super) struct Window {
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
    /// A window holding these seconds' `(second, requests, tokens)`, as a shared store read them back: its
    /// check then decides and words a request exactly as this store would.
    pub(super) fn from_counts(counts: impl IntoIterator<Item = (u64, u64, u64)>) -> Window {
        let mut window = Window::default();
        for (second, requests, tokens) in counts {
            let bucket = window.bucket(second);
            bucket.requests = bucket.requests.saturating_add(requests);
            bucket.tokens = bucket.tokens.saturating_add(tokens);
        }
        window
    }

    /// Counts one request at `at` (time since the window's origin) unless a limit is reached, and says what
    /// is left.
    pub(super) fn check(&mut self, rpm: Option<u32>, tpm: Option<u64>, at: Duration) -> Decision {
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
