//! Pure batch choice: how many targets may start now, and how many of the
//! candidates fit in the `min_healthy` budget.

use std::collections::BTreeMap;

use crate::config::Pacing;

/// What the planner needs to know about the run right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) pacing: Pacing,
    /// `batch_size` out of the selected targets.
    pub(crate) width: usize,
    /// Targets in progress (preflight through warmup).
    pub(crate) in_progress: usize,
    /// The canary has not passed yet: one target at a time.
    pub(crate) canary: bool,
}

/// How many new targets may start now: with batches, a whole batch once
/// nothing is in progress; with a window, the free places. Never more than
/// `width` in progress (invariant 2), one while the canary is pending.
pub(crate) fn want(w: Window) -> usize {
    let width = if w.canary { 1 } else { w.width.max(1) };
    match w.pacing {
        Pacing::Batches if w.in_progress > 0 => 0,
        Pacing::Batches => width,
        Pacing::Window => width.saturating_sub(w.in_progress),
    }
}

/// How many candidates, in order, can be taken out while at least
/// `required` targets stay healthy in service: `healthy` serve now, and
/// taking a candidate costs 1 when it is one of them (`costs[k]` is 0 or 1).
pub(crate) fn fit(costs: &[usize], healthy: usize, required: usize) -> usize {
    let mut budget = healthy.saturating_sub(required);
    let mut take = 0;
    for &cost in costs {
        if cost > budget {
            break;
        }
        budget -= cost;
        take += 1;
    }
    take
}

/// A zone's capacity now: targets healthy in service, and how many of
/// them must stay so (`zone_min_healthy` of the zone's pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ZoneBudget {
    pub(crate) healthy: usize,
    pub(crate) required: usize,
}

/// [`fit`] with a floor per zone as well: how many candidates, in order,
/// can be taken out while the pool keeps `required` and every zone keeps
/// its own `required`. `cands[k]` is the candidate's cost (0 or 1) and its
/// zone (`None`, or a zone without a budget: no zone floor applies).
pub(crate) fn fit_zoned<K: Ord>(
    cands: &[(usize, Option<K>)],
    healthy: usize,
    required: usize,
    zones: &BTreeMap<K, ZoneBudget>,
) -> usize {
    let mut budget = healthy.saturating_sub(required);
    let mut spent: BTreeMap<&K, usize> = BTreeMap::new();
    let mut take = 0;
    for (cost, zone) in cands {
        let cost = *cost;
        if cost > budget {
            break;
        }
        if let Some((z, b)) = zone.as_ref().and_then(|z| zones.get_key_value(z)) {
            let used = spent.entry(z).or_insert(0);
            if cost > b.healthy.saturating_sub(b.required).saturating_sub(*used) {
                break;
            }
            *used += cost;
        }
        budget -= cost;
        take += 1;
    }
    take
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(pacing: Pacing, width: usize, in_progress: usize, canary: bool) -> Window {
        Window {
            pacing,
            width,
            in_progress,
            canary,
        }
    }

    #[test]
    fn batches_wait_for_the_whole_batch() {
        assert_eq!(want(w(Pacing::Batches, 3, 0, false)), 3);
        assert_eq!(want(w(Pacing::Batches, 3, 1, false)), 0);
        assert_eq!(want(w(Pacing::Batches, 3, 0, true)), 1);
    }

    #[test]
    fn a_window_fills_its_free_places() {
        assert_eq!(want(w(Pacing::Window, 3, 0, false)), 3);
        assert_eq!(want(w(Pacing::Window, 3, 2, false)), 1);
        assert_eq!(want(w(Pacing::Window, 3, 3, false)), 0);
        assert_eq!(want(w(Pacing::Window, 3, 5, false)), 0);
        assert_eq!(want(w(Pacing::Window, 3, 0, true)), 1);
        assert_eq!(want(w(Pacing::Window, 3, 1, true)), 0);
    }

    #[test]
    fn min_healthy_budget() {
        // 5 healthy, 3 required: two healthy candidates fit, then stop.
        assert_eq!(fit(&[1, 1, 1], 5, 3), 2);
        // Unhealthy candidates cost nothing.
        assert_eq!(fit(&[0, 1, 0, 1], 4, 3), 3);
        assert_eq!(fit(&[1], 3, 3), 0);
        assert_eq!(fit(&[1], 2, 3), 0, "already below: nothing fits");
        assert_eq!(fit(&[], 5, 0), 0);
    }

    fn zb(healthy: usize, required: usize) -> ZoneBudget {
        ZoneBudget { healthy, required }
    }

    #[test]
    fn a_zone_floor_stops_a_batch_the_pool_would_allow() {
        let zones: BTreeMap<&str, ZoneBudget> = [("a", zb(2, 1)), ("b", zb(1, 1))].into();
        // The pool allows 3, zone a only one of its two.
        assert_eq!(
            fit_zoned(&[(1, Some("a")), (1, Some("a"))], 6, 3, &zones),
            1
        );
        // Zone b has no target to spare: the last healthy one stays.
        assert_eq!(fit_zoned(&[(1, Some("b"))], 6, 0, &zones), 0);
        // An unhealthy candidate costs nothing anywhere.
        assert_eq!(
            fit_zoned(&[(0, Some("b")), (1, Some("a"))], 6, 0, &zones),
            2
        );
        // No zone, or a zone without a budget: only the pool counts.
        assert_eq!(fit_zoned(&[(1, None), (1, Some("c"))], 6, 4, &zones), 2);
        // The pool's floor still holds.
        assert_eq!(fit_zoned(&[(1, Some("a"))], 3, 3, &zones), 0);
    }

    #[test]
    fn without_zone_budgets_fit_zoned_is_fit() {
        let none: BTreeMap<&str, ZoneBudget> = BTreeMap::new();
        let costs = [1, 0, 1, 1, 0, 1];
        let cands: Vec<(usize, Option<&str>)> = costs.iter().map(|&c| (c, Some("a"))).collect();
        for healthy in 0..7 {
            for required in 0..7 {
                assert_eq!(
                    fit_zoned(&cands, healthy, required, &none),
                    fit(&costs, healthy, required)
                );
            }
        }
    }

    proptest::proptest! {
        /// Whatever the candidates and budgets: taking the chosen prefix
        /// leaves the pool and every zone at or above its floor (when it
        /// was there), and the prefix is as long as those floors allow.
        #[test]
        fn fit_zoned_keeps_every_floor(
            cands in proptest::collection::vec((0usize..2, proptest::option::of(0u8..3)), 0..12),
            healthy in 0usize..12,
            required in 0usize..12,
            budgets in proptest::collection::vec((0usize..6, 0usize..6), 3),
        ) {
            let zones: BTreeMap<u8, ZoneBudget> = budgets
                .iter()
                .enumerate()
                .map(|(z, &(h, r))| (z as u8, zb(h, r)))
                .collect();
            let take = fit_zoned(&cands, healthy, required, &zones);
            proptest::prop_assert!(take <= cands.len());
            let chosen = &cands[..take];
            let total: usize = chosen.iter().map(|c| c.0).sum();
            proptest::prop_assert!(total == 0 || healthy - total >= required);
            for (z, b) in &zones {
                let out: usize = chosen.iter().filter(|c| c.1 == Some(*z)).map(|c| c.0).sum();
                proptest::prop_assert!(out == 0 || b.healthy - out >= b.required);
            }
            // Maximal: the next candidate would break a floor.
            if let Some(next) = cands.get(take) {
                let mut with = chosen.to_vec();
                with.push(*next);
                let total: usize = with.iter().map(|c| c.0).sum();
                let pool_ok = total == 0 || healthy >= total + required;
                let zone_ok = next.1.and_then(|z| zones.get(&z)).is_none_or(|b| {
                    let out: usize = with.iter().filter(|c| c.1 == next.1).map(|c| c.0).sum();
                    out == 0 || b.healthy >= out + b.required
                });
                proptest::prop_assert!(!(pool_ok && zone_ok));
            }
        }
    }
}
