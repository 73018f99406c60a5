//! Where each conversation went: affinity key -> client name, forgotten `ttl` after its last request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::key::AffinityKey;

/// Conversations remembered at most, by default (about 10 MB).
pub const DEFAULT_STICKY_ENTRIES: usize = 100_000;
/// Locks: a request takes one, for a hash map lookup.
const SHARDS: usize = 64;

#[derive(Debug)]
struct Entry {
    client: Arc<str>,
    last: Instant,
}

/// The placement table, shared by every request (and kept across reloads by the router).
#[derive(Debug)]
pub struct Sticky {
    shards: Vec<Mutex<HashMap<u64, Entry>>>,
    per_shard: usize,
}

impl Default for Sticky {
    fn default() -> Self {
        Sticky::new(DEFAULT_STICKY_ENTRIES)
    }
}

impl Sticky {
    /// Remembers at most about `capacity` conversations; beyond, the expired and then the oldest go.
    pub fn new(capacity: usize) -> Self {
        Sticky {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: AffinityKey) -> &Mutex<HashMap<u64, Entry>> {
        // The key is a mixed hash: its low bits are as good as any.
        &self.shards[(key.0 as usize) % SHARDS]
    }

    /// The client the conversation last went to, unless that was more than `ttl` ago.
    pub fn lookup(&self, key: AffinityKey, ttl: Duration, now: Instant) -> Option<Arc<str>> {
        let shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = shard.get(&key.0)?;
        (now.saturating_duration_since(entry.last) <= ttl).then(|| Arc::clone(&entry.client))
    }

    /// The conversation went to `client` now (the proxy calls this again when another candidate than the
    /// first answered, so the conversation stays where its cache now is).
    pub fn record(&self, key: AffinityKey, client: &str, ttl: Duration, now: Instant) {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = shard.get_mut(&key.0) {
            entry.last = now;
            if *entry.client != *client {
                entry.client = Arc::from(client);
            }
            return;
        }
        if shard.len() >= self.per_shard {
            // Full: the expired go, else the oldest eighth at once, so that a flood of new conversations
            // (callers choose their keys) pays one scan per eighth of a shard, not one per request.
            shard.retain(|_, e| now.saturating_duration_since(e.last) <= ttl);
            if shard.len() >= self.per_shard {
                let mut times: Vec<Instant> = shard.values().map(|e| e.last).collect();
                let eighth = times.len() / 8;
                let (_, cut, _) = times.select_nth_unstable(eighth);
                let cut = *cut;
                shard.retain(|_, e| e.last > cut);
            }
        }
        shard.insert(
            key.0,
            Entry {
                client: Arc::from(client),
                last: now,
            },
        );
    }

    /// Conversations remembered (expired ones included until they are swept).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
