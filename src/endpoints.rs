//! Which requests the gateway answers itself, which it routes by model, and which are errors.

use std::borrow::Cow;

/// What to do with a request, decided from its method and path alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Models,
    /// A POST to route by the body's `model`.
    Route,
    /// A request about a stored response (`GET`/`DELETE /v1/responses/{id}`, `GET .../input_items`,
    /// `POST .../cancel`): routed to the client that served it.
    StoredResponse,
    NotFound,
    MethodNotAllowed,
}

/// Routed POST endpoints, named so a GET to them is a 405 rather than a 404 (also without `/v1`).
const KNOWN_POST: [&str; 11] = [
    "/chat/completions",
    "/messages",
    "/messages/count_tokens",
    "/completions",
    "/embeddings",
    "/responses",
    "/moderations",
    "/rerank",
    "/audio/speech",
    "/images/generations",
    "/score",
];

/// Which OpenAI API a routed request calls, from its path (with or without `/v1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    Chat,
    Completions,
    Embeddings,
    Responses,
    /// Anthropic's Messages API (`/v1/messages`).
    Messages,
    /// Anthropic's token count (`/v1/messages/count_tokens`), answered by the gateway.
    CountTokens,
    /// A request about a stored response (`/v1/responses/{id}...`): no body to read, no usage.
    StoredResponse,
    Other,
}

impl ApiKind {
    pub fn from_path(path: &str) -> ApiKind {
        match strip_v1(path) {
            "/chat/completions" => ApiKind::Chat,
            "/completions" => ApiKind::Completions,
            "/embeddings" => ApiKind::Embeddings,
            "/responses" => ApiKind::Responses,
            "/messages" => ApiKind::Messages,
            "/messages/count_tokens" => ApiKind::CountTokens,
            _ if stored_response(path).is_some() => ApiKind::StoredResponse,
            _ => ApiKind::Other,
        }
    }

    /// The `Type` column of a usage record (the Python gateway's names); other APIs are named by path.
    pub fn record_type(self, path: &str) -> String {
        match self {
            ApiKind::Chat => "chat.completions".into(),
            ApiKind::Completions => "text_completion".into(),
            ApiKind::Embeddings => "embeddings".into(),
            ApiKind::Responses => "responses".into(),
            ApiKind::Messages => "messages".into(),
            ApiKind::CountTokens => "count_tokens".into(),
            ApiKind::StoredResponse => "responses_get".into(),
            ApiKind::Other => strip_v1(path).trim_matches('/').replace('/', "."),
        }
    }

    /// The model writes text (counted as completion tokens when a backend reports no usage).
    pub fn generates_text(self) -> bool {
        matches!(
            self,
            ApiKind::Chat | ApiKind::Completions | ApiKind::Responses | ApiKind::Messages
        )
    }

    /// The caller speaks Anthropic's dialect: the gateway's own errors go to it in Anthropic's shape.
    pub fn speaks_anthropic(self) -> bool {
        matches!(self, ApiKind::Messages | ApiKind::CountTokens)
    }

    /// Chat and completions streams can be asked for usage (`stream_options.include_usage`).
    pub fn streams_usage_option(self) -> bool {
        matches!(self, ApiKind::Chat | ApiKind::Completions)
    }
}

/// What a request about a stored response does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoredOp {
    /// `/responses/{id}`: GET or DELETE.
    Itself,
    /// `/responses/{id}/cancel`: POST.
    Cancel,
    /// `/responses/{id}/input_items`: GET.
    InputItems,
}

/// The response id of a path about a stored response (with or without `/v1`), and what it does.
fn stored_response(path: &str) -> Option<(&str, StoredOp)> {
    let rest = strip_v1(path).strip_prefix("/responses/")?;
    let (id, op) = match rest.split_once('/') {
        None => (rest, StoredOp::Itself),
        Some((id, "cancel")) => (id, StoredOp::Cancel),
        Some((id, "input_items")) => (id, StoredOp::InputItems),
        Some(_) => return None,
    };
    (!id.is_empty()).then_some((id, op))
}

/// The response id named by a path about a stored response (`/v1/responses/{id}`, `.../cancel`,
/// `.../input_items`).
pub fn stored_response_id(path: &str) -> Option<&str> {
    stored_response(path).map(|(id, _)| id)
}

/// The path without a leading `/v1` segment.
pub fn strip_v1(path: &str) -> &str {
    match path.strip_prefix("/v1") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => path,
    }
}

/// A path the gateway refuses to normalise: an encoded `/`, `\\` or control byte, which a backend might
/// decode into a different path than the one classified here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPath;

/// The one spelling of a request path that classification, routing, auth, records and the backend all see:
/// repeated slashes merged, a trailing slash dropped, `.` and `..` segments resolved, percent-encoded
/// unreserved characters decoded (`completion%73` is `completions` to most backends), and a first segment
/// `v1` in any case written `/v1`. Borrowed when the path is already in that form (the usual case).
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for (i, segment) in segments.iter().enumerate() {
        out.push('/');
        out.push_str(if i == 0 && segment.eq_ignore_ascii_case("v1") {
            "v1"
        } else {
            segment
        });
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(match out == path {
        true => Cow::Borrowed(path),
        false => Cow::Owned(out),
    })
}

/// Already normal: starts with `/`, no empty, `.` or `..` segment, no trailing slash (but `/`), no `%`, and
/// a first segment that is not `v1` in another case. Two passes over the bytes, no allocation (segments split
/// by byte: a `str` split by `'/'` costs a search call per segment).
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') || bytes.contains(&b'%') {
        return false;
    }
    let Some(rest) = bytes.get(1..).filter(|r| !r.is_empty()) else {
        return true; // "/"
    };
    let odd_v1 = |s: &[u8]| s.eq_ignore_ascii_case(b"v1") && s != b"v1";
    rest.split(|&b| b == b'/')
        .enumerate()
        .all(|(i, s)| !matches!(s, b"" | b"." | b"..") && (i > 0 || !odd_v1(s)))
}

/// Decodes `%XX` where it stands for an unreserved character (RFC 3986 section 6.2.2.2); other escapes stay
/// as they are, except an encoded `/`, `\\` or control byte, which is refused.
fn decode_unreserved(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if !path.contains('%') {
        return Ok(Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(b) if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                out.push(char::from(b));
                i += 3;
            }
            Some(b) if b == b'/' || b == b'\\' || b < 0x20 || b == 0x7f => return Err(BadPath),
            _ => {
                // Not an escape of anything decoded here: copied as is, up to the next `%`.
                let next = path[i + 1..].find('%').map_or(path.len(), |at| i + 1 + at);
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    Ok(Cow::Owned(out))
}

pub fn classify(method: &str, path: &str) -> Endpoint {
    if let Some((_, op)) = stored_response(path) {
        return match (op, method) {
            (StoredOp::Itself, "GET" | "DELETE")
            | (StoredOp::InputItems, "GET")
            | (StoredOp::Cancel, "POST") => Endpoint::StoredResponse,
            _ => Endpoint::MethodNotAllowed,
        };
    }
    let local = match path {
        "/health" => Some(Endpoint::Health),
        "/v1/models" | "/models" => Some(Endpoint::Models),
        _ => None,
    };
    match (local, method) {
        (Some(e), "GET" | "HEAD") => e,
        (Some(_), _) => Endpoint::MethodNotAllowed,
        (None, "POST") => Endpoint::Route,
        (None, _) => {
            // "/v1" alone becomes "", which is no known path either.
            let bare = strip_v1(path);
            if path.starts_with("/v1/") || KNOWN_POST.contains(&bare) {
                Endpoint::MethodNotAllowed
            } else {
                Endpoint::NotFound
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The check [`is_normal`] replaced (segments split as text): the reference it must agree with.
    fn was_normal(path: &str) -> bool {
        let bytes = path.as_bytes();
        if bytes.first() != Some(&b'/') || bytes.contains(&b'%') {
            return false;
        }
        if bytes.len() > 1 && bytes.ends_with(b"/") {
            return false;
        }
        let first = path[1..].split('/').next().unwrap_or("");
        if first.eq_ignore_ascii_case("v1") && first != "v1" {
            return false;
        }
        path.len() == 1 || !path[1..].split('/').any(|s| matches!(s, "" | "." | ".."))
    }

    proptest! {
        #![proptest_config(crate::fuzz_config())]

        #[test]
        fn is_normal_says_what_the_text_split_said(path in "[/.vV1a%é]{0,12}") {
            prop_assert_eq!(is_normal(&path), was_normal(&path), "{}", path);
        }
    }

    #[test]
    fn classifies() {
        use Endpoint::*;
        let cases = [
            ("GET", "/health", Health),
            ("POST", "/health", MethodNotAllowed),
            ("GET", "/v1/models", Models),
            ("GET", "/models", Models),
            ("DELETE", "/v1/models", MethodNotAllowed),
            ("POST", "/v1/chat/completions", Route),
            ("POST", "/chat/completions", Route),
            ("POST", "/v1/embeddings", Route),
            ("GET", "/v1/chat/completions", MethodNotAllowed),
            ("GET", "/chat/completions", MethodNotAllowed),
            ("POST", "/v1/messages", Route),
            ("GET", "/messages", MethodNotAllowed),
            ("PUT", "/v1/anything", MethodNotAllowed),
            ("GET", "/nope", NotFound),
            ("GET", "/", NotFound),
            ("GET", "/v1/responses/resp_1", StoredResponse),
            ("DELETE", "/v1/responses/resp_1", StoredResponse),
            ("GET", "/responses/resp_1", StoredResponse),
            ("POST", "/v1/responses/resp_1/cancel", StoredResponse),
            ("GET", "/v1/responses/resp_1/input_items", StoredResponse),
            ("POST", "/v1/responses/resp_1", MethodNotAllowed),
            ("GET", "/v1/responses/resp_1/cancel", MethodNotAllowed),
            (
                "DELETE",
                "/v1/responses/resp_1/input_items",
                MethodNotAllowed,
            ),
            ("POST", "/v1/responses", Route),
            ("GET", "/v1/responses", MethodNotAllowed),
            ("GET", "/v1/responses/resp_1/other", MethodNotAllowed),
        ];
        for (m, p, want) in cases {
            assert_eq!(classify(m, p), want, "{m} {p}");
        }
    }

    #[test]
    fn stored_response_ids_are_read_from_their_paths() {
        assert_eq!(stored_response_id("/v1/responses/resp_1"), Some("resp_1"));
        assert_eq!(stored_response_id("/v1/responses/r/cancel"), Some("r"));
        assert_eq!(stored_response_id("/responses/r/input_items"), Some("r"));
        assert_eq!(stored_response_id("/v1/responses"), None);
        assert_eq!(stored_response_id("/v1/responses/r/x"), None);
        assert_eq!(stored_response_id("/v1/responses/r/cancel/x"), None);
    }

    #[test]
    fn paths_are_normalised_once() {
        let cases = [
            ("/v1/chat/completions", "/v1/chat/completions"),
            ("/v1/chat/completions/", "/v1/chat/completions"),
            ("//v1//chat///completions", "/v1/chat/completions"),
            ("/V1/chat/completions", "/v1/chat/completions"),
            ("/v1/./chat/x/../completions", "/v1/chat/completions"),
            ("/v1/chat/completion%73", "/v1/chat/completions"),
            ("/%76%31/chat/completions", "/v1/chat/completions"),
            ("/../../v1/models", "/v1/models"),
            ("/v1/files/a%20b", "/v1/files/a%20b"),
            ("/v1/x%zz", "/v1/x%zz"),
            ("/", "/"),
            ("//", "/"),
            ("/health", "/health"),
            ("/v10/x", "/v10/x"),
        ];
        for (path, want) in cases {
            let got = normalize_path(path).unwrap();
            assert_eq!(got, want, "{path}");
            assert_eq!(
                matches!(got, Cow::Borrowed(_)),
                path == want,
                "{path}: borrowed only when unchanged"
            );
            assert_eq!(normalize_path(&got).unwrap(), got, "idempotent for {path}");
        }
        for bad in [
            "/v1/chat%2Fcompletions",
            "/v1/a%5Cb",
            "/v1/a%00b",
            "/v1/a%0ab",
        ] {
            assert_eq!(normalize_path(bad), Err(BadPath), "{bad}");
        }
    }

    #[test]
    fn api_kinds_and_record_types() {
        let cases = [
            ("/v1/chat/completions", ApiKind::Chat, "chat.completions"),
            ("/chat/completions", ApiKind::Chat, "chat.completions"),
            ("/v1/completions", ApiKind::Completions, "text_completion"),
            ("/v1/embeddings", ApiKind::Embeddings, "embeddings"),
            ("/v1/responses", ApiKind::Responses, "responses"),
            ("/v1/messages", ApiKind::Messages, "messages"),
            ("/messages", ApiKind::Messages, "messages"),
            (
                "/v1/messages/count_tokens",
                ApiKind::CountTokens,
                "count_tokens",
            ),
            ("/v1/audio/speech", ApiKind::Other, "audio.speech"),
            (
                "/v1/responses/resp_1",
                ApiKind::StoredResponse,
                "responses_get",
            ),
            (
                "/responses/resp_1/cancel",
                ApiKind::StoredResponse,
                "responses_get",
            ),
            ("/v1beta/x", ApiKind::Other, "v1beta.x"),
        ];
        for (path, kind, ty) in cases {
            assert_eq!(ApiKind::from_path(path), kind, "{path}");
            assert_eq!(kind.record_type(path), ty, "{path}");
        }
    }
}
