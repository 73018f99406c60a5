//! The caller's address from Pingora's session: the socket peer, or what a trusted proxy forwarded.

use http::header;
use pingora::proxy::Session;

use super::upstream;

const X_REAL_IP: header::HeaderName = header::HeaderName::from_static("x-real-ip");

/// The caller's address as the logs and records show it: the socket peer, or what a trusted proxy
/// forwarded (see [`crate::client_ip`]); also whether the peer is such a proxy.
/// `socket` is the peer already formatted, used as is when no proxy is trusted.
pub(super) fn caller_ip(
    session: &Session,
    trusted: &[ipnet::IpNet],
    socket: Option<&str>,
) -> (Option<String>, bool) {
    if trusted.is_empty() {
        return (socket.map(str::to_owned), false);
    }
    let Some(peer) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
    else {
        return (None, false);
    };
    let headers = &session.req_header().headers;
    let forwarded = headers
        .get_all(upstream::X_FORWARDED_FOR)
        .iter()
        .map(|v| v.as_bytes());
    let real = headers.get(X_REAL_IP).map(|v| v.as_bytes());
    let ip = crate::client_ip::caller_ip(peer, trusted, forwarded, real);
    (
        Some(ip_text(ip)),
        crate::client_ip::is_trusted(peer, trusted),
    )
}

/// The socket peer's address, formatted.
pub(super) fn socket_ip(session: &Session) -> Option<String> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| ip_text(a.ip()))
}

/// An address as text; IPv4 by hand, as `Display` costs about a thousand instructions on every request.
fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::ip_text;

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.2.3.4",
            "::1",
            "fe80::1",
        ] {
            let addr: std::net::IpAddr = ip.parse().expect("address");
            assert_eq!(ip_text(addr), addr.to_string());
        }
    }
}
