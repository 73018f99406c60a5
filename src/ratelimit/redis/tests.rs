//! Tests of the Redis store against a real `redis-server` (started here on a free loopback port, in a temp
//! dir, nothing saved): the same verdicts as the memory store, updates after admission, seeding once, down
//! and up again, and any runtime calling it.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;
use crate::config::{Budget, OnRedisDown};
use crate::ratelimit::budget::BudgetCheck;
use crate::ratelimit::store::{BudgetAsk, Limits};
use crate::ratelimit::{Decision, MemoryStore};
use crate::secret::Secret;
use server::{free_port, wait, Server};

mod batches;
mod grants;
mod server;

fn store(url: &str, timeout_ms: u64) -> RedisStore {
    let settings = RedisSettings {
        url: Secret::new(url),
        timeout: Duration::from_millis(timeout_ms),
        on_down: OnRedisDown::Local,
    };
    RedisStore::new(&settings).unwrap()
}

fn ask<'a>(key: &'a str, id: &'a str, limits: Limits, budget: Option<BudgetAsk>) -> Ask<'a> {
    Ask {
        key,
        request_id: id,
        limits,
        budget,
        now: Instant::now(),
    }
}

fn rpm(n: u32) -> Limits {
    Limits {
        rpm: Some(n),
        ..Limits::default()
    }
}

fn period() -> Period {
    Period::of(&chrono::Local::now())
}

/// Admits until `cond` holds of the verdict (updates are sent in the background).
async fn admit_until(store: &RedisStore, a: &Ask<'_>, cond: impl Fn(&Verdict) -> bool) -> Verdict {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let verdict = store.admit(a).await.unwrap();
        if cond(&verdict) || std::time::Instant::now() > deadline {
            return verdict;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rpm_verdicts_are_the_memory_stores() {
    let server = Server::start();
    let redis = store(&server.url(), 1000);
    let memory = MemoryStore::new();
    for i in 0..4 {
        let a = ask("team", "r", rpm(3), None);
        let (shared, local) = (redis.admit(&a).await.unwrap(), memory.admit_now(&a));
        match (&shared, &local) {
            (Verdict::Allow { quota: s, .. }, Verdict::Allow { quota: l, .. }) => {
                assert_eq!(s.remaining_requests, l.remaining_requests, "request {i}");
                assert_eq!(s.limit_requests, Some(3));
            }
            (
                Verdict::Rate(Decision::Deny {
                    retry_after: s,
                    quota,
                }),
                Verdict::Rate(_),
            ) => {
                assert_eq!(i, 3);
                assert!(
                    *s <= Duration::from_secs(60) && *s >= Duration::from_secs(58),
                    "{s:?}"
                );
                assert_eq!(quota.remaining_requests, Some(0));
            }
            _ => panic!("request {i}: Redis {shared:?}, memory {local:?}"),
        }
    }
    assert_eq!(server.cli(&["HGET", "gpt-api:{team}:requests", "sum"]), "3");
    let ttl: i64 = server
        .cli(&["TTL", "gpt-api:{team}:requests"])
        .parse()
        .unwrap();
    assert!((1..=61).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn seconds_that_left_the_window_are_forgotten() {
    let server = Server::start();
    let redis = store(&server.url(), 1000);
    let now: u64 = server
        .cli(&["TIME"])
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (old, live) = ((now - 61).to_string(), (now - 30).to_string());
    let key = "gpt-api:{w}:requests";
    let fields = [
        old.as_str(),
        "2",
        live.as_str(),
        "1",
        "sum",
        "3",
        "oldest",
        &old,
        "newest",
        &live,
    ];
    server.cli(&[&["HSET", key][..], &fields[..]].concat());
    let verdict = redis.admit(&ask("w", "r", rpm(3), None)).await.unwrap();
    let Verdict::Allow { quota, .. } = verdict else {
        panic!("{verdict:?}")
    };
    assert_eq!(
        quota.remaining_requests,
        Some(1),
        "2 live: the old second's 2 left"
    );
    assert_eq!(server.cli(&["HEXISTS", key, &old]), "0");
    assert_eq!(server.cli(&["HGET", key, "sum"]), "2");
    assert_eq!(server.cli(&["HGET", key, "oldest"]), live);
    let refused = redis.admit(&ask("w", "r", rpm(2), None)).await.unwrap();
    let Verdict::Rate(Decision::Deny { retry_after, .. }) = refused else {
        panic!("{refused:?}")
    };
    // 30 s after the test read Redis's clock, less the time since (a second may have started meanwhile).
    assert!(
        retry_after <= Duration::from_secs(31) && retry_after >= Duration::from_secs(28),
        "{retry_after:?}"
    );
}

#[tokio::test]
async fn tokens_slots_and_spend_are_updated_after_admission() {
    let server = Server::start();
    let redis = store(&server.url(), 1000);
    let tpm = Limits {
        tpm: Some(10),
        ..Limits::default()
    };
    assert!(matches!(
        redis.admit(&ask("t", "1", tpm, None)).await,
        Ok(Verdict::Allow { .. })
    ));
    redis.add_tokens("t", 10, Instant::now());
    let refused = admit_until(&redis, &ask("t", "2", tpm, None), |v| {
        matches!(v, Verdict::Rate(_))
    })
    .await;
    assert!(matches!(refused, Verdict::Rate(_)), "{refused:?}");

    let two = Limits {
        max_concurrent: Some(2),
        ..Limits::default()
    };
    for id in ["a", "b"] {
        assert!(matches!(
            redis.admit(&ask("c", id, two, None)).await,
            Ok(Verdict::Allow { .. })
        ));
    }
    assert_eq!(
        redis.admit(&ask("c", "x", two, None)).await,
        Ok(Verdict::Busy { limit: 2 })
    );
    let lease: i64 = server.cli(&["PTTL", "gpt-api:{c}:slots"]).parse().unwrap();
    assert!(lease > 590_000 && lease <= 600_000, "{lease}");
    redis.end("c", "a");
    let admitted = admit_until(&redis, &ask("c", "d", two, None), |v| {
        matches!(v, Verdict::Allow { .. })
    })
    .await;
    assert!(matches!(admitted, Verdict::Allow { .. }), "{admitted:?}");

    let budget = BudgetAsk {
        budget: Budget {
            day: Some(Usd::from_f64(1.0)),
            month: Some(Usd::from_f64(10.0)),
        },
        amount: Usd::from_f64(0.25),
        period: period(),
    };
    let first = redis
        .admit(&ask("b", "r1", Limits::default(), Some(budget)))
        .await
        .unwrap();
    let Verdict::Allow { budget_left, .. } = first else {
        panic!("{first:?}")
    };
    assert_eq!(budget_left, Some(Usd::from_f64(0.75)));
    assert_eq!(server.cli(&["GET", "gpt-api:{b}:reserved"]), "250000000");
    let day = Keys::new("b").spent_day(budget.period);
    let spent = |nanos: &str| wait(|| server.cli(&["GET", &day]) == nanos);
    redis.settle(
        "b",
        "r1",
        Usd::from_f64(0.25),
        Usd::from_f64(0.6),
        budget.period,
    );
    assert!(spent("600000000"));
    let second = redis
        .admit(&ask("b", "r2", Limits::default(), Some(budget)))
        .await;
    let Ok(Verdict::Allow { budget_left, .. }) = second else {
        panic!("{second:?}")
    };
    assert_eq!(budget_left, Some(Usd::from_f64(0.15)));
    redis.settle(
        "b",
        "r2",
        Usd::from_f64(0.25),
        Usd::from_f64(0.4),
        budget.period,
    );
    assert!(spent("1000000000"));
    let refused = redis
        .admit(&ask("b", "r3", Limits::default(), Some(budget)))
        .await;
    assert!(
        matches!(refused, Ok(Verdict::Budget(BudgetCheck::Deny { .. }))),
        "{refused:?}"
    );
    assert_eq!(
        server.cli(&["EXISTS", "gpt-api:{b}:reserved"]),
        "0",
        "nothing reserved"
    );
    assert_eq!(redis.dropped(), 0);
}

#[tokio::test]
async fn spend_is_seeded_once_per_period() {
    let server = Server::start();
    let (one, two) = (store(&server.url(), 1000), store(&server.url(), 1000));
    let spent = Spent {
        day: Usd(5),
        month: Usd(7),
    };
    // Started as the server starts them: nothing calls admit here.
    one.start();
    two.start();
    one.seed("k", spent, period());
    let day = Keys::new("k").spent_day(period());
    assert!(wait(|| server.cli(&["GET", &day]) == "5"));
    two.seed("k", spent, period());
    two.settle("k", "", Usd::ZERO, Usd(1), period());
    assert!(wait(|| server.cli(&["GET", &day]) == "6"));
    let month = Keys::new("k").spent_month(period());
    assert_eq!(
        server.cli(&["GET", &month]),
        "8",
        "seeded once, then 1 spent"
    );
    let ttl: u64 = server.cli(&["TTL", &month]).parse().unwrap();
    assert!(ttl > 31 * 86_400, "{ttl}");
}

#[tokio::test]
async fn down_answers_at_once_and_up_again_after_the_probe() {
    let port = free_port();
    let redis = store(&format!("redis://127.0.0.1:{port}"), 50);
    let a = ask("k", "r", rpm(5), None);
    assert!(redis.admit(&a).await.is_err(), "nothing listens");
    assert!(!redis.is_up());
    let started = std::time::Instant::now();
    assert!(redis.admit(&a).await.is_err());
    assert!(
        started.elapsed() < Duration::from_millis(5),
        "no call while down"
    );
    redis.end("k", "kept-while-down");

    let server = Server::on(port);
    let up = tokio::time::timeout(Duration::from_secs(5), async {
        while !redis.is_up() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(up.await.is_ok(), "up within 5 s of Redis answering");
    assert!(matches!(redis.admit(&a).await, Ok(Verdict::Allow { .. })));
    drop(server);
    let mut failed = false;
    for _ in 0..100 {
        if redis.admit(&a).await.is_err() {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(failed && !redis.is_up(), "down again once Redis is gone");
}

#[test]
fn any_runtime_may_call_it_even_after_another_stopped() {
    let server = Server::start();
    let redis = store(&server.url(), 1000);
    for round in 0..3 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let verdict = runtime.block_on(redis.admit(&ask("k", "r", rpm(10), None)));
        let Ok(Verdict::Allow { quota, .. }) = verdict else {
            panic!("{verdict:?}")
        };
        assert_eq!(quota.remaining_requests, Some(9 - round));
        drop(runtime);
    }
}

#[test]
fn an_admission_nobody_waited_for_is_given_back_with_its_grant() {
    let (queue, mut rx) = Queue::new();
    let a = ask("k", "r9", rpm(5), None);
    let mut call = AdmitCall::new(&a, 0);
    call.reserved = Some(Usd(30));
    let answer = Answer {
        status: Status::Allowed,
        now: Duration::from_secs(77),
        spent: Spent::default(),
        reserved: Usd::ZERO,
        requests: Vec::new(),
        tokens: Vec::new(),
        granted: 4,
    };
    give_back(
        &queue,
        call.clone(),
        &Answer {
            status: Status::Rate,
            ..answer.clone()
        },
    );
    assert!(rx.try_recv().is_err(), "a refusal took nothing");
    give_back(&queue, call, &answer);
    let undo = rx.try_recv().unwrap();
    assert_eq!(
        undo,
        Op::Undo {
            keys: Keys::new("k"),
            request_id: "r9".into(),
            member: "30:r9".into(),
            reserved: Usd(30),
            second: Some(77),
            count: 5,
        }
    );
}

#[test]
fn a_bad_url_is_an_error_without_its_password() {
    let settings = RedisSettings {
        url: Secret::new("redis://:hunter22@cache/x"),
        timeout: Duration::from_millis(50),
        on_down: OnRedisDown::Local,
    };
    let Err(e) = RedisStore::new(&settings) else {
        panic!("a database named x was taken");
    };
    let text = e.to_string();
    assert!(
        text.starts_with("cluster.redis_url redis://***@cache/x"),
        "{text}"
    );
    assert!(!text.contains("hunter22"), "{text}");
}

#[tokio::test]
async fn a_redis_slower_than_the_timeout_is_down() {
    // Accepts and reads, never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let redis = store(&format!("redis://127.0.0.1:{port}"), 50);
    let started = std::time::Instant::now();
    let answer = redis.admit(&ask("k", "r", rpm(5), None)).await;
    let waited = started.elapsed();
    assert!(answer.is_err(), "{answer:?}");
    assert!(
        waited >= Duration::from_millis(50) && waited < Duration::from_millis(500),
        "{waited:?}"
    );
    assert!(!redis.is_up());
    hold.abort();
}
