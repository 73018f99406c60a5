//! A node's grants: admissions of a busy key counted in Redis ahead of its requests, made here without a call until Redis's second ends.
//!
//! A key with an rpm of at least [`MIN_RPM`] (and no concurrency limit or budget, which need each request
//! known by its id) asks, with an admission, for `want` more: `admit.lua` counts them with it, in the same
//! second, when the rpm leaves room (an eighth of what is left at most; none once the tokens window is half
//! full, as tokens arrive after their requests; none in the second's last tenth) and answers how many it
//! granted. The key's requests on this node are then admitted from the grant, with no call, until that second
//! ends; what is left then is given back (that second's count lowered). So Redis's count never exceeds the rpm
//! and each request is counted in the second it was admitted in, as one call per request would; other nodes
//! see a grant's leftover as used for the rest of its second at most. `want` follows the key's rate here:
//! doubled when a grant runs out before its second ends, the last grant's rate when it ends.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::keys::Keys;
use super::script::Answer;
use super::updates::Op;
use crate::money::Usd;
use crate::ratelimit::store::{Ask, Limits, Verdict};
use crate::ratelimit::Quota;

/// Keys with a smaller rpm are checked in Redis at every request: exact, and at most rpm/60 calls a second.
pub const MIN_RPM: u32 = 1000;
/// The most one grant asks for (and never more than a sixteenth of the rpm).
const MAX_WANT: u32 = 4096;
/// A grant ends this much before Redis's second does by this node's clock (its answer took time to come).
const MARGIN: Duration = Duration::from_millis(2);
/// A grant shorter than this says too little of the key's rate to size the next one.
const MIN_SPAN: Duration = Duration::from_millis(100);
const SHARDS: usize = 16;

/// One shard's keys.
type Shard = HashMap<Box<str>, Entry>;

/// The grants of one store, by key name, in shards (no lock shared by every key).
pub struct Grants {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::hash::RandomState,
    ids: AtomicU64,
}

#[derive(Default)]
struct Entry {
    /// How many more the next admission asks for.
    want: u32,
    /// An admission asking for a grant is out: the others do not ask meanwhile.
    asking: bool,
    /// When this node last asked Redis for the key.
    last_ask: Option<Instant>,
    grant: Option<Grant>,
}

struct Grant {
    id: u64,
    /// The limits it was granted under (a reload that changes them ends its use).
    limits: Limits,
    /// Redis's second its admissions are counted in.
    second: u64,
    granted: u32,
    left: u32,
    start: Instant,
    end: Instant,
    /// The quota of the admission that took it; each admission from it has one request less left.
    quota: Quota,
}

/// What a grant left unused: `count` admissions counted in Redis's `second`, to be given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub key: String,
    pub second: u64,
    pub count: u32,
}

impl Leftover {
    /// The update that gives it back.
    pub fn undo(&self) -> Op {
        Op::Undo {
            keys: Keys::new(&self.key),
            request_id: String::new(),
            member: String::new(),
            reserved: Usd::ZERO,
            second: Some(self.second),
            count: u64::from(self.count),
        }
    }
}

/// A grant just made: when it ends (by this node's clock) and its id, for the task that ends it.
#[derive(Debug, Clone, Copy)]
pub struct Made {
    pub id: u64,
    pub end: Instant,
}

impl Default for Grants {
    fn default() -> Self {
        Grants::new()
    }
}

impl Grants {
    pub fn new() -> Grants {
        Grants {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::hash::RandomState::new(),
            ids: AtomicU64::new(0),
        }
    }

    /// Whether `ask`'s key may be admitted from grants.
    pub fn eligible(ask: &Ask<'_>) -> bool {
        let limits = ask.limits;
        limits.max_concurrent.is_none()
            && ask.budget.is_none()
            && limits.rpm.is_some_and(|rpm| rpm >= MIN_RPM)
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// An admission from the key's grant, when it has one for these limits that neither ended nor ran out.
    pub fn take(&self, ask: &Ask<'_>, now: Instant) -> Option<Verdict> {
        if !Grants::eligible(ask) {
            return None;
        }
        let mut shard = self.shard(ask.key);
        let grant = shard.get_mut(ask.key)?.grant.as_mut()?;
        if grant.left == 0 || now >= grant.end || grant.limits != ask.limits {
            return None;
        }
        grant.left -= 1;
        let mut quota = grant.quota.clone();
        let used = grant.granted - grant.left;
        quota.remaining_requests = quota.remaining_requests.map(|r| r.saturating_sub(used));
        Some(Verdict::Allow {
            quota,
            budget_left: None,
        })
    }

    /// How many more this admission (which found no grant to take) asks for; 0 for none. A non-zero answer
    /// marks the key as asking until [`Grants::done`].
    pub fn want(&self, ask: &Ask<'_>, now: Instant) -> u32 {
        if !Grants::eligible(ask) {
            return 0;
        }
        let mut shard = self.shard(ask.key);
        let entry = match shard.get_mut(ask.key) {
            Some(entry) => entry,
            None => shard.entry(ask.key.into()).or_default(),
        };
        if entry.asking {
            return 0;
        }
        let ran_out = entry
            .grant
            .as_ref()
            .is_some_and(|g| g.left == 0 && now < g.end);
        let again = entry
            .last_ask
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
        if ran_out {
            entry.want = entry.want.saturating_mul(2);
        }
        if ran_out || (again && entry.grant.is_none()) {
            entry.want = entry.want.clamp(1, cap(ask.limits));
        }
        entry.last_ask = Some(now);
        if entry.want == 0 {
            return 0;
        }
        entry.asking = true;
        entry.want
    }

    /// The asking admission of `key` has its answer (or none will come).
    pub fn done(&self, key: &str) {
        if let Some(entry) = self.shard(key).get_mut(key) {
            entry.asking = false;
        }
    }

    /// Keeps what `answer` granted (its `granted` admissions, in Redis's second of `answer.now`) for `ask`'s
    /// key, with `quota` (the admission's own), `received` being when the answer came. Returns the grant made
    /// and what a grant it replaces left unused.
    pub fn keep(
        &self,
        ask: &Ask<'_>,
        answer: &Answer,
        quota: &Quota,
        received: Instant,
    ) -> (Option<Made>, Option<Leftover>) {
        if answer.granted == 0 {
            return (None, None);
        }
        let to_second_end = Duration::from_secs(1)
            .saturating_sub(Duration::from_nanos(answer.now.subsec_nanos().into()));
        let end = received + to_second_end.saturating_sub(MARGIN);
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(ask.key);
        let entry = match shard.get_mut(ask.key) {
            Some(entry) => entry,
            None => shard.entry(ask.key.into()).or_default(),
        };
        let grant = Grant {
            id,
            limits: ask.limits,
            second: answer.now.as_secs(),
            granted: answer.granted,
            left: answer.granted,
            start: received,
            end,
            quota: quota.clone(),
        };
        let replaced = entry.grant.replace(grant);
        let leftover = replaced.and_then(|old| old.leftover(ask.key));
        (Some(Made { id, end }), leftover)
    }

    /// Ends the grant `id` of `key` (its second is over), sizing the key's next ask by its rate; returns what
    /// it left unused. Nothing when another grant replaced it.
    pub fn expire(&self, key: &str, id: u64) -> Option<Leftover> {
        let mut shard = self.shard(key);
        let entry = shard.get_mut(key)?;
        if entry.grant.as_ref().is_none_or(|g| g.id != id) {
            return None;
        }
        let grant = entry.grant.take()?;
        let span = grant.end.saturating_duration_since(grant.start);
        if span >= MIN_SPAN {
            let used = f64::from(grant.granted - grant.left);
            let rate = (used / span.as_secs_f64() * 1.25).ceil();
            entry.want = (rate as u32).min(cap(grant.limits));
        }
        grant.leftover(key)
    }

    /// Takes every grant (the store is stopping), with what each left unused.
    pub fn drain(&self) -> Vec<Leftover> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for (key, entry) in shard.iter_mut() {
                out.extend(entry.grant.take().and_then(|g| g.leftover(key)));
            }
        }
        out
    }

    /// Forgets the keys not in `keep` (a reload removed them), with what their grants left unused.
    pub fn release(&self, keep: &[&str]) -> Vec<Leftover> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.retain(|key, entry| {
                let kept = keep.contains(&&**key);
                if !kept {
                    out.extend(entry.grant.take().and_then(|g| g.leftover(key)));
                }
                kept
            });
        }
        out
    }
}

impl Grant {
    fn leftover(&self, key: &str) -> Option<Leftover> {
        (self.left > 0).then(|| Leftover {
            key: key.to_owned(),
            second: self.second,
            count: self.left,
        })
    }
}

/// The most a key asks for at once: a sixteenth of its rpm, at most [`MAX_WANT`].
fn cap(limits: Limits) -> u32 {
    limits.rpm.map_or(0, |rpm| (rpm / 16).min(MAX_WANT))
}

/// Marks a key's asking admission done when dropped, however the admission ends.
pub struct Asking<'a> {
    grants: &'a Grants,
    key: &'a str,
}

impl<'a> Asking<'a> {
    /// `None` when nothing was asked (`want` 0).
    pub fn new(grants: &'a Grants, key: &'a str, want: u32) -> Option<Asking<'a>> {
        (want > 0).then_some(Asking { grants, key })
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        self.grants.done(self.key);
    }
}

#[cfg(test)]
mod tests;
