//! Per-key budgets in dollars per local calendar day and month: reservations, settling, and the 429's words.
//!
//! A request of a key with a budget reserves its likely maximum cost before it is sent ([`Reservation`]), and
//! settles to its real cost when it ends; a request is refused while the key's spend plus its reservations
//! has reached a budget, so concurrent requests cannot overrun it by more than one request's cost.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, Local, NaiveDate, TimeZone};

use super::store::LimitStore;
use crate::config::Budget;
use crate::money::Usd;

/// The local calendar day and month a moment falls in, as numbers that change when they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// Days since 0001-01-01 (local calendar).
    pub day: i32,
    /// Year x 12 + month (0-based).
    pub month: i32,
}

impl Period {
    pub fn of<Tz: TimeZone>(now: &DateTime<Tz>) -> Period {
        let date = now.date_naive();
        Period {
            day: date.num_days_from_ce(),
            month: date.year() * 12 + date.month0() as i32,
        }
    }
}

/// What a key spent in the current day and month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    pub day: Usd,
    pub month: Usd,
}

/// Which budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Day,
    Month,
}

/// What a reservation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetCheck {
    /// Reserved: the smallest remaining budget, this reservation deducted.
    Allow { remaining: Usd },
    /// A budget is reached (spend plus reservations): each one reached, with its limit and what is used of it.
    Deny { reached: Vec<(Span, Usd, Usd)> },
}

impl BudgetCheck {
    /// The store's check, the same in every store: `spent` and `reserved` as they are, before this request.
    pub fn decide(budget: Budget, spent: Spent, reserved: Usd, amount: Usd) -> BudgetCheck {
        let spans = [
            (Span::Day, budget.day, spent.day),
            (Span::Month, budget.month, spent.month),
        ];
        let mut reached = Vec::new();
        let mut remaining: Option<Usd> = None;
        for (span, limit, spent) in spans {
            let Some(limit) = limit else { continue };
            let used = spent.saturating_add(reserved);
            if used >= limit {
                reached.push((span, limit, used));
            }
            let left = limit.saturating_sub(used).saturating_sub(amount);
            remaining = Some(remaining.map_or(left, |r| r.min(left)));
        }
        match reached.is_empty() {
            true => BudgetCheck::Allow {
                remaining: remaining.unwrap_or_default(),
            },
            false => BudgetCheck::Deny { reached },
        }
    }
}

/// Why a request was refused: the message for the 429 and when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetRefusal {
    pub message: String,
    pub retry_after: Duration,
}

impl BudgetRefusal {
    /// Words for the budgets reached at `now`: each with its limit, what is used of it, and when it resets
    /// (the latest reset of those reached is when the key can spend again).
    pub fn new(reached: &[(Span, Usd, Usd)], now: DateTime<Local>) -> BudgetRefusal {
        let mut parts = Vec::new();
        let mut until = now;
        for &(span, limit, used) in reached {
            let (name, reset) = match span {
                Span::Day => ("day", next_day(now)),
                Span::Month => ("month", next_month(now)),
            };
            until = until.max(reset);
            parts.push(format!(
                "{} per {name} (used {}, resets {})",
                limit.display(),
                used.display(),
                reset.format("%Y-%m-%d %H:%M %:z")
            ));
        }
        let retry_after = (until - now).to_std().unwrap_or_default();
        let message = format!(
            "This API key has reached its budget of {}. Please try again in {}.",
            parts.join(" and "),
            super::format_duration(Duration::from_secs(retry_after.as_secs().max(1)))
        );
        BudgetRefusal {
            message,
            retry_after,
        }
    }
}

/// The next local midnight after `now` (a day without one, by a time-zone change, ends an hour later).
fn next_day(now: DateTime<Local>) -> DateTime<Local> {
    start_of(now.date_naive().succ_opt(), now)
}

/// The first moment of the next local month.
fn next_month(now: DateTime<Local>) -> DateTime<Local> {
    let (year, month) = match now.month() {
        12 => (now.year() + 1, 1),
        m => (now.year(), m + 1),
    };
    start_of(NaiveDate::from_ymd_opt(year, month, 1), now)
}

fn start_of(date: Option<NaiveDate>, now: DateTime<Local>) -> DateTime<Local> {
    let start = date.and_then(|d| d.and_hms_opt(0, 0, 0));
    let local = start.and_then(|s| {
        Local.from_local_datetime(&s).earliest().or_else(|| {
            Local
                .from_local_datetime(&(s + chrono::Duration::hours(1)))
                .earliest()
        })
    });
    local.unwrap_or(now + chrono::Duration::days(1))
}

/// A request's reserved cost under its key's budget. Settle it with the request's cost when that is known;
/// dropped unsettled (a request that ended without a cost), it releases the reservation and adds nothing.
pub struct Reservation {
    store: Arc<dyn LimitStore>,
    key: String,
    request_id: String,
    amount: Usd,
    remaining: Usd,
    open: bool,
}

impl Reservation {
    pub(super) fn new(
        store: Arc<dyn LimitStore>,
        key: &str,
        request_id: &str,
        amount: Usd,
        remaining: Usd,
    ) -> Self {
        Reservation {
            store,
            key: key.to_owned(),
            request_id: request_id.to_owned(),
            amount,
            remaining,
            open: true,
        }
    }

    /// The request cost `cost`: it replaces the reservation in the key's spend.
    pub fn settle(mut self, cost: Usd) {
        self.close(cost);
    }

    fn close(&mut self, cost: Usd) {
        if std::mem::take(&mut self.open) {
            let period = Period::of(&Local::now());
            self.store
                .settle(&self.key, &self.request_id, self.amount, cost, period);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.close(Usd::ZERO);
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("key", &self.key)
            .field("amount", &self.amount)
            .field("remaining", &self.remaining)
            .finish()
    }
}

#[cfg(test)]
mod tests;
