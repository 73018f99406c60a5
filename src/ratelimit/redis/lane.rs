//! One thread's way to Redis: its connection, and its admissions sent together, the first at once and those
//! that arrive while calls are out in one call after them (no wait added, fewer calls under load).
//!
//! A caller that finds a place in flight sends the call itself (no task in between: what one connection
//! waits on is Redis alone); what arrives meanwhile goes in the next call, by the next caller or a task.
//! Each waiting admission has its own answer channel; an answer nobody waits for any more (the caller's
//! timeout passed) is given back through the update queue, as before batching.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

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

    /// Queues `call`. While fewer than [`MAX_IN_FLIGHT`] calls are out, returns the sending that the caller
    /// runs itself: one call (its own admission and any that wait with it), then a task of its own for what
    /// waits after it. An admission alone thus goes out and comes back with no hop to another task.
    pub fn submit(
        self: &Arc<Self>,
        call: AdmitCall,
        reply: oneshot::Sender<Reply>,
        script: &Arc<Script>,
        queue: &Arc<Queue>,
    ) -> Option<Sending> {
        {
            let mut state = self.lock();
            state.waiting.push((call, reply));
            if state.sending >= MAX_IN_FLIGHT {
                return None;
            }
            state.sending += 1;
        }
        let (lane, script, queue) = (Arc::clone(self), Arc::clone(script), Arc::clone(queue));
        Some(Sending(Some(Box::pin(lane.send_first(script, queue)))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Up to [`MAX_BATCH`] of the admissions waiting; `None` when none wait, and the sender has ended.
    fn take(&self, place: &mut Place<'_>) -> Option<Batch> {
        let mut state = self.lock();
        if state.waiting.is_empty() {
            state.sending -= 1;
            place.finished = true;
            return None;
        }
        let n = state.waiting.len().min(MAX_BATCH);
        Some(state.waiting.drain(..n).collect())
    }

    /// One call, then what waits after it to a task of its own.
    async fn send_first(self: Arc<Self>, script: Arc<Script>, queue: Arc<Queue>) {
        let mut place = Place {
            lane: &self,
            finished: false,
        };
        let mut conn = self.conn.clone();
        let Some(batch) = self.take(&mut place) else {
            return;
        };
        send(&script, &mut conn, batch, &queue).await;
        {
            let mut state = self.lock();
            place.finished = true;
            if state.waiting.is_empty() {
                state.sending -= 1;
                return;
            }
        }
        // Its place in flight goes to the task.
        let lane = Arc::clone(&self);
        tokio::spawn(async move { lane.send_all(&script, &queue).await });
    }

    /// Sends what waits, one call per batch, until nothing does.
    async fn send_all(&self, script: &Script, queue: &Queue) {
        let mut place = Place {
            lane: self,
            finished: false,
        };
        let mut conn = self.conn.clone();
        while let Some(batch) = self.take(&mut place) {
            send(script, &mut conn, batch, queue).await;
        }
    }
}

type Batch = Vec<(AdmitCall, oneshot::Sender<Reply>)>;

/// One call of `batch`, its answers to their callers (what a caller that stopped waiting was given goes back).
async fn send(script: &Script, conn: &mut ConnectionManager, batch: Batch, queue: &Queue) {
    let calls: Vec<&AdmitCall> = batch.iter().map(|(call, _)| call).collect();
    match evaluate(script, conn, &calls).await {
        Ok(answers) => {
            for ((call, reply), answer) in batch.into_iter().zip(answers) {
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

/// The sending a caller runs itself. Dropped before it is done (the caller's timeout passed, its request was
/// cancelled), it goes on as a task of its own on the current runtime: the call out is answered, its
/// answers delivered or given back, and what waits behind it sent.
pub struct Sending(Option<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl Sending {
    /// Runs it as a task of its own on `runtime`.
    pub fn spawn_on(mut self, runtime: &Handle) {
        if let Some(rest) = self.0.take() {
            runtime.spawn(rest);
        }
    }
}

impl Future for Sending {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(inner) = self.0.as_mut() else {
            return Poll::Ready(());
        };
        ready!(inner.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(())
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        if let (Some(rest), Ok(runtime)) = (self.0.take(), Handle::try_current()) {
            runtime.spawn(rest);
        }
    }
}

/// A sender's place among the [`MAX_IN_FLIGHT`]: should it end without finishing (its runtime shut down),
/// another may start, and when none is left the callers still waiting hear at once that no answer comes.
struct Place<'a> {
    lane: &'a Lane,
    /// Ended as it should: nothing to do.
    finished: bool,
}

impl Drop for Place<'_> {
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
