//! Availability Zones in `plan` and `validate`: each zone's targets, how
//! many are healthy and how many must stay (`zone_min_healthy`), and the
//! order of a run by zone (`batch_by = "zone"`).

use std::collections::BTreeMap;

use hygiene_core::{BatchBy, ListedTarget, RolloutConfig};
use serde::Serialize;

use crate::plan::Plan;

/// One zone of the pool.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ZoneLine {
    pub(crate) zone: String,
    /// Targets of the pool in the zone.
    pub(crate) pool: usize,
    pub(crate) healthy_now: usize,
    /// Targets `zone_min_healthy` keeps healthy in service there.
    pub(crate) required_healthy: usize,
    /// Targets of the zone the run maintains.
    pub(crate) to_maintain: usize,
}

/// The zones of the pool (empty when no target has one); a zone whose
/// floor leaves none of its targets to take out is a blocker, as is a
/// target without a zone under `batch_by = "zone"`.
pub(crate) fn lines(
    c: &RolloutConfig,
    caps: &hygiene_core::Capabilities,
    listed: &[ListedTarget],
    todo: &[&ListedTarget],
    blockers: &mut Vec<String>,
) -> Vec<ZoneLine> {
    let caps_ok = |l: &ListedTarget| l.status.counts_as_capacity_with(caps);
    let mut by: BTreeMap<String, ZoneLine> = BTreeMap::new();
    for l in listed {
        let Some(z) = c.zone_of(&l.target) else {
            continue;
        };
        let e = by.entry(z.to_owned()).or_insert_with(|| ZoneLine {
            zone: z.to_owned(),
            pool: 0,
            healthy_now: 0,
            required_healthy: 0,
            to_maintain: 0,
        });
        e.pool += 1;
        e.healthy_now += usize::from(caps_ok(l));
    }
    for l in todo {
        if let Some(e) = c.zone_of(&l.target).and_then(|z| by.get_mut(z)) {
            e.to_maintain += 1;
        }
    }
    for e in by.values_mut() {
        e.required_healthy = c.zone_min_healthy_of(e.pool);
        if e.to_maintain > 0 && e.required_healthy > 0 && e.required_healthy >= e.pool {
            blockers.push(format!(
                "zone {} has {} target(s) in the pool and zone_min_healthy = {} keeps {} of them healthy in service: none of them can ever be taken out; add a target to {}, or lower zone_min_healthy (on an NLB with cross-zone load balancing off: turn it on)",
                e.zone,
                e.pool,
                c.zone_min_healthy().map(|a| a.to_string()).unwrap_or_default(),
                e.required_healthy,
                e.zone
            ));
        }
    }
    if c.batch_by() == BatchBy::Zone {
        let missing: Vec<String> = todo
            .iter()
            .filter(|l| c.zone_of(&l.target).is_none())
            .map(|l| l.target.id.to_string())
            .collect();
        if !missing.is_empty() {
            blockers.push(format!(
                "batch_by = \"zone\", and no Availability Zone is known for {}: give them in [rollout.zones] (target = \"zone\")",
                missing.join(", ")
            ));
        }
    }
    by.into_values().collect()
}

/// With `batch_by = "zone"`: the targets in the run's order (zones by
/// name, the pool's order inside a zone).
pub(crate) fn order(c: &RolloutConfig, todo: &mut [&ListedTarget]) {
    if c.batch_by() == BatchBy::Zone {
        todo.sort_by(|a, b| c.zone_of(&a.target).cmp(&c.zone_of(&b.target)));
    }
}

/// How many healthy targets each zone can spare now.
pub(crate) fn budgets(zones: &[ZoneLine]) -> BTreeMap<String, usize> {
    zones
        .iter()
        .filter(|z| z.required_healthy > 0)
        .map(|z| {
            (
                z.zone.clone(),
                z.healthy_now.saturating_sub(z.required_healthy),
            )
        })
        .collect()
}

/// The zone and Auto Scaling lines of a plan for a human.
pub(crate) fn human(p: &Plan) -> String {
    let mut o = String::new();
    if !p.zones.is_empty() {
        o.push_str(&format!(
            "zones{}:\n",
            match &p.zone_min_healthy {
                Some(a) => format!(" (zone_min_healthy = {a}, a percent rounds up)"),
                None => String::new(),
            }
        ));
        for z in &p.zones {
            o.push_str(&format!(
                "  {}: {} in the pool, {} healthy now, {} to maintain{}\n",
                crate::output::clean(&z.zone),
                z.pool,
                z.healthy_now,
                z.to_maintain,
                if z.required_healthy > 0 {
                    format!(
                        "; {} must stay healthy, so up to {} may be out at once",
                        z.required_healthy,
                        z.healthy_now.saturating_sub(z.required_healthy)
                    )
                } else {
                    String::new()
                }
            ));
        }
    }
    o.push_str(&crate::asg::human(&p.auto_scaling));
    if p.batch_by == BatchBy::Zone {
        o.push_str("batch_by = \"zone\": one zone at a time, in this order; a zone's targets are all done before the next zone starts\n");
    }
    o
}
