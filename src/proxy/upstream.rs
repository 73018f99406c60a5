//! The upstream side of a request: the peer to connect to and the rewritten request head.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, OrErr, Result};

use crate::config::Client;

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// Headers that describe one connection, never forwarded (RFC 9110 section 7.6.1), plus body framing we redo.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

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
/// `strip_caller_keys`: the caller's key is a gateway key (auth on) and must never reach a backend.
pub fn rewrite(
    req: &mut RequestHeader,
    client: &Client,
    body_len: usize,
    caller_ip: Option<&str>,
    strip_caller_keys: bool,
) -> Result<()> {
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = client
        .base_url
        .join(path)
        .parse::<http::Uri>()
        .or_err(ErrorType::InternalError, "building upstream URI")?;
    req.set_uri(uri);
    strip_hop_by_hop(req);
    if strip_caller_keys {
        for name in ["authorization", "api-key", "x-api-key"] {
            req.remove_header(name);
        }
    }
    req.remove_header(&header::EXPECT);
    req.insert_header(header::HOST, client.base_url.host_header.as_str())?;
    req.insert_header(header::CONTENT_LENGTH, body_len.to_string())?;
    if !client.api_key.is_empty() {
        let value = HeaderValue::from_str(&format!("Bearer {}", client.api_key.expose())).or_err(
            ErrorType::InternalError,
            "api_key is not a valid header value",
        )?;
        req.insert_header(header::AUTHORIZATION, value)?;
    }
    for (name, value) in &client.headers {
        let value = HeaderValue::from_str(value.expose()).or_err(
            ErrorType::InternalError,
            "configured header value is invalid",
        )?;
        req.insert_header(name.clone(), value)?;
    }
    if let Some(ip) = caller_ip {
        let xff = match req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
            _ => ip.to_owned(),
        };
        req.insert_header("x-forwarded-for", xff)?;
    }
    Ok(())
}

/// Removes the fixed hop-by-hop headers and any that the caller's `Connection` header names.
fn strip_hop_by_hop(req: &mut RequestHeader) {
    let named: Vec<HeaderName> = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        req.remove_header(&name);
    }
    for name in HOP_BY_HOP {
        req.remove_header(name);
    }
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
        rewrite(&mut req, &c, 42, Some("127.0.0.1"), false).unwrap();
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
    fn empty_key_passes_callers_authorization() {
        let c = client("");
        let mut req = request();
        rewrite(&mut req, &c, 0, None, false).unwrap();
        assert_eq!(req.headers.get("authorization").unwrap(), "Bearer caller");
    }

    #[test]
    fn gateway_keys_never_reach_the_backend() {
        let c = client(", api_key: sk-backend");
        let mut req = request();
        req.insert_header("api-key", "gw-key").unwrap();
        req.insert_header("x-api-key", "gw-key").unwrap();
        rewrite(&mut req, &c, 0, None, true).unwrap();
        assert_eq!(
            req.headers.get("authorization").unwrap(),
            "Bearer sk-backend"
        );
        assert!(req.headers.get("api-key").is_none() && req.headers.get("x-api-key").is_none());
    }
}
