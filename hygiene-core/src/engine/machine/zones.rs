//! Availability Zones: batches of one zone at a time (`batch_by = zone`)
//! and a floor of healthy targets per zone (`zone_min_healthy`).

use std::collections::BTreeMap;

use super::*;
use crate::config::BatchBy;
use planner::ZoneBudget;

impl Machine {
    /// The zone of slot `i`, if known.
    pub(super) fn zone(&self, i: usize) -> Option<&str> {
        self.cfg.zone_of(&self.slots[i].target)
    }

    /// With `batch_by = zone`: the queue in zone order (zones sorted by
    /// name, the pool's order kept inside a zone).
    pub(super) fn order_by_zone(&mut self) {
        if self.cfg.batch_by() != BatchBy::Zone {
            return;
        }
        let mut q: Vec<usize> = self.queue.iter().copied().collect();
        q.sort_by(|&a, &b| self.zone(a).cmp(&self.zone(b)));
        self.queue = q.into();
    }

    /// Checks before anything is touched: with `batch_by = zone` every
    /// target to maintain has a zone; a zone floor leaves every zone of a
    /// target to maintain something to spare.
    pub(super) fn check_zones(&self, listed: &[ListedTarget], balancer: &str) -> Result<()> {
        let todo = || {
            self.queue
                .iter()
                .copied()
                .filter(|&i| self.slots[i].step == Step::Queued)
        };
        if self.cfg.batch_by() == BatchBy::Zone {
            let missing: Vec<String> = todo()
                .filter(|&i| self.zone(i).is_none())
                .map(|i| self.slots[i].target.id.to_string())
                .collect();
            if !missing.is_empty() {
                return Err(Error::invalid_config(
                    "batch_by",
                    format!(
                        "batch_by = \"zone\" needs every target's Availability Zone, and {balancer} knows none for {}: give them in rollout.zones (target = \"zone\")",
                        missing.join(", ")
                    ),
                ));
            }
        }
        if self.cfg.zone_min_healthy().is_some() {
            let sizes = self.zone_sizes(listed);
            for i in todo() {
                let Some(z) = self.zone(i) else { continue };
                let size = sizes.get(z).copied().unwrap_or(0);
                let req = self.cfg.zone_min_healthy_of(size);
                if req > 0 && req >= size {
                    return Err(Error::invalid_config(
                        "zone_min_healthy",
                        format!(
                            "zone {z} has {size} target(s) in the pool and {req} must stay healthy, so {} can never be taken out; add a target to {z}, or lower zone_min_healthy (on an NLB with cross-zone load balancing off, turn it on)",
                            self.slots[i].target.id
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn zone_sizes(&self, listed: &[ListedTarget]) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for l in listed {
            if let Some(z) = self.cfg.zone_of(&l.target) {
                *out.entry(z.to_owned()).or_insert(0) += 1;
            }
        }
        out
    }

    /// The zone budgets of the pool as listed now (empty without a zone
    /// floor).
    pub(super) fn zone_budgets(&self, listed: &[ListedTarget]) -> BTreeMap<String, ZoneBudget> {
        if self.cfg.zone_min_healthy().is_none() {
            return BTreeMap::new();
        }
        let mut out: BTreeMap<String, ZoneBudget> = BTreeMap::new();
        let sizes = self.zone_sizes(listed);
        for l in listed {
            let Some(z) = self.cfg.zone_of(&l.target) else {
                continue;
            };
            let b = out.entry(z.to_owned()).or_default();
            if l.status.counts_as_capacity_with(&self.caps) && self.counts_as_serving(&l.target.id)
            {
                b.healthy += 1;
            }
        }
        for (z, b) in &mut out {
            b.required = self
                .cfg
                .zone_min_healthy_of(sizes.get(z).copied().unwrap_or(0));
        }
        out
    }

    /// With `batch_by = zone`: the zone whose targets may start now, or
    /// `Err(())` while targets of another zone are still in progress.
    /// `Ok(None)` when batches are not by zone.
    pub(super) fn zone_now(&self) -> std::result::Result<Option<Option<String>>, ()> {
        if self.cfg.batch_by() != BatchBy::Zone {
            return Ok(None);
        }
        let Some(&front) = self
            .queue
            .iter()
            .find(|&&q| self.slots[q].step == Step::Queued)
        else {
            return Ok(None);
        };
        let zone = self.zone(front);
        if self.active.iter().any(|&i| self.zone(i) != zone) {
            return Err(());
        }
        Ok(Some(zone.map(str::to_owned)))
    }
}
