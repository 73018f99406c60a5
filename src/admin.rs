//! The admin page on `server.admin_listen`: usage, cost, latency and backend health, and its JSON API.

// The admin page on `server.admin_listen`: usage, cost, latency and backend health at a glance, and the JSON API it
// is built on. Plain Rust: [`Admin::handle`] turns a [`Request`] into a [`Reply`]; the Pingora service around it is
// `proxy::admin`.
//
// Layout: `files` (the monthly files, read-only), `overview` (a range from the hourly rollup), `requests` (the
// records, listed and whole), `live` (what the running gateway knows: health, limits), `session` (the admin key,
// logins), `html` (the escaping writer, numbers for people), `chart` (SVG bars), `pages` (the HTML pages), `api`
// (parameters and JSON answers). Queries run on the blocking pool, [`QUERY_SLOTS`] at once, so that the service's own
// thread only routes and renders.

mod api;
mod chart;
mod files;
mod html;
mod live;
mod overview;
mod pages;
mod requests;
mod session;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Local;
use http::Method;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

pub use files::QueryError;
pub use live::{BackendState, KeyState, Live};

use files::Files;
use session::Sessions;

/// Queries that may run at once; more wait their turn.
pub const QUERY_SLOTS: usize = 2;
/// How long a request waits for a query slot before it is answered 503.
const SLOT_WAIT: Duration = Duration::from_secs(30);
/// The most a login form may send.
pub const MAX_BODY: usize = 4096;

/// An HTTP request as the admin page needs it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    /// The query string, without `?`.
    pub query: String,
    pub authorization: Option<Vec<u8>>,
    pub cookie: Option<String>,
    /// The body (a login form), at most [`MAX_BODY`] bytes.
    pub body: Vec<u8>,
}

/// The answer: status, content type, extra headers and body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

const CSP: &str =
    "default-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; \
                   base-uri 'none'";

impl Reply {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn html(status: u16, body: String) -> Reply {
        Reply::new(status, "text/html; charset=utf-8", body)
    }

    pub fn json(status: u16, value: &Value) -> Reply {
        let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
        Reply::new(status, "application/json", text + "\n")
    }

    /// The OpenAI-shaped error body the gateway answers with everywhere.
    pub fn error(status: u16, kind: &str, message: &str) -> Reply {
        let body =
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
        Reply::json(status, &body)
    }

    pub fn redirect(location: &str) -> Reply {
        let mut reply = Reply::new(303, "text/plain; charset=utf-8", "");
        reply.headers.push(("location", location.to_owned()));
        reply
    }

    /// The headers every answer carries: no caching of figures, no framing, no script or style from elsewhere.
    pub fn security_headers(&self) -> [(&'static str, &'static str); 5] {
        [
            ("content-security-policy", CSP),
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-store"),
        ]
    }
}

/// How long a computed overview is served again.
pub const OVERVIEW_TTL: Duration = Duration::from_secs(5);
/// Overviews kept at most (each a few KB).
const MAX_CACHED: usize = 16;

/// An overview computed at `at`.
struct Cached {
    at: Instant,
    key: (crate::report::Range, overview::Step, overview::By),
    value: Arc<overview::Overview>,
}

/// Who is asking, once the gate has looked.
enum Access {
    Allowed,
    /// No key, or a wrong one.
    Refused,
}

/// The admin page's state: the running gateway, the logins, the query slots.
pub struct Admin {
    live: Arc<dyn Live>,
    sessions: Sessions,
    slots: Arc<Semaphore>,
    /// Overviews computed in the last [`OVERVIEW_TTL`], newest last.
    overviews: Mutex<Vec<Cached>>,
    /// The listener takes connections from this machine only (then the page may run without a key).
    loopback: bool,
}

impl Admin {
    pub fn new(live: Arc<dyn Live>, loopback: bool) -> Admin {
        Admin {
            live,
            sessions: Sessions::default(),
            slots: Arc::new(Semaphore::new(QUERY_SLOTS)),
            overviews: Mutex::default(),
            loopback,
        }
    }

    /// Answers one request; never fails (errors are answers).
    pub async fn handle(&self, request: Request) -> Reply {
        let path = request.path.as_str();
        if let Some(asset) = pages::asset(path) {
            return asset;
        }
        let config = self.live.config();
        let key = config.server.admin.as_ref().and_then(|a| a.key.clone());
        if path == "/login" || path == "/logout" {
            return self.login(&request, key.as_ref());
        }
        let api = path.starts_with("/api/");
        if let Access::Refused = self.gate(&request, key.as_ref()) {
            return match api {
                true => Reply::error(401, "authentication_error", "a valid admin key is required"),
                false if request.method == Method::GET => {
                    Reply::redirect(&login_target(path, &request.query))
                }
                false => Reply::error(401, "authentication_error", "log in first"),
            };
        }
        if request.method != Method::GET && request.method != Method::HEAD {
            return Reply::error(405, "invalid_request_error", "only GET is served here");
        }
        let secrets = secrets(&config);
        let reply = match api {
            true => api::route(self, &config, &request).await,
            false => pages::route(self, &config, &request).await,
        };
        scrub(reply, &secrets)
    }

    fn gate(&self, request: &Request, key: Option<&crate::secret::Secret>) -> Access {
        let Some(key) = key else {
            // Without a key only a loopback listener is open (the config insists; a reload could drop it).
            return if self.loopback {
                Access::Allowed
            } else {
                Access::Refused
            };
        };
        if let Some(token) = request.authorization.as_deref().and_then(session::bearer) {
            return match session::key_matches(key, token) {
                true => Access::Allowed,
                false => Access::Refused,
            };
        }
        let token = request
            .cookie
            .as_deref()
            .and_then(|c| session::cookie(c, session::COOKIE));
        match token.is_some_and(|t| self.sessions.check(t, key, Instant::now())) {
            true => Access::Allowed,
            false => Access::Refused,
        }
    }

    /// `GET /login` (the form), `POST /login` (the key: a session and back to where the caller was going),
    /// `POST /logout`.
    fn login(&self, request: &Request, key: Option<&crate::secret::Secret>) -> Reply {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&request.body)
            .into_owned()
            .collect();
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let query: Vec<(String, String)> = url::form_urlencoded::parse(request.query.as_bytes())
            .into_owned()
            .collect();
        let next = query
            .iter()
            .find(|(k, _)| k == "next")
            .map(|(_, v)| v.as_str())
            .or(field("next"))
            .filter(|n| local_path(n))
            .unwrap_or("/")
            .to_owned();
        if request.path == "/logout" {
            if let Some(token) = request
                .cookie
                .as_deref()
                .and_then(|c| session::cookie(c, session::COOKIE))
            {
                self.sessions.end(token);
            }
            let mut reply = Reply::redirect("/login");
            reply.headers.push(("set-cookie", session::clear_cookie()));
            return reply;
        }
        let Some(key) = key else {
            return Reply::redirect(&next);
        };
        match request.method {
            Method::GET | Method::HEAD => Reply::html(200, pages::login(&next, false)),
            Method::POST => {
                let presented = field("key").unwrap_or("");
                if !session::key_matches(key, presented.as_bytes()) {
                    return Reply::html(401, pages::login(&next, true));
                }
                match self.sessions.start(key, Instant::now()) {
                    Some(token) => {
                        let mut reply = Reply::redirect(&next);
                        reply
                            .headers
                            .push(("set-cookie", session::set_cookie(&token)));
                        reply
                    }
                    None => Reply::error(503, "server_error", "no randomness for a session token"),
                }
            }
            _ => Reply::error(405, "invalid_request_error", "GET or POST"),
        }
    }

    /// The overview of `range`, computed at most once per [`OVERVIEW_TTL`] (a page reloaded in a loop costs one
    /// query per period, whoever reloads it).
    async fn overview(
        &self,
        config: &crate::config::Config,
        range: crate::report::Range,
        step: overview::Step,
        by: overview::By,
    ) -> Result<Arc<overview::Overview>, QueryError> {
        let key = (range, step, by);
        let now = Instant::now();
        {
            let mut cached = self
                .overviews
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            cached.retain(|c| now.duration_since(c.at) < OVERVIEW_TTL);
            if let Some(hit) = cached.iter().find(|c| c.key == key) {
                return Ok(Arc::clone(&hit.value));
            }
        }
        let files = Admin::files(config);
        let value = Arc::new(
            self.blocking(move || overview::overview(&files, range, step, by))
                .await?,
        );
        let mut cached = self
            .overviews
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cached.len() >= MAX_CACHED {
            cached.remove(0);
        }
        cached.push(Cached {
            at: now,
            key,
            value: Arc::clone(&value),
        });
        Ok(value)
    }

    /// Runs `query` on the blocking pool once a slot is free.
    async fn blocking<T: Send + 'static>(
        &self,
        query: impl FnOnce() -> Result<T, QueryError> + Send + 'static,
    ) -> Result<T, QueryError> {
        let slots = Arc::clone(&self.slots);
        let permit = tokio::time::timeout(SLOT_WAIT, slots.acquire_owned())
            .await
            .map_err(|_| QueryError::Busy)?
            .map_err(|_| QueryError::Busy)?;
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            query()
        });
        task.await
            .map_err(|e| QueryError::Internal(e.to_string()))?
    }

    fn files(config: &crate::config::Config) -> Files {
        Files {
            dir: config.usage.dir.clone(),
        }
    }

    fn now() -> chrono::DateTime<Local> {
        Local::now()
    }
}

/// `/login?next=<path and query>`, to come back after logging in.
fn login_target(path: &str, query: &str) -> String {
    let next = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    };
    let encoded: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
    format!("/login?next={encoded}")
}

/// A path on this site (not `//host`, not a scheme): where a login may send the browser on.
fn local_path(next: &str) -> bool {
    next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.contains(['\r', '\n'])
}

/// Every credential in the config: backend keys and header values, gateway keys, the admin key.
fn secrets(config: &crate::config::Config) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for client in &config.clients {
        all.push(client.api_key.expose().to_owned());
        all.extend(client.headers.iter().map(|(_, v)| v.expose().to_owned()));
    }
    if let Some(auth) = &config.auth {
        all.extend(auth.keys.iter().map(|k| k.key.expose().to_owned()));
    }
    if let Some(key) = config.server.admin.as_ref().and_then(|a| a.key.as_ref()) {
        all.push(key.expose().to_owned());
    }
    all.retain(|s| s.len() >= MIN_SECRET);
    all.sort();
    all.dedup();
    all
}

/// Credentials shorter than this are not searched for (they would mask ordinary words).
const MIN_SECRET: usize = 6;

/// The answer with every credential masked, as written, HTML-escaped and JSON-escaped: headers are stored
/// masked, but a caller may have pasted a key into a body.
fn scrub(mut reply: Reply, secrets: &[String]) -> Reply {
    if secrets.is_empty() {
        return reply;
    }
    let Ok(mut text) = String::from_utf8(std::mem::take(&mut reply.body)) else {
        return reply;
    };
    for secret in secrets {
        let json = serde_json::to_string(secret).unwrap_or_default();
        let json = json.trim_matches('"').to_owned();
        for form in [secret.clone(), html::escape(secret), json] {
            if text.contains(&form) {
                text = text.replace(&form, "***");
            }
        }
    }
    reply.body = text.into_bytes();
    reply
}

#[cfg(test)]
mod tests;
