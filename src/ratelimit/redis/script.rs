//! The admission script's call and answer: its arguments from an [`Ask`], its answer read back into the
//! same [`Verdict`] the memory store gives (by the memory store's own window and budget rules).

use std::time::Duration;

use redis::Value;

use super::keys::Keys;
use crate::money::Usd;
use crate::ratelimit::budget::{BudgetCheck, Spent};
use crate::ratelimit::memory::Window;
use crate::ratelimit::store::{Ask, Verdict};
use crate::ratelimit::{Decision, Quota};

/// The Lua source of the admission (checks and takes in one call).
pub const ADMIT: &str = include_str!("admit.lua");
/// The Lua source of the updates after admission.
pub const UPDATE: &str = include_str!("update.lua");

/// One admission, owned, so that it can run on the store's own runtime while its caller waits.
#[derive(Debug, Clone)]
pub struct AdmitCall {
    pub keys: Keys,
    pub request_id: String,
    /// The `KEYS` of its group and its own `ARGV` (after its group's number) in `admit.lua`, in order.
    pub key_args: [String; 7],
    pub args: [String; 8],
    /// The reservation's amount, when the key has a budget.
    pub reserved: Option<Usd>,
    /// Whether the request is counted in the `requests` window (the key has an rpm).
    pub counted: bool,
}

impl AdmitCall {
    /// The admission of `ask`, asking for a grant of `want` more (0: none; `grants.rs`).
    pub fn new(ask: &Ask<'_>, want: u32) -> AdmitCall {
        let keys = Keys::new(ask.key);
        let period = ask.budget.map(|b| b.period);
        let (day, month) = match period {
            Some(p) => (keys.spent_day(p), keys.spent_month(p)),
            // Never read without a budget; any name in the key's tag will do.
            None => (keys.reserved(), keys.reserved()),
        };
        let text = |n: Option<u64>| n.map_or(String::new(), |n| n.to_string());
        let budget = ask.budget.map(|b| b.budget);
        let args = [
            ask.request_id.to_owned(),
            ask.limits.max_concurrent.unwrap_or(0).to_string(),
            text(ask.budget.map(|b| b.amount.0)),
            text(budget.and_then(|b| b.day).map(|u| u.0)),
            text(budget.and_then(|b| b.month).map(|u| u.0)),
            text(ask.limits.rpm.map(u64::from)),
            text(ask.limits.tpm),
            want.to_string(),
        ];
        let key_args = [
            keys.slots(),
            keys.reservations(),
            keys.reserved(),
            day,
            month,
            keys.requests(),
            keys.tokens(),
        ];
        AdmitCall {
            keys,
            request_id: ask.request_id.to_owned(),
            key_args,
            args,
            reserved: ask.budget.map(|b| b.amount),
            counted: ask.limits.rpm.is_some(),
        }
    }
}

/// What the script decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Allowed,
    Busy,
    Budget,
    Rate,
}

/// The script's answer: its decision, Redis's clock, and the state it decided on (before this request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: Status,
    /// Redis's `TIME`, since the Unix epoch.
    pub now: Duration,
    pub spent: Spent,
    pub reserved: Usd,
    /// `(second, count)` of the window's live seconds.
    pub requests: Vec<(u64, u64)>,
    pub tokens: Vec<(u64, u64)>,
    /// Admissions counted beyond this one, for the node to make itself until Redis's second ends.
    pub granted: u32,
}

impl Answer {
    /// Reads `{status, seconds, microseconds, spent today, spent this month, reserved, requests, tokens,
    /// granted}`
    /// (a busy answer stops after the clock, a budget one after `reserved`).
    pub fn parse(value: &Value) -> Result<Answer, String> {
        let Value::Array(items) = value else {
            return Err(format!("expected an array, got {value:?}"));
        };
        let number = |i: usize| items.get(i).map_or(Ok(0), integer);
        let status = match number(0)? {
            0 => Status::Allowed,
            1 => Status::Busy,
            2 => Status::Budget,
            3 => Status::Rate,
            other => return Err(format!("unknown status {other}")),
        };
        let (seconds, micros) = (number(1)?, number(2)?);
        let micros = u32::try_from(micros.min(999_999)).unwrap_or(0);
        let counts = |i: usize| items.get(i).map_or(Ok(Vec::new()), pairs);
        Ok(Answer {
            status,
            now: Duration::new(seconds, micros * 1000),
            spent: Spent {
                day: Usd(number(3)?),
                month: Usd(number(4)?),
            },
            reserved: Usd(number(5)?),
            requests: counts(6)?,
            tokens: counts(7)?,
            granted: u32::try_from(number(8)?).unwrap_or(0),
        })
    }

    /// The verdict the memory store would give on the same state: its window's check and its budget rule.
    pub fn verdict(&self, ask: &Ask<'_>) -> Verdict {
        let limits = ask.limits;
        if self.status == Status::Busy {
            return Verdict::Busy {
                limit: limits.max_concurrent.unwrap_or(0),
            };
        }
        let budget = ask
            .budget
            .map(|b| BudgetCheck::decide(b.budget, self.spent, self.reserved, b.amount));
        if self.status == Status::Budget {
            let check = budget.unwrap_or(BudgetCheck::Deny {
                reached: Vec::new(),
            });
            return Verdict::Budget(check);
        }
        let decision = match limits.rpm.is_some() || limits.tpm.is_some() {
            true => self.window().check(limits.rpm, limits.tpm, self.now),
            false => Decision::Allow(Quota::default()),
        };
        match self.status {
            Status::Rate => Verdict::Rate(decision),
            _ => Verdict::Allow {
                quota: decision.quota().clone(),
                budget_left: budget.map(|check| match check {
                    BudgetCheck::Allow { remaining } => remaining,
                    BudgetCheck::Deny { .. } => Usd::ZERO,
                }),
            },
        }
    }

    /// The window as the script saw it, in the memory store's form (seconds since the Unix epoch).
    fn window(&self) -> Window {
        let requests = self.requests.iter().map(|&(s, n)| (s, n, 0));
        let tokens = self.tokens.iter().map(|&(s, n)| (s, 0, n));
        Window::from_counts(requests.chain(tokens))
    }
}

/// A whole number, sent as an integer or as text (Lua numbers become integers, `GET`s stay text).
fn integer(value: &Value) -> Result<u64, String> {
    let parsed = match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Nil => Some(0),
        _ => None,
    };
    parsed.ok_or_else(|| format!("expected a whole number, got {value:?}"))
}

/// `{second, count, second, count, ...}`.
fn pairs(value: &Value) -> Result<Vec<(u64, u64)>, String> {
    let Value::Array(flat) = value else {
        return Err(format!("expected an array, got {value:?}"));
    };
    flat.chunks(2)
        .map(|pair| match pair {
            [second, count] => Ok((integer(second)?, integer(count)?)),
            _ => Err("odd number of window fields".to_owned()),
        })
        .collect()
}

#[cfg(test)]
mod tests;
