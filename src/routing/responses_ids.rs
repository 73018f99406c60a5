//! Which client served each Responses API id this gateway node passed on, so that `GET`/`DELETE
//! /v1/responses/{id}` (and `/cancel`, `/input_items`) reach that backend: a bounded in-memory map, oldest
//! forgotten first, per node.
//!
//! Sharded by the id's hash: a request takes one shard's lock for one hash map insert or lookup, never a
//! global one. Each shard holds at most its share of the entries and of the bytes; an insert past either
//! evicts that shard's oldest entries.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};

/// Ids remembered at most, by default.
pub const DEFAULT_ENTRIES: usize = 100_000;
/// Bytes of ids, client names and models remembered at most, by default (with a per-entry overhead).
pub const DEFAULT_BYTES: usize = 32 << 20;
/// The longest id remembered; a longer one is no id a backend made.
pub const MAX_ID_BYTES: usize = 128;
/// The longest model name kept with an id (longer ones are cut; a key's check then fails: 404).
const MAX_MODEL_BYTES: usize = 256;
/// What an entry costs besides its strings: the map's and the queue's slots, the `Arc`, the counters.
const ENTRY_OVERHEAD: usize = 96;
const SHARDS: usize = 32;

/// Who made a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// This client's backend, which stores it.
    Client(Arc<str>),
    /// The gateway, translating a chat backend's answer: nothing stores it.
    Translated,
}

/// What is known of a response id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub origin: Origin,
    /// The model the caller asked for when the response was made (its key must still be allowed it).
    pub model: Arc<str>,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Box<str>, (u64, Served)>,
    /// Insertion order: (sequence, id); an id inserted again leaves a stale slot, skipped when evicted.
    order: VecDeque<(u64, Box<str>)>,
    bytes: usize,
    seq: u64,
}

/// The map, shared by every request of the node (kept across reloads).
#[derive(Debug)]
pub struct ResponseIds {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    per_shard_entries: usize,
    per_shard_bytes: usize,
}

impl Default for ResponseIds {
    fn default() -> Self {
        ResponseIds::new(DEFAULT_ENTRIES, DEFAULT_BYTES)
    }
}

/// An id a backend could have made: 1 to [`MAX_ID_BYTES`] bytes of `[A-Za-z0-9_-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn cost(id: &str, served: &Served) -> usize {
    let client = match &served.origin {
        Origin::Client(name) => name.len(),
        Origin::Translated => 0,
    };
    // The id is held twice: in the map and in the order queue.
    2 * id.len() + client + served.model.len() + ENTRY_OVERHEAD
}

impl ResponseIds {
    /// Remembers at most about `entries` ids and `bytes` bytes (each split evenly over the shards).
    pub fn new(entries: usize, bytes: usize) -> Self {
        ResponseIds {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            per_shard_entries: entries.div_ceil(SHARDS).max(1),
            per_shard_bytes: bytes.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, id: &str) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(id) as usize) % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that `origin` made the response `id` for `model`. An id that is not [`valid_id`] is ignored
    /// (false).
    pub fn remember(&self, id: &str, origin: Origin, model: &str) -> bool {
        if !valid_id(id) {
            return false;
        }
        let model = crate::escape::cut(model, MAX_MODEL_BYTES);
        let served = Served {
            origin,
            model: Arc::from(model),
        };
        let size = cost(id, &served);
        let mut shard = self.shard(id);
        shard.seq += 1;
        let seq = shard.seq;
        if let Some((_, old)) = shard.map.insert(Box::from(id), (seq, served)) {
            shard.bytes -= cost(id, &old);
        }
        shard.bytes += size;
        shard.order.push_back((seq, Box::from(id)));
        while shard.map.len() > self.per_shard_entries || shard.bytes > self.per_shard_bytes {
            if !shard.evict_oldest() {
                break;
            }
        }
        // Ids inserted again leave stale slots; keep the queue within twice the live entries.
        if shard.order.len() > 2 * shard.map.len() + 16 {
            let Shard { map, order, .. } = &mut *shard;
            order.retain(|(seq, id)| map.get(id).is_some_and(|(s, _)| s == seq));
        }
        true
    }

    /// What is known of the response `id` (nothing for an id that is not [`valid_id`]).
    pub fn lookup(&self, id: &str) -> Option<Served> {
        if !valid_id(id) {
            return None;
        }
        self.shard(id).map.get(id).map(|(_, s)| s.clone())
    }

    /// Forgets `id` (its backend deleted it).
    pub fn forget(&self, id: &str) {
        if !valid_id(id) {
            return;
        }
        let mut shard = self.shard(id);
        if let Some((_, old)) = shard.map.remove(id) {
            shard.bytes -= cost(id, &old);
        }
    }

    /// Ids remembered now (the tests' view).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }
}

impl Shard {
    /// Forgets the oldest live entry; false when none is left.
    fn evict_oldest(&mut self) -> bool {
        while let Some((seq, id)) = self.order.pop_front() {
            let live = self.map.get(&id).is_some_and(|(s, _)| *s == seq);
            if live {
                if let Some((_, old)) = self.map.remove(&id) {
                    self.bytes -= cost(&id, &old);
                }
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn client(name: &str) -> Origin {
        Origin::Client(Arc::from(name))
    }

    #[test]
    fn remembers_who_served_an_id_and_for_which_model() {
        let ids = ResponseIds::default();
        assert!(ids.remember("resp_abc-1", client("a"), "gpt-x"));
        assert!(ids.remember("resp_t", Origin::Translated, "m"));
        let got = ids.lookup("resp_abc-1").unwrap();
        assert_eq!(got.origin, client("a"));
        assert_eq!(&*got.model, "gpt-x");
        assert_eq!(ids.lookup("resp_t").unwrap().origin, Origin::Translated);
        assert_eq!(ids.lookup("resp_other"), None);
        ids.forget("resp_abc-1");
        assert_eq!(ids.lookup("resp_abc-1"), None);
    }

    #[test]
    fn ids_that_no_backend_makes_are_ignored() {
        let ids = ResponseIds::default();
        let long = "r".repeat(MAX_ID_BYTES + 1);
        for bad in [
            "",
            "resp 1",
            "resp/1",
            "resp%2F",
            "rèsp",
            "a.b",
            long.as_str(),
        ] {
            assert!(!ids.remember(bad, client("a"), "m"), "{bad:?}");
            assert_eq!(ids.lookup(bad), None);
        }
        assert!(ids.remember(&"r".repeat(MAX_ID_BYTES), client("a"), "m"));
        assert_eq!(ids.len(), 1);
    }

    #[test]
    fn the_oldest_go_first_past_the_entry_cap() {
        // One entry per shard: 32 in all; each shard keeps its newest.
        let ids = ResponseIds::new(SHARDS, usize::MAX);
        for i in 0..10_000 {
            ids.remember(&format!("resp_{i}"), client("a"), "m");
        }
        assert!(ids.len() <= SHARDS, "{}", ids.len());
        assert!(ids.lookup("resp_9999").is_some());
        assert!(ids.lookup("resp_0").is_none());
        for shard in &ids.shards {
            let shard = shard.lock().unwrap();
            assert!(shard.order.len() <= 2 * shard.map.len() + 16);
        }
    }

    #[test]
    fn the_byte_cap_holds_whatever_the_sizes() {
        let cap = SHARDS * 2_000;
        let ids = ResponseIds::new(usize::MAX, cap);
        let model = "m".repeat(1_000);
        for i in 0..5_000 {
            ids.remember(
                &format!("resp_{i}_{}", "x".repeat(i % 100)),
                client("a"),
                &model,
            );
        }
        for shard in &ids.shards {
            let shard = shard.lock().unwrap();
            assert!(shard.bytes <= cap / SHARDS, "{}", shard.bytes);
            let live: usize = shard.map.iter().map(|(id, (_, s))| cost(id, s)).sum();
            assert_eq!(live, shard.bytes, "bytes are counted exactly");
        }
        assert!(ids.len() > 0);
    }

    #[test]
    fn an_id_inserted_again_is_counted_once_and_evicted_by_its_latest_insert() {
        let ids = ResponseIds::new(SHARDS * 2, usize::MAX);
        for _ in 0..1_000 {
            ids.remember("resp_same", client("a"), "m");
        }
        ids.remember("resp_same", client("b"), "m");
        assert_eq!(ids.len(), 1);
        assert_eq!(ids.lookup("resp_same").unwrap().origin, client("b"));
        let shard = ids.shard("resp_same");
        assert_eq!(
            shard.bytes,
            cost("resp_same", &ids_entry(&shard, "resp_same"))
        );
        assert!(shard.order.len() <= 2 * shard.map.len() + 16);
    }

    fn ids_entry(shard: &Shard, id: &str) -> Served {
        shard.map.get(id).unwrap().1.clone()
    }
}
