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
}
