//! Typed gateway errors and the one place they become an OpenAI-shaped JSON body.

use serde_json::json;

/// Everything the gateway itself can answer with (backend answers pass through untouched).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("We could not parse the JSON body of your request: {0}")]
    InvalidJson(String),
    #[error("The request body must be a JSON object.")]
    BodyNotObject,
    #[error("You must provide a model parameter.")]
    ModelMissing,
    #[error("The model parameter must be a string.")]
    ModelNotString,
    /// OpenAI's wording for an over-long string parameter.
    #[error("Invalid 'model': string too long. Expected a string with maximum length {max}, but got a string with length {len} instead.")]
    ModelTooLong { len: usize, max: usize },
    /// A field the gateway acts on (`stream`, `stream_options`) with the wrong JSON type; OpenAI's wording.
    #[error("Invalid type for '{param}': expected {expected}, but got {got} instead.")]
    InvalidType {
        param: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    /// A request the gateway must translate for its backend whose fields are invalid (the reason, not the
    /// value).
    #[error("{0}")]
    InvalidRequest(String),
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    /// A stored response the gateway cannot route to (the id, cut, and why).
    #[error("Response with id '{id}' not found: {why}")]
    ResponseNotFound { id: String, why: &'static str },
    #[error("Request body too large: the limit is {limit} bytes.")]
    BodyTooLarge { limit: usize },
    #[error("Could not read the request body: {0}")]
    BodyRead(String),
    /// A `Content-Encoding` of the request body the gateway cannot undo (the value, cut and escaped).
    #[error("Content-Encoding `{0}` is not supported for request bodies: send gzip, deflate, br, zstd or none.")]
    UnsupportedContentEncoding(String),
    /// A compressed request body that does not decode (corrupt or cut).
    #[error("The request body could not be decompressed: {0}")]
    BodyEncoding(String),
    #[error("Chunked request bodies over 64 KiB are not supported on this connection; send Content-Length.")]
    LengthRequired,
    #[error("Unknown path {0}.")]
    NotFound(String),
    #[error("Method {method} is not allowed for {path}.")]
    MethodNotAllowed { method: String, path: String },
    #[error("Incorrect or missing API key. Pass a gateway key as `Authorization: Bearer <key>`.")]
    InvalidApiKey,
    #[error("This API key may not use the model `{0}`.")]
    ModelNotAllowed(String),
    /// The key may use the requested name, but every backend for it would send a model the key may not use.
    #[error("This API key may not use the model `{model}` through any backend: {skipped}.")]
    UpstreamModelNotAllowed { model: String, skipped: String },
    #[error("The request path has an encoded `/`, `\\` or control character.")]
    BadPath,
    /// An HTTP/1.1 request without exactly one Host header (RFC 9112 section 3.2).
    #[error("An HTTP/1.1 request needs exactly one Host header.")]
    BadHost,
    /// The request line and headers did not end within `server.max_header_bytes`.
    #[error(
        "Request header fields too large: the request line and headers may take {limit} bytes."
    )]
    HeaderTooLarge { limit: usize },
    /// The request's head or body did not arrive in time (`server.client_header_timeout_ms`,
    /// `client_body_timeout_ms`).
    #[error("The request {0} did not arrive in time.")]
    RequestTimeout(&'static str),
    /// A Transfer-Encoding other than exactly `chunked` (nginx answers these 501 as well).
    #[error("Transfer-Encoding `{0}` is not supported: send `chunked` alone, or Content-Length.")]
    UnsupportedTransferEncoding(String),
    /// Over a key's rpm or tpm; the message says which and when to retry.
    #[error("{0}")]
    RateLimited(String),
    /// The key's spend (with its requests in flight) reached a budget; the message names it and its reset.
    #[error("{0}")]
    BudgetExceeded(String),
    /// The key has `max_concurrent` requests in flight.
    #[error("{0}")]
    ConcurrencyLimit(String),
    /// The shared limit store (Redis) does not answer and `cluster.on_redis_down` is `deny`.
    #[error("The rate limits of this API key cannot be checked right now; please retry shortly.")]
    LimitsUnavailable,
    /// Every attempt failed; `tried` lists each client and why (`name for `model`: reason; ...`).
    #[error("No backend could serve model `{model}`. Tried: {tried}")]
    UpstreamUnreachable { model: String, tried: String },
    /// Like `UpstreamUnreachable`, when the last attempt timed out.
    #[error("No backend could serve model `{model}` in time. Tried: {tried}")]
    UpstreamTimeout { model: String, tried: String },
    #[error("Internal gateway error: {0}")]
    Internal(String),
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidJson(_)
            | Self::BodyNotObject
            | Self::ModelMissing
            | Self::ModelNotString
            | Self::ModelTooLong { .. }
            | Self::InvalidType { .. }
            | Self::InvalidRequest(_)
            | Self::BadPath
            | Self::BadHost
            | Self::BodyEncoding(_)
            | Self::BodyRead(_) => 400,
            Self::UnsupportedContentEncoding(_) => 415,
            Self::InvalidApiKey => 401,
            Self::ModelNotAllowed(_) | Self::UpstreamModelNotAllowed { .. } => 403,
            Self::RateLimited(_) | Self::BudgetExceeded(_) | Self::ConcurrencyLimit(_) => 429,
            Self::LimitsUnavailable => 503,
            Self::ModelNotFound(_) | Self::NotFound(_) | Self::ResponseNotFound { .. } => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::RequestTimeout(_) => 408,
            Self::LengthRequired => 411,
            Self::BodyTooLarge { .. } => 413,
            Self::HeaderTooLarge { .. } => 431,
            Self::UpstreamUnreachable { .. } => 502,
            Self::UpstreamTimeout { .. } => 504,
            Self::Internal(_) => 500,
            Self::UnsupportedTransferEncoding(_) => 501,
        }
    }

    /// The caller's connection must close after this answer: its framing is broken or unknown, so the
    /// bytes after the head cannot be trusted to start the next request (nginx closes these too).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::BodyRead(_)
                | Self::BadHost
                | Self::UnsupportedTransferEncoding(_)
                | Self::HeaderTooLarge { .. }
                | Self::RequestTimeout(_)
        )
    }

    fn kind(&self) -> &'static str {
        if let Self::BudgetExceeded(_) = self {
            // OpenAI's type and code when an account is out of credit.
            return "insufficient_quota";
        }
        match self.status() {
            // The caller's request is what is not supported.
            501 => "invalid_request_error",
            500..=599 => "api_error",
            // OpenAI's names for these two.
            429 => "requests",
            403 => "permission_error",
            _ => "invalid_request_error",
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            Self::ModelMissing
            | Self::ModelNotString
            | Self::ModelTooLong { .. }
            | Self::ModelNotFound(_)
            | Self::ModelNotAllowed(_)
            | Self::UpstreamModelNotAllowed { .. } => Some("model"),
            Self::InvalidType { param, .. } => Some(param),
            _ => None,
        }
    }

    fn code(&self) -> Option<&'static str> {
        Some(match self {
            Self::InvalidJson(_) | Self::BodyNotObject => "invalid_json",
            Self::ModelMissing | Self::ModelNotString => "invalid_model",
            Self::ModelTooLong { .. } => "string_above_max_length",
            Self::InvalidType { .. } => "invalid_type",
            Self::InvalidRequest(_) => "invalid_request",
            Self::ModelNotFound(_) => "model_not_found",
            Self::ResponseNotFound { .. } => "response_not_found",
            Self::InvalidApiKey => "invalid_api_key",
            Self::ModelNotAllowed(_) | Self::UpstreamModelNotAllowed { .. } => "model_not_allowed",
            Self::BadPath => "invalid_path",
            Self::BadHost => "invalid_host",
            Self::UnsupportedTransferEncoding(_) => "unsupported_transfer_encoding",
            Self::RateLimited(_) => "rate_limit_exceeded",
            Self::BudgetExceeded(_) => "insufficient_quota",
            Self::ConcurrencyLimit(_) => "concurrency_limit",
            Self::LimitsUnavailable => "limits_unavailable",
            Self::BodyTooLarge { .. } => "request_too_large",
            Self::HeaderTooLarge { .. } => "request_header_too_large",
            Self::RequestTimeout(_) => "request_timeout",
            Self::BodyRead(_) => "invalid_body",
            Self::UnsupportedContentEncoding(_) => "unsupported_content_encoding",
            Self::BodyEncoding(_) => "invalid_body_encoding",
            Self::LengthRequired => "length_required",
            Self::NotFound(_) => "unknown_url",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::UpstreamUnreachable { .. } => "upstream_unreachable",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::Internal(_) => return None,
        })
    }

    /// `{"error":{"message","type","param","code"}}`, as OpenAI's API shapes its errors.
    pub fn to_json(&self) -> Vec<u8> {
        let body = json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "param": self.param(),
                "code": self.code(),
            }
        });
        body.to_string().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn model_not_found_matches_openai() {
        let e = GatewayError::ModelNotFound("gpt-x".into());
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(e.status(), 404);
        assert_eq!(
            v,
            json!({"error": {"message": "The model `gpt-x` does not exist.",
                "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})
        );
    }

    #[test]
    fn every_error_has_four_keys() {
        let all = [
            GatewayError::InvalidJson("x".into()),
            GatewayError::BodyTooLarge { limit: 1 },
            GatewayError::UpstreamTimeout {
                model: "m".into(),
                tried: "c for `m`: timed out".into(),
            },
            GatewayError::Internal("x".into()),
        ];
        for e in all {
            let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
            let obj = v["error"].as_object().unwrap();
            for k in ["message", "type", "param", "code"] {
                assert!(obj.contains_key(k), "{e:?} lacks {k}");
            }
        }
    }
}
