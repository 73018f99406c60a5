//! Batches: a thread's admissions that arrive together go in one call with the verdicts of separate calls;
//! a batch of updates whose answer was lost is sent again only if Redis did not run it (its marker).

use std::collections::VecDeque;

use redis::Script;

use super::super::keys::Keys;
use super::super::lane::evaluate;
use super::super::script::{AdmitCall, Status, ADMIT};
use super::super::updates::{Op, Queue};
use super::server::Server;
use super::{ask, rpm, store};
use crate::ratelimit::store::{LimitStore, Limits, Verdict};

#[tokio::test]
async fn admissions_arriving_together_go_in_fewer_calls_with_the_same_verdicts() {
    let server = Server::start();
    let redis = std::sync::Arc::new(store(&server.url(), 2000));
    // Connected and the script loaded before the burst.
    let first = redis.admit(&ask("b", "r0", rpm(30), None)).await;
    assert!(matches!(first, Ok(Verdict::Allow { .. })), "{first:?}");
    let calls = || -> u64 {
        let stats = server.cli(&["INFO", "commandstats"]);
        let line = stats.lines().find(|l| l.starts_with("cmdstat_evalsha:"));
        let calls = line.and_then(|l| l.split("calls=").nth(1)?.split(',').next()?.parse().ok());
        calls.unwrap_or(0)
    };
    let before = calls();
    let tasks: Vec<_> = (1..=49)
        .map(|i| {
            let redis = std::sync::Arc::clone(&redis);
            tokio::spawn(async move {
                let id = format!("r{i}");
                redis.admit(&ask("b", &id, rpm(30), None)).await
            })
        })
        .collect();
    let mut allowed = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(Verdict::Allow { quota, .. }) => allowed.push(quota.remaining_requests.unwrap()),
            Ok(Verdict::Rate(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    allowed.sort_unstable();
    assert_eq!(
        allowed,
        (0..29).collect::<Vec<u32>>(),
        "29 more of 30, each its own place"
    );
    let sent = calls() - before;
    assert!(sent < 49, "{sent} calls for 49 admissions");
    eprintln!("49 admissions in {sent} calls");
    assert_eq!(server.cli(&["HGET", "gpt-api:{b}:requests", "sum"]), "30");
}

#[tokio::test]
async fn one_call_of_two_keys_interleaved_answers_as_separate_calls() {
    let server = Server::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let script = Script::new(ADMIT);
    let two = Limits {
        rpm: Some(2),
        max_concurrent: Some(5),
        ..Limits::default()
    };
    let asks = [
        ask("a", "a1", two, None),
        ask("b", "b1", rpm(3), None),
        ask("a", "a2", two, None),
        ask("b", "b2", rpm(3), None),
        ask("a", "a3", two, None),
        ask("b", "b3", rpm(3), None),
    ];
    let calls: Vec<AdmitCall> = asks.iter().map(|a| AdmitCall::new(a, 0)).collect();
    let answers = evaluate(&script, &mut conn, &calls.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    let statuses: Vec<Status> = answers.iter().map(|a| a.status).collect();
    use Status::{Allowed, Rate};
    assert_eq!(
        statuses,
        [Allowed, Allowed, Allowed, Allowed, Rate, Allowed]
    );
    let left = |i: usize| match answers[i].verdict(&asks[i]) {
        Verdict::Allow { quota, .. } => quota.remaining_requests,
        other => panic!("{other:?}"),
    };
    assert_eq!([left(0), left(2)], [Some(1), Some(0)]);
    assert_eq!([left(1), left(3), left(5)], [Some(2), Some(1), Some(0)]);
    // The refusal saw the batch's own two requests of "a", so its retry time is the window's.
    let counted: u64 = answers[4].requests.iter().map(|&(_, n)| n).sum();
    assert_eq!(counted, 2, "{:?}", answers[4]);
    assert!(matches!(answers[4].verdict(&asks[4]), Verdict::Rate(_)));
    assert_eq!(server.cli(&["HGET", "gpt-api:{a}:requests", "sum"]), "2");
    assert_eq!(server.cli(&["HGET", "gpt-api:{b}:requests", "sum"]), "3");
    assert_eq!(
        server.cli(&["ZCARD", "gpt-api:{a}:slots"]),
        "2",
        "the refused took none"
    );
    let ttl: i64 = server
        .cli(&["TTL", "gpt-api:{b}:requests"])
        .parse()
        .unwrap();
    assert!(ttl > 55 && ttl <= 61, "{ttl}");
}

#[tokio::test]
async fn a_batch_whose_answer_was_lost_is_not_counted_twice() {
    let server = Server::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let (queue, _rx) = Queue::new();
    let mut sender = queue.sender();
    let tokens = |n: u64| Op::Tokens {
        keys: Keys::new("k"),
        tokens: n,
    };
    let sum = || server.cli(&["HGET", "gpt-api:{k}:tokens", "sum"]);

    let mut kept = VecDeque::from([tokens(5), tokens(2)]);
    sender.send_front(&mut conn, &mut kept).await;
    assert!(kept.is_empty());
    assert_eq!(sum(), "7");
    let markers = server.cli(&["KEYS", "gpt-api:sent:*"]);
    assert_eq!(markers.lines().count(), 1, "{markers}");
    let ttl: u64 = server.cli(&["PTTL", markers.trim()]).parse().unwrap();
    assert!(ttl > 590_000 && ttl <= 600_000, "{ttl}");

    // Redis ran it, its answer was lost: the same updates are at the front again, and a newer one behind.
    kept.extend([tokens(5), tokens(2), tokens(100)]);
    sender.lose_answer(2);
    sender.send_front(&mut conn, &mut kept).await;
    assert_eq!(sum(), "7", "not run twice");
    assert_eq!(kept, VecDeque::from([tokens(100)]));
    sender.send_front(&mut conn, &mut kept).await;
    assert_eq!(sum(), "107");

    // Lost before Redis ran it: sent again.
    kept.extend([tokens(1), tokens(1)]);
    sender.lose_unsent(2);
    sender.send_front(&mut conn, &mut kept).await;
    assert!(kept.is_empty());
    assert_eq!(sum(), "109");

    // Redis lost its scripts (restarted, flushed): none of the transaction's updates ran; loaded, sent once.
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    kept.extend([tokens(1), tokens(10)]);
    sender.send_front(&mut conn, &mut kept).await;
    assert!(kept.is_empty());
    assert_eq!(sum(), "120");
}

#[tokio::test]
async fn a_caller_dropped_while_it_sends_leaves_the_others_their_answers_and_gives_back() {
    let server = Server::start();
    let redis = store(&server.url(), 2000);
    // Connected and the script loaded.
    let warm = redis.admit(&ask("other", "w", rpm(10), None)).await;
    assert!(matches!(warm, Ok(Verdict::Allow { .. })), "{warm:?}");
    let (a, b, c) = (
        ask("k", "a", rpm(10), None),
        ask("k", "b", rpm(10), None),
        ask("k", "c", rpm(10), None),
    );
    let mut sends_a = Box::pin(redis.admit(&a));
    let mut sends_b = Box::pin(redis.admit(&b));
    // Polled once each: a and b take the two places in flight; c comes after them.
    assert!(futures_util::poll!(&mut sends_a).is_pending());
    assert!(futures_util::poll!(&mut sends_b).is_pending());
    let waits_c = redis.admit(&c);
    drop(sends_a);
    let (b, c) = tokio::join!(sends_b, waits_c);
    assert!(matches!(b, Ok(Verdict::Allow { .. })), "{b:?}");
    assert!(matches!(c, Ok(Verdict::Allow { .. })), "{c:?}");
    assert!(redis.is_up());
    // What a's call took is given back (by the task that sent it, then the update task).
    let sum = || server.cli(&["HGET", "gpt-api:{k}:requests", "sum"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sum() != "2" && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(sum(), "2");
}
