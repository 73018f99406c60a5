//! Finish and record: the caller's answer when proxying failed, then the access line, the token window,
//! the metrics and the usage record of every request.

use std::time::Instant;

use pingora::proxy::{FailToProxy, Session};
use pingora::{Error, ErrorSource};

use super::attempt::describe;
use super::caller::{caller_ip, socket_ip};
use super::{admit, respond, Gateway, RequestCtx};
use crate::dialect::{anthropic, responses};
use crate::endpoints::ApiKind;
use crate::error::GatewayError;
use crate::escape;
use crate::logging::ACCESS_TARGET as LOG;
use crate::tap::ResponseTap;

/// What the caller gets when proxying failed: nothing more for an answer already delivered, an error event
/// to end a stream under way, or the gateway's error listing every attempt.
/// A count_tokens request every anthropic backend failed is counted by the gateway instead.
pub(super) async fn failed(
    gw: &Gateway,
    session: &mut Session,
    e: &Error,
    ctx: &mut RequestCtx,
) -> FailToProxy {
    let caller_gone = e.esource() == &ErrorSource::Downstream;
    let code = match session.response_written().map(|r| r.status.as_u16()) {
        Some(status) => {
            cut(session, e, ctx, caller_gone).await;
            status
        }
        None if caller_gone => {
            ctx.set_error("caller disconnected".into());
            0
        }
        None if ctx.kind() == ApiKind::CountTokens => count_locally(gw, session, e, ctx).await,
        None => {
            let (err, detail) = final_error(ctx, e);
            log::warn!(target: LOG, "{}", escape::text(&detail));
            let headers = ctx.ratelimit_headers();
            if let Err(write) = respond::error_with(session, &err, headers).await {
                log::debug!(target: LOG, "could not send the error response: {write}");
            }
            ctx.set_error(detail);
            err.status()
        }
    };
    FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}

/// The gateway's own count after every anthropic backend failed; the status the caller got.
async fn count_locally(
    gw: &Gateway,
    session: &mut Session,
    e: &Error,
    ctx: &mut RequestCtx,
) -> u16 {
    let (_, detail) = final_error(ctx, e);
    log::warn!(target: LOG, "{}; counted by the gateway", escape::text(&detail));
    let Some(rt) = ctx.runtime().cloned() else {
        return 500;
    };
    if let Err(write) = admit::count_tokens(gw, session, ctx, &rt).await {
        log::debug!(target: LOG, "could not send the count: {write}");
    }
    session.response_written().map_or(0, |r| r.status.as_u16())
}

/// An answer whose head reached the caller ended early: unless the caller has all of it, say why, and end a
/// stream the backend broke with an error event the caller's SDK can surface.
async fn cut(session: &mut Session, e: &Error, ctx: &mut RequestCtx, caller_gone: bool) {
    if ctx.answer_delivered(session.body_bytes_sent()) {
        // The caller has the whole answer: what failed after its end is no error.
        return;
    }
    let why = if caller_gone {
        "caller disconnected".to_owned()
    } else {
        format!("backend failed mid-response: {}", describe(e))
    };
    log::warn!(
        target: LOG,
        "model `{}`: {}",
        escape::field(ctx.model()),
        escape::text(&why)
    );
    if !caller_gone {
        ctx.answer_cut_short();
        if ctx.is_stream_answer() {
            let event = match ctx.kind() {
                kind if kind.speaks_anthropic() => anthropic::error::event(502, &why),
                ApiKind::Responses => responses::error_event(&why, "upstream_error"),
                _ => ResponseTap::error_event(&why, "upstream_error"),
            };
            if let Err(write) = session.write_response_body(Some(event), true).await {
                log::debug!(target: LOG, "could not send the error event: {write}");
            }
        }
    }
    ctx.set_error(why);
}

/// The error a caller gets when no attempt succeeded, and the same with every attempt's details (host
/// names, resolver and TLS messages) for the log and the record.
fn final_error(ctx: &RequestCtx, e: &Error) -> (GatewayError, String) {
    if let Some(refusal) = ctx.refusal() {
        // The request could not be sent on (it does not translate for the next backend): the caller's fault.
        return (refusal.clone(), refusal.to_string());
    }
    let model = ctx.model().to_owned();
    let Some(a) = ctx
        .attempt()
        .map(|a| a.order())
        .filter(|a| !a.tried.is_empty())
    else {
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

/// Every request's end: its one status, the access line, the key's token window, the metrics, the record.
pub(super) fn log(gw: &Gateway, session: &Session, e: Option<&Error>, ctx: &mut RequestCtx) {
    let written = session.response_written().map(|r| r.status.as_u16());
    let caller_left = e.is_some_and(|e| e.esource() == &ErrorSource::Downstream);
    let status = ctx.final_status(written, caller_left, session.body_bytes_sent());
    ctx.end_answer();
    let tokens = ctx.tokens();
    if ctx.caller().ip.is_none() {
        let trusted = ctx
            .runtime()
            .map_or(&[][..], |rt| rt.config.server.trusted_proxies.as_slice());
        let ip = caller_ip(session, trusted, socket_ip(session).as_deref()).0;
        ctx.set_caller_ip(ip);
    }
    let req = session.req_header();
    let dash = || "-".to_owned();
    // Caller-controlled values are escaped and cut: none can end the line or forge a field.
    log::info!(
        target: LOG,
        "{} {} {} {} model={} backend={} key={} attempts={} ms={} ttfb_ms={} prompt={} completion={}",
        ctx.caller().ip.as_deref().unwrap_or("-"),
        escape::field(req.method.as_str()),
        escape::field(req.uri.path()),
        status,
        escape::field(ctx.model()),
        ctx.client().map_or("-", |c| c.name.as_str()),
        ctx.key().map_or("-", |k| k.name()),
        ctx.attempt().map_or(0, |a| a.count()),
        ctx.started().elapsed().as_millis(),
        ctx.first_token()
            .map_or_else(dash, |d| d.as_millis().to_string()),
        tokens.prompt.map_or_else(dash, |n| n.to_string()),
        tokens.completion.map_or_else(dash, |n| n.to_string()),
    );
    // A count of a prompt's tokens uses none of the key's tokens.
    let used = ctx.kind() != ApiKind::CountTokens;
    if let Some(key) = ctx.key().filter(|_| used) {
        let total = tokens
            .total
            .or_else(|| Some(tokens.prompt? + tokens.completion.unwrap_or(0)));
        if let Some(total) = total.and_then(|t| u64::try_from(t).ok()).filter(|&t| t > 0) {
            gw.limiter().add_tokens(key, total, Instant::now());
        }
    }
    if ctx.unmeter() {
        let backend = ctx.client().map(|c| c.name.as_str());
        let latency = ctx.started().elapsed();
        let first_token = ctx.first_token();
        gw.metrics().request_finished(
            ctx.model_label(),
            backend,
            status,
            latency,
            first_token,
            &if used { tokens } else { Default::default() },
        );
    }
    ctx.send_record(status);
}
