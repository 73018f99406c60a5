//! Where the rate-limit windows are kept: the trait [`super::Limiter`] calls, one implementation per store.

use std::time::Instant;

use super::budget::{BudgetCheck, Period, Spent};
use super::Decision;
use crate::config::Budget;
use crate::money::Usd;

/// A key's limits, read from its `KeyInfo` at every call so that limits changed by a reload apply at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
}

/// The per-key sliding windows behind the limits. Keys are named by their `KeyInfo::name`, which a reload
/// keeps, so counts outlive a reload that keeps the key.
///
/// The methods are synchronous because the store is on every request's path and the memory store answers
/// at once; they must not block. A store that must wait on the network (Redis, for limits shared across
/// nodes) either counts locally and syncs in the background, or this trait's methods come to return a
/// future; the proxy calls [`super::Limiter`] from async phases, so only that façade would change.
pub trait LimitStore: Send + Sync {
    /// Counts one request for `key` unless a limit is reached (a denied request is not counted), and says
    /// what is left. [`super::Limiter`] calls it only for a key with at least one limit.
    fn check(&self, key: &str, limits: Limits, now: Instant) -> Decision;

    /// Adds the tokens of a finished request to `key`'s window, where the next checks of its tpm see them.
    /// Called only with `tokens > 0` for a key with a tpm limit.
    fn add_tokens(&self, key: &str, tokens: u64, now: Instant);

    /// Releases the state of every key not in `keep` (keys a reload removed); the kept keys keep their counts.
    /// Spend is kept for every key: a key removed and added back keeps what it spent this month.
    fn release(&self, keep: &[&str]);

    /// Reserves `amount` for a request of `key` unless its spend plus its reservations has reached `budget`
    /// in `period` ([`BudgetCheck::decide`]); a refused request reserves nothing. Spend of an earlier day or
    /// month is forgotten when `period` moves on.
    fn reserve(&self, key: &str, budget: Budget, amount: Usd, period: Period) -> BudgetCheck;

    /// A request of `key` ended: its reservation `reserved` (zero when it had none) is released and `cost`
    /// added to the key's spend of `period`.
    fn settle(&self, key: &str, reserved: Usd, cost: Usd, period: Period);

    /// Adds spend read back from the records (at startup) to `key`'s spend of `period`.
    fn seed(&self, key: &str, spent: Spent, period: Period);

    /// What `key` spent in `period`, and its reservations in flight.
    fn spent(&self, key: &str, period: Period) -> (Spent, Usd);
}
