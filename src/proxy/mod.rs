//! The Pingora side of gpt-api: each `ProxyHttp` phase is a few lines that hand off to a phase module.
//!
//! Phases: `admit.rs` (admit and route), `attempt.rs` (attempt and failover), `response.rs` (the answer and
//! its tap), `finish.rs` (failure answers, the access line, metrics and the record); their per-request state
//! is `ctx.rs`. Around them: `gateway.rs` (shared state), `caller.rs` (the caller's address), `body.rs` and
//! `replay.rs` (reading the body before routing; Pingora internals), `upstream.rs` (peer and request head),
//! `respond.rs` (local JSON answers), `models.rs` (`/v1/models`), `reload.rs` and `watch.rs` (config and
//! certificate reloads), `server.rs` (Pingora server and services), `admin.rs` (the admin page's service and live state), `listen.rs` (listening sockets bound
//! before Pingora would), `framing.rs` (request framing checks, HTTP/1.0), `edge.rs` and `guard.rs` (the
//! connection loop before Pingora's: request head limits, send timeout).

mod admin;
mod admit;
mod attempt;
mod body;
mod caller;
mod ctx;
mod edge;
mod finish;
mod framing;
mod gateway;
mod guard;
mod listen;
mod models;
mod reload;
mod replay;
mod respond;
mod response;
pub mod server;
mod stored;
mod upstream;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::{Error, Result};

pub(crate) use ctx::RequestCtx;
pub(crate) use gateway::{Gateway, GatewayParts, Runtime};

/// The `ProxyHttp` service: a handle on the shared [`Gateway`] (the watcher and the edge hold others).
pub(crate) struct Proxy(pub Arc<Gateway>);

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        connection: Box<dyn std::any::Any + Send + Sync>,
    ) {
        // Called once the request head is parsed (see edge.rs): the head limits no longer apply.
        if let Some(head) = connection.downcast_ref::<edge::HeadDone>() {
            head.disarm();
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        admit::admit(&self.0, session, ctx).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        attempt::peer(&self.0, ctx).await
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        attempt::connect_failed(&self.0, ctx, e)
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        attempt::request_head(ctx, upstream_request)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        attempt::request_body(ctx, body, end_of_stream);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        response::head(&self.0, resp, ctx)?;
        stored::forget_deleted(&self.0, session, ctx, resp.status.as_u16());
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        framing::fit_response_to(session.req_header().version, resp);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        response::body(&self.0, ctx, body, end_of_stream)?;
        Ok(None)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let e = e.more_context(format!("Peer: {peer}"));
        attempt::broke(&self.0, session, ctx, e, client_reused)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        finish::failed(&self.0, session, e, ctx).await
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        // Each failed attempt already has its own line (RequestCtx::fail_attempt).
        true
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // fail_to_proxy and the access line already say what happened, without Pingora's request dump.
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        finish::log(&self.0, session, e, ctx);
    }
}
