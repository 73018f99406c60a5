//! The floor under gpt-api: a bare Pingora 0.9 proxy to one backend, with none of the gateway's work, so
//! `bench/instructions.sh` can say how much of a request's cost is Pingora's and how much is ours.
//!
//! `cargo run --release --example bench-floor -- LISTEN BACKEND [--shaped]` (both `host:port`), one worker
//! thread without work stealing, like gpt-api's. With `--shaped`, the same proxy does what any gateway that
//! keeps gpt-api's promises must ask of Pingora, and nothing of its own: deadlines on every wait (the caller's
//! keep-alive and body, the backend's connect, reads, writes and pooled idle), the whole body read before the
//! backend is chosen (routing by the JSON `model`) and replayed from Pingora's buffer, the backend's own
//! `Host`, key and `Content-Length`, `X-Forwarded-For`, and an `x-request-id` and `x-gpt-api-backend` on the
//! answer. No JSON is read, nothing routed, tapped, logged or recorded.

use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use gpt_api::config;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

/// The gateway's allocator, so the two are compared like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// gpt-api's caller keep-alive and pooled-idle deadlines (private to its proxy); the others are its config's
/// defaults.
const KEEPALIVE_SECS: u64 = 75;
const POOL_IDLE: Duration = Duration::from_secs(90);
const BODY: Duration = Duration::from_millis(config::DEFAULT_CLIENT_TIMEOUT_MS);
const CONNECT: Duration = Duration::from_millis(config::DEFAULT_CONNECT_TIMEOUT_MS);
const READ: Duration = Duration::from_millis(config::DEFAULT_READ_TIMEOUT_MS);

struct Floor {
    backend: std::net::SocketAddr,
    shaped: bool,
}

#[derive(Default)]
struct Ctx {
    /// The request body, kept for the request's life as gpt-api keeps it (to route by it, record it).
    body: Bytes,
    caller: String,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        if !self.shaped {
            return Ok(false);
        }
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(KEEPALIVE_SECS));
        }
        session.set_read_timeout(Some(BODY));
        session.enable_retry_buffering();
        let mut body = BytesMut::new();
        while !session.is_body_done() {
            let Some(chunk) = session.read_request_body().await? else {
                break;
            };
            body.extend_from_slice(&chunk);
        }
        ctx.body = body.freeze();
        ctx.caller = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.backend, false, String::new());
        if self.shaped {
            let o = &mut peer.options;
            o.connection_timeout = Some(CONNECT);
            o.total_connection_timeout = Some(CONNECT);
            o.read_timeout = Some(READ);
            o.write_timeout = Some(READ);
            o.idle_timeout = Some(POOL_IDLE);
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if self.shaped {
            // Values made once, as gpt-api's client config makes them; Content-Length only when it differs.
            req.insert_header(http::header::HOST, HeaderValue::from_static("127.0.0.1"))?;
            req.insert_header(
                http::header::AUTHORIZATION,
                HeaderValue::from_static("Bearer sk-backend-key"),
            )?;
            req.insert_header(
                http::header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            )?;
            let length = HeaderValue::from(ctx.body.len());
            if req.headers.get(http::header::CONTENT_LENGTH) != Some(&length) {
                req.insert_header(http::header::CONTENT_LENGTH, length)?;
            }
            req.insert_header("X-Forwarded-For", ctx.caller.as_str())?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if self.shaped {
            resp.insert_header("x-request-id", uuid::Uuid::now_v7().to_string())?;
            resp.insert_header("x-gpt-api-backend", "bench")?;
        }
        Ok(())
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(backend)) = (args.next(), args.next()) else {
        eprintln!("usage: bench-floor LISTEN BACKEND [--shaped]");
        std::process::exit(2);
    };
    let shaped = match args.next().as_deref() {
        None => false,
        Some("--shaped") => true,
        Some(other) => {
            eprintln!("unknown argument {other}: usage: bench-floor LISTEN BACKEND [--shaped]");
            std::process::exit(2);
        }
    };
    let Ok(backend) = backend.parse() else {
        eprintln!("BACKEND must be an ip:port");
        std::process::exit(2);
    };
    let Some(mut conf) = ServerConf::new() else {
        eprintln!("cannot build a server conf");
        std::process::exit(1);
    };
    conf.threads = 1;
    conf.work_stealing = false;
    conf.grace_period_seconds = Some(0);
    conf.graceful_shutdown_timeout_seconds = Some(1);
    if shaped {
        // gpt-api's timers: tokio's wheel, cheaper than Pingora's fast timeouts per registration.
        conf.fast_timeout_to_tokio_threshold_seconds = Some(0);
    }
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Floor { backend, shaped });
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
