//! Which requests the gateway answers itself, which it routes by model, and which are errors.

/// What to do with a request, decided from its method and path alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Models,
    /// A POST to route by the body's `model`.
    Route,
    NotFound,
    MethodNotAllowed,
}

/// Routed POST endpoints, named so a GET to them is a 405 rather than a 404 (also without `/v1`).
const KNOWN_POST: [&str; 9] = [
    "/chat/completions",
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
    Other,
}

impl ApiKind {
    pub fn from_path(path: &str) -> ApiKind {
        match strip_v1(path) {
            "/chat/completions" => ApiKind::Chat,
            "/completions" => ApiKind::Completions,
            "/embeddings" => ApiKind::Embeddings,
            "/responses" => ApiKind::Responses,
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
            ApiKind::Other => strip_v1(path).trim_matches('/').replace('/', "."),
        }
    }

    /// Chat and completions streams can be asked for usage (`stream_options.include_usage`).
    pub fn streams_usage_option(self) -> bool {
        matches!(self, ApiKind::Chat | ApiKind::Completions)
    }
}

/// The path without a leading `/v1` segment.
pub fn strip_v1(path: &str) -> &str {
    match path.strip_prefix("/v1") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => path,
    }
}

pub fn classify(method: &str, path: &str) -> Endpoint {
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
            let bare = path
                .strip_prefix("/v1")
                .filter(|r| r.starts_with('/'))
                .unwrap_or(path);
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
            ("PUT", "/v1/anything", MethodNotAllowed),
            ("GET", "/nope", NotFound),
            ("GET", "/", NotFound),
        ];
        for (m, p, want) in cases {
            assert_eq!(classify(m, p), want, "{m} {p}");
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
            ("/v1/audio/speech", ApiKind::Other, "audio.speech"),
            ("/v1beta/x", ApiKind::Other, "v1beta.x"),
        ];
        for (path, kind, ty) in cases {
            assert_eq!(ApiKind::from_path(path), kind, "{path}");
            assert_eq!(kind.record_type(path), ty, "{path}");
        }
    }
}
