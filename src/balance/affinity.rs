//! `affinity`: rendezvous hashing of the conversation's key over the tier, with bounded load and stickiness.

use std::time::Instant;

use super::key::{mix, AffinityKey, Fnv};
use super::{Member, Sticky};
use crate::config::AffinitySettings;

/// Positions in `tier` in the order to try them for the conversation `key`, and the first one recorded
/// in `sticky`.
///
/// Each member ranks by a hash of (key, its name), highest first (rendezvous hashing: adding or
/// removing a member moves only the keys that rank it first). The first member that is available and
/// under the bound `ceil(load_factor * (tier in flight + 1) / members)` takes the request, unless the
/// conversation's remembered member is such a member: then that one does. The rest follow by rank.
pub(super) fn order(
    tier: &[Member<'_>],
    key: AffinityKey,
    sticky: &Sticky,
    settings: &AffinitySettings,
    now: Instant,
) -> Vec<usize> {
    let mut ranked: Vec<(u64, usize)> = tier
        .iter()
        .enumerate()
        .map(|(p, m)| (score(key, m.name), p))
        .collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    let bound = bound(tier, settings.load_factor);
    let fits = |p: usize| tier[p].available && tier[p].load.in_flight() < bound;
    let remembered = sticky
        .lookup(key, settings.ttl, now)
        .and_then(|name| tier.iter().position(|m| *m.name == *name))
        .filter(|&p| fits(p));
    let chosen = remembered
        .or_else(|| ranked.iter().map(|&(_, p)| p).find(|&p| fits(p)))
        // All over the bound: load beats the hash. None available: the router sorts them anyway.
        .or_else(|| ranked.iter().map(|&(_, p)| p).find(|&p| tier[p].available))
        .unwrap_or(ranked.first().map_or(0, |&(_, p)| p));
    sticky.record(key, tier[chosen].name, settings.ttl, now);
    std::iter::once(chosen)
        .chain(ranked.iter().map(|&(_, p)| p).filter(|&p| p != chosen))
        .collect()
}

/// The most requests one member may have in flight before the next takes over.
pub(super) fn bound(tier: &[Member<'_>], load_factor: f64) -> u32 {
    let in_flight: u64 = tier.iter().map(|m| u64::from(m.load.in_flight())).sum();
    let share = load_factor * (in_flight + 1) as f64 / tier.len().max(1) as f64;
    // `as` saturates; the share is finite (load_factor <= 1000).
    share.ceil() as u32
}

/// The rendezvous weight of `name` for `key`.
pub(super) fn score(key: AffinityKey, name: &str) -> u64 {
    let mut h = Fnv::new();
    h.write(name.as_bytes());
    mix(key.0 ^ h.finish())
}
