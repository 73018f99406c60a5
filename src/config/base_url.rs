//! A backend's `base_url`, parsed once into what the proxy needs: peer, TLS, Host header, path prefix.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use url::{Host, Url};

use crate::endpoints::strip_v1;

/// A validated `http`/`https` base URL without fragment or credentials; its query (Azure's `?api-version=...`)
/// is added to every request's (the caller's value wins for a name both have).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `https` (true) or `http` (false).
    pub tls: bool,
    /// Host name or IP literal; IPv6 without brackets so it can be used as a TLS SNI / connect address.
    pub host: String,
    /// Explicit port, or 443 / 80 by scheme.
    pub port: u16,
    /// Path prefix without trailing slash; "" when the URL has none.
    pub path: String,
    /// Set when `host` is an IP literal (no DNS lookup needed, no SNI).
    pub ip: Option<IpAddr>,
    /// Value for the upstream `Host` header: `:port` only when non-default, IPv6 in brackets.
    pub host_header: String,
    /// The URL's own query as written, without `?`; "" when none.
    pub query: String,
}

/// `text` with its user name and password, if any, replaced by `***`: for every message or log line that shows
/// the text of a URL (a parsed [`BaseUrl`] never holds them). Works on text that does not parse as a URL: the
/// userinfo is whatever lies between the start of the authority (after the first `://`, after a leading `//`,
/// else the start of the text) and the last `@` after it. The last `@` of the whole text rather than the first
/// one before a `/`, because a password may hold an unescaped `/`, `?` or `#`, which a URL parser takes for
/// the end of the host; a path with an `@` is masked too far, which costs a message only its readability.
pub fn mask_userinfo(text: &str) -> Cow<'_, str> {
    let start = match text.find("://") {
        Some(at) => at + 3,
        None if text.starts_with("//") => 2,
        None => 0,
    };
    match text[start..].rfind('@') {
        Some(at) => Cow::Owned(format!("{}***{}", &text[..start], &text[start + at..])),
        None => Cow::Borrowed(text),
    }
}

/// Why a `base_url` was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaseUrlError {
    /// The text as [`mask_userinfo`] shows it.
    #[error("invalid URL {0:?}: {1}")]
    Invalid(String, url::ParseError),
    #[error("scheme must be http or https, not {0:?}")]
    Scheme(String),
    #[error("URL must have a host")]
    NoHost,
    #[error("URL must not contain a user name or password (use api_key or headers)")]
    Credentials,
    #[error("URL must not contain a fragment (#...)")]
    Fragment,
}

impl BaseUrl {
    /// Parses `http(s)://host[:port][/path]`; a trailing slash on the path is dropped.
    pub fn parse(text: &str) -> Result<BaseUrl, BaseUrlError> {
        let url = Url::parse(text)
            .map_err(|e| BaseUrlError::Invalid(mask_userinfo(text).into_owned(), e))?;
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(BaseUrlError::Scheme(other.to_string())),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(BaseUrlError::Credentials);
        }
        if url.fragment().is_some() {
            return Err(BaseUrlError::Fragment);
        }
        let (host, ip) = match url.host().ok_or(BaseUrlError::NoHost)? {
            Host::Domain(name) => (name.to_string(), None),
            Host::Ipv4(addr) => (addr.to_string(), Some(IpAddr::V4(addr))),
            Host::Ipv6(addr) => (addr.to_string(), Some(IpAddr::V6(addr))),
        };
        let port = url
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        Ok(BaseUrl {
            tls,
            host_header: host_header(&host, ip, url.port()),
            host,
            port,
            path: url.path().trim_end_matches('/').to_string(),
            ip,
            query: url.query().unwrap_or_default().to_owned(),
        })
    }

    /// The upstream path and query for a request: the caller's leading `/v1` segment is replaced by this
    /// URL's own path, because backends differ in where they mount the OpenAI API (`/v1`, `/`, a deployment path).
    pub fn join(&self, request_path_and_query: &str) -> String {
        let (path, query) = match request_path_and_query.find('?') {
            Some(at) => request_path_and_query.split_at(at),
            None => (request_path_and_query, ""),
        };
        let rest = strip_v1(path);
        // `self.path` is "" or starts with '/', so only a relative request path needs a separator.
        let mut joined = self.path.clone();
        if !rest.is_empty() && !rest.starts_with('/') {
            joined.push('/');
        }
        joined.push_str(rest);
        if joined.is_empty() {
            joined.push('/');
        }
        if self.query.is_empty() {
            joined.push_str(query);
        } else {
            joined.push('?');
            merge_query(
                &self.query,
                query.strip_prefix('?').unwrap_or(query),
                &mut joined,
            );
        }
        joined
    }
}

/// `own` then `caller`, both as written, leaving out the pairs of `own` whose name `caller` has too.
fn merge_query(own: &str, caller: &str, out: &mut String) {
    let name = |pair: &str| -> String {
        let raw = pair.split('=').next().unwrap_or_default();
        url::form_urlencoded::parse(raw.as_bytes())
            .next()
            .map(|(n, _)| n.into_owned())
            .unwrap_or_default()
    };
    let callers: Vec<String> = caller
        .split('&')
        .filter(|p| !p.is_empty())
        .map(name)
        .collect();
    let mut first = true;
    let pairs = own.split('&').filter(|p| !p.is_empty());
    for pair in pairs.filter(|p| !callers.contains(&name(p))) {
        if !first {
            out.push('&');
        }
        out.push_str(pair);
        first = false;
    }
    if !caller.is_empty() {
        if !first {
            out.push('&');
        }
        out.push_str(caller);
    }
}

/// `Url::port` is `None` for the scheme's default port, which is exactly when `Host` must omit it.
fn host_header(host: &str, ip: Option<IpAddr>, explicit_port: Option<u16>) -> String {
    let host = match ip {
        Some(IpAddr::V6(_)) => format!("[{host}]"),
        _ => host.to_string(),
    };
    match explicit_port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.host_header, self.path)?;
        // Values other than Azure's `api-version` may be keys (`?key=...`): shown masked.
        for (i, pair) in self.query.split('&').filter(|p| !p.is_empty()).enumerate() {
            let sep = if i == 0 { '?' } else { '&' };
            match pair.split_once('=') {
                Some(("api-version", _)) => write!(f, "{sep}{pair}")?,
                Some((name, _)) => write!(f, "{sep}{name}=***")?,
                None => write!(f, "{sep}{pair}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn url(text: &str) -> BaseUrl {
        BaseUrl::parse(text).unwrap()
    }

    #[test]
    fn parses_scheme_host_port_and_path() {
        let u = url("https://api.openai.com/v1");
        assert!(u.tls);
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("api.openai.com", 443, "/v1")
        );
        assert_eq!(u.host_header, "api.openai.com");
        assert_eq!(u.ip, None);

        let u = url("http://127.0.0.1:9000");
        assert!(!u.tls);
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 9000, "")
        );
        assert_eq!(u.host_header, "127.0.0.1:9000");
        assert_eq!(u.ip, Some("127.0.0.1".parse().unwrap()));

        let u = url("https://x.openai.azure.com/openai/deployments/gpt4o/");
        assert_eq!(u.path, "/openai/deployments/gpt4o");
        assert_eq!(
            u.to_string(),
            "https://x.openai.azure.com/openai/deployments/gpt4o"
        );
    }

    #[test]
    fn default_port_is_not_in_host_header() {
        assert_eq!(url("https://h:443/v1").host_header, "h");
        assert_eq!(url("http://h:80").host_header, "h");
        assert_eq!(url("http://h:443").host_header, "h:443");
        assert_eq!(url("http://h:443").port, 443);
    }

    #[test]
    fn ipv6_host_has_no_brackets_but_host_header_does() {
        let u = url("http://[::1]:8001/v1");
        assert_eq!(u.host, "::1");
        assert_eq!(u.ip, Some("::1".parse().unwrap()));
        assert_eq!(u.port, 8001);
        assert_eq!(u.host_header, "[::1]:8001");
        assert_eq!(u.to_string(), "http://[::1]:8001/v1");
        assert_eq!(url("https://[2001:db8::1]").host_header, "[2001:db8::1]");
    }

    #[test]
    fn rejects_what_a_base_url_cannot_be() {
        let err = |t: &str| BaseUrl::parse(t).unwrap_err();
        assert!(matches!(
            err("api.openai.com/v1"),
            BaseUrlError::Invalid(..)
        ));
        assert!(matches!(err(""), BaseUrlError::Invalid(..)));
        assert_eq!(err("ftp://h/x"), BaseUrlError::Scheme("ftp".into()));
        assert_eq!(err("unix:/tmp/sock"), BaseUrlError::Scheme("unix".into()));
        assert_eq!(err("https://user:pw@h/v1"), BaseUrlError::Credentials);
        assert_eq!(err("https://h/v1#x"), BaseUrlError::Fragment);
        assert!(matches!(err("http://:80"), BaseUrlError::Invalid(..)));
    }

    #[test]
    fn userinfo_is_masked_in_any_text() {
        let cases = [
            ("https://user:s3cret@h/v1", "https://***@h/v1"),
            (
                "https://user:s3cret@host:99999/v1",
                "https://***@host:99999/v1",
            ),
            ("https://user:s3cret@ho st/v1", "https://***@ho st/v1"),
            ("https://s3cret@h", "https://***@h"),
            ("https://user:pa@ss/w@rd@h/v1", "https://***@h/v1"),
            ("https://user:pa/ss@h", "https://***@h"),
            ("ftp://u:s3cret@h", "ftp://***@h"),
            ("//user:s3cret@h/v1", "//***@h/v1"),
            ("user:s3cret@h/v1", "***@h/v1"),
            ("weird scheme://user:s3cret@", "weird scheme://***@"),
            ("https://api.openai.com/v1", "https://api.openai.com/v1"),
            ("h.com", "h.com"),
            ("", ""),
            ("https://\u{e9}:s3cret\u{e9}@h", "https://***@h"),
        ];
        for (text, masked) in cases {
            assert_eq!(mask_userinfo(text), masked, "{text}");
        }
    }

    #[test]
    fn an_invalid_url_is_named_without_its_password() {
        for text in [
            "https://user:s3cret@host:99999/v1",
            "https://user:s3cret@ho st/v1",
            "https://user:s3cret@/v1",
            "//user:s3cret@h/v1",
            "https://user:s3/cret@h/v1",
        ] {
            let err = BaseUrl::parse(text).unwrap_err();
            assert!(matches!(err, BaseUrlError::Invalid(..)), "{text}: {err:?}");
            for shown in [err.to_string(), format!("{err:?}")] {
                assert!(!shown.contains("s3"), "{text}: {shown}");
                assert!(shown.contains("***@"), "{text}: {shown}");
            }
        }
    }

    #[test]
    fn join_replaces_the_callers_v1_with_the_base_path() {
        let openai = url("https://api.openai.com/v1");
        let deepseek = url("https://api.deepseek.com");
        assert_eq!(
            openai.join("/v1/chat/completions?x=1"),
            "/v1/chat/completions?x=1"
        );
        assert_eq!(deepseek.join("/v1/chat/completions"), "/chat/completions");
        assert_eq!(deepseek.join("/chat/completions"), "/chat/completions");
        assert_eq!(openai.join("/chat/completions"), "/v1/chat/completions");
        assert_eq!(openai.join("/v1"), "/v1");
        assert_eq!(deepseek.join("/v1"), "/");
        assert_eq!(deepseek.join("/v1?x"), "/?x");
        assert_eq!(deepseek.join("/v1beta/x"), "/v1beta/x");
        assert_eq!(deepseek.join(""), "/");
        assert_eq!(deepseek.join("models"), "/models");
        let azure = url("https://x.openai.azure.com/openai/deployments/gpt4o");
        assert_eq!(
            azure.join("/v1/chat/completions?api-version=2024-06-01"),
            "/openai/deployments/gpt4o/chat/completions?api-version=2024-06-01"
        );
    }

    #[test]
    fn the_urls_own_query_joins_the_callers_which_wins_on_a_name() {
        let azure =
            url("https://x.openai.azure.com/openai/deployments/gpt4o?api-version=2024-10-21");
        assert_eq!(azure.query, "api-version=2024-10-21");
        assert_eq!(
            azure.join("/v1/chat/completions"),
            "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            azure.join("/v1/chat/completions?api-version=2025-01-01&x=1"),
            "/openai/deployments/gpt4o/chat/completions?api-version=2025-01-01&x=1"
        );
        assert_eq!(
            azure.join("/v1/chat/completions?x=%20y"),
            "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21&x=%20y"
        );
        assert_eq!(
            azure.join("/v1/chat/completions?"),
            "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"
        );
        let two = url("http://h/v1?a=1&b=2");
        assert_eq!(two.join("/v1/models?b=3"), "/v1/models?a=1&b=3");
        assert_eq!(
            two.join("/v1/models?%62=3"),
            "/v1/models?a=1&%62=3",
            "names compared decoded"
        );
        assert_eq!(
            azure.to_string(),
            "https://x.openai.azure.com/openai/deployments/gpt4o?api-version=2024-10-21"
        );
        let keyed = url("https://g.example/v1beta?key=s3cret&api-version=1");
        assert_eq!(
            keyed.to_string(),
            "https://g.example/v1beta?key=***&api-version=1"
        );
    }
}
