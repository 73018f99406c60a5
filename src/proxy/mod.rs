//! The Pingora side of gpt-api: each `ProxyHttp` phase is a few lines that call the plain modules.
//!
//! Layout: `ctx.rs` (per-request state), `body.rs` (reading the body before routing; Pingora internals),
//! `replay.rs` (the stream used for that), `upstream.rs` (peer and request rewrite), `respond.rs` (local
//! JSON answers), `server.rs` (Pingora server and service setup).

mod body;
mod ctx;
mod replay;
mod respond;
pub mod server;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::config::Config;
use crate::dns::DnsCache;
use crate::endpoints::{classify, Endpoint};
use crate::error::GatewayError;
use crate::routing::Router;
use crate::{models, request};
pub use ctx::RequestCtx;

/// Idle time a caller's HTTP/1 connection is kept open between requests.
const CLIENT_KEEPALIVE_SECS: u64 = 75;
/// Longest wait for the next piece of a caller's request body.
const CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
const DNS_TTL: Duration = Duration::from_secs(60);

/// One loaded config and the routing table built from it; swapped whole on reload.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    pub router: Router,
}

impl Runtime {
    pub fn new(config: Config) -> Self {
        let router = Router::new(&config);
        Runtime {
            config: Arc::new(config),
            router,
        }
    }
}

/// The gateway service: the current runtime behind an atomic pointer, and the shared DNS cache.
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    dns: DnsCache,
    started_unix: i64,
}

impl Gateway {
    pub fn new(config: Config) -> Self {
        Gateway {
            runtime: ArcSwap::from_pointee(Runtime::new(config)),
            dns: DnsCache::new(DNS_TTL),
            started_unix: chrono::Utc::now().timestamp(),
        }
    }

    /// Answers locally with `err` and records it on the request.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        err: GatewayError,
    ) -> Result<bool> {
        if !session.is_body_done() {
            // Unread body bytes would be taken for the next request: close the connection afterwards.
            session.set_keepalive(None);
        }
        respond::error(session, &err).await?;
        ctx.error = Some(err);
        Ok(true)
    }

    /// Reads the body and finds the clients for its model.
    async fn route(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rt: &Runtime,
    ) -> Result<(), GatewayError> {
        session.set_read_timeout(Some(CLIENT_BODY_TIMEOUT));
        let body = body::read_full(session, rt.config.server.max_body_bytes).await?;
        let info = request::inspect(&body)?;
        let candidates = rt.router.candidates(&info.model);
        let model = info.model.clone();
        ctx.body = body;
        ctx.info = Some(info);
        if candidates.is_empty() {
            return Err(GatewayError::ModelNotFound(model));
        }
        ctx.candidates = candidates;
        Ok(())
    }
}

fn caller_ip(session: &Session) -> Option<String> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string())
}

fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::TLSHandshakeTimedout
    )
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let rt = self.runtime.load_full();
        ctx.runtime = Some(rt.clone());
        session.set_keepalive(Some(CLIENT_KEEPALIVE_SECS));
        let req = session.req_header();
        let (method, path) = (req.method.as_str().to_owned(), req.uri.path().to_owned());
        match classify(&method, &path) {
            Endpoint::Health => respond::json(session, 200, br#"{"status":"ok"}"#.to_vec()).await?,
            Endpoint::Models => {
                respond::json(session, 200, models::list(&rt.router, self.started_unix)).await?
            }
            Endpoint::NotFound => {
                return self
                    .reject(session, ctx, GatewayError::NotFound(path))
                    .await
            }
            Endpoint::MethodNotAllowed => {
                return self
                    .reject(
                        session,
                        ctx,
                        GatewayError::MethodNotAllowed { method, path },
                    )
                    .await
            }
            Endpoint::Route => {
                return match self.route(session, ctx, &rt).await {
                    Ok(()) => Ok(false),
                    Err(e) => self.reject(session, ctx, e).await,
                }
            }
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let client = ctx
            .client()
            .cloned()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route for request"))?;
        let url = &client.base_url;
        let addr = match url.ip {
            Some(ip) => SocketAddr::new(ip, url.port),
            None => self
                .dns
                .resolve(&url.host, url.port, client.connect_timeout)
                .await
                .map_err(upstream::resolve_error)?,
        };
        ctx.body_pending = true;
        Ok(Box::new(upstream::peer(&client, addr)))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client = ctx
            .client()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route for request"))?;
        upstream::rewrite(
            upstream_request,
            client,
            ctx.body.len(),
            caller_ip(session).as_deref(),
        )
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Pingora replays only the tail of the body it kept (see body.rs): send the whole body at its end.
        *body = match (ctx.body_pending, end_of_stream) {
            (true, true) => {
                ctx.body_pending = false;
                Some(ctx.body.clone())
            }
            (_, false) => Some(Bytes::new()),
            (false, true) => None,
        };
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let downstream_gone = e.esource() == &ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
            );
        if downstream_gone || session.response_written().is_some() {
            return FailToProxy {
                error_code: session.response_written().map_or(0, |r| r.status.as_u16()),
                can_reuse_downstream: false,
            };
        }
        let err = match ctx.client() {
            Some(client) => {
                let (model, client, reason) = (
                    ctx.model().to_owned(),
                    client.name.clone(),
                    e.etype().as_str().to_owned(),
                );
                if is_timeout(e) {
                    GatewayError::UpstreamTimeout {
                        model,
                        client,
                        reason,
                    }
                } else {
                    GatewayError::UpstreamUnreachable {
                        model,
                        client,
                        reason,
                    }
                }
            }
            None => GatewayError::Internal(e.etype().as_str().to_owned()),
        };
        log::warn!("{err}");
        if let Err(write) = respond::error(session, &err).await {
            log::debug!("could not send the error response: {write}");
        }
        let code = err.status();
        ctx.error = Some(err);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let req = session.req_header();
        log::info!(
            "{} {} {} model={} backend={} ms={}",
            req.method,
            req.uri.path(),
            status,
            ctx.model(),
            ctx.client().map_or("-", |c| c.name.as_str()),
            ctx.started.elapsed().as_millis()
        );
    }
}
