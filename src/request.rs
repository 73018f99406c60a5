//! The single parse of a request body: pulls out `model` and `stream` without copying the rest.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::GatewayError;

/// What routing needs from a JSON request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub model: String,
    pub stream: bool,
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
}

/// Validates that `body` is a JSON object with a string `model`; other fields are left untouched.
pub fn inspect(body: &[u8]) -> Result<RequestInfo, GatewayError> {
    // serde accepts a JSON array for a struct, so check the shape first.
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => {
            // Valid JSON of the wrong shape and invalid JSON get different messages.
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                    Ok(_) => GatewayError::BodyNotObject,
                    Err(e) => GatewayError::InvalidJson(e.to_string()),
                },
            );
        }
        None => return Err(GatewayError::InvalidJson("the body is empty".into())),
    }
    let peek: Peek =
        serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
    let raw = peek.model.ok_or(GatewayError::ModelMissing)?;
    let model: String = match serde_json::from_str::<Option<String>>(raw.get()) {
        Ok(Some(m)) => m,
        Ok(None) => return Err(GatewayError::ModelMissing),
        Err(_) => return Err(GatewayError::ModelNotString),
    };
    let stream = matches!(peek.stream, Some(serde_json::Value::Bool(true)));
    Ok(RequestInfo { model, stream })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_model_and_stream() {
        let r = inspect(
            br#"{"messages":[{"role":"user","content":"x"}],"model":"gpt-4o","stream":true}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            RequestInfo {
                model: "gpt-4o".into(),
                stream: true
            }
        );
        let r = inspect(br#" {"model":"a\u00e9"} "#).unwrap();
        assert_eq!(r.model, "a\u{e9}");
        assert!(!r.stream);
    }

    #[test]
    fn rejects_bad_shapes() {
        assert_eq!(inspect(b"[1,2]"), Err(GatewayError::BodyNotObject));
        assert_eq!(inspect(b"\"x\""), Err(GatewayError::BodyNotObject));
        assert!(matches!(
            inspect(b"{nope"),
            Err(GatewayError::InvalidJson(_))
        ));
        assert!(matches!(inspect(b""), Err(GatewayError::InvalidJson(_))));
        assert!(matches!(
            inspect(b"nope"),
            Err(GatewayError::InvalidJson(_))
        ));
        assert_eq!(inspect(b"{}"), Err(GatewayError::ModelMissing));
        assert_eq!(
            inspect(br#"{"model":null}"#),
            Err(GatewayError::ModelMissing)
        );
        assert_eq!(
            inspect(br#"{"model":3}"#),
            Err(GatewayError::ModelNotString)
        );
        assert_eq!(
            inspect(br#"{"model":["a"]}"#),
            Err(GatewayError::ModelNotString)
        );
    }
}
