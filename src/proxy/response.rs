//! The response: a failed status moves on to the next attempt, an accepted answer goes through the tap.

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};

use super::{stored, Gateway, RequestCtx};
use crate::dialect::relay::{AnswerHead, Relay};
use crate::escape;
use crate::failover::attempt::pause;
use crate::failover::Failure;
use crate::health::parse_retry_after;
use crate::tap::decode::Encoding;
use crate::tap::{ResponseTap, TapOptions};

/// As text, not a `HeaderName`: Pingora copies a typed name's text to keep its case, a static one it does not.
const X_GPT_API_BACKEND: &str = "x-gpt-api-backend";

/// The backend's answer head: a status in the client's `retry_on` fails the attempt (even the last
/// candidate's becomes the gateway's 502 listing every attempt); any other is passed on through a tap.
pub(super) fn head(gw: &Gateway, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
    let status = resp.status.as_u16();
    let Some(client) = ctx.client().cloned() else {
        return Ok(());
    };
    if client.retry_on.contains(&status) {
        let asked = || {
            let value = resp.headers.get(header::RETRY_AFTER)?;
            parse_retry_after(value.as_bytes())
        };
        let more = ctx.fail_attempt(Failure::Status(status), pause(status, asked), gw.metrics());
        let mut e = Error::explain(ErrorType::HTTPStatus(status), "backend failed");
        e.set_retry(more);
        return Err(e);
    }
    ctx.attempt_answered(status, gw.metrics());
    let Some(rt) = ctx.runtime().cloned() else {
        return Ok(());
    };
    let sse = resp
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let usage = &rt.config.usage;
    // The tap reads the answer in the backend's dialect; a relay then translates it for the caller.
    let kind = ctx.upstream_kind();
    let relay = Relay::for_answer(AnswerHead {
        caller: ctx.kind(),
        upstream: kind,
        status,
        sse,
        include_usage: ctx.info().is_some_and(|i| i.include_usage),
        // Only a translation stamps the time (the clock is read per request otherwise for nothing).
        created: match ctx.kind() == kind {
            true => 0,
            false => chrono::Utc::now().timestamp(),
        },
    });
    let opts = TapOptions {
        sse,
        kind,
        prefix: (200..300)
            .contains(&status)
            .then(|| client.special_prefix.clone())
            .flatten(),
        // A translated stream needs the backend's usage chunk: it ends the caller's last event.
        hide_usage_chunk: relay.is_none()
            && ctx.info().is_some_and(|i| i.stream && !i.include_usage)
            && kind.streams_usage_option(),
        keep_body: (usage.enabled && usage.record_bodies).then_some(usage.max_body_bytes),
    };
    let translated = relay.as_ref().is_some_and(Relay::rewrites);
    let rewrites = opts.prefix.is_some() || (sse && opts.hide_usage_chunk) || translated;
    let (tap, decoded) = tap_for(opts, resp);
    if rewrites || decoded || tap.buffers_whole_body() {
        // The body changes length: let Pingora send it chunked.
        resp.remove_header(&header::CONTENT_LENGTH);
    }
    let caller_sse = match &relay {
        Some(relay) if relay.rewrites() => {
            let content_type = match relay.is_stream() {
                true => "text/event-stream",
                false => "application/json",
            };
            resp.insert_header(header::CONTENT_TYPE, content_type)?;
            relay.is_stream()
        }
        _ => sse,
    };
    ctx.answer_with(tap, relay, caller_sse, (200..300).contains(&status));
    if let Some(theirs) = resp.remove_header(crate::request_id::HEADER) {
        resp.insert_header(crate::request_id::UPSTREAM_HEADER, theirs)?;
    }
    for (name, value) in ctx.ratelimit_headers() {
        resp.insert_header(*name, value.as_str())?;
    }
    if rt.config.server.expose_backend_header {
        resp.insert_header(X_GPT_API_BACKEND, client.name.as_str())?;
    }
    Ok(())
}

/// A piece of the answer's body through the tap; a body that cannot be decoded ends the answer.
/// A Responses API answer's id is remembered as soon as it is seen.
pub(super) fn body(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    body: &mut Option<Bytes>,
    end_of_stream: bool,
) -> Result<()> {
    ctx.pass_body(body, end_of_stream).map_err(|why| {
        let e = Error::explain(ErrorType::ReadError, format!("backend body: {why}"));
        e.into_up()
    })?;
    if ctx.awaits_response_id() {
        stored::remember(gw, ctx);
    }
    Ok(())
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
                target: crate::logging::ACCESS_TARGET,
                "backend answered with Content-Encoding {}: passed on undecoded, its usage unread",
                escape::field(&String::from_utf8_lossy(value.as_bytes()))
            );
            (tap, false)
        }
    }
}
