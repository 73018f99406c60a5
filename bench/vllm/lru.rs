//! bench-vllm's prefix cache: a set of prefix hashes that forgets the least recently used beyond its capacity.

use std::collections::{BTreeMap, HashMap};

/// An LRU set of prefix hashes: a hash map to a use stamp, plus the stamps in order.
pub struct Lru {
    capacity: usize,
    clock: u64,
    stamp: HashMap<u64, u64>,
    order: BTreeMap<u64, u64>,
}

impl Lru {
    pub fn new(capacity: usize) -> Lru {
        Lru {
            capacity,
            clock: 0,
            stamp: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    pub fn contains(&self, h: u64) -> bool {
        self.stamp.contains_key(&h)
    }

    /// Inserts `h` or marks it used now; evicts the least recently used beyond the capacity.
    pub fn touch(&mut self, h: u64) {
        self.clock += 1;
        if let Some(old) = self.stamp.insert(h, self.clock) {
            self.order.remove(&old);
        }
        self.order.insert(self.clock, h);
        while self.stamp.len() > self.capacity {
            let Some((_, victim)) = self.order.pop_first() else {
                break;
            };
            self.stamp.remove(&victim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut lru = Lru::new(2);
        lru.touch(1);
        lru.touch(2);
        lru.touch(1);
        lru.touch(3);
        assert!(lru.contains(1) && lru.contains(3) && !lru.contains(2));
    }
}
