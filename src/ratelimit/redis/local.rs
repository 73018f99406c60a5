//! Each calling thread's own connection, driven by the caller's runtime: an admission then costs no hop to
//! another thread and back (measured: most of what Redis added per request, see bench/RESULTS.md).
//!
//! A connection lives in a thread-local list while its runtime and its store do: a small task spawned with
//! it on that runtime holds a token, so a runtime shut down (Pingora restarts its runtimes on upgrade) drops
//! the token and the connection is made again on the next call; a dropped store's connections go likewise.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult};

/// One thread's connection to one store's Redis.
struct Local {
    /// Gone when the store is dropped.
    store: Weak<()>,
    /// Gone when the runtime that drives the connection is shut down.
    runtime: Weak<()>,
    conn: ConnectionManager,
}

thread_local! {
    static CONNECTIONS: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// This thread's connection for the store whose liveness token is `store`, made (lazily connecting, on the
/// current runtime) when there is none or its runtime is gone. Call from within a Tokio runtime.
pub fn connection(
    store: &Arc<()>,
    client: &Client,
    config: &ConnectionManagerConfig,
) -> RedisResult<ConnectionManager> {
    CONNECTIONS.with(|list| {
        let mut list = list.borrow_mut();
        list.retain(|l| l.store.strong_count() > 0 && l.runtime.strong_count() > 0);
        let mine = Arc::downgrade(store);
        if let Some(found) = list.iter().find(|l| Weak::ptr_eq(&l.store, &mine)) {
            return Ok(found.conn.clone());
        }
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        let token = Arc::new(());
        let runtime = Arc::downgrade(&token);
        tokio::spawn(async move {
            let _token = token;
            std::future::pending::<()>().await;
        });
        list.push(Local {
            store: mine,
            runtime,
            conn: conn.clone(),
        });
        Ok(conn)
    })
}
