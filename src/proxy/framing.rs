//! HTTP/1 message framing at the edge: the checks a request head must pass before anything acts on it
//! (Host, Transfer-Encoding, repeated Content-Length), and answers an HTTP/1.0 caller can read.
//!
//! Pingora already refuses conflicting Content-Lengths, Transfer-Encoding on HTTP/1.0 and a final coding
//! other than chunked (a 400 of its own, connection closed). What is left to us, as nginx does it:
//! - a Transfer-Encoding other than exactly `chunked` (`gzip, chunked`) is a 501;
//! - an HTTP/1.1 request without exactly one Host is a 400 (RFC 9112 section 3.2);
//! - repeated identical Content-Lengths (which Pingora accepts) become one before the body is read or sent.
//!
//! Each refusal closes the connection (see [`GatewayError::closes_connection`]): the rest of the bytes on
//! it cannot be trusted to start a request.

use http::header::{self, HeaderValue};
use http::Version;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::error::GatewayError;

/// Checks `req`'s framing and makes its Content-Length a single value.
pub fn check_request(req: &mut RequestHeader) -> Result<(), GatewayError> {
    if req.version == Version::HTTP_11 && req.headers.get_all(header::HOST).iter().count() != 1 {
        return Err(GatewayError::BadHost);
    }
    let mut codings = req
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    match (codings.next(), codings.next()) {
        (None, _) => {}
        (Some(only), None) if only.eq_ignore_ascii_case(b"chunked") => {}
        _ => {
            let te = req
                .headers
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(GatewayError::UnsupportedTransferEncoding(te));
        }
    }
    single_content_length(req)
}

/// `Content-Length: 5, 5` or two `Content-Length: 5` lines (Pingora checked they agree) -> one `5`.
fn single_content_length(req: &mut RequestHeader) -> Result<(), GatewayError> {
    let mut values = req.headers.get_all(header::CONTENT_LENGTH).iter();
    let (Some(first), repeated) = (values.next(), values.next().is_some()) else {
        return Ok(());
    };
    if !repeated && !first.as_bytes().contains(&b',') {
        return Ok(());
    }
    let length: u64 = first
        .as_bytes()
        .split(|&b| b == b',')
        .next()
        .and_then(|t| std::str::from_utf8(t.trim_ascii()).ok())
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| GatewayError::BodyRead("invalid Content-Length".into()))?;
    req.insert_header(header::CONTENT_LENGTH, HeaderValue::from(length))
        .map_err(|_| GatewayError::BodyRead("invalid Content-Length".into()))
}

/// An answer to an HTTP/1.0 (or 0.9) request must not be chunked: Pingora turns a body without a length into
/// a chunked one for any caller; undo that, so the body ends with the connection (Pingora then closes it).
pub fn fit_response_to(version: Version, resp: &mut ResponseHeader) {
    if matches!(version, Version::HTTP_09 | Version::HTTP_10) {
        resp.remove_header(&header::TRANSFER_ENCODING);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(version: Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        req.set_version(version);
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn host_is_required_once_in_http_11() {
        let mut ok = request(Version::HTTP_11, &[("host", "a")]);
        assert_eq!(check_request(&mut ok), Ok(()));
        let mut none = request(Version::HTTP_11, &[]);
        assert_eq!(check_request(&mut none), Err(GatewayError::BadHost));
        let mut two = request(Version::HTTP_11, &[("host", "a"), ("host", "b")]);
        assert_eq!(check_request(&mut two), Err(GatewayError::BadHost));
        let mut old = request(Version::HTTP_10, &[]);
        assert_eq!(check_request(&mut old), Ok(()));
    }

    #[test]
    fn only_chunked_alone_is_a_transfer_coding() {
        for te in [&["chunked"][..], &["Chunked"], &[" chunked "]] {
            let mut headers = vec![("host", "a")];
            headers.extend(te.iter().map(|v| ("transfer-encoding", *v)));
            assert_eq!(
                check_request(&mut request(Version::HTTP_11, &headers)),
                Ok(())
            );
        }
        for te in [
            &["gzip, chunked"][..],
            &["gzip", "chunked"],
            &["chunked, chunked"],
            &["identity"],
            &[""],
        ] {
            let mut headers = vec![("host", "a")];
            headers.extend(te.iter().map(|v| ("transfer-encoding", *v)));
            let err = check_request(&mut request(Version::HTTP_11, &headers)).unwrap_err();
            assert_eq!(err.status(), 501, "{te:?}");
        }
    }

    #[test]
    fn repeated_content_length_becomes_one() {
        for cl in [&["5", "5"][..], &["5, 5"], &["5"]] {
            let mut headers = vec![("host", "a")];
            headers.extend(cl.iter().map(|v| ("content-length", *v)));
            let mut req = request(Version::HTTP_11, &headers);
            check_request(&mut req).unwrap();
            let all: Vec<_> = req.headers.get_all("content-length").iter().collect();
            assert_eq!(all, vec!["5"], "{cl:?}");
        }
    }

    #[test]
    fn http_10_answers_are_not_chunked() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("transfer-encoding", "chunked").unwrap();
        fit_response_to(Version::HTTP_11, &mut resp);
        assert!(resp.headers.contains_key("transfer-encoding"));
        fit_response_to(Version::HTTP_10, &mut resp);
        assert!(!resp.headers.contains_key("transfer-encoding"));
    }
}
