//! Gateway keys: finding the caller's key in its headers (in constant time) and the models each key may use.

use std::fmt;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::HeaderMap;
use ring::digest::{digest, SHA256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::config::{AuthSettings, Budget, KeySettings};

/// The headers a caller may send its key in, besides `Authorization: Bearer <key>` (Azure and Anthropic SDKs).
const KEY_HEADERS: [&str; 2] = ["api-key", "x-api-key"];

/// SHA-256 of a key: what the table holds and what lookups compare.
type Digest = [u8; 32];

/// One configured key, without the key itself: what a request carries once it is authenticated.
#[derive(Debug)]
pub struct KeyInfo {
    /// Names the key in the access log and the usage record.
    pub name: String,
    rpm: Option<u32>,
    tpm: Option<u64>,
    budget: Option<Budget>,
    max_concurrent: Option<u32>,
    /// `None`: every model.
    models: Option<Vec<Pattern>>,
}

impl KeyInfo {
    pub fn new(settings: &KeySettings) -> KeyInfo {
        KeyInfo {
            name: settings.name.clone(),
            rpm: settings.rpm,
            tpm: settings.tpm,
            budget: settings.budget,
            max_concurrent: settings.max_concurrent,
            models: settings
                .models
                .as_ref()
                .map(|models| models.iter().map(|m| Pattern::new(m)).collect()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests per minute, if limited.
    pub fn rpm(&self) -> Option<u32> {
        self.rpm
    }

    /// Tokens per minute, if limited.
    pub fn tpm(&self) -> Option<u64> {
        self.tpm
    }

    /// What the key may spend per day and month, if limited.
    pub fn budget(&self) -> Option<Budget> {
        self.budget
    }

    /// Requests in flight at once, if limited.
    pub fn max_concurrent(&self) -> Option<u32> {
        self.max_concurrent
    }

    /// Whether the key has a limit the limit store keeps (rpm, tpm, concurrency or a budget).
    pub fn is_limited(&self) -> bool {
        self.rpm.is_some()
            || self.tpm.is_some()
            || self.max_concurrent.is_some()
            || self.budget.is_some()
    }

    /// Whether this key may use `model` (the model as the caller requested it).
    pub fn allows(&self, model: &str) -> bool {
        match &self.models {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.matches(model)),
        }
    }
}

/// An entry of `models`: an exact name, or a pattern where each `*` matches any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    /// The text between the `*`s (at least two parts; empty ones where a `*` starts or ends the pattern).
    Glob(Vec<String>),
}

impl Pattern {
    fn new(pattern: &str) -> Pattern {
        if pattern.contains('*') {
            Pattern::Glob(pattern.split('*').map(str::to_owned).collect())
        } else {
            Pattern::Exact(pattern.to_owned())
        }
    }

    fn matches(&self, model: &str) -> bool {
        match self {
            Pattern::Exact(name) => name == model,
            Pattern::Glob(parts) => glob_matches(parts, model),
        }
    }
}

/// The first part must start `text`, the last end it, and the middle ones appear in order between them;
/// taking each middle part's first occurrence is enough, since `*` can absorb whatever it skipped.
fn glob_matches(parts: &[String], text: &str) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return text.is_empty();
    };
    let Some((last, middle)) = rest.split_last() else {
        return text == first;
    };
    let Some(mut text) = text.strip_prefix(first.as_str()) else {
        return false;
    };
    let Some(inner) = text.strip_suffix(last.as_str()) else {
        return false;
    };
    text = inner;
    for part in middle {
        match text.find(part.as_str()) {
            Some(at) => text = &text[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The configured keys, compiled from the `auth:` section. Shared behind an `Arc` with the rest of the config.
pub struct Auth {
    keys: Vec<(Digest, Arc<KeyInfo>)>,
}

impl Auth {
    pub fn from_config(settings: &AuthSettings) -> Auth {
        let keys = settings
            .keys
            .iter()
            .map(|k| (sha256(k.key.expose().as_bytes()), Arc::new(KeyInfo::new(k))))
            .collect();
        Auth { keys }
    }

    /// The caller's key from `Authorization: Bearer <key>`, `api-key` or `x-api-key`, looked up.
    /// None: no key, or not a configured key.
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<Arc<KeyInfo>> {
        presented_keys(headers).find_map(|key| self.lookup(key))
    }

    /// Hashing first means the comparisons below take the same time whatever the key's length or content, and
    /// every configured key is compared (no early exit), so timing tells nothing about which bytes matched.
    pub fn lookup(&self, key: &[u8]) -> Option<Arc<KeyInfo>> {
        if key.is_empty() {
            return None;
        }
        let presented = sha256(key);
        // 0: none; i + 1: the i-th key.
        let mut found = 0u64;
        for (i, (digest, _)) in self.keys.iter().enumerate() {
            found.conditional_assign(&(i as u64 + 1), digest_eq(digest, &presented));
        }
        let index = usize::try_from(found).ok()?.checked_sub(1)?;
        self.keys.get(index).map(|(_, info)| Arc::clone(info))
    }

    /// `query` without the parameters whose value is a configured key (`?api_key=...`, `?key=...`): a key is
    /// never taken from a URL, and one put there must not reach a backend. None when nothing is removed.
    pub fn strip_query_keys(&self, query: &str) -> Option<String> {
        let is_key = |pair: &str| {
            url::form_urlencoded::parse(pair.as_bytes())
                .next()
                .is_some_and(|(_, value)| self.lookup(value.as_bytes()).is_some())
        };
        if !query.split('&').any(is_key) {
            return None;
        }
        let kept: Vec<&str> = query.split('&').filter(|p| !is_key(p)).collect();
        Some(kept.join("&"))
    }

    /// The configured keys, in file order.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<KeyInfo>> {
        self.keys.iter().map(|(_, info)| info)
    }
}

impl fmt::Debug for Auth {
    /// Names only: not even the digests.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys().map(|k| k.name()))
            .finish()
    }
}

/// Candidate keys in the order they are tried; blank values are skipped.
fn presented_keys(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()));
    let others = KEY_HEADERS
        .iter()
        .filter_map(|name| headers.get(*name))
        .map(|v| v.as_bytes().trim_ascii());
    bearer.into_iter().chain(others).filter(|k| !k.is_empty())
}

/// `Bearer <token>`, the scheme in any case (RFC 9110 §11.1).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let split = value.iter().position(|b| *b == b' ' || *b == b'\t')?;
    let (scheme, token) = value.split_at(split);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
}

fn sha256(data: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, data).as_ref());
    out
}

/// Constant-time equality of two digests (`subtle` keeps the compiler from turning it into an early exit).
fn digest_eq(a: &Digest, b: &Digest) -> Choice {
    a.ct_eq(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::secret::Secret;
    use http::HeaderValue;

    fn key(name: &str, key: &str, models: Option<&[&str]>) -> KeySettings {
        KeySettings {
            name: name.into(),
            key: Secret::new(key),
            models: models.map(|m| m.iter().map(|s| s.to_string()).collect()),
            rpm: None,
            tpm: None,
            budget: None,
            max_concurrent: None,
        }
    }

    fn auth() -> Auth {
        Auth::from_config(&AuthSettings {
            keys: vec![
                key("team", "sk-team-1234", None),
                key("ci", "sk-ci-5678", Some(&["gpt-4o-mini"])),
                key("prefix", "sk-team-12", None),
            ],
        })
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn who(pairs: &[(&'static str, &str)]) -> Option<String> {
        auth()
            .authenticate(&headers(pairs))
            .map(|k| k.name().to_owned())
    }

    #[test]
    fn each_header_form_authenticates() {
        let team = Some("team".to_string());
        assert_eq!(who(&[("authorization", "Bearer sk-team-1234")]), team);
        assert_eq!(who(&[("authorization", "bearer  sk-team-1234 ")]), team);
        assert_eq!(who(&[("Authorization", "BEARER\tsk-team-1234")]), team);
        assert_eq!(who(&[("api-key", "sk-team-1234")]), team);
        assert_eq!(who(&[("x-api-key", " sk-team-1234")]), team);
        assert_eq!(who(&[("x-api-key", "sk-ci-5678")]), Some("ci".to_string()));
        assert_eq!(
            who(&[("authorization", "Bearer sk-team-12")]),
            Some("prefix".to_string()),
            "a key that is a prefix of another is its own key"
        );
    }

    #[test]
    fn missing_wrong_or_malformed_keys_are_refused() {
        assert_eq!(who(&[]), None);
        assert_eq!(who(&[("authorization", "Bearer sk-team-123")]), None);
        assert_eq!(who(&[("authorization", "Bearer sk-team-12345")]), None);
        assert_eq!(who(&[("authorization", "Bearer ")]), None);
        assert_eq!(who(&[("authorization", "Bearer")]), None);
        assert_eq!(who(&[("authorization", "sk-team-1234")]), None);
        assert_eq!(who(&[("authorization", "Basic sk-team-1234")]), None);
        assert_eq!(who(&[("api-key", "")]), None);
        assert_eq!(who(&[("x-api-key", "SK-TEAM-1234")]), None);
        assert_eq!(who(&[("x-other-key", "sk-team-1234")]), None);
        assert!(auth().lookup(b"").is_none());
    }

    #[test]
    fn a_wrong_key_in_one_header_does_not_hide_a_right_one_in_another() {
        let pairs = [
            ("authorization", "Bearer sk-wrong"),
            ("x-api-key", "sk-ci-5678"),
        ];
        assert_eq!(who(&pairs), Some("ci".to_string()));
        let both = [
            ("authorization", "Bearer sk-team-1234"),
            ("api-key", "sk-ci-5678"),
        ];
        assert_eq!(
            who(&both),
            Some("team".to_string()),
            "Authorization is tried first"
        );
    }

    #[test]
    fn gateway_keys_are_cut_out_of_a_query() {
        let a = auth();
        assert_eq!(a.strip_query_keys("api-version=2024-06-01"), None);
        assert_eq!(
            a.strip_query_keys("api_key=sk-team-1234&api-version=1&key=sk%2Dci%2D5678"),
            Some("api-version=1".into())
        );
        assert_eq!(a.strip_query_keys("key=sk-team-1234"), Some(String::new()));
        assert_eq!(a.strip_query_keys("key=sk-team-123"), None, "not a key");
    }

    #[test]
    fn digest_comparison_is_by_value() {
        let a = sha256(b"sk-a");
        let mut last = a;
        last[31] ^= 1;
        let mut first = a;
        first[0] ^= 0x80;
        assert!(bool::from(digest_eq(&a, &sha256(b"sk-a"))));
        assert!(!bool::from(digest_eq(&a, &last)));
        assert!(!bool::from(digest_eq(&a, &first)));
        assert!(!bool::from(digest_eq(&a, &sha256(b"sk-b"))));
        assert_ne!(sha256(b"sk-a"), sha256(b"sk-a "));
    }

    #[test]
    fn model_patterns() {
        let allows = |patterns: &[&str], model: &str| {
            let settings = key("k", "sk", Some(patterns));
            KeyInfo::new(&settings).allows(model)
        };
        assert!(KeyInfo::new(&key("k", "sk", None)).allows("anything"));
        assert!(allows(&["*"], "gpt-4o") && allows(&["*"], ""));
        assert!(allows(&["gpt-4o"], "gpt-4o"));
        assert!(!allows(&["gpt-4o"], "gpt-4o-mini") && !allows(&["gpt-4o"], "gpt-4"));
        assert!(allows(&["gpt-4*"], "gpt-4") && allows(&["gpt-4*"], "gpt-4o-mini"));
        assert!(!allows(&["gpt-4*"], "gpt-3.5-turbo") && !allows(&["gpt-4*"], "xgpt-4"));
        assert!(allows(&["*-mini"], "gpt-4o-mini") && allows(&["*-mini"], "-mini"));
        assert!(!allows(&["*-mini"], "gpt-4o-mini-2024"));
        assert!(allows(&["gpt*mini"], "gpt-4o-mini") && allows(&["gpt*mini"], "gptmini"));
        assert!(!allows(&["gpt*mini"], "gpt-4o") && !allows(&["a*a"], "a"));
        assert!(allows(&["a*a"], "aa") && allows(&["a*b*c"], "a-c-b-c"));
        assert!(!allows(&["a*b*c"], "a-c-b") && allows(&["**"], "x"));
        assert!(allows(&["*4o*"], "gpt-4o-mini") && !allows(&["*4o*"], "gpt-4"));
        assert!(allows(&["o1", "gpt-4*"], "o1") && allows(&["o1", "gpt-4*"], "gpt-4.1"));
        assert!(!allows(&["o1", "gpt-4*"], "o3"));
    }

    #[test]
    fn debug_shows_names_only() {
        let text = format!("{:?}", auth());
        assert_eq!(text, r#"["team", "ci", "prefix"]"#);
        let auth = auth();
        let names: Vec<&str> = auth.keys().map(|k| k.name()).collect();
        assert_eq!(names, ["team", "ci", "prefix"]);
    }
}
