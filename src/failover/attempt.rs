//! The life of a request's attempts as one state machine: try, fail, retry a stale connection, move on, give up.

use std::time::Duration;

use super::{Attempts, Failure};
use crate::routing::{Candidate, Router};

/// Where the request's attempts stand. Each proxy phase reports what it saw; the step says what comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Routed; no connection tried yet.
    Ready,
    /// The current candidate is being tried (connecting, sending, waiting for its answer's head).
    /// `reconnected`: this is already the one retry on a new connection after a stale pooled one.
    Trying { reconnected: bool },
    /// A pooled connection the backend had closed: the same candidate once more, on a new connection.
    RetrySame,
    /// The current attempt failed. `more`: another attempt may follow; `on_status`: decided from the
    /// answer's status, before any byte of it reached the caller.
    Failed { more: bool, on_status: bool },
    /// The backend's answer is being passed on; no failover from here.
    Answered,
    /// Nothing is left to try.
    GaveUp,
}

/// What the proxy saw when an attempt broke after it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Broke {
    /// Nothing of the answer reached the caller and the request body can be sent again.
    pub untouched: bool,
    /// The caller went away.
    pub caller_gone: bool,
    /// The attempt ran on a pooled connection and failed as a connection the backend closed does.
    pub stale_connection: bool,
}

/// What to do about a broken attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Try again (the same candidate, or the next one when the attempt was counted as failed).
    Retry,
    /// Stop here: the error is the request's.
    Stop,
    /// The attempt failed for a reason the caller must count (health, metrics, log): call
    /// [`Attempt::fail`] with it, which decides.
    Count,
}

/// One request's attempts: the candidates in order ([`Attempts`]) and the step of the current one.
#[derive(Debug)]
pub struct Attempt {
    order: Attempts,
    step: Step,
}

impl Attempt {
    pub fn new(order: Attempts) -> Self {
        Attempt {
            order,
            step: Step::Ready,
        }
    }

    pub fn step(&self) -> Step {
        self.step
    }

    /// The candidate order, with what was tried and skipped.
    pub fn order(&self) -> &Attempts {
        &self.order
    }

    /// The candidate of the current attempt.
    pub fn current(&self) -> Option<&Candidate> {
        self.order.current()
    }

    /// The candidate to connect to now: the same one again after a stale connection, the next one (or a
    /// fallback model's) after a failure, the first one at the start. `None`: nothing left (given up).
    pub fn next(&mut self, router: &Router) -> Option<&Candidate> {
        match self.step {
            Step::RetrySame => {
                self.step = Step::Trying { reconnected: true };
            }
            Step::Failed { more, .. } => {
                if !(more && self.order.advance(router)) {
                    self.step = Step::GaveUp;
                    return None;
                }
                self.begin();
            }
            Step::GaveUp => return None,
            Step::Ready | Step::Trying { .. } | Step::Answered => self.begin(),
        }
        self.order.current()
    }

    fn begin(&mut self) {
        self.order.begin();
        self.step = Step::Trying { reconnected: false };
    }

    /// Counts the current attempt's failure; returns whether another attempt may follow. A status failure
    /// (in `retry_on`) is decided from the answer's head, before any byte of it reached the caller.
    pub fn fail(&mut self, failure: Failure) -> bool {
        let on_status = matches!(failure, Failure::Status(_));
        self.order.fail(failure);
        let more = self.order.has_next();
        self.step = Step::Failed { more, on_status };
        more
    }

    /// The backend's answer is accepted and passed on.
    pub fn answered(&mut self) {
        self.step = Step::Answered;
    }

    /// What to do when the attempt broke after it was sent (Pingora's `error_while_proxy`).
    pub fn broke(&mut self, seen: Broke) -> Verdict {
        match self.step {
            // Failover was decided from the status; the failure is already counted.
            Step::Failed {
                more,
                on_status: true,
            } => verdict(seen.untouched && more),
            // Bytes reached the caller, or the caller is gone: no failover from here.
            _ if !seen.untouched || seen.caller_gone => Verdict::Stop,
            Step::Trying { reconnected: false } if seen.stale_connection => {
                self.step = Step::RetrySame;
                Verdict::Retry
            }
            _ => Verdict::Count,
        }
    }

    /// Number of attempts started so far (the current one included).
    pub fn count(&self) -> u32 {
        self.order.count()
    }

    /// The model being served now: the requested one, or the fallback the request moved on to.
    pub fn model(&self) -> &str {
        self.order.model()
    }

    /// The model to write into the body when this attempt serves a fallback.
    pub fn fallback_model(&self) -> Option<&str> {
        self.order.fallback_model()
    }
}

fn verdict(retry: bool) -> Verdict {
    match retry {
        true => Verdict::Retry,
        false => Verdict::Stop,
    }
}

/// The pause a backend asked for (`Retry-After`), read only for a 429; other statuses' headers are not read.
pub fn pause(status: u16, asked: impl FnOnce() -> Option<Duration>) -> Option<Duration> {
    (status == 429).then(asked).flatten()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;

    const YAML: &str = "openai_clients:
  - {name: a, base_url: 'http://h', priority: 1, fallback: fb, model_match: {type: exact, value: m}}
  - {name: b, base_url: 'http://h', priority: 2, model_match: {type: exact, value: m}}
  - {name: f, base_url: 'http://h', model_match: {type: exact, value: fb}}";

    fn setup() -> (Router, Attempt) {
        let router = Router::new(&Config::parse(YAML, &|_| None).unwrap(), None);
        let order = Attempts::new("m", router.candidates("m", || None).0, 1, None);
        (router, Attempt::new(order))
    }

    fn name(c: Option<&Candidate>) -> &str {
        c.map_or("-", |c| c.client.name.as_str())
    }

    const UNTOUCHED: Broke = Broke {
        untouched: true,
        caller_gone: false,
        stale_connection: false,
    };
    const STALE: Broke = Broke {
        stale_connection: true,
        ..UNTOUCHED
    };

    #[test]
    fn ready_then_trying_the_first_candidate() {
        let (r, mut a) = setup();
        assert_eq!(a.step(), Step::Ready);
        assert_eq!(name(a.next(&r)), "a");
        assert_eq!(a.step(), Step::Trying { reconnected: false });
        assert_eq!(a.count(), 1);
    }

    #[test]
    fn a_failure_moves_to_the_next_candidate_then_the_fallback_then_gives_up() {
        let (r, mut a) = setup();
        a.next(&r);
        assert!(a.fail(Failure::Connect("refused".into())));
        assert_eq!(
            a.step(),
            Step::Failed {
                more: true,
                on_status: false
            }
        );
        assert_eq!(name(a.next(&r)), "b");
        assert!(a.fail(Failure::Timeout("read".into())));
        assert_eq!(name(a.next(&r)), "f");
        assert_eq!(a.fallback_model(), Some("fb"));
        assert!(!a.fail(Failure::Status(500)));
        assert_eq!(a.next(&r).map(|_| ()), None);
        assert_eq!(a.step(), Step::GaveUp);
        assert_eq!(a.next(&r).map(|_| ()), None, "given up stays given up");
        assert_eq!(a.count(), 3);
    }

    #[test]
    fn a_stale_pooled_connection_retries_the_same_candidate_once() {
        let (r, mut a) = setup();
        a.next(&r);
        assert_eq!(a.broke(STALE), Verdict::Retry);
        assert_eq!(a.step(), Step::RetrySame);
        assert_eq!(name(a.next(&r)), "a", "the same candidate");
        assert_eq!(a.count(), 1, "the same attempt, on a new connection");
        assert_eq!(a.step(), Step::Trying { reconnected: true });
        assert_eq!(a.broke(STALE), Verdict::Count, "only once");
        a.fail(Failure::Connect("closed".into()));
        assert_eq!(name(a.next(&r)), "b");
        assert_eq!(
            a.broke(STALE),
            Verdict::Retry,
            "a new candidate gets its own retry"
        );
    }

    #[test]
    fn a_status_failure_retries_only_while_nothing_reached_the_caller() {
        let (r, mut a) = setup();
        a.next(&r);
        assert!(a.fail(Failure::Status(503)));
        assert_eq!(a.broke(UNTOUCHED), Verdict::Retry);
        let touched = Broke {
            untouched: false,
            ..UNTOUCHED
        };
        assert_eq!(a.broke(touched), Verdict::Stop);
        assert_eq!(a.order().tried.len(), 1, "counted once");
    }

    #[test]
    fn the_last_status_failure_stops() {
        let (r, mut a) = setup();
        a.next(&r);
        a.fail(Failure::Status(500));
        a.next(&r);
        a.fail(Failure::Status(500));
        a.next(&r);
        assert!(!a.fail(Failure::Status(500)));
        assert_eq!(a.broke(UNTOUCHED), Verdict::Stop);
    }

    #[test]
    fn after_bytes_reached_the_caller_or_it_left_there_is_no_failover() {
        let (r, mut a) = setup();
        a.next(&r);
        a.answered();
        let gone = Broke {
            caller_gone: true,
            ..STALE
        };
        assert_eq!(a.broke(gone), Verdict::Stop);
        let touched = Broke {
            untouched: false,
            ..STALE
        };
        assert_eq!(a.broke(touched), Verdict::Stop);
        assert_eq!(a.broke(UNTOUCHED), Verdict::Count);
    }

    #[test]
    fn an_answered_attempt_is_not_retried_on_a_stale_connection() {
        let (r, mut a) = setup();
        a.next(&r);
        a.answered();
        assert_eq!(a.broke(STALE), Verdict::Count);
    }

    #[test]
    fn retry_after_is_read_for_429_only() {
        let asked = || Some(Duration::from_secs(3));
        assert_eq!(pause(429, asked), Some(Duration::from_secs(3)));
        assert_eq!(pause(503, asked), None);
    }
}
