//! Errors in Anthropic's shape `{"type":"error","error":{"type","message"}}`, and backend error bodies
//! translated between it and OpenAI's `{"error":{"message","type","param","code"}}`.

use crate::error::GatewayError;
use serde_json::{json, Value};

/// The longest message carried over from a backend's error body (longer ones are cut).
const MESSAGE_CAP: usize = 4096;

/// Anthropic's error type for an HTTP status.
pub fn type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// The error body for a status and message.
pub fn body(status: u16, message: &str) -> Vec<u8> {
    body_value(type_for_status(status), message)
        .to_string()
        .into_bytes()
}

/// An SSE `error` event, as Anthropic ends a stream that failed under way.
pub fn event(status: u16, message: &str) -> bytes::Bytes {
    let body = body_value(type_for_status(status), message);
    bytes::Bytes::from(format!("event: error\ndata: {body}\n\n"))
}

/// A gateway error in Anthropic's shape: its status and body.
pub fn gateway(e: &GatewayError) -> (u16, Vec<u8>) {
    (e.status(), body(e.status(), &e.to_string()))
}

pub(super) fn body_value(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": cut(message)}})
}

/// OpenAI's type and code for an Anthropic error type.
fn openai_kind(kind: &str) -> (&'static str, Option<&'static str>) {
    match kind {
        "authentication_error" => ("invalid_request_error", Some("invalid_api_key")),
        "permission_error" => ("permission_error", None),
        "not_found_error" => ("invalid_request_error", Some("not_found")),
        "request_too_large" => ("invalid_request_error", Some("request_too_large")),
        "rate_limit_error" => ("requests", Some("rate_limit_exceeded")),
        "overloaded_error" => ("api_error", Some("overloaded")),
        "api_error" | "timeout_error" => ("api_error", None),
        _ => ("invalid_request_error", None),
    }
}

pub(super) fn openai_value(kind: &str, message: &str) -> Value {
    let (kind, code) = openai_kind(kind);
    json!({"error": {"message": cut(message), "type": kind, "param": null, "code": code}})
}

/// Anthropic's error type for an OpenAI error object (`{"message","type","code"}`).
pub(super) fn type_for_openai(err: &Value) -> &'static str {
    let code = err.get("code").and_then(Value::as_str).unwrap_or("");
    match (err.get("type").and_then(Value::as_str).unwrap_or(""), code) {
        (_, "invalid_api_key") | ("authentication_error", _) => "authentication_error",
        ("permission_error", _) => "permission_error",
        (_, "model_not_found") => "not_found_error",
        (_, "rate_limit_exceeded") | ("requests" | "tokens" | "rate_limit_error", _) => {
            "rate_limit_error"
        }
        (_, "request_too_large") => "request_too_large",
        ("insufficient_quota", _) => "rate_limit_error",
        ("server_error" | "api_error", _) => "api_error",
        _ => "invalid_request_error",
    }
}

/// An Anthropic backend's error body in OpenAI's shape; None when the body is not Anthropic's error.
pub fn to_openai(body: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let err = v
        .get("error")
        .filter(|_| v.get("type").and_then(Value::as_str) == Some("error"))?;
    let kind = err
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("api_error");
    let message = err.get("message").and_then(Value::as_str).unwrap_or("");
    Some(openai_value(kind, message).to_string().into_bytes())
}

/// An OpenAI-shaped backend's error body (any status) in Anthropic's shape. The type follows the status
/// (what a caller's SDK reads), the message is the backend's, or its body's text when it is not OpenAI's.
pub fn from_openai(status: u16, body: &[u8]) -> Vec<u8> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let message = match err {
        Some(Value::String(s)) => s.clone(),
        Some(e) => e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        None => String::from_utf8_lossy(&body[..body.len().min(MESSAGE_CAP)])
            .trim()
            .to_owned(),
    };
    let message = if message.is_empty() {
        format!("The backend answered with status {status}.")
    } else {
        message
    };
    let kind = match (status, err) {
        (400..=599, _) | (_, None) => type_for_status(status),
        (_, Some(e)) => type_for_openai(e),
    };
    body_value(kind, &message).to_string().into_bytes()
}

/// `s` cut to [`MESSAGE_CAP`] bytes at a character boundary.
fn cut(s: &str) -> &str {
    super::cut(s, MESSAGE_CAP)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn json(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn types_by_status() {
        let cases = [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (529, "overloaded_error"),
            (405, "invalid_request_error"),
        ];
        for (status, kind) in cases {
            assert_eq!(type_for_status(status), kind, "{status}");
            let b = json(&body(status, "why"));
            assert_eq!(
                b,
                json!({"type": "error", "error": {"type": kind, "message": "why"}})
            );
        }
    }

    #[test]
    fn gateway_errors_in_anthropic_shape() {
        let (status, b) = gateway(&GatewayError::ModelNotFound("m".into()));
        assert_eq!(status, 404);
        assert_eq!(json(&b)["error"]["type"], "not_found_error");
        assert_eq!(
            json(&b)["error"]["message"],
            "The model `m` does not exist."
        );
    }

    #[test]
    fn anthropic_errors_to_openai_and_back() {
        let overloaded =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let v = json(&to_openai(overloaded).unwrap());
        assert_eq!(
            v,
            json!({"error": {"message": "Overloaded", "type": "api_error", "param": null, "code": "overloaded"}})
        );
        assert_eq!(
            json(&from_openai(529, &to_openai(overloaded).unwrap())),
            json(overloaded)
        );
        assert!(to_openai(br#"{"error":{"message":"x"}}"#).is_none());
        assert!(to_openai(b"oops").is_none());
        let limited = br#"{"error":{"message":"Slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        assert_eq!(
            json(&from_openai(429, limited)),
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}})
        );
        let auth =
            br#"{"type":"error","error":{"type":"authentication_error","message":"bad key"}}"#;
        assert_eq!(
            json(&from_openai(401, &to_openai(auth).unwrap())),
            json(auth)
        );
    }

    #[test]
    fn odd_bodies_keep_a_bounded_message() {
        let b = json(&from_openai(502, b"<html>Bad Gateway</html>"));
        assert_eq!(b["error"]["type"], "api_error");
        assert_eq!(b["error"]["message"], "<html>Bad Gateway</html>");
        assert_eq!(
            json(&from_openai(503, b""))["error"]["message"],
            "The backend answered with status 503."
        );
        let long = "é".repeat(5000);
        let b = json(&from_openai(
            500,
            format!("{{\"error\":{{\"message\":\"{long}\"}}}}").as_bytes(),
        ));
        assert!(b["error"]["message"].as_str().unwrap().len() <= MESSAGE_CAP);
        assert_eq!(
            json(&from_openai(500, br#"{"error":"plain"}"#))["error"]["message"],
            "plain"
        );
    }
}
