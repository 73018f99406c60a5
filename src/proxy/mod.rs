//! The Pingora side of gpt-api: each `ProxyHttp` phase is a few lines that call the plain modules.
//!
//! Layout: `ctx.rs` (per-request state and its usage record), `body.rs` (reading the body before routing;
//! Pingora internals), `replay.rs` (the stream used for that), `upstream.rs` (peer and request rewrite),
//! `respond.rs` (local JSON answers), `server.rs` (Pingora server, proxy and usage-writer services),
//! `listen.rs` (listening sockets bound before Pingora would), `framing.rs` (request framing checks, HTTP/1.0),
//! `edge.rs` and `guard.rs` (the connection loop before Pingora's: request head limits, send timeout).

mod body;
mod ctx;
mod edge;
mod framing;
mod guard;
mod listen;
mod models;
pub mod reload;
mod replay;
mod respond;
pub mod server;
mod upstream;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::auth::Auth;
use crate::config::{Config, UsageSettings};
use crate::dns::DnsCache;
use crate::endpoints::{classify, normalize_path, ApiKind, Endpoint};
use crate::error::GatewayError;
use crate::escape;
use crate::failover::{Attempts, Failure};
use crate::health::parse_retry_after;
use crate::metrics::Metrics;
use crate::ratelimit::{self, Limiter};
use crate::routing::Router;
use crate::tap::decode::Encoding;
use crate::tap::{ResponseTap, TapOptions};
use crate::usage::{record, UsageQueue};
use crate::{request, rewrite};
use ctx::PendingRecord;
pub use ctx::RequestCtx;
use models::ModelsCache;

/// Idle time a caller's HTTP/1 connection is kept open between requests.
const CLIENT_KEEPALIVE_SECS: u64 = 75;
const DNS_TTL: Duration = Duration::from_secs(60);

/// One loaded config and the routing table built from it; swapped whole on reload.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    pub router: Router,
    /// Gateway keys; `None` when the config has no `auth` section (the gateway is open).
    pub auth: Option<Arc<Auth>>,
    /// `/v1/models` answers made with this config; a reload starts with an empty cache, and a slow
    /// answer from before it can only land in the old one.
    models_cache: ArcSwap<ModelsCache>,
}

impl Runtime {
    /// Builds the routing table; health state carries over by client name from `previous`.
    pub fn new(config: Config, previous: Option<&Runtime>) -> Self {
        let router = Router::new(&config, previous.map(|p| &p.router));
        let auth = config.auth.as_ref().map(|a| Arc::new(Auth::from_config(a)));
        Runtime {
            config: Arc::new(config),
            router,
            auth,
            models_cache: ArcSwap::default(),
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
    pub metrics: Arc<Metrics>,
    /// Pingora's client, for asking backends for their model lists.
    connector: Connector,
    /// Per-key request and token windows; kept across reloads by key name.
    limiter: Limiter,
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
    pub metrics: Arc<Metrics>,
}

impl Gateway {
    pub fn new(config: Config, parts: GatewayParts) -> Self {
        let runtime = Runtime::new(config, None);
        let limiter = Limiter::new();
        note_auth(&runtime, &limiter);
        parts
            .metrics
            .set_known_models(crate::metrics::known_models(&runtime.config));
        Gateway {
            runtime: ArcSwap::from_pointee(runtime),
            dns: DnsCache::new(DNS_TTL),
            started_unix: chrono::Utc::now().timestamp(),
            usage: parts.usage,
            config_path: parts.config_path,
            fingerprint: AtomicU64::new(parts.fingerprint),
            reload_lock: tokio::sync::Mutex::new(()),
            metrics: parts.metrics,
            connector: Connector::new(Some(parts.connector)),
            limiter,
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
        self.reject_with(session, ctx, err, &[]).await
    }

    async fn reject_with(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        err: GatewayError,
        headers: &[(&'static str, String)],
    ) -> Result<bool> {
        if err.closes_connection() || !session.is_body_done() {
            // Unread body bytes would be taken for the next request: close the connection afterwards.
            session.set_keepalive(None);
        }
        respond::error_with(session, &err, headers).await?;
        ctx.error = Some(err.to_string());
        Ok(true)
    }

    /// Counts a connection-level failure of the current attempt; retries when another candidate is left.
    fn fail_on_error(&self, ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
        let failure = if is_timeout(&e) {
            Failure::Timeout(describe(&e))
        } else {
            Failure::Connect(describe(&e))
        };
        let more = ctx.fail_attempt(failure, None, &self.metrics);
        e.set_retry(more);
        e
    }

    /// `/v1/models`, after a reload check (the Python gateway's users reload by listing models), limited
    /// to the models the caller's key may use.
    async fn answer_models(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        self.reload(false, "GET /v1/models").await;
        let rt = self.runtime();
        ctx.runtime = Some(rt.clone());
        let caller_auth = session
            .req_header()
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // With auth on, the caller's key is the gateway's, never a backend's.
        let pass_through = caller_auth.as_deref().filter(|_| rt.auth.is_none());
        let body = self.models_body(&rt, pass_through).await;
        let body = match &ctx.key {
            Some(key) => crate::models::retain(&body, |id| key.allows(id)),
            None => body.to_vec(),
        };
        respond::json(session, 200, body).await
    }

    /// Reads the body, opens the request's usage record and finds the clients for its model.
    async fn route(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rt: &Runtime,
    ) -> Result<(), GatewayError> {
        let body = body::read_full(session, &rt.config.server).await?;
        let info = request::inspect(&body)?;
        // Formatted once: the record, the forwarded-for header of every attempt and the log use it.
        ctx.socket_ip = socket_ip(session);
        let (ip, peer_trusted) = caller_ip(
            session,
            &rt.config.server.trusted_proxies,
            ctx.socket_ip.as_deref(),
        );
        ctx.peer_trusted = peer_trusted;
        ctx.caller_ip = ip.clone();
        let path = session.req_header().uri.path();
        ctx.kind = ApiKind::from_path(path);
        let kind = ctx.kind.record_type(path);
        if rt.config.usage.enabled {
            ctx.record = Some(Box::new(self.pending_record(
                session,
                &rt.config.usage,
                &body,
                kind,
                ip,
            )));
        }
        let model = info.model.clone();
        ctx.body = body;
        ctx.info = Some(info);
        if ctx.key.as_ref().is_some_and(|k| !k.allows(&model)) {
            return Err(GatewayError::ModelNotAllowed(model));
        }
        let candidates = rt.router.candidates(&model);
        if candidates.is_empty() {
            return Err(GatewayError::ModelNotFound(model));
        }
        let attempts = Attempts::new(
            &model,
            candidates,
            rt.config.failover.max_fallback_hops,
            ctx.key.clone(),
        );
        if attempts.is_empty() {
            return Err(GatewayError::UpstreamModelNotAllowed {
                model,
                skipped: attempts.skipped_summary(),
            });
        }
        ctx.attempts = Some(attempts);
        Ok(())
    }

    fn pending_record(
        &self,
        session: &Session,
        usage: &UsageSettings,
        body: &[u8],
        kind: String,
        ip: Option<String>,
    ) -> PendingRecord {
        let headers = &session.req_header().headers;
        PendingRecord {
            queue: self.usage.clone(),
            time: chrono::Local::now().fixed_offset(),
            ip: ip.unwrap_or_default(),
            kind,
            headers: record::capture_headers(headers),
            request: usage
                .record_bodies
                .then(|| record::window(body, usage.max_body_bytes)),
            max_body: usage.max_body_bytes,
        }
    }
}

/// Puts the request's one normal path in place, and takes gateway keys out of its query, before anything
/// reads them: classification, auth, routing, the record and the backend all see the same request.
fn normalize_uri(session: &mut Session, auth: Option<&Auth>) -> Result<(), GatewayError> {
    let uri = &session.req_header().uri;
    let path = normalize_path(uri.path()).map_err(|_| GatewayError::BadPath)?;
    let query = uri.query();
    let stripped = auth.zip(query).and_then(|(a, q)| a.strip_query_keys(q));
    if matches!(path, Cow::Borrowed(_)) && stripped.is_none() {
        return Ok(());
    }
    let query = stripped.as_deref().or(query).filter(|q| !q.is_empty());
    let path_and_query = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().map_err(|_| GatewayError::BadPath)?);
    let uri = http::Uri::from_parts(parts).map_err(|_| GatewayError::BadPath)?;
    session.req_header_mut().set_uri(uri);
    Ok(())
}

const X_REAL_IP: header::HeaderName = header::HeaderName::from_static("x-real-ip");
const X_GPT_API_BACKEND: header::HeaderName = header::HeaderName::from_static("x-gpt-api-backend");

/// The caller's address as the logs and records show it: the socket peer, or what a trusted proxy
/// forwarded (see [`crate::client_ip`]); also whether the peer is such a proxy.
/// `socket` is the peer already formatted, used as is when no proxy is trusted.
fn caller_ip(
    session: &Session,
    trusted: &[ipnet::IpNet],
    socket: Option<&str>,
) -> (Option<String>, bool) {
    if trusted.is_empty() {
        return (socket.map(str::to_owned), false);
    }
    let Some(peer) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
    else {
        return (None, false);
    };
    let headers = &session.req_header().headers;
    let forwarded = headers
        .get_all(upstream::X_FORWARDED_FOR)
        .iter()
        .map(|v| v.as_bytes());
    let real = headers.get(X_REAL_IP).map(|v| v.as_bytes());
    let ip = crate::client_ip::caller_ip(peer, trusted, forwarded, real);
    (
        Some(ip_text(ip)),
        crate::client_ip::is_trusted(peer, trusted),
    )
}

/// Points the limiter at the runtime's keys; an open gateway is worth a warning at start and on reload.
fn note_auth(runtime: &Runtime, limiter: &Limiter) {
    match &runtime.auth {
        Some(auth) => limiter.update(auth),
        None => {
            log::warn!("no auth section: anyone who can reach the gateway can use its backends")
        }
    }
}

fn socket_ip(session: &Session) -> Option<String> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| ip_text(a.ip()))
}

/// An address as text; IPv4 by hand, as `Display` costs about a thousand instructions on every request.
fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
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

/// The tap for a response, decoding the backend's `Content-Encoding` when there is one: backends are asked
/// for `identity`, but one that compresses anyway still gets its usage read, and the caller gets the body
/// decoded (the header goes). Also whether it decodes.
fn tap_for(opts: TapOptions, resp: &mut ResponseHeader) -> (ResponseTap, bool) {
    let tap = ResponseTap::new(opts);
    let Some(value) = resp.headers.get(header::CONTENT_ENCODING) else {
        return (tap, false);
    };
    match Encoding::parse(value.as_bytes()) {
        Ok(None) => (tap, false),
        Ok(Some(encoding)) => {
            resp.remove_header(&header::CONTENT_ENCODING);
            (tap.decode_from(encoding), true)
        }
        Err(_) => {
            log::warn!(
                "backend answered with Content-Encoding {}: passed on undecoded, its usage unread",
                escape::field(&String::from_utf8_lossy(value.as_bytes()))
            );
            (tap, false)
        }
    }
}

/// The error a caller gets when no attempt succeeded, and the same with every attempt's details (host
/// names, resolver and TLS messages) for the log and the record.
fn final_error(ctx: &RequestCtx, e: &Error) -> (GatewayError, String) {
    let model = ctx.model().to_owned();
    let Some(a) = ctx.attempts.as_ref().filter(|a| !a.tried.is_empty()) else {
        // Internal errors name no backend; the caller learns only that the gateway failed.
        let detail = format!("Internal gateway error: {}", describe(e));
        return (
            GatewayError::Internal("the request could not be proxied".into()),
            detail,
        );
    };
    let timeout = a.last_was_timeout();
    let make = |tried: String| match timeout {
        true => GatewayError::UpstreamTimeout {
            model: model.clone(),
            tried,
        },
        false => GatewayError::UpstreamUnreachable {
            model: model.clone(),
            tried,
        },
    };
    (make(a.public_summary()), make(a.summary()).to_string())
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
        self.metrics.request_started();
        ctx.metered = true;
        let rt = self.runtime.load_full();
        ctx.runtime = Some(rt.clone());
        if session.get_keepalive().is_some() {
            // Only where the caller keeps the connection (not for `Connection: close`, nor HTTP/1.0 without
            // `keep-alive`): Pingora's default would keep it forever.
            session.set_keepalive(Some(CLIENT_KEEPALIVE_SECS));
        }
        if let Err(e) = framing::check_request(session.req_header_mut()) {
            return self.reject(session, ctx, e).await;
        }
        if let Err(e) = normalize_uri(session, rt.auth.as_deref()) {
            return self.reject(session, ctx, e).await;
        }
        let req = session.req_header();
        let endpoint = classify(req.method.as_str(), req.uri.path());
        if endpoint == Endpoint::Health {
            respond::json(session, 200, br#"{"status":"ok"}"#.to_vec()).await?;
            return Ok(true);
        }
        // With keys configured, everything but /health needs one, unknown paths included.
        if let Some(auth) = rt.auth.as_ref() {
            match auth.authenticate(&session.req_header().headers) {
                Some(key) => ctx.key = Some(key),
                None => return self.reject(session, ctx, GatewayError::InvalidApiKey).await,
            }
        }
        let req = session.req_header();
        let path = || req.uri.path().to_owned();
        let err = match endpoint {
            Endpoint::NotFound => Some(GatewayError::NotFound(path())),
            Endpoint::MethodNotAllowed => Some(GatewayError::MethodNotAllowed {
                method: req.method.as_str().to_owned(),
                path: path(),
            }),
            Endpoint::Health | Endpoint::Models | Endpoint::Route => None,
        };
        if let Some(err) = err {
            return self.reject(session, ctx, err).await;
        }
        if endpoint == Endpoint::Models {
            self.answer_models(session, ctx).await?;
            return Ok(true);
        }
        if let Some(key) = ctx.key.clone() {
            let decision = self.limiter.check(&key, Instant::now());
            let headers = ratelimit::headers(&decision);
            if !decision.is_allowed() {
                let err = GatewayError::RateLimited(decision.message().unwrap_or_default());
                return self.reject_with(session, ctx, err, &headers).await;
            }
            ctx.ratelimit_headers = headers;
        }
        match self.route(session, ctx, &rt).await {
            Ok(()) => Ok(false),
            Err(e) => self.reject(session, ctx, e).await,
        }
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
            rewrite::rewrite(&ctx.body, info, &cand.client, ctx.kind, fallback.as_deref());
        ctx.send_body = rewritten.unwrap_or_else(|| ctx.body.clone());
        ctx.upstream_model =
            Some(rewrite::upstream_model(info, &cand.client, fallback.as_deref()).to_owned());
        ctx.body_pending = true;
        ctx.failed_on_status = None;
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
                    let more = ctx.fail_attempt(Failure::Connect(why.clone()), None, &self.metrics);
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
        e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the backend yet: always safe to try the next candidate.
        self.fail_on_error(ctx, e)
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
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
            ctx.socket_ip.as_deref(),
            ctx.peer_trusted,
            // A gateway key (auth on) never reaches a backend; nor does a caller's key where the client
            // sends its own.
            ctx.key.is_some() || !client.api_key.is_empty(),
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
            // Even the last candidate's failure becomes the gateway's 502 listing every attempt.
            let more = ctx.fail_attempt(Failure::Status(status), retry_after, &self.metrics);
            ctx.failed_on_status = Some(more);
            let mut e = Error::explain(ErrorType::HTTPStatus(status), "backend failed");
            e.set_retry(more);
            return Err(e);
        } else {
            if cand.health.failures() != 0 {
                cand.health.record_success();
                self.metrics.backend_health(&cand.client.name, 0, false);
            }
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
            keep_body: (usage.enabled && usage.record_bodies).then_some(usage.max_body_bytes),
        };
        let rewrites = opts.prefix.is_some() || (sse && opts.hide_usage_chunk);
        let (tap, decoded) = tap_for(opts, resp);
        if rewrites || decoded || tap.buffers_whole_body() {
            // The body changes length: let Pingora send it chunked.
            resp.remove_header(&header::CONTENT_LENGTH);
        }
        ctx.sse = sse;
        ctx.tap = Some(Box::new(tap));
        for (name, value) in &ctx.ratelimit_headers {
            resp.insert_header(*name, value.as_str())?;
        }
        if rt.config.server.expose_backend_header {
            resp.insert_header(X_GPT_API_BACKEND, cand.client.name.as_str())?;
        }
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
        let Some(tap) = ctx.tap.as_mut() else {
            return Ok(None);
        };
        let mut out = body.take().map(|b| tap.feed(b));
        if let Some(why) = tap.broken() {
            let e = Error::explain(ErrorType::ReadError, format!("backend body: {why}"));
            return Err(e.into_up());
        }
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
        if let Some(more) = ctx.failed_on_status {
            // Failover was decided from the status; the failure is already counted.
            e.set_retry(untouched && more);
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
        self.fail_on_error(ctx, e)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let caller_gone = e.esource() == &ErrorSource::Downstream;
        if let Some(status) = session.response_written().map(|r| r.status.as_u16()) {
            if ctx.answer_delivered(session.body_bytes_sent()) {
                // The caller has the whole answer: what failed after its end is no error.
                return FailToProxy {
                    error_code: status,
                    can_reuse_downstream: false,
                };
            }
            let why = if caller_gone {
                "caller disconnected".to_owned()
            } else {
                format!("backend failed mid-response: {}", describe(e))
            };
            log::warn!(
                "model `{}`: {}",
                escape::field(ctx.model()),
                escape::text(&why)
            );
            if !caller_gone {
                ctx.answer_cut_short();
            }
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
        let (err, detail) = final_error(ctx, e);
        log::warn!("{}", escape::text(&detail));
        if let Err(write) = respond::error(session, &err).await {
            log::debug!("could not send the error response: {write}");
        }
        ctx.error = Some(detail);
        FailToProxy {
            error_code: err.status(),
            can_reuse_downstream: false,
        }
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
        let written = session.response_written().map(|r| r.status.as_u16());
        let caller_left = e.is_some_and(|e| e.esource() == &ErrorSource::Downstream);
        let status = ctx.final_status(written, caller_left, session.body_bytes_sent());
        if let Some(tap) = ctx.tap.as_mut() {
            // A stream cut short (the caller left, the backend broke) may hold a last event that carries the
            // usage: read what arrived. A no-op for an answer that ended.
            tap.abandon();
        }
        ctx.note_first_token();
        let tokens = ctx.tap.as_ref().and_then(|t| t.usage()).unwrap_or_default();
        if ctx.caller_ip.is_none() {
            let trusted = ctx
                .runtime
                .as_ref()
                .map_or(&[][..], |rt| rt.config.server.trusted_proxies.as_slice());
            ctx.caller_ip = caller_ip(session, trusted, socket_ip(session).as_deref()).0;
        }
        let req = session.req_header();
        // Caller-controlled values are escaped and cut: none can end the line or forge a field.
        log::info!(
            "{} {} {} {} model={} backend={} key={} attempts={} ms={} ttfb_ms={} prompt={} completion={}",
            ctx.caller_ip.as_deref().unwrap_or("-"),
            escape::field(req.method.as_str()),
            escape::field(req.uri.path()),
            status,
            escape::field(ctx.model()),
            ctx.client().map_or("-", |c| c.name.as_str()),
            ctx.key.as_ref().map_or("-", |k| k.name()),
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
        if let Some(key) = &ctx.key {
            let total = tokens
                .total
                .or_else(|| Some(tokens.prompt? + tokens.completion.unwrap_or(0)));
            if let Some(total) = total.and_then(|t| u64::try_from(t).ok()).filter(|&t| t > 0) {
                self.limiter.add_tokens(key, total, Instant::now());
            }
        }
        if std::mem::take(&mut ctx.metered) {
            let backend = ctx.client().map(|c| c.name.as_str());
            let label = ctx.model_label();
            let latency = ctx.started.elapsed();
            self.metrics.request_finished(
                label,
                backend,
                status,
                latency,
                ctx.first_token,
                &tokens,
            );
        }
        ctx.send_record(status);
    }
}

#[cfg(test)]
mod tests {
    use super::ip_text;

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.2.3.4",
            "::1",
            "fe80::1",
        ] {
            let addr: std::net::IpAddr = ip.parse().expect("address");
            assert_eq!(ip_text(addr), addr.to_string());
        }
    }
}
