//! Tests of the sliding-window limits (time injected), their carry-over across reloads, and the headers.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::config::{AuthSettings, Budget, KeySettings};
use crate::secret::Secret;

fn settings(name: &str, rpm: Option<u32>, tpm: Option<u64>) -> KeySettings {
    KeySettings {
        name: name.into(),
        key: Secret::new(format!("sk-{name}")),
        models: None,
        rpm,
        tpm,
        budget: None,
        max_concurrent: None,
    }
}

fn key(rpm: Option<u32>, tpm: Option<u64>) -> KeyInfo {
    KeyInfo::new(&settings("team", rpm, tpm))
}

/// A limiter and a clock reading `secs` after its origin.
fn clock() -> (Limiter, impl Fn(f64) -> Instant) {
    let (limiter, _, at) = clock_and_store();
    (limiter, at)
}

/// The same, and the memory store the limiter keeps its windows in, to look at its state.
fn clock_and_store() -> (Limiter, Arc<MemoryStore>, impl Fn(f64) -> Instant) {
    let store = Arc::new(MemoryStore::new());
    let limiter = Limiter::with_store(store.clone());
    let origin = store.origin;
    (limiter, store, move |secs| {
        origin + Duration::from_secs_f64(secs)
    })
}

fn remaining_requests(decision: &Decision) -> Option<u32> {
    decision.quota().remaining_requests
}

fn retry_after(decision: &Decision) -> Duration {
    match decision {
        Decision::Deny { retry_after, .. } => *retry_after,
        Decision::Allow(_) => panic!("expected Deny, got {decision:?}"),
    }
}

#[test]
fn rpm_allows_up_to_the_limit_then_denies_until_the_window_slides() {
    let (limiter, at) = clock();
    let key = key(Some(3), None);
    for (i, t) in [0.5, 1.5, 2.5].into_iter().enumerate() {
        let decision = limiter.check(&key, at(t));
        assert!(decision.is_allowed(), "request {i}: {decision:?}");
        assert_eq!(remaining_requests(&decision), Some(2 - i as u32));
    }
    let denied = limiter.check(&key, at(10.5));
    assert_eq!(retry_after(&denied), Duration::from_secs_f64(49.5));
    assert_eq!(remaining_requests(&denied), Some(0));
    let again = limiter.check(&key, at(59.9));
    assert!(
        !again.is_allowed(),
        "a denied request is not counted, nor freed"
    );
    // Second 0 has left the window: one slot again.
    let slid = limiter.check(&key, at(60.0));
    assert!(slid.is_allowed(), "{slid:?}");
    assert_eq!(remaining_requests(&slid), Some(0));
    let next = limiter.check(&key, at(60.5));
    assert_eq!(
        retry_after(&next),
        Duration::from_secs(1),
        "0.5 s until second 1 leaves, at least 1 s"
    );
    assert!(limiter.check(&key, at(62.0)).is_allowed());
    assert!(
        limiter.check(&key, at(200.0)).is_allowed(),
        "an old window is empty"
    );
}

#[test]
fn retry_after_waits_for_enough_requests_to_leave() {
    let (limiter, at) = clock();
    let key = key(Some(4), None);
    for t in [0.1, 0.2, 5.0, 5.1] {
        assert!(limiter.check(&key, at(t)).is_allowed());
    }
    // A lower limit after a reload: 4 counted, limit 2, so 3 must leave (the ones at 0 s and one at 5 s).
    let lower = KeyInfo::new(&settings("team", Some(2), None));
    let denied = limiter.check(&lower, at(30.0));
    assert_eq!(retry_after(&denied), Duration::from_secs(35));
    let quota = denied.quota();
    assert_eq!(
        (quota.limit_requests, quota.remaining_requests),
        (Some(2), Some(0))
    );
    assert_eq!(quota.reset_requests, Some(Duration::from_secs(35)));
}

#[test]
fn tpm_counts_tokens_and_refuses_after_the_request_that_crosses() {
    let (limiter, at) = clock();
    let key = key(None, Some(100));
    let first = limiter.check(&key, at(0.0));
    assert!(first.is_allowed());
    assert_eq!(first.quota().remaining_tokens, Some(100));
    assert_eq!(first.quota().reset_tokens, Some(Duration::ZERO));
    assert_eq!(first.quota().limit_requests, None);
    limiter.add_tokens(&key, 60, at(2.0));
    let second = limiter.check(&key, at(3.0));
    assert_eq!(second.quota().remaining_tokens, Some(40));
    assert_eq!(second.quota().reset_tokens, Some(Duration::from_secs(59)));
    limiter.add_tokens(&key, 70, at(4.0));
    let refused = limiter.check(&key, at(5.0));
    assert_eq!(refused.quota().remaining_tokens, Some(0));
    assert_eq!(
        retry_after(&refused),
        Duration::from_secs(57),
        "the 60 tokens of second 2 leave at 62 s"
    );
    assert!(!limiter.check(&key, at(61.9)).is_allowed());
    let slid = limiter.check(&key, at(62.0));
    assert!(slid.is_allowed());
    assert_eq!(slid.quota().remaining_tokens, Some(30));
}

#[test]
fn both_limits_apply_and_the_later_retry_wins() {
    let (limiter, at) = clock();
    let key = key(Some(1), Some(10));
    assert!(limiter.check(&key, at(0.0)).is_allowed());
    limiter.add_tokens(&key, 50, at(20.0));
    let denied = limiter.check(&key, at(30.0));
    assert_eq!(retry_after(&denied), Duration::from_secs(50));
    assert_eq!(
        denied.message().unwrap(),
        "Rate limit reached for this API key on requests per minute (limit 1) and tokens per minute \
         (limit 10). Please try again in 50s."
    );
    // The request has left the window, the tokens not yet.
    let tokens = limiter.check(&key, at(60.0));
    assert_eq!(tokens.quota().remaining_requests, Some(1));
    assert_eq!(
        tokens.message().unwrap(),
        "Rate limit reached for this API key on tokens per minute (limit 10). Please try again in 20s."
    );
    assert_eq!(limiter.check(&key, at(80.0)).message(), None);
}

#[test]
fn unlimited_keys_are_always_allowed_and_get_no_headers() {
    let (limiter, store, at) = clock_and_store();
    let key = key(None, None);
    for _ in 0..1000 {
        assert_eq!(
            limiter.check(&key, at(1.0)),
            Decision::Allow(Quota::default())
        );
    }
    limiter.add_tokens(&key, 1_000_000, at(1.0));
    assert!(headers(&limiter.check(&key, at(1.0))).is_empty());
    assert!(
        store.windows.load().is_empty(),
        "no state for unlimited keys"
    );
}

#[test]
fn counts_survive_a_reload_that_keeps_the_key() {
    let (limiter, store, at) = clock_and_store();
    let auth = |keys: Vec<KeySettings>| Auth::from_config(&AuthSettings { keys });
    let first = auth(vec![
        settings("team", Some(2), None),
        settings("ci", Some(1), None),
    ]);
    limiter.update(&first);
    let team = first.keys().next().unwrap();
    assert!(limiter.check(team, at(1.0)).is_allowed());
    assert!(limiter.check(team, at(1.0)).is_allowed());
    assert!(!limiter.check(team, at(1.0)).is_allowed());
    // The reload raises team's limit and drops ci: team's two requests still count.
    let second = auth(vec![settings("team", Some(3), None)]);
    limiter.update(&second);
    let team = second.keys().next().unwrap();
    assert!(limiter.check(team, at(2.0)).is_allowed());
    assert!(!limiter.check(team, at(2.0)).is_allowed());
    let names: Vec<String> = store.windows.load().keys().cloned().collect();
    assert_eq!(names, ["team"]);
}

#[test]
fn a_key_unknown_to_the_limiter_is_still_limited() {
    let (limiter, at) = clock();
    let key = key(Some(1), None);
    assert!(limiter.check(&key, at(0.0)).is_allowed());
    assert!(!limiter.check(&key, at(0.0)).is_allowed());
}

/// The memory store on its own: check, add tokens, release.
#[test]
fn the_memory_store_through_the_trait() {
    let memory = MemoryStore::new();
    let origin = memory.origin;
    let at = |secs: u64| origin + Duration::from_secs(secs);
    let store = &memory;
    let both = Limits {
        rpm: Some(2),
        tpm: Some(100),
        max_concurrent: None,
    };
    let first = store.check("team", both, at(0));
    assert_eq!(first.quota().remaining_requests, Some(1));
    assert_eq!(first.quota().remaining_tokens, Some(100));
    store.add_tokens("team", 100, at(1));
    let spent = store.check("team", both, at(2));
    assert_eq!(
        retry_after(&spent),
        Duration::from_secs(59),
        "tokens of second 1"
    );
    assert_eq!(spent.quota().remaining_requests, Some(1), "not counted");
    // Another key has a window of its own.
    assert!(store.check("ci", both, at(2)).is_allowed());
    // Releasing every key but "team" forgets "ci" and keeps team's counts; a new key gets a window at once.
    store.release(&["team", "new"]);
    let mut names: Vec<String> = memory.windows.load().keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["new", "team"]);
    assert!(!store.check("team", both, at(3)).is_allowed());
    let rpm_only = Limits {
        rpm: Some(2),
        tpm: None,
        max_concurrent: None,
    };
    assert!(store.check("team", rpm_only, at(3)).is_allowed());
    assert!(!store.check("team", rpm_only, at(3)).is_allowed());
    // After the window: everything has left it.
    assert!(store.check("team", both, at(61)).is_allowed());
    store.release(&[]);
    assert!(memory.windows.load().is_empty());
}

#[test]
fn concurrent_checks_allow_exactly_the_limit() {
    let (limiter, at) = clock();
    let key = key(Some(50), None);
    let now = at(1.0);
    let allowed: usize = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    (0..100)
                        .filter(|_| limiter.check(&key, now).is_allowed())
                        .count()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    assert_eq!(allowed, 50);
}

#[test]
fn headers_follow_openai() {
    let allow = Decision::Allow(Quota {
        limit_requests: Some(60),
        remaining_requests: Some(59),
        reset_requests: Some(Duration::from_millis(59_500)),
        limit_tokens: Some(150_000),
        remaining_tokens: Some(149_990),
        reset_tokens: Some(Duration::from_secs(360)),
    });
    let expected = [
        ("x-ratelimit-limit-requests", "60"),
        ("x-ratelimit-remaining-requests", "59"),
        ("x-ratelimit-reset-requests", "59.5s"),
        ("x-ratelimit-limit-tokens", "150000"),
        ("x-ratelimit-remaining-tokens", "149990"),
        ("x-ratelimit-reset-tokens", "6m0s"),
    ];
    let owned = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        pairs.iter().map(|(n, v)| (*n, v.to_string())).collect()
    };
    assert_eq!(headers(&allow), owned(&expected));
    let deny = Decision::Deny {
        retry_after: Duration::from_millis(49_200),
        quota: Quota {
            limit_requests: Some(3),
            remaining_requests: Some(0),
            reset_requests: Some(Duration::from_millis(1)),
            ..Quota::default()
        },
    };
    let expected = [
        ("x-ratelimit-limit-requests", "3"),
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "1ms"),
        ("retry-after", "50"),
    ];
    assert_eq!(headers(&deny), owned(&expected));
    let exact = Decision::Deny {
        retry_after: Duration::from_secs(2),
        quota: Quota::default(),
    };
    assert_eq!(headers(&exact), owned(&[("retry-after", "2")]));
}

#[test]
fn durations_format_like_go() {
    let cases = [
        (Duration::ZERO, "0s"),
        (Duration::from_nanos(1), "1ms"),
        (Duration::from_micros(999_500), "1s"),
        (Duration::from_millis(250), "250ms"),
        (Duration::from_secs(1), "1s"),
        (Duration::from_millis(1500), "1.5s"),
        (Duration::from_millis(1001), "1.001s"),
        (Duration::from_millis(59_990), "59.99s"),
        (Duration::from_secs(60), "1m0s"),
        (Duration::from_secs(360), "6m0s"),
        (Duration::from_millis(90_500), "1m30.5s"),
        (Duration::from_secs(3723), "1h2m3s"),
        (Duration::from_secs(7200), "2h0m0s"),
    ];
    for (duration, expected) in cases {
        assert_eq!(format_duration(duration), expected, "{duration:?}");
    }
}

fn limited(rpm: Option<u32>, max_concurrent: Option<u32>, budget: Option<Budget>) -> KeyInfo {
    KeyInfo::new(&KeySettings {
        max_concurrent,
        budget,
        ..settings("team", rpm, None)
    })
}

fn admit(limiter: &Limiter, key: &KeyInfo, id: &str, cents: u64) -> Result<Admitted, Refusal> {
    use futures_util::FutureExt;
    let amount = || crate::money::Usd(cents * 10_000_000);
    limiter
        .admit(key, id, amount, chrono::Local::now())
        .now_or_never()
        .expect("the memory store answers at once")
}

#[test]
fn max_concurrent_refuses_at_once_and_a_slot_frees_when_dropped() {
    let (limiter, store, _) = clock_and_store();
    let key = limited(None, Some(2), None);
    let a = admit(&limiter, &key, "a", 0).unwrap();
    let b = admit(&limiter, &key, "b", 0).unwrap();
    assert!(a.slot.is_some() && a.headers.is_empty());
    assert_eq!(store.in_flight("team"), 2);
    let refused = admit(&limiter, &key, "c", 0).unwrap_err();
    assert!(
        matches!(&refused, Refusal::Busy { message } if message.contains("2 request(s) in flight"))
    );
    drop(a);
    assert_eq!(store.in_flight("team"), 1);
    let c = admit(&limiter, &key, "c", 0).unwrap();
    drop((b, c));
    assert_eq!(store.in_flight("team"), 0);
}

/// A request refused by one limit takes nothing of the others: no slot, no reservation, no rpm count.
#[test]
fn a_refusal_gives_back_what_the_other_limits_took() {
    use crate::money::Usd;
    let (limiter, store, _) = clock_and_store();
    let budget = Budget {
        day: Some(Usd(25 * 10_000_000)),
        month: None,
    };
    let key = limited(Some(1), Some(5), Some(budget));
    let first = admit(&limiter, &key, "a", 10).unwrap();
    assert_eq!(first.headers.last().unwrap().0, BUDGET_REMAINING);
    // rpm reached: the slot and the reservation taken before the rpm check are given back.
    let Refusal::Rate { message, headers } = admit(&limiter, &key, "b", 10).unwrap_err() else {
        panic!("expected the rpm refusal")
    };
    assert!(
        message.contains("requests per minute (limit 1)"),
        "{message}"
    );
    assert!(headers.iter().any(|(n, _)| *n == "retry-after"));
    assert_eq!(store.in_flight("team"), 1);
    let period = budget::Period::of(&chrono::Local::now());
    assert_eq!(store.spent("team", period).1, Usd(10 * 10_000_000));
    // Budget reached (a key without rpm): nothing counted or held.
    let key = limited(None, Some(5), Some(budget));
    let _second = admit(&limiter, &key, "c", 10).unwrap();
    let _third = admit(&limiter, &key, "d", 10).unwrap();
    assert!(matches!(
        admit(&limiter, &key, "e", 10),
        Err(Refusal::Budget(_))
    ));
    assert_eq!(store.in_flight("team"), 3);
    drop(first);
    assert_eq!(store.in_flight("team"), 2);
}

#[test]
fn a_key_without_limits_is_admitted_with_nothing_held() {
    let limiter = Limiter::new();
    let a = admit(&limiter, &key(None, None), "a", 1).unwrap();
    assert!(a.headers.is_empty() && a.slot.is_none() && a.reservation.is_none());
}

#[test]
fn what_is_left_is_read_without_counting() {
    let (limiter, at) = clock();
    let key = key(Some(3), Some(100));
    assert!(limiter.check(&key, at(0.5)).is_allowed());
    limiter.add_tokens(&key, 40, at(0.6));
    for _ in 0..3 {
        let left = limiter.left(&key, at(1.0));
        assert_eq!(left.remaining_requests, Some(2));
        assert_eq!(left.remaining_tokens, Some(60));
        assert_eq!(
            (left.limit_requests, left.limit_tokens),
            (Some(3), Some(100))
        );
    }
    let later = limiter.left(&key, at(61.0));
    assert_eq!(
        (later.remaining_requests, later.remaining_tokens),
        (Some(3), Some(100))
    );
    assert_eq!(
        limiter.left(&self::key(None, None), at(1.0)),
        Quota::default()
    );
}
