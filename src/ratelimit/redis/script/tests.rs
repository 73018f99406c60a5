//! Tests of the admission script's arguments and of its answers read back into the memory store's verdicts.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use super::*;
use crate::config::Budget;
use crate::ratelimit::budget::{Period, Span};
use crate::ratelimit::store::{BudgetAsk, Limits};

const NOW: u64 = 1_764_842_400;

fn ask(limits: Limits, budget: Option<BudgetAsk>) -> Ask<'static> {
    Ask {
        key: "team",
        request_id: "req-1",
        limits,
        budget,
        now: Instant::now(),
    }
}

fn rate(rpm: Option<u32>, tpm: Option<u64>) -> Limits {
    Limits {
        rpm,
        tpm,
        max_concurrent: None,
    }
}

fn budget(day: f64, amount: f64) -> BudgetAsk {
    BudgetAsk {
        budget: Budget {
            day: Some(Usd::from_f64(day)),
            month: None,
        },
        amount: Usd::from_f64(amount),
        period: Period { day: 1, month: 1 },
    }
}

fn int(n: i64) -> Value {
    Value::Int(n)
}

fn text(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

/// `{status, NOW, 250000 µs, spent day, spent month, reserved, requests, tokens}`.
fn answer(status: i64, money: [&str; 3], requests: &[(u64, u64)], tokens: &[(u64, u64)]) -> Value {
    let flat = |pairs: &[(u64, u64)]| {
        let items = pairs
            .iter()
            .flat_map(|&(s, n)| [text(&s.to_string()), text(&n.to_string())]);
        Value::Array(items.collect())
    };
    Value::Array(vec![
        int(status),
        text(&NOW.to_string()),
        text("250000"),
        text(money[0]),
        text(money[1]),
        text(money[2]),
        flat(requests),
        flat(tokens),
    ])
}

#[test]
fn arguments_name_the_keys_and_leave_absent_limits_empty() {
    let call = AdmitCall::new(&ask(rate(Some(3), None), None), 0);
    assert_eq!(call.key_args[0], "gpt-api:{team}:slots");
    assert_eq!(call.key_args[5], "gpt-api:{team}:requests");
    assert_eq!(call.args[0], "req-1");
    assert_eq!(call.args[1], "0", "no max_concurrent");
    assert_eq!(call.args[2], "", "no budget");
    assert_eq!(call.args[5], "3");
    assert_eq!(call.args[6], "", "no tpm");
    assert!(call.counted && call.reserved.is_none());
    let b = budget(1.0, 0.25);
    let call = AdmitCall::new(&ask(Limits::default(), Some(b)), 0);
    assert_eq!(call.args[2], "250000000");
    assert_eq!(call.args[3], "1000000000");
    assert_eq!(call.args[4], "", "no month budget");
    assert!(call.key_args[3].contains(":spent:"), "{:?}", call.key_args);
}

#[test]
fn reads_an_allowed_answer_as_the_memory_store_words_it() {
    let a = ask(rate(Some(3), Some(100)), None);
    // Two requests 10 s and 1 s ago; 40 tokens 10 s ago.
    let value = answer(
        0,
        ["0", "0", "0"],
        &[(NOW - 10, 1), (NOW - 1, 1)],
        &[(NOW - 10, 40)],
    );
    let parsed = Answer::parse(&value).unwrap();
    assert_eq!(parsed.now, Duration::new(NOW, 250_000_000));
    let Verdict::Allow { quota, budget_left } = parsed.verdict(&a) else {
        panic!("expected Allow");
    };
    assert_eq!(budget_left, None);
    assert_eq!(
        quota.remaining_requests,
        Some(0),
        "this request counted too"
    );
    assert_eq!(quota.remaining_tokens, Some(60));
    assert_eq!(quota.reset_requests, Some(Duration::from_millis(59_750)));
    assert_eq!(quota.reset_tokens, Some(Duration::from_millis(49_750)));
}

#[test]
fn reads_a_rate_refusal_with_its_retry_after() {
    let a = ask(rate(Some(2), None), None);
    let value = answer(3, ["0", "0", "0"], &[(NOW - 30, 1), (NOW - 5, 1)], &[]);
    let verdict = Answer::parse(&value).unwrap().verdict(&a);
    let Verdict::Rate(Decision::Deny { retry_after, quota }) = verdict else {
        panic!("expected a rate refusal, got {verdict:?}");
    };
    assert_eq!(
        retry_after,
        Duration::from_millis(29_750),
        "when the oldest leaves"
    );
    assert_eq!(quota.remaining_requests, Some(0));
}

#[test]
fn reads_busy_and_budget_refusals() {
    let limits = Limits {
        max_concurrent: Some(4),
        ..Limits::default()
    };
    let busy = Value::Array(vec![int(1), text("1"), text("2")]);
    let verdict = Answer::parse(&busy).unwrap().verdict(&ask(limits, None));
    assert_eq!(verdict, Verdict::Busy { limit: 4 });

    let b = budget(1.0, 0.25);
    let refused = Value::Array(vec![
        int(2),
        text("1"),
        text("0"),
        text("900000000"),
        text("900000000"),
        text("100000000"),
    ]);
    let verdict = Answer::parse(&refused)
        .unwrap()
        .verdict(&ask(Limits::default(), Some(b)));
    let reached = vec![(Span::Day, Usd::from_f64(1.0), Usd::from_f64(1.0))];
    assert_eq!(verdict, Verdict::Budget(BudgetCheck::Deny { reached }));

    let allowed = answer(0, ["500000000", "500000000", "0"], &[], &[]);
    let verdict = Answer::parse(&allowed)
        .unwrap()
        .verdict(&ask(Limits::default(), Some(b)));
    let Verdict::Allow { quota, budget_left } = verdict else {
        panic!("expected Allow");
    };
    assert_eq!(quota, Quota::default());
    assert_eq!(
        budget_left,
        Some(Usd::from_f64(0.25)),
        "1 - 0.5 spent - 0.25 reserved"
    );
}

#[test]
fn malformed_answers_are_errors() {
    assert!(Answer::parse(&int(1)).is_err());
    assert!(Answer::parse(&Value::Array(vec![int(9)])).is_err());
    assert!(Answer::parse(&Value::Array(vec![int(0), text("x")])).is_err());
    let odd = Value::Array(vec![
        int(0),
        text("1"),
        text("0"),
        text("0"),
        text("0"),
        text("0"),
        Value::Array(vec![text("1")]),
    ]);
    assert!(Answer::parse(&odd).is_err());
    assert!(Answer::parse(&Value::Array(vec![int(0), int(-1)])).is_err());
}
