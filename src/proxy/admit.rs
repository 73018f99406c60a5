//! Admit and route (`request_filter`): framing, the one normal path, local answers, the key, rate limits,
//! then the body read, the record opened and the candidates found.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::header;
use pingora::proxy::Session;
use pingora::Result;

use super::caller::{caller_ip, socket_ip};
use super::ctx::{chat_as_messages, responses_as_chat, Caller, PendingRecord};
use super::{body, framing, respond, stored, Gateway, RequestCtx, Runtime};
use crate::accounting;
use crate::auth::Auth;
use crate::balance;
use crate::config::{Protocol, UsageSettings};
use crate::dialect::anthropic::{messages_to_chat, strip_unsigned_thinking, ToChat};
use crate::endpoints::{classify, normalize_path, ApiKind, Endpoint};
use crate::error::GatewayError;
use crate::failover::attempt::Attempt;
use crate::failover::Attempts;
use crate::ratelimit::Refusal;
use crate::request;
use crate::routing::Candidate;
use crate::usage::record;

/// Idle time a caller's HTTP/1 connection is kept open between requests.
const CLIENT_KEEPALIVE_SECS: u64 = 75;

/// Admits the request or answers it: `Ok(true)` when it was answered here (health, models, an error).
pub(super) async fn admit(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<bool> {
    gw.metrics().request_started();
    let rt = gw.runtime();
    ctx.start(rt.clone());
    if session.get_keepalive().is_some() {
        // Only where the caller keeps the connection (not for `Connection: close`, nor HTTP/1.0 without
        // `keep-alive`): Pingora's default would keep it forever.
        session.set_keepalive(Some(CLIENT_KEEPALIVE_SECS));
    }
    let endpoint = match check(session, ctx, &rt) {
        Ok(endpoint) => endpoint,
        Err(e) => return reject(session, ctx, e, &[]).await,
    };
    match endpoint {
        Endpoint::Health => {
            let ok = br#"{"status":"ok"}"#.to_vec();
            respond::json_with(session, 200, ok, ctx.ratelimit_headers()).await?;
            return Ok(true);
        }
        Endpoint::Models => {
            answer_models(gw, session, ctx).await?;
            return Ok(true);
        }
        _ => {}
    }
    let routed = match endpoint {
        Endpoint::StoredResponse => stored::route(gw, session, ctx, &rt).await,
        _ => route(gw, session, ctx, &rt).await,
    };
    if let Err(e) = routed {
        return reject(session, ctx, e, &[]).await;
    }
    if let Err((e, headers)) = limit(gw, ctx, &rt).await {
        return reject(session, ctx, e, &headers).await;
    }
    let upstream_counts = ctx
        .attempt()
        .and_then(|a| a.current())
        .is_some_and(|c| c.client.protocol == Protocol::Anthropic);
    if ctx.kind() == ApiKind::CountTokens && !upstream_counts {
        return count_tokens(gw, session, ctx, &rt).await;
    }
    Ok(false)
}

/// Anthropic's `count_tokens` answered by the gateway (the model's first backend is not an anthropic one, or
/// every anthropic one failed): the request translated to chat, its prompt counted with OpenAI's tokenizers
/// (an estimate for other models), `{"input_tokens": N}`.
pub(super) async fn count_tokens(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    rt: &Runtime,
) -> Result<bool> {
    let chat = match messages_to_chat(ctx.body(), &ToChat::default()) {
        Ok(chat) => Bytes::from(chat),
        Err(e) => return reject(session, ctx, e.into(), &[]).await,
    };
    let model = ctx.model().to_owned();
    let n = gw
        .accountant()
        .count_prompt(chat, &model, &rt.config.prices)
        .await;
    let body = serde_json::json!({ "input_tokens": n })
        .to_string()
        .into_bytes();
    respond::json_with(session, 200, body, ctx.ratelimit_headers()).await?;
    Ok(true)
}

/// Admits the routed request under its key's limits (rpm, tpm, concurrency, budget: one check, one round trip
/// to a shared store), or refuses it: 429 (`rate_limit_exceeded`, `concurrency_limit`, `insufficient_quota`)
/// or 503 `limits_unavailable`. A budget's reservation is the request's likely maximum cost, priced by the
/// model its first candidate is sent.
async fn limit(gw: &Gateway, ctx: &mut RequestCtx, rt: &Runtime) -> Result<(), LocalAnswer> {
    let Some(key) = ctx.key().cloned() else {
        return Ok(());
    };
    let amount = || {
        let model = ctx.model();
        let sent = ctx
            .attempt()
            .and_then(|a| a.current())
            .map(|c| c.client.outgoing_model(model, None));
        let price = rt.config.prices.first(sent.into_iter().chain([model]));
        let max_tokens = ctx.info().and_then(|i| i.max_tokens);
        accounting::reservation(price, ctx.body_len(), max_tokens)
    };
    let admitted = gw
        .limiter()
        .admit(&key, ctx.request_id(), amount, chrono::Local::now())
        .await;
    match admitted {
        Ok(admitted) => {
            ctx.set_ratelimit_headers(admitted.headers);
            ctx.hold_limits(admitted.slot, admitted.reservation);
            Ok(())
        }
        Err(Refusal::Rate { message, headers }) => {
            Err((GatewayError::RateLimited(message), headers))
        }
        Err(Refusal::Busy { message }) => Err((GatewayError::ConcurrencyLimit(message), vec![])),
        Err(Refusal::Budget(refusal)) => {
            let seconds = refusal.retry_after.as_secs().max(1).to_string();
            let err = GatewayError::BudgetExceeded(refusal.message);
            Err((err, vec![("retry-after", seconds)]))
        }
        Err(Refusal::Unavailable) => Err((GatewayError::LimitsUnavailable, vec![])),
    }
}

/// A local answer's error and its extra headers.
type LocalAnswer = (GatewayError, Vec<(&'static str, String)>);

/// The head's checks, in order: framing, the normal path, the endpoint, the key (for all but `/health`).
fn check(
    session: &mut Session,
    ctx: &mut RequestCtx,
    rt: &Runtime,
) -> Result<Endpoint, GatewayError> {
    framing::check_request(session.req_header_mut())?;
    normalize_uri(session, rt.auth.as_deref())?;
    let req = session.req_header();
    let endpoint = classify(req.method.as_str(), req.uri.path());
    if endpoint == Endpoint::Health {
        return Ok(endpoint);
    }
    // With keys configured, everything but /health needs one, unknown paths included.
    if let Some(auth) = rt.auth.as_ref() {
        let key = auth
            .authenticate(&req.headers)
            .ok_or(GatewayError::InvalidApiKey)?;
        ctx.admit_key(key);
    }
    let path = || req.uri.path().to_owned();
    match endpoint {
        Endpoint::NotFound => Err(GatewayError::NotFound(path())),
        Endpoint::MethodNotAllowed => Err(GatewayError::MethodNotAllowed {
            method: req.method.as_str().to_owned(),
            path: path(),
        }),
        Endpoint::Health | Endpoint::Models | Endpoint::Route | Endpoint::StoredResponse => {
            Ok(endpoint)
        }
    }
}

/// Answers locally with `err` (and `headers`) and notes it for the record.
pub(super) async fn reject(
    session: &mut Session,
    ctx: &mut RequestCtx,
    err: GatewayError,
    headers: &[(&'static str, String)],
) -> Result<bool> {
    if err.closes_connection() || !session.is_body_done() {
        // Unread body bytes would be taken for the next request: close the connection afterwards.
        session.set_keepalive(None);
    }
    let mut all = ctx.ratelimit_headers().to_vec();
    all.extend_from_slice(headers);
    respond::error_with(session, &err, &all).await?;
    ctx.refuse(&err);
    Ok(true)
}

/// `/v1/models`, after a reload check (the Python gateway's users reload by listing models), limited
/// to the models the caller's key may use.
async fn answer_models(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
    gw.reload(false, "GET /v1/models").await;
    let rt = gw.runtime();
    ctx.use_runtime(rt.clone());
    let caller_auth = session
        .req_header()
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // With auth on, the caller's key is the gateway's, never a backend's.
    let pass_through = caller_auth.as_deref().filter(|_| rt.auth.is_none());
    let body = gw.models_body(&rt, pass_through).await;
    let body = match ctx.key() {
        Some(key) => crate::models::retain(&body, |id| key.allows(id)),
        None => body.to_vec(),
    };
    respond::json_with(session, 200, body, ctx.ratelimit_headers()).await
}

/// Reads the body, opens the request's usage record and finds the clients for its model.
async fn route(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    rt: &Runtime,
) -> Result<(), GatewayError> {
    let received = body::read_full(session, &rt.config.server).await?;
    let (body, encoded) = body::decoded(session, received, rt.config.server.max_body_bytes)?;
    let info = request::inspect(&body)?;
    take_in(gw, session, ctx, rt, (body, encoded), info);
    let model = ctx.model().to_owned();
    let kind = ctx.kind();
    if ctx.key().is_some_and(|k| !k.allows(&model)) {
        return Err(GatewayError::ModelNotAllowed(model));
    }
    let affinity = &rt.config.routing.affinity;
    let headers = &session.req_header().headers;
    let body = ctx.body();
    let (mut candidates, key) = rt.router.candidates(&model, || {
        balance::affinity_key(&affinity.keys, headers, body, &model, affinity.prefix_bytes)
    });
    ctx.set_affinity(key);
    if candidates.is_empty() {
        return Err(GatewayError::ModelNotFound(model));
    }
    let anthropic = candidates
        .iter()
        .find(|c| c.client.protocol == Protocol::Anthropic);
    match (kind, anthropic) {
        // A request an anthropic backend would get translated is refused now (400), not mid-failover.
        (ApiKind::Chat, Some(c)) => {
            chat_as_messages(ctx.body(), &c.client)?;
        }
        // Translated once for every openai backend (a fallback model's too); one an anthropic backend can
        // take as it is goes on untranslated when it does not translate.
        (ApiKind::Messages, _) => {
            match to_chat(ctx.body()) {
                Ok((chat, info)) => ctx.translated_to_chat(chat, info),
                Err(e) if anthropic.is_none() => return Err(e),
                Err(_) => {}
            }
            strip_thinking(ctx);
        }
        (ApiKind::CountTokens, Some(_)) => strip_thinking(ctx),
        _ => {}
    }
    if kind == ApiKind::Responses {
        translate_responses(ctx, &mut candidates)?;
        stored::prefer_previous(gw, ctx.body(), &mut candidates);
    }
    let mut max_hops = rt.config.failover.max_fallback_hops;
    let first_counts = candidates
        .first()
        .is_some_and(|c| c.client.protocol == Protocol::Anthropic);
    if kind == ApiKind::CountTokens && first_counts {
        // Only anthropic backends count (the gateway's own count follows the last one): no fallback model.
        candidates.retain(|c| c.client.protocol == Protocol::Anthropic);
        max_hops = 0;
    }
    let order = Attempts::new(&model, candidates, max_hops, ctx.key().cloned());
    if order.is_empty() {
        return Err(GatewayError::UpstreamModelNotAllowed {
            model,
            skipped: order.skipped_summary(),
        });
    }
    ctx.route(Attempt::new(order));
    Ok(())
}

/// The request as read (`body`, decoded, and the bytes received when they were compressed; what it says):
/// its caller, its kind from the path, its usage record opened and its accounts.
pub(super) fn take_in(
    gw: &Gateway,
    session: &Session,
    ctx: &mut RequestCtx,
    rt: &Runtime,
    (body, encoded): (Bytes, Option<Bytes>),
    info: request::RequestInfo,
) {
    // Formatted once: the record, the forwarded-for header of every attempt and the log use it.
    let socket = socket_ip(session);
    let (ip, peer_trusted) = caller_ip(
        session,
        &rt.config.server.trusted_proxies,
        socket.as_deref(),
    );
    let path = session.req_header().uri.path();
    let kind = ApiKind::from_path(path);
    if rt.config.usage.enabled {
        let record_type = kind.record_type(path);
        let pending = pending_record(
            gw,
            session,
            &rt.config.usage,
            &body,
            record_type,
            ip.clone(),
        );
        ctx.open_record(pending);
    }
    ctx.open_accounts(Arc::clone(gw.accountant()));
    let caller = Caller {
        socket_ip: socket,
        ip,
        peer_trusted,
    };
    ctx.admit_request(caller, kind, (body, encoded), info);
}

/// A Responses request is translated once when a candidate client translates it. One that does not translate
/// (`previous_response_id`) goes only to the clients that take it as it is, and is refused (400) when none
/// does; a fallback's translating client refuses it then (see `RequestCtx::next_attempt`).
fn translate_responses(
    ctx: &mut RequestCtx,
    candidates: &mut Vec<Candidate>,
) -> Result<(), GatewayError> {
    if !candidates.iter().any(|c| c.client.translates_responses()) {
        return Ok(());
    }
    match responses_as_chat(ctx.body()) {
        Ok((chat, info)) => ctx.translated_to_chat(chat, info),
        Err(e) => {
            candidates.retain(|c| !c.client.translates_responses());
            if candidates.is_empty() {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Anthropic backends get a Messages (or count_tokens) request without the thinking blocks they refuse.
fn strip_thinking(ctx: &mut RequestCtx) {
    if let Some(stripped) = strip_unsigned_thinking(ctx.body()) {
        ctx.set_anthropic_body(Bytes::from(stripped));
    }
}

/// A Messages request body as a chat completions request, and what that says.
fn to_chat(body: &[u8]) -> Result<(Bytes, request::RequestInfo), GatewayError> {
    let chat = Bytes::from(messages_to_chat(body, &ToChat::default())?);
    let info = request::inspect(&chat)?;
    Ok((chat, info))
}

fn pending_record(
    gw: &Gateway,
    session: &Session,
    usage: &UsageSettings,
    body: &[u8],
    kind: String,
    ip: Option<String>,
) -> PendingRecord {
    let headers = &session.req_header().headers;
    PendingRecord {
        queue: gw.usage_queue().clone(),
        time: chrono::Local::now().fixed_offset(),
        ip: ip.unwrap_or_default(),
        kind,
        headers: record::capture_headers(headers),
        request: usage
            .record_bodies
            .then(|| record::window(body, usage.max_body_bytes)),
        max_body: usage.max_body_bytes,
    }
}

/// Puts the request's one normal path in place, and takes gateway keys out of its query, before anything
/// reads them: classification, auth, routing, the record and the backend all see the same request.
fn normalize_uri(session: &mut Session, auth: Option<&Auth>) -> Result<(), GatewayError> {
    let uri = &session.req_header().uri;
    let path = normalize_path(uri.path()).map_err(|_| GatewayError::BadPath)?;
    let query = uri.query();
    let stripped = auth.zip(query).and_then(|(a, q)| a.strip_query_keys(q));
    if matches!(path, Cow::Borrowed(_)) && stripped.is_none() {
        return Ok(());
    }
    let query = stripped.as_deref().or(query).filter(|q| !q.is_empty());
    let path_and_query = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().map_err(|_| GatewayError::BadPath)?);
    let uri = http::Uri::from_parts(parts).map_err(|_| GatewayError::BadPath)?;
    session.req_header_mut().set_uri(uri);
    Ok(())
}
