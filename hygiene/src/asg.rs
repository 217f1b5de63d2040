//! Auto Scaling groups and zones of an ELBv2 pool, for `plan`, `validate`
//! and `run`: each instance's group and zone (`DescribeAutoScalingInstances`),
//! the mode (`[balancer.elbv2] auto_scaling`) and its `MinSize`
//! arithmetic, the NLBs with cross-zone load balancing off (their zones
//! keep their last healthy target: `zone_min_healthy` at least 1), and,
//! for a run, the journaled group changes around the engine.

use serde::Serialize;

/// One Auto Scaling group of the pool, as `plan` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GroupLine {
    pub(crate) group: String,
    /// `refuse`, `suspend` or `standby`.
    pub(crate) mode: String,
    pub(crate) health_check_type: String,
    pub(crate) min_size: i32,
    pub(crate) max_size: i32,
    pub(crate) desired: i32,
    /// The pool's instances in the group.
    pub(crate) instances: usize,
    /// Processes suspended now (the operator's stay suspended).
    pub(crate) suspended_now: Vec<String>,
    /// Processes the run suspends, and resumes at its end.
    pub(crate) run_suspends: Vec<String>,
    /// Standby: the most of its instances in one batch, and the desired
    /// capacity then.
    pub(crate) largest_batch: usize,
    pub(crate) desired_during_batch: i32,
    /// Standby: the temporary `MinSize` the run sets (when allowed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) temporary_min_size: Option<i32>,
}

/// The group lines of a plan for a human.
pub(crate) fn human(lines: &[GroupLine]) -> String {
    let mut o = String::new();
    if lines.is_empty() {
        return o;
    }
    o.push_str("Auto Scaling groups:\n");
    for l in lines {
        let c = |s: &str| crate::output::clean(s);
        o.push_str(&format!(
            "  {}: mode {}, {} health checks, MinSize {} / desired {} / MaxSize {}, {} instance(s) of the pool",
            c(&l.group),
            l.mode,
            c(&l.health_check_type),
            l.min_size,
            l.desired,
            l.max_size,
            l.instances
        ));
        if !l.run_suspends.is_empty() {
            o.push_str(&format!(
                "; suspends {} for the run",
                l.run_suspends.join(", ")
            ));
        }
        if !l.suspended_now.is_empty() {
            o.push_str(&format!(
                "; already suspended (left so): {}",
                c(&l.suspended_now.join(", "))
            ));
        }
        if l.mode == "standby" {
            o.push_str(&format!(
                "; standby of up to {} at once takes desired from {} to {}",
                l.largest_batch, l.desired, l.desired_during_batch
            ));
            match l.temporary_min_size {
                Some(m) => o.push_str(&format!(
                    ", below MinSize {}: MinSize {m} while they are in standby (allow_min_size_change), set back after",
                    l.min_size
                )),
                None => o.push_str(&format!(" (MinSize {} holds)", l.min_size)),
            }
        }
        o.push('\n');
    }
    o
}

#[cfg(feature = "aws")]
pub(crate) use aws::*;

#[cfg(feature = "aws")]
mod aws {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use hygiene_aws::autoscaling::{self, AutoScalingMode, GroupFacts, GroupKeeper};
    use hygiene_core::journal::{open_changes, Journal};
    use hygiene_core::{Amount, ListedTarget, TargetId};

    use super::GroupLine;
    use crate::config::{AutoScaling, Loaded};
    use crate::plan::Plan;
    use crate::setup::Setup;
    use crate::Failure;

    /// What was read about the pool's groups.
    #[derive(Debug)]
    pub(crate) struct Fleet {
        pub(crate) client: autoscaling::Client,
        pub(crate) groups: Vec<GroupFacts>,
        pub(crate) mode: AutoScalingMode,
        pub(crate) allow_min_size_change: bool,
    }

    fn mode(a: AutoScaling) -> AutoScalingMode {
        match a {
            AutoScaling::Refuse => AutoScalingMode::Refuse,
            AutoScaling::Suspend => AutoScalingMode::Suspend,
            AutoScaling::Standby => AutoScalingMode::Standby,
        }
    }

    /// Reads the groups and zones of an ELBv2 pool's instances and the
    /// NLBs routing within zones; sets the instances' zones (where the
    /// file gives none) and the zone floor the NLBs need into the run's
    /// settings. Returns what it read and what it finds wrong.
    ///
    /// Groups that cannot be read fail a run (`strict`: nothing is known
    /// of what would replace its instances) and are a problem for `plan`
    /// and `validate`.
    pub(crate) async fn read(
        loaded: &Loaded,
        setup: &mut Setup,
        listed: &[ListedTarget],
        strict: bool,
    ) -> Result<(Option<Fleet>, Vec<String>), Failure> {
        let Some(lb) = setup.elbv2.clone() else {
            return Ok((None, Vec::new()));
        };
        let Some(e) = loaded
            .file
            .balancer
            .as_ref()
            .and_then(|b| b.get_ref().elbv2.as_ref())
        else {
            return Ok((None, Vec::new()));
        };
        let e = e.get_ref();
        let mut problems = Vec::new();
        let sdk = crate::setup::sdk_config(e.region.as_deref(), e.profile.as_deref()).await;
        let client = autoscaling::client(&sdk, e.endpoint_url.as_deref());
        let ids: Vec<TargetId> = listed.iter().map(|l| l.target.id.clone()).collect();
        let (groups, zones) = match Box::pin(autoscaling::describe(&client, &ids)).await {
            Ok(x) => x,
            Err(err) if strict => return Err(Failure::Lib(err)),
            Err(err) => {
                problems.push(format!(
                    "the instances' Auto Scaling groups cannot be read ({err}): a run refuses until they can (grant autoscaling:DescribeAutoScalingInstances and DescribeAutoScalingGroups)"
                ));
                return Ok((None, problems));
            }
        };
        // Instances in no group: their EC2 placement.
        let mut zones = zones;
        let outside: Vec<TargetId> = ids
            .iter()
            .filter(|i| i.as_str().starts_with("i-") && !zones.contains_key(*i))
            .cloned()
            .collect();
        if !outside.is_empty() {
            match Box::pin(autoscaling::instance_zones(
                &sdk,
                e.endpoint_url.as_deref(),
                &outside,
            ))
            .await
            {
                Ok(z) => zones.extend(z),
                Err(err) => problems.push(format!(
                    "the instances' Availability Zones cannot be read ({err}): batch_by = \"zone\" and zone floors need them; grant ec2:DescribeInstances or give them in [rollout.zones]"
                )),
            }
        }
        let mut cfg =
            serde_json::to_value(&setup.rollout).map_err(|err| Failure::Other(err.to_string()))?;
        let mut changed = false;
        if !zones.is_empty() {
            let mut all: BTreeMap<TargetId, String> = zones;
            all.extend(setup.rollout.zones().clone());
            cfg["zones"] =
                serde_json::to_value(&all).map_err(|err| Failure::Other(err.to_string()))?;
            changed = true;
        }
        match Box::pin(lb.zonal_nlbs()).await {
            Ok(nlbs) if !nlbs.is_empty() => {
                for n in &nlbs {
                    problems.push(format!(
                        "NLB {} routes within each zone (cross-zone load balancing off) for {}: the last healthy target of each of its zones stays in service (zone_min_healthy at least 1); where a zone has one target, turn cross-zone on (load_balancing.cross_zone.enabled = true) or add a target there",
                        n.load_balancer,
                        n.target_groups.join(", ")
                    ));
                }
                let floor = match setup.rollout.zone_min_healthy() {
                    None | Some(Amount::Count(0) | Amount::Percent(0)) => Amount::Count(1),
                    Some(a) => a,
                };
                cfg["zone_min_healthy"] = serde_json::to_value(floor)
                    .map_err(|err| Failure::Other(err.to_string()))?;
                changed = true;
            }
            Ok(_) => {}
            Err(err) => problems.push(format!(
                "the load balancers' cross-zone setting cannot be read ({err}): an NLB with cross-zone off may lose its last target in a zone; grant elasticloadbalancing:DescribeLoadBalancers and Describe*Attributes, or set rollout.zone_min_healthy = 1"
            )),
        }
        if changed {
            setup.rollout = serde_json::from_value(cfg).map_err(|err| {
                Failure::Other(format!("the zones read from AWS are refused: {err}"))
            })?;
        }
        if groups.is_empty() {
            return Ok((None, problems));
        }
        Ok((
            Some(Fleet {
                client,
                groups,
                mode: mode(e.auto_scaling),
                allow_min_size_change: e.allow_min_size_change,
            }),
            problems,
        ))
    }

    /// The plan's group lines; returns what the mode refuses (also added
    /// to the plan's blockers).
    pub(crate) fn into_plan(fleet: Option<&Fleet>, plan: &mut Plan) -> Vec<String> {
        let Some(f) = fleet else { return Vec::new() };
        let before = plan.blockers.len();
        if let Some(why) = autoscaling::refusal(f.mode, &f.groups) {
            plan.blockers.push(why);
        }
        for g in &f.groups {
            let largest = plan
                .batches
                .iter()
                .map(|b| b.iter().filter(|id| g.instances.contains(id)).count())
                .max()
                .unwrap_or(0);
            let standby = f.mode == AutoScalingMode::Standby;
            let need = if standby {
                g.min_size_for(largest)
            } else {
                None
            };
            if let (Some(n), false) = (need, f.allow_min_size_change) {
                plan.blockers.push(format!(
                    "{largest} instance(s) of Auto Scaling group {} in standby at once would take its desired capacity from {} to {}, below MinSize {}: lower batch_size, or allow a temporary MinSize of {n} with balancer.elbv2.allow_min_size_change = true",
                    g.name,
                    g.desired,
                    g.desired - i32::try_from(largest).unwrap_or(i32::MAX),
                    g.min_size
                ));
            }
            plan.auto_scaling.push(GroupLine {
                group: g.name.clone(),
                mode: f.mode.to_string(),
                health_check_type: g.health_check_type.clone(),
                min_size: g.min_size,
                max_size: g.max_size,
                desired: g.desired,
                instances: g.instances.len(),
                suspended_now: g.suspended.clone(),
                run_suspends: f
                    .mode
                    .processes()
                    .iter()
                    .filter(|p| !g.suspended.iter().any(|s| s == *p))
                    .map(|p| (*p).to_owned())
                    .collect(),
                largest_batch: if standby { largest } else { 0 },
                desired_during_batch: if standby {
                    g.desired - i32::try_from(largest).unwrap_or(i32::MAX)
                } else {
                    g.desired
                },
                temporary_min_size: need.filter(|_| f.allow_min_size_change),
            });
        }
        plan.blockers[before..].to_vec()
    }

    /// Group changes a finished run left open (an instance kept out in
    /// standby, a run that died after its end): a new run refuses to
    /// start over them, `restore` undoes them.
    pub(crate) fn leftover(
        journal: &std::path::Path,
    ) -> Result<Vec<hygiene_core::journal::Change>, Failure> {
        let records = hygiene_core::journal::FileJournal::read(journal)?;
        let last = records
            .iter()
            .rposition(|r| matches!(r, hygiene_core::journal::Record::Header(_)));
        let ended = last.is_some_and(|k| {
            records[k..]
                .iter()
                .any(|r| matches!(r, hygiene_core::journal::Record::End { .. }))
        });
        Ok(if ended {
            open_changes(&records)
        } else {
            Vec::new()
        })
    }

    /// What [`before`] found.
    #[derive(Debug)]
    pub(crate) enum Before {
        /// No Auto Scaling group in the pool.
        None,
        /// The groups: wrap the run.
        Fleet(Fleet),
        /// Nothing for the engine to do (a restore that only undid a
        /// finished run's group changes): exit with this code.
        Done(u8),
    }

    /// Before `run`, `resume` or `restore` on ELBv2: the groups of the
    /// pool. A fresh run is refused (configuration error, nothing
    /// changed) when its mode refuses the groups or a finished run left
    /// group changes open; `restore` undoes those.
    pub(crate) async fn before(
        loaded: &Loaded,
        setup: &mut Setup,
        mode: crate::run::Mode,
    ) -> Result<Before, Failure> {
        if setup.elbv2.is_none() {
            return Ok(Before::None);
        }
        let listed = setup.balancer.list().await?;
        let (fleet, problems) = read(loaded, setup, &listed, true).await?;
        for p in problems {
            eprintln!("warning: {p}");
        }
        let leftover = leftover(&setup.journal)?;
        let Some(f) = fleet else {
            return Ok(Before::None);
        };
        match mode {
            crate::run::Mode::Run { .. } => {
                // What a finished run left open (an instance kept out in
                // standby) is carried into this run by its keeper.
                let mut plan = crate::plan::compute(setup, &listed, None);
                let refused = into_plan(Some(&f), &mut plan);
                if !refused.is_empty() {
                    return Err(Failure::Config(crate::config::ConfigError::flag(
                        "balancer.elbv2.auto_scaling",
                        format!("{}; nothing was changed", refused.join("; ")),
                    )));
                }
            }
            crate::run::Mode::Restore if !leftover.is_empty() => {
                // A finished run: undo what is not about a kept-out
                // instance (those leave standby with `hygiene enable`,
                // verified).
                let journal: Arc<dyn Journal> =
                    Arc::new(hygiene_core::journal::FileJournal::open(&setup.journal)?);
                let keeper = GroupKeeper::new(
                    f.client.clone(),
                    journal,
                    f.mode,
                    f.allow_min_size_change,
                    &f.groups,
                    leftover,
                );
                for line in finish(&keeper).await {
                    eprintln!("warning: {line}");
                }
                return Ok(Before::Done(crate::exit::OK));
            }
            _ => {}
        }
        Ok(Before::Fleet(f))
    }

    /// For `hygiene enable`: when the journal's last run left instances in
    /// standby, the balancer takes them out of standby on enable (and a
    /// lowered `MinSize` is set back after the last one).
    pub(crate) async fn for_enable(
        loaded: &Loaded,
        setup: &mut Setup,
        journal: Arc<dyn Journal>,
    ) -> Result<Option<Arc<GroupKeeper>>, Failure> {
        if setup.elbv2.is_none() || leftover(&setup.journal)?.is_empty() {
            return Ok(None);
        }
        let listed = setup.balancer.list().await?;
        let (fleet, _) = read(loaded, setup, &listed, true).await?;
        let Some(f) = fleet else { return Ok(None) };
        Ok(Some(wrap(f, setup, journal, &[])?))
    }

    /// The keeper of a run's group changes, with the changes a dead run
    /// left open; the balancer and executor wrapped to make them.
    pub(crate) fn wrap(
        fleet: Fleet,
        setup: &mut Setup,
        journal: Arc<dyn Journal>,
        previous: &[hygiene_core::journal::Record],
    ) -> Result<Arc<GroupKeeper>, Failure> {
        // A fresh journal (the last run's was moved aside): the changes the
        // last run left open come from it, and the keeper carries them on.
        let current = journal.records()?;
        let open = if current.is_empty() {
            open_changes(previous)
        } else {
            open_changes(&current)
        };
        let keeper = Arc::new(GroupKeeper::new(
            fleet.client,
            journal,
            fleet.mode,
            fleet.allow_min_size_change,
            &fleet.groups,
            open,
        ));
        setup.balancer = Arc::new(hygiene_aws::StandbyBalancer::new(
            Arc::clone(&setup.balancer),
            Arc::clone(&keeper),
        ));
        setup.executor = Arc::new(hygiene_aws::StandbyExecutor::new(
            Arc::clone(&setup.executor),
            Arc::clone(&keeper),
        ));
        Ok(keeper)
    }

    /// After the engine: undoes the run's group changes (suspended
    /// processes, a temporary `MinSize`), and names each instance left in
    /// standby with the way back.
    pub(crate) async fn finish(keeper: &GroupKeeper) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = keeper.finish().await {
            out.push(format!(
                "the run's Auto Scaling group changes could not all be undone ({e}): the journal keeps them; `hygiene restore` undoes the rest"
            ));
        }
        for (id, g) in keeper.in_standby().await {
            out.push(format!(
                "{id} stays in standby in Auto Scaling group {g} (kept out): `hygiene enable {id}` takes it out of standby and puts it back, or aws autoscaling exit-standby --auto-scaling-group-name {g} --instance-ids {id}"
            ));
        }
        out
    }
}

/// Without AWS support there are no groups: the same calls, doing nothing.
#[cfg(not(feature = "aws"))]
pub(crate) use none::*;

#[cfg(not(feature = "aws"))]
mod none {
    use std::sync::Arc;

    use hygiene_core::journal::Journal;
    use hygiene_core::ListedTarget;

    use crate::config::Loaded;
    use crate::plan::Plan;
    use crate::setup::Setup;
    use crate::Failure;

    /// No groups without AWS support.
    #[derive(Debug)]
    pub(crate) enum Fleet {}

    /// No keeper without AWS support.
    #[derive(Debug)]
    pub(crate) enum Keeper {}

    /// What `before` found: never anything (the variants mirror the AWS
    /// build's, which `run` matches on).
    #[derive(Debug)]
    #[allow(dead_code)]
    pub(crate) enum Before {
        None,
        Fleet(Fleet),
        Done(u8),
    }

    pub(crate) async fn read(
        _loaded: &Loaded,
        _setup: &mut Setup,
        _listed: &[ListedTarget],
        _strict: bool,
    ) -> Result<(Option<Fleet>, Vec<String>), Failure> {
        Ok((None, Vec::new()))
    }

    pub(crate) fn into_plan(_fleet: Option<&Fleet>, _plan: &mut Plan) -> Vec<String> {
        Vec::new()
    }

    pub(crate) async fn before(
        _loaded: &Loaded,
        _setup: &mut Setup,
        _mode: crate::run::Mode,
    ) -> Result<Before, Failure> {
        Ok(Before::None)
    }

    pub(crate) fn wrap(
        fleet: Fleet,
        _setup: &mut Setup,
        _journal: Arc<dyn Journal>,
        _previous: &[hygiene_core::journal::Record],
    ) -> Result<Arc<Keeper>, Failure> {
        match fleet {}
    }

    pub(crate) async fn finish(keeper: &Keeper) -> Vec<String> {
        match *keeper {}
    }
}
