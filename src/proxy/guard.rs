//! The caller's socket, wrapped to bound what Pingora reads before it has a request head, and how long a
//! write to a caller that does not read may wait.
//!
//! Pingora reads a request head with up to 1 MiB and a timeout per read only (each byte restarts it), before any
//! `ProxyHttp` phase runs. The edge (`edge.rs`) arms a [`HeadGuard`] before each request; while armed,
//! [`GuardedStream`] lets at most `max_header_bytes` through (Pingora asking for more means the head is larger),
//! and the head must be complete by its deadline: `client_header_timeout` from the connection's start for its
//! first request, from the first byte for a later one (the idle wait between requests is Pingora's keep-alive
//! timeout). On either, the stream hands the socket to the edge, which answers (431, 408) and closes. The guard
//! is disarmed by the proxy's first phase for the request ([`HeadGuard::head_done`]), so bodies never count.
//! What counts is what is read from the socket while armed: the start of a pipelined request that Pingora read
//! along with the previous one (at most one read's worth) is not counted again.
//!
//! Writes: a write that makes no progress for `send_timeout` fails (nginx's `send_timeout`), which ends the
//! request and its backend connection; Pingora's own write timeout restarts with each write call instead.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::Stream;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// Why the edge takes a connection back before Pingora has a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The head did not end within `max_header_bytes`.
    HeadTooLarge { limit: usize },
    /// The head was not complete by its deadline; `partial`: some of it had arrived.
    HeadTimeout { partial: bool },
}

/// Limits of one connection (from `server:` when it was accepted).
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    pub max_header_bytes: usize,
    pub header_timeout: Duration,
    pub send_timeout: Duration,
}

#[derive(Debug)]
struct HeadState {
    /// Bytes read from the socket since the guard was armed.
    read: usize,
    /// When the head must be complete; `None` until its first byte on a reused connection.
    deadline: Option<Instant>,
    /// Set with the socket when a limit was crossed; taken by the edge.
    refused: Option<(Refusal, Stream)>,
}

/// Shared by a connection's [`GuardedStream`], its edge loop and (through Pingora's connection context)
/// the request's first phase.
#[derive(Debug)]
pub struct HeadGuard {
    limits: EdgeLimits,
    /// Checked on every read: the common case (a body, an idle probe) takes no lock.
    armed: AtomicBool,
    state: Mutex<HeadState>,
    refused: Notify,
}

impl HeadGuard {
    pub fn new(limits: EdgeLimits) -> Arc<HeadGuard> {
        Arc::new(HeadGuard {
            limits,
            armed: AtomicBool::new(false),
            state: Mutex::new(HeadState {
                read: 0,
                deadline: None,
                refused: None,
            }),
            refused: Notify::new(),
        })
    }

    /// Starts guarding the next request head; the first one's deadline runs from now, a later one's from its
    /// first byte.
    pub fn arm(&self, first: bool) {
        let mut state = self.lock();
        state.read = 0;
        state.deadline = first.then(|| Instant::now() + self.limits.header_timeout);
        drop(state);
        self.armed.store(true, Ordering::Release);
    }

    /// Pingora has parsed the head: stop counting.
    pub fn head_done(&self) {
        self.armed.store(false, Ordering::Release);
    }

    /// Resolves with the refusal and the socket once the stream gave it up.
    pub async fn refused(&self) -> (Refusal, Stream) {
        loop {
            if let Some(taken) = self.take_refused() {
                return taken;
            }
            self.refused.notified().await;
        }
    }

    /// The refusal and the socket, if the stream gave it up.
    pub fn take_refused(&self) -> Option<(Refusal, Stream)> {
        self.lock().refused.take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HeadState> {
        // A panic while holding this lock cannot leave the counters inconsistent: use them as they are.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refuse(&self, why: Refusal, stream: Stream) {
        self.armed.store(false, Ordering::Release);
        self.lock().refused = Some((why, stream));
        self.refused.notify_one();
    }
}

/// The caller's stream under a [`HeadGuard`].
#[derive(Debug)]
pub struct GuardedStream {
    /// `None` once handed to the edge.
    inner: Option<Stream>,
    guard: Arc<HeadGuard>,
    id: UniqueIDType,
    /// The head deadline's timer, while one runs.
    head_timer: Option<Pin<Box<Sleep>>>,
    /// Runs while writes are blocked (the caller reads nothing).
    send_timer: Option<Pin<Box<Sleep>>>,
}

impl GuardedStream {
    pub fn new(inner: Stream, guard: Arc<HeadGuard>) -> Self {
        let id = inner.id();
        GuardedStream {
            inner: Some(inner),
            guard,
            id,
            head_timer: None,
            send_timer: None,
        }
    }

    /// A read while the guard is armed: at most up to the limit and by the deadline, and the socket handed over
    /// beyond either.
    fn poll_head_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (read, deadline) = {
            let state = self.guard.lock();
            (state.read, state.deadline)
        };
        if let Some(deadline) = deadline {
            let timer = self
                .head_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_ready() {
                self.head_timer = None;
                return self.give_up(Refusal::HeadTimeout { partial: read > 0 });
            }
        }
        let limit = self.guard.limits.max_header_bytes;
        let room = limit.saturating_sub(read);
        if room == 0 {
            // Pingora wants more although `limit` bytes did not hold a complete head.
            return self.give_up(Refusal::HeadTooLarge { limit });
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Pending;
        };
        let n = if buf.remaining() <= room {
            let before = buf.filled().len();
            match Pin::new(&mut **inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => buf.filled().len() - before,
                other => return other,
            }
        } else {
            let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
            match Pin::new(&mut **inner).poll_read(cx, &mut limited) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            let n = limited.filled().len();
            buf.advance(n);
            n
        };
        let mut state = self.guard.lock();
        state.read += n;
        if n > 0 && state.deadline.is_none() {
            state.deadline = Some(Instant::now() + self.guard.limits.header_timeout);
        }
        Poll::Ready(Ok(()))
    }

    /// Fails a write that has made no progress for `send_timeout`; any progress restarts the wait.
    fn send_progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.send_timer = None;
            return polled;
        }
        let timeout = self.guard.limits.send_timeout;
        let timer = self
            .send_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(cx).is_ready() {
            self.send_timer = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the caller read nothing for {timeout:?}"),
            )));
        }
        Poll::Pending
    }

    /// Hands the socket to the edge loop, which answers and closes it. Pingora's read then never completes (an
    /// error would make Pingora log and end the request first): the edge drops the request's future.
    fn give_up(&mut self, why: Refusal) -> Poll<io::Result<()>> {
        if let Some(stream) = self.inner.take() {
            self.guard.refuse(why, stream);
        }
        Poll::Pending
    }

    fn inner(&mut self) -> io::Result<&mut Stream> {
        self.inner.as_mut().ok_or_else(handed_over)
    }
}

fn handed_over() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection taken over by the edge",
    )
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.guard.armed.load(Ordering::Acquire) {
            return self.poll_head_read(cx, buf);
        }
        if self.head_timer.is_some() {
            // The head arrived in time: no timer is kept (nor fires) while the request runs or the connection idles.
            self.head_timer = None;
        }
        match self.inner.as_mut() {
            Some(inner) => Pin::new(&mut **inner).poll_read(cx, buf),
            // Handed to the edge, which is dropping this request: see `give_up`.
            None => Poll::Pending,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = match self.inner() {
            Ok(inner) => Pin::new(&mut **inner).poll_write(cx, buf),
            Err(e) => return Poll::Ready(Err(e)),
        };
        self.send_progress(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = match self.inner() {
            Ok(inner) => Pin::new(&mut **inner).poll_write_vectored(cx, bufs),
            Err(e) => return Poll::Ready(Err(e)),
        };
        self.send_progress(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = match self.inner() {
            Ok(inner) => Pin::new(&mut **inner).poll_flush(cx),
            Err(e) => return Poll::Ready(Err(e)),
        };
        self.send_progress(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner() {
            Ok(inner) => Pin::new(&mut **inner).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        if let Some(inner) = self.inner.as_mut() {
            inner.shutdown().await
        }
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.id
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.as_ref().and_then(|s| s.get_ssl())
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.as_ref().and_then(|s| s.get_ssl_digest())
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.as_ref().and_then(|s| s.selected_alpn_proto())
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner
            .as_ref()
            .map(|s| s.get_timing_digest())
            .unwrap_or_default()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.as_ref().and_then(|s| s.get_proxy_digest())
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.as_ref().and_then(|s| s.get_socket_digest())
    }
}

// Peeking serves only h2c detection, which the gateway does not offer; the default (unsupported) is right.
#[async_trait]
impl Peek for GuardedStream {}

#[cfg(test)]
mod tests;
