//! Tests of grants without Redis: who asks, how much, what is taken from a grant and what is given back.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::ratelimit::redis::script::Status;
use crate::ratelimit::store::BudgetAsk;

fn limits(rpm: u32) -> Limits {
    Limits {
        rpm: Some(rpm),
        tpm: Some(1_000_000),
        max_concurrent: None,
    }
}

fn ask(limits: Limits, now: Instant) -> Ask<'static> {
    Ask {
        key: "team",
        request_id: "r",
        limits,
        budget: None,
        now,
    }
}

/// An answer granting `granted` at `subsec_ms` into Redis's second 1000.
fn answer(granted: u32, subsec_ms: u64) -> Answer {
    Answer {
        status: Status::Allowed,
        now: Duration::from_secs(1000) + Duration::from_millis(subsec_ms),
        spent: Default::default(),
        reserved: Usd::ZERO,
        requests: Vec::new(),
        tokens: Vec::new(),
        granted,
    }
}

fn quota(remaining: u32) -> Quota {
    Quota {
        limit_requests: Some(10_000),
        remaining_requests: Some(remaining),
        ..Quota::default()
    }
}

fn remaining(verdict: Option<Verdict>) -> Option<u32> {
    match verdict? {
        Verdict::Allow { quota, .. } => quota.remaining_requests,
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_keys_with_a_large_rpm_and_no_slots_or_budget_ask() {
    let now = Instant::now();
    let grants = Grants::new();
    let small = ask(limits(MIN_RPM - 1), now);
    let mut busy = ask(limits(10_000), now);
    busy.limits.max_concurrent = Some(5);
    let mut budgeted = ask(limits(10_000), now);
    budgeted.budget = Some(BudgetAsk {
        budget: crate::config::Budget {
            day: Some(Usd(1)),
            month: None,
        },
        amount: Usd(1),
        period: crate::ratelimit::budget::Period { day: 1, month: 1 },
    });
    for a in [&small, &busy, &budgeted] {
        for _ in 0..3 {
            assert_eq!(grants.want(a, now), 0);
            assert!(grants.take(a, now).is_none());
        }
    }
}

#[test]
fn a_key_asked_for_twice_in_a_second_starts_asking_and_doubles_as_grants_run_out() {
    let t0 = Instant::now();
    let grants = Grants::new();
    let a = ask(limits(10_000), t0);
    assert_eq!(
        grants.want(&a, t0),
        0,
        "a first request asks for nothing more"
    );
    let t1 = t0 + Duration::from_millis(10);
    assert_eq!(grants.want(&a, t1), 1, "again within a second: one more");
    assert_eq!(grants.want(&a, t1), 0, "while one asks, the others do not");
    grants.done("team");
    let (made, replaced) = grants.keep(&a, &answer(1, 100), &quota(50), t1);
    assert!(made.is_some() && replaced.is_none());
    assert_eq!(remaining(grants.take(&a, t1)), Some(49));
    assert!(grants.take(&a, t1).is_none(), "used up");
    assert_eq!(grants.want(&a, t1), 2, "ran out early: twice as many");
    grants.done("team");
    let (_, replaced) = grants.keep(&a, &answer(2, 110), &quota(47), t1);
    assert_eq!(replaced, None, "the used-up grant left nothing");
    assert_eq!(remaining(grants.take(&a, t1)), Some(46));
    assert_eq!(remaining(grants.take(&a, t1)), Some(45));
    assert_eq!(grants.want(&a, t1), 4);
    grants.done("team");
    let cap = (10_000 / 16).min(MAX_WANT);
    let mut last = 0;
    for _ in 0..20 {
        grants.keep(&a, &answer(1, 110), &quota(40), t1);
        grants.take(&a, t1).unwrap();
        last = grants.want(&a, t1);
        grants.done("team");
    }
    assert_eq!(last, cap, "at most a sixteenth of the rpm");
}

#[test]
fn a_grant_ends_with_its_second_and_gives_back_what_is_left() {
    let t0 = Instant::now();
    let grants = Grants::new();
    let a = ask(limits(10_000), t0);
    // Granted 300 ms into Redis's second: it ends ~700 ms later by this node's clock.
    let (made, _) = grants.keep(&a, &answer(10, 300), &quota(100), t0);
    let made = made.unwrap();
    let span = made.end - t0;
    assert!(
        span <= Duration::from_millis(700) && span >= Duration::from_millis(690),
        "{span:?}"
    );
    for _ in 0..4 {
        grants.take(&a, t0 + Duration::from_millis(100)).unwrap();
    }
    assert!(grants.take(&a, made.end).is_none(), "ended");
    let left = grants.expire("team", made.id).unwrap();
    assert_eq!(
        left,
        Leftover {
            key: "team".into(),
            second: 1000,
            count: 6
        }
    );
    match left.undo() {
        Op::Undo {
            second,
            count,
            request_id,
            member,
            ..
        } => {
            assert_eq!((second, count), (Some(1000), 6));
            assert!(request_id.is_empty() && member.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert!(grants.expire("team", made.id).is_none(), "once");
    // 4 used in ~0.7 s: the next ask sizes for that rate (x1.25).
    assert_eq!(grants.want(&a, made.end), 8);
}

#[test]
fn a_grant_replaced_before_its_task_ran_is_given_back_once() {
    let t0 = Instant::now();
    let grants = Grants::new();
    let a = ask(limits(10_000), t0);
    let (first, _) = grants.keep(&a, &answer(5, 990), &quota(100), t0);
    let first = first.unwrap();
    grants.take(&a, t0).unwrap();
    let later = first.end + Duration::from_millis(1);
    let (_, replaced) = grants.keep(&a, &answer(3, 5), &quota(90), later);
    assert_eq!(replaced.unwrap().count, 4);
    assert!(
        grants.expire("team", first.id).is_none(),
        "its task finds it gone"
    );
    assert_eq!(remaining(grants.take(&a, later)), Some(89));
}

#[test]
fn changed_limits_stop_a_grants_use_and_a_grant_ends_in_time_near_the_seconds_end() {
    let t0 = Instant::now();
    let grants = Grants::new();
    let a = ask(limits(10_000), t0);
    grants.keep(&a, &answer(5, 100), &quota(100), t0);
    assert!(
        grants.take(&ask(limits(20_000), t0), t0).is_none(),
        "reloaded"
    );
    assert!(grants.take(&a, t0).is_some());
    let (late, _) = grants.keep(&a, &answer(5, 999), &quota(100), t0);
    assert!(
        grants.take(&a, t0).is_none(),
        "under the margin: ended at once"
    );
    assert!(late.unwrap().end <= t0);
}

#[test]
fn drain_and_release_give_back_what_is_left() {
    let t0 = Instant::now();
    let grants = Grants::new();
    let a = ask(limits(10_000), t0);
    let mut b = ask(limits(10_000), t0);
    b.key = "other";
    grants.keep(&a, &answer(5, 100), &quota(100), t0);
    grants.keep(&b, &answer(2, 100), &quota(100), t0);
    let released = grants.release(&["team"]);
    assert_eq!(released.len(), 1);
    assert_eq!((released[0].key.as_str(), released[0].count), ("other", 2));
    assert!(grants.take(&b, t0).is_none());
    let drained = grants.drain();
    assert_eq!(drained.len(), 1);
    assert_eq!(drained[0].count, 5);
    assert!(grants.take(&a, t0).is_none());
}
