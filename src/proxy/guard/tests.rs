//! Tests of the head guard and the guarded stream.

#![allow(clippy::unwrap_used)]
use super::*;
use tokio::io::AsyncReadExt;

fn limits(max_header_bytes: usize) -> EdgeLimits {
    EdgeLimits {
        max_header_bytes,
        header_timeout: Duration::from_millis(100),
        send_timeout: Duration::from_millis(100),
    }
}

fn guarded(bytes: &[u8], limit: usize) -> (GuardedStream, Arc<HeadGuard>) {
    let guard = HeadGuard::new(limits(limit));
    let inner: Stream = Box::new(std::io::Cursor::new(bytes.to_vec()));
    (GuardedStream::new(inner, guard.clone()), guard)
}

#[tokio::test]
async fn unarmed_reads_pass_through() {
    let (mut s, _guard) = guarded(b"0123456789", 4);
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"0123456789");
}

#[tokio::test]
async fn armed_reads_stop_at_the_limit_then_hand_the_socket_over() {
    let (mut s, guard) = guarded(b"0123456789", 4);
    guard.arm(true);
    let mut buf = [0u8; 64];
    assert_eq!(s.read(&mut buf).await.unwrap(), 4);
    let read = tokio::time::timeout(std::time::Duration::from_millis(50), s.read(&mut buf));
    assert!(
        read.await.is_err(),
        "the read past the limit must not complete"
    );
    let (why, mut rest) = guard.refused().await;
    assert_eq!(why, Refusal::HeadTooLarge { limit: 4 });
    let mut out = Vec::new();
    rest.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"456789");
}

#[tokio::test]
async fn head_done_stops_counting() {
    let (mut s, guard) = guarded(b"0123456789", 4);
    guard.arm(true);
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).await.unwrap();
    guard.head_done();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"3456789");
    // Re-armed for the next head, the count starts again.
    guard.arm(false);
    assert_eq!(guard.lock().read, 0);
}

#[tokio::test]
async fn a_head_not_complete_by_its_deadline_is_refused() {
    let (client, server) = tokio::io::duplex(64);
    let guard = HeadGuard::new(limits(1024));
    let mut s = GuardedStream::new(Box::new(server), guard.clone());
    // A later request: the deadline starts with its first byte.
    guard.arm(false);
    let mut client = client;
    tokio::io::AsyncWriteExt::write_all(&mut client, b"G")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).await.unwrap(), 1);
    let read = tokio::spawn(async move {
        let _ = s.read(&mut buf).await;
    });
    let (why, _stream) = guard.refused().await;
    assert_eq!(why, Refusal::HeadTimeout { partial: true });
    read.abort();
}

#[tokio::test]
async fn a_write_without_progress_fails_after_send_timeout() {
    let (_client, server) = tokio::io::duplex(8);
    let guard = HeadGuard::new(limits(1024));
    let mut s = GuardedStream::new(Box::new(server), guard);
    let err = tokio::io::AsyncWriteExt::write_all(&mut s, &[0u8; 64])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
}
