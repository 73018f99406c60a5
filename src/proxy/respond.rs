//! Answers the gateway writes itself: JSON bodies for /health, /v1/models and every error.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::dialect::anthropic;
use crate::endpoints::ApiKind;
use crate::error::GatewayError;

/// Writes a complete JSON response (status, content-type, content-length, body) with `headers` (the request
/// id, rate-limit headers, Retry-After).
pub async fn json_with(
    session: &mut Session,
    status: u16,
    body: Vec<u8>,
    headers: &[(&'static str, String)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3 + headers.len()))?;
    for (name, value) in headers {
        resp.insert_header(*name, value.as_str())?;
    }
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// Writes `err` as an error response in the caller's dialect (Anthropic's for its endpoints, else OpenAI's),
/// with `headers`.
pub async fn error_with(
    session: &mut Session,
    err: &GatewayError,
    headers: &[(&'static str, String)],
) -> Result<()> {
    let body = match speaks_anthropic(session) {
        true => anthropic::error::gateway(err).1,
        false => err.to_json(),
    };
    json_with(session, err.status(), body, headers).await
}

/// The caller called one of Anthropic's endpoints (read from the path: errors come before the body is).
pub fn speaks_anthropic(session: &Session) -> bool {
    ApiKind::from_path(session.req_header().uri.path()).speaks_anthropic()
}
