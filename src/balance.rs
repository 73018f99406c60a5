//! The order in which to try the clients of one priority tier: weighted, least busy, latency, or affinity.
//!
//! Layout: `load.rs` (each client's in-flight count and latency estimate), `key.rs` (a request's
//! affinity key), `sticky.rs` (where each conversation went), `affinity.rs` (rendezvous hashing with
//! bounded load). [`order`] is the one entry point the router calls per tier.

mod affinity;
mod key;
mod load;
mod sticky;

use std::cmp::Ordering;
use std::time::Instant;

pub use key::{affinity_key, AffinityKey, MAX_VALUE_BYTES};
pub use load::{ClientLoad, InFlight};
pub use sticky::{Sticky, DEFAULT_STICKY_ENTRIES};

use crate::config::{AffinitySettings, Balance};

/// One client of the tier being ordered.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// What [`order`] returns: the client's index in the router's list.
    pub index: usize,
    pub name: &'a str,
    /// `weight` (>= 1).
    pub weight: u32,
    pub load: &'a ClientLoad,
    /// False while the client cools down after failures.
    pub available: bool,
}

/// The tier's `index`es in the order to try them, available members first; `tier` in file order.
///
/// - `weighted`: the member furthest below its weighted share of first picks goes first, the rest in
///   file order (`Router::pick` before #20, moved here; the counter is [`ClientLoad::picked`]).
/// - `least_busy`: ascending in-flight / weight; ties rotate with `rr`.
/// - `latency`: the cheaper of two members drawn at random (seeded by `rr`), then the rest by cost.
/// - `affinity`: see [`affinity`]; without a key, `latency`.
///
/// `rr` is any number that changes from request to request (a request counter).
pub fn order(
    balance: Balance,
    tier: &[Member<'_>],
    key: Option<AffinityKey>,
    sticky: &Sticky,
    settings: &AffinitySettings,
    now: Instant,
    rr: u64,
) -> Vec<usize> {
    let mut positions = match (balance, key) {
        _ if tier.len() <= 1 => {
            if let Some(only) = tier.first() {
                if balance == Balance::Weighted {
                    only.load.count_pick();
                }
                if let (Balance::Affinity, Some(key)) = (balance, key) {
                    sticky.record(key, only.name, settings.ttl, now);
                }
            }
            (0..tier.len()).collect()
        }
        (Balance::Weighted, _) => weighted(tier),
        (Balance::LeastBusy, _) => least_busy(tier, rr),
        (Balance::Affinity, Some(key)) => affinity::order(tier, key, sticky, settings, now),
        (Balance::Latency | Balance::Affinity, _) => latency(tier, now, rr),
    };
    // Stable: each strategy's order among the available, then among the cooling.
    positions.sort_by_key(|&p| !tier[p].available);
    positions.iter().map(|&p| tier[p].index).collect()
}

/// Positions of the members that can take a request: the available ones, or all when none is.
fn candidates(tier: &[Member<'_>]) -> Vec<usize> {
    let up: Vec<usize> = (0..tier.len()).filter(|&p| tier[p].available).collect();
    if up.is_empty() {
        (0..tier.len()).collect()
    } else {
        up
    }
}

/// The chosen position first, then the others in file order.
fn chosen_first(len: usize, chosen: usize) -> Vec<usize> {
    std::iter::once(chosen)
        .chain((0..len).filter(|&p| p != chosen))
        .collect()
}

fn weighted(tier: &[Member<'_>]) -> Vec<usize> {
    let mut best: Option<(usize, u64, u64)> = None;
    for p in candidates(tier) {
        let (picked, weight) = (tier[p].load.picked(), u64::from(tier[p].weight.max(1)));
        // picked / weight < best_picked / best_weight, without division; ties keep file order.
        let better = best.is_none_or(|(_, bp, bw)| {
            u128::from(picked) * u128::from(bw) < u128::from(bp) * u128::from(weight)
        });
        if better {
            best = Some((p, picked, weight));
        }
    }
    let chosen = best.map_or(0, |(p, _, _)| p);
    tier[chosen].load.count_pick();
    chosen_first(tier.len(), chosen)
}

fn least_busy(tier: &[Member<'_>], rr: u64) -> Vec<usize> {
    let n = tier.len() as u64;
    let mut positions: Vec<usize> = (0..tier.len()).collect();
    let busy = |p: usize| {
        (
            u128::from(tier[p].load.in_flight()),
            u128::from(tier[p].weight.max(1)),
        )
    };
    positions.sort_by(|&a, &b| {
        let ((ia, wa), (ib, wb)) = (busy(a), busy(b));
        (ia * wb).cmp(&(ib * wa)).then_with(|| {
            let rank = |p: usize| (p as u64 + n - rr % n) % n;
            rank(a).cmp(&rank(b))
        })
    });
    positions
}

fn latency(tier: &[Member<'_>], now: Instant, rr: u64) -> Vec<usize> {
    let cost: Vec<f64> = tier.iter().map(|m| m.load.latency_cost(now)).collect();
    let by_cost = |a: &usize, b: &usize| cost[*a].partial_cmp(&cost[*b]).unwrap_or(Ordering::Equal);
    let up = candidates(tier);
    let winner = match up.len() {
        0 => return Vec::new(),
        1 => up[0],
        n => {
            let r = key::mix(rr.wrapping_add(0x9e37_79b9_7f4a_7c15));
            let first = (r % n as u64) as usize;
            let second = (first + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
            let (a, b) = (up[first], up[second]);
            if by_cost(&b, &a) == Ordering::Less {
                b
            } else {
                a
            }
        }
    };
    let mut rest: Vec<usize> = (0..tier.len()).filter(|&p| p != winner).collect();
    rest.sort_by(by_cost);
    std::iter::once(winner).chain(rest).collect()
}

#[cfg(test)]
mod tests;
