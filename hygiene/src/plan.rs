//! `plan`: what a run would do, computed from the configuration and the
//! pool as the balancer lists it now. Changes nothing.
//!
//! The batches follow the engine's documented rules (`RolloutConfig`):
//! `batch_size` of the selected targets (percent rounded down, at least 1),
//! a canary first when asked, each batch shrunk so that `min_healthy` of the
//! whole pool (percent rounded up) stays healthy in service, targets not in
//! service skipped. It assumes every target succeeds; a real run may stop
//! earlier (`max_failures`) or wait for capacity.

use std::time::Duration;

use hygiene_core::{
    duration_text, Amount, CancellationToken, ListedTarget, LoadBalancer, Pacing, Selection,
    TargetId, TargetState,
};
use serde::Serialize;

use crate::cli::{Global, RolloutFlags};
use crate::config::Loaded;
use crate::setup::{self, Setup};
use crate::{exit, output, Failure};

/// A skipped target and why.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Skipped {
    pub(crate) id: TargetId,
    pub(crate) reason: String,
}

/// The estimated duration range.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Estimate {
    /// Drains, maintenances and health checks instant: polls and warmups only.
    pub(crate) min: String,
    /// With `--maintenance-time`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) typical: Option<String>,
    /// Every timeout reached in every batch.
    pub(crate) max: String,
}

/// What a run would do.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Plan {
    pub(crate) balancer: String,
    pub(crate) pool: usize,
    pub(crate) selected: usize,
    pub(crate) to_maintain: usize,
    pub(crate) pacing: Pacing,
    pub(crate) batch_size: serde_json::Value,
    pub(crate) width: usize,
    pub(crate) min_healthy: serde_json::Value,
    pub(crate) required_healthy: usize,
    pub(crate) healthy_now: usize,
    pub(crate) max_failures: serde_json::Value,
    pub(crate) failures_allowed: usize,
    pub(crate) canary: bool,
    pub(crate) batches: Vec<Vec<TargetId>>,
    /// `target` or `zone`.
    pub(crate) batch_by: hygiene_core::BatchBy,
    /// The zone of each batch, with `batch_by = zone`.
    pub(crate) batch_zones: Vec<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) zone_min_healthy: Option<serde_json::Value>,
    /// The pool's Availability Zones, when any target has one.
    pub(crate) zones: Vec<crate::zones::ZoneLine>,
    /// The Auto Scaling groups of the pool's instances (ELBv2), with the
    /// mode and the `MinSize` arithmetic.
    pub(crate) auto_scaling: Vec<crate::asg::GroupLine>,
    pub(crate) skipped: Vec<Skipped>,
    /// What the run would meet (shrunk batches, unhealthy targets).
    pub(crate) problems: Vec<String>,
    /// Reasons the run would refuse to start or abort (exit code 6).
    pub(crate) blockers: Vec<String>,
    /// Targets earlier runs kept out of rotation, still out.
    pub(crate) kept_out: Vec<String>,
    pub(crate) poll_interval: String,
    pub(crate) duration: Estimate,
    /// `wait_between_batches`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) wait_between_batches: Option<String>,
    /// The gates and notifiers, one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) outside: Vec<String>,
}

/// A count as a number, a percent as a string, as the file writes them.
pub(crate) fn amount(a: Amount) -> serde_json::Value {
    match a {
        Amount::Count(n) => serde_json::Value::from(n),
        Amount::Percent(_) => serde_json::Value::from(a.to_string()),
    }
}

fn fmt(d: Duration) -> String {
    duration_text::format(d)
}

/// Computes the plan over `listed`.
pub(crate) fn compute(
    setup: &Setup,
    listed: &[ListedTarget],
    maintenance: Option<Duration>,
) -> Plan {
    let c = &setup.rollout;
    let lb: &dyn LoadBalancer = &*setup.balancer;
    let caps = lb.capabilities();
    let mut problems = Vec::new();
    let mut blockers = Vec::new();
    let selected: Vec<&ListedTarget> = match c.selection() {
        Selection::Named(ids) => ids
            .iter()
            .filter_map(|id| {
                let found = listed.iter().find(|l| &l.target.id == id);
                if found.is_none() {
                    blockers.push(format!(
                        "{id} is selected but not in the pool: the run refuses to start (NotFound); the pool holds {}",
                        listed.iter().map(|l| l.target.id.to_string()).collect::<Vec<_>>().join(", ")
                    ));
                }
                found
            })
            .collect(),
        _ => listed.iter().collect(),
    };
    let mut skipped = Vec::new();
    let mut todo: Vec<&ListedTarget> = Vec::new();
    for l in &selected {
        if l.status.state == TargetState::InService {
            todo.push(l);
        } else {
            skipped.push(Skipped {
                id: l.target.id.clone(),
                reason: format!(
                    "{} now: out of rotation before the run, left as found and never enabled",
                    match l.status.state {
                        TargetState::Draining => "draining",
                        _ => "out of service",
                    }
                ),
            });
        }
    }
    let healthy = |l: &ListedTarget| l.status.counts_as_capacity_with(&caps);
    let healthy_now = listed.iter().filter(|l| healthy(l)).count();
    let required = c.min_healthy_of(listed.len());
    let width = c.batch_len(selected.len());
    let zones = crate::zones::lines(c, &caps, listed, &todo, &mut blockers);
    crate::zones::order(c, &mut todo);
    let mut batches: Vec<Vec<TargetId>> = Vec::new();
    let mut batch_zones: Vec<Option<String>> = Vec::new();
    let mut k = 0;
    while k < todo.len() {
        let want = if c.canary() && batches.is_empty() {
            1
        } else {
            width
        };
        let mut budget = healthy_now.saturating_sub(required);
        let mut zone_budget = crate::zones::budgets(&zones);
        let first_zone = c.zone_of(&todo[k].target).map(str::to_owned);
        let mut batch = Vec::new();
        for l in todo.iter().skip(k).take(want) {
            let cost = usize::from(healthy(l));
            let zone = c.zone_of(&l.target);
            if c.batch_by() == hygiene_core::BatchBy::Zone && zone != first_zone.as_deref() {
                break;
            }
            if cost > budget {
                break;
            }
            if let Some(zb) = zone.and_then(|z| zone_budget.get_mut(z)) {
                if cost > *zb {
                    break;
                }
                *zb -= cost;
            }
            budget -= cost;
            batch.push(l.target.id.clone());
        }
        if batch.is_empty() && budget > 0 {
            let z = first_zone.clone().unwrap_or_default();
            blockers.push(format!(
                "no target of zone {z} can be taken out: zone_min_healthy = {} keeps its healthy targets in service: the run would wait capacity_timeout ({}) and abort",
                c.zone_min_healthy().map(|a| a.to_string()).unwrap_or_default(),
                fmt(c.capacity_timeout())
            ));
            break;
        }
        if batch.is_empty() {
            blockers.push(format!(
                "not even one target can be taken out: {healthy_now} healthy now, min_healthy = {} requires {required}: the run would wait capacity_timeout ({}) and abort",
                c.min_healthy(),
                fmt(c.capacity_timeout())
            ));
            break;
        }
        if batch.len() < want.min(todo.len() - k) {
            problems.push(format!(
                "batch {} shrunk to {} (of {want}) so that {required} stay healthy (min_healthy = {})",
                batches.len() + 1,
                batch.len(),
                c.min_healthy()
            ));
        }
        k += batch.len();
        batches.push(batch);
        batch_zones.push(if c.batch_by() == hygiene_core::BatchBy::Zone {
            first_zone
        } else {
            None
        });
    }
    let unhealthy: Vec<String> = todo
        .iter()
        .filter(|l| !healthy(l))
        .map(|l| l.target.id.to_string())
        .collect();
    if !unhealthy.is_empty() {
        problems.push(format!(
            "not healthy now (they cost nothing against min_healthy, and must be healthy after their maintenance to pass): {}",
            unhealthy.join(", ")
        ));
    }
    let poll = c
        .poll_interval()
        .unwrap_or_else(|| lb.default_poll_interval());
    let n = u32::try_from(batches.len()).unwrap_or(u32::MAX);
    // Warmups and soaks between batches, none after the last.
    let warmups = (c.warmup() + c.wait_between_batches()) * n.saturating_sub(1);
    let floor = poll * 3;
    let execute = setup
        .executor_timeout
        .map_or(c.execute_timeout(), |t| t.min(c.execute_timeout()));
    // The worst case counts every gate held to its timeout and every hook
    // to its limit.
    let worst = c.call_timeout()
        + c.drain_timeout()
        + execute
        + c.health_timeout()
        + poll * 3
        + setup.outside.worst_per_batch();
    let duration = Estimate {
        min: fmt(floor * n + warmups),
        typical: maintenance.map(|m| fmt((m + floor) * n + warmups)),
        max: fmt(worst * n + warmups + setup.outside.worst_per_run()),
    };
    Plan {
        balancer: lb.name(),
        pool: listed.len(),
        selected: selected.len(),
        to_maintain: todo.len(),
        pacing: c.pacing(),
        batch_size: amount(c.batch_size()),
        width,
        min_healthy: amount(c.min_healthy()),
        required_healthy: required,
        healthy_now,
        max_failures: amount(c.max_failures()),
        failures_allowed: c.failures_allowed(selected.len()),
        canary: c.canary(),
        batches,
        batch_by: c.batch_by(),
        batch_zones,
        zone_min_healthy: c.zone_min_healthy().map(amount),
        zones,
        auto_scaling: Vec::new(),
        skipped,
        problems,
        blockers,
        kept_out: Vec::new(),
        poll_interval: fmt(poll),
        duration,
        wait_between_batches: (!c.wait_between_batches().is_zero())
            .then(|| fmt(c.wait_between_batches())),
        outside: setup.outside.described.clone(),
    }
}

/// The plan for a human.
pub(crate) fn human(p: &Plan) -> String {
    let mut o = format!(
        "plan on {}: {} target(s) in the pool, {} selected, {} to maintain\n",
        p.balancer, p.pool, p.selected, p.to_maintain
    );
    o.push_str(&format!(
        "  batch_size = {} → {} at a time (of {} selected; a percent rounds down, at least 1){}\n",
        p.batch_size,
        p.width,
        p.selected,
        if p.canary {
            "; canary: the first batch is 1 target"
        } else {
            ""
        }
    ));
    o.push_str(&format!(
        "  min_healthy = {} → {} of {} must stay healthy in service (a percent rounds up); {} healthy now, so up to {} may be out at once\n",
        p.min_healthy,
        p.required_healthy,
        p.pool,
        p.healthy_now,
        p.healthy_now.saturating_sub(p.required_healthy)
    ));
    o.push_str(&format!(
        "  max_failures = {} → {} of {} may fail; the run stops starting targets when more than {} fail{}\n",
        p.max_failures,
        p.failures_allowed,
        p.selected,
        p.failures_allowed,
        if p.failures_allowed == 0 { " (the first failure)" } else { "" }
    ));
    o.push_str(&match p.pacing {
        Pacing::Window => format!(
            "batches (rolling window: up to {} in progress, the next starts as soon as one ends), in order:\n",
            p.width
        ),
        _ => "batches (each starts when the one before is back and healthy), in order:\n".into(),
    });
    o.push_str(&crate::zones::human(p));
    for (k, b) in p.batches.iter().enumerate() {
        o.push_str(&format!(
            "  {:>3}. {}{}\n",
            k + 1,
            p.batch_zones
                .get(k)
                .cloned()
                .flatten()
                .map(|z| format!("[{}] ", crate::output::clean(&z)))
                .unwrap_or_default(),
            b.iter()
                .map(crate::output::clean)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if p.batches.is_empty() {
        o.push_str("  (none)\n");
    }
    for s in &p.skipped {
        o.push_str(&format!(
            "  skipped {}: {}\n",
            crate::output::clean(&s.id),
            crate::output::clean(&s.reason)
        ));
    }
    o.push_str(&format!(
        "duration: at least {} (polls every {}, instant drains and maintenances){}, at most {} (every timeout reached in every batch)\n",
        p.duration.min,
        p.poll_interval,
        p.duration
            .typical
            .as_ref()
            .map(|t| format!(", about {t} with that maintenance time"))
            .unwrap_or_default(),
        p.duration.max
    ));
    if let Some(w) = &p.wait_between_batches {
        o.push_str(&format!(
            "wait_between_batches = {w}: a soak after each batch is back, before the next\n"
        ));
    }
    for line in &p.outside {
        o.push_str(&format!("{}\n", crate::output::clean(line)));
    }
    for pr in &p.problems {
        o.push_str(&format!("problem: {}\n", crate::output::clean(pr)));
    }
    for k in &p.kept_out {
        o.push_str(&format!("warning: {k}\n"));
    }
    for b in &p.blockers {
        o.push_str(&format!("BLOCKER: {b}\n"));
    }
    if !p.blockers.is_empty() {
        o.push_str("the run would refuse to start or abort (exit code 6)\n");
    }
    o
}

pub(crate) async fn main(
    g: &Global,
    flags: &RolloutFlags,
    maintenance: Option<Duration>,
) -> Result<u8, Failure> {
    let loaded = Loaded::read_with(&g.config, &g.set)?;
    let cancel = CancellationToken::new();
    let mut setup = setup::build(&loaded, g.state_dir.as_ref(), flags, &cancel).await?;
    let drain_problems = crate::elbv2::drain_timeout(&mut setup).await;
    let listed = setup.balancer.list().await?;
    setup::select(&mut setup, &listed, flags, false)?;
    let (fleet, fleet_problems) = crate::asg::read(&loaded, &mut setup, &listed, false).await?;
    let mut plan = compute(&setup, &listed, maintenance);
    crate::asg::into_plan(fleet.as_ref(), &mut plan);
    plan.problems.extend(drain_problems);
    plan.problems.extend(fleet_problems);
    let (access, more) = blockers_before_start(g, &loaded, &setup, &listed).await?;
    plan.blockers.extend(more);
    plan.kept_out = crate::run::warn_kept_out(g, &setup.journal, &listed, false)?;
    if g.json {
        output::json_line("plan", &plan);
    } else {
        output::print(&human(&plan));
    }
    Ok(if access {
        exit::UNREACHABLE
    } else if plan.blockers.is_empty() {
        exit::OK
    } else {
        exit::BLOCKED
    })
}

/// What makes a fresh run refuse before it changes anything, besides the
/// plan's own arithmetic: an HAProxy socket below `level admin` (then
/// the first value is true: the run exits 4, and so do plan and validate), a
/// maintenance that cannot start, an unfinished journal.
pub(crate) async fn blockers_before_start(
    g: &Global,
    loaded: &Loaded,
    setup: &Setup,
    listed: &[ListedTarget],
) -> Result<(bool, Vec<String>), Failure> {
    let mut b = Vec::new();
    let mut access = false;
    if let Some(h) = &setup.haproxy {
        if let Err(e) = h.check_admin().await {
            b.push(e.to_string());
            access = true;
        }
    }
    if let Some(why) = crate::preflight::check(loaded, setup, listed)
        .await
        .refusal()
    {
        b.push(why);
    }
    if let Some(sum) =
        hygiene_core::journal::summarize(&hygiene_core::journal::FileJournal::read(&setup.journal)?)
    {
        if sum.outcome.is_none() {
            b.push(format!(
                "the journal {} holds an unfinished run ({}): a new run is refused until `{}` or `{}`",
                setup.journal.display(),
                sum.header.run_id,
                crate::command_for(g, "resume"),
                crate::command_for(g, "restore")
            ));
        }
    }
    Ok((access, b))
}
