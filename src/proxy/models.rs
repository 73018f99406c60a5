//! `/v1/models`: each backend's own list, asked concurrently over Pingora's connector, merged and cached.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use http::header;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;

use super::{upstream, Runtime};
use crate::config::Client;
use crate::dns::DnsCache;
use crate::models::{self, Fetched};

/// Largest backend model list read (a list is a few KB; this only guards memory).
const MAX_LIST_BYTES: usize = 8 * 1024 * 1024;
/// Cached answers kept at most (one per caller key when a client passes the caller's key through).
const MAX_CACHED: usize = 1024;

/// A merged answer and when it was made.
#[derive(Debug)]
pub(super) struct CachedList {
    made: Instant,
    body: Bytes,
}

pub(super) type ModelsCache = HashMap<u64, Arc<CachedList>>;

/// Asks backends for their model lists over Pingora's client, and merges them (cached in each [`Runtime`]).
pub(super) struct ModelLists {
    connector: Connector,
    /// The `created` time of models no backend dates.
    started_unix: i64,
}

impl ModelLists {
    pub(super) fn new(options: ConnectorOptions) -> Self {
        ModelLists {
            connector: Connector::new(Some(options)),
            started_unix: chrono::Utc::now().timestamp(),
        }
    }

    /// The `/v1/models` body for a caller, from the cache while fresh.
    pub(super) async fn body(
        &self,
        rt: &Runtime,
        dns: &DnsCache,
        caller_auth: Option<&str>,
    ) -> Bytes {
        let clients = rt.router.clients();
        let per_caller = clients.iter().any(|c| c.api_key.is_empty());
        let key = if per_caller {
            cache_key(caller_auth)
        } else {
            0
        };
        if let Some(hit) = rt.models_cache.load().get(&key) {
            if hit.made.elapsed() < rt.config.server.models_cache {
                return hit.body.clone();
            }
        }
        let fetches = clients
            .iter()
            .map(|c| self.fetch_models(rt, dns, c, caller_auth));
        let fetched: Vec<Option<Fetched>> = join_all(fetches).await;
        for (client, result) in clients.iter().zip(&fetched) {
            if let Some(Err(why)) = result {
                log::warn!(
                    "models of backend {} skipped: {}",
                    client.name,
                    crate::escape::text(&why.to_string())
                );
            }
        }
        let body = Bytes::from(models::merge(clients, &fetched, self.started_unix));
        let entry = Arc::new(CachedList {
            made: Instant::now(),
            body: body.clone(),
        });
        rt.models_cache.rcu(|old| {
            let mut map = if old.len() >= MAX_CACHED {
                ModelsCache::new()
            } else {
                ModelsCache::clone(old)
            };
            map.insert(key, entry.clone());
            map
        });
        body
    }

    /// One backend's list; `None` when it cannot be asked (no key of its own and none from the caller).
    async fn fetch_models(
        &self,
        rt: &Runtime,
        dns: &DnsCache,
        client: &Client,
        caller_auth: Option<&str>,
    ) -> Option<Fetched> {
        let auth = if client.api_key.is_empty() {
            caller_auth?.to_owned()
        } else {
            format!("Bearer {}", client.api_key.expose())
        };
        let timeout = rt.config.server.models_timeout;
        let fetch = self.fetch_list(dns, client, &auth);
        Some(match tokio::time::timeout(timeout, fetch).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        })
    }

    async fn fetch_list(&self, dns: &DnsCache, client: &Client, auth: &str) -> Fetched {
        let addr = dns
            .address(&client.base_url, client.connect_timeout)
            .await?;
        let peer = upstream::peer(client, addr);
        let req = list_request(client, auth).map_err(|e| e.to_string())?;
        let (mut session, _) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| e.to_string())?;
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| e.to_string())?;
        session
            .finish_request_body()
            .await
            .map_err(|e| e.to_string())?;
        session
            .read_response_header()
            .await
            .map_err(|e| e.to_string())?;
        let status = session.response_header().map_or(0, |r| r.status.as_u16());
        let mut body = BytesMut::new();
        while let Some(chunk) = session
            .read_response_body()
            .await
            .map_err(|e| e.to_string())?
        {
            if body.len() + chunk.len() > MAX_LIST_BYTES {
                return Err("model list too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        self.connector
            .release_http_session(session, &peer, peer.options.idle_timeout)
            .await;
        if status != 200 {
            return Err(format!("answered {status}"));
        }
        models::parse_list(&body)
    }
}

/// `GET {base_url}/models` with the client's Host, key and extra headers.
fn list_request(client: &Client, auth: &str) -> pingora::Result<RequestHeader> {
    let path = client.base_url.join("/v1/models");
    let mut req = RequestHeader::build("GET", path.as_bytes(), None)?;
    req.insert_header(header::HOST, client.base_url.host_header.as_str())?;
    req.insert_header(header::AUTHORIZATION, auth)?;
    req.insert_header(header::ACCEPT, "application/json")?;
    req.insert_header(header::ACCEPT_ENCODING, "identity")?;
    for (name, value) in &client.headers {
        req.insert_header(name.clone(), value.expose())?;
    }
    Ok(req)
}

/// Callers are told apart by their key, hashed so the cache holds no secret.
fn cache_key(caller_auth: Option<&str>) -> u64 {
    let mut h = DefaultHasher::new();
    caller_auth.unwrap_or("").hash(&mut h);
    h.finish() | 1
}
