//! The order in which buffered intake messages go to READY: tiers by weight, tenants
//! in turn.
//!
//! Between tiers this is stride scheduling: every dispatch advances its tier's pass by
//! `STRIDE / weight`, and the backlogged tier with the smallest pass goes next. With
//! every tier backlogged, dispatches split exactly in proportion to the weights; a tier
//! alone gets every dispatch (work-conserving). A tier that was idle rejoins at the
//! current pass, so idleness banks no credit it could later burst with.
//!
//! Within a tier, tenants with buffered messages take turns one message at a time, so a
//! tenant's deep backlog delays another tenant's new task by at most one message per
//! tenant ahead of it in the rotation.

use std::collections::{HashMap, VecDeque};

use tern_core::config::TierRates;
use tern_core::tier::Tier;

/// Pass advance of a weight-1 tier: a multiple of every weight up to 16, so common
/// weights divide it exactly and shares come out exact, not drifting by rounding.
/// Passes are u128, which no realistic number of dispatches overflows.
const STRIDE: u128 = 720_720 * 1_000_000_000;

/// Buffered items ordered for dispatch; see the module documentation.
pub struct FairQueue<T> {
    lanes: [Lane<T>; 3],
    /// Pass of the most recent dispatch: where an idle tier rejoins if no other tier
    /// is backlogged.
    now: u128,
}

struct Lane<T> {
    stride: u128,
    pass: u128,
    /// Tenants with buffered items, in turn order.
    turns: VecDeque<String>,
    items: HashMap<String, VecDeque<T>>,
    len: usize,
}

impl<T> Lane<T> {
    fn new(weight: u32) -> Self {
        Self {
            stride: STRIDE / u128::from(weight.max(1)),
            pass: 0,
            turns: VecDeque::new(),
            items: HashMap::new(),
            len: 0,
        }
    }
}

fn lane_index(tier: Tier) -> usize {
    match tier {
        Tier::Business => 0,
        Tier::Developer => 1,
        Tier::Free => 2,
    }
}

impl<T> FairQueue<T> {
    /// An empty queue sharing by `weights`.
    pub fn new(weights: &TierRates) -> Self {
        Self {
            lanes: Tier::ALL.map(|tier| Lane::new(weights.get(tier))),
            now: 0,
        }
    }

    /// Items buffered in all tiers.
    pub fn len(&self) -> usize {
        self.lanes.iter().map(|lane| lane.len).sum()
    }

    /// True when nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items buffered in `tier`.
    pub fn tier_len(&self, tier: Tier) -> usize {
        self.lanes[lane_index(tier)].len
    }

    /// Buffers `item` of `tenant` in `tier`.
    pub fn push(&mut self, tier: Tier, tenant: &str, item: T) {
        let index = lane_index(tier);
        if self.lanes[index].len == 0 {
            // Rejoin level with the backlogged tiers (or where the last dispatch was).
            let floor = self
                .lanes
                .iter()
                .filter(|lane| lane.len > 0)
                .map(|lane| lane.pass)
                .min()
                .unwrap_or(self.now);
            let lane = &mut self.lanes[index];
            lane.pass = lane.pass.max(floor);
        }
        let lane = &mut self.lanes[index];
        let queue = lane.items.entry(tenant.to_string()).or_default();
        if queue.is_empty() {
            lane.turns.push_back(tenant.to_string());
        }
        queue.push_back(item);
        lane.len += 1;
    }

    /// The next item to dispatch, with its tier and tenant.
    pub fn pop(&mut self) -> Option<(Tier, String, T)> {
        // Smallest pass first; on a tie the heavier tier (smaller stride) goes first.
        let (index, lane) = self
            .lanes
            .iter_mut()
            .enumerate()
            .filter(|(_, lane)| lane.len > 0)
            .min_by_key(|(_, lane)| (lane.pass, lane.stride))?;
        self.now = lane.pass;
        lane.pass += lane.stride;
        let tenant = lane.turns.pop_front()?;
        let queue = lane.items.get_mut(&tenant)?;
        let item = queue.pop_front()?;
        if queue.is_empty() {
            lane.items.remove(&tenant);
        } else {
            lane.turns.push_back(tenant.clone());
        }
        lane.len -= 1;
        Some((Tier::ALL[index], tenant, item))
    }

    /// Every buffered item, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.lanes
            .iter()
            .flat_map(|lane| lane.items.values().flat_map(|queue| queue.iter()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(business: u32, developer: u32, free: u32) -> TierRates {
        TierRates {
            business,
            developer,
            free,
        }
    }

    fn fill(queue: &mut FairQueue<u32>, tier: Tier, tenant: &str, n: u32) {
        for i in 0..n {
            queue.push(tier, tenant, i);
        }
    }

    fn count(dispatched: &[(Tier, String)], tier: Tier) -> usize {
        dispatched.iter().filter(|(t, _)| *t == tier).count()
    }

    fn drain(queue: &mut FairQueue<u32>, n: usize) -> Vec<(Tier, String)> {
        (0..n)
            .filter_map(|_| queue.pop().map(|(tier, tenant, _)| (tier, tenant)))
            .collect()
    }

    #[test]
    fn backlogged_tiers_share_by_weight() {
        let mut queue = FairQueue::new(&weights(6, 3, 1));
        fill(&mut queue, Tier::Free, "f", 1000);
        fill(&mut queue, Tier::Developer, "d", 1000);
        fill(&mut queue, Tier::Business, "b", 1000);
        let first = drain(&mut queue, 100);
        assert_eq!(count(&first, Tier::Business), 60);
        assert_eq!(count(&first, Tier::Developer), 30);
        assert_eq!(count(&first, Tier::Free), 10);
        // Also in every window of ten, not only on average.
        for window in first.chunks(10) {
            assert_eq!(count(window, Tier::Business), 6, "{window:?}");
            assert_eq!(count(window, Tier::Free), 1, "{window:?}");
        }
    }

    #[test]
    fn a_lone_tier_gets_everything() {
        let mut queue = FairQueue::new(&weights(6, 3, 1));
        fill(&mut queue, Tier::Free, "f", 50);
        let all = drain(&mut queue, 60);
        assert_eq!(all.len(), 50);
        assert!(queue.is_empty());
    }

    #[test]
    fn an_idle_tier_banks_no_credit() {
        let mut queue = FairQueue::new(&weights(6, 3, 1));
        fill(&mut queue, Tier::Free, "f", 1000);
        drain(&mut queue, 500);
        // Business arrives after free ran alone for a long time: it gets its 6 of 7,
        // not a burst of 500 to "catch up".
        fill(&mut queue, Tier::Business, "b", 1000);
        let next = drain(&mut queue, 70);
        assert_eq!(count(&next, Tier::Business), 60);
        assert_eq!(count(&next, Tier::Free), 10);
    }

    #[test]
    fn tenants_in_a_tier_take_turns() {
        let mut queue = FairQueue::new(&weights(6, 3, 1));
        fill(&mut queue, Tier::Free, "big", 10_000);
        drain(&mut queue, 10);
        queue.push(Tier::Free, "small", 7);
        let next = drain(&mut queue, 2);
        assert!(
            next.contains(&(Tier::Free, "small".to_string())),
            "{next:?}"
        );
        assert_eq!(queue.tier_len(Tier::Free), 10_000 - 10 - 1);
    }

    #[test]
    fn items_of_one_tenant_keep_their_order() {
        let mut queue = FairQueue::new(&weights(1, 1, 1));
        fill(&mut queue, Tier::Developer, "d", 5);
        let order: Vec<u32> = std::iter::from_fn(|| queue.pop().map(|(_, _, i)| i)).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        assert_eq!(queue.iter().count(), 0);
    }
}
