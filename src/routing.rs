//! Model -> ordered candidate clients: exact or keyword match, ascending priority, and within the first priority
//! the order its `balance` gives ([`crate::balance::order`]: weighted, least busy, latency or affinity).

pub mod responses_ids;

use foldhash::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::balance::{self, AffinityKey, ClientLoad, Member, Sticky};
use crate::config::{AffinitySettings, Balance, Client, Config, MatchKind};
use crate::health::ClientHealth;

/// A client to try, with the health record that its outcome updates and its load.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub client: Arc<Client>,
    pub health: Arc<ClientHealth>,
    pub load: Arc<ClientLoad>,
}

/// Routing table compiled from a [`Config`]; cheap to query, no locks.
#[derive(Debug)]
pub struct Router {
    /// Clients sorted by (priority, file order).
    clients: Vec<Arc<Client>>,
    /// Passive health, parallel to `clients`; carried over by name from the previous router on reload.
    health: Vec<Arc<ClientHealth>>,
    /// In-flight counts, latency estimates and pick counters, parallel to `clients`; carried over like health.
    loads: Vec<Arc<ClientLoad>>,
    /// Where each conversation went (affinity); kept whole across reloads.
    sticky: Arc<Sticky>,
    affinity: AffinitySettings,
    /// Requests routed: varies the draws and ties of the strategies from request to request.
    routed: AtomicU64,
    /// For every model named by an `exact` rule: every client that matches it (exact or keyword), sorted.
    exact: HashMap<String, Vec<usize>>,
    /// Clients with keyword rules, sorted; scanned for models no exact rule names.
    keyword: Vec<usize>,
}

impl Router {
    pub fn new(config: &Config, previous: Option<&Router>) -> Router {
        let mut clients = config.clients.clone();
        // Stable sort keeps file order among equal priorities.
        clients.sort_by_key(|c| c.priority);
        let keyword: Vec<usize> = (0..clients.len())
            .filter(|&i| clients[i].model_match.kind == MatchKind::Keyword)
            .collect();
        let mut exact = HashMap::default();
        for c in clients
            .iter()
            .filter(|c| c.model_match.kind == MatchKind::Exact)
        {
            for model in &c.model_match.values {
                exact.entry(model.clone()).or_insert_with(|| {
                    (0..clients.len())
                        .filter(|&i| clients[i].model_match.matches(model))
                        .collect::<Vec<_>>()
                });
            }
        }
        let epoch = Instant::now();
        let health = clients
            .iter()
            .map(|c| {
                let h = ClientHealth::new(epoch);
                if let Some(old) = previous.and_then(|p| p.health_of(&c.name)) {
                    h.inherit(old);
                }
                Arc::new(h)
            })
            .collect();
        let loads = clients
            .iter()
            .map(|c| match previous.and_then(|p| p.load_of(&c.name)) {
                // The same load: requests in flight on it count wherever they were routed from.
                Some(old) => Arc::clone(old),
                None => Arc::new(ClientLoad::new(epoch)),
            })
            .collect();
        Router {
            clients,
            health,
            loads,
            sticky: previous.map_or_else(Arc::default, |p| Arc::clone(&p.sticky)),
            affinity: config.routing.affinity.clone(),
            routed: AtomicU64::new(0),
            exact,
            keyword,
        }
    }

    fn health_of(&self, name: &str) -> Option<&ClientHealth> {
        let i = self.clients.iter().position(|c| c.name == name)?;
        Some(&self.health[i])
    }

    fn load_of(&self, name: &str) -> Option<&Arc<ClientLoad>> {
        let i = self.clients.iter().position(|c| c.name == name)?;
        Some(&self.loads[i])
    }

    /// Whether any client serves `model` (health aside); only the tests ask.
    #[cfg(test)]
    pub fn serves(&self, model: &str) -> bool {
        self.exact.contains_key(model)
            || self
                .keyword
                .iter()
                .any(|&i| self.clients[i].model_match.matches(model))
    }

    /// The clients that serve `model`, in the order to try them; empty when none matches.
    /// Clients in a cooldown are left out unless that would leave none (then the last one stays).
    /// The lowest-priority group comes first, in the order its `balance` gives; `key` is asked only when that
    /// balance is `affinity` (it reads the request). The rest follow by priority. Also returns the key used.
    pub fn candidates(
        &self,
        model: &str,
        key: impl FnOnce() -> Option<AffinityKey>,
    ) -> (Vec<Candidate>, Option<AffinityKey>) {
        let mut matching: Vec<usize> = match self.exact.get(model) {
            Some(list) => list.clone(),
            None => self
                .keyword
                .iter()
                .copied()
                .filter(|&i| self.clients[i].model_match.matches(model))
                .collect(),
        };
        let last = matching.last().copied();
        matching.retain(|&i| !self.health[i].is_cooling());
        if let (true, Some(last)) = (matching.is_empty(), last) {
            matching.push(last);
        }
        let Some(&first) = matching.first() else {
            return (Vec::new(), None);
        };
        let (top, balance) = (self.clients[first].priority, self.clients[first].balance);
        let group = matching
            .iter()
            .take_while(|&&i| self.clients[i].priority == top)
            .count();
        let key = (balance == Balance::Affinity).then(key).flatten();
        let tier: Vec<Member<'_>> = matching[..group]
            .iter()
            .map(|&i| Member {
                index: i,
                name: &self.clients[i].name,
                weight: self.clients[i].weight,
                load: &self.loads[i],
                available: true,
            })
            .collect();
        let rr = self.routed.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let ordered = balance::order(balance, &tier, key, &self.sticky, &self.affinity, now, rr);
        let order = ordered.into_iter().chain(matching[group..].iter().copied());
        let candidates = order
            .map(|i| Candidate {
                client: self.clients[i].clone(),
                health: self.health[i].clone(),
                load: self.loads[i].clone(),
            })
            .collect();
        (candidates, key)
    }

    /// The conversation `key` was answered by `client`: it stays there (affinity), also after a failover.
    pub fn stick(&self, key: AffinityKey, client: &str) {
        self.sticky
            .record(key, client, self.affinity.ttl, Instant::now());
    }

    /// The client called `name`, as the one candidate of a request that must reach it (a stored response's).
    pub fn candidate_named(&self, name: &str) -> Option<Candidate> {
        let i = self.clients.iter().position(|c| c.name == name)?;
        Some(Candidate {
            client: self.clients[i].clone(),
            health: self.health[i].clone(),
            load: self.loads[i].clone(),
        })
    }

    /// Every client, sorted by priority (file order among equals).
    pub fn clients(&self) -> &[Arc<Client>] {
        &self.clients
    }

    /// Every client with its health and load, in [`Router::clients`] order (the admin page's backends).
    pub fn states(&self) -> impl Iterator<Item = (&Arc<Client>, &ClientHealth, &ClientLoad)> {
        self.clients
            .iter()
            .zip(&self.health)
            .zip(&self.loads)
            .map(|((c, h), l)| (c, h.as_ref(), l.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn router(yaml: &str) -> Router {
        let cfg = Config::parse(yaml, &|_| None).unwrap();
        Router::new(&cfg, None)
    }

    fn names(r: &Router, model: &str) -> Vec<String> {
        r.candidates(model, || None)
            .0
            .iter()
            .map(|c| c.client.name.clone())
            .collect()
    }

    const BASE: &str = "base_url: http://127.0.0.1:1";

    #[test]
    fn exact_and_keyword_by_priority() {
        let r = router(&format!(
            "openai_clients:
  - {{name: kw, {BASE}, priority: 2, model_match: {{type: keyword, value: [gpt-4, gpt-3.5]}}}}
  - {{name: ex, {BASE}, priority: 1, model_match: {{type: exact, value: gpt-4o}}}}
  - {{name: low, {BASE}, priority: 9, model_match: {{type: keyword, value: gpt}}}}"
        ));
        assert_eq!(names(&r, "gpt-4o"), ["ex", "kw", "low"]);
        assert_eq!(names(&r, "gpt-4-turbo"), ["kw", "low"]);
        assert_eq!(names(&r, "gpt-j"), ["low"]);
        assert!(names(&r, "claude").is_empty());
    }

    #[test]
    fn equal_priority_round_robin_by_weight() {
        let r = router(&format!(
            "openai_clients:
  - {{name: a, {BASE}, priority: 1, weight: 2, model_match: {{type: exact, value: m}}}}
  - {{name: b, {BASE}, priority: 1, model_match: {{type: exact, value: m}}}}
  - {{name: c, {BASE}, priority: 5, model_match: {{type: exact, value: m}}}}"
        ));
        let mut firsts = Vec::new();
        for _ in 0..9 {
            let n = names(&r, "m");
            assert_eq!(n.len(), 3);
            assert_eq!(n[2], "c");
            firsts.push(n[0].clone());
        }
        assert_eq!(firsts.iter().filter(|n| *n == "a").count(), 6);
        assert_eq!(firsts.iter().filter(|n| *n == "b").count(), 3);
        assert_eq!(firsts[..3], ["a", "b", "a"]);
    }

    #[test]
    fn equal_weights_alternate() {
        let r = router(&format!(
            "openai_clients:
  - {{name: a, {BASE}, model_match: {{type: keyword, value: m}}}}
  - {{name: b, {BASE}, model_match: {{type: keyword, value: m}}}}"
        ));
        let firsts: Vec<_> = (0..4).map(|_| names(&r, "m1")[0].clone()).collect();
        assert_eq!(firsts, ["a", "b", "a", "b"]);
    }

    #[test]
    fn cooling_clients_are_skipped_but_never_all() {
        use crate::config::HealthPolicy;
        let yaml = format!(
            "openai_clients:
  - {{name: a, {BASE}, priority: 1, model_match: {{type: exact, value: m}}}}
  - {{name: b, {BASE}, priority: 2, model_match: {{type: exact, value: m}}}}"
        );
        let r = router(&yaml);
        let policy = HealthPolicy {
            failure_threshold: 1,
            cooldown: std::time::Duration::from_secs(60),
        };
        r.candidates("m", || None).0[0]
            .health
            .record_failure(policy, None);
        assert_eq!(names(&r, "m"), ["b"]);
        r.candidates("m", || None).0[0]
            .health
            .record_failure(policy, None);
        assert_eq!(
            names(&r, "m"),
            ["b"],
            "the last candidate stays even when cooling"
        );
        // A reload keeps the health of clients by name.
        let cfg = Config::parse(&yaml, &|_| None).unwrap();
        let reloaded = Router::new(&cfg, Some(&r));
        assert_eq!(names(&reloaded, "m"), ["b"]);
        assert!(reloaded.serves("m") && !reloaded.serves("x"));
    }
}
