//! Attempt and failover: the peer of each attempt, its request head and body, and what a failure leads to.

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::{upstream, Gateway, RequestCtx};
use crate::failover::attempt::{Broke, Verdict};
use crate::failover::Failure;

/// The peer of the next attempt (see [`crate::failover::attempt::Attempt::next`]).
pub(super) async fn peer(gw: &Gateway, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let cand = ctx
        .next_attempt()
        .map_err(|e| internal(&e.to_string()))?
        .ok_or_else(|| internal("no backend left to try"))?;
    let client = &cand.client;
    match gw
        .dns()
        .address(&client.base_url, client.connect_timeout)
        .await
    {
        Ok(addr) => Ok(Box::new(upstream::peer(client, addr))),
        Err(why) => {
            let more = ctx.fail_attempt(Failure::Connect(why.clone()), None, gw.metrics());
            let mut e = upstream::resolve_error(why);
            e.set_retry(more);
            Err(e)
        }
    }
}

/// The request head for the current attempt's client.
pub(super) fn request_head(ctx: &RequestCtx, head: &mut RequestHeader) -> Result<()> {
    let client = ctx
        .client()
        .ok_or_else(|| internal("no route for request"))?;
    if ctx.translates() {
        upstream::retarget(head, ctx.upstream_kind())?;
    }
    let caller = ctx.caller();
    upstream::rewrite(
        head,
        client,
        ctx.outgoing_len(),
        caller.socket_ip.as_deref(),
        caller.peer_trusted,
        // A gateway key (auth on) never reaches a backend; nor does a caller's key where the client
        // sends its own.
        ctx.key().is_some() || !client.api_key.is_empty(),
    )?;
    upstream::anthropic_version(head, client)?;
    if ctx.sends_decoded() {
        head.remove_header(&http::header::CONTENT_ENCODING);
    }
    Ok(())
}

/// Pingora replays only the tail of the body it kept (see body.rs): the whole body goes at its end.
pub(super) fn request_body(ctx: &mut RequestCtx, body: &mut Option<Bytes>, end_of_stream: bool) {
    *body = ctx.body_for_upstream(end_of_stream);
}

/// A connection that could not be made: nothing reached the backend, so the next candidate may follow.
pub(super) fn connect_failed(gw: &Gateway, ctx: &mut RequestCtx, e: Box<Error>) -> Box<Error> {
    fail_on_error(gw, ctx, e)
}

/// An attempt that broke after it was sent: retried, counted as failed, or the request's end.
pub(super) fn broke(
    gw: &Gateway,
    session: &Session,
    ctx: &mut RequestCtx,
    e: Box<Error>,
    client_reused: bool,
) -> Box<Error> {
    let seen = Broke {
        untouched: session.response_written().is_none()
            && !session.as_ref().retry_buffer_truncated(),
        caller_gone: e.esource() == &ErrorSource::Downstream,
        stale_connection: client_reused
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            ),
    };
    let mut e = e;
    match ctx.attempt_broke(seen) {
        Verdict::Retry => e.set_retry(true),
        Verdict::Stop => e.set_retry(false),
        Verdict::Count => return fail_on_error(gw, ctx, e),
    }
    e
}

/// Counts a connection-level failure of the current attempt; retries when another candidate is left.
fn fail_on_error(gw: &Gateway, ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
    let failure = if is_timeout(&e) {
        Failure::Timeout(describe(&e))
    } else {
        Failure::Connect(describe(&e))
    };
    let more = ctx.fail_attempt(failure, None, gw.metrics());
    e.set_retry(more);
    e
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
pub(super) fn describe(e: &Error) -> String {
    let cause = e.root_cause().to_string();
    let kind = e.etype().as_str();
    if cause.is_empty() || cause == kind {
        kind.to_owned()
    } else {
        format!("{kind}: {cause}")
    }
}

pub(super) fn internal(message: &str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, message.to_owned())
}
