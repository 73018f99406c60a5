//! A downstream stream that first replays bytes we hold, then continues with the client's socket.
//!
//! Used to put a rebuilt HTTP/1 request in front of the real connection (see `body.rs`), so Pingora's own
//! session parses it as if the client had sent it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::Stream;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `prefix` is read first; everything else (writes, digests, TLS info) goes to `inner`.
#[derive(Debug)]
pub struct ReplayStream {
    prefix: Bytes,
    inner: Stream,
}

impl ReplayStream {
    pub fn new(prefix: Bytes, inner: Stream) -> Self {
        ReplayStream { prefix, inner }
    }
}

impl AsyncRead for ReplayStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut *self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReplayStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for ReplayStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for ReplayStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ReplayStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ReplayStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for ReplayStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for ReplayStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

// Peeking is only used for protocol detection before the first request; the default (unsupported) is right.
#[async_trait]
impl Peek for ReplayStream {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_prefix_then_inner() {
        let inner: Stream = Box::new(std::io::Cursor::new(b"world".to_vec()));
        let mut s = ReplayStream::new(Bytes::from_static(b"hello "), inner);
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
        s.write_all(b"x").await.unwrap();
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::fuzz_config())]

        /// Property test ("fuzz"): whatever the reads' sizes, the prefix comes first, then the socket's bytes.
        #[test]
        fn any_reads_see_the_prefix_then_the_stream(
            prefix in proptest::collection::vec(any::<u8>(), 0..200),
            rest in proptest::collection::vec(any::<u8>(), 0..200),
            sizes in proptest::collection::vec(1usize..50, 1..20),
        ) {
            let inner: Stream = Box::new(std::io::Cursor::new(rest.clone()));
            let mut s = ReplayStream::new(Bytes::from(prefix.clone()), inner);
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let got = runtime.block_on(async {
                let mut got = Vec::new();
                for size in sizes.iter().cycle() {
                    let mut buf = vec![0u8; *size];
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                got
            });
            prop_assert_eq!(got, [prefix, rest].concat());
        }
    }
}
