//! Unit tests of the update queue: each update's call, tokens coalesced per key, bounds when full or down.

use super::*;

fn text(cmd: &Cmd) -> String {
    String::from_utf8_lossy(&cmd.get_packed_command()).replace("\r\n", " ")
}

#[test]
fn each_update_is_one_call_of_the_script() {
    let keys = Keys::new("team");
    let period = Period {
        day: 739_589,
        month: 24_323,
    };
    let settle = Op::Settle {
        keys: keys.clone(),
        member: member(Usd(10), "r1"),
        reserved: Usd(10),
        cost: Usd(7),
        period,
    };
    let cmd = text(&settle.command("abc"));
    assert!(cmd.contains("EVALSHA $3 abc $1 4"), "{cmd}");
    assert!(cmd.contains("gpt-api:{team}:reservations"), "{cmd}");
    assert!(cmd.contains("$6 settle $5 10:r1 $2 10 $1 7"), "{cmd}");
    let end = text(
        &Op::End {
            keys,
            request_id: "r1".into(),
        }
        .command("abc"),
    );
    assert!(
        end.ends_with("$20 gpt-api:{team}:slots $3 end $2 r1 "),
        "{end}"
    );
}

#[test]
fn tokens_of_one_key_are_sent_as_one_update() {
    let tokens = |name: &str, n: u64| Op::Tokens {
        keys: Keys::new(name),
        tokens: n,
    };
    let end = Op::End {
        keys: Keys::new("a"),
        request_id: "r".into(),
    };
    let ops = [
        tokens("a", 1),
        end.clone(),
        tokens("b", 5),
        tokens("a", 2),
        tokens("a", 3),
    ];
    let sent = coalesce(ops.iter());
    assert_eq!(sent, vec![tokens("a", 6), end, tokens("b", 5)]);
}

#[test]
fn a_full_queue_drops_and_counts() {
    let (queue, _rx) = Queue::new();
    let op = Op::End {
        keys: Keys::new("k"),
        request_id: "r".into(),
    };
    for _ in 0..QUEUE + 3 {
        queue.push(op.clone());
    }
    assert_eq!(queue.dropped(), 3);
}

#[test]
fn updates_kept_while_down_are_bounded() {
    let (queue, _rx) = Queue::new();
    let mut sender = queue.sender();
    let op = Op::Tokens {
        keys: Keys::new("k"),
        tokens: 1,
    };
    let mut kept = VecDeque::new();
    let mut incoming = vec![op; KEPT + 5];
    sender.keep(&mut kept, &mut incoming);
    assert_eq!(kept.len(), KEPT);
    assert_eq!(queue.dropped(), 5);
}
