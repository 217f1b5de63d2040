//! Pure batch choice: how many targets may start now, and how many of the
//! candidates fit in the `min_healthy` budget.

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
}
