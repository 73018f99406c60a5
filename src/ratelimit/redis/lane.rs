//! One thread's way to Redis: its connection, and its admissions sent together, the first at once and those
//! that arrive while calls are out in one call after them (no wait added, fewer calls under load).
//!
//! Each waiting admission has its own answer channel; an answer nobody waits for any more (the caller's
//! timeout passed) is given back through the update queue, as before batching.

use std::sync::{Arc, Mutex, PoisonError};

use redis::aio::ConnectionManager;
use redis::{Script, Value};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::script::{AdmitCall, Answer};
use super::updates::Queue;
use super::{give_back, LEASE};
use crate::ratelimit::memory::WINDOW;

/// Admissions in one call, at most (8 arguments each, and 7 keys for each gateway key among them).
const MAX_BATCH: usize = 64;
/// Calls out at once per thread: while one waits on Redis, the next batch need not.
const MAX_IN_FLIGHT: u8 = 2;

/// What the caller waits for: the answer, or why there is none.
pub type Reply = Result<Answer, String>;

/// A connection and the admissions waiting to go through it.
pub struct Lane {
    conn: ConnectionManager,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    waiting: Vec<(AdmitCall, oneshot::Sender<Reply>)>,
    /// Tasks sending (each takes what waits when its call returns), at most [`MAX_IN_FLIGHT`].
    sending: u8,
}

impl Lane {
    pub fn new(conn: ConnectionManager) -> Lane {
        Lane {
            conn,
            state: Mutex::new(State::default()),
        }
    }

    /// Queues `call`; starts a sending task on `runtime` unless one is running.
    pub fn submit(
        self: &Arc<Self>,
        call: AdmitCall,
        reply: oneshot::Sender<Reply>,
        runtime: &Handle,
        script: &Arc<Script>,
        queue: &Arc<Queue>,
    ) {
        {
            let mut state = self.lock();
            state.waiting.push((call, reply));
            if state.sending >= MAX_IN_FLIGHT {
                return;
            }
            state.sending += 1;
        }
        let (lane, script, queue) = (Arc::clone(self), Arc::clone(script), Arc::clone(queue));
        runtime.spawn(async move { lane.send_all(&script, &queue).await });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends what waits, one call per batch, until nothing does.
    async fn send_all(&self, script: &Script, queue: &Queue) {
        let mut sending = Sending {
            lane: self,
            finished: false,
        };
        let mut conn = self.conn.clone();
        loop {
            let batch = {
                let mut state = self.lock();
                if state.waiting.is_empty() {
                    state.sending -= 1;
                    sending.finished = true;
                    return;
                }
                let n = state.waiting.len().min(MAX_BATCH);
                state.waiting.drain(..n).collect::<Vec<_>>()
            };
            let calls: Vec<&AdmitCall> = batch.iter().map(|(call, _)| call).collect();
            match evaluate(script, &mut conn, &calls).await {
                Ok(answers) => {
                    for ((call, reply), answer) in batch.into_iter().zip(answers) {
                        // The caller stopped waiting: what the script took is given back.
                        if let Err(Ok(answer)) = reply.send(Ok(answer)) {
                            give_back(queue, call, &answer);
                        }
                    }
                }
                Err(why) => {
                    for (_, reply) in batch {
                        let _ = reply.send(Err(why.clone()));
                    }
                }
            }
        }
    }
}

/// Held by a sending task: should it end without finishing (its runtime shut down), another may start, and
/// when none is left the callers still waiting hear at once that no answer comes.
struct Sending<'a> {
    lane: &'a Lane,
    /// Ended as it should: nothing to do.
    finished: bool,
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut state = self.lane.lock();
        state.sending = state.sending.saturating_sub(1);
        if state.sending == 0 {
            state.waiting.clear();
        }
    }
}

/// Runs the admission script for `calls` (loading it first if Redis lost it) and reads its answers. The keys
/// of a gateway key go once per call, however many of its admissions the call carries.
pub async fn evaluate(
    script: &Script,
    conn: &mut ConnectionManager,
    calls: &[&AdmitCall],
) -> Result<Vec<Answer>, String> {
    let mut invocation = script.prepare_invoke();
    invocation.arg(WINDOW).arg(LEASE.as_millis());
    let mut groups: Vec<&[String; 7]> = Vec::new();
    for call in calls {
        let group = match groups.iter().position(|g| **g == call.key_args) {
            Some(i) => i + 1,
            None => {
                groups.push(&call.key_args);
                for key in &call.key_args {
                    invocation.key(key.as_str());
                }
                groups.len()
            }
        };
        invocation.arg(group);
        for arg in &call.args {
            invocation.arg(arg.as_str());
        }
    }
    let value: Value = invocation
        .invoke_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    let Value::Array(items) = value else {
        return Err(format!("expected an array of answers, got {value:?}"));
    };
    if items.len() != calls.len() {
        let (got, sent) = (items.len(), calls.len());
        return Err(format!("{got} answers to {sent} admissions"));
    }
    items.iter().map(Answer::parse).collect()
}
