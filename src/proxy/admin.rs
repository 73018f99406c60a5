//! The admin page's Pingora service on `server.admin_listen`, and the gateway's live state as it sees it.

// The admin page's Pingora service on `server.admin_listen` (one thread of its own, its queries on that runtime's
// blocking pool, so nothing it does waits in the proxy's runtimes), and the gateway's live state as the page sees it
// ([`crate::admin::Live`]).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Local};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE};
use http::{HeaderValue, Method, Response, StatusCode};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;

use super::Gateway;
use crate::admin::{Admin, BackendState, KeyState, Live, Reply, Request, MAX_BODY};
use crate::config::{Config, MatchKind};

/// The gateway as the admin page sees it.
struct GatewayLive(Arc<Gateway>);

impl Live for GatewayLive {
    fn config(&self) -> Arc<Config> {
        Arc::clone(&self.0.runtime().config)
    }

    fn backends(&self) -> Vec<BackendState> {
        let runtime = self.0.runtime();
        let now = Local::now();
        runtime
            .router
            .states()
            .map(|(client, health, load)| BackendState {
                name: client.name.clone(),
                base_url: client.base_url.to_string(),
                priority: client.priority,
                weight: client.weight,
                match_kind: match client.model_match.kind {
                    MatchKind::Exact => "exact",
                    MatchKind::Keyword => "keyword",
                },
                models: client.model_match.values.clone(),
                failures: health.failures(),
                cooling_until: health
                    .cooling_for()
                    .and_then(|d| chrono::Duration::from_std(d).ok())
                    .map(|d| now + d),
                in_flight: u64::from(load.in_flight()),
            })
            .collect()
    }

    fn keys(&self, now: DateTime<Local>) -> Vec<KeyState> {
        let runtime = self.0.runtime();
        let Some(auth) = &runtime.auth else {
            return Vec::new();
        };
        let limiter = self.0.limiter();
        auth.keys()
            .map(|key| {
                let left = limiter.left(key, Instant::now());
                let (spent, _) = limiter.spent(&key.name, now);
                let budget = key.budget();
                KeyState {
                    name: key.name.clone(),
                    rpm: key.rpm(),
                    tpm: key.tpm(),
                    max_concurrent: key.max_concurrent(),
                    budget_day_usd: budget.and_then(|b| b.day).map(|u| u.as_f64()),
                    budget_month_usd: budget.and_then(|b| b.month).map(|u| u.as_f64()),
                    remaining_requests: left.remaining_requests,
                    remaining_tokens: left.remaining_tokens,
                    spent_day_usd: spent.day.as_f64(),
                    spent_month_usd: spent.month.as_f64(),
                }
            })
            .collect()
    }
}

/// Reads each request (a login form's body at most [`MAX_BODY`]) and hands it to [`Admin::handle`].
pub struct AdminApp(Admin);

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let head = session.req_header();
        let header = |name| head.headers.get(name).map(HeaderValue::as_bytes);
        let mut request = Request {
            method: head.method.clone(),
            path: head.uri.path().to_owned(),
            query: head.uri.query().unwrap_or("").to_owned(),
            authorization: header(AUTHORIZATION).map(<[u8]>::to_vec),
            cookie: header(COOKIE).map(|c| String::from_utf8_lossy(c).into_owned()),
            body: Vec::new(),
        };
        if request.method == Method::POST {
            loop {
                match session.read_request_body().await {
                    Ok(Some(chunk)) if request.body.len() + chunk.len() <= MAX_BODY => {
                        request.body.extend_from_slice(&chunk)
                    }
                    Ok(None) => break,
                    Ok(Some(_)) => {
                        return response(
                            Reply::error(413, "invalid_request_error", "body too large"),
                            false,
                        )
                    }
                    Err(_) => {
                        return response(
                            Reply::error(400, "invalid_request_error", "cannot read the body"),
                            false,
                        )
                    }
                }
            }
        }
        let head_only = request.method == Method::HEAD;
        response(self.0.handle(request).await, head_only)
    }
}

fn response(reply: Reply, head_only: bool) -> Response<Vec<u8>> {
    let mut response = Response::new(Vec::new());
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in reply.security_headers() {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(reply.body.len()));
    for (name, value) in &reply.headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(*name, value);
        }
    }
    if !head_only {
        *response.body_mut() = reply.body;
    }
    response
}

/// The admin service on `addr`, on one thread of its own.
pub fn service(gateway: Arc<Gateway>, addr: &str, loopback: bool) -> Service<HttpServer<AdminApp>> {
    let admin = Admin::new(Arc::new(GatewayLive(gateway)), loopback);
    let mut service = Service::new("admin".to_string(), HttpServer::new_app(AdminApp(admin)));
    service.add_tcp(addr);
    service.threads = Some(1);
    service
}
