//! The caller's address: the socket peer, or behind a trusted proxy the right-most untrusted `X-Forwarded-For` entry.

use std::net::IpAddr;

use ipnet::IpNet;

/// Whether `ip` is one of the operator's proxies (`server.trusted_proxies`).
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d; the operator wrote a.b.c.d.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    trusted.iter().any(|net| net.contains(&ip))
}

/// The address that the logs, the records and the limits attribute a request to. A caller's headers are
/// believed only when the socket peer is a trusted proxy; then `X-Forwarded-For` is read from the right
/// (each proxy appends the address it saw), skipping trusted addresses, and the first untrusted one is the
/// caller. An entry that does not parse as an IP address ends the walk: the last address proven so far
/// (a trusted proxy) is used. Without `X-Forwarded-For`, a parseable `X-Real-IP` from a trusted peer counts.
pub fn caller_ip<'a>(
    peer: IpAddr,
    trusted: &[IpNet],
    forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
    real_ip: Option<&[u8]>,
) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut caller = peer;
    let mut any = false;
    for value in forwarded_for.rev() {
        for entry in value.rsplit(|b| *b == b',') {
            any = true;
            match parse_ip(entry) {
                Some(ip) => {
                    caller = ip;
                    if !is_trusted(ip, trusted) {
                        return ip;
                    }
                }
                None => return caller,
            }
        }
    }
    match (any, real_ip.and_then(parse_ip)) {
        (false, Some(ip)) => ip,
        _ => caller,
    }
}

fn parse_ip(text: &[u8]) -> Option<IpAddr> {
    std::str::from_utf8(text.trim_ascii()).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn caller(peer: &str, trusted: &[&str], xff: &[&str], real: Option<&str>) -> IpAddr {
        let trusted = nets(trusted);
        caller_ip(
            ip(peer),
            &trusted,
            xff.iter().map(|v| v.as_bytes()),
            real.map(str::as_bytes),
        )
    }

    #[test]
    fn an_untrusted_peer_is_the_caller_whatever_it_claims() {
        let forged = ["6.6.6.6 key=admin prompt=999999, 10.0.0.9"];
        assert_eq!(caller("10.0.0.9", &[], &forged, None), ip("10.0.0.9"));
        assert_eq!(
            caller("10.0.0.9", &["10.1.0.0/16"], &forged, Some("6.6.6.6")),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_entry_counts() {
        let trusted = ["10.0.0.0/8", "192.168.1.1/32"];
        let xff = ["6.6.6.6, 203.0.113.7", "10.0.0.2"];
        assert_eq!(
            caller("192.168.1.1", &trusted, &xff, None),
            ip("203.0.113.7")
        );
        assert_eq!(
            caller("10.0.0.1", &trusted, &["garbage, 10.0.0.3"], None),
            ip("10.0.0.3"),
            "an entry that is no IP ends the walk at the last trusted hop"
        );
        assert_eq!(
            caller("10.0.0.1", &trusted, &["1.2.3.4 key=admin"], None),
            ip("10.0.0.1")
        );
        assert_eq!(
            caller("10.0.0.1", &trusted, &[], Some(" 2001:db8::1 ")),
            ip("2001:db8::1")
        );
        assert_eq!(
            caller("10.0.0.1", &trusted, &[], Some("nope")),
            ip("10.0.0.1")
        );
        assert_eq!(
            caller("::ffff:10.0.0.1", &trusted, &["198.51.100.1"], None),
            ip("198.51.100.1"),
            "IPv4-mapped peers match IPv4 ranges"
        );
    }
}
