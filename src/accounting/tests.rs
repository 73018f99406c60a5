//! Unit tests of the accounts: reservations, costs, settling budgets, counting tokens on the worker.
#![allow(clippy::unwrap_used)]

use futures_util::FutureExt;
use std::sync::mpsc;

use chrono::Local;

use super::*;
use crate::config::{Budget, KeySettings};
use crate::secret::Secret;

fn prices() -> Arc<Prices> {
    let priced = ("priced".to_string(), Price::new(1.0, 10.0));
    let mut flat = Price::new(0.0, 10.0);
    flat.per_request = 0.001;
    Arc::new(Prices::new([priced, ("flat".to_string(), flat)], []))
}

fn key(budget: Option<Budget>) -> Arc<KeyInfo> {
    Arc::new(KeyInfo::new(&KeySettings {
        name: "team".into(),
        key: Secret::new("sk-team".to_string()),
        models: None,
        rpm: None,
        tpm: None,
        budget,
        max_concurrent: None,
    }))
}

fn accountant() -> Arc<Accountant> {
    accountant_with(Metrics::new().unwrap())
}

fn accountant_with(metrics: Arc<Metrics>) -> Arc<Accountant> {
    Arc::new(Accountant::new(Arc::new(Limiter::new()), metrics))
}

/// The prices and key a test bill borrows.
struct Fixture {
    prices: Arc<Prices>,
    key: Arc<KeyInfo>,
}

fn fixture(budget: Option<Budget>) -> Fixture {
    Fixture {
        prices: prices(),
        key: key(budget),
    }
}

fn bill<'a>(f: &'a Fixture, model: &'a str, reported: Option<TokenUsage>) -> Bill<'a> {
    Bill {
        kind: ApiKind::Chat,
        prices: &f.prices,
        answered_model: None,
        sent_model: None,
        requested_model: model,
        model_label: model,
        backend: Some("a"),
        key: Some(&f.key),
        reservation: None,
        reported,
    }
}

fn usage(prompt: i64, completion: i64) -> TokenUsage {
    TokenUsage {
        prompt: Some(prompt),
        completion: Some(completion),
        total: Some(prompt + completion),
        ..TokenUsage::default()
    }
}

/// Settles `bill` and waits for what `then` got.
fn settle(a: &Arc<Accountant>, bill: Bill<'_>) -> Settled {
    let (tx, rx) = mpsc::channel();
    a.settle(bill, None, move |s| tx.send(s).unwrap());
    rx.recv_timeout(Duration::from_secs(30)).unwrap()
}

#[test]
fn a_reservation_is_the_prompt_by_size_and_the_output_cap() {
    let p = Price::new(1.0, 10.0);
    // 3000 bytes: 1000 prompt tokens at $1, 1000 output tokens at $10, per 1M.
    assert_eq!(reservation(Some(&p), 3000, Some(1000)), Usd(11_000_000));
    // No cap: 4096 output tokens.
    assert_eq!(reservation(Some(&p), 0, None), Usd(40_960_000));
    assert_eq!(reservation(None, 3000, Some(1000)), Usd::ZERO);
}

#[test]
fn a_request_without_counts_costs_nothing_not_even_per_request() {
    let mut p = Price::new(1.0, 10.0);
    p.per_request = 0.5;
    assert!(cost(&p, &TokenUsage::default()).abs() < 1e-12);
    assert!((cost(&p, &usage(0, 0)) - 0.5).abs() < 1e-12);
}

#[test]
fn reported_usage_is_priced_at_once_by_the_first_model_with_a_price() {
    let a = accountant();
    let f = fixture(None);
    let mut b = bill(&f, "unknown", Some(usage(1000, 100)));
    b.answered_model = Some("answered-unknown");
    b.sent_model = Some("priced");
    let s = settle(&a, b);
    assert!(!s.estimated);
    assert!((s.cost_usd.unwrap() - 0.002).abs() < 1e-12, "{s:?}");
    let s = settle(&a, bill(&f, "unknown", Some(usage(1000, 100))));
    assert_eq!(s.cost_usd, None);
    // The key's spend (no budget yet) counts the priced request.
    let (spent, reserved) = a.limiter().spent("team", Local::now());
    assert_eq!((spent.day, reserved), (Usd(2_000_000), Usd::ZERO));
}

#[test]
fn a_budgeted_request_settles_its_reservation_to_its_cost() {
    let a = accountant();
    let budget = Budget {
        day: Some(Usd(50_000_000)),
        month: None,
    };
    let f = fixture(Some(budget));
    let admitted = a
        .limiter()
        .admit(&f.key, "r1", || Usd(10_000_000), Local::now())
        .now_or_never()
        .expect("the memory store answers at once")
        .unwrap();
    let left = ("x-budget-remaining-usd", "0.040000".to_owned());
    assert_eq!(admitted.headers, [left]);
    let r = admitted.reservation.unwrap();
    assert_eq!(a.limiter().spent("team", Local::now()).1, Usd(10_000_000));
    let mut b = bill(&f, "flat", Some(usage(7, 1000)));
    b.reservation = Some(r);
    let s = settle(&a, b);
    assert!((s.cost_usd.unwrap() - 0.011).abs() < 1e-12, "{s:?}");
    assert_eq!(
        a.limiter().spent("team", Local::now()),
        (
            crate::ratelimit::budget::Spent {
                day: Usd(11_000_000),
                month: Usd(11_000_000)
            },
            Usd::ZERO
        )
    );
}

#[test]
fn missing_usage_is_counted_on_the_worker_and_priced() {
    let metrics = Metrics::new().unwrap();
    let a = accountant_with(Arc::clone(&metrics));
    let request = Bytes::from_static(
        br#"{"model":"priced","messages":[{"role":"user","content":"Say hello"}]}"#,
    );
    let generated = Generated::body(Bytes::from_static(
        br#"{"choices":[{"message":{"role":"assistant","content":"The quick brown fox jumps over the lazy dog"}}]}"#,
    ));
    let count = ToCount {
        request,
        generated: Some(generated),
    };
    let caller = std::thread::current().id();
    let (tx, rx) = mpsc::channel();
    let f = fixture(None);
    a.settle(bill(&f, "priced", None), Some(count), move |s| {
        tx.send((s, std::thread::current().id())).unwrap()
    });
    let (s, thread) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_ne!(thread, caller, "counted off the caller's thread");
    assert!(s.estimated);
    assert_eq!(s.tokens.completion, Some(9), "{s:?}");
    let prompt = s.tokens.prompt.unwrap();
    assert!((5..20).contains(&prompt), "{s:?}");
    let expected = (prompt as f64 + 90.0) / 1e6;
    assert!((s.cost_usd.unwrap() - expected).abs() < 1e-12, "{s:?}");
    assert_eq!(a.drain(Duration::from_secs(5)), 0);
    // The counted tokens reach the token counters too (as the model label `other`: no config names it).
    let text = metrics.render();
    let completion = text
        .lines()
        .find(|l| l.starts_with("gpt_api_tokens_total") && l.contains("kind=\"completion\""))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(completion.ends_with(" 9"), "{completion}");
}
