//! A slow streaming backend that counts the requests in flight and the most it ever had at once (the
//! concurrency limits' witness): each request gets `events` SSE events `gap` apart over raw HTTP/1.1.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::mock::chat_chunk;

/// The backend; its accept loop stops when it is dropped.
pub struct InFlight {
    pub addr: std::net::SocketAddr,
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl InFlight {
    pub async fn start(events: usize, gap: Duration) -> InFlight {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (n, m) = (now.clone(), most.clone());
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, events, gap, n.clone(), m.clone()));
            }
        });
        InFlight {
            addr,
            now,
            most,
            task,
        }
    }

    /// `http://ADDR/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Requests being answered now.
    pub fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    /// The most requests it answered at once.
    pub fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers the requests of one connection (kept alive) until it closes or a write fails.
async fn serve(
    mut socket: TcpStream,
    events: usize,
    gap: Duration,
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
) {
    while read_request(&mut socket).await {
        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(n, Ordering::SeqCst);
        let answered = answer(&mut socket, events, gap).await;
        now.fetch_sub(1, Ordering::SeqCst);
        if !answered {
            return;
        }
    }
}

async fn answer(socket: &mut TcpStream, events: usize, gap: Duration) -> bool {
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    if socket.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    let event = chat_chunk("m1", json!([{ "index": 0, "delta": { "content": " hi" } }]));
    for i in 0..=events {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        let data = match i < events {
            true => format!("data: {event}\n\n"),
            false => "data: [DONE]\n\n".to_owned(),
        };
        let chunk = format!("{:x}\r\n{data}\r\n", data.len());
        if socket.write_all(chunk.as_bytes()).await.is_err() {
            return false;
        }
    }
    socket.write_all(b"0\r\n\r\n").await.is_ok()
}

/// Reads one request (head and `content-length` body); false when the connection closed first.
async fn read_request(socket: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap_or(0));
            if buf.len() >= end + 4 + length {
                return true;
            }
        }
        match socket.read(&mut piece).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&piece[..n]),
        }
    }
}
