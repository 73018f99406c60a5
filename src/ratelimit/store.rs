//! Where a key's limits are kept: the trait [`super::Limiter`] calls, one implementation per store.

use std::time::Instant;

use async_trait::async_trait;

use super::budget::{BudgetCheck, Period, Spent};
use super::{Decision, Quota};
use crate::config::Budget;
use crate::money::Usd;

/// A key's limits, read from its `KeyInfo` at every call so that limits changed by a reload apply at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    pub max_concurrent: Option<u32>,
}

/// What a request of a budgeted key reserves: its likely maximum cost, in the budget's day and month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetAsk {
    pub budget: Budget,
    pub amount: Usd,
    pub period: Period,
}

/// What one request asks of its key's limits, checked and taken together (one round trip to a shared store).
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The key's name (`KeyInfo::name`), which a reload keeps.
    pub key: &'a str,
    /// The gateway's id of the request: names its concurrency slot and reservation in a shared store.
    pub request_id: &'a str,
    pub limits: Limits,
    pub budget: Option<BudgetAsk>,
    /// For the in-process windows (a shared store reads its own clock, the same for every node).
    pub now: Instant,
}

/// What a store decided. Only `Allow` took anything (a request counted, a slot, a reservation); a refusal
/// left the key's state as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted: the rate quota for the headers, and the smallest budget left after this reservation.
    Allow {
        quota: Quota,
        budget_left: Option<Usd>,
    },
    /// rpm or tpm reached (a `Decision::Deny`).
    Rate(Decision),
    /// `max_concurrent` requests of the key are in flight.
    Busy { limit: u32 },
    /// A budget is reached (a `BudgetCheck::Deny`).
    Budget(BudgetCheck),
}

/// A shared store that could not answer (down, slow, or an error); the [`super::Limiter`] decides what then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limit store unavailable: {0}")]
pub struct Unavailable(pub String);

/// The per-key state behind the limits: sliding 60 s windows of requests and tokens, requests in flight, and
/// spend with its reservations. Keys are named by their `KeyInfo::name`, which a reload keeps, so state
/// outlives a reload that keeps the key.
///
/// [`LimitStore::admit`] is the one call on a request's path (for a key with limits); everything after it
/// never waits: a store that talks to a server queues those updates and sends them in the background.
#[async_trait]
pub trait LimitStore: Send + Sync {
    /// Checks every limit of `ask` and, only when all allow, counts the request, takes a concurrency slot and
    /// reserves the budget amount, atomically. Called only for a key with at least one limit.
    async fn admit(&self, ask: &Ask<'_>) -> Result<Verdict, Unavailable>;

    /// The request `request_id` of `key`, admitted with a concurrency limit, ended: its slot is free.
    fn end(&self, key: &str, request_id: &str);

    /// Adds the tokens of a finished request to `key`'s window, where the next checks of its tpm see them.
    fn add_tokens(&self, key: &str, tokens: u64, now: Instant);

    /// A request of `key` ended: its reservation `reserved` (zero when it had none) is released and `cost`
    /// added to the key's spend of `period`.
    fn settle(&self, key: &str, request_id: &str, reserved: Usd, cost: Usd, period: Period);

    /// Adds spend read back from the records (at startup) to `key`'s spend of `period`; a shared store adds
    /// it only if no node did for that day and month (it was empty).
    fn seed(&self, key: &str, spent: Spent, period: Period);

    /// Releases the windows of every key not in `keep` (keys a reload removed); the kept keys keep their
    /// counts. Spend is kept for every key: a key removed and added back keeps what it spent this month.
    fn release(&self, keep: &[&str]);

    /// Whether the store answers now (a shared store that is down is skipped without waiting).
    fn is_up(&self) -> bool {
        true
    }

    /// Starts what the store runs in the background (a shared store's connection), once the process is
    /// the one that serves (after Pingora's daemon fork). Idempotent; the first call that needs it also starts it.
    fn start(&self) {}
}
