//! Reading the whole request body before routing (the model is in it) while letting Pingora still send it.
//!
//! Pingora 0.9 sends a body that was read in `request_filter` only from its 64 KiB retry buffer: once the
//! body is complete it replays that buffer through `request_body_filter`, where we substitute the full body.
//! - Content-Length: the buffer is switched on only when at most 64 KiB remain, so it holds the tail and is
//!   never truncated (each read returns at most 64 KiB, so some tail always remains to be buffered).
//! - Chunked (or a body the buffer could not hold): the HTTP/1 session is replaced by one that parses a
//!   rebuilt request with `content-length: 0` from a replay stream; an empty body makes Pingora call
//!   `request_body_filter(None, end)` once per attempt, and we substitute the full body there too.
//!
//! This relies on pingora-proxy internals: the version is pinned and tests send multi-MB bodies both ways.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use tokio::time::Instant;

use super::replay::ReplayStream;
use crate::config::ServerSettings;
use crate::error::GatewayError;
use crate::escape;
use crate::tap::decode::{decode_whole, Encoding, WholeError};

/// The body with its `Content-Encoding` undone (at most `max` bytes decoded), and the bytes as received when
/// it had one (sent on as they came when nothing in the body changes).
pub fn decoded(
    session: &Session,
    body: Bytes,
    max: usize,
) -> Result<(Bytes, Option<Bytes>), GatewayError> {
    let Some(value) = session.req_header().headers.get(header::CONTENT_ENCODING) else {
        return Ok((body, None));
    };
    let encoding = Encoding::parse(value.as_bytes()).map_err(|_| {
        let shown = String::from_utf8_lossy(value.as_bytes());
        GatewayError::UnsupportedContentEncoding(escape::text(escape::cut(&shown, 64)).to_string())
    })?;
    let Some(encoding) = encoding else {
        return Ok((body, None));
    };
    match decode_whole(encoding, &body, max) {
        Ok(plain) => Ok((Bytes::from(plain), Some(body))),
        Err(WholeError::TooLarge(_)) => Err(GatewayError::BodyTooLarge { limit: max }),
        Err(WholeError::Invalid(e)) => Err(GatewayError::BodyEncoding(e.to_string())),
    }
}

/// Pingora's retry buffer size (`BODY_BUF_LIMIT` in pingora-core).
const RETRY_BUFFER_LIMIT: usize = 64 * 1024;

/// How much longer than `client_body_timeout` a body may take, per byte received: 1 s per 64 KiB, so that an
/// upload at 64 KiB/s or faster never times out while a trickle does.
const BODY_ALLOWANCE_BYTES_PER_SEC: u64 = 64 * 1024;

/// Reads the complete request body (at most `server.max_body_bytes`, within `server.client_body_timeout` plus
/// its allowance) and arranges for Pingora to forward it.
pub async fn read_full(
    session: &mut Session,
    server: &ServerSettings,
) -> Result<Bytes, GatewayError> {
    let started = Instant::now();
    // Pingora's timeout for each read; the deadline below bounds the whole body.
    session.set_read_timeout(Some(server.client_body_timeout));
    let deadline = |received: usize| {
        let allowance =
            u64::try_from(received).unwrap_or(u64::MAX) * 1000 / BODY_ALLOWANCE_BYTES_PER_SEC;
        started + server.client_body_timeout + Duration::from_millis(allowance)
    };
    let limit = server.max_body_bytes;
    let declared = declared_length(session)?;
    if declared.is_some_and(|n| n > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    if expects_continue(session) {
        session
            .write_continue_response()
            .await
            .map_err(|e| GatewayError::BodyRead(e.to_string()))?;
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    let mut buffering = declared.is_none_or(|n| n <= RETRY_BUFFER_LIMIT);
    if buffering {
        session.enable_retry_buffering();
    }
    // Stops as soon as Pingora says the body is complete: one more read would only return None, at the
    // cost of arming a read timer.
    while !session.is_body_done() {
        let read = tokio::time::timeout_at(deadline(body.len()), session.read_request_body());
        let Some(chunk) = read
            .await
            .map_err(|_| GatewayError::RequestTimeout("body"))?
            .map_err(read_error)?
        else {
            break;
        };
        if body.len() + chunk.len() > limit {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        if body.is_empty() && session.is_body_done() {
            // The whole body in one piece (a small request): no copy.
            return finish(session, chunk).await;
        }
        body.extend_from_slice(&chunk);
        if let (false, Some(n)) = (buffering, declared) {
            if n - body.len() <= RETRY_BUFFER_LIMIT {
                session.enable_retry_buffering();
                buffering = true;
            }
        }
    }
    finish(session, body.freeze()).await
}

/// A failed body read: a stall (Pingora's per-read timeout) is the caller's timeout, anything else broken framing.
fn read_error(e: Box<pingora::Error>) -> GatewayError {
    match e.etype() {
        pingora::ErrorType::ReadTimedout => GatewayError::RequestTimeout("body"),
        _ => GatewayError::BodyRead(e.to_string()),
    }
}

/// Arranges for the complete `body` to be sent upstream (see the module notes) and returns it.
async fn finish(session: &mut Session, body: Bytes) -> Result<Bytes, GatewayError> {
    if !body.is_empty() && session.get_retry_buffer().is_none() {
        replace_with_replay(session).await?;
    }
    Ok(body)
}

/// The Content-Length, or None for chunked (or absent) framing.
fn declared_length(session: &Session) -> Result<Option<usize>, GatewayError> {
    let headers = &session.req_header().headers;
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Ok(None);
    }
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| GatewayError::BodyRead("invalid Content-Length".into())),
    }
}

fn expects_continue(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Swaps the HTTP/1 downstream for one that reads a rebuilt, body-less copy of the request first, followed by
/// whatever the caller sent after the body (pipelined requests, which the old session had read ahead).
async fn replace_with_replay(session: &mut Session) -> Result<(), GatewayError> {
    let placeholder = ServerSession::new_http1(Box::new(std::io::Cursor::new(Vec::new())));
    let old = std::mem::replace(&mut *session.downstream_session, placeholder);
    let keepalive = old.get_keepalive();
    let pipelining = old.pipelining_enabled();
    let h1 = match old {
        ServerSession::H1(h1) => h1,
        other => {
            *session.downstream_session = other;
            return Err(GatewayError::LengthRequired);
        }
    };
    let mut head = rebuilt_head(h1.req_header());
    let lost = || GatewayError::Internal("could not re-read the request head".into());
    let stream = if pipelining && h1.will_keepalive() {
        // The body is complete, so this only hands over the stream and the bytes read past the body.
        let (stream, ahead) = h1
            .reuse()
            .await
            .ok()
            .flatten()
            .ok_or_else(lost)?
            .into_parts();
        if let Some(ahead) = ahead {
            head.extend_from_slice(&ahead);
        }
        stream
    } else {
        h1.into_inner()
    };
    let mut replayed = ServerSession::new_http1(Box::new(ReplayStream::new(head.freeze(), stream)));
    match replayed.read_request().await {
        Ok(true) => {}
        Ok(false) | Err(_) => return Err(lost()),
    }
    replayed.set_keepalive(keepalive);
    replayed.set_pipelining_enabled(pipelining);
    *session.downstream_session = replayed;
    Ok(())
}

/// The request line and headers as received, minus body framing, with `content-length: 0`.
fn rebuilt_head(req: &pingora::http::RequestHeader) -> BytesMut {
    let mut out = BytesMut::with_capacity(1024);
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(req.uri.to_string().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers.iter() {
        if name == header::TRANSFER_ENCODING
            || name == header::CONTENT_LENGTH
            || name == header::EXPECT
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: 0\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    //! The chunked body itself is parsed by Pingora; ours is the request head rebuilt for the replay, and the
    //! stream that replays it. Property tests ("fuzz"): any request head survives the trip through Pingora's
    //! own parser unchanged but for its body framing.

    #![allow(clippy::unwrap_used)]
    use super::*;
    use pingora::http::RequestHeader;
    use proptest::prelude::*;

    /// A header: a name (sometimes one of the framing headers the rebuild drops) and a value without
    /// surrounding white space.
    fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
        let name = prop_oneof![
            3 => "x-[a-z0-9-]{0,12}",
            1 => proptest::sample::select(vec![
                "transfer-encoding", "content-length", "expect", "accept", "authorization",
            ])
            .prop_map(str::to_owned),
        ];
        let middle =
            proptest::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')], 0..40);
        let value = middle.prop_map(|m| [&b"v"[..], &m, b"v"].concat());
        (name, value)
    }

    fn request() -> impl Strategy<Value = RequestHeader> {
        let method = proptest::sample::select(vec!["POST", "PUT", "PATCH"]);
        let path = "/v1/[A-Za-z0-9._~%-]{0,20}(\\?[a-z0-9=&]{0,12})?";
        let headers = proptest::collection::vec(header(), 0..12);
        (method, path, headers).prop_map(|(method, path, headers)| {
            let mut req = RequestHeader::build(method, path.as_bytes(), None).unwrap();
            for (name, value) in headers {
                req.append_header(name, value).unwrap();
            }
            req
        })
    }

    /// A header list as sorted pairs (a header map's order is by name, not as sent).
    fn pairs(req: &RequestHeader) -> Vec<(String, Vec<u8>)> {
        let mut pairs: Vec<_> = (req.headers.iter())
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        pairs.sort();
        pairs
    }

    proptest! {
        #![proptest_config(crate::fuzz_config())]

        #[test]
        fn a_rebuilt_head_reads_back_as_the_request_without_its_framing(
            req in request(),
            rest in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let head = rebuilt_head(&req);
            // What follows on the connection (the next request, or garbage) changes nothing.
            let inner: pingora::protocols::Stream = Box::new(std::io::Cursor::new(rest));
            let stream = ReplayStream::new(head.freeze(), inner);
            let mut session = ServerSession::new_http1(Box::new(stream));
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            prop_assert!(runtime.block_on(session.read_request()).unwrap());
            let got = session.req_header();
            prop_assert_eq!(&got.method, &req.method);
            prop_assert_eq!(got.uri.to_string(), req.uri.to_string());
            let framing = [header::TRANSFER_ENCODING, header::CONTENT_LENGTH, header::EXPECT];
            let mut want: Vec<_> = pairs(&req)
                .into_iter()
                .filter(|(n, _)| !framing.iter().any(|f| f.as_str() == n))
                .collect();
            want.push(("content-length".to_owned(), b"0".to_vec()));
            want.sort();
            prop_assert_eq!(pairs(got), want);
        }
    }
}
