//! Requests about a stored response (`GET`/`DELETE /v1/responses/{id}`, `GET .../input_items`, `POST
//! .../cancel`): routed to the one client that served that response, without failover; else a 404.
//!
//! The client is known from [`crate::routing::responses_ids`], which the answers of `POST /v1/responses`
//! passed through this node fill in (see [`remember`]); other nodes of a cluster do not know it. A new
//! response that continues one (`previous_response_id`) goes first to the client that served that one.

use super::admit::take_in;
use super::{body, Gateway, RequestCtx, Runtime};
use crate::endpoints::{stored_response_id, ApiKind};
use crate::error::GatewayError;
use crate::failover::attempt::Attempt;
use crate::failover::Attempts;
use crate::request::RequestInfo;
use crate::routing::responses_ids::{Origin, MAX_ID_BYTES};
use crate::routing::Candidate;
use std::borrow::Cow;
use std::sync::Arc;

use http::Method;
use pingora::proxy::Session;

const UNKNOWN: &str =
    "this gateway passed on no response with that id (responses are known to the gateway \
    node that served them, and only while it remembers them).";
const TRANSLATED: &str =
    "that response was translated by the gateway from a chat completions backend, \
    which keeps no responses.";
const GONE: &str = "the backend that served it is no longer configured.";

/// Reads the (usually empty) body, opens the record and routes to the client that served the response.
pub(super) async fn route(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    rt: &Runtime,
) -> Result<(), GatewayError> {
    let received = body::read_full(session, &rt.config.server).await?;
    let (body, encoded) = body::decoded(session, received, rt.config.server.max_body_bytes)?;
    let id = stored_response_id(session.req_header().uri.path())
        .unwrap_or_default()
        .to_owned();
    let served = gw.response_ids().lookup(&id);
    let model = served.as_ref().map_or("", |s| &*s.model).to_owned();
    let info = RequestInfo {
        model: model.clone(),
        stream: false,
        include_usage: false,
        tool: false,
        multimodal: false,
        max_tokens: None,
    };
    take_in(gw, session, ctx, rt, (body, encoded), info);
    let not_found = |why| GatewayError::ResponseNotFound {
        id: crate::escape::cut(&id, MAX_ID_BYTES).to_owned(),
        why,
    };
    let Some(served) = served else {
        return Err(not_found(UNKNOWN));
    };
    // A key that may not use the response's model learns nothing of it, not even that it exists.
    if ctx.key().is_some_and(|k| !k.allows(&model)) {
        return Err(not_found(UNKNOWN));
    }
    let name = match served.origin {
        Origin::Translated => return Err(not_found(TRANSLATED)),
        Origin::Client(name) => name,
    };
    let candidate = rt
        .router
        .candidate_named(&name)
        .ok_or_else(|| not_found(GONE))?;
    // The one client, no fallback hop: another backend does not have the response.
    let order = Attempts::new(&model, vec![candidate], 0, ctx.key().cloned());
    if order.is_empty() {
        return Err(not_found(UNKNOWN));
    }
    ctx.route(Attempt::new(order));
    Ok(())
}

/// Notes the response id of a `POST /v1/responses` answer once it is seen: the client that served it (or
/// the gateway, translating), for later requests about it.
pub(super) fn remember(gw: &Gateway, ctx: &mut RequestCtx) {
    if let Some((id, origin, model)) = ctx.new_response_id() {
        gw.response_ids().remember(&id, origin, &model);
    }
}

/// A response its backend deleted (`DELETE` answered 2xx) is forgotten, at the backend's answer head: before
/// the caller has the answer, so a request the caller sends right after it finds the response gone.
pub(super) fn forget_deleted(gw: &Gateway, session: &Session, ctx: &RequestCtx, status: u16) {
    let req = session.req_header();
    if ctx.kind() != ApiKind::StoredResponse || req.method != Method::DELETE {
        return;
    }
    if let (true, Some(id)) = (
        (200..300).contains(&status),
        stored_response_id(req.uri.path()),
    ) {
        gw.response_ids().forget(id);
    }
}

/// A Responses request that continues a response (`previous_response_id`) this node passed through: the
/// client that served it goes first among `candidates` (its backend alone has that conversation's state).
pub(super) fn prefer_previous(gw: &Gateway, body: &[u8], candidates: &mut Vec<Candidate>) {
    let Some(name) = previous_client(gw, body) else {
        return;
    };
    if let Some(i) = candidates.iter().position(|c| *c.client.name == *name) {
        let first = candidates.remove(i);
        candidates.insert(0, first);
    }
}

/// The client that served the response a Responses request body continues, when this node knows it.
fn previous_client(gw: &Gateway, body: &[u8]) -> Option<Arc<str>> {
    #[derive(serde::Deserialize)]
    struct Continues<'a> {
        #[serde(borrow)]
        previous_response_id: Option<Cow<'a, str>>,
    }
    // Most requests do not continue one: they are not parsed for it.
    memchr::memmem::find(body, b"\"previous_response_id\"")?;
    let continues: Continues<'_> = serde_json::from_slice(body).ok()?;
    let served = gw.response_ids().lookup(&continues.previous_response_id?)?;
    match served.origin {
        Origin::Client(name) => Some(name),
        Origin::Translated => None,
    }
}
