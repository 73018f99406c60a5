//! Asynchronous, cached resolution of backend host names (Pingora's `HttpPeer::new` would block and panic).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::BaseUrl;

#[derive(Debug, Clone)]
struct Entry {
    addrs: Arc<[SocketAddr]>,
    resolved_at: Instant,
}

type Table = HashMap<(String, u16), Entry>;

/// Host name cache shared by all requests. Reads take no lock; a miss resolves and swaps in a new table.
#[derive(Debug)]
pub struct DnsCache {
    ttl: Duration,
    table: ArcSwap<Table>,
}

impl DnsCache {
    pub fn new(ttl: Duration) -> Self {
        DnsCache {
            ttl,
            table: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// The address to connect to for `url`: its IP as written, or its host name resolved (see [`Self::resolve`]).
    /// The one resolve-or-IP step of the proxy and of `/v1/models`.
    pub async fn address(&self, url: &BaseUrl, timeout: Duration) -> Result<SocketAddr, String> {
        match url.ip {
            Some(ip) => Ok(SocketAddr::new(ip, url.port)),
            None => self.resolve(&url.host, url.port, timeout).await,
        }
    }

    /// The address of `host:port`, from the cache while fresh, else resolved within `timeout`.
    /// A failed refresh falls back to the last known address rather than failing requests.
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<SocketAddr, String> {
        let key = (host.to_owned(), port);
        let cached = self.table.load().get(&key).cloned();
        if let Some(entry) = &cached {
            if entry.resolved_at.elapsed() < self.ttl {
                return Ok(entry.addrs[0]);
            }
        }
        match lookup(host, port, timeout).await {
            Ok(addrs) => {
                let first = addrs[0];
                let entry = Entry {
                    addrs,
                    resolved_at: Instant::now(),
                };
                self.table.rcu(|t| {
                    let mut t = Table::clone(t);
                    t.insert(key.clone(), entry.clone());
                    t
                });
                Ok(first)
            }
            Err(e) => match cached {
                Some(stale) => {
                    log::warn!("DNS refresh of {host} failed ({e}); using the last known address");
                    Ok(stale.addrs[0])
                }
                None => Err(e),
            },
        }
    }
}

async fn lookup(host: &str, port: u16, timeout: Duration) -> Result<Arc<[SocketAddr]>, String> {
    let found = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| format!("resolving {host} timed out"))?
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let addrs: Arc<[SocketAddr]> = found.collect();
    if addrs.is_empty() {
        return Err(format!("{host} has no addresses"));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn resolves_and_caches_localhost() {
        let cache = DnsCache::new(Duration::from_secs(60));
        let a = cache
            .resolve("localhost", 8080, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(a.ip().is_loopback());
        assert_eq!(a.port(), 8080);
        assert_eq!(cache.table.load().len(), 1);
        let b = cache
            .resolve("localhost", 8080, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(a, b);
    }

    #[tokio::test]
    async fn unknown_host_is_an_error_not_a_panic() {
        let cache = DnsCache::new(Duration::from_secs(60));
        let e = cache
            .resolve("no-such-host.invalid", 443, Duration::from_secs(5))
            .await;
        assert!(e.is_err());
    }
}
