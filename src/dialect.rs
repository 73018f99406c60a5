//! Translation between API dialects: Anthropic's Messages API <-> OpenAI's chat completions, and OpenAI's
//! Responses API -> chat completions (for backends that serve chat only).
//!
//! Plain functions over bytes (requests, whole answers, error bodies) and incremental stream translators fed
//! raw bytes as they arrive. No Pingora here: the proxy picks the direction and calls these.

pub mod anthropic;
mod chat;
mod frames;
mod json;
pub mod relay;
pub mod responses;

/// Why a request, answer or stream could not be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialectError {
    /// The caller's body is not JSON.
    #[error("We could not parse the JSON body of your request: {0}")]
    InvalidJson(String),
    #[error("The request body must be a JSON object.")]
    NotObject,
    /// A field of the caller's request has no meaning in the other dialect or the wrong shape.
    #[error("Invalid '{field}': {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("Missing required parameter: '{0}'.")]
    Missing(&'static str),
    /// The backend's answer is not what its dialect promises.
    #[error("The backend's answer could not be translated: {0}")]
    BadAnswer(String),
    /// One event of the backend's stream grew past the cap without ending.
    #[error("An event of the backend's stream is over {0} bytes.")]
    EventTooLarge(usize),
}

impl DialectError {
    /// 400 for what the caller sent, 502 for what the backend answered.
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidJson(_) | Self::NotObject | Self::Invalid { .. } | Self::Missing(_) => 400,
            Self::BadAnswer(_) | Self::EventTooLarge(_) => 502,
        }
    }
}

impl From<DialectError> for crate::error::GatewayError {
    /// A caller's request that cannot be translated: the same errors as a body the gateway cannot read.
    fn from(e: DialectError) -> Self {
        use crate::error::GatewayError;
        match e {
            DialectError::InvalidJson(why) => GatewayError::InvalidJson(why),
            DialectError::NotObject => GatewayError::BodyNotObject,
            DialectError::BadAnswer(_) | DialectError::EventTooLarge(_) => {
                GatewayError::Internal(e.to_string())
            }
            DialectError::Invalid { .. } | DialectError::Missing(_) => {
                GatewayError::InvalidRequest(e.to_string())
            }
        }
    }
}

/// `s` cut to `cap` bytes at a character boundary (ids, names and messages copied from a backend).
pub(crate) fn cut(s: &str, cap: usize) -> &str {
    if s.len() <= cap {
        return s;
    }
    let mut end = cap;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
