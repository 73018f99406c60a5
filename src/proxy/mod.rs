//! The Pingora side of gpt-api: each `ProxyHttp` phase is a few lines that call the plain modules.
//!
//! Layout: `ctx.rs` (per-request state and its usage record), `body.rs` (reading the body before routing;
//! Pingora internals), `replay.rs` (the stream used for that), `upstream.rs` (peer and request rewrite),
//! `respond.rs` (local JSON answers), `server.rs` (Pingora server, proxy and usage-writer services).

mod body;
mod ctx;
mod models;
pub mod reload;
mod replay;
mod respond;
pub mod server;
mod upstream;

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::config::{Config, UsageSettings};
use crate::dns::DnsCache;
use crate::endpoints::{classify, ApiKind, Endpoint};
use crate::error::GatewayError;
use crate::failover::{Attempts, Failure};
use crate::health::parse_retry_after;
use crate::routing::Router;
use crate::tap::{ResponseTap, TapOptions};
use crate::usage::{record, UsageQueue};
use crate::{request, rewrite};
use ctx::PendingRecord;
pub use ctx::RequestCtx;
use models::ModelsCache;
use reload::ReloadStats;

/// Idle time a caller's HTTP/1 connection is kept open between requests.
const CLIENT_KEEPALIVE_SECS: u64 = 75;
/// Longest wait for the next piece of a caller's request body.
const CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
const DNS_TTL: Duration = Duration::from_secs(60);
/// Status recorded for a request whose caller went away before the answer was complete (nginx's convention).
const CLIENT_CLOSED: u16 = 499;

/// One loaded config and the routing table built from it; swapped whole on reload.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    pub router: Router,
}

impl Runtime {
    /// Builds the routing table; health state carries over by client name from `previous`.
    pub fn new(config: Config, previous: Option<&Runtime>) -> Self {
        let router = Router::new(&config, previous.map(|p| &p.router));
        Runtime {
            config: Arc::new(config),
            router,
        }
    }
}

/// The gateway's shared state: the current runtime behind an atomic pointer, the DNS cache, the usage
/// queue, and what reloads and `/v1/models` need.
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    dns: DnsCache,
    started_unix: i64,
    usage: UsageQueue,
    config_path: PathBuf,
    /// Fingerprint of the config file contents last read.
    fingerprint: AtomicU64,
    reload_lock: tokio::sync::Mutex<()>,
    pub reload_stats: ReloadStats,
    models_cache: ArcSwap<ModelsCache>,
    /// Pingora's client, for asking backends for their model lists.
    connector: Connector,
}

/// What the gateway needs beyond its config.
pub struct GatewayParts {
    pub usage: UsageQueue,
    /// The config file, re-read on reload.
    pub config_path: PathBuf,
    /// Fingerprint of the file contents the config was loaded from.
    pub fingerprint: u64,
    /// Upstream TLS settings (the server conf's `ca_file`).
    pub connector: ConnectorOptions,
}

impl Gateway {
    pub fn new(config: Config, parts: GatewayParts) -> Self {
        Gateway {
            runtime: ArcSwap::from_pointee(Runtime::new(config, None)),
            dns: DnsCache::new(DNS_TTL),
            started_unix: chrono::Utc::now().timestamp(),
            usage: parts.usage,
            config_path: parts.config_path,
            fingerprint: AtomicU64::new(parts.fingerprint),
            reload_lock: tokio::sync::Mutex::new(()),
            reload_stats: ReloadStats::default(),
            models_cache: ArcSwap::default(),
            connector: Connector::new(Some(parts.connector)),
        }
    }

    /// The config in force now.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
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
        ctx.error = Some(err.to_string());
        Ok(true)
    }

    /// Reads the body, opens the request's usage record and finds the clients for its model.
    async fn route(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rt: &Runtime,
    ) -> Result<(), GatewayError> {
        session.set_read_timeout(Some(CLIENT_BODY_TIMEOUT));
        let body = body::read_full(session, rt.config.server.max_body_bytes).await?;
        let info = request::inspect(&body)?;
        let path = session.req_header().uri.path();
        ctx.kind = ApiKind::from_path(path);
        ctx.record =
            Some(self.pending_record(session, &rt.config.usage, &body, ctx.kind.record_type(path)));
        let candidates = rt.router.candidates(&info.model);
        let model = info.model.clone();
        ctx.body = body;
        ctx.info = Some(info);
        if candidates.is_empty() {
            return Err(GatewayError::ModelNotFound(model));
        }
        ctx.attempts = Some(Attempts::new(
            &model,
            candidates,
            rt.config.failover.max_fallback_hops,
        ));
        Ok(())
    }

    fn pending_record(
        &self,
        session: &Session,
        usage: &UsageSettings,
        body: &[u8],
        kind: String,
    ) -> PendingRecord {
        let headers = &session.req_header().headers;
        PendingRecord {
            queue: self.usage.clone(),
            time: chrono::Local::now().fixed_offset(),
            ip: caller_ip(session).unwrap_or_default(),
            kind,
            headers: record::headers_json(headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()))),
            request: usage
                .record_bodies
                .then(|| record::cut(body, usage.max_body_bytes)),
        }
    }
}

/// First `X-Forwarded-For` entry, else `X-Real-IP`, else the socket peer.
fn caller_ip(session: &Session) -> Option<String> {
    let headers = &session.req_header().headers;
    let forwarded = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .or_else(|| headers.get("x-real-ip").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|v| !v.is_empty());
    match forwarded {
        Some(ip) => Some(ip.to_owned()),
        None => socket_ip(session),
    }
}

fn socket_ip(session: &Session) -> Option<String> {
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

/// A failed attempt's reason: the error kind and its root cause (an OS or TLS message, never a header).
fn describe(e: &Error) -> String {
    let cause = e.root_cause().to_string();
    let kind = e.etype().as_str();
    if cause.is_empty() || cause == kind {
        kind.to_owned()
    } else {
        format!("{kind}: {cause}")
    }
}

fn error_kind(message: &str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, message.to_owned())
}

/// The `ProxyHttp` service: a handle on the shared [`Gateway`] (the reload service holds another).
pub struct Proxy(pub Arc<Gateway>);

impl Deref for Proxy {
    type Target = Gateway;

    fn deref(&self) -> &Gateway {
        &self.0
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
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
                // The Python gateway's users reload by listing models: honour that, then answer on the result.
                self.reload(false, "GET /v1/models").await;
                let rt = self.runtime();
                ctx.runtime = Some(rt.clone());
                let auth = session
                    .req_header()
                    .headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = self.models_body(&rt, auth.as_deref()).await;
                respond::json(session, 200, body.to_vec()).await?
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
        let rt = ctx
            .runtime
            .clone()
            .ok_or_else(|| error_kind("no config for request"))?;
        let attempts = ctx
            .attempts
            .as_mut()
            .ok_or_else(|| error_kind("no route for request"))?;
        if std::mem::take(&mut ctx.retry_same) {
            // A stale pooled connection: the same attempt again, on a fresh connection.
        } else {
            if std::mem::take(&mut ctx.advance) && !attempts.advance(&rt.router) {
                return Err(error_kind("no backend left to try"));
            }
            attempts.begin();
            ctx.reconnected = false;
        }
        let cand = attempts
            .current()
            .cloned()
            .ok_or_else(|| error_kind("no backend left to try"))?;
        let fallback = attempts.fallback_model().map(str::to_owned);
        let info = ctx
            .info
            .as_ref()
            .ok_or_else(|| error_kind("request not inspected"))?;
        let rewritten =
            rewrite::rewrite(&ctx.body, info, &cand.client, ctx.kind, fallback.as_deref())
                .map_err(|e| error_kind(&e.to_string()))?;
        ctx.send_body = rewritten.unwrap_or_else(|| ctx.body.clone());
        ctx.upstream_model =
            Some(rewrite::upstream_model(info, &cand.client, fallback.as_deref()).to_owned());
        ctx.body_pending = true;
        ctx.failed_on_status = false;
        ctx.tap = None;
        let url = &cand.client.base_url;
        let addr = match url.ip {
            Some(ip) => SocketAddr::new(ip, url.port),
            None => match self
                .dns
                .resolve(&url.host, url.port, cand.client.connect_timeout)
                .await
            {
                Ok(addr) => addr,
                Err(why) => {
                    let more = ctx.fail_attempt(Failure::Connect(why.clone()), None);
                    let mut e = upstream::resolve_error(why);
                    e.set_retry(more);
                    return Err(e);
                }
            },
        };
        Ok(Box::new(upstream::peer(&cand.client, addr)))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the backend yet: always safe to try the next candidate.
        let failure = if is_timeout(&e) {
            Failure::Timeout(describe(&e))
        } else {
            Failure::Connect(describe(&e))
        };
        let more = ctx.fail_attempt(failure, None);
        e.set_retry(more);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client = ctx
            .client()
            .ok_or_else(|| error_kind("no route for request"))?;
        upstream::rewrite(
            upstream_request,
            client,
            ctx.send_body.len(),
            socket_ip(session).as_deref(),
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
                Some(ctx.send_body.clone())
            }
            (_, false) => Some(Bytes::new()),
            (false, true) => None,
        };
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        let Some(cand) = ctx.attempts.as_ref().and_then(|a| a.current()).cloned() else {
            return Ok(());
        };
        if cand.client.retry_on.contains(&status) {
            let retry_after = match status {
                429 => resp
                    .headers
                    .get(header::RETRY_AFTER)
                    .and_then(|v| parse_retry_after(v.as_bytes())),
                _ => None,
            };
            if ctx.fail_attempt(Failure::Status(status), retry_after) {
                ctx.failed_on_status = true;
                let mut e = Error::explain(
                    ErrorType::HTTPStatus(status),
                    "backend failed; trying the next one",
                );
                e.set_retry(true);
                return Err(e);
            }
            // The last candidate: its answer goes to the caller as it is.
        } else {
            cand.health.record_success();
        }
        let Some(rt) = ctx.runtime.clone() else {
            return Ok(());
        };
        let info = ctx.info.as_ref();
        let sse = resp
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let usage = &rt.config.usage;
        let opts = TapOptions {
            sse,
            kind: ctx.kind,
            prefix: (200..300)
                .contains(&status)
                .then(|| cand.client.special_prefix.clone())
                .flatten(),
            hide_usage_chunk: info.is_some_and(|i| i.stream && !i.include_usage)
                && ctx.kind.streams_usage_option(),
            keep_body: usage.record_bodies.then_some(usage.max_body_bytes),
        };
        let rewrites = opts.prefix.is_some() || (sse && opts.hide_usage_chunk);
        let tap = ResponseTap::new(opts);
        if rewrites || tap.buffers_whole_body() {
            // The body changes length: let Pingora send it chunked.
            resp.remove_header(&header::CONTENT_LENGTH);
        }
        ctx.sse = sse;
        ctx.tap = Some(tap);
        if rt.config.server.expose_backend_header {
            resp.insert_header("x-gpt-api-backend", cand.client.name.as_str())?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        let Some(tap) = ctx.tap.as_mut() else {
            return Ok(None);
        };
        let mut out = body.take().map(|b| tap.feed(b));
        if end_of_stream {
            let rest = tap.finish();
            if !rest.is_empty() {
                out = Some(match out {
                    Some(head) if !head.is_empty() => {
                        let mut joined = BytesMut::with_capacity(head.len() + rest.len());
                        joined.extend_from_slice(&head);
                        joined.extend_from_slice(&rest);
                        joined.freeze()
                    }
                    _ => rest,
                });
            }
        }
        *body = out;
        ctx.note_first_token();
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
        let mut e = e.more_context(format!("Peer: {peer}"));
        let untouched =
            session.response_written().is_none() && !session.as_ref().retry_buffer_truncated();
        if ctx.failed_on_status {
            // Failover was decided from the status; the failure is already counted.
            e.set_retry(untouched);
            return e;
        }
        if !untouched || e.esource() == &ErrorSource::Downstream {
            // Bytes reached the caller, or the caller is gone: no failover from here.
            e.set_retry(false);
            return e;
        }
        let stale = client_reused
            && !ctx.reconnected
            && ctx.tap.is_none()
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            );
        if stale {
            // A pooled connection the backend had closed: the same backend once more, on a new connection.
            ctx.reconnected = true;
            ctx.retry_same = true;
            e.set_retry(true);
            return e;
        }
        let failure = if is_timeout(&e) {
            Failure::Timeout(describe(&e))
        } else {
            Failure::Connect(describe(&e))
        };
        let more = ctx.fail_attempt(failure, None);
        e.set_retry(more);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let caller_gone = e.esource() == &ErrorSource::Downstream;
        if let Some(status) = session.response_written().map(|r| r.status.as_u16()) {
            let why = if caller_gone {
                "caller disconnected".to_owned()
            } else {
                format!("backend failed mid-response: {}", describe(e))
            };
            log::warn!("model `{}`: {why}", ctx.model());
            if ctx.sse && !caller_gone {
                // The stream already started: end it with an error event the caller's SDK can surface.
                let event = ResponseTap::error_event(&why, "upstream_error");
                if let Err(write) = session.write_response_body(Some(event), true).await {
                    log::debug!("could not send the error event: {write}");
                }
            }
            ctx.error = Some(why);
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        if caller_gone {
            ctx.error = Some("caller disconnected".into());
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let model = ctx.model().to_owned();
        let err = match ctx.attempts.as_ref() {
            Some(a) if !a.tried.is_empty() && a.last_was_timeout() => {
                GatewayError::UpstreamTimeout {
                    model,
                    tried: a.summary(),
                }
            }
            Some(a) if !a.tried.is_empty() => GatewayError::UpstreamUnreachable {
                model,
                tried: a.summary(),
            },
            _ => GatewayError::Internal(describe(e)),
        };
        log::warn!("{err}");
        if let Err(write) = respond::error(session, &err).await {
            log::debug!("could not send the error response: {write}");
        }
        ctx.error = Some(err.to_string());
        FailToProxy {
            error_code: err.status(),
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // fail_to_proxy and the access line already say what happened, without Pingora's request dump.
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let written = session.response_written().map(|r| r.status.as_u16());
        let status = match (e, written) {
            (Some(e), _) if e.esource() == &ErrorSource::Downstream => CLIENT_CLOSED,
            (_, Some(status)) => status,
            (_, None) => CLIENT_CLOSED,
        };
        ctx.note_first_token();
        let tokens = ctx.tap.as_ref().and_then(|t| t.usage()).unwrap_or_default();
        let req = session.req_header();
        log::info!(
            "{} {} {} {} model={} backend={} attempts={} ms={} ttfb_ms={} prompt={} completion={}",
            caller_ip(session).as_deref().unwrap_or("-"),
            req.method,
            req.uri.path(),
            status,
            ctx.model(),
            ctx.client().map_or("-", |c| c.name.as_str()),
            ctx.attempts.as_ref().map_or(0, |a| a.count()),
            ctx.started.elapsed().as_millis(),
            ctx.first_token
                .map_or_else(|| "-".to_owned(), |d| d.as_millis().to_string()),
            tokens
                .prompt
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            tokens
                .completion
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        );
        ctx.send_record(status);
    }
}
