//! Each calling thread's own connection (and its batches of admissions, `lane.rs`), driven by the caller's runtime: an admission then costs no hop to
//! another thread and back (measured: most of what Redis added per request, see bench/RESULTS.md).
//!
//! A connection lives in a thread-local list while its runtime and its store do: a small task spawned with
//! it on that runtime holds a token, so a runtime shut down (Pingora restarts its runtimes on upgrade) drops
//! the token and the connection is made again on the next call; a dropped store's connections go likewise.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::lane::Lane;
use redis::{Client, RedisResult};
use tokio::sync::oneshot;

/// One thread's connection to one store's Redis.
struct Local {
    /// Gone when the store is dropped.
    store: Weak<()>,
    /// Gone when the runtime that drives the connection is shut down.
    runtime: Weak<()>,
    /// The store's outage count when it was made: after an outage it is made again.
    outages: u64,
    lane: Arc<Lane>,
    /// Dropped with this entry: ends the task holding the runtime's token.
    _stop: oneshot::Sender<()>,
}

thread_local! {
    static CONNECTIONS: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// This thread's connection for the store whose liveness token is `store`, made (lazily connecting, on the
/// current runtime) when there is none, its runtime is gone, or Redis was down since it was made (`outages`:
/// the store's count). Call from within a Tokio runtime.
pub fn connection(
    store: &Arc<()>,
    outages: u64,
    client: &Client,
    config: &ConnectionManagerConfig,
) -> RedisResult<Arc<Lane>> {
    CONNECTIONS.with(|list| {
        let mut list = list.borrow_mut();
        let mine = Arc::downgrade(store);
        list.retain(|l| {
            let stale = Weak::ptr_eq(&l.store, &mine) && l.outages != outages;
            l.store.strong_count() > 0 && l.runtime.strong_count() > 0 && !stale
        });
        if let Some(found) = list.iter().find(|l| Weak::ptr_eq(&l.store, &mine)) {
            return Ok(Arc::clone(&found.lane));
        }
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        let lane = Arc::new(Lane::new(conn));
        let token = Arc::new(());
        let runtime = Arc::downgrade(&token);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _token = token;
            let _ = stopped.await;
        });
        list.push(Local {
            store: mine,
            runtime,
            outages,
            lane: Arc::clone(&lane),
            _stop: stop,
        });
        Ok(lane)
    })
}
