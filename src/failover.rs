//! The order of attempts for one request: the model's candidates, then the fallback model's, hop by hop.

use std::fmt;

use crate::routing::{Candidate, Router};

/// Statuses that move a request on to the next candidate unless the config says otherwise.
pub const DEFAULT_RETRY_ON: [u16; 9] = [401, 403, 404, 408, 429, 500, 502, 503, 504];

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
}

impl Attempts {
    pub fn new(model: &str, candidates: Vec<Candidate>, max_hops: u32) -> Self {
        Attempts {
            model: model.to_owned(),
            fallback_model: None,
            queue: candidates,
            pos: 0,
            started: 0,
            hops: 0,
            max_hops,
            next_fallback: None,
            tried: Vec::new(),
        }
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
            let queue = router.candidates(&model);
            self.model = model.clone();
            self.fallback_model = Some(model);
            if !queue.is_empty() {
                self.queue = queue;
                self.pos = 0;
                return true;
            }
        }
        false
    }

    /// `name (why); name (why)` for the final error message.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .tried
            .iter()
            .map(|t| format!("{} for `{}`: {}", t.client, t.model, t.failure))
            .collect();
        parts.join("; ")
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
        let mut a = Attempts::new("m", r.candidates("m"), 3);
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
    fn hops_are_bounded() {
        let r = router(YAML);
        let mut a = Attempts::new("fb", r.candidates("fb"), 0);
        a.fail(Failure::Status(500));
        assert!(!a.has_next() && !a.advance(&r));
    }
}
