//! Unit tests of budgets: the decision at its boundary, reservations under concurrency, periods, the 429's words.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Barrier};
use std::thread;

use chrono::{Local, TimeZone};

use super::*;
use crate::ratelimit::MemoryStore;

const CENT: Usd = Usd(10_000_000);

fn budget(day: Option<u64>, month: Option<u64>) -> Budget {
    Budget {
        day: day.map(|c| Usd(c * CENT.0)),
        month: month.map(|c| Usd(c * CENT.0)),
    }
}

fn spent(day: u64, month: u64) -> Spent {
    Spent {
        day: Usd(day * CENT.0),
        month: Usd(month * CENT.0),
    }
}

#[test]
fn refused_once_spend_and_reservations_reach_a_budget() {
    let b = budget(Some(5), Some(100));
    let allow = |remaining: u64| BudgetCheck::Allow {
        remaining: Usd(remaining * CENT.0),
    };
    assert_eq!(
        BudgetCheck::decide(b, spent(0, 0), Usd::ZERO, CENT),
        allow(4)
    );
    assert_eq!(
        BudgetCheck::decide(b, spent(4, 4), Usd::ZERO, CENT),
        allow(0)
    );
    // Exactly at the day's budget: refused, naming the day only.
    let at = BudgetCheck::decide(b, spent(5, 5), Usd::ZERO, CENT);
    let day = (Span::Day, Usd(5 * CENT.0), Usd(5 * CENT.0));
    assert_eq!(at, BudgetCheck::Deny { reached: vec![day] });
    // Reservations in flight count as spent.
    let reserved = BudgetCheck::decide(b, spent(3, 3), Usd(2 * CENT.0), CENT);
    assert!(matches!(reserved, BudgetCheck::Deny { .. }));
    // The smallest remaining budget, the month's here; a reservation larger than what is left leaves 0.
    assert_eq!(
        BudgetCheck::decide(b, spent(0, 98), Usd::ZERO, CENT),
        allow(1)
    );
    assert_eq!(
        BudgetCheck::decide(b, spent(0, 0), Usd::ZERO, Usd(9 * CENT.0)),
        allow(0)
    );
    // Both reached; a budget of 0 refuses every request.
    let both = BudgetCheck::decide(budget(Some(1), Some(1)), spent(1, 1), Usd::ZERO, CENT);
    assert!(matches!(both, BudgetCheck::Deny { reached } if reached.len() == 2));
    let zero = BudgetCheck::decide(budget(Some(0), None), spent(0, 0), Usd::ZERO, Usd::ZERO);
    assert!(matches!(zero, BudgetCheck::Deny { .. }));
}

fn period(day: i32, month: i32) -> Period {
    Period { day, month }
}

#[test]
fn fifty_concurrent_reservations_stop_at_the_budget() {
    let store = Arc::new(MemoryStore::new());
    let b = budget(None, Some(10));
    let barrier = Arc::new(Barrier::new(50));
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                let check = store.reserve("k", b, CENT, period(1, 1));
                let allowed = matches!(check, BudgetCheck::Allow { .. });
                if allowed {
                    store.settle("k", CENT, CENT, period(1, 1));
                }
                allowed
            })
        })
        .collect();
    let allowed = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|&a| a)
        .count();
    assert_eq!(allowed, 10);
    assert_eq!(store.spent("k", period(1, 1)), (spent(10, 10), Usd::ZERO));
}

#[test]
fn a_new_day_or_month_starts_its_spend_at_zero() {
    let store = MemoryStore::new();
    store.seed("k", spent(3, 7), period(10, 5));
    store.settle("k", Usd::ZERO, CENT, period(10, 5));
    assert_eq!(store.spent("k", period(10, 5)).0, spent(4, 8));
    // The next day of the same month.
    assert_eq!(store.spent("k", period(11, 5)).0, spent(0, 8));
    // A request that started the day before settles into the current day.
    store.settle("k", Usd::ZERO, CENT, period(10, 5));
    assert_eq!(store.spent("k", period(11, 5)).0, spent(1, 9));
    // The next month.
    assert_eq!(store.spent("k", period(12, 6)).0, spent(0, 0));
    // Release of keys (a reload) keeps spend.
    store.settle("k", Usd::ZERO, CENT, period(12, 6));
    store.release(&[]);
    assert_eq!(store.spent("k", period(12, 6)).0, spent(1, 1));
}

#[test]
fn a_reservation_dropped_unsettled_releases_itself() {
    let memory = Arc::new(MemoryStore::new());
    let store: Arc<dyn LimitStore> = Arc::clone(&memory) as Arc<dyn LimitStore>;
    let now = Period::of(&Local::now());
    let b = budget(Some(2), None);
    assert!(matches!(
        memory.reserve("k", b, CENT, now),
        BudgetCheck::Allow { .. }
    ));
    let held = Reservation::new(Arc::clone(&store), "k", "r1", CENT, Usd::ZERO);
    assert_eq!(memory.spent("k", now).1, CENT);
    drop(held);
    assert_eq!(memory.spent("k", now), (Spent::default(), Usd::ZERO));
    assert!(matches!(
        memory.reserve("k", b, CENT, now),
        BudgetCheck::Allow { .. }
    ));
    Reservation::new(Arc::clone(&store), "k", "r1", CENT, Usd::ZERO).settle(Usd(3 * CENT.0));
    assert_eq!(memory.spent("k", now), (spent(3, 3), Usd::ZERO));
}

#[test]
fn periods_follow_the_local_calendar() {
    let a = Local.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
    let b = Local.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
    let (pa, pb) = (Period::of(&a), Period::of(&b));
    assert_eq!((pb.day - pa.day, pb.month - pa.month), (1, 1));
    let c = Local.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
    assert_eq!(Period::of(&c).month, pa.month);
}

#[test]
fn the_refusal_names_each_budget_reached_and_its_reset() {
    let now = Local.with_ymd_and_hms(2026, 12, 4, 21, 0, 0).unwrap();
    let day = (Span::Day, Usd(5_000_000_000), Usd(5_000_000_000));
    let r = BudgetRefusal::new(&[day], now);
    assert!(
        r.message
            .contains("$5.00 per day (used $5.00, resets 2026-12-05 00:00"),
        "{}",
        r.message
    );
    assert!(
        r.message.ends_with("Please try again in 3h0m0s."),
        "{}",
        r.message
    );
    assert_eq!(r.retry_after.as_secs(), 3 * 3600);
    let month = (Span::Month, Usd(100_000_000_000), Usd(100_012_300_000));
    let r = BudgetRefusal::new(&[day, month], now);
    assert!(
        r.message.contains("$5.00 per day")
            && r.message
                .contains("$100.00 per month (used $100.01, resets 2027-01-01 00:00"),
        "{}",
        r.message
    );
    // The key can spend again when the last of them resets: the month's.
    let month_start = Local.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
    assert_eq!(
        r.retry_after.as_secs(),
        (month_start - now).num_seconds() as u64
    );
}
