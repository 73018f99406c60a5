//! Model -> ordered candidate clients: exact or keyword match, ascending priority, weighted balance within a priority.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Client, Config, MatchKind};
use crate::health::ClientHealth;

/// A client to try, with the health record that its outcome updates.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub client: Arc<Client>,
    pub health: Arc<ClientHealth>,
}

/// Routing table compiled from a [`Config`]; cheap to query, no locks.
#[derive(Debug)]
pub struct Router {
    /// Clients sorted by (priority, file order).
    clients: Vec<Arc<Client>>,
    /// Requests each client was picked first for; balances clients of equal priority by weight.
    picked: Vec<AtomicU64>,
    /// Passive health, parallel to `clients`; carried over by name from the previous router on reload.
    health: Vec<Arc<ClientHealth>>,
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
        let mut exact = HashMap::new();
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
        let picked = clients.iter().map(|_| AtomicU64::new(0)).collect();
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
        Router {
            clients,
            picked,
            health,
            exact,
            keyword,
        }
    }

    fn health_of(&self, name: &str) -> Option<&ClientHealth> {
        let i = self.clients.iter().position(|c| c.name == name)?;
        Some(&self.health[i])
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
    /// The first is chosen among the lowest-priority group by weight; the rest follow by priority.
    pub fn candidates(&self, model: &str) -> Vec<Candidate> {
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
            return Vec::new();
        };
        let top = self.clients[first].priority;
        let group = matching
            .iter()
            .take_while(|&&i| self.clients[i].priority == top)
            .count();
        let chosen = self.pick(&matching[..group]);
        let order = std::iter::once(matching[chosen]).chain(
            matching
                .iter()
                .enumerate()
                .filter(|&(pos, _)| pos != chosen)
                .map(|(_, &i)| i),
        );
        order
            .map(|i| Candidate {
                client: self.clients[i].clone(),
                health: self.health[i].clone(),
            })
            .collect()
    }

    /// Index within `group` of the client furthest below its weighted share; ties go to file order.
    fn pick(&self, group: &[usize]) -> usize {
        if group.len() == 1 {
            self.picked[group[0]].fetch_add(1, Ordering::Relaxed);
            return 0;
        }
        let mut best = 0;
        let mut best_load = (u64::MAX, 1u64);
        for (pos, &i) in group.iter().enumerate() {
            let load = (
                self.picked[i].load(Ordering::Relaxed),
                u64::from(self.clients[i].weight),
            );
            // load.0 / load.1 < best.0 / best.1, compared without division.
            if u128::from(load.0) * u128::from(best_load.1)
                < u128::from(best_load.0) * u128::from(load.1)
            {
                best = pos;
                best_load = load;
            }
        }
        self.picked[group[best]].fetch_add(1, Ordering::Relaxed);
        best
    }

    /// Every client, sorted by priority (file order among equals).
    pub fn clients(&self) -> &[Arc<Client>] {
        &self.clients
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
        r.candidates(model)
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
        r.candidates("m")[0].health.record_failure(policy, None);
        assert_eq!(names(&r, "m"), ["b"]);
        r.candidates("m")[0].health.record_failure(policy, None);
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
