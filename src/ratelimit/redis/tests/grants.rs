//! Grants against a real Redis: what the script grants, a busy key admitted with few calls, and two nodes
//! sharing one rpm never admitting more than it, every leftover given back.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::super::lane::evaluate;
use super::super::script::{AdmitCall, Status, ADMIT};
use super::server::{wait, Server};
use super::{ask, store};
use crate::ratelimit::store::{LimitStore, Limits, Verdict};

fn limits(rpm: u32, tpm: Option<u64>) -> Limits {
    Limits {
        rpm: Some(rpm),
        tpm,
        max_concurrent: None,
    }
}

/// Waits until Redis's clock is early in a second (a grant is not made in a second's last tenth).
fn early_in_a_second(server: &Server) {
    loop {
        let time = server.cli(&["TIME"]);
        let micros: u64 = time.lines().nth(1).unwrap().trim().parse().unwrap();
        if micros < 500_000 {
            return;
        }
        std::thread::sleep(Duration::from_micros(1_000_000 - micros + 1_000));
    }
}

fn evalsha_calls(server: &Server) -> u64 {
    let stats = server.cli(&["INFO", "commandstats"]);
    let line = stats.lines().find(|l| l.starts_with("cmdstat_evalsha:"));
    let calls = line.and_then(|l| l.split("calls=").nth(1)?.split(',').next()?.parse().ok());
    calls.unwrap_or(0)
}

#[tokio::test]
async fn the_script_grants_an_eighth_of_what_the_rpm_leaves_and_none_when_tokens_are_half_full() {
    let server = Server::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let script = Script::new(ADMIT);
    early_in_a_second(&server);
    let one = |want: u32, key: &'static str, limits: Limits| {
        AdmitCall::new(&ask(key, "r", limits, None), want)
    };
    let calls = [
        one(100, "g", limits(1000, None)),
        one(1000, "g", limits(1000, None)),
        one(10, "t", limits(1000, Some(100))),
    ];
    // The third's tokens window holds 40 of 100: under half, it is granted.
    let now = server
        .cli(&["TIME"])
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_owned();
    server.cli(&[
        "HSET",
        "gpt-api:{t}:tokens",
        &now,
        "40",
        "sum",
        "40",
        "oldest",
        &now,
        "newest",
        &now,
    ]);
    let answers = evaluate(&script, &mut conn, &calls.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(answers.iter().all(|a| a.status == Status::Allowed));
    let granted: Vec<u32> = answers.iter().map(|a| a.granted).collect();
    // 100 of the 124 an eighth of 999 allows; then an eighth of 1000 - 101 - 1 = 112.
    assert_eq!(granted, [100, 112, 10]);
    assert_eq!(server.cli(&["HGET", "gpt-api:{g}:requests", "sum"]), "214");
    // The grant's admissions go into the same second as the request's own.
    let second = answers[0].now.as_secs().to_string();
    assert_eq!(
        server.cli(&["HGET", "gpt-api:{g}:requests", &second]),
        "214"
    );

    server.cli(&["HSET", "gpt-api:{t}:tokens", &now, "60", "sum", "60"]);
    early_in_a_second(&server);
    let answers = evaluate(&script, &mut conn, &[&calls[2]]).await.unwrap();
    assert_eq!(answers[0].status, Status::Allowed);
    assert_eq!(answers[0].granted, 0, "tokens over half the tpm: no grant");
    // Near the rpm: nothing beyond the request itself.
    server.cli(&["HINCRBY", "gpt-api:{g}:requests", &second, "780"]);
    server.cli(&["HINCRBY", "gpt-api:{g}:requests", "sum", "780"]);
    let answers = evaluate(&script, &mut conn, &[&calls[0]]).await.unwrap();
    assert_eq!(
        (answers[0].status, answers[0].granted),
        (Status::Allowed, 0),
        "5 left of 1000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_key_is_admitted_mostly_from_grants_and_redis_counts_what_was_admitted() {
    let server = Server::start();
    let redis = Arc::new(store(&server.url(), 2000));
    let first = redis
        .admit(&ask("busy", "r0", limits(1_000_000, Some(1 << 40)), None))
        .await;
    assert!(matches!(first, Ok(Verdict::Allow { .. })), "{first:?}");
    let before = evalsha_calls(&server);
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let redis = Arc::clone(&redis);
            tokio::spawn(async move {
                let mut allowed = 0u64;
                for i in 0..250 {
                    let id = format!("r{t}-{i}");
                    let a = ask("busy", &id, limits(1_000_000, Some(1 << 40)), None);
                    if let Ok(Verdict::Allow { .. }) = redis.admit(&a).await {
                        allowed += 1;
                    }
                }
                allowed
            })
        })
        .collect();
    let mut allowed = 1;
    for task in tasks {
        allowed += task.await.unwrap();
    }
    assert_eq!(allowed, 4001);
    let calls = evalsha_calls(&server) - before;
    eprintln!("4000 admissions in {calls} calls");
    assert!(calls < 1000, "{calls} calls for 4000 admissions");
    // Once the grants' seconds end, what they left is given back: Redis holds exactly what was admitted.
    let sum = || server.cli(&["HGET", "gpt-api:{busy}:requests", "sum"]);
    assert!(
        wait(|| sum() == "4001"),
        "{} counted for 4001 admitted",
        sum()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sharing_one_rpm_never_admit_more_and_give_back_every_leftover() {
    let server = Server::start();
    let nodes = [
        Arc::new(store(&server.url(), 2000)),
        Arc::new(store(&server.url(), 2000)),
    ];
    let rpm = limits(1000, None);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let node = Arc::clone(&nodes[t % 2]);
            tokio::spawn(async move {
                let mut allowed = 0u32;
                for i in 0..200 {
                    let id = format!("r{t}-{i}");
                    match node.admit(&ask("shared", &id, rpm, None)).await {
                        Ok(Verdict::Allow { .. }) => allowed += 1,
                        Ok(Verdict::Rate(_)) => {}
                        other => panic!("{other:?}"),
                    }
                    if i % 20 == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                allowed
            })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        allowed += task.await.unwrap();
    }
    eprintln!("{allowed} of 1600 admitted by two nodes for an rpm of 1000");
    assert!(allowed <= 1000, "{allowed} admitted for an rpm of 1000");
    let sum = || server.cli(&["HGET", "gpt-api:{shared}:requests", "sum"]);
    assert!(
        wait(|| sum() == allowed.to_string()),
        "{} counted for {allowed} admitted",
        sum()
    );
    // What leftovers freed is admitted afterwards, one by one: 1000 in all, then refusals.
    for i in 0..(1000 - allowed) {
        let id = format!("late{i}");
        let verdict = nodes[(i % 2) as usize]
            .admit(&ask("shared", &id, rpm, None))
            .await;
        assert!(
            matches!(verdict, Ok(Verdict::Allow { .. })),
            "{i}: {verdict:?}"
        );
    }
    let refused = nodes[0].admit(&ask("shared", "over", rpm, None)).await;
    assert!(matches!(refused, Ok(Verdict::Rate(_))), "{refused:?}");
}
