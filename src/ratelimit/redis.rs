//! The limit store shared by every node: each key's windows, slots, reservations and spend, in Redis.
//!
//! [`RedisStore::admit`] is one round trip: `admit.lua` (by `EVALSHA`) checks and takes the rpm, tpm, a
//! concurrency slot and the budget reservation atomically, on Redis's clock (the admissions that arrive on a
//! thread while its call is out go together in the next call: `lane.rs`), and its answer is read back into
//! the memory store's verdict (`script.rs`). A busy key's admissions on a node come mostly from a grant, counted
//! in Redis ahead of them and made here with no call until Redis's second ends (`grants.rs`). What follows
//! admission is queued without waiting and sent in batches (`updates.rs`). Key layout: `keys.rs`. Slots and reservations are leases of [`LEASE`]: a node that
//! dies with requests in flight holds them that long at most.
//!
//! The update task and the probe run on a one-thread runtime of the store's own, with a connection of its
//! own, started on first use or by [`LimitStore::start`] (after Pingora's daemon fork, which would lose its
//! thread). An admission runs on its caller's runtime with that thread's own connection (`local.rs`), made
//! again when the runtime is gone (Pingora restarts its runtimes on upgrade): a hop to the store's thread and
//! back cost more than the call itself (bench/RESULTS.md). A failed or slow call marks Redis down
//! (`health.rs`): admissions then fail at once without a call, and the [`super::Limiter`] counts in memory or
//! refuses; a probe (`PING` every [`PROBE_INTERVAL`]) marks it up again.

mod grants;
mod health;
mod keys;
mod lane;
mod local;
mod script;
mod updates;

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{IntoConnectionInfo, RedisResult, Script};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{mpsc, oneshot};

use super::budget::{Period, Spent};
use super::store::{Ask, LimitStore, Unavailable, Verdict};
use super::Quota;
use crate::config::RedisSettings;
use crate::money::Usd;
use grants::{Asking, Grants};
use health::Health;
use keys::Keys;
use lane::Lane;
use script::{AdmitCall, Answer, Status, ADMIT, UPDATE};
use updates::{member, Op, Queue};

/// How long a concurrency slot or a reservation is held without its request ending: longer than a request
/// normally takes (the default backend read timeout is 10 minutes too), short enough that the slots of a
/// node that died come back the same hour. A request still running after it no longer holds its slot.
pub const LEASE: Duration = Duration::from_secs(600);
/// How often Redis is asked whether it answers (while down: how soon it is used again).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one attempt to connect may take (at least the call timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a store dropped at shutdown waits for its queued updates to be sent.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// A store that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    /// The URL is not one the client takes (shown with its password masked).
    #[error("cluster.redis_url {url}: {why}")]
    Url { url: String, why: String },
}

/// Limits kept in Redis, shared by every node pointed at it.
pub struct RedisStore {
    client: redis::Client,
    /// Of every connection: the response timeout is the call timeout.
    config: ConnectionManagerConfig,
    /// Lives as long as the store: the callers' threads drop their connections to it when it is gone.
    token: Arc<()>,
    timeout: Duration,
    health: Arc<Health>,
    queue: Arc<Queue>,
    grants: Arc<Grants>,
    /// The queue's receiving end, until the store starts.
    receiver: Mutex<Option<mpsc::Receiver<Op>>>,
    /// `None` inside: the store's runtime could not start (Redis counts as down).
    running: OnceLock<Option<Running>>,
}

/// What runs once the store has started.
struct Running {
    runtime: Option<Runtime>,
    handle: Handle,
    /// The store's own connection, for callers outside any runtime.
    lane: Arc<Lane>,
    admit: Arc<Script>,
    stop: Option<oneshot::Sender<()>>,
    /// Says when the update task has sent what it could at shutdown.
    done: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl RedisStore {
    /// Checks the URL; connects only when started (Redis not answering then is no error: it is probed).
    pub fn new(settings: &RedisSettings) -> Result<RedisStore, RedisStoreError> {
        let health = Health::new(settings);
        let url_error = |e: redis::RedisError| RedisStoreError::Url {
            url: settings.shown(),
            why: health.scrub(&e.to_string()),
        };
        // Without TCP_NODELAY (the client's default) a thread's second call out waits for the first's answer.
        let info = settings
            .url
            .expose()
            .into_connection_info()
            .map_err(url_error)?
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(url_error)?;
        let (queue, receiver) = Queue::new();
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(settings.timeout))
            .set_connection_timeout(Some(CONNECT_TIMEOUT.max(settings.timeout)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500));
        Ok(RedisStore {
            client,
            config,
            token: Arc::new(()),
            timeout: settings.timeout,
            health: Arc::new(health),
            queue: Arc::new(queue),
            grants: Arc::new(Grants::new()),
            receiver: Mutex::new(Some(receiver)),
            running: OnceLock::new(),
        })
    }

    /// Updates lost so far (queue full, Redis down too long, refused, shutdown).
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    fn running(&self) -> Option<&Running> {
        self.running.get_or_init(|| self.launch()).as_ref()
    }

    /// Starts the runtime, the connection (lazily), the update task and the probe.
    fn launch(&self) -> Option<Running> {
        let built = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("gpt-api-redis")
            .enable_all()
            .build();
        let runtime = match built {
            Ok(runtime) => runtime,
            Err(e) => {
                self.health.fail(&format!("cannot start its thread: {e}"));
                return None;
            }
        };
        let conn = {
            let _entered = runtime.enter();
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                self.health.fail(&e.to_string());
                return None;
            }
        };
        let receiver = self
            .receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        let (stop, stopped) = oneshot::channel();
        let (finished, done) = std::sync::mpsc::channel();
        let sender = self.queue.sender();
        let health = Arc::clone(&self.health);
        let task_conn = conn.clone();
        runtime.spawn(async move {
            sender.run(task_conn, health, receiver, stopped).await;
            let _ = finished.send(());
        });
        let admit = Arc::new(Script::new(ADMIT));
        let scripts = [Arc::clone(&admit), Arc::new(Script::new(UPDATE))];
        let probe = probe(
            conn.clone(),
            Arc::clone(&self.health),
            scripts,
            self.timeout,
        );
        runtime.spawn(probe);
        Some(Running {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            lane: Arc::new(Lane::new(conn)),
            admit,
            stop: Some(stop),
            done: Mutex::new(done),
        })
    }

    /// Keeps what an admission's answer granted, ending it (and giving back what is left) when its second ends.
    fn keep_grant(&self, ask: &Ask<'_>, answer: &Answer, quota: &Quota, running: &Running) {
        let (made, replaced) = self.grants.keep(ask, answer, quota, Instant::now());
        if let Some(leftover) = replaced {
            self.queue.push(leftover.undo());
        }
        let Some(made) = made else {
            return;
        };
        let (grants, queue, key) = (
            Arc::clone(&self.grants),
            Arc::clone(&self.queue),
            ask.key.to_owned(),
        );
        running.handle.spawn(async move {
            tokio::time::sleep_until(made.end.into()).await;
            if let Some(leftover) = grants.expire(&key, made.id) {
                queue.push(leftover.undo());
            }
        });
    }

    fn unavailable(&self, why: String) -> Unavailable {
        self.health.fail(&why);
        Unavailable(self.health.scrub(&why))
    }
}

#[async_trait]
impl LimitStore for RedisStore {
    async fn admit(&self, ask: &Ask<'_>) -> Result<Verdict, Unavailable> {
        let Some(running) = self.running() else {
            return Err(Unavailable("the Redis store did not start".into()));
        };
        if !self.health.is_up() {
            return Err(Unavailable("Redis is down".into()));
        }
        if let Some(verdict) = self.grants.take(ask, ask.now) {
            return Ok(verdict);
        }
        let want = self.grants.want(ask, ask.now);
        let _asking = Asking::new(&self.grants, ask.key, want);
        let call = AdmitCall::new(ask, want);
        let (tx, mut rx) = oneshot::channel();
        // On the caller's runtime with its thread's connection; the store's own when called from outside one.
        match Handle::try_current() {
            Ok(here) => match local::connection(
                &self.token,
                self.health.outages(),
                &self.client,
                &self.config,
            ) {
                Ok(lane) => lane.submit(call, tx, &here, &running.admit, &self.queue),
                Err(e) => return Err(self.unavailable(e.to_string())),
            },
            Err(_) => {
                let lane = &running.lane;
                lane.submit(call, tx, &running.handle, &running.admit, &self.queue);
            }
        }
        match tokio::time::timeout(self.timeout, &mut rx).await {
            Ok(Ok(Ok(answer))) => {
                let verdict = answer.verdict(ask);
                if let Verdict::Allow { quota, .. } = &verdict {
                    self.keep_grant(ask, &answer, quota, running);
                }
                Ok(verdict)
            }
            Ok(Ok(Err(why))) => Err(self.unavailable(why)),
            Ok(Err(_)) => Err(self.unavailable("its runtime stopped".into())),
            Err(_) => {
                // From now on the task gives back what it took; an answer that came just before, we do.
                rx.close();
                if let Ok(Ok(answer)) = rx.try_recv() {
                    give_back(&self.queue, AdmitCall::new(ask, want), &answer);
                }
                let ms = self.timeout.as_millis();
                Err(self.unavailable(format!("no answer within {ms} ms")))
            }
        }
    }

    fn end(&self, key: &str, request_id: &str) {
        self.queue.push(Op::End {
            keys: Keys::new(key),
            request_id: request_id.to_owned(),
        });
    }

    fn add_tokens(&self, key: &str, tokens: u64, _now: Instant) {
        self.queue.push(Op::Tokens {
            keys: Keys::new(key),
            tokens,
        });
    }

    fn settle(&self, key: &str, request_id: &str, reserved: Usd, cost: Usd, period: Period) {
        let member = match request_id {
            "" => String::new(),
            id => member(reserved, id),
        };
        self.queue.push(Op::Settle {
            keys: Keys::new(key),
            member,
            reserved,
            cost,
            period,
        });
    }

    fn seed(&self, key: &str, spent: Spent, period: Period) {
        self.queue.push(Op::Seed {
            keys: Keys::new(key),
            spent,
            period,
        });
    }

    /// Redis forgets the windows of removed keys by their TTLs (a minute); spend is kept anyway. Their
    /// grants end here.
    fn release(&self, keep: &[&str]) {
        for leftover in self.grants.release(keep) {
            self.queue.push(leftover.undo());
        }
    }

    fn is_up(&self) -> bool {
        self.health.is_up()
    }

    fn start(&self) {
        let _ = self.running();
    }
}

impl Drop for RedisStore {
    /// Sends what is queued (while Redis answers, for [`SHUTDOWN_FLUSH`] at most), then stops the tasks.
    fn drop(&mut self) {
        let Some(Some(mut running)) = self.running.take() else {
            return;
        };
        for leftover in self.grants.drain() {
            self.queue.push(leftover.undo());
        }
        if let Some(stop) = running.stop.take() {
            let _ = stop.send(());
        }
        if self.health.is_up() {
            let done = running.done.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = done.recv_timeout(SHUTDOWN_FLUSH);
        }
        if let Some(runtime) = running.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Queues the undoing of an admission nobody waited for (and of what it was granted).
fn give_back(queue: &Queue, call: AdmitCall, answer: &Answer) {
    if answer.status != Status::Allowed {
        return;
    }
    queue.push(Op::Undo {
        member: call
            .reserved
            .map_or(String::new(), |r| member(r, &call.request_id)),
        reserved: call.reserved.unwrap_or(Usd::ZERO),
        second: call.counted.then_some(answer.now.as_secs()),
        count: 1 + u64::from(answer.granted),
        keys: call.keys,
        request_id: call.request_id,
    });
}

/// Asks Redis every [`PROBE_INTERVAL`] whether it answers (within the call timeout), and (re)loads the
/// scripts when it comes back (a restarted Redis has none).
async fn probe(
    mut conn: ConnectionManager,
    health: Arc<Health>,
    scripts: [Arc<Script>; 2],
    timeout: Duration,
) {
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match tokio::time::timeout(timeout, check(&mut conn, &health, &scripts)).await {
            Ok(Ok(())) => {
                health.answered();
            }
            Ok(Err(e)) => {
                health.fail(&e.to_string());
            }
            Err(_) => {
                health.fail(&format!("no answer within {} ms", timeout.as_millis()));
            }
        }
    }
}

async fn check(
    conn: &mut ConnectionManager,
    health: &Health,
    scripts: &[Arc<Script>],
) -> RedisResult<()> {
    redis::cmd("PING").query_async::<()>(conn).await?;
    if !health.is_confirmed() {
        for script in scripts {
            script.load_async(conn).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
