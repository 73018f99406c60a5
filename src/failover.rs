//! The order of attempts for one request: the model's candidates, then the fallback model's, hop by hop.

use std::fmt;
use std::sync::Arc;

use crate::auth::KeyInfo;
use crate::routing::{Candidate, Router};

pub mod attempt;

/// Why one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Refused, reset, TLS or DNS failure: nothing reached the backend's application.
    Connect(String),
    /// No response headers within `read_timeout_ms` (or a connect timeout).
    Timeout(String),
    /// The backend answered with a status in the retry set.
    Status(u16),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(why) => write!(f, "connection failed ({why})"),
            Failure::Timeout(why) => write!(f, "timed out ({why})"),
            Failure::Status(code) => write!(f, "answered {code}"),
        }
    }
}

impl Failure {
    /// What a caller is told: `connection failed`, `timed out` or `answered 500`; the details (host names,
    /// resolver and TLS messages) go to the log and the record only.
    pub fn class(&self) -> String {
        match self {
            Failure::Connect(_) => "connection failed".into(),
            Failure::Timeout(_) => "timed out".into(),
            Failure::Status(code) => format!("answered {code}"),
        }
    }

    /// The failover reason as a metrics label: connect, timeout, or the status code.
    pub fn reason(&self) -> String {
        match self {
            Failure::Connect(_) => "connect".into(),
            Failure::Timeout(_) => "timeout".into(),
            Failure::Status(code) => code.to_string(),
        }
    }
}

/// One failed attempt, for the final error and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried {
    pub client: String,
    pub model: String,
    pub failure: Failure,
}

/// A candidate left out because the caller's key may not use the model it would send upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub client: String,
    /// The model it would have sent.
    pub model: String,
}

/// Attempt state of one request. `current()` is the candidate being tried.
#[derive(Debug)]
pub struct Attempts {
    /// The model whose candidates are being tried (the requested one, then fallbacks).
    model: String,
    /// Set once the request moved on to a fallback model: the body's `model` becomes this.
    fallback_model: Option<String>,
    queue: Vec<Candidate>,
    pos: usize,
    /// Attempts started (connections tried), the current one included.
    started: u32,
    hops: u32,
    max_hops: u32,
    /// The fallback named by the first failed candidate of the current model.
    next_fallback: Option<String>,
    pub tried: Vec<Tried>,
    /// The caller's key: a candidate whose outgoing model it may not use is never tried.
    key: Option<Arc<KeyInfo>>,
    pub skipped: Vec<Skipped>,
}

impl Attempts {
    pub fn new(
        model: &str,
        candidates: Vec<Candidate>,
        max_hops: u32,
        key: Option<Arc<KeyInfo>>,
    ) -> Self {
        let mut attempts = Attempts {
            model: model.to_owned(),
            fallback_model: None,
            queue: Vec::new(),
            pos: 0,
            started: 0,
            hops: 0,
            max_hops,
            next_fallback: None,
            tried: Vec::new(),
            key,
            skipped: Vec::new(),
        };
        attempts.queue = attempts.admit(candidates);
        attempts
    }

    /// The candidates whose outgoing model (alias, fallback or the requested name) the key may use; the
    /// others are noted in `skipped`.
    fn admit(&mut self, mut candidates: Vec<Candidate>) -> Vec<Candidate> {
        let Some(key) = &self.key else {
            return candidates;
        };
        let (model, fallback) = (&self.model, self.fallback_model.as_deref());
        candidates.retain(|c| {
            let outgoing = c.client.outgoing_model(model, fallback);
            let allowed = key.allows(outgoing);
            if !allowed {
                self.skipped.push(Skipped {
                    client: c.client.name.clone(),
                    model: outgoing.to_owned(),
                });
            }
            allowed
        });
        candidates
    }

    /// No candidate is left to try from the start (none matched, or the key may use none of them).
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// `client sends `model`; ...` for the candidates the key kept the request from.
    pub fn skipped_summary(&self) -> String {
        let parts: Vec<String> = self
            .skipped
            .iter()
            .map(|s| format!("{} would send `{}`", s.client, s.model))
            .collect();
        parts.join("; ")
    }

    /// The model being served now: the requested one, or the fallback the request moved on to.
    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn current(&self) -> Option<&Candidate> {
        self.queue.get(self.pos)
    }

    /// The model to write into the body when this attempt serves a fallback.
    pub fn fallback_model(&self) -> Option<&str> {
        self.fallback_model.as_deref()
    }

    /// Counts the start of an attempt on the current candidate.
    pub fn begin(&mut self) {
        self.started = self.started.saturating_add(1);
    }

    /// Number of attempts started so far (the current one included).
    pub fn count(&self) -> u32 {
        self.started
    }

    /// Whether the last attempt failed because a backend timed out.
    pub fn last_was_timeout(&self) -> bool {
        matches!(
            self.tried.last(),
            Some(Tried {
                failure: Failure::Timeout(_),
                ..
            })
        )
    }

    /// Records the current attempt's failure.
    pub fn fail(&mut self, failure: Failure) {
        let Some(c) = self.queue.get(self.pos) else {
            return;
        };
        if self.next_fallback.is_none() {
            self.next_fallback = c.client.fallback.clone();
        }
        self.tried.push(Tried {
            client: c.client.name.clone(),
            model: self.model.clone(),
            failure,
        });
    }

    /// Whether another attempt could follow the current one.
    pub fn has_next(&self) -> bool {
        self.pos + 1 < self.queue.len()
            || (self.next_fallback.is_some() && self.hops < self.max_hops)
    }

    /// Moves to the next candidate, or to the fallback model's candidates; false when none is left.
    pub fn advance(&mut self, router: &Router) -> bool {
        if self.pos + 1 < self.queue.len() {
            self.pos += 1;
            return true;
        }
        while self.hops < self.max_hops {
            let Some(model) = self.next_fallback.take() else {
                return false;
            };
            self.hops += 1;
            let (found, _) = router.candidates(&model, || None);
            self.model = model.clone();
            self.fallback_model = Some(model);
            let queue = self.admit(found);
            if !queue.is_empty() {
                self.queue = queue;
                self.pos = 0;
                return true;
            }
        }
        false
    }

    /// `name for `model`: why; ...` for the log and the record, then the candidates the key ruled out.
    pub fn summary(&self) -> String {
        self.render(|f| f.to_string())
    }

    /// Like [`Attempts::summary`] with each failure's class only, for the caller's error body.
    pub fn public_summary(&self) -> String {
        self.render(Failure::class)
    }

    fn render(&self, failure: impl Fn(&Failure) -> String) -> String {
        let tried = self
            .tried
            .iter()
            .map(|t| format!("{} for `{}`: {}", t.client, t.model, failure(&t.failure)));
        let skipped = self
            .skipped
            .iter()
            .map(|s| format!("{} skipped: this key may not use `{}`", s.client, s.model));
        tried.chain(skipped).collect::<Vec<_>>().join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn router(yaml: &str) -> Router {
        Router::new(&Config::parse(yaml, &|_| None).unwrap(), None)
    }

    const YAML: &str = "openai_clients:
  - {name: a, base_url: 'http://h', priority: 1, fallback: fb, model_match: {type: exact, value: m}}
  - {name: b, base_url: 'http://h', priority: 2, fallback: other, model_match: {type: exact, value: m}}
  - {name: f, base_url: 'http://h', fallback: fb2, model_match: {type: exact, value: fb}}
  - {name: g, base_url: 'http://h', model_match: {type: exact, value: fb2}}
  - {name: o, base_url: 'http://h', model_match: {type: exact, value: other}}";

    fn current(a: &Attempts) -> &str {
        &a.current().unwrap().client.name
    }

    #[test]
    fn candidates_then_first_failed_fallback_then_chain() {
        let r = router(YAML);
        let mut a = Attempts::new("m", r.candidates("m", || None).0, 3, None);
        a.begin();
        assert_eq!(current(&a), "a");
        a.fail(Failure::Status(500));
        assert!(a.has_next() && a.advance(&r));
        a.begin();
        assert_eq!((current(&a), a.fallback_model()), ("b", None));
        a.fail(Failure::Connect("refused".into()));
        assert!(a.advance(&r));
        a.begin();
        assert_eq!(
            (current(&a), a.fallback_model()),
            ("f", Some("fb")),
            "a's fallback, the first failed"
        );
        a.fail(Failure::Timeout("read".into()));
        assert!(a.last_was_timeout());
        assert!(a.advance(&r));
        a.begin();
        assert_eq!((current(&a), a.fallback_model()), ("g", Some("fb2")));
        a.fail(Failure::Status(503));
        assert!(!a.has_next() && !a.advance(&r));
        assert!(!a.last_was_timeout());
        assert_eq!(a.count(), 4);
        assert!(a
            .summary()
            .starts_with("a for `m`: answered 500; b for `m`: connection failed (refused)"));
    }

    #[test]
    fn a_keys_model_list_holds_for_aliases_and_fallbacks() {
        use crate::config::KeySettings;
        let r = router(
            "openai_clients:
  - {name: cheap, base_url: 'http://h', priority: 5, fallback: forbidden, model_match: {type: keyword, value: cheap}}
  - {name: premium, base_url: 'http://h', priority: 1, model: premium-upstream, model_match: {type: keyword, value: premium}}
  - {name: f, base_url: 'http://h', model_match: {type: exact, value: forbidden}}",
        );
        let key = Arc::new(KeyInfo::new(&KeySettings {
            name: "limited".into(),
            key: crate::secret::Secret::new("sk"),
            models: Some(vec!["cheap*".into()]),
            rpm: None,
            tpm: None,
            budget: None,
            max_concurrent: None,
        }));
        let mut a = Attempts::new(
            "cheap-premium",
            r.candidates("cheap-premium", || None).0,
            3,
            Some(key.clone()),
        );
        assert_eq!(current(&a), "cheap", "premium would send premium-upstream");
        assert_eq!(a.skipped_summary(), "premium would send `premium-upstream`");
        a.begin();
        a.fail(Failure::Status(500));
        assert!(
            !a.advance(&r),
            "the fallback `forbidden` is not on the key's list"
        );
        assert!(a
            .summary()
            .ends_with("f skipped: this key may not use `forbidden`"));
        let only_premium = Attempts::new(
            "cheap-premium",
            r.candidates("premium", || None).0,
            3,
            Some(key),
        );
        assert!(only_premium.is_empty());
        let open = Attempts::new(
            "cheap-premium",
            r.candidates("cheap-premium", || None).0,
            3,
            None,
        );
        assert_eq!(current(&open), "premium");
    }

    #[test]
    fn callers_see_failure_classes_only() {
        let r = router(YAML);
        let mut a = Attempts::new("m", r.candidates("m", || None).0, 0, None);
        a.begin();
        a.fail(Failure::Connect(
            "cannot resolve internal-llm.corp.invalid".into(),
        ));
        a.advance(&r);
        a.begin();
        a.fail(Failure::Status(503));
        assert_eq!(
            a.public_summary(),
            "a for `m`: connection failed; b for `m`: answered 503"
        );
        assert!(a.summary().contains("internal-llm.corp.invalid"));
    }

    #[test]
    fn hops_are_bounded() {
        let r = router(YAML);
        let mut a = Attempts::new("fb", r.candidates("fb", || None).0, 0, None);
        a.fail(Failure::Status(500));
        assert!(!a.has_next() && !a.advance(&r));
    }
}
