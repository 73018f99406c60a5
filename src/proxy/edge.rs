//! The per-connection loop in front of Pingora's HTTP/1 proxy: each caller's socket is wrapped in a
//! [`GuardedStream`] and each request head is read under its [`HeadGuard`]; a head over `max_header_bytes`
//! gets an OpenAI-shaped 431, one not complete within `client_header_timeout` a 408 (or, when nothing of it
//! came, nothing), and the connection is closed.
//!
//! It does what Pingora's own HTTP server loop does (one `process_new_http` per request, the connection's
//! settings carried to the next), with the guard armed before each request. HTTP/2 connections (TLS with ALPN
//! h2) go to Pingora's loop: the h2 codec bounds their headers (to `max_header_bytes` as configured at start);
//! the send timeout applies to them too.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::v2::server::default_h2_options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::guard::{EdgeLimits, GuardedStream, HeadGuard, Refusal};
use super::{Gateway, Proxy};
use crate::error::GatewayError;

/// Pingora's idle time before a connection's first request (its HTTP server loop uses the same).
const FIRST_REQUEST_KEEPALIVE_SECS: u64 = 60;
/// How long a refused caller's remaining bytes are read and dropped after the answer, so that closing with
/// unread data (a TCP reset) does not destroy the answer before the caller reads it (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(2);
/// Longest wait to write a refusal.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connections waiting for a request are still read once the service has stopped accepting (at a
/// graceful shutdown or upgrade, before they are closed): one accepted in the accept loop's last moments may not
/// have sent its request yet, or may still be in its TLS handshake.
const LATE_REQUEST_WAIT: Duration = Duration::from_secs(1);

/// The proxy service's application: Pingora's proxy behind the edge loop.
pub struct Edge {
    proxy: Arc<HttpProxy<Proxy>>,
    gateway: Arc<Gateway>,
}

impl Edge {
    pub fn new(mut proxy: HttpProxy<Proxy>, gateway: Arc<Gateway>) -> Self {
        // HTTP/2 heads are bounded by the h2 codec (Pingora's default: 64 KiB): the same limit as HTTP/1, as
        // configured at start.
        let mut h2 = default_h2_options();
        let limit = gateway.runtime().config.server.max_header_bytes;
        h2.max_header_list_size(u32::try_from(limit).unwrap_or(u32::MAX));
        proxy.h2_options = Some(h2);
        Edge {
            proxy: Arc::new(proxy),
            gateway,
        }
    }

    /// This connection's limits, from the config in force when it was accepted.
    fn limits(&self) -> EdgeLimits {
        let server = &self.gateway.runtime().config.server;
        EdgeLimits {
            max_header_bytes: server.max_header_bytes,
            header_timeout: server.client_header_timeout,
            send_timeout: server.send_timeout,
        }
    }

    async fn serve_h1(&self, stream: Stream, guard: Arc<HeadGuard>, shutdown: &ShutdownWatch) {
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(match *shutdown.borrow() {
            true => None,
            false => Some(FIRST_REQUEST_KEEPALIVE_SECS),
        });
        // Requests sent before the previous answer (RFC 9112 section 9.3.2) are answered one after the other,
        // in order; without this Pingora answers the first and closes. Carried to later sessions by Pingora.
        session.set_pipelining_enabled(true);
        let mut first = true;
        loop {
            guard.arm(std::mem::take(&mut first));
            // Handed to the request's first phase (`on_connection_reuse`), which disarms the guard.
            session.set_connection_user_context(Some(Box::new(HeadDone(guard.clone()))));
            let reused = tokio::select! {
                biased;
                (why, stream) = guard.refused() => return Box::pin(refuse(why, stream)).await,
                reused = self.proxy.process_new_http(session, shutdown) => reused,
            };
            let Some((stream, settings)) = reused.map(|r| r.consume()) else {
                // Pingora gave up on the request (its own timeout) after the guard took the socket.
                if let Some((why, stream)) = guard.take_refused() {
                    Box::pin(refuse(why, stream)).await;
                }
                return;
            };
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
        }
    }
}

#[async_trait]
impl ServerApp for Edge {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let guard = HeadGuard::new(self.limits());
        let stream: Stream = Box::new(GuardedStream::new(stream, guard.clone()));
        if h2 {
            // The guard stays unarmed: only the send timeout applies.
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        self.serve_h1(stream, guard, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        // The accept loops have ended. Pingora's cleanup wakes the connections waiting for a request, which then
        // close; one accepted a moment ago whose request is still on its way would be reset under its caller
        // (seen once in the upgrade test: a new connection, ECONNRESET as the old process stopped accepting).
        // Its request gets a moment to arrive; this runs within the grace period, so the process exits no later.
        tokio::time::sleep(LATE_REQUEST_WAIT).await;
        // Wakes the connections idling between requests, so that they close when the service stops.
        self.proxy.http_cleanup().await;
    }
}

/// The connection context Pingora hands to the first phase of the request: its head is complete.
pub struct HeadDone(Arc<HeadGuard>);

impl HeadDone {
    pub fn disarm(&self) {
        self.0.head_done();
    }
}

/// Answers a refused head and closes the connection. Boxed where awaited, so that the loop's future (held by
/// every idle connection) does not grow by this one's size.
async fn refuse(why: Refusal, mut stream: Stream) {
    let err = match why {
        Refusal::HeadTooLarge { limit } => GatewayError::HeaderTooLarge { limit },
        Refusal::HeadTimeout { partial: true } => GatewayError::RequestTimeout("header"),
        // A connection that never started a request is closed without a word (as nginx does).
        Refusal::HeadTimeout { partial: false } => return,
    };
    let peer = stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().map(|a| a.to_string()))
        .unwrap_or_else(|| "-".into());
    log::info!("{peer} {} {err}; connection closed", err.status());
    let answer = raw_answer(&err);
    let written = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(&answer).await?;
        stream.flush().await
    });
    if !matches!(written.await, Ok(Ok(()))) {
        return;
    }
    linger(&mut stream).await;
}

/// A complete HTTP/1.1 answer for `err`, ending the connection.
fn raw_answer(err: &GatewayError) -> Vec<u8> {
    let body = err.to_json();
    let status = http::StatusCode::from_u16(err.status()).unwrap_or(http::StatusCode::BAD_REQUEST);
    let mut out = BytesMut::with_capacity(160 + body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n{}: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            crate::request_id::HEADER,
            crate::request_id::new(),
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    out.to_vec()
}

/// Sends our FIN, then reads and drops what the caller still sends, until it closes or [`LINGER`] passes.
async fn linger(stream: &mut Stream) {
    let _ = AsyncWriteExt::shutdown(stream).await;
    // On the heap: a buffer in this future would be part of every idle connection's state.
    let mut sink = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn raw_answer_is_a_complete_closing_response() {
        let err = GatewayError::HeaderTooLarge { limit: 65536 };
        let text = String::from_utf8(raw_answer(&err)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "request_header_too_large");
    }
}
