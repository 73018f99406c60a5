//! The upstream side of a request: the peer to connect to and the rewritten request head.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, OrErr, Result};

use crate::config::{Client, Protocol};
use crate::endpoints::ApiKind;

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// Whether a caller's header is never forwarded: it describes one connection (RFC 9110 section 7.6.1) or
/// the body's framing, which the gateway redoes.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "expect"
    )
}

/// The caller's key headers, removed when the caller's key must not reach a backend.
fn caller_key(name: &HeaderName) -> bool {
    matches!(name.as_str(), "authorization" | "api-key" | "x-api-key")
}

/// A peer for `client` at an already resolved address, with its timeouts and TLS settings.
pub fn peer(client: &Client, addr: SocketAddr) -> HttpPeer {
    let url = &client.base_url;
    let mut peer = HttpPeer::new(addr, url.tls, url.host.clone());
    let o = &mut peer.options;
    o.connection_timeout = Some(client.connect_timeout);
    o.total_connection_timeout = Some(client.connect_timeout);
    o.read_timeout = Some(client.read_timeout);
    o.write_timeout = Some(client.read_timeout);
    o.idle_timeout = Some(POOL_IDLE);
    peer
}

/// Rewrites the caller's request head for `client`: path, Host, key, extra headers, framing, forwarding.
/// `keep_forwarded`: the caller is a trusted proxy, whose `X-Forwarded-For` is appended to (else replaced).
/// `strip_caller_keys`: the caller's key is a gateway key (auth on) and must never reach a backend.
/// Per request; it only touches what must change (a header lookup or insert costs a hash or two).
pub fn rewrite(
    req: &mut RequestHeader,
    client: &Client,
    body_len: usize,
    caller_ip: Option<&str>,
    keep_forwarded: bool,
    strip_caller_keys: bool,
) -> Result<()> {
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    if !joins_to_itself(&client.base_url, path) {
        let joined = client.base_url.join(path);
        if joined != path {
            let uri = joined
                .parse::<http::Uri>()
                .or_err(ErrorType::InternalError, "building upstream URI")?;
            req.set_uri(uri);
        }
    }
    let unwanted = unwanted_headers(req, strip_caller_keys);
    for name in &unwanted {
        req.remove_header(name);
    }
    for (name, value) in &client.fixed_headers {
        req.insert_header(name.clone(), value.clone())?;
    }
    let length = HeaderValue::from(body_len);
    if req.headers.get(header::CONTENT_LENGTH) != Some(&length) {
        req.insert_header(header::CONTENT_LENGTH, length)?;
    }
    if let Some(ip) = caller_ip {
        // Only a trusted proxy's list is passed on (all its header lines, in order); anyone else's could be
        // forged.
        let mut xff = String::new();
        if keep_forwarded {
            for prev in req.headers.get_all(X_FORWARDED_FOR) {
                if let Some(prev) = prev.to_str().ok().filter(|p| !p.trim().is_empty()) {
                    xff.push_str(prev);
                    xff.push_str(", ");
                }
            }
        }
        xff.push_str(ip);
        req.insert_header(X_FORWARDED_FOR_TEXT, xff)?;
    }
    Ok(())
}

/// Whether [`crate::config::BaseUrl::join`] would give `path` back unchanged, told without building it: a base
/// URL ending in `/v1` (no query of its own) and a caller's path under `/v1/` (OpenAI's own layout, the usual one).
fn joins_to_itself(base: &crate::config::BaseUrl, path: &str) -> bool {
    base.path == "/v1" && base.query.is_empty() && path.starts_with("/v1/")
}

/// Points a translated request at the path of the API it now calls (the caller's query kept), and drops the
/// headers of the caller's dialect, which mean nothing to that API.
pub fn retarget(req: &mut RequestHeader, kind: ApiKind) -> Result<()> {
    let path = match kind {
        ApiKind::Chat => "/v1/chat/completions",
        ApiKind::Messages => "/v1/messages",
        _ => return Ok(()),
    };
    let target = match req.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let uri = target
        .parse::<http::Uri>()
        .or_err(ErrorType::InternalError, "building upstream URI")?;
    req.set_uri(uri);
    if kind != ApiKind::Chat {
        return Ok(());
    }
    let dialect: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|n| n.as_str().starts_with("anthropic-"))
        .cloned()
        .collect();
    for name in &dialect {
        req.remove_header(name);
    }
    Ok(())
}

/// The `anthropic-version` an anthropic backend gets when the caller sent none.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// An anthropic backend's `anthropic-version`: the caller's, else the client's, else 2023-06-01
/// (`anthropic-beta` passes through as the caller sent it).
pub fn anthropic_version(req: &mut RequestHeader, client: &Client) -> Result<()> {
    if client.protocol != Protocol::Anthropic || req.headers.contains_key(ANTHROPIC_VERSION) {
        return Ok(());
    }
    let version = client
        .anthropic_version
        .as_deref()
        .unwrap_or(DEFAULT_ANTHROPIC_VERSION);
    req.insert_header(ANTHROPIC_VERSION, version)?;
    Ok(())
}

const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The same name as text, for inserts: Pingora copies a typed name's text to keep its case, a static one it
/// does not.
const X_FORWARDED_FOR_TEXT: &str = "x-forwarded-for";

/// The caller's headers that must go, found in one pass over the few there are: hop-by-hop ones, those
/// its `Connection` header names, and its keys when they must not reach a backend.
fn unwanted_headers(req: &RequestHeader, strip_caller_keys: bool) -> Vec<HeaderName> {
    let mut unwanted: Vec<HeaderName> = Vec::new();
    for name in req.headers.keys() {
        let drop = hop_by_hop(name) || (strip_caller_keys && caller_key(name));
        if drop && !unwanted.contains(name) {
            unwanted.push(name.clone());
        }
    }
    if !unwanted.contains(&header::CONNECTION) {
        return unwanted;
    }
    let named = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok());
    for name in named {
        if req.headers.contains_key(&name) && !unwanted.contains(&name) {
            unwanted.push(name);
        }
    }
    unwanted
}

/// A connect-phase error (resolution failed) that Pingora reports like a refused connection.
pub fn resolve_error(reason: String) -> Box<Error> {
    Error::explain(ErrorType::ConnectError, reason)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;

    fn client(extra: &str) -> std::sync::Arc<Client> {
        let cfg = Config::parse(
            &format!(
                "openai_clients:
  - {{name: c, base_url: 'https://api.example.com:8443/v1', model_match: {{type: exact, value: m}}{extra}}}"
            ),
            &|_| None,
        )
        .unwrap();
        cfg.clients[0].clone()
    }

    fn request() -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions?a=1", None).unwrap();
        for (k, v) in [
            ("authorization", "Bearer caller"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("x-custom", "kept"),
            ("x-forwarded-for", "10.0.0.1"),
            ("expect", "100-continue"),
        ] {
            req.insert_header(k, v).unwrap();
        }
        req
    }

    #[test]
    fn rewrites_path_host_key_and_framing() {
        let c = client(", api_key: sk-1, headers: {api-key: az}");
        let mut req = request();
        rewrite(&mut req, &c, 42, Some("127.0.0.1"), true, false).unwrap();
        let h = |n: &str| req.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(req.uri.to_string(), "/v1/chat/completions?a=1");
        assert_eq!(h("host").as_deref(), Some("api.example.com:8443"));
        assert_eq!(h("authorization").as_deref(), Some("Bearer sk-1"));
        assert_eq!(h("api-key").as_deref(), Some("az"));
        assert_eq!(h("content-length").as_deref(), Some("42"));
        assert_eq!(h("x-forwarded-for").as_deref(), Some("10.0.0.1, 127.0.0.1"));
        assert_eq!(h("x-custom").as_deref(), Some("kept"));
        for gone in ["connection", "x-hop", "transfer-encoding", "expect"] {
            assert_eq!(h(gone), None, "{gone} should be removed");
        }
    }

    #[test]
    fn the_join_shortcut_agrees_with_the_join() {
        let c = client("");
        for path in [
            "/v1/chat/completions",
            "/v1/chat/completions?a=1",
            "/v1/",
            "/v1",
            "/v1x/a",
            "/models",
            "/",
        ] {
            let same = c.base_url.join(path) == path;
            assert!(!joins_to_itself(&c.base_url, path) || same, "{path}");
        }
        assert!(joins_to_itself(&c.base_url, "/v1/chat/completions?a=1"));
    }

    #[test]
    fn forwarded_for_is_appended_to_only_for_a_trusted_proxy() {
        let c = client("");
        let mut req = request();
        req.append_header("x-forwarded-for", "10.0.0.2").unwrap();
        rewrite(&mut req, &c, 0, Some("127.0.0.1"), true, false).unwrap();
        assert_eq!(
            req.headers
                .get_all("x-forwarded-for")
                .iter()
                .collect::<Vec<_>>(),
            ["10.0.0.1, 10.0.0.2, 127.0.0.1"]
        );
        let mut req = request();
        rewrite(&mut req, &c, 0, Some("127.0.0.1"), false, false).unwrap();
        assert_eq!(req.headers.get("x-forwarded-for").unwrap(), "127.0.0.1");
    }

    #[test]
    fn empty_key_passes_callers_authorization() {
        let c = client("");
        let mut req = request();
        rewrite(&mut req, &c, 0, None, false, false).unwrap();
        assert_eq!(req.headers.get("authorization").unwrap(), "Bearer caller");
    }

    #[test]
    fn gateway_keys_never_reach_the_backend() {
        let c = client(", api_key: sk-backend");
        let mut req = request();
        req.insert_header("api-key", "gw-key").unwrap();
        req.insert_header("x-api-key", "gw-key").unwrap();
        rewrite(&mut req, &c, 0, None, false, true).unwrap();
        assert_eq!(
            req.headers.get("authorization").unwrap(),
            "Bearer sk-backend"
        );
        assert!(req.headers.get("api-key").is_none() && req.headers.get("x-api-key").is_none());
    }
}
