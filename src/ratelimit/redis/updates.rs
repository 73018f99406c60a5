//! The updates after admission (a slot freed, tokens, spend settled or seeded): queued without waiting, sent
//! in pipelined batches by one task on the store's runtime, and kept to be sent again while Redis is down.
//!
//! A batch is one transaction (`MULTI` ... `EXEC`) that also sets a marker naming it (this node's random tag
//! and the batch's number): a batch whose answer was lost (a timeout after Redis ran it, a dropped
//! connection) is sent again only if its marker is absent, so no token or dollar is counted twice. Markers
//! live [`MARKER_TTL`]; Redis's own commands run a transaction whole or not at all.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Cmd, RedisResult, Script, Value};
use tokio::sync::{mpsc, oneshot};

use super::health::Health;
use super::keys::{Keys, DAY_TTL, MONTH_TTL, PREFIX};
use super::script::UPDATE;
use crate::money::Usd;
use crate::ratelimit::budget::{Period, Spent};
use crate::ratelimit::memory::WINDOW;

/// Updates waiting for the task, at most; a full queue drops (and counts) the newest.
const QUEUE: usize = 16_384;
/// Updates per pipeline.
const BATCH: usize = 256;
/// Updates kept while Redis is down, at most; beyond, the oldest are dropped (and counted).
const KEPT: usize = 65_536;
/// How long the task waits for more updates after the first of a batch: a round trip per few milliseconds
/// rather than one per request.
const LINGER: Duration = Duration::from_millis(5);
/// How often a task holding updates looks whether Redis is back.
const DOWN_POLL: Duration = Duration::from_millis(100);
/// How long a batch's marker is kept: a batch whose answer was lost longer ago than this and that Redis did
/// run would be counted twice (a partition this long with Redis's memory intact).
const MARKER_TTL: Duration = Duration::from_secs(600);

/// One update, sent as one call of `update.lua`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A request's concurrency slot is free.
    End { keys: Keys, request_id: String },
    /// Tokens of a finished request, counted in Redis's current second.
    Tokens { keys: Keys, tokens: u64 },
    /// A request's reservation `member` (empty: none) released and `cost` added to the period's spend.
    Settle {
        keys: Keys,
        member: String,
        reserved: Usd,
        cost: Usd,
        period: Period,
    },
    /// Spend read back from the records, added only if no node seeded this period yet.
    Seed {
        keys: Keys,
        spent: Spent,
        period: Period,
    },
    /// An admission whose caller stopped waiting: its slot, reservation and counted request given back (with
    /// what it was granted: `count` requests of `second`); or what a grant left unused (no id, no member).
    Undo {
        keys: Keys,
        request_id: String,
        member: String,
        reserved: Usd,
        second: Option<u64>,
        count: u64,
    },
}

/// A reservation's member in the `reservations` set: its amount, so that an expired lease can be subtracted.
pub fn member(reserved: Usd, request_id: &str) -> String {
    format!("{}:{request_id}", reserved.0)
}

impl Op {
    /// `EVALSHA <update.lua> numkeys KEYS... op ARGV...`
    pub fn command(&self, sha: &str) -> Cmd {
        let (op, keys, args): (&str, Vec<String>, Vec<String>) = match self {
            Op::End { keys, request_id } => ("end", vec![keys.slots()], vec![request_id.clone()]),
            Op::Tokens { keys, tokens } => (
                "tokens",
                vec![keys.tokens()],
                vec![tokens.to_string(), (WINDOW + 2).to_string()],
            ),
            Op::Settle {
                keys,
                member,
                reserved,
                cost,
                period,
            } => (
                "settle",
                vec![
                    keys.reservations(),
                    keys.reserved(),
                    keys.spent_day(*period),
                    keys.spent_month(*period),
                ],
                vec![
                    member.clone(),
                    reserved.0.to_string(),
                    cost.0.to_string(),
                    DAY_TTL.as_secs().to_string(),
                    MONTH_TTL.as_secs().to_string(),
                ],
            ),
            Op::Seed {
                keys,
                spent,
                period,
            } => (
                "seed",
                vec![
                    keys.seeded_day(*period),
                    keys.spent_day(*period),
                    keys.seeded_month(*period),
                    keys.spent_month(*period),
                ],
                vec![
                    spent.day.0.to_string(),
                    spent.month.0.to_string(),
                    DAY_TTL.as_secs().to_string(),
                    MONTH_TTL.as_secs().to_string(),
                ],
            ),
            Op::Undo {
                keys,
                request_id,
                member,
                reserved,
                second,
                count,
            } => (
                "undo",
                vec![
                    keys.slots(),
                    keys.reservations(),
                    keys.reserved(),
                    keys.requests(),
                ],
                vec![
                    request_id.clone(),
                    member.clone(),
                    reserved.0.to_string(),
                    second.map_or(String::new(), |s| s.to_string()),
                    count.to_string(),
                ],
            ),
        };
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(sha).arg(keys.len()).arg(keys).arg(op).arg(args);
        cmd
    }
}

/// The sending side: never waits.
#[derive(Debug)]
pub struct Queue {
    tx: mpsc::Sender<Op>,
    /// Updates lost: queue full, kept too long while Redis was down, refused by Redis, or left at shutdown.
    dropped: Arc<AtomicU64>,
}

impl Queue {
    pub fn new() -> (Queue, mpsc::Receiver<Op>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        (Queue { tx, dropped }, rx)
    }

    pub fn push(&self, op: Op) {
        if self.tx.try_send(op).is_err() {
            count_dropped(&self.dropped, 1, "the queue is full");
        }
    }

    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn sender(&self) -> Sender {
        Sender {
            script: Arc::new(Script::new(UPDATE)),
            dropped: Arc::clone(&self.dropped),
            tag: uuid::Uuid::now_v7().simple().to_string(),
            batches: 0,
            unsure: None,
        }
    }
}

/// Counts `n` lost updates; a WARN line at the first and then at each power of two.
fn count_dropped(dropped: &AtomicU64, n: u64, why: &str) {
    let before = dropped.fetch_add(n, Ordering::Relaxed);
    let after = before + n;
    if (before + 1..=after).any(u64::is_power_of_two) {
        log::warn!("Redis updates: {n} dropped ({why}); {after} in all since start");
    }
}

/// The task's side: takes updates off the queue and sends them.
pub struct Sender {
    script: Arc<Script>,
    dropped: Arc<AtomicU64>,
    /// This sender's random name in its batches' markers.
    tag: String,
    /// Batches numbered so far.
    batches: u64,
    /// The batch at the front of `kept` whose answer was lost: its size and marker.
    unsure: Option<(usize, String)>,
}

impl Sender {
    /// Sends until `stop`, then once more what is queued (while Redis answers). Runs on the store's runtime.
    pub async fn run(
        mut self,
        mut conn: ConnectionManager,
        health: Arc<Health>,
        mut rx: mpsc::Receiver<Op>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut kept: VecDeque<Op> = VecDeque::new();
        let mut incoming = Vec::with_capacity(BATCH);
        loop {
            if kept.is_empty() {
                tokio::select! {
                    n = rx.recv_many(&mut incoming, BATCH) => if n == 0 { break },
                    _ = &mut stop => break,
                }
                if incoming.len() < BATCH {
                    tokio::time::sleep(LINGER).await;
                }
            }
            while incoming.len() < BATCH {
                match rx.try_recv() {
                    Ok(op) => incoming.push(op),
                    Err(_) => break,
                }
            }
            self.keep(&mut kept, &mut incoming);
            if !health.is_up() {
                tokio::select! {
                    _ = tokio::time::sleep(DOWN_POLL) => continue,
                    _ = &mut stop => break,
                }
            }
            self.send_some(&mut conn, &mut kept, &health).await;
        }
        // Stopping: what is queued now, while Redis answers.
        while let Ok(op) = rx.try_recv() {
            kept.push_back(op);
        }
        while !kept.is_empty() && health.is_up() {
            self.send_some(&mut conn, &mut kept, &health).await;
        }
        if !kept.is_empty() {
            count_dropped(&self.dropped, kept.len() as u64, "shutdown with Redis down");
        }
    }

    fn keep(&mut self, kept: &mut VecDeque<Op>, incoming: &mut Vec<Op>) {
        kept.extend(incoming.drain(..));
        let over = kept.len().saturating_sub(KEPT);
        if over > 0 {
            kept.drain(..over);
            // The unsure batch at the front lost its oldest updates (or all of them) with the rest.
            self.unsure = self
                .unsure
                .take()
                .and_then(|(n, marker)| (n > over).then(|| (n - over, marker)));
            count_dropped(
                &self.dropped,
                over as u64,
                "kept too long while Redis was down",
            );
        }
    }

    /// Sends one batch from the front of `kept`; on a failure it stays there (with its marker, to be looked
    /// up before it is sent again) and Redis is marked down.
    async fn send_some(
        &mut self,
        conn: &mut ConnectionManager,
        kept: &mut VecDeque<Op>,
        health: &Health,
    ) {
        let (n, marker) = match self.unsure.take() {
            Some((n, marker)) => match ran(conn, &marker).await {
                Ok(true) => {
                    kept.drain(..n.min(kept.len()));
                    return;
                }
                Ok(false) => (n, marker),
                Err(e) => {
                    self.unsure = Some((n, marker));
                    health.fail(&format!("sending updates: {e}"));
                    return;
                }
            },
            None => {
                self.batches += 1;
                let marker = format!("{PREFIX}sent:{}:{}", self.tag, self.batches);
                (kept.len().min(BATCH), marker)
            }
        };
        let batch = coalesce(kept.iter().take(n));
        match self.send(conn, &batch, &marker).await {
            Ok(()) => {
                kept.drain(..n);
            }
            Err(e) => {
                self.unsure = Some((n, marker));
                health.fail(&format!("sending updates: {e}"));
            }
        }
    }

    /// One transaction of `batch` and its marker; updates Redis refuses are dropped (and counted), except for
    /// an unknown script, which is loaded and the batch sent again (each update is the same script, so none
    /// ran).
    async fn send(
        &self,
        conn: &mut ConnectionManager,
        batch: &[Op],
        marker: &str,
    ) -> RedisResult<()> {
        let ttl = u64::try_from(MARKER_TTL.as_millis()).unwrap_or(u64::MAX);
        for attempt in 0..2 {
            let mut pipe = redis::pipe();
            pipe.atomic().ignore_errors();
            for op in batch {
                pipe.add_command(op.command(self.script.get_hash()));
            }
            pipe.cmd("SET").arg(marker).arg(1).arg("PX").arg(ttl);
            let mut results: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
            results.pop();
            let unknown = results
                .iter()
                .any(|r| matches!(r, Err(e) if e.code() == Some("NOSCRIPT")));
            if unknown && attempt == 0 {
                self.script.load_async(conn).await?;
                continue;
            }
            let refused = results.iter().filter(|r| r.is_err()).count();
            if refused > 0 {
                let first = results.iter().find_map(|r| r.as_ref().err());
                let why = first.map_or(String::new(), |e| e.to_string());
                count_dropped(&self.dropped, refused as u64, &format!("refused: {why}"));
            }
            break;
        }
        Ok(())
    }
}

#[cfg(test)]
impl Sender {
    /// As if the answer to the last batch sent had been lost: its first `n` updates are at the front again.
    pub fn lose_answer(&mut self, n: usize) {
        self.unsure = Some((n, format!("{PREFIX}sent:{}:{}", self.tag, self.batches)));
    }

    /// As if a batch that never reached Redis had been lost.
    pub fn lose_unsent(&mut self, n: usize) {
        self.batches += 1;
        self.lose_answer(n);
    }

    pub async fn send_front(&mut self, conn: &mut ConnectionManager, kept: &mut VecDeque<Op>) {
        let health = Health::new(&crate::config::RedisSettings {
            url: crate::secret::Secret::new("redis://127.0.0.1"),
            timeout: Duration::from_secs(1),
            on_down: crate::config::OnRedisDown::Local,
        });
        self.send_some(conn, kept, &health).await;
    }
}

/// Whether the batch marked `marker` ran.
async fn ran(conn: &mut ConnectionManager, marker: &str) -> RedisResult<bool> {
    redis::cmd("EXISTS").arg(marker).query_async(conn).await
}

/// The updates with each key's tokens added up into one (they all land in Redis's current second): one call
/// per key and batch instead of one per request.
fn coalesce<'a>(ops: impl Iterator<Item = &'a Op>) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::new();
    let mut at: HashMap<&Keys, usize> = HashMap::new();
    for op in ops {
        if let Op::Tokens { keys, tokens } = op {
            if let Some(Op::Tokens { tokens: sum, .. }) = at.get(keys).and_then(|&i| out.get_mut(i))
            {
                *sum = sum.saturating_add(*tokens);
                continue;
            }
            at.insert(keys, out.len());
        }
        out.push(op.clone());
    }
    out
}

#[cfg(test)]
mod tests;
